"""Checkpoint file I/O. Atomic writes: readers see either the old complete file or directory or the new one,
never a mix. Reads name the file and what was wrong with it in one line.

`atomic_file` writes a sibling temp file, flushes it and moves it into place with `os.replace`.

The new content is written into a hidden sibling temp directory and flushed to disk; then the old
directory is moved aside, the new one moved into place (both `os.replace`, atomic on one file system)
and the old copy removed. A crash before the swap leaves the previous directory untouched; a crash
between the two renames leaves the previous version complete at `.NAME.old`, which `resolve_directory`
finds and uses.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import warnings
from pathlib import Path
from typing import Any, Callable, Iterator


def _fsync_tree(path: Path) -> None:
    for p in sorted(path.rglob("*")):
        if p.is_file():
            with open(p, "rb") as f:
                os.fsync(f.fileno())
    with contextlib.suppress(OSError):  # directories cannot be opened for fsync everywhere
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _backup_path(target: Path) -> Path:
    return target.parent / f".{target.name}.old"


@contextlib.contextmanager
def atomic_directory(target: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty temp directory; when the block exits normally it replaces `target` as a whole.

    If the block raises, the temp directory is deleted and `target` is left as it was.
    """
    target = Path(target)
    if target.exists() and not target.is_dir():
        raise ValueError(f"checkpoint path exists and is not a directory: {target}")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{target.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
        _fsync_tree(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    backup = _backup_path(target)
    if target.exists():
        shutil.rmtree(backup, ignore_errors=True)  # a stale backup from an earlier interrupted swap
        os.replace(target, backup)
    os.replace(tmp, target)
    shutil.rmtree(backup, ignore_errors=True)


def resolve_directory(path: str | os.PathLike) -> Path:
    """`path`, or the complete previous version an interrupted save left beside it."""
    path = Path(path)
    if not path.exists():
        backup = _backup_path(path)
        if backup.is_dir():
            warnings.warn(f"{path} is missing; using the previous version an interrupted save left at {backup}")
            return backup
    return path


def atomic_file(path: str | os.PathLike, write: Callable[[Path], None]) -> None:
    """Call `write(tmp)` on a sibling temp path, flush it, then move it over `path` in one step."""
    path = Path(path)
    tmp = path.parent / f".{path.name}.tmp-{os.getpid()}"
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_json_atomic(path: str | os.PathLike, obj: Any, *, sort_keys: bool = False) -> None:
    def write(tmp: Path) -> None:
        with open(tmp, "w") as f:
            json.dump(obj, f, indent=2, sort_keys=sort_keys)
            f.write("\n")

    atomic_file(path, write)


def checked_directory(path: str | os.PathLike, who: str = "") -> Path:
    """`path` as a Path if it is an existing directory; otherwise a one-line error (prefixed by `who`)."""
    path, prefix = Path(path), f"{who}: " if who else ""
    if not path.exists():
        raise FileNotFoundError(f"{prefix}checkpoint directory not found: {path}")
    if not path.is_dir():
        raise ValueError(f"{prefix}checkpoint path is not a directory: {path}")
    return path


def read_json_object(path: str | os.PathLike, who: str = "") -> dict:
    """The JSON object stored at `path`; a one-line ValueError (prefixed by `who`) if it is not valid JSON or
    not an object."""
    path, prefix = Path(path), f"{who}: " if who else ""
    try:
        with open(path) as f:
            obj = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{prefix}corrupt {path.name} (not valid JSON: {e}): {path}") from None
    if not isinstance(obj, dict):
        raise ValueError(f"{prefix}corrupt {path.name}: expected a JSON object, found {type(obj).__name__}: {path}")
    return obj
