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
import logging
from pathlib import Path

log = logging.getLogger(__name__)

EXAMPLES = """examples:
  tatl experiment configs/grid-example.yaml --out grids/example               # tiny synthetic grid, minutes on CPU
  tatl experiment configs/grid-example.yaml --out grids/example --workers 2   # two jobs at once
  tatl experiment configs/grid-table6.yaml --out grids/t6 --data ISIC2018/ --dry-run    # check, list the 450 jobs
  tatl experiment configs/grid-table6.yaml --out grids/t6 --data ISIC2018/ --ray auto --gpus-per-job 1
  tatl experiment configs/grid-table6.yaml --out grids/t6 --aggregate-only              # the tables so far
"""


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
    from tatl.experiments.grid import plan_jobs, read_grid
    from tatl.experiments.runners import (
        LOG_TAIL_LINES,
        GridRecord,
        Progress,
        import_ray,
        job_args,
        log_tail,
        prepare_data,
        run_local,
        run_ray,
        stage_sources,
    )

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
        log.info(f"{len(jobs)} jobs, configs valid")
        return 0
    if args.aggregate_only:
        return _aggregate(grid, jobs, out, record)
    ray = import_ray() if args.ray else None
    data = prepare_data(grid, config, out)
    todo = [job for job in jobs if not job.is_finished(out)]
    log.info(f"{len(jobs)} jobs: {len(jobs) - len(todo)} finished before (skipped), {len(todo)} to run")
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
        log.error(f"FAILED {job.name} (exit {record.details[job.name].get('returncode')}), end of "
                  f"{job.log_path(out)}:\n{log_tail(job.log_path(out), LOG_TAIL_LINES)}")
    log.info(f"{len(jobs) - len(failed)} of {len(jobs)} jobs finished, {len(failed)} failed")
    return 1 if failed else 0


# ------------------------------------------------------------------------------------------------- set-up


# ------------------------------------------------------------------------------------------------- status


# ------------------------------------------------------------------------------------------------- runners


def _aggregate(grid, jobs: list, out: Path, record) -> int:
    from tatl.experiments.grid import write_tables

    record.write()
    paths = write_tables(grid, jobs, out)
    print((out / "table7.md").read_text())
    log.info("wrote " + ", ".join(str(p) for p in [out / "grid.json", *paths]))
    _write_grid_report(out)
    return 0


def _write_grid_report(out: Path) -> None:
    """OUT/report.html and report.md; a failure is logged, never fails the grid (the tables are written)."""
    from tatl.reporting.report import write_report_or_say_why

    log.info(write_report_or_say_why(out))
