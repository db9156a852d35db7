"""The one way tatl writes a file: to a temporary name beside it, then renamed over it.

A reader (or a process killed mid-write) sees the old file or the new one, never half of one. `durable=True` also
fsyncs the file and its folder before returning, for what is expensive to recreate (checkpoints, the decoded-image
cache, splits); outputs that come by the thousand (masks, overlays) skip the fsync. Files get the umask's
permissions, like any other file the user writes.

Under torchrun every rank runs the same code but only rank 0 writes (N writers of one file would only race): on the
other ranks these functions do nothing.
"""

from __future__ import annotations

import csv
import fcntl
import io
import itertools
import json
import os
import shutil
import sys
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import IO, Any, BinaryIO

from tatl.errors import DataError

_TEMPORARY_NUMBERS = itertools.count()
TEMPORARY_GLOB = ".*.tmp"  # what a killed writer can leave behind: `.<name>.<pid>.<n>.tmp`


def is_main_process() -> bool:
    """Rank 0 under torchrun, else True. Reads torch.distributed only when something has imported it: without it no
    process group can exist, and `import tatl.io` stays free of torch."""
    dist = sys.modules.get("torch.distributed")
    if dist is None or not dist.is_available() or not dist.is_initialized():
        return True
    return dist.get_rank() == 0


def atomic_write(path: Path, write: Callable[[BinaryIO], object], durable: bool = False) -> None:
    """Call write(file) on a temporary file beside `path`, then rename it to `path`. OSError -> DataError naming the
    file (the OSError is its __cause__)."""
    if not is_main_process():
        return
    path = Path(path)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{next(_TEMPORARY_NUMBERS)}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(temporary, "xb") as handle:
            write(handle)
            if durable:
                handle.flush()
                os.fsync(handle.fileno())  # the data is on disk before the name points at it
        os.replace(temporary, path)
    except OSError as error:
        raise DataError(f"{path}: cannot write ({error.strerror or error})") from error
    finally:
        temporary.unlink(missing_ok=True)
    if durable:
        _fsync_folder(path.parent)


def _fsync_folder(folder: Path) -> None:
    # The rename itself is durable only once the folder entry is synced.
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_bytes(path: Path, data: bytes, durable: bool = False) -> None:
    atomic_write(path, lambda handle: handle.write(data), durable)


def write_text(path: Path, text: str, durable: bool = False) -> None:
    write_bytes(path, text.encode("utf-8"), durable)


def write_json(path: Path, value: Any, durable: bool = True, indent: int | None = 2, **dump_options: Any) -> None:
    write_text(path, json.dumps(value, indent=indent, **dump_options) + "\n", durable)


def csv_text(rows: Iterable[dict[str, Any]], columns: Sequence[str] | None = None, line_end: str = "\r\n") -> str:
    """A header and one line per row; columns: every key of the rows in the order first met (rows may differ,
    a missing value is empty) unless given."""
    rows = list(rows)
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=list(columns or dict.fromkeys(k for row in rows for k in row)),
                            lineterminator=line_end)
    writer.writeheader()
    writer.writerows(rows)
    return text.getvalue()


def write_csv(path: Path, rows: Iterable[dict[str, Any]], columns: Sequence[str] | None = None, durable: bool = False,
              line_end: str = "\r\n") -> None:
    write_text(path, csv_text(rows, columns, line_end), durable)


def write_png(path: Path, image: Any, compress_level: int = 1) -> None:
    """A PIL image or an (H, W) / (H, W, 3) uint8 array as PNG. Level 1: binary masks compress almost as well as at
    the default 6, several times faster."""
    from PIL import Image

    image = image if isinstance(image, Image.Image) else Image.fromarray(image)
    atomic_write(path, lambda handle: image.save(handle, format="PNG", compress_level=compress_level))


def link_or_copy(source: str | Path, target: str | Path) -> None:
    """`target` as a hard link to `source`, or, where links are not possible (another file system), an atomic copy
    with its times. Safe to share: tatl replaces files by renaming a new one over the name, never writes into one,
    so a linked file keeps what it held when it was linked."""
    if not is_main_process():
        return
    source, target = Path(source), Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, target)
    except OSError:
        atomic_write(target, lambda handle: _copy_into(source, handle))


def _copy_into(source: Path, handle: BinaryIO) -> None:
    with open(source, "rb") as read:
        shutil.copyfileobj(read, handle)
    handle.flush()
    shutil.copystat(source, handle.name)  # the times too (data fingerprints read them), as shutil.copy2 kept


def remove_stale_temporaries(folder: Path) -> None:
    """Temporary files a killed writer left in `folder` (a scorer reading every *.png would see them)."""
    for stale in Path(folder).glob(TEMPORARY_GLOB):
        stale.unlink(missing_ok=True)


class LockHeld(Exception):
    """Another process holds the lock; `holder` is what it wrote into the lock file."""

    def __init__(self, holder: str):
        super().__init__(holder)
        self.holder = holder


def hold_lock(path: Path, holder: str) -> IO[str]:
    """An exclusive flock on `path`, held while the returned file stays open (a killed process leaves no stale
    lock), with `holder` written into it for whoever is refused; LockHeld(what the holder wrote) when taken. The
    lock file is not written through atomic_write: it must stay the one open file that holds the lock."""
    handle = open(path, "a+")  # noqa: SIM115 - held open for as long as the lock is held
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.seek(0)
        taken_by = handle.read().strip() or "another process"
        handle.close()
        raise LockHeld(taken_by) from None
    handle.seek(0)
    handle.truncate()
    handle.write(holder)
    handle.flush()
    return handle
