"""Atomic file writes: the content goes to a temporary file in the destination's folder, which is then renamed
over the destination, so a reader (or a run killed half-way) never sees a partial file.

Example:
    >>> import pathlib, tempfile
    >>> out = pathlib.Path(tempfile.mkdtemp()) / "sub" / "notes.txt"
    >>> write_text_atomic(out, "hello\\n")
    PosixPath('...notes.txt')
    >>> out.read_text(), sorted(p.name for p in out.parent.iterdir())  # no temporary file left behind
    ('hello\\n', ['notes.txt'])
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

__all__ = ["atomic_path", "write_text_atomic"]


@contextlib.contextmanager
def atomic_path(out: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``out`` (folders created); on a clean exit it becomes ``out`` with the
    usual mode of a new file, on an exception it is removed and ``out`` is left as it was."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", dir=out.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp's 0600 -> the usual mode of a new file
        os.replace(tmp, out)
    finally:
        with contextlib.suppress(OSError):
            os.unlink(tmp)  # only still there when something failed


def write_text_atomic(out: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``out`` atomically; returns ``out`` as a Path."""
    with atomic_path(out) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(out)
