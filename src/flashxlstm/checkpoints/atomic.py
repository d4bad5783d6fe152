"""Checkpoint file I/O. Atomic writes: readers see either the old complete file or directory or the new one,
never a mix. Reads name the file and what was wrong with it in one line.

`atomic_file` writes a sibling temp file, flushes it and moves it into place with `os.replace`.

The new content is written into a hidden sibling temp directory and flushed to disk; then the old
directory is moved aside, the new one moved into place (both `os.replace`, atomic on one file system)
and the old copy removed. A crash before the swap leaves the previous directory untouched; a crash
between the two renames leaves the previous version complete at `.NAME.old`, which `resolve_directory` (and so
every reader that goes through `checked_directory`) moves back into place. Temp files and directories are named
`.NAME.tmp-PID`; a save removes those of this target whose process is gone (a killed save), never another
name and never one of a live process. A write that fails for lack of space or permission raises
`CheckpointWriteError` (an OSError) naming the path, and leaves the previous version as it was.
"""
from __future__ import annotations

import contextlib
import errno
import json
import os
import re
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


class CheckpointWriteError(OSError):
    """Writing a checkpoint or run file failed (disk full, no permission, ...); the previous version is intact."""


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):  # exists but belongs to someone else, or cannot tell: keep its files
        return True
    return True


def _temp_siblings(target: Path) -> list[tuple[Path, int]]:
    """(path, pid) of the `.NAME.tmp-PID` entries beside `target` (ours by name, for this target only)."""
    pattern = re.compile(re.escape(f".{target.name}.tmp-") + r"(\d+)")
    found = []
    with contextlib.suppress(OSError):
        for p in target.parent.iterdir():
            m = pattern.fullmatch(p.name)
            if m:
                found.append((p, int(m.group(1))))
    return found


def remove_orphan_temps(target: str | os.PathLike) -> list[Path]:
    """Delete the temp files / directories that killed saves of `target` left behind (their PID is gone);
    returns what was removed."""
    removed = []
    for p, pid in _temp_siblings(Path(target)):
        if pid != os.getpid() and not _pid_alive(pid):
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p, ignore_errors=True)
            else:
                with contextlib.suppress(OSError):
                    p.unlink()
            removed.append(p)
    return removed


def _is_write_failure(e: BaseException) -> bool:
    if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM,
                                              errno.EFBIG, errno.EIO):
        return True
    # torch.save reports a failed write as "RuntimeError: [enforce fail at inline_container.cc:...] ... file write
    # failed"; safetensors as "SafetensorError: Error while serializing: IoError(...)".
    text = str(e)
    return isinstance(e, RuntimeError) and ("inline_container" in text or "write failed" in text) or (
        type(e).__name__ == "SafetensorError" and "IoError" in text)


def _write_error(target: Path, e: BaseException) -> CheckpointWriteError:
    reason = str(e).strip().splitlines()[-1][:200] if str(e).strip() else type(e).__name__
    return CheckpointWriteError(
        f"could not write {target}: the disk is full or not writable ({reason}); "
        "the previous version, if any, is unchanged; free space or choose another --out")


@contextlib.contextmanager
def atomic_directory(target: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty temp directory; when the block exits normally it replaces `target` as a whole.

    If the block raises, the temp directory is deleted and `target` is left as it was.
    """
    target = Path(target)
    if target.exists() and not target.is_dir():
        raise ValueError(f"checkpoint path exists and is not a directory: {target}")
    target.parent.mkdir(parents=True, exist_ok=True)
    resolve_directory(target, warn=False)  # an earlier save killed between its renames: its copy back first
    remove_orphan_temps(target)
    tmp = target.parent / f".{target.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
        _fsync_tree(tmp)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if _is_write_failure(e):
            raise _write_error(target, e) from None
        raise
    backup = _backup_path(target)
    if target.exists():
        shutil.rmtree(backup, ignore_errors=True)  # a stale backup from an earlier interrupted swap
        os.replace(target, backup)
    os.replace(tmp, target)
    shutil.rmtree(backup, ignore_errors=True)


def resolve_directory(path: str | os.PathLike, *, warn: bool = True) -> Path:
    """`path`; if it is missing but an interrupted save left the complete previous version at `.NAME.old`,
    that version is moved back to `path` first (or, while another live process is saving it, read where
    it is)."""
    path = Path(path)
    if not path.exists():
        backup = _backup_path(path)
        if backup.is_dir():
            if warn:
                warnings.warn(f"{path} is missing; recovered the previous version an interrupted save left at "
                              f"{backup}")
            if any(pid != os.getpid() and _pid_alive(pid) for _, pid in _temp_siblings(path)):
                return backup  # a save in progress will move its new copy into place; do not race it
            try:
                os.replace(backup, path)
            except OSError:
                return backup
    return path


def atomic_file(path: str | os.PathLike, write: Callable[[Path], None]) -> None:
    """Call `write(tmp)` on a sibling temp path, flush it, then move it over `path` in one step."""
    path = Path(path)
    remove_orphan_temps(path)
    tmp = path.parent / f".{path.name}.tmp-{os.getpid()}"
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except Exception as e:
        if _is_write_failure(e):
            raise _write_error(path, e) from None
        raise
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
    path, prefix = resolve_directory(path), f"{who}: " if who else ""
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
