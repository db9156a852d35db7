"""Disk cache of decoded, resized arrays, so later epochs and stages do no image decoding.

An entry is one `.npy` file named by the SHA-256 of its key, a JSON-serialisable dict in which callers put
everything the array depends on: file fingerprints (path, size, mtime), target size, crop boxes. An edited image
changes its fingerprint, hence the key, hence the file: stale entries are never read, only left behind (delete the
folder to reclaim the space).

Writes are atomic (a temporary file in the same folder, fsync, os.replace), so an interrupted run or two runs
sharing a cache never leave a half-written entry under a final name. Entries are loaded as read-only memory maps.

Under torchrun rank 0 alone decodes and writes an entry; the other ranks wait for it, then map the file it wrote
(every rank asks for the same entries, since each loads the whole set and then takes its share).
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np

from tatl import distributed
from tatl.errors import DataError
from tatl.io import atomic_write

log = logging.getLogger(__name__)

KEY_VERSION = 1  # bump when the meaning of cached arrays changes (e.g. a new resize rule)


def file_fingerprint(path: Path) -> dict:
    """{"path", "size", "mtime_ns"}: changes whenever the file is replaced or edited."""
    try:
        stat = Path(path).stat()
    except OSError as error:
        raise DataError(f"{path}: cannot read file information ({error.strerror or error})") from error
    return {"path": str(Path(path).resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def cache_file(cache_dir: Path, key: dict) -> Path:
    """The entry's file name: a readable prefix (key["what"]) and the key's hash."""
    text = json.dumps({"key_version": KEY_VERSION, **key}, sort_keys=True, default=_json_default)
    digest = hashlib.sha256(text.encode()).hexdigest()[:32]
    what = str(key.get("what", "array"))
    prefix = "".join(c if c.isalnum() or c in "-_" else "_" for c in what)[:40]
    return Path(cache_dir) / f"{prefix}-{digest}.npy"


def cached_array(cache_dir: Path | None, key: dict, build: Callable[[], np.ndarray]) -> np.ndarray:
    """The array for `key`: loaded from `cache_dir` (read-only memory map) or built, saved and loaded.

    cache_dir None: just build (a writable in-memory array). A failed write (full disk, no permission) raises a
    DataError naming the cache folder. Under torchrun every rank must call this with the same key: the others wait
    while rank 0 builds, and a failure on rank 0 stops them too.
    """
    if cache_dir is None:
        return build()
    path = cache_file(cache_dir, key)

    def load_or_build() -> np.ndarray:
        cached = _load(path)
        if cached is not None:
            log.debug(f"cache: {path.name} read")
            return cached
        if not distributed.is_main_process():  # rank 0 has just written it: this process sees another folder
            raise DataError(f"{path}: written by torchrun rank 0 but not readable here; every process must see the "
                            "same cache folder (or run with --set data.cache=false)")
        log.debug(f"cache: {path.name} not found, decoding")
        array = np.asarray(build())
        _write_atomic(path, array)
        return np.load(path, mmap_mode="r")

    return distributed.main_process_first(load_or_build)  # rank 0 first; the other ranks then read its file


def _load(path: Path) -> np.ndarray | None:
    """The entry, or None when absent or unreadable (then rebuilt and overwritten)."""
    if not path.is_file():
        return None
    try:
        return np.load(path, mmap_mode="r")
    except (OSError, ValueError, EOFError):  # damaged on disk or written by an incompatible numpy: rebuild
        return None


def _write_atomic(path: Path, array: np.ndarray) -> None:
    try:
        atomic_write(path, lambda handle: np.save(handle, array, allow_pickle=False), durable=True)
    except DataError as error:
        cause = error.__cause__ if isinstance(error.__cause__, OSError) else OSError(str(error))
        raise _cache_error(path.parent, cause, array) from cause


def _cache_error(folder: Path, error: OSError, array: np.ndarray) -> DataError:
    size = f"{array.nbytes / 1e6:.0f} MB" if array.nbytes >= 1e6 else f"{array.nbytes / 1e3:.0f} kB"
    if error.errno == errno.ENOSPC:
        reason = f"disk full while writing {size} of decoded images"
    else:
        reason = f"cannot write {size} of decoded images ({error.strerror or error})"
    return DataError(
        f"{folder}: cache folder: {reason}; free some space or choose another cache folder, or run with the cache "
        "disabled (--set data.cache=false: slower epochs, no disk use)"
    )


def _json_default(value: object) -> str:
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cache key value {value!r} ({type(value).__name__}) is not JSON-serialisable")
