"""The one check every command that writes a folder makes before doing any work: the path can be that folder."""

from __future__ import annotations

from pathlib import Path

from tatl.errors import DataError


def check_output_folder(path: Path, what: str) -> None:
    """`path` is a folder or can be made one: neither it nor its nearest existing parent is a file. `what` names the
    folder in the message ("run folder", "output folder", ...). Creating it can still fail (permissions, a full or
    read-only disk): callers report that when they make it."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise DataError(f"{path}: output path exists and is a file, not a folder (choose another path for the {what})")
    existing = next((parent for parent in path.parents if parent.exists()), None)
    if existing is not None and not existing.is_dir():
        raise DataError(f"{path}: cannot create the {what} ({existing} is a file)")
