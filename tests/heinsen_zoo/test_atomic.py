"""Atomic writes: the destination is either the old file or the whole new one, and no temporary file stays."""

from __future__ import annotations

import os

import pytest

from heinsen_zoo.atomic import atomic_path, write_text_atomic


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    out = write_text_atomic(tmp_path / "a" / "f.txt", "old")
    with pytest.raises(RuntimeError, match="boom"), atomic_path(out) as tmp:
        tmp.write_text("half of the new")
        raise RuntimeError("boom")
    assert out.read_text() == "old" and sorted(p.name for p in out.parent.iterdir()) == ["f.txt"]
    write_text_atomic(out, "new")
    assert out.read_text() == "new" and sorted(p.name for p in out.parent.iterdir()) == ["f.txt"]


def test_the_new_file_gets_the_umask_mode(tmp_path):
    old = os.umask(0o022)
    try:
        out = write_text_atomic(tmp_path / "g.txt", "x")
    finally:
        os.umask(old)
    assert out.stat().st_mode & 0o777 == 0o644
