"""Streaming SHA-256, verification and the trust-on-first-use lock file."""

from __future__ import annotations

import hashlib

import pytest

from heinsen_zoo.zoo.checksums import (
    ChecksumMismatchError,
    normalize_digest,
    read_lock,
    sha256_file,
    verify,
    verify_or_record,
)


def test_sha256_file_streams_across_chunk_boundaries(tmp_path):
    data = bytes(range(256)) * 41 + b"tail"  # not a multiple of the chunk size
    path = tmp_path / "blob.bin"
    path.write_bytes(data)
    expected = hashlib.sha256(data).hexdigest()
    assert sha256_file(path, chunk_size=7) == expected
    assert sha256_file(path) == expected


def test_verify_accepts_the_right_digest_and_names_path_expected_actual_on_mismatch(tmp_path):
    path = tmp_path / "w.bin"
    path.write_bytes(b"weights")
    good = hashlib.sha256(b"weights").hexdigest()
    assert verify(path, good.upper()) == good  # case-insensitive, returns the actual digest
    wrong = "0" * 64
    with pytest.raises(ChecksumMismatchError) as info:
        verify(path, wrong, origin="SHA256SUMS")
    err = info.value
    assert (err.path, err.expected, err.actual) == (path, wrong, good)
    assert str(path) in str(err) and wrong in str(err) and good in str(err) and "SHA256SUMS" in str(err)


def test_normalize_digest_rejects_malformed_values():
    assert normalize_digest("sha256:" + "AB" * 32) == "ab" * 32
    with pytest.raises(ValueError, match="64-character hex"):
        normalize_digest("abc")
    with pytest.raises(TypeError, match="hex string"):
        normalize_digest(123)  # type: ignore[arg-type]


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a file"):
        sha256_file(tmp_path / "nope.bin")


def test_trust_on_first_use_records_then_detects_a_changed_file(tmp_path):
    lock = tmp_path / "cache" / "sha256.lock"
    path = tmp_path / "head.pt"
    path.write_bytes(b"version 1")
    digest, recorded_now = verify_or_record(path, lock, "entry:head.pt")
    assert recorded_now and read_lock(lock) == {"entry:head.pt": digest}
    assert verify_or_record(path, lock, "entry:head.pt") == (digest, False)
    path.write_bytes(b"version 2")
    with pytest.raises(ChecksumMismatchError, match="recorded on first use"):
        verify_or_record(path, lock, "entry:head.pt")


def test_read_lock_rejects_malformed_lines(tmp_path):
    lock = tmp_path / "sha256.lock"
    lock.write_text("# comment\nnot-a-digest  key\n")
    with pytest.raises(ValueError, match="sha256.lock:2"):
        read_lock(lock)
