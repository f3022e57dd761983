"""smallNORB files: NORB matrix reader/writer round trips (plain and gzip), DataModule batches, errors."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from heinsen_zoo.data.smallnorb import (
    META_FIELDS,
    SmallNORBDataModule,
    expected_files,
    load_smallnorb_split,
    read_norb_matrix,
    write_norb_matrix,
    write_tiny_smallnorb,
)


@pytest.mark.parametrize("suffix", [".mat", ".mat.gz"])
@pytest.mark.parametrize(
    "array",
    [
        np.arange(2 * 2 * 5 * 4, dtype=np.uint8).reshape(2, 2, 5, 4),
        np.array([3, -1, 7], dtype=np.int32),
        np.arange(12, dtype=np.int32).reshape(3, 4) - 5,
        np.linspace(-1, 1, 6, dtype=np.float32).reshape(1, 2, 3),
        np.arange(5, dtype=np.float64),
        np.array([[-300, 2]], dtype=np.int16),
    ],
    ids=["uint8-4d", "int32-1d", "int32-2d", "float32-3d", "float64-1d", "int16-2d"],
)
def test_round_trip(tmp_path: Path, suffix: str, array: np.ndarray) -> None:
    path = tmp_path / f"m{suffix}"
    write_norb_matrix(path, array)
    back = read_norb_matrix(path)
    assert back.dtype == array.dtype.newbyteorder("<") and back.shape == array.shape
    np.testing.assert_array_equal(back, array)


def test_header_layout_matches_the_norb_format(tmp_path: Path) -> None:
    # Hand-written file: byte magic, ndim 1, three dims stored (the extra two are ignored), data.
    raw = struct.pack("<iiiii", 0x1E3D4C55, 1, 4, 1, 1) + bytes([9, 8, 7, 6])
    (tmp_path / "byte.mat").write_bytes(raw)
    np.testing.assert_array_equal(read_norb_matrix(tmp_path / "byte.mat"), [9, 8, 7, 6])
    # An integer matrix with 4 dims stores 4 dims; the writer produces exactly this layout.
    array = np.arange(2 * 1 * 2 * 3, dtype=np.int32).reshape(2, 1, 2, 3)
    write_norb_matrix(tmp_path / "int.mat", array)
    raw = (tmp_path / "int.mat").read_bytes()
    assert struct.unpack("<iiiiii", raw[:24]) == (0x1E3D4C54, 4, 2, 1, 2, 3)
    assert raw[24:] == array.astype("<i4").tobytes()
    write_norb_matrix(tmp_path / "cat.mat.gz", np.array([1, 2], dtype=np.int32))
    with gzip.open(tmp_path / "cat.mat.gz") as f:
        assert struct.unpack("<iiiii", f.read(20)) == (0x1E3D4C54, 1, 2, 1, 1)


def test_corrupt_files_raise(tmp_path: Path) -> None:
    (tmp_path / "bad_magic.mat").write_bytes(struct.pack("<iiiii", 0x12345678, 1, 1, 1, 1) + b"\0")
    with pytest.raises(ValueError, match="unknown NORB magic number 0x12345678"):
        read_norb_matrix(tmp_path / "bad_magic.mat")
    write_norb_matrix(tmp_path / "ok.mat", np.zeros((3, 4), dtype=np.int32))
    (tmp_path / "short.mat").write_bytes((tmp_path / "ok.mat").read_bytes()[:-4])
    with pytest.raises(ValueError, match="truncated or corrupt"):
        read_norb_matrix(tmp_path / "short.mat")
    (tmp_path / "tiny.mat").write_bytes(b"\x01\x02")
    with pytest.raises(ValueError, match="not a NORB matrix file"):
        read_norb_matrix(tmp_path / "tiny.mat")
    with pytest.raises(TypeError, match="expected dtype uint8, int16, int32"):
        write_norb_matrix(tmp_path / "x.mat", np.zeros(3, dtype=np.int64))
    with pytest.raises(FileNotFoundError, match="nope.mat"):
        read_norb_matrix(tmp_path / "nope.mat")


@pytest.mark.parametrize("compress", [False, True])
def test_tiny_files_and_split_loader(tmp_path: Path, compress: bool) -> None:
    paths = write_tiny_smallnorb(tmp_path, n_train=12, n_test=7, seed=3, compress=compress)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        f"{name}.gz" if compress else name for name in expected_files("train") + expected_files("test")
    )
    assert len(paths) == 6
    images, labels, meta = load_smallnorb_split(tmp_path, "train")
    assert images.dtype == np.uint8 and images.shape == (12, 2, 96, 96)
    assert labels.tolist() == [0, 1, 2, 3, 4] * 2 + [0, 1]
    assert meta.shape == (12, len(META_FIELDS))
    np.testing.assert_array_equal(meta[:, 0], labels)
    assert set(meta[:, 1]) <= {4, 6, 7, 8, 9}  # training instances
    assert meta[5:10, 3].tolist() == [2] * 5  # azimuth advances after one view of every category
    images_test, labels_test, meta_test = load_smallnorb_split(tmp_path, "test")
    assert images_test.shape == (7, 2, 96, 96) and set(meta_test[:, 1]) <= {0, 1, 2, 3, 5}
    # Same seed, same pixels.
    write_tiny_smallnorb(tmp_path / "again", n_train=12, n_test=7, seed=3)
    np.testing.assert_array_equal(load_smallnorb_split(tmp_path / "again", "train")[0], images)


def test_missing_files_name_path_and_expected_names(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="is not a directory"):
        load_smallnorb_split(tmp_path / "absent", "train")
    write_tiny_smallnorb(tmp_path, n_train=3, n_test=3)
    (tmp_path / expected_files("test")[2]).unlink()  # the testing info file
    with pytest.raises(FileNotFoundError) as info:
        SmallNORBDataModule(str(tmp_path)).setup("test")
    message = str(info.value)
    assert str(tmp_path / expected_files("test")[2]) in message
    for name in expected_files("train") + expected_files("test"):
        assert name in message


def test_inconsistent_files_raise(tmp_path: Path) -> None:
    write_tiny_smallnorb(tmp_path, n_train=4, n_test=4)
    write_norb_matrix(tmp_path / expected_files("train")[1], np.zeros(3, dtype=np.int32))  # cat: 3 rows, not 4
    with pytest.raises(ValueError, match=r"training-cat.mat: expected an integer matrix of shape \[4\]"):
        load_smallnorb_split(tmp_path, "train")
    write_norb_matrix(tmp_path / expected_files("train")[1], np.array([0, 1, 7, 2], dtype=np.int32))
    with pytest.raises(ValueError, match="expected categories in 0..4"):
        load_smallnorb_split(tmp_path, "train")


def test_datamodule_batches(tmp_path: Path) -> None:
    write_tiny_smallnorb(tmp_path, n_train=10, n_test=6, seed=1, compress=True)
    torch.manual_seed(0)
    dm = SmallNORBDataModule(str(tmp_path), batch_size=4, eval_batch_size=3)
    dm.setup("fit")
    assert dm.num_classes == 5 and dm.labels[2] == "airplane"
    batch = next(iter(dm.train_dataloader()))
    assert set(batch) == {"image", "label", "meta", "index"}
    assert batch["image"].shape == (4, 2, 96, 96) and batch["image"].dtype == torch.float32
    assert 0.0 <= float(batch["image"].min()) and float(batch["image"].max()) <= 1.0
    assert batch["label"].dtype == torch.long and batch["meta"].shape == (4, 5)
    torch.testing.assert_close(batch["meta"][:, 0], batch["label"])
    # Validation (default) is the test set, unaugmented: exactly the stored pixels / 255.
    images_test, labels_test, meta_test = load_smallnorb_split(tmp_path, "test")
    val = next(iter(dm.val_dataloader()))
    torch.testing.assert_close(val["image"], torch.from_numpy(images_test[:3].astype(np.float32)) / 255)
    assert val["label"].tolist() == labels_test[:3].tolist()
    assert val["meta"].tolist() == meta_test[:3].tolist()
    # Training crops come from the image padded by 16 edge pixels: each crop matches some shift of it.
    images_train = torch.from_numpy(np.array(load_smallnorb_split(tmp_path, "train")[0], dtype=np.float32)) / 255
    padded = torch.nn.functional.pad(images_train, (16,) * 4, mode="replicate")  # [N, 2, 128, 128]
    for image, index in zip(batch["image"], batch["index"], strict=True):
        windows = padded[index].unfold(-2, 96, 1).unfold(-2, 96, 1)  # [2, 33, 33, 96, 96]
        assert (windows - image[:, None, None]).abs().amax(dim=(0, 3, 4)).min() < 1e-6


def test_datamodule_val_fraction_and_args(tmp_path: Path) -> None:
    write_tiny_smallnorb(tmp_path, n_train=20, n_test=5)
    dm = SmallNORBDataModule(str(tmp_path), batch_size=2, val_fraction=0.2)
    dm.setup("fit")
    train_idx = set(dm.train_dataset.indices.tolist())
    val_idx = set(dm.val_dataset.indices.tolist())
    assert len(val_idx) == 5 and not train_idx & val_idx and train_idx | val_idx == set(range(20))
    assert sorted(int(dm.arrays("train")[1][i]) for i in val_idx) == [0, 1, 2, 3, 4]  # stratified
    with pytest.raises(ValueError, match="val_fraction"):
        SmallNORBDataModule(str(tmp_path), val_fraction=1.0)
    with pytest.raises(ValueError, match="crop"):
        SmallNORBDataModule(str(tmp_path), crop=100)
    with pytest.raises(ValueError, match="pad"):
        SmallNORBDataModule(str(tmp_path), pad=-1)
