"""Atomic checkpoint directories: a crash at any point leaves a complete checkpoint readable."""
import os

import pytest

from flashxlstm.checkpoints import atomic
from flashxlstm.checkpoints.atomic import atomic_directory, resolve_directory


def _write(path, text):
    with atomic_directory(path) as tmp:
        (tmp / "a.txt").write_text(text)
        (tmp / "b.txt").write_text(text)


def test_replaces_whole_directory(tmp_path):
    target = tmp_path / "ckpt"
    _write(target, "one")
    (target / "stale.txt").write_text("from an older version")
    _write(target, "two")
    assert sorted(p.name for p in target.iterdir()) == ["a.txt", "b.txt"]
    assert (target / "a.txt").read_text() == "two"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]  # no temp or backup left behind


def test_crash_while_writing_keeps_previous(tmp_path):
    target = tmp_path / "ckpt"
    _write(target, "one")
    with pytest.raises(RuntimeError):
        with atomic_directory(target) as tmp:
            (tmp / "a.txt").write_text("half")
            raise RuntimeError("simulated crash mid-save")
    assert (target / "a.txt").read_text() == "one" and (target / "b.txt").read_text() == "one"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]


def test_crash_between_renames_falls_back_to_backup(tmp_path, monkeypatch):
    target = tmp_path / "ckpt"
    _write(target, "one")
    real_replace = os.replace
    calls = []

    def crash_on_second(src, dst):
        calls.append((src, dst))
        if len(calls) == 2:
            raise KeyboardInterrupt("simulated kill between the two renames")
        real_replace(src, dst)

    monkeypatch.setattr(atomic.os, "replace", crash_on_second)
    with pytest.raises(KeyboardInterrupt):
        _write(target, "two")
    monkeypatch.setattr(atomic.os, "replace", real_replace)
    assert not target.exists()
    with pytest.warns(UserWarning, match="interrupted save"):
        found = resolve_directory(target)
    assert (found / "a.txt").read_text() == "one"
    _write(target, "three")  # the next save cleans up
    assert (target / "a.txt").read_text() == "three"
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(".ckpt.tmp")) == ["ckpt"]


def test_target_that_is_a_file(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(ValueError, match="not a directory"):
        _write(f, "one")
