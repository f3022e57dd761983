"""Streaming SHA-256 digests, verification, and the trust-on-first-use lock file.

A weight file whose digest is published is checked against it on every load. A file whose digest
is unknown (nobody published one) is hashed on first use and its digest is recorded in
``<cache>/sha256.lock``; every later load is checked against that record, so a file that changes
afterwards (corruption, tampering, a silent re-upload) is refused. This protects against change,
not against a file that was already wrong the first time — ``describe()`` says so.

Example:
    >>> import tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> (d / "w.bin").write_bytes(b"abc")
    3
    >>> sha256_file(d / "w.bin")[:12]
    'ba7816bf8f01'
    >>> verify(d / "w.bin", "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")[:4]
    'ba78'
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from pathlib import Path

from heinsen_zoo.zoo.errors import ZooError

LOCK_FILENAME = "sha256.lock"
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


class ChecksumMismatchError(ZooError, ValueError):
    """A file whose SHA-256 differs from the expected digest."""

    def __init__(self, path: str | Path, expected: str, actual: str, origin: str = "") -> None:
        self.path = Path(path)
        self.expected = expected
        self.actual = actual
        where = f" (expected digest from {origin})" if origin else ""
        super().__init__(
            f"checksum mismatch for {self.path}: expected sha256 {expected}{where}, got {actual}. "
            "The file is corrupt, truncated or not the published one; delete it and provide the original."
        )


def normalize_digest(digest: str, name: str = "sha256") -> str:
    """Lower-case hex digest; raises ValueError unless it is 64 hex characters."""
    if not isinstance(digest, str):
        raise TypeError(f"{name}: expected a 64-character hex string, got {type(digest).__name__}")
    value = digest.strip().lower()
    if value.startswith("sha256:"):
        value = value[len("sha256:") :]
    if not _HEX64.match(value):
        raise ValueError(f"{name}: expected a 64-character hex sha256 digest, got {digest!r}")
    return value


def sha256_file(path: str | Path, chunk_size: int = 1 << 20) -> str:
    """SHA-256 of a file, read in ``chunk_size`` blocks (constant memory)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"sha256: {path} is not a file")
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(chunk_size), b""):
            digest.update(block)
    return digest.hexdigest()


def verify(path: str | Path, expected: str | None, origin: str = "") -> str:
    """Return the file's SHA-256; raise :class:`ChecksumMismatchError` unless it equals ``expected``.

    ``expected=None`` only computes the digest. ``origin`` names where the expected digest came from.
    """
    actual = sha256_file(path)
    if expected is not None and actual != normalize_digest(expected):
        raise ChecksumMismatchError(path, normalize_digest(expected), actual, origin)
    return actual


def read_lock(lock_path: str | Path) -> dict[str, str]:
    """The records of a lock file: ``{key: digest}`` (lines ``<digest>  <key>``, ``#`` comments)."""
    lock_path = Path(lock_path)
    records: dict[str, str] = {}
    if not lock_path.is_file():
        return records
    for number, line in enumerate(lock_path.read_text(encoding="utf-8").splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        digest, _, key = line.partition("  ")
        if not key or not _HEX64.match(digest):
            raise ValueError(f"{lock_path}:{number}: expected '<sha256>  <key>', got {line!r}")
        records[key] = digest
    return records


def record_lock(lock_path: str | Path, key: str, digest: str) -> None:
    """Add or replace one record of a lock file (atomic rewrite)."""
    if "\n" in key:
        raise ValueError(f"lock key: expected a single line, got {key!r}")
    lock_path = Path(lock_path)
    records = read_lock(lock_path)
    records[key] = normalize_digest(digest)
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    lines = [
        "# sha256 digests recorded on first use of weight files without a published digest",
        "# (heinsen_zoo trust-on-first-use). Delete a line to accept a new version of that file.",
    ]
    lines += [f"{d}  {k}" for k, d in sorted(records.items())]
    fd, tmp = tempfile.mkstemp(prefix=".sha256.lock.", dir=lock_path.parent)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write("\n".join(lines) + "\n")
    os.replace(tmp, lock_path)


def check_lock(path: str | os.PathLike, lock_path: str | os.PathLike, key: str) -> tuple[str, bool]:
    """Trust on first use, first half: verify ``path`` against the digest recorded under ``key``.

    Returns ``(digest, unrecorded)``; records nothing. Call :func:`record_lock` with the digest only after
    the file passed every other check (a refused file must not be pinned). Raises
    :class:`ChecksumMismatchError` when a record exists and the file changed since.
    """
    actual = sha256_file(path)
    recorded = read_lock(lock_path).get(key)
    if recorded is None:
        return actual, True
    if recorded != actual:
        raise ChecksumMismatchError(
            path,
            recorded,
            actual,
            origin=f"{Path(lock_path)}, recorded on first use; delete that line if you replaced the file on purpose",
        )
    return actual, False


def verify_or_record(path: str | os.PathLike, lock_path: str | os.PathLike, key: str) -> tuple[str, bool]:
    """Trust on first use in one step: :func:`check_lock`, then record an unrecorded digest at once.

    Returns ``(digest, recorded_now)``. Prefer :func:`check_lock` + :func:`record_lock` when the file is
    still to be validated (loaders do).
    """
    digest, unrecorded = check_lock(path, lock_path, key)
    if unrecorded:
        record_lock(lock_path, key, digest)
    return digest, unrecorded
