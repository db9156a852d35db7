"""Logging and progress bars: --quiet/--verbose on every command, RUN/log.txt lines, bars, rank 0 only.

A stand-in command (registered for the test, no torch) logs one line at each level and reports whether its
progress bar would show, so the flags are checked through the real `tatl.cli.main`.
"""

from __future__ import annotations

import io
import logging
import re
import sys
import types

import pytest

from tatl import cli, logs

FAKE = "tatl.commands.fake_logging"


class Terminal(io.StringIO):
    """A stderr that says it is a terminal: tqdm shows its bars there."""

    def isatty(self) -> bool:
        return True


@pytest.fixture
def fake_command(monkeypatch) -> dict:
    """`tatl fake`: logs a debug, info, warning and error line from a tatl module logger; records its bar's state."""
    seen: dict = {}

    def run(args) -> int:
        log = logging.getLogger(FAKE)
        log.debug("debug line")
        log.info("info line")
        log.warning("warning line")
        log.error("error line")
        seen["bar_hidden"] = bool(logs.progress(range(3), "fake", unit="image").disable)  # None: shown
        return 0

    module = types.ModuleType(FAKE, "A stand-in command that logs one line at each level, for these tests.")
    module.EXAMPLES = "examples:\n  tatl fake"
    module.add_arguments = lambda parser: None
    module.run = run
    monkeypatch.setitem(sys.modules, FAKE, module)
    monkeypatch.setitem(cli.COMMANDS, "fake", (FAKE, "log one line at each level"))
    return seen


@pytest.fixture
def tatl_records(caplog):
    """caplog for tatl's loggers: the command line's set-up (configure) does not pass them on to the root logger
    (pytest 9 attaches caplog to such loggers itself; older versions do not)."""
    logger = logging.getLogger(logs.ROOT)
    attached = caplog.handler not in logger.handlers
    if attached:
        logger.addHandler(caplog.handler)
    yield caplog
    if attached:
        logger.removeHandler(caplog.handler)


def lines(capsys) -> list[str]:
    return capsys.readouterr().err.splitlines()


@pytest.mark.parametrize("argv", [["fake"], ["-q", "fake"], ["fake", "--quiet"], ["-v", "fake"], ["fake", "-v"],
                                  ["--verbose", "fake"]])
def test_quiet_and_verbose_before_or_after_the_command(fake_command, capsys, argv):
    assert cli.main(argv) == 0
    err = lines(capsys)
    assert err[-2:] == ["warning: warning line", "error: error line"]  # kept by every verbosity
    quiet, verbose = {"-q", "--quiet"} & set(argv), {"-v", "--verbose"} & set(argv)
    assert ("info line" in err) == (not quiet)
    assert ("debug line" in err) == bool(verbose)


@pytest.mark.parametrize("argv", [["-q", "-v", "fake"], ["fake", "-q", "-v"], ["-q", "fake", "-v"],
                                  ["--verbose", "fake", "--quiet"]])
def test_quiet_and_verbose_exclude_each_other(fake_command, capsys, argv):
    with pytest.raises(SystemExit) as exited:
        cli.main(argv)
    assert exited.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err
    assert "bar_hidden" not in fake_command  # the command never ran


def test_progress_bar_shows_on_a_terminal_unless_quiet(fake_command, monkeypatch):
    monkeypatch.setattr(sys, "stderr", Terminal())
    assert cli.main(["fake"]) == 0
    assert fake_command["bar_hidden"] is False and "info line" in sys.stderr.getvalue()
    monkeypatch.setattr(sys, "stderr", Terminal())
    assert cli.main(["fake", "-q"]) == 0
    assert fake_command["bar_hidden"] is True and "info line" not in sys.stderr.getvalue()


def test_progress_bar_is_hidden_when_stderr_is_not_a_terminal(fake_command):
    assert cli.main(["fake"]) == 0  # pytest's captured stderr is no terminal
    assert fake_command["bar_hidden"] is True


def test_only_rank_0_logs_and_shows_bars(monkeypatch):
    monkeypatch.setattr(sys, "stderr", Terminal())
    monkeypatch.setattr(logs, "is_main_process", lambda: False)  # another torchrun rank
    logs.configure(logs.VERBOSE)
    logging.getLogger("tatl.pipeline.stages").warning("from rank 1")
    assert sys.stderr.getvalue() == ""
    assert logs.progress(range(3), "x").disable is True  # not None: hidden whatever the terminal says
    monkeypatch.setattr(logs, "is_main_process", lambda: True)
    logging.getLogger("tatl.pipeline.stages").warning("from rank 0")
    assert sys.stderr.getvalue() == "warning: from rank 0\n"


def test_log_to_file_writes_timestamped_lines_until_the_block_ends(tmp_path, capsys):
    path = tmp_path / "run" / "log.txt"
    log = logging.getLogger("tatl.pipeline.stages")
    logs.configure(logs.QUIET)  # the file has every line, whatever the console shows
    with logs.log_to_file(path):
        log.debug("a detail")
        log.info("stage 1: done")
        log.warning("something to act on")
    log.info("after the block")
    written = path.read_text().splitlines()
    stamp = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d "
    expected = [("DEBUG", "a detail"), ("INFO", "stage 1: done"), ("WARNING", "something to act on")]
    assert len(written) == len(expected)
    for line, (level, message) in zip(written, expected, strict=True):
        assert re.fullmatch(stamp + f"{level} +tatl\\.pipeline\\.stages: {message}", line), line
    assert lines(capsys) == ["warning: something to act on"]


def test_log_to_file_in_a_program_with_its_own_logging(tmp_path, caplog):
    """Without configure() (tatl used as a library) the file still gets debug lines, and the program's own handlers
    get no more than before; the logger is left as it was."""
    logger = logging.getLogger(logs.ROOT)
    saved = logger.handlers[:], logger.propagate, logger.level
    logger.handlers[:] = []
    logger.propagate = True
    logger.setLevel(logging.NOTSET)
    try:
        log = logging.getLogger("tatl.data.cache")
        with logs.log_to_file(tmp_path / "log.txt"):
            log.debug("cache: read")
            log.warning("disk almost full")
        assert "DEBUG   tatl.data.cache: cache: read" in (tmp_path / "log.txt").read_text()
        assert [r.getMessage() for r in caplog.records] == ["disk almost full"]  # the root logger's handler
        assert (logger.handlers, logger.propagate, logger.level) == ([], True, logging.NOTSET)
    finally:
        logger.handlers[:] = saved[0]
        logger.propagate = saved[1]
        logger.setLevel(saved[2])


def test_a_library_message_goes_through_its_module_logger(tmp_path, tatl_records, capsys):
    from tatl.pipeline.setup import prepare_run_dir

    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("{}\n")  # what a run stopped by its data checks leaves
    prepare_run_dir(run, resume=False)
    (record,) = [r for r in tatl_records.records if "holds only the config.yaml" in r.getMessage()]
    assert record.name == "tatl.pipeline.setup" and record.levelno == logging.WARNING
    assert lines(capsys) == [f"warning: {record.getMessage()}"]  # on the console once, as the CLI shows it
