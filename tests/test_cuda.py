"""The CUDA path: autocast training, channels_last, CPU/GPU agreement, a whole run and torchrun with NCCL.

Every test here needs a CUDA GPU and skips without one (CI has none). benchmarks/gpu/check.sh runs this file on a
lent GPU machine; the mixed-precision logic itself is also tested on the CPU (tests/test_engine.py).
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from tatl.checkpoints import load_checkpoint
from tatl.config import TrainConfig
from tatl.data.dataset import SegmentationDataset
from tatl.models.multihead import MultiHeadSegmenter
from tatl.models.networks import build_model
from tatl.pipeline.scoring import predict_probabilities
from tatl.training.engine import autocast_dtype, fit

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU on this machine")

TINY_RUN = ["--config", "demo", "--set", "synth.n=24", "--set", "synth.size=64", "--set", "data.stage1_size=64",
            "--set", "data.image_size=64", "--set", "train.epochs=2", "--set", "train.batch_size=8",
            "--variants", "1,2,3", "--device", "cuda"]


def tiny_data(n: int = 12, size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)
    masks = np.zeros((n, 1, size, size), dtype=np.uint8)
    for i in range(n):
        y, x = rng.integers(0, size - 16, 2)
        masks[i, 0, y : y + 16, x : x + 16] = 1
        images[i, y : y + 16, x : x + 16, 0] = 255
    return images, masks


def test_training_on_cuda_runs_under_autocast_with_fp32_weights_in_channels_last(tmp_path: Path):
    cfg = TrainConfig(epochs=2, batch_size=4, lr=0.05, device="cuda", seed=0)
    dtype = autocast_dtype(torch.device("cuda"), cfg)
    assert dtype == (torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16)
    torch.manual_seed(0)
    model = MultiHeadSegmenter.from_model(build_model("unet", "paper-efficientnet-b0"), ["a"])
    seen = {}

    def record(module, inputs, output):
        seen.update(dtype=output.dtype, channels_last=inputs[0].is_contiguous(memory_format=torch.channels_last))

    model.heads["a"].segmentation_head.register_forward_hook(record)
    images, masks = tiny_data()
    progress = fit(model, SegmentationDataset(images, masks, augment=True), SegmentationDataset(images, masks), cfg,
                   {"a": tmp_path / "a"}, train_encoder=True, label="cuda")
    assert seen == {"dtype": dtype, "channels_last": True}
    assert all(np.isfinite(row["loss"]) for row in progress["a"].history)
    assert all(p.device.type == "cuda" and p.dtype == torch.float32 for p in model.parameters())
    saved = load_checkpoint(tmp_path / "a" / "best.pt", map_location="cpu")["model"]  # loads on a CPU machine
    assert all(v.device.type == "cpu" for v in saved.values())


@pytest.mark.parametrize("shape", ["unet", "linknet"])
def test_cuda_and_cpu_give_the_same_probabilities(shape):
    torch.manual_seed(0)
    model = MultiHeadSegmenter.from_model(build_model(shape, "paper-efficientnet-b0"), ["a"])
    images, _ = tiny_data(4)
    on_cpu = predict_probabilities(model, images, torch.device("cpu"))["a"]
    on_gpu = predict_probabilities(model, images, torch.device("cuda"))["a"]
    assert np.abs(on_cpu - on_gpu).max() < 1e-2  # fp32 on both; cuDNN may use TF32 for convolutions


def run_tatl(command: list[str]) -> subprocess.CompletedProcess:
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, env={**os.environ})
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def test_a_tatl_run_on_cuda_under_torchrun_with_one_process(tmp_path: Path):
    run = tmp_path / "run"
    run_tatl([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1", "-m", "tatl",
              "run", "synthetic", "--out", str(run), *TINY_RUN])
    metrics = json.loads((run / "metrics.json").read_text())
    assert 0 <= metrics["variant 1,2,3"]["ensemble"]["macro_average"]["jaccard"] <= 1


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="NCCL needs one GPU per process: fewer than 2 GPUs here")
def test_two_gpus_train_one_run_with_nccl_and_sync_batchnorm(tmp_path: Path):
    run = tmp_path / "run"
    result = run_tatl([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m",
                       "tatl", "run", "synthetic", "--out", str(run), *TINY_RUN])
    assert result.stderr.count("wrote ") == 2  # rank 0 alone wrote the metrics and the report
    assert (run / "metrics.json").is_file() and (run / "stage3-v123" / "unet" / "streaks" / "best.pt").is_file()
