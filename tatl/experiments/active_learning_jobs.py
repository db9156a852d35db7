"""The jobs of an active-learning experiment and how they run: first the initial model of every seed, then one
chain of rounds per strategy x seed (rounds are sequential: each fine-tunes the one before).

With one worker every job runs in this process. `--workers N` or `--ray ADDRESS` run each job as a
`python -m tatl active-learning ... --job NAME` process through tatl.experiments.runners (the pool and the Ray
runner of `tatl experiment`), its log in DIR/logs/<name>.log and every job's status in DIR/jobs.json. A finished
job is skipped; a started one continues where it stopped (its finished rounds are kept).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tatl.errors import ConfigError
from tatl.experiments.active_learning import ExperimentDir, Settings, read_state
from tatl.experiments.runners import GridRecord
from tatl.io import write_json
from tatl.layout import RunLayout

log = logging.getLogger(__name__)
INITIAL = "initial"


@dataclass
class Job:
    """The initial model of a seed (strategy None), or the rounds of one strategy and seed."""

    name: str
    strategy: str | None
    seed: int
    rounds: int

    def log_path(self, out: Path) -> Path:
        return ExperimentDir(out).logs / f"{self.name}.log"

    def is_finished(self, out: Path) -> bool:
        folder = ExperimentDir(out)
        if self.strategy is None:
            return RunLayout(folder.initial_run(self.seed)).metrics.is_file()
        return read_state(folder, self.strategy, self.seed, self.rounds) is not None


def plan_jobs(settings: Settings) -> tuple[list[Job], list[Job]]:
    """(the initial jobs, one per seed; the chains, one per strategy x seed)."""
    initial = [Job(f"{INITIAL}__seed{seed}", None, seed, 0) for seed in settings.seeds]
    chains = [Job(f"{strategy}__seed{seed}", strategy, seed, settings.rounds)
              for strategy in settings.strategies for seed in settings.seeds]
    return initial, chains


def job_named(settings: Settings, name: str) -> Job:
    initial, chains = plan_jobs(settings)
    job = next((job for job in [*initial, *chains] if job.name == name), None)
    if job is None:
        raise ConfigError(f"--job {name}: not a job of these settings (e.g. {initial[0].name})")
    return job


def run_job(exp: Any, job: Job) -> None:
    """One job in this process."""
    from tatl.experiments.active_learning_rounds import run_chain, run_initial

    if job.strategy is None:
        run_initial(exp, job.seed)
    else:
        run_chain(exp, job.strategy, job.seed)


def job_arguments(settings: Settings, out: Path, job: Job) -> list[str]:
    """`python -m tatl active-learning` arguments (without the interpreter) that run `job` alone."""
    command = ["-m", "tatl", "active-learning", settings.data, "--out", str(Path(out).resolve()),
               "--initial", str(settings.initial), "--per-round", str(settings.per_round),
               "--rounds", str(settings.rounds), "--strategies", *settings.strategies,
               "--seeds", *map(str, settings.seeds), "--job", job.name]
    if settings.config is not None:
        command += ["--config", settings.config]
    for override in settings.overrides:
        command += ["--set", override]
    return command


class JobRecord(GridRecord):
    """GridRecord's status keeping, written to DIR/jobs.json."""

    def write(self) -> None:
        entries = [{**vars(job), "status": self.status[job.name], "log": str(job.log_path(self.out)),
                    **self.details[job.name]} for job in self.jobs]
        write_json(ExperimentDir(self.out).jobs, {"settings": self.grid.recorded(), "jobs": entries})


def run_jobs(exp: Any, jobs: list[Job], workers: int, ray_address: str | None = None, gpus_per_job: float = 0,
             cpus_per_job: int = 1, listed: list[Job] | None = None) -> list[str]:
    """Run the unfinished jobs (in this process with one worker and no Ray); return the names of failed ones.
    listed: every job of the experiment, for DIR/jobs.json (default: `jobs`)."""
    from tatl.experiments.runners import LOG_TAIL_LINES, Progress, import_ray, log_tail, run_local, run_ray

    out, settings = exp.folder.root, exp.settings
    todo = [job for job in jobs if not job.is_finished(out)]
    if ray_address is None and workers == 1:
        for job in todo:
            log.info(f"job {job.name}")
            run_job(exp, job)
        return []
    ray = import_ray() if ray_address else None
    record = JobRecord(settings, listed or jobs, out)
    progress = Progress(record, len(todo))
    arguments = {job.name: job_arguments(settings, out, job) for job in todo}
    try:
        if ray is not None:
            run_ray(ray, ray_address, todo, arguments, out, progress, gpus_per_job, cpus_per_job)
        else:
            run_local(todo, arguments, out, progress, workers)
    finally:
        progress.close()
    failed = [job for job in jobs if record.status[job.name] == "failed"]
    for job in failed:
        log.error(f"FAILED {job.name}, end of {job.log_path(out)}:\n{log_tail(job.log_path(out), LOG_TAIL_LINES)}")
    return [job.name for job in failed]
