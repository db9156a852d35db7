"""Training under torchrun (CPU, gloo): N processes do the work of one, rank 0 writes, resume works across ranks."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from compare import assert_close_numbers
from conftest import tiny_cli_settings
from thread_ranks import ThreadRanks

from tatl import distributed
from tatl.errors import ConfigError, DataError, TatlError
from tatl.training import parallel

WORKER = Path(__file__).with_name("ddp_worker.py")


def torchrun(nproc: int, *args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def kill_processes_naming(text: str) -> None:
    """SIGKILL every process whose command line contains `text`, at once."""
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and text in (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode():
                os.kill(int(proc.name), signal.SIGKILL)
        except (OSError, ValueError):
            pass  # gone already


# ------------------------------------------------------------------------------------------------- sharding
@pytest.mark.parametrize("world", [1, 2, 4])
def test_each_global_batch_is_cut_into_equal_rank_slices(monkeypatch, world):
    order = [int(i) for i in torch.randperm(23, generator=torch.Generator().manual_seed(0))]
    shares = []
    for me in range(world):
        monkeypatch.setattr(distributed, "world_size", lambda: world)
        monkeypatch.setattr(distributed, "rank", lambda me=me: me)
        shares.append(distributed.rank_batches(order, 8))
    assert len({len(batches) for batches in shares}) == 1  # DDP: every rank takes the same number of steps
    kept = order[: len(order) - len(order) % world]
    global_batches = [kept[start : start + 8] for start in range(0, len(kept), 8)]
    if len(shares[0]) < len(global_batches):  # only a last batch of one image per rank may be left out
        assert len(shares[0]) == len(global_batches) - 1 and len(global_batches[-1]) == world < 8
    for index, rank_slices in enumerate(zip(*shares, strict=True)):
        assert len({len(s) for s in rank_slices}) == 1
        assert sum(rank_slices, []) == global_batches[index]  # the ranks together see exactly the global batch


def test_a_last_slice_of_one_image_is_dropped_and_odd_batches_refused(monkeypatch):
    monkeypatch.setattr(distributed, "world_size", lambda: 2)
    monkeypatch.setattr(distributed, "rank", lambda: 1)
    batches = distributed.rank_batches(list(range(18)), 8)  # 8 + 8 + 2: the last slice would be one image
    assert batches == [[4, 5, 6, 7], [12, 13, 14, 15]]
    with pytest.raises(ConfigError, match="train.batch_size=5 must be a multiple of the 2 torchrun processes"):
        distributed.rank_batches(list(range(18)), 5)


def test_outside_torchrun_nothing_is_distributed():
    assert not distributed.is_distributed() and distributed.world_size() == 1 and distributed.is_main_process()
    assert distributed.main_process_first(lambda: 7) == 7
    assert distributed.rank_batches(list(range(9)), 4) == [[0, 1, 2, 3], [4, 5, 6, 7]]  # as a single process


# --------------------------------------------------------------------------------------- decoded-image cache
@pytest.fixture
def thread_ranks(monkeypatch) -> ThreadRanks:
    """Two ranks played by threads: tatl.distributed's collectives meet at a barrier instead of a process group."""
    ranks = ThreadRanks()
    ranks.play_torchrun(monkeypatch)
    return ranks


def test_rank_0_alone_decodes_and_writes_each_cache_entry_and_every_rank_maps_it(tmp_path, monkeypatch,
                                                                                 thread_ranks):
    from tatl.data import cache

    built, written = [], []
    real_atomic_write = cache.atomic_write

    def recording_write(path, *args, **kwargs):
        written.append((thread_ranks.rank(), Path(path).name))
        return real_atomic_write(path, *args, **kwargs)

    def array(n: int) -> np.ndarray:
        return np.arange(n * 12, dtype=np.uint8).reshape(n, 3, 4)

    def build(n: int) -> np.ndarray:
        built.append((thread_ranks.rank(), n))
        return array(n)

    monkeypatch.setattr(cache, "atomic_write", recording_write)
    entries = [(tmp_path / "cache", {"what": "images", "n": n}, lambda n=n: build(n)) for n in (1, 2)]
    first, again = (thread_ranks.run(lambda: [cache.cached_array(*entry) for entry in entries]) for _ in range(2))
    assert built == [(0, 1), (0, 2)]  # once, by rank 0; the second time every rank mapped the files
    assert [rank for rank, _ in written] == [0, 0]
    assert sorted(name for _, name in written) == sorted(f.name for f in (tmp_path / "cache").iterdir())
    for arrays in (*first, *again):
        assert [a.tolist() for a in arrays] == [array(n).tolist() for n in (1, 2)]
        assert all(isinstance(a, np.memmap) for a in arrays)

    built.clear()  # the cache disabled: each rank decodes for itself, in memory, as before
    arrays = thread_ranks.run(lambda: cache.cached_array(None, {"what": "images"}, lambda: build(1)))
    assert sorted(rank for rank, _ in built) == [0, 1] and np.array_equal(*arrays)


def test_a_cache_entry_rank_0_cannot_write_stops_the_other_ranks_too(tmp_path, thread_ranks):
    from tatl.data.cache import cached_array

    def build():
        if thread_ranks.rank() != 0:
            pytest.fail("only rank 0 builds")
        raise DataError("image.jpg: cannot decode")

    def attempt():
        try:
            return cached_array(tmp_path / "cache", {"what": "images"}, build)
        except TatlError as error:
            return error

    on_rank_0, on_rank_1 = thread_ranks.run(attempt)
    assert isinstance(on_rank_0, DataError) and str(on_rank_0) == "image.jpg: cannot decode"
    assert str(on_rank_1) == "rank 0 stopped: DataError: image.jpg: cannot decode"  # not left waiting


# --------------------------------------------------------------------------------- the training loop, exactly
@pytest.mark.slow
@pytest.mark.parametrize("mode", ["frozen", "trainable"])
def test_two_processes_train_exactly_like_one_with_the_same_global_batch(tmp_path, mode):
    """No BatchNorm in the network: 2 x 2 images per step must give the updates of 1 x 4, the validation sums of 2
    ranks (4 + 3 images) those of one process, and the same early-stopping history; the unused encoder parameter
    must not hang DDP."""
    one, two = tmp_path / "one", tmp_path / "two"
    for out, nproc in ((one, 1), (two, 2)):
        out.mkdir()
        torchrun(nproc, str(WORKER), str(out), mode)
    single = torch.load(one / "rank0.pt", weights_only=False)
    ranks = [torch.load(two / f"rank{r}.pt", weights_only=False) for r in (0, 1)]
    assert single["world"] == 1 and ranks[0]["world"] == 2
    for result in ranks:
        for key, value in single["state"].items():
            torch.testing.assert_close(result["state"][key], value, rtol=1e-5, atol=1e-6, msg=key)
        for name, scores in single["val"].items():
            assert result["val"][name] == pytest.approx(scores, rel=1e-6, abs=1e-9)
        for name, history in single["history"].items():
            assert len(result["history"][name]) == len(history)
            for row, expected in zip(result["history"][name], history, strict=True):
                row, expected = ({k: float(v) for k, v in r.items() if k != "seconds"} for r in (row, expected))
                assert row == pytest.approx(expected, rel=1e-5, abs=1e-7)
    moved = ranks[0]["state"]["heads.a.segmentation_head.weight"] - torch.load(
        two / "heads" / "a" / "best.pt", weights_only=True)["model"]["segmentation_head.weight"]
    assert moved.abs().max() < 1e-6  # rank 0 wrote best.pt, and every rank loaded it back
    assert not list((two / "heads").rglob("*.tmp"))


@pytest.mark.slow
def test_two_processes_train_the_context_restoration_pretext_like_one(tmp_path):
    """The pretext network of Table 7's baseline is trained like the stages: a slice of each batch per rank (not the
    whole pretext on every rank), its validation shared out and added up."""
    one, two = tmp_path / "one", tmp_path / "two"
    for out, nproc in ((one, 1), (two, 2)):
        out.mkdir()
        torchrun(nproc, str(WORKER), str(out), "pretext")
    single = torch.load(one / "rank0.pt", weights_only=False)
    assert single["images_seen"] == {"train": 3 * 20, "eval": 3 * 7}  # 3 epochs of 20 training, 7 validation images
    for rank in (0, 1):
        result = torch.load(two / f"rank{rank}.pt", weights_only=False)
        assert result["world"] == 2
        assert result["images_seen"] == {"train": 3 * 10, "eval": 3 * (4, 3)[rank]}  # each rank did its share only
        for key, value in single["state"].items():
            torch.testing.assert_close(result["state"][key], value, rtol=1e-5, atol=1e-6, msg=key)
    assert (two / "pretext" / "done.json").is_file()
    assert json.loads((two / "pretext" / "done.json").read_text())["best_val_mse"] == pytest.approx(
        json.loads((one / "pretext" / "done.json").read_text())["best_val_mse"], rel=1e-5)


# ------------------------------------------------------------------------------------------------ end to end
# The session's tiny settings on 24 images in batches of 8 (4 per process), 2 epochs, all five attributes.
TINY = ["--config", "demo", "--variants", "1,2,3",
        *tiny_cli_settings({"synth.n": 24, "train.epochs": 2, "train.batch_size": 8}, drop=("data.attributes",))]


@pytest.mark.slow
def test_tatl_run_under_torchrun_writes_one_run_and_resumes(tmp_path):
    single, multi = tmp_path / "single", tmp_path / "multi"
    subprocess.run([sys.executable, "-m", "tatl", "run", "synthetic", "--out", str(single), *TINY], check=True,
                   capture_output=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300)
    result = torchrun(2, "-m", "tatl", "run", "synthetic", "--out", str(multi), *TINY)
    assert result.stderr.count("wrote ") == 2  # metrics/summary and the report, by rank 0 only
    for name in ("config.yaml", "splits.json", "metrics.json", "summary.md", "report.html",
                 "stage1/unet/best.pt", "stage2-crops/unet/last.pt", "stage3-v123/unet/streaks/log.csv"):
        assert (multi / name).is_file(), name
    assert json.loads((multi / "splits.json").read_text()) == json.loads((single / "splits.json").read_text())
    a, b = (json.loads((run / "metrics.json").read_text()) for run in (single, multi))
    assert a.keys() == b.keys()
    # BatchNorm normalises each process's half batch on its own (SyncBatchNorm needs CUDA), so the runs agree to a
    # tolerance: the exact equality of the loop is the test above.
    assert b["stage1"]["jaccard"] == pytest.approx(a["stage1"]["jaccard"], abs=0.15)
    assert b["variant 1,2,3"]["unet"]["macro_average"]["dice"] == pytest.approx(
        a["variant 1,2,3"]["unet"]["macro_average"]["dice"], abs=0.15)

    # The same trained networks evaluated by two processes, each predicting and scoring its share of the images
    # (Stage-1 boxes, Stage 2 and every variant): the scores and boxes of one process.
    again = tmp_path / "again"
    shutil.copytree(single, again)
    (again / "metrics.json").unlink()
    result = torchrun(2, "-m", "tatl", "run", "synthetic", "--out", str(again), "--resume")
    assert result.stderr.count("already trained") == 3  # stage 1, stage 2, stage 3: nothing trained again
    assert json.loads((again / "stage1" / "boxes.json").read_text()) == json.loads(
        (single / "stage1" / "boxes.json").read_text())
    assert_close_numbers(json.loads((again / "metrics.json").read_text()), a)



@pytest.mark.slow
def test_a_killed_torchrun_run_resumes_on_every_rank_and_with_another_process_count(tmp_path):
    run = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "tatl",
              "run", "synthetic", "--out", str(run)]

    def kill_when_written(command: list[str], path: Path) -> None:
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
        deadline = time.monotonic() + 240
        while not path.exists() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert process.poll() is None, "the run ended before it could be killed"
        kill_processes_naming(str(run))  # torchrun and both ranks (torchrun starts them in sessions of their own)
        process.wait()

    stage2_log, stage3_log = (run / "stage2-crops" / "unet" / "log.csv",
                              run / "stage3-v123" / "unet" / "globules" / "log.csv")
    kill_when_written([*launch, *TINY, "--set", "train.epochs=3"], stage2_log)  # 2 processes, killed in Stage 2
    kill_when_written([*launch, "--resume"], stage3_log)  # resumed by 2 processes, killed in Stage 3
    assert not (run / "metrics.json").exists()
    result = subprocess.run([sys.executable, "-m", "tatl", "run", "synthetic", "--out", str(run), "--resume"],
                            capture_output=True, text=True, env=env, timeout=300)  # finished by one process
    assert result.returncode == 0, result.stderr[-3000:]
    assert "stage 1: already trained" in result.stderr and "stage 2 (crops, unet): already trained" in result.stderr
    for log in (stage2_log, stage3_log):
        rows = log.read_text().splitlines()[1:]
        assert [row.split(",")[0] for row in rows] == ["0", "1", "2"], log  # continued, no epoch repeated or lost
    assert json.loads((run / "metrics.json").read_text())["variant 1,2,3"]["unet"]["macro_average"]["dice"] >= 0


# ------------------------------------------------------------------------------------------------ SyncBatchNorm
@pytest.mark.parametrize("encoder", ["paper-efficientnet-b0", "tu-resnet10t"])
def test_sync_batchnorm_keeps_every_weight_and_outside_torchrun_computes_the_same(encoder):
    """On CUDA under torchrun BatchNorm statistics come from the global batch (torch's SyncBatchNorm). Here: the
    conversion catches every BatchNorm, timm's BatchNorm + activation layers included, keeps names and tensors, and
    a single process trains and predicts with it exactly as with plain BatchNorm."""
    import copy

    from tatl.models.multihead import MultiHeadSegmenter
    from tatl.models.networks import build_model

    torch.manual_seed(0)
    plain = MultiHeadSegmenter.from_model(build_model("unet", encoder, None), ["a", "b"])
    synced = copy.deepcopy(plain)
    parallel.use_sync_batchnorm(synced)
    batchnorms = [m for m in synced.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    assert batchnorms and all(isinstance(m, torch.nn.SyncBatchNorm) for m in batchnorms)
    assert len(batchnorms) == sum(isinstance(m, torch.nn.BatchNorm2d) for m in plain.modules())
    assert synced.state_dict().keys() == plain.state_dict().keys()
    x = torch.randn(2, 3, 64, 64)
    for training in (True, False):
        plain.train(training), synced.train(training)
        out, out_synced = plain(x), synced(x)
        for name in out:
            assert torch.equal(out[name], out_synced[name]), (name, training)
    for key, value in plain.state_dict().items():  # the training pass moved the same running statistics
        assert torch.equal(value, synced.state_dict()[key]), key


# ------------------------------------------------------------------------------------------ failures and misuse
@pytest.mark.slow
def test_a_batch_that_does_not_split_evenly_is_refused_before_anything_is_written(tmp_path):
    run = tmp_path / "run"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "tatl",
               "run", "synthetic", "--out", str(run), *TINY, "--set", "train.batch_size=3"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode != 0
    assert "train.batch_size=3 must be a multiple of the 2 torchrun processes" in result.stderr
    assert "e.g. --set train.batch_size=2" in result.stderr
    assert not run.exists()


FAILING_RANK = """
import sys
from tatl import distributed
from tatl.errors import DataError
distributed.setup("cpu")
def work():
    if distributed.rank() == 1:
        raise DataError("rank 1 cannot see the data")
    return "ready"
try:
    distributed.main_process_first(work)
except Exception as error:
    print(f"rank {distributed.rank()}: {type(error).__name__}: {error}", flush=True)
    sys.exit(2)
print(f"rank {distributed.rank()}: went on", flush=True)
"""


@pytest.mark.slow
def test_an_error_on_another_rank_after_rank_0_stops_every_rank(tmp_path):
    """Rank 0 has done its part; rank 1 fails reading what rank 0 wrote: rank 0 must stop too, not wait forever."""
    script = tmp_path / "failing_rank.py"
    script.write_text(FAILING_RANK)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(script)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    output = result.stdout + result.stderr
    assert result.returncode != 0 and "went on" not in output
    assert "rank 1: DataError: rank 1 cannot see the data" in output
    assert "rank 0: TatlError: another torchrun process stopped" in output


def test_experiment_refuses_torchrun_and_gives_its_jobs_a_plain_environment(monkeypatch, capsys):
    from tatl.cli import main
    from tatl.experiments.runners import job_environment

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("MASTER_PORT", "29500")
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "x")
    env = job_environment(1)
    assert not {"WORLD_SIZE", "MASTER_PORT", "TORCHELASTIC_RUN_ID"} & set(env) and env["OMP_NUM_THREADS"] == "1"
    assert main(["experiment", "configs/grid-example.yaml", "--out", "unused"]) == 2
    assert "start it without torchrun" in capsys.readouterr().err
