"""Fine-tuning in the background: `tatl finetune` as a subprocess, its status, its stop, and what its result means.

`BackgroundJob` runs any command line, its output in a log file, and reports "running", "done" (exit code 0),
"failed" (another code; the message is the command's error line) or "stopped". `Teacher` starts the fine-tuning of
the active model on the corrected images:

    python -m tatl finetune ACTIVE_RUN FOLDER/.tatl-serve/teach/run_<n> --out FOLDER/.tatl-serve/models/run_<n>

where teach/run_<n>/ holds the corrected images and their official masks as they were when Teach was pressed
(<id>.jpg and corrections/<id>_attribute_<name>.png, hard links, or copies where links are not possible): images
nobody corrected are not in it, and a correction saved while it trains does not change what it trains on. When
it has finished, the scores before and after (the macro-average Jaccard of the default variant on the run's
validation split) are read from the new run's finetune.json (RunLayout.finetune_record). The new version becomes
active only when it did not score lower; otherwise it is kept aside with the reason. A failure registers a failed
version with its message. Nothing is activated while it runs.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from tatl.errors import DataError
from tatl.layout import RunLayout
from tatl.serving.models import FAILED, KEPT_ASIDE, READY, ModelVersions
from tatl.serving.store import Store

log = logging.getLogger(__name__)

SCORE_PATH = ("macro_average", "jaccard")  # inside its "before" and "after": the score compared (higher is better)
LOG_LINES = 40


class BackgroundJob:
    """One subprocess: its output goes to `output`; `progress_log` (if given) is another file whose last lines are
    shown while it runs (RUN2/log.txt)."""

    def __init__(self, command: Sequence[str], output: Path, progress_log: Path | None = None,
                 on_exit: Callable[[BackgroundJob], None] | None = None):
        self.command, self.output, self.progress_log = list(command), Path(output), progress_log
        self.started = time.time()
        self.stopped = False
        self.output.parent.mkdir(parents=True, exist_ok=True)
        with open(self.output, "wb") as handle:  # the child writes it as it goes: not a file tatl.io could write
            self.process = subprocess.Popen(self.command, stdout=handle, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL)
        self.result: dict | None = None
        self._watcher = threading.Thread(target=self._wait, args=(on_exit,), daemon=True)
        self._watcher.start()

    def _wait(self, on_exit) -> None:
        self.process.wait()
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
        code = self.process.poll()
        if code is None or self._watcher.is_alive():
            return "running"
        if self.stopped:
            return "stopped"
        return "done" if code == 0 else "failed"

    def stop(self) -> None:
        if self.process.poll() is None:
            self.stopped = True
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()

    def lines(self) -> list[str]:
        """The last lines of the progress log when there is one, else of the command's own output."""
        for path in (self.progress_log, self.output):
            if path is not None and Path(path).is_file():
                text = Path(path).read_text(errors="replace").splitlines()
                if text:
                    return text[-LOG_LINES:]
        return []

    def output_lines(self) -> list[str]:
        return self.output.read_text(errors="replace").splitlines()[-LOG_LINES:] if self.output.is_file() else []

    def status(self) -> dict:
        return {"state": self.state, "command": self.command, "started": self.started,
                "returncode": self.process.poll(), "log": self.lines(), "result": self.result}


def finetune_command(run: Path, folder: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "tatl", "finetune", str(run), str(folder), "--out", str(out)]


def read_scores(run: Path) -> tuple[float, float, dict]:
    """(before, after, the whole record) from the fine-tuned run's finetune.json, written when it has finished."""
    path = RunLayout(run).finetune_record
    try:
        record = json.loads(path.read_text())
        before, after = record["before"], record["after"]
        for key in SCORE_PATH:
            before, after = before[key], after[key]
        return float(before), float(after), record
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise DataError(f"{path}: no scores before and after ({type(error).__name__}: {error})") from error


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
            self.name = self.versions.next_name()
            paths = self.versions.paths
            out = paths.model_run(self.name)
            data = self.store.teaching_snapshot(paths.teach_data(self.name))
            self.job = BackgroundJob(self.command(self.versions.path(base), data, out), paths.model_output(self.name),
                                     RunLayout(out).log, on_exit=lambda job: self._finish(job, base, out))
            log.info("fine-tuning %s from %s: %s", self.name, base, " ".join(self.job.command))
            return self.status()

    def _finish(self, job: BackgroundJob, base: str, out: Path) -> None:
        if job.stopped:
            job.result = {"status": "stopped", "reason": "stopped from the page"}
            return
        if job.process.returncode != 0:
            said = job.output_lines() + job.lines()  # the command's own error line first
            message = next((line for line in said if "error" in line.lower()), (said or ["no output"])[-1])
            job.result = self.versions.add(self.name, out, FAILED, None, message)
            return
        try:
            before, after, record = read_scores(out)
        except DataError as error:  # finished, but without the scores that decide: never activated
            job.result = self.versions.add(self.name, out, FAILED, None, str(error))
            return
        if after < before:
            reason = f"scored {after:.4f} on validation, lower than {before:.4f} of {base}: kept aside"
            job.result = self.versions.add(self.name, out, KEPT_ASIDE, record, reason)
            return
        reason = f"scored {after:.4f} on validation ({before:.4f} before, with {base})"
        job.result = self.versions.add(self.name, out, READY, record, reason)
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
