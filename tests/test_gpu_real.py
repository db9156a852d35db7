"""benchmarks/gpu/real.sh (the paper's settings on the real masks, for a GPU) end to end on a CPU, tiny override."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow  # about 30 s on the 2-core machine
def test_real_sh_runs_end_to_end_with_the_tiny_override(tmp_path: Path):
    env = {**os.environ, "TATL_REAL_TINY": "1", "PYTHON": sys.executable, "DEVICE": "cpu", "OUT": str(tmp_path),
           "OMP_NUM_THREADS": "1"}
    done = subprocess.run(["bash", "benchmarks/gpu/real.sh"], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "variant 1,2,3, ensemble (validation split, original size)" in done.stdout
    assert "macro_average" in done.stdout and (tmp_path / "run" / "metrics.json").is_file()
    assert "total" in (tmp_path / "times.txt").read_text()
