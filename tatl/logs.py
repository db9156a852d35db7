"""Logging and progress bars: the standard `logging` module, set up once for the command line and run folders.

Every module logs through `log = logging.getLogger(__name__)` (all loggers sit under "tatl"): `log.info` for what a
user follows (a stage started, its scores), `log.warning` for what they should act on, `log.debug` for details.
Nothing is printed by library code except through these, so a program that imports tatl decides what it sees
(Python's default shows warnings only).

The command line calls `configure(verbosity)`: --quiet shows warnings and errors, the default adds info, --verbose
adds debug. Console lines are the message alone (a warning says "warning:"); `log_to_file(RUN/log.txt)` adds every
record from debug up, with a timestamp and the module, for as long as the run lasts. Under torchrun only rank 0
logs to the console and the file: every rank runs the same stages, rank 0 speaks for them.

`progress(items, desc)` is a tqdm bar on stderr for any step that can take more than a few seconds: shown on a
terminal, hidden when stderr is not one (a log file, CI) or with --quiet, and on every rank but 0.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from tatl.io import is_main_process

if TYPE_CHECKING:
    from tqdm import tqdm

T = TypeVar("T")
ROOT = "tatl"
QUIET, NORMAL, VERBOSE = -1, 0, 1
_LEVELS = {QUIET: logging.WARNING, NORMAL: logging.INFO, VERBOSE: logging.DEBUG}
_state = {"show_progress": True}


class _MainProcessOnly(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return is_main_process()


class _ConsoleFormatter(logging.Formatter):
    """The message alone for info and debug; "warning: ..." and "error: ..." for what needs attention."""

    def format(self, record: logging.LogRecord) -> str:
        message = super().format(record)
        return message if record.levelno < logging.WARNING else f"{record.levelname.lower()}: {message}"


class _ConsoleHandler(logging.Handler):
    """Writes to the current sys.stderr, looked up at each line (pytest and embedding programs replace it), through
    tqdm so that a bar on the screen is not torn."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            from tqdm import tqdm

            tqdm.write(self.format(record), file=sys.stderr)
            sys.stderr.flush()  # a parent process reading our stderr line by line sees each line at once
        except Exception:  # noqa: BLE001 - logging must never raise
            self.handleError(record)


class _ToParent(logging.Handler):
    """Stands in for propagation while log_to_file has lowered the tatl level: hands the parent logger's handlers
    (a program's own logging set-up) only the records they would have had without the file."""

    def __init__(self, logger: logging.Logger, level: int) -> None:
        super().__init__(level)
        self.parent = logger.parent

    def emit(self, record: logging.LogRecord) -> None:
        if self.parent is not None:
            self.parent.handle(record)


def configure(verbosity: int = NORMAL) -> None:
    """Console logging for the command line (replaces an earlier call's handler)."""
    logger = logging.getLogger(ROOT)
    for handler in [h for h in logger.handlers if getattr(h, "_tatl_console", False)]:
        logger.removeHandler(handler)
    handler = _ConsoleHandler()
    handler._tatl_console = True  # type: ignore[attr-defined]
    handler.setFormatter(_ConsoleFormatter("%(message)s"))
    handler.setLevel(_LEVELS[max(QUIET, min(VERBOSE, verbosity))])
    handler.addFilter(_MainProcessOnly())
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)  # the handlers choose; a file log keeps debug lines too
    logger.propagate = False
    _state["show_progress"] = verbosity > QUIET


@contextmanager
def log_to_file(path: Path) -> Iterator[None]:
    """Append every tatl record (debug and up) to `path`, with time, level and module, while the block runs."""
    logger = logging.getLogger(ROOT)
    before = (logger.level, logger.propagate)
    gate = None
    if logger.getEffectiveLevel() > logging.DEBUG:  # a program that never called configure(): a full file anyway,
        if logger.propagate:  # while its own handlers keep getting what they got before
            gate = _ToParent(logger, logger.getEffectiveLevel())
            logger.addHandler(gate)
            logger.propagate = False
        logger.setLevel(logging.DEBUG)
    handler = None
    if is_main_process():
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(path, encoding="utf-8")
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s",
                                               "%Y-%m-%d %H:%M:%S"))
        handler.setLevel(logging.DEBUG)
        logger.addHandler(handler)
    try:
        yield
    finally:
        for added in (handler, gate):
            if added is not None:
                logger.removeHandler(added)
                added.close()
        logger.setLevel(before[0])
        logger.propagate = before[1]


def progress(items: Iterable[T] | None, desc: str, total: int | None = None, unit: str = "it") -> tqdm:
    """A progress bar over `items` on stderr (see the module docstring for when it is shown). items None: a bar the
    caller advances with .update(n), for work that is not one loop (jobs finishing in other processes)."""
    from tqdm import tqdm

    hidden = not _state["show_progress"] or not is_main_process()
    # disable=None: tqdm hides itself when stderr is not a terminal
    return tqdm(items, desc=desc, total=total, unit=unit, file=sys.stderr, disable=True if hidden else None,
                leave=False, dynamic_ncols=True)
