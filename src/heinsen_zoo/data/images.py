"""Image datasets (files, arrays, Hugging Face rows) and the ImageNet DataModule (class folders).

CIFAR-10/100 are in :mod:`heinsen_zoo.data.cifar`.

Batches: ``{"image": FloatTensor [B, 3, image_size, image_size], "label": LongTensor [B], "index": LongTensor [B]}``,
preprocessed as in SPEC §5 (see :mod:`heinsen_zoo.data.transforms`).

Sources (nothing is ever downloaded):

* ImageNet: ``<data_dir>/train/<class>/*.JPEG`` and ``<data_dir>/val/<class>/*.JPEG`` (torchvision
  ImageFolder layout; the classes are the sorted folder names of ``train/``).
* CIFAR: the official "python version" — the extracted ``cifar-10-batches-py/`` (``data_batch_1..5``,
  ``test_batch``, ``batches.meta``) or ``cifar-100-python/`` (``train``, ``test``, ``meta``) folders, the
  ``.tar.gz`` archives themselves (read in memory, never extracted), or a local Hugging Face dataset
  (``save_to_disk`` folder or parquet files, columns ``img``/``image`` and ``label`` or
  ``fine_label``/``coarse_label``). The pickles are read with a restricted unpickler
  (:mod:`heinsen_zoo.data.safe_pickle`): a tampered file cannot run code.

The paper evaluates on ImageNet's val and CIFAR's test split, so by default validation = test = predict =
that split; CIFAR's ``val_fraction > 0`` holds out a seeded stratified part of train for validation instead.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

from .base import ZooDataModule, missing_data_error
from .collate import collate_images
from .transforms import (
    imagenet_eval_transform,
    imagenet_train_transform,
    preprocessing_config,
)

__all__ = ["ArrayImageDataset", "HFImageDataset", "ImageFileDataset", "ImageNetDataModule"]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
Transform = Callable[[Any], Any]


# ---- datasets ---------------------------------------------------------------------------------------


class ImageFileDataset(Dataset):
    """Image files with labels; items ``{"image": transform(PIL RGB image), "label": int, "index": int}``.

    Example:
        >>> ImageFileDataset([], []).__len__()
        0
    """

    def __init__(
        self,
        paths: Sequence[Path],
        labels: Sequence[int],
        transform: Transform | None = None,
        ids: Sequence[str] | None = None,
    ) -> None:
        if len(paths) != len(labels):
            raise ValueError(f"paths ({len(paths)}) and labels ({len(labels)}) must have the same length")
        self.paths = [Path(p) for p in paths]
        self.labels = [int(label) for label in labels]
        self.transform = transform
        self.ids = [str(p) for p in self.paths] if ids is None else list(ids)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> dict[str, Any]:
        with Image.open(self.paths[index]) as opened:
            image = opened.convert("RGB")
        if self.transform is not None:
            image = self.transform(image)
        return {"image": image, "label": self.labels[index], "index": int(index)}


class ArrayImageDataset(Dataset):
    """uint8 images [N, H, W, 3] in memory with labels; items like :class:`ImageFileDataset`.

    Example:
        >>> ds = ArrayImageDataset(np.zeros((2, 32, 32, 3), np.uint8), [0, 1])
        >>> ds[1]["label"], ds[1]["image"].size
        (1, (32, 32))
    """

    def __init__(
        self,
        images: np.ndarray,
        labels: Sequence[int],
        transform: Transform | None = None,
        ids: Sequence[str] | None = None,
    ) -> None:
        if (
            not isinstance(images, np.ndarray)
            or images.ndim != 4
            or images.shape[-1] != 3
            or images.dtype != np.uint8
        ):
            shape = getattr(images, "shape", None)
            raise ValueError(
                f"images must be a uint8 array [N, H, W, 3], got {type(images).__name__} {shape} "
                f"{getattr(images, 'dtype', '')}"
            )
        if len(images) != len(labels):
            raise ValueError(f"images ({len(images)}) and labels ({len(labels)}) must have the same length")
        self.images = images
        self.labels = [int(label) for label in labels]
        self.transform = transform
        self.ids = [f"{i:06d}" for i in range(len(images))] if ids is None else list(ids)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> dict[str, Any]:
        image = Image.fromarray(self.images[index])
        if self.transform is not None:
            image = self.transform(image)
        return {"image": image, "label": self.labels[index], "index": int(index)}


def _to_pil(value: Any) -> Image.Image:
    if isinstance(value, Image.Image):
        return value
    if isinstance(value, dict) and value.get("bytes") is not None:  # undecoded datasets Image feature
        with Image.open(io.BytesIO(value["bytes"])) as opened:
            return opened.convert("RGB")
    if isinstance(value, np.ndarray):
        return Image.fromarray(value)
    raise TypeError(f"cannot read an image from a {type(value).__name__}")


class HFImageDataset(Dataset):
    """A (subset of a) Hugging Face dataset with an image and a label column; items like the others."""

    def __init__(
        self,
        hf_dataset: Any,
        image_column: str,
        label_column: str,
        transform: Transform | None = None,
        rows: Sequence[int] | None = None,
        split: str = "",
    ) -> None:
        self.hf_dataset = hf_dataset
        self.image_column = image_column
        self.label_column = label_column
        self.transform = transform
        self.rows = list(range(len(hf_dataset))) if rows is None else list(rows)
        self.ids = [f"{split}/{row:06d}" for row in self.rows]
        all_labels = [int(label) for label in hf_dataset[label_column]]  # one pass over the column
        self.labels = [all_labels[row] for row in self.rows]

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict[str, Any]:
        record = self.hf_dataset[self.rows[index]]
        image = _to_pil(record[self.image_column]).convert("RGB")
        if self.transform is not None:
            image = self.transform(image)
        return {"image": image, "label": self.labels[index], "index": int(index)}


class _Subset(Dataset):
    """Rows of a dataset with re-numbered ``index`` and a ``labels`` list."""

    def __init__(self, base: ArrayImageDataset, rows: Sequence[int], transform: Transform | None) -> None:
        self.base = ArrayImageDataset(base.images, base.labels, transform)
        self.rows = list(rows)
        self.labels = [base.labels[row] for row in self.rows]
        self.ids = [base.ids[row] for row in self.rows]

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = self.base[self.rows[index]]
        item["index"] = int(index)
        return item


# ---- ImageNet ---------------------------------------------------------------------------------------


class ImageNetDataModule(ZooDataModule):
    """ImageNet-1k (or any class-folder image dataset) with the paper's preprocessing.

    Args:
        data_dir: folder with ``train/<class>/*.JPEG`` and ``val/<class>/*.JPEG`` (any of the extensions
            .jpg .jpeg .png .ppm .bmp .pgm .tif .tiff .webp, case-insensitive).
        image_size: crop side (224 in the paper); resize side = floor(image_size / crop_pct).
        crop_pct: 0.9 in the paper.
        randaugment: apply RandAugment to training images.
        label_names_file: optional text file mapping folder names to readable names, one
            ``<folder> <name...>`` per line (e.g. Kaggle's LOC_synset_mapping.txt); default: folder names.
        **loader: the loader arguments (batch_size, num_workers, pin_memory, persistent_workers,
            steps_per_epoch, seed, eval_batch_size) of :class:`~heinsen_zoo.data.base.ZooDataModule`.

    Example (with a tiny folder written by :func:`heinsen_zoo.data.synthetic.write_imagenet_folder`):
        >>> import tempfile
        >>> from heinsen_zoo.data.synthetic import write_imagenet_folder
        >>> root = write_imagenet_folder(tempfile.mkdtemp(), n_classes=2, n_per_class=2, image_size=40)
        >>> dm = ImageNetDataModule(root, image_size=32, batch_size=2)
        >>> dm.num_classes, next(iter(dm.train_dataloader()))["image"].shape
        (2, torch.Size([2, 3, 32, 32]))
    """

    collate_fn = staticmethod(collate_images)

    default_batch_size = 50

    def __init__(
        self,
        data_dir: str | Path,
        image_size: int = 224,
        crop_pct: float = 0.9,
        randaugment: bool = True,
        label_names_file: str | Path | None = None,
        **loader: Any,
    ) -> None:
        super().__init__(**loader)
        self.save_hyperparameters()
        self.data_dir = Path(data_dir)
        self.image_size = image_size
        self.crop_pct = crop_pct
        self.randaugment = randaugment
        self.label_names_file = None if label_names_file is None else Path(label_names_file)
        self.train_transform = imagenet_train_transform(image_size, crop_pct, randaugment)
        self.eval_transform = imagenet_eval_transform(image_size, crop_pct)
        self._classes: list[str] | None = None

    def _expected(self) -> str:
        return f"{self.data_dir}/train/<class>/*.JPEG and {self.data_dir}/val/<class>/*.JPEG"

    @property
    def classes(self) -> list[str]:
        """Class folder names of ``train/`` (sorted); index = class id."""
        if self._classes is None:
            train_dir = self.data_dir / "train"
            if not train_dir.is_dir():
                raise missing_data_error("data_dir", train_dir, self._expected())
            self._classes = sorted(entry.name for entry in train_dir.iterdir() if entry.is_dir())
            if not self._classes:
                raise missing_data_error(
                    "data_dir", train_dir, self._expected() + " (no class folders found)"
                )
        return list(self._classes)

    @property
    def labels(self) -> list[str]:
        if self.label_names_file is None:
            return self.classes
        if not self.label_names_file.is_file():
            raise missing_data_error(
                "label_names_file", self.label_names_file, "lines '<class folder> <name>'"
            )
        names: dict[str, str] = {}
        for line in self.label_names_file.read_text(encoding="utf-8").splitlines():
            folder, _, name = line.strip().partition(" ")
            if folder:
                names[folder] = name.strip() or folder
        missing = [c for c in self.classes if c not in names]
        if missing:
            raise ValueError(f"label_names_file {self.label_names_file} lacks classes {missing[:5]}")
        return [names[c] for c in self.classes]

    def _scan(self, split: str) -> tuple[list[Path], list[int]]:
        classes = self.classes
        split_dir = self.data_dir / split
        if not split_dir.is_dir():
            raise missing_data_error("data_dir", split_dir, self._expected())
        unknown = sorted(e.name for e in split_dir.iterdir() if e.is_dir() and e.name not in set(classes))
        if unknown:
            raise ValueError(f"{split_dir} has class folders absent from train/: {unknown[:5]}")
        paths: list[Path] = []
        labels: list[int] = []
        for label, name in enumerate(classes):
            folder = split_dir / name
            if not folder.is_dir():
                continue
            files = sorted(
                p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
            )
            paths.extend(files)
            labels.extend([label] * len(files))
        if not paths:
            raise missing_data_error("data_dir", split_dir, self._expected() + f" (no images under {split}/)")
        return paths, labels

    def split_source(self, split: str) -> str:
        """The paper evaluates on val: validation, test and predict share the ``val/`` dataset."""
        return "train" if split == "train" else "val"

    @property
    def preprocessing(self) -> dict[str, Any]:
        return preprocessing_config("imagenet", self.image_size, self.crop_pct)

    def _build_split(self, split: str) -> ImageFileDataset:
        paths, labels = self._scan(split)
        ids = [path.relative_to(self.data_dir).as_posix() for path in paths]
        transform = self.train_transform if split == "train" else self.eval_transform
        return ImageFileDataset(paths, labels, transform=transform, ids=ids)
