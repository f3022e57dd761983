"""Image DataModules on tiny datasets in the real formats; restricted unpickling; transforms."""

from __future__ import annotations

import io
import os
import pickle
import tarfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from heinsen_zoo.data import CIFAR10DataModule, CIFAR100DataModule, ImageNetDataModule, read_cifar  # noqa: E402
from heinsen_zoo.data.safe_pickle import RestrictedUnpickler, safe_loads_pickle  # noqa: E402
from heinsen_zoo.data.synthetic import (  # noqa: E402
    CIFAR10_LABEL_NAMES,
    write_cifar,
    write_cifar_hf,
    write_imagenet_folder,
)
from heinsen_zoo.data.transforms import (  # noqa: E402
    cifar_train_transform,
    eval_transform_from_config,
    imagenet_eval_transform,
    imagenet_train_transform,
    preprocessing_config,
    resize_size,
)


class _Payload:
    """Unpickling this would run ``os.system(command)``."""

    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


def _check_image_batch(batch: dict, batch_size: int, size: int) -> None:
    assert set(batch) == {"image", "label", "index"}
    assert batch["image"].shape == (batch_size, 3, size, size) and batch["image"].dtype == torch.float32
    assert batch["image"].min() >= -1.0 and batch["image"].max() <= 1.0
    assert batch["label"].dtype == torch.long and batch["label"].shape == (batch_size,)


# ---- ImageNet -----------------------------------------------------------------------------------------


def test_imagenet_folder(tmp_path):
    root = write_imagenet_folder(tmp_path, n_classes=3, n_per_class=4, image_size=40, n_val_per_class=2)
    (root / "train" / "n00000000" / "notes.txt").write_text("not an image")  # ignored
    dm = ImageNetDataModule(root, image_size=32, batch_size=4, steps_per_epoch=2)
    assert dm.labels == ["n00000000", "n00000001", "n00000002"] and dm.num_classes == 3
    assert len(dm.train_dataset) == 12 and len(dm.val_dataset) == 6 and len(dm.test_dataset) == 6
    loader = dm.train_dataloader()
    assert len(loader) == 2
    _check_image_batch(next(iter(loader)), 4, 32)
    _check_image_batch(next(iter(dm.val_dataloader())), 4, 32)
    assert sorted(dm.val_dataset.labels) == [0, 0, 1, 1, 2, 2]
    assert dm.test_dataset is dm.val_dataset and dm.predict_dataset is dm.val_dataset  # the paper's "val"
    assert dm.train_dataset.ids[0] == "train/n00000000/n00000000_0.JPEG"
    assert dm.preprocessing == {"kind": "imagenet", "image_size": 32, "resize": 35, "center_crop": 32,
                                "interpolation": "bicubic", "mean": [0.5] * 3, "std": [0.5] * 3}
    names = tmp_path / "names.txt"
    names.write_text("n00000000 tench, Tinca tinca\nn00000001 goldfish\nn00000002 shark\n")
    assert ImageNetDataModule(root, label_names_file=names).labels == ["tench, Tinca tinca", "goldfish", "shark"]


def test_imagenet_missing_and_incomplete(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"expected .*/train/<class>/\*\.JPEG and .*/val/<class>/\*\.JPEG"):
        ImageNetDataModule(tmp_path / "absent").setup("fit")
    root = write_imagenet_folder(tmp_path / "in", n_classes=2, n_per_class=1, image_size=8)
    for path in (root / "val").rglob("*.JPEG"):
        path.unlink()
    with pytest.raises(FileNotFoundError, match="no images under val/"):
        ImageNetDataModule(root, image_size=8).setup("validate")
    (root / "val" / "n99999999").mkdir()
    with pytest.raises(ValueError, match="absent from train"):
        ImageNetDataModule(root, image_size=8).setup("validate")


# ---- CIFAR --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("archive", [False, True])
def test_cifar10_folder_and_archive(tmp_path, archive):
    path = write_cifar(tmp_path, "cifar10", n_train=40, n_test=20, seed=1, archive=archive)
    if archive:
        assert path.name == "cifar-10-python.tar.gz" and not (tmp_path / "cifar-10-batches-py").exists()
    dm = CIFAR10DataModule(path, image_size=16, batch_size=8, steps_per_epoch=3)
    assert dm.labels == list(CIFAR10_LABEL_NAMES) and dm.num_classes == 10
    assert len(dm.train_dataset) == 40 and len(dm.val_dataset) == 20 and len(dm.test_dataset) == 20
    assert len(dm.train_dataloader()) == 3
    assert dm.val_dataset is dm.test_dataset is dm.predict_dataset  # validate on test, as the paper
    assert len(set(dm.train_dataset.ids)) == 40 and dm.preprocessing["resize"] == 16
    _check_image_batch(next(iter(dm.train_dataloader())), 8, 16)
    _check_image_batch(next(iter(dm.test_dataloader())), 8, 16)
    # the same data is read from the folder, its parent, the archive and the archive's parent
    data = read_cifar(path)
    assert data.images["train"].shape == (40, 32, 32, 3) and data.images["test"].dtype == np.uint8
    assert data.labels["train"] == dm.train_dataset.labels
    if not archive:
        assert read_cifar(path / "cifar-10-batches-py").labels == data.labels
    else:
        assert read_cifar(tmp_path).labels == data.labels


def test_cifar_official_layout_pixels(tmp_path):
    """b"data" rows are [R plane, G plane, B plane] of 32x32; the decoded image must match that layout."""
    write_cifar(tmp_path, "cifar10", n_train=5, n_test=2)
    with open(tmp_path / "cifar-10-batches-py" / "data_batch_1", "rb") as handle:
        batch = RestrictedUnpickler(handle, encoding="bytes").load()
    assert set(batch) == {b"batch_label", b"labels", b"data", b"filenames"}
    row = batch[b"data"][0]
    image = read_cifar(tmp_path).images["train"][0]
    assert image[3, 5, 0] == row[3 * 32 + 5] and image[3, 5, 2] == row[2048 + 3 * 32 + 5]


def test_cifar10_val_fraction_holds_out_train(tmp_path):
    path = write_cifar(tmp_path, "cifar10", n_train=50, n_test=10)
    dm = CIFAR10DataModule(path, image_size=8, val_fraction=0.2)
    assert len(dm.train_dataset) == 40 and len(dm.val_dataset) == 10 and len(dm.test_dataset) == 10
    assert sorted(dm.val_dataset.labels) == list(range(10))  # stratified: one per class
    assert [dm.val_dataset[i]["index"] for i in range(3)] == [0, 1, 2]
    assert not set(dm.val_dataset.ids) & set(dm.train_dataset.ids) and dm.val_dataset is not dm.test_dataset


def test_cifar100_fine_and_coarse(tmp_path):
    path = write_cifar(tmp_path, "cifar100", n_train=30, n_test=10, archive=True)
    fine = CIFAR100DataModule(path, image_size=8, batch_size=5)
    assert fine.num_classes == 100 and len(fine.labels) == 100
    _check_image_batch(next(iter(fine.train_dataloader())), 5, 8)
    coarse = CIFAR100DataModule(path, image_size=8, label_type="coarse")
    assert coarse.num_classes == 20 and len(coarse.labels) == 20
    assert coarse.train_dataset.labels == [label // 5 for label in fine.train_dataset.labels]


@pytest.mark.parametrize("kind", ["cifar10", "cifar100"])
def test_cifar_hf_save_to_disk_and_parquet(tmp_path, kind):
    import datasets

    path = write_cifar_hf(tmp_path, kind, n_train=12, n_test=6)
    module = CIFAR10DataModule if kind == "cifar10" else CIFAR100DataModule
    dm = module(path, image_size=8, batch_size=3)
    assert dm.num_classes == len(dm.labels) and len(dm.train_dataset) == 12 and len(dm.val_dataset) == 6
    _check_image_batch(next(iter(dm.train_dataloader())), 3, 8)
    # the hub's parquet layout (plain_text/<split>-00000-of-00001.parquet)
    loaded = datasets.load_from_disk(str(path))
    (tmp_path / "pq" / "plain_text").mkdir(parents=True)
    for split in ("train", "test"):
        loaded[split].to_parquet(str(tmp_path / "pq" / "plain_text" / f"{split}-00000-of-00001.parquet"))
    from_parquet = module(tmp_path / "pq", image_size=8)
    assert from_parquet.labels == dm.labels
    assert from_parquet.val_dataset.labels == dm.val_dataset.labels
    assert torch.equal(from_parquet.val_dataset[0]["image"], dm.val_dataset[0]["image"])


def test_cifar_missing_data_messages(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"cifar-10-batches-py/\{data_batch_1.*cifar-10-python\.tar\.gz"):
        CIFAR10DataModule(tmp_path).setup("fit")
    write_cifar(tmp_path, "cifar10", n_train=5, n_test=2)
    (tmp_path / "cifar-10-batches-py" / "test_batch").unlink()  # incomplete folder
    with pytest.raises(FileNotFoundError, match="test_batch"):
        CIFAR10DataModule(tmp_path).setup("fit")
    with pytest.raises(FileNotFoundError, match="cifar-100-python"):
        _ = CIFAR100DataModule(tmp_path / "cifar-10-batches-py").labels


# ---- restricted unpickling ----------------------------------------------------------------------------


def test_restricted_unpickler_refuses_code_and_never_runs_it(tmp_path):
    marker = tmp_path / "pwned"
    payload = pickle.dumps(_Payload(f"touch {marker}"))
    with pytest.raises(pickle.UnpicklingError, match="refusing to load global"):
        safe_loads_pickle(payload)
    assert not marker.exists()
    # a tampered CIFAR folder: data_batch_3 replaced by the payload
    write_cifar(tmp_path, "cifar10", n_train=10, n_test=5)
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").write_bytes(payload)
    with pytest.raises(pickle.UnpicklingError, match="posix.system|nt.system"):
        CIFAR10DataModule(tmp_path).setup("fit")
    assert not marker.exists()


def test_restricted_unpickler_refuses_tampered_archive_and_object_arrays(tmp_path):
    marker = tmp_path / "pwned"
    archive = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        content = pickle.dumps({b"data": _Payload(f"touch {marker}")})
        info = tarfile.TarInfo("cifar-10-batches-py/batches.meta")
        info.size = len(content)
        tar.addfile(info, io.BytesIO(content))
    with pytest.raises(pickle.UnpicklingError):
        read_cifar(archive)
    assert not marker.exists()
    with pytest.raises(pickle.UnpicklingError, match="object array"):
        safe_loads_pickle(pickle.dumps({b"data": np.array([1, "x"], dtype=object)}, protocol=4))
    with pytest.raises(pickle.UnpicklingError, match="refusing to load global .*set"):
        safe_loads_pickle(pickle.dumps({"x": set()}, protocol=2))  # protocol 2 reduces set via builtins


# ---- transforms and learnable signal ------------------------------------------------------------------


def test_transform_shapes_and_normalisation():
    image = Image.fromarray(np.full((60, 80, 3), 255, np.uint8))
    assert resize_size(224, 0.9) == 248
    out = imagenet_eval_transform(32)(image)
    assert out.shape == (3, 32, 32) and torch.allclose(out, torch.ones_like(out))  # (1 - 0.5) / 0.5
    assert imagenet_train_transform(32)(image).shape == (3, 32, 32)
    assert cifar_train_transform(24)(Image.new("L", (32, 32))).shape == (3, 24, 24)  # grey -> RGB
    config = preprocessing_config("imagenet", 32)
    assert config["resize"] == 35 and config["center_crop"] == 32 and config["mean"] == [0.5, 0.5, 0.5]
    rebuilt = eval_transform_from_config(config)
    photo = Image.fromarray(np.random.default_rng(0).integers(0, 256, (50, 70, 3), dtype=np.uint8))
    assert torch.allclose(rebuilt(photo), imagenet_eval_transform(32)(photo))
    with pytest.raises(ValueError, match="image_size"):
        cifar_train_transform(0)


def test_synthetic_images_carry_a_learnable_signal(tmp_path):
    path = write_cifar(tmp_path, "cifar10", n_train=100, n_test=50, seed=0)
    dm = CIFAR10DataModule(path, image_size=8, randaugment=False)
    train = torch.stack([dm.train_dataset[i]["image"].mean((1, 2)) for i in range(100)])  # [100, 3]
    train_labels = torch.tensor(dm.train_dataset.labels)
    centroids = torch.stack([train[train_labels == c].mean(0) for c in range(10)])  # [10, 3]
    test = torch.stack([dm.test_dataset[i]["image"].mean((1, 2)) for i in range(50)])
    predicted = torch.cdist(test, centroids).argmin(1)
    accuracy = (predicted == torch.tensor(dm.test_dataset.labels)).float().mean().item()
    assert accuracy > 0.5  # chance is 0.1


def test_worker_processes_can_load(tmp_path):
    """Datasets and transforms pickle into DataLoader workers (num_workers > 0, persistent workers)."""
    path = write_cifar(tmp_path, "cifar10", n_train=10, n_test=5, archive=True)
    dm = CIFAR10DataModule(path, image_size=8, batch_size=5, num_workers=1, persistent_workers=True)
    loader = dm.train_dataloader()
    assert loader.persistent_workers and loader.num_workers == 1
    batches = list(loader)
    assert sorted(i for b in batches for i in b["index"].tolist()) == list(range(10))
