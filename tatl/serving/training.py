"""Fine-tuning in the background: `tatl finetune` as subprocesses, their status, their stop, and what the result means.

`BackgroundJob` runs command lines one after the other (a step each), their output in one log file, and reports
"running", "done" (every step exited 0), "failed" (a step exited otherwise; the message is its error line) or
"stopped". `Teacher` fine-tunes the active model on the saved corrections, each attribute's heads on the images
where that attribute was corrected or confirmed and on no other (tatl.serving.store.Store.teaching_groups): one
step per set of images, each step fine-tuning the previous step's run,

    python -m tatl finetune RUN_k-1 FOLDER/.tatl-serve/teach/run_<n>/step_<k> --out RUN_k

where RUN_0 is the active model, step_<k>/ holds the images of step k and their official masks of its attributes
only, as they were when Teach was pressed (<id>.jpg and corrections/<id>_attribute_<name>.png, hard links or
copies), and the last RUN_k is FOLDER/.tatl-serve/models/run_<n> (the others: models/run_<n>.steps/<k>). So the
heads of attributes nobody corrected are copied unchanged, and a correction saved while it trains does not change
what it trains on. When it has finished, the scores before (of RUN_0, from the first step's finetune.json) and
after (of the last run) are compared: the macro-average Jaccard of the default variant on the active model's
validation split, and the per-attribute scores are kept for the page. The new version becomes active only when it
did not score lower; otherwise it is kept aside with the reason. A failure registers a failed version with its
message. Nothing is activated while it runs.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from tatl.errors import DataError
from tatl.layout import RunLayout
from tatl.serving.models import FAILED, KEPT_ASIDE, READY, ModelVersions
from tatl.serving.store import Store

log = logging.getLogger(__name__)

SCORE_PATH = ("macro_average", "jaccard")  # inside its "before" and "after": the score compared (higher is better)
LOG_LINES = 40


@dataclass(frozen=True)
class Step:
    command: list[str]
    progress_log: Path | None  # a file whose last lines are shown while the step runs (RUN_k/log.txt)
    label: str  # what it does, in words


class BackgroundJob:
    """Subprocesses run one after the other; their output goes to `output`."""

    def __init__(self, steps: Sequence[Step], output: Path, on_exit: Callable[[BackgroundJob], None] | None = None):
        self.steps, self.output = list(steps), Path(output)
        self.started = time.time()
        self.stopped = False
        self.current = 0
        self.process: subprocess.Popen | None = None
        self.returncode: int | None = None
        self.result: dict | None = None
        self._lock = threading.Lock()
        self.output.parent.mkdir(parents=True, exist_ok=True)
        self.output.write_bytes(b"")  # the children append to it as they go: not a file tatl.io could write
        self._watcher = threading.Thread(target=self._run, args=(on_exit,), daemon=True)
        self._watcher.start()

    def _run(self, on_exit) -> None:
        for index, step in enumerate(self.steps):
            with self._lock:
                if self.stopped:
                    break
                self.current = index
                with open(self.output, "ab") as handle:
                    self.process = subprocess.Popen(step.command, stdout=handle, stderr=subprocess.STDOUT,
                                                    stdin=subprocess.DEVNULL)
            self.returncode = self.process.wait()
            if self.returncode != 0:
                break
        if on_exit is not None:
            try:
                on_exit(self)
            except Exception as error:  # noqa: BLE001 - the page must show why, whatever went wrong
                log.exception("after fine-tuning")
                self.result = {"status": FAILED, "reason": f"{type(error).__name__}: {error}"}

    def wait(self, timeout: float | None = None) -> None:
        self._watcher.join(timeout)

    @property
    def state(self) -> str:
        if self._watcher.is_alive():
            return "running"
        if self.stopped:
            return "stopped"
        return "done" if self.returncode == 0 else "failed"

    def stop(self) -> None:
        with self._lock:
            self.stopped = True
            process = self.process
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()

    def lines(self) -> list[str]:
        """The last lines a person follows: the running step's log without its debug lines when there is one,
        else the commands' own output."""
        log_file = self.steps[self.current].progress_log
        if log_file is not None and Path(log_file).is_file():
            text = [line for line in Path(log_file).read_text(errors="replace").splitlines() if " DEBUG " not in line]
            if text:
                return text[-LOG_LINES:]
        return self.output_lines()

    def output_lines(self) -> list[str]:
        return self.output.read_text(errors="replace").splitlines()[-LOG_LINES:] if self.output.is_file() else []

    def status(self) -> dict:
        step = self.steps[self.current]
        return {"state": self.state, "command": step.command, "step": self.current + 1, "steps": len(self.steps),
                "step_label": step.label, "started": self.started, "returncode": self.returncode,
                "log": self.lines(), "result": self.result}


def finetune_command(run: Path, folder: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "tatl", "finetune", str(run), str(folder), "--out", str(out)]


def score_of(scores: dict) -> float:
    """The score compared (SCORE_PATH) in one side ("before" or "after") of a finetune.json."""
    for key in SCORE_PATH:
        scores = scores[key]
    return float(scores)


def read_scores(run: Path) -> dict:
    """The fine-tuned run's finetune.json (written when it has finished), checked to hold the score compared."""
    path = RunLayout(run).finetune_record
    try:
        record = json.loads(path.read_text())
        for side in ("before", "after"):
            score_of(record[side])  # raises when it is missing or not a number
        return record
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise DataError(f"{path}: no scores before and after ({type(error).__name__}: {error})") from error


def compared(records: Sequence[dict]) -> dict:
    """Before (the first step's parent) and after (the last step's run), the macro score and per attribute, and
    every attribute a step fine-tuned."""
    before, after = records[0]["before"], records[-1]["after"]
    attributes = sorted(set(before.get("per_attribute", {})) & set(after.get("per_attribute", {})))
    return {"before": score_of(before), "after": score_of(after),
            "per_attribute": {a: {"before": before["per_attribute"][a].get("jaccard"),
                                  "after": after["per_attribute"][a].get("jaccard")} for a in attributes},
            "trained": sorted({a for r in records for a in r.get("attributes_trained", [])}),
            "validation": records[-1].get("validation"), "images": records[-1].get("images")}


def both(after: float, before: float) -> tuple[str, str]:
    """The two scores with as many decimals (4 at least) as it takes to tell them apart."""
    for decimals in range(4, 9):
        if f"{after:.{decimals}f}" != f"{before:.{decimals}f}":
            break
    return f"{after:.{decimals}f}", f"{before:.{decimals}f}"


class Teacher:
    """At most one fine-tuning at a time, for one server."""

    def __init__(self, store: Store, versions: ModelVersions, command: Callable[[Path, Path, Path], list[str]]
                 = finetune_command):
        self.store, self.versions, self.command = store, versions, command
        self.job: BackgroundJob | None = None
        self.name: str | None = None
        self._lock = threading.Lock()

    def start(self) -> dict:
        with self._lock:
            if self.job is not None and self.job.state == "running":
                raise DataError("a fine-tuning is already running: stop it or wait for it")
            base = self.versions.active
            groups = self.store.teaching_groups()
            self.name = self.versions.next_name()
            paths = self.versions.paths
            runs = [self.versions.path(base)] + [paths.model_step(self.name, k) for k in range(1, len(groups))]
            runs.append(paths.model_run(self.name))
            steps = []
            for k, (attributes, image_ids) in enumerate(groups, start=1):
                data = self.store.teaching_snapshot(paths.teach_step(self.name, k), attributes, image_ids)
                label = f"{', '.join(attributes)} on {len(image_ids)} image(s)"
                steps.append(Step(self.command(runs[k - 1], data, runs[k]), RunLayout(runs[k]).log, label))
            self.job = BackgroundJob(steps, paths.model_output(self.name),
                                     on_exit=lambda job: self._finish(job, base, runs[1:]))
            log.info("fine-tuning %s from %s: %s", self.name, base, "; ".join(s.label for s in steps))
            return self.status()

    def _finish(self, job: BackgroundJob, base: str, outs: list[Path]) -> None:
        out = outs[-1]
        if job.stopped:
            job.result = {"status": "stopped", "reason": "stopped from the page"}
            return
        if job.returncode != 0:
            said = job.output_lines() + job.lines()  # the command's own error line first
            message = next((line for line in said if "error" in line.lower()), (said or ["no output"])[-1])
            job.result = self.versions.add(self.name, out, FAILED, None, message)
            return
        try:
            scores = compared([read_scores(run) for run in outs])
        except DataError as error:  # finished, but without the scores that decide: never activated
            job.result = self.versions.add(self.name, out, FAILED, None, str(error))
            return
        after, before = both(scores["after"], scores["before"])
        if scores["after"] < scores["before"]:
            reason = f"scored {after} on validation, lower than {before} of {base}: kept aside"
            job.result = self.versions.add(self.name, out, KEPT_ASIDE, scores, reason)
            return
        reason = f"scored {after} on validation ({before} before, with {base})"
        job.result = self.versions.add(self.name, out, READY, scores, reason)
        self.versions.activate(self.name)

    def stop(self) -> dict:
        if self.job is None:
            raise DataError("no fine-tuning has been started")
        self.job.stop()
        return self.status()

    def status(self) -> dict:
        if self.job is None:
            return {"state": "idle", "log": [], "result": None}
        return {"name": self.name, **self.job.status()}
