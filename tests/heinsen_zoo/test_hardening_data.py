"""Data files from outside (issue #14): NORB headers checked before decompressing, CIFAR/SST errors that
name the file (and line)."""

from __future__ import annotations

import gzip
import os
import pickle
import tracemalloc
import zlib

import numpy as np
import pytest

from heinsen_zoo.data.cifar import read_cifar
from heinsen_zoo.data.smallnorb import read_norb_matrix, write_norb_matrix
from heinsen_zoo.data.synthetic import write_cifar, write_sst_trees

# ------------------------------------------------------------------------------------------------ 5. NORB


def _norb_header(shape: tuple[int, ...], magic: int = 0x1E3D4C55) -> bytes:
    dims = list(shape) + [1] * max(0, 3 - len(shape))
    return np.array([magic, len(shape), *dims], dtype="<u4").tobytes()


def _gz_bomb(path, header: bytes, n_zero_bytes: int) -> None:
    """A gzip file: ``header`` then ``n_zero_bytes`` zeros (compresses ~1000:1), written in streaming fashion."""
    comp = zlib.compressobj(9, zlib.DEFLATED, 31)  # wbits 31: gzip container
    block = bytes(1 << 20)
    with open(path, "wb") as f:
        f.write(comp.compress(header))
        for _ in range(n_zero_bytes >> 20):
            f.write(comp.compress(block))
        f.write(comp.flush())


def test_norb_gz_bomb_is_refused_without_inflating_it(tmp_path):
    path = tmp_path / "bomb-dat.mat.gz"
    _gz_bomb(path, _norb_header((1, 2, 96, 96)), 64 << 20)  # claims 18 KB, inflates to 64 MB
    assert path.stat().st_size < 200_000
    tracemalloc.start()
    try:
        with pytest.raises(
            ValueError, match=r"bomb-dat.mat.gz: expected 18432 data bytes .* found more than 18432"
        ):
            read_norb_matrix(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 8 << 20, f"peak {peak / 2**20:.1f} MiB while refusing a bomb"


def test_norb_gz_header_sizes_are_checked_before_allocating(tmp_path):
    big = tmp_path / "big-dat.mat.gz"
    big.write_bytes(gzip.compress(_norb_header((100_000, 2, 96, 96)) + bytes(100)))  # claims 1.8 GB
    with pytest.raises(ValueError, match=r"big-dat.mat.gz: the header claims .* more than the limit"):
        read_norb_matrix(big)
    lie = tmp_path / "lie-dat.mat.gz"
    lie.write_bytes(
        gzip.compress(_norb_header((10_000, 2, 96, 96)) + bytes(100))
    )  # claims 184 MB in 300 bytes
    with pytest.raises(ValueError, match=r"more than \d+ compressed bytes can hold"):
        read_norb_matrix(lie)
    short = tmp_path / "short-dat.mat.gz"
    short.write_bytes(gzip.compress(_norb_header((2, 2, 96, 96)) + bytes(100)))
    with pytest.raises(ValueError, match=r"expected 36864 data bytes .* found 100"):
        read_norb_matrix(short)
    ok = tmp_path / "ok-dat.mat.gz"
    data = np.arange(2 * 2 * 96 * 96, dtype=np.int64).astype(np.uint8).reshape(2, 2, 96, 96)
    write_norb_matrix(ok, data)
    assert np.array_equal(read_norb_matrix(ok), data)
    with pytest.raises(ValueError, match="more than the limit of 1000 bytes"):
        read_norb_matrix(ok, max_bytes=1000)


# ------------------------------------------------------------------------------------------------ 8. CIFAR


class _Bomb:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (pickle.dumps({b"data": _Bomb()}), r"data_batch_2: refusing to load global"),
        (b"", r"data_batch_2: empty or truncated pickle"),
        ("truncate", r"data_batch_2: (empty or truncated pickle|not a readable pickle)"),
        (b"this is not a pickle", r"data_batch_2: not a readable pickle"),
    ],
    ids=["refused-global", "empty", "truncated", "not-a-pickle"],
)
def test_cifar_batch_errors_name_the_file(tmp_path, content, message):
    root = write_cifar(tmp_path, "cifar10", n_train=10, n_test=5, seed=0)
    batch = next(root.rglob("data_batch_2"))
    if content == "truncate":
        content = batch.read_bytes()[: batch.stat().st_size // 2]
    batch.write_bytes(content)
    with pytest.raises(ValueError, match=message):
        read_cifar(root, "cifar10")


# ------------------------------------------------------------------------------------------------ 8. SST


def test_sst_tree_file_with_non_utf8_bytes_names_file_and_line(tmp_path):
    from heinsen_zoo.data.text import SSTDataModule

    root = write_sst_trees(tmp_path, n_train=6, n_dev=3, n_test=3, seed=0)
    train = next(root.rglob("train.txt"))
    lines = train.read_bytes().splitlines()
    lines[2] = b"(2 (2 caf\xe9) (2 au lait))"  # latin-1, not UTF-8
    train.write_bytes(b"\n".join(lines) + b"\n")
    with pytest.raises(ValueError, match=r"train.txt:3: not UTF-8 text \(byte 0xe9"):
        SSTDataModule(root, n_classes=5).setup("fit")
