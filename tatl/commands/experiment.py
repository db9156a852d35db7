"""Run a grid of `tatl run` jobs (backbone x shape x setting x fold x seed) and aggregate Tables 6-7.

GRID.yaml names the axes (see configs/grid-example.yaml). Every job is one `tatl run` in a subprocess, its run folder
OUT/jobs/<backbone>__<shape>__<setting>__fold<k>__seed<s> and its log OUT/logs/<name>.log. Every job's config is
resolved before the first starts. A job with a metrics.json is finished and skipped, so running the same command
again resumes the grid (a started job continues with --resume); a failing job is reported with the end of its log
while the others go on (exit code 1). `--workers N` runs N jobs at once on this machine, `--ray ADDRESS` runs each
job as a Ray task on a cluster (pip install 'tatl[ray]'; OUT and the data on a filesystem every node sees). Writes
OUT/grid.json (grid, jobs, status), results.csv (one row per job), table6.md/.csv (Dice per attribute and shape,
rows backbone x setting) and table7.md/.csv (macro Dice and Jaccard per shape), mean ± std over folds and seeds,
and OUT/report.html (+ report.md), the page `tatl report OUT` rebuilds.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

EXAMPLES = """examples:
  tatl experiment configs/grid-example.yaml --out grids/example               # tiny synthetic grid, minutes on CPU
  tatl experiment configs/grid-example.yaml --out grids/example --workers 2   # two jobs at once
  tatl experiment configs/grid-table6.yaml --out grids/t6 --data ISIC2018/ --dry-run    # check, list the 450 jobs
  tatl experiment configs/grid-table6.yaml --out grids/t6 --data ISIC2018/ --ray auto --gpus-per-job 1
  tatl experiment configs/grid-table6.yaml --out grids/t6 --aggregate-only              # the tables so far
"""
LOG_TAIL_LINES = 12
POLL_SECONDS = 0.2


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("grid", type=Path, metavar="GRID.yaml", help="grid file (see configs/grid-example.yaml)")
    parser.add_argument("--out", required=True, type=Path, help="grid folder: jobs/, logs/, tables (reused to resume)")
    parser.add_argument("--data", help="dataset folder or 'synthetic'; replaces the grid file's data:")
    parser.add_argument("--workers", type=int, default=1, help="jobs run at once on this machine (default: 1)")
    parser.add_argument("--ray", metavar="ADDRESS",
                        help="run each job as a Ray task: a cluster address, 'auto', or 'local' (a local instance)")
    parser.add_argument("--gpus-per-job", type=float, default=0, help="with --ray: GPUs each job reserves (default 0)")
    parser.add_argument("--cpus-per-job", type=int, default=1, help="with --ray: CPUs (torch threads) per job")
    parser.add_argument("--aggregate-only", action="store_true", help="write the tables from the finished jobs only")
    parser.add_argument("--dry-run", action="store_true", help="check the grid and list the jobs with their status")


def run(args: argparse.Namespace) -> int:
    from tatl.distributed import launched_by_torchrun
    from tatl.errors import ConfigError
    from tatl.experiments import plan_jobs, read_grid

    if launched_by_torchrun():  # N drivers would each run the whole grid, their jobs joining one process group
        raise ConfigError("tatl experiment runs its jobs itself: start it without torchrun (--workers N, or "
                          "--ray ADDRESS --gpus-per-job 1 for a cluster)")
    if args.workers < 1 or args.cpus_per_job < 1 or args.gpus_per_job < 0:
        raise ConfigError("--workers and --cpus-per-job must be >= 1, --gpus-per-job >= 0")
    grid = read_grid(args.grid, args.data)
    jobs, config = plan_jobs(grid)  # every job's config resolved: a typo fails here, not after hours
    out: Path = args.out
    record = GridRecord(grid, jobs, out)
    if args.dry_run:
        print("\n".join(f"{record.status[job.name]:<10} {job.name}" for job in jobs))
        print(f"{len(jobs)} jobs, configs valid", file=sys.stderr)
        return 0
    if args.aggregate_only:
        return _aggregate(grid, jobs, out, record)
    ray = import_ray() if args.ray else None
    data = prepare_data(grid, config, out)
    todo = [job for job in jobs if not job.is_finished(out)]
    print(f"{len(jobs)} jobs: {len(jobs) - len(todo)} finished before (skipped), {len(todo)} to run", file=sys.stderr)
    arguments = {job.name: job_args(job, out, data, grid.base_config, stage_sources(job, jobs, out)) for job in todo}
    record.data_folder = data
    progress = Progress(record, len(todo))
    try:
        if ray is not None:
            run_ray(ray, args.ray, todo, arguments, out, progress, args.gpus_per_job, args.cpus_per_job)
        else:
            run_local(todo, arguments, out, progress, args.workers)
    finally:
        progress.close()
    _aggregate(grid, jobs, out, record)
    failed = [job for job in jobs if record.status[job.name] == "failed"]
    for job in failed:
        print(f"\nFAILED {job.name} (exit {record.details[job.name].get('returncode')}), end of "
              f"{job.log_path(out)}:\n{log_tail(job.log_path(out), LOG_TAIL_LINES)}", file=sys.stderr)
    print(f"{len(jobs) - len(failed)} of {len(jobs)} jobs finished, {len(failed)} failed", file=sys.stderr)
    return 1 if failed else 0


# ------------------------------------------------------------------------------------------------- set-up
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
    from tatl.experiments import check_synthetic_overrides
    from tatl.runs import SYNTHETIC

    if grid.data != SYNTHETIC:
        if not Path(grid.data).is_dir():
            raise DataError(f"{grid.data}: dataset folder not found (grid {grid.path}, key data)")
        return str(Path(grid.data).resolve())
    check_synthetic_overrides(grid)
    root, s = out / "data", config.synth
    readme = root / "README.txt"
    if not readme.exists():
        print(f"generating {s.n} synthetic images ({s.size} px wide, seed {s.seed}) in {root}", file=sys.stderr)
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
    """The other jobs of the same backbone, shape, fold and seed: their Stage 1-2 may be this job's (tatl.reuse
    checks the settings). The grid's order runs the settings of one backbone and shape in turn, so with one worker
    each Stage-1/2 network of a (backbone, shape, fold, seed) is trained once."""
    key = (job.backbone, job.shape, job.fold, job.seed)
    return [str(other.run_dir(out).resolve()) for other in jobs
            if other is not job and (other.backbone, other.shape, other.fold, other.seed) == key]


def log_tail(path: Path, lines: int) -> str:
    if not path.is_file():
        return "(no log)"
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


# ------------------------------------------------------------------------------------------------- status
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
        from tatl.checkpoints import write_json

        self.out.mkdir(parents=True, exist_ok=True)
        counts = {s: sum(v == s for v in self.status.values()) for s in ("finished", "failed", "running", "pending")}
        entries = [{**vars(job), "status": self.status[job.name], "run_dir": str(job.run_dir(self.out)),
                    "log": str(job.log_path(self.out)), **self.details[job.name]} for job in self.jobs]
        write_json(self.out / "grid.json", {"grid": self.grid.resolved(), "data_folder": self.data_folder,
                                            "counts": counts, "jobs": entries})


class Progress:
    """One line per event, a tqdm bar over the jobs to run, and grid.json kept up to date."""

    def __init__(self, record: GridRecord, total: int) -> None:
        from tqdm import tqdm

        self.record, self.total, self.ended = record, total, 0
        self.bar = tqdm(total=total, unit="job", file=sys.stderr, disable=None, dynamic_ncols=True)
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
        self.bar.write(f"{counts} {message}", file=sys.stderr)

    def close(self) -> None:
        self.bar.close()


# ------------------------------------------------------------------------------------------------- runners
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
                log = job.log_path(out).open("w")
                process = subprocess.Popen([sys.executable, *arguments[job.name]], stdout=log,
                                           stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
                running[process] = (job, log, time.perf_counter())
                progress.started(job)
            for process in [p for p in running if p.poll() is not None]:
                job, log, started = running.pop(process)
                log.close()
                progress.ended_job(job, process.returncode, time.perf_counter() - started)
            time.sleep(POLL_SECONDS)
    finally:
        for process, (job, log, _) in running.items():
            process.terminate()
            process.wait()
            log.close()
            progress.record.update(job, "pending", interrupted=True)  # its folder continues with --resume


def run_job_process(arguments: list[str], log_path: str, threads: int) -> int:
    """One job on whichever machine runs it (a Ray task): its own interpreter, its log on the shared folder."""
    Path(log_path).parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "w") as log:
        return subprocess.run([sys.executable, *arguments], stdout=log, stderr=subprocess.STDOUT,
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


def _aggregate(grid, jobs: list, out: Path, record: GridRecord) -> int:
    from tatl.experiments import write_tables

    record.write()
    paths = write_tables(grid, jobs, out)
    print((out / "table7.md").read_text())
    print("wrote " + ", ".join(str(p) for p in [out / "grid.json", *paths]), file=sys.stderr)
    write_grid_report(out)
    return 0


def write_grid_report(out: Path) -> None:
    """OUT/report.html and report.md; a failure is printed, never fails the grid (the tables are written)."""
    from tatl.report import write_report_or_say_why

    print(write_report_or_say_why(out), file=sys.stderr)
