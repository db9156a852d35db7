"""Running the jobs of an experiment grid: each job a `python -m tatl run` process (a local pool of --workers, or a
Ray task per job), its log in OUT/logs/, its status in OUT/grid.json, progress on the terminal."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from tatl import logs

log = logging.getLogger(__name__)

LOG_TAIL_LINES = 12


POLL_SECONDS = 0.2


def import_ray() -> Any:
    from tatl.errors import TatlError

    try:
        import ray
    except ImportError:
        raise TatlError("--ray needs Ray, an optional extra: pip install 'tatl[ray]'") from None
    return ray


def prepare_data(grid, config, out: Path) -> str:
    """The dataset folder every job reads, absolute; `synthetic` is generated once into OUT/data."""
    from tatl.data.synth import write_synthetic_dataset
    from tatl.errors import DataError
    from tatl.experiments.grid import check_synthetic_overrides
    from tatl.pipeline.setup import SYNTHETIC

    if grid.data != SYNTHETIC:
        if not Path(grid.data).is_dir():
            raise DataError(f"{grid.data}: dataset folder not found (grid {grid.path}, key data)")
        return str(Path(grid.data).resolve())
    check_synthetic_overrides(grid)
    root, s = out / "data", config.synth
    readme = root / "README.txt"
    if not readme.exists():
        log.info(f"generating {s.n} synthetic images ({s.size} px wide, seed {s.seed}) in {root}")
        write_synthetic_dataset(root, n=s.n, size=s.size, seed=s.seed)
    elif f"images: {s.n}, {s.size} x {s.size * 3 // 4} px, seed {s.seed}," not in readme.read_text():
        raise DataError(f"{root}: synthetic data generated with other synth.* values; use a new --out")
    return str(root.resolve())


def job_args(job, out: Path, data: str, base_config: str | None, sources: list[str] | None = None) -> list[str]:
    """`python -m tatl run` arguments (without the interpreter, which a Ray node chooses for itself); `sources`:
    run folders whose finished Stage 1-2 the job may copy (pipeline.reuse_stages_from)."""
    command = ["-m", "tatl", "run", data, "--out", str(job.run_dir(out).resolve())]
    if job.is_started(out):
        command.append("--resume")  # the run folder's config.yaml replaces --config
    elif base_config is not None:
        command += ["--config", str(Path(base_config).resolve()) if Path(base_config).is_file() else base_config]
    for override in [*job.overrides, *([f"pipeline.reuse_stages_from={json.dumps(sources)}"] if sources else [])]:
        command += ["--set", override]
    return command


def stage_sources(job, jobs: list, out: Path) -> list[str]:
    """The other jobs of the same backbone, shape, fold and seed: their Stage 1-2 may be this job's (tatl.pipeline.reuse
    checks the settings). The grid's order runs the settings of one backbone and shape in turn, so with one worker
    each Stage-1/2 network of a (backbone, shape, fold, seed) is trained once."""
    key = (job.backbone, job.shape, job.fold, job.seed)
    return [str(other.run_dir(out).resolve()) for other in jobs
            if other is not job and (other.backbone, other.shape, other.fold, other.seed) == key]


def log_tail(path: Path, lines: int) -> str:
    if not path.is_file():
        return "(no log)"
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


class GridRecord:
    """Every job's status, written to OUT/grid.json after each event (a live view of a long grid)."""

    def __init__(self, grid, jobs: list, out: Path) -> None:
        self.grid, self.jobs, self.out = grid, jobs, out
        self.status = {job.name: "finished" if job.is_finished(out) else "pending" for job in jobs}
        self.data_folder: str | None = None  # the folder the jobs read, once resolved
        self.details: dict[str, dict[str, Any]] = {job.name: {} for job in jobs}
        for job in jobs:
            self.details[job.name]["skipped"] = self.status[job.name] == "finished"  # finished before this run

    def update(self, job, status: str, **details: Any) -> None:
        self.status[job.name] = status
        self.details[job.name].update(details)
        self.write()

    def write(self) -> None:
        from tatl.io import write_json

        self.out.mkdir(parents=True, exist_ok=True)
        counts = {s: sum(v == s for v in self.status.values()) for s in ("finished", "failed", "running", "pending")}
        entries = [{**vars(job), "status": self.status[job.name], "run_dir": str(job.run_dir(self.out)),
                    "log": str(job.log_path(self.out)), **self.details[job.name]} for job in self.jobs]
        write_json(self.out / "grid.json", {"grid": self.grid.resolved(), "data_folder": self.data_folder,
                                            "counts": counts, "jobs": entries})


class Progress:
    """One line per event, a tqdm bar over the jobs to run, and grid.json kept up to date."""

    def __init__(self, record: GridRecord, total: int) -> None:
        self.record, self.total, self.ended = record, total, 0
        self.bar = logs.progress(None, "grid", total=total, unit="job")
        record.write()

    def started(self, job, verb: str = "started") -> None:
        self.record.update(job, "running")
        self._line(f"{verb:<8} {job.name}")

    def ended_job(self, job, returncode: int | None, seconds: float, error: str = "") -> None:
        status = "finished" if returncode == 0 and job.is_finished(self.record.out) else "failed"
        self.record.update(job, status, returncode=returncode, seconds=round(seconds, 1), error=error or None)
        self.ended += 1
        self.bar.update(1)
        tail = "" if status == "finished" else ": " + (error or log_tail(job.log_path(self.record.out), 1))
        self._line(f"{status:<8} {job.name} ({seconds:.0f} s){tail}")

    def _line(self, message: str) -> None:
        running = sum(s == "running" for s in self.record.status.values())
        left = self.total - self.ended - running
        self.bar.set_postfix_str(f"{running} running, {left} waiting")
        counts = f"[{self.ended}/{self.total} done, {running} running, {left} waiting]"
        log.info(f"{counts} {message}")

    def close(self) -> None:
        self.bar.close()


TORCHRUN_VARIABLES = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "GROUP_RANK", "GROUP_WORLD_SIZE",
                      "ROLE_RANK", "ROLE_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def job_environment(threads: int) -> dict[str, str]:
    """Each job gets its share of the cores, so N workers do not oversubscribe the CPU; and is a plain process,
    whatever launched this one (a job that inherits torchrun's variables would try to join its process group)."""
    env = {k: v for k, v in os.environ.items() if k not in TORCHRUN_VARIABLES and not k.startswith("TORCHELASTIC_")}
    return {**env, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}


def run_local(jobs: list, arguments: dict[str, list[str]], out: Path, progress: Progress, workers: int) -> None:
    """A simple pool: at most `workers` job processes at once; interrupted jobs are stopped (and resume later)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    env = job_environment(max(1, cores // workers))
    waiting, running = list(jobs), {}
    try:
        while waiting or running:
            while waiting and len(running) < workers:
                job = waiting.pop(0)
                job.log_path(out).parent.mkdir(parents=True, exist_ok=True)
                log_file = job.log_path(out).open("w")
                process = subprocess.Popen([sys.executable, *arguments[job.name]], stdout=log_file,
                                           stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
                running[process] = (job, log_file, time.perf_counter())
                progress.started(job)
            for process in [p for p in running if p.poll() is not None]:
                job, log_file, started = running.pop(process)
                log_file.close()
                progress.ended_job(job, process.returncode, time.perf_counter() - started)
            time.sleep(POLL_SECONDS)
    finally:
        for process, (job, log_file, _) in running.items():
            process.terminate()
            process.wait()
            log_file.close()
            progress.record.update(job, "pending", interrupted=True)  # its folder continues with --resume


def run_job_process(arguments: list[str], log_path: str, threads: int) -> int:
    """One job on whichever machine runs it (a Ray task): its own interpreter, its log on the shared folder."""
    Path(log_path).parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "w") as log_file:
        return subprocess.run([sys.executable, *arguments], stdout=log_file, stderr=subprocess.STDOUT,
                              stdin=subprocess.DEVNULL, env=job_environment(threads)).returncode


def run_ray(ray: Any, address: str, jobs: list, arguments: dict[str, list[str]], out: Path, progress: Progress,
            gpus_per_job: float, cpus_per_job: int) -> None:
    """Every job a Ray task reserving `gpus_per_job` GPUs and `cpus_per_job` CPUs; Ray queues what does not fit."""
    if not ray.is_initialized():
        ray.init() if address == "local" else ray.init(address=address)
    task = ray.remote(num_gpus=gpus_per_job, num_cpus=cpus_per_job)(run_job_process)
    pending = {}
    for job in jobs:
        ref = task.remote(arguments[job.name], str(job.log_path(out).resolve()), cpus_per_job)
        pending[ref] = (job, time.perf_counter())
        progress.started(job, "queued")  # Ray starts it when a node has the resources
    try:
        while pending:
            (ref,), _ = ray.wait(list(pending), num_returns=1)
            job, started = pending.pop(ref)
            try:
                progress.ended_job(job, ray.get(ref), time.perf_counter() - started)
            except Exception as error:  # noqa: BLE001 - a lost node or worker: report the job, go on with the others
                progress.ended_job(job, None, time.perf_counter() - started, f"Ray: {str(error).splitlines()[0]}")
    finally:
        for ref in pending:
            ray.cancel(ref, force=True)
