"""Image classification DataModules: ImageNet (class folders), CIFAR-10 and CIFAR-100.

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
import tarfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

from .base import ZooDataModule, check_labels, missing_data_error, stratified_split
from .collate import collate_images
from .hf_local import HF_LAYOUT, has_hf_dataset, load_hf_splits
from .safe_pickle import load_data_pickle
from .transforms import (
    cifar_eval_transform,
    cifar_train_transform,
    imagenet_eval_transform,
    imagenet_train_transform,
    preprocessing_config,
)

__all__ = [
    "ArrayImageDataset",
    "CIFAR100DataModule",
    "CIFAR10DataModule",
    "CIFARData",
    "HFImageDataset",
    "ImageFileDataset",
    "ImageNetDataModule",
    "read_cifar",
]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
Transform = Callable[[Any], Any]


# ---- datasets ---------------------------------------------------------------------------------------


class ImageFileDataset(Dataset):
    """Image files with labels; items ``{"image": transform(PIL RGB image), "label": int, "index": int}``.

    Example:
        >>> ImageFileDataset([], []).__len__()
        0
    """

    def __init__(self, paths: Sequence[Path], labels: Sequence[int], transform: Transform | None = None,
                 ids: Sequence[str] | None = None) -> None:
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

    def __init__(self, images: np.ndarray, labels: Sequence[int], transform: Transform | None = None,
                 ids: Sequence[str] | None = None) -> None:
        if not isinstance(images, np.ndarray) or images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
            shape = getattr(images, "shape", None)
            raise ValueError(f"images must be a uint8 array [N, H, W, 3], got {type(images).__name__} {shape} "
                             f"{getattr(images, 'dtype', '')}")
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

    def __init__(self, hf_dataset: Any, image_column: str, label_column: str,
                 transform: Transform | None = None, rows: Sequence[int] | None = None, split: str = "") -> None:
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
        batch_size, num_workers, pin_memory, persistent_workers, steps_per_epoch, seed, eval_batch_size:
            see :class:`~heinsen_zoo.data.base.ZooDataModule`.

    Example (with a tiny folder written by :func:`heinsen_zoo.data.synthetic.write_imagenet_folder`):
        >>> import tempfile
        >>> from heinsen_zoo.data.synthetic import write_imagenet_folder
        >>> root = write_imagenet_folder(tempfile.mkdtemp(), n_classes=2, n_per_class=2, image_size=40)
        >>> dm = ImageNetDataModule(root, image_size=32, batch_size=2)
        >>> dm.num_classes, next(iter(dm.train_dataloader()))["image"].shape
        (2, torch.Size([2, 3, 32, 32]))
    """

    collate_fn = staticmethod(collate_images)

    def __init__(
        self,
        data_dir: str | Path,
        image_size: int = 224,
        crop_pct: float = 0.9,
        randaugment: bool = True,
        label_names_file: str | Path | None = None,
        batch_size: int = 50,
        num_workers: int = 0,
        pin_memory: bool = False,
        persistent_workers: bool = False,
        steps_per_epoch: int | None = None,
        seed: int = 0,
        eval_batch_size: int | None = None,
    ) -> None:
        super().__init__(batch_size, num_workers, pin_memory, persistent_workers, steps_per_epoch, seed,
                         eval_batch_size)
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
                raise missing_data_error("data_dir", train_dir, self._expected() + " (no class folders found)")
        return list(self._classes)

    @property
    def labels(self) -> list[str]:
        if self.label_names_file is None:
            return self.classes
        if not self.label_names_file.is_file():
            raise missing_data_error("label_names_file", self.label_names_file, "lines '<class folder> <name>'")
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
            files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
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


# ---- CIFAR ------------------------------------------------------------------------------------------

_CIFAR_FORMAT = {
    "cifar10": {
        "folder": "cifar-10-batches-py",
        "archive": "cifar-10-python.tar.gz",
        "train": [f"data_batch_{i}" for i in range(1, 6)],
        "test": ["test_batch"],
        "meta": "batches.meta",
        "num_classes": 10,
    },
    "cifar100": {
        "folder": "cifar-100-python",
        "archive": "cifar-100-python.tar.gz",
        "train": ["train"],
        "test": ["test"],
        "meta": "meta",
        "num_classes": 100,
    },
}


class CIFARData:
    """Decoded CIFAR: ``images[split]`` uint8 [N, 32, 32, 3], ``labels[split]`` list[int], ``label_names``."""

    def __init__(self, images: dict[str, np.ndarray], labels: dict[str, list[int]], label_names: list[str]) -> None:
        self.images = images
        self.labels = labels
        self.label_names = label_names


def _cifar_layout(kind: str, data_dir: Path) -> str:
    fmt = _CIFAR_FORMAT[kind]
    files = ", ".join(fmt["train"] + fmt["test"] + [fmt["meta"]])
    return (f"{data_dir}/{fmt['folder']}/{{{files}}}, the archive {data_dir}/{fmt['archive']} (or its path as "
            f"data_dir), or " + HF_LAYOUT)


def _decode_batch(kind: str, name: str, batch: Any, label_key: bytes) -> tuple[np.ndarray, list[int]]:
    if not isinstance(batch, dict) or b"data" not in batch or label_key not in batch:
        keys = sorted(batch) if isinstance(batch, dict) else type(batch).__name__
        raise ValueError(f"{kind} file {name!r}: expected a dict with keys b'data' and {label_key!r}, got {keys}")
    data = batch[b"data"]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise ValueError(f"{kind} file {name!r}: b'data' must be uint8 [N, 3072], got "
                         f"{getattr(data, 'dtype', type(data).__name__)} {getattr(data, 'shape', '')}")
    labels = [int(label) for label in batch[label_key]]
    if len(labels) != len(data):
        raise ValueError(f"{kind} file {name!r}: {len(data)} images but {len(labels)} labels")
    images = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)  # [N, 32, 32, 3], channel-major rows in file
    return np.ascontiguousarray(images), labels


def read_cifar(data_dir: str | Path, kind: str = "cifar10", label_type: str = "fine") -> CIFARData:
    """Read the official CIFAR python pickles from a folder or a .tar.gz archive (restricted unpickler).

    Args:
        data_dir: the extracted folder, its parent, the archive, or the archive's parent folder.
        kind: "cifar10" or "cifar100".
        label_type: CIFAR-100 only: "fine" (100 classes) or "coarse" (20 superclasses).
    """
    if kind not in _CIFAR_FORMAT:
        raise ValueError(f"kind must be 'cifar10' or 'cifar100', got {kind!r}")
    if label_type not in ("fine", "coarse"):
        raise ValueError(f"label_type must be 'fine' or 'coarse', got {label_type!r}")
    fmt = _CIFAR_FORMAT[kind]
    data_dir = Path(data_dir)
    needed = fmt["train"] + fmt["test"] + [fmt["meta"]]
    raw: dict[str, Any] = {}
    folder = next((c for c in (data_dir / fmt["folder"], data_dir)
                   if c.is_dir() and all((c / n).is_file() for n in needed)), None)
    archive = next((c for c in (data_dir, data_dir / fmt["archive"]) if c.is_file()), None)
    if folder is not None:
        for name in needed:
            with open(folder / name, "rb") as handle:
                raw[name] = load_data_pickle(handle, folder / name)
    elif archive is not None:
        try:
            with tarfile.open(archive, "r:*") as tar:
                for member in tar:
                    parts = member.name.split("/")
                    if member.isfile() and len(parts) == 2 and parts[0] == fmt["folder"] and parts[1] in needed:
                        handle = tar.extractfile(member)
                        assert handle is not None
                        raw[parts[1]] = load_data_pickle(handle, f"{archive}:{member.name}")
        except tarfile.TarError as error:
            raise ValueError(f"{archive}: not a readable {kind} tar archive ({error})") from error
        absent = [name for name in needed if name not in raw]
        if absent:
            raise missing_data_error("data_dir", archive, _cifar_layout(kind, data_dir)
                                     + f" (archive lacks {fmt['folder']}/{absent})")
    else:
        raise missing_data_error("data_dir", data_dir, _cifar_layout(kind, data_dir))

    meta = raw[fmt["meta"]]
    names_key = b"label_names" if kind == "cifar10" else f"{label_type}_label_names".encode()
    label_key = b"labels" if kind == "cifar10" else f"{label_type}_labels".encode()
    if not isinstance(meta, dict) or names_key not in meta:
        raise ValueError(f"{kind} meta file {fmt['meta']!r}: expected key {names_key!r}")
    label_names = [n.decode("utf-8") if isinstance(n, bytes) else str(n) for n in meta[names_key]]
    images: dict[str, np.ndarray] = {}
    labels: dict[str, list[int]] = {}
    for split in ("train", "test"):
        decoded = [_decode_batch(kind, name, raw[name], label_key) for name in fmt[split]]
        images[split] = np.concatenate([d[0] for d in decoded])
        labels[split] = [label for d in decoded for label in d[1]]
        check_labels(f"{kind} {split}", labels[split], len(label_names))
    return CIFARData(images, labels, label_names)


class _CIFARDataModule(ZooDataModule):
    kind = "cifar10"
    collate_fn = staticmethod(collate_images)

    def __init__(
        self,
        data_dir: str | Path,
        image_size: int = 224,
        randaugment: bool = True,
        val_fraction: float = 0.0,
        label_type: str = "fine",
        batch_size: int = 50,
        num_workers: int = 0,
        pin_memory: bool = False,
        persistent_workers: bool = False,
        steps_per_epoch: int | None = None,
        seed: int = 0,
        eval_batch_size: int | None = None,
    ) -> None:
        super().__init__(batch_size, num_workers, pin_memory, persistent_workers, steps_per_epoch, seed,
                         eval_batch_size)
        self.save_hyperparameters()
        if not 0.0 <= float(val_fraction) < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction!r}")
        if label_type not in ("fine", "coarse"):
            raise ValueError(f"label_type must be 'fine' or 'coarse', got {label_type!r}")
        self.data_dir = Path(data_dir)
        self.image_size = image_size
        self.randaugment = randaugment
        self.val_fraction = float(val_fraction)
        self.label_type = label_type
        self.train_transform = cifar_train_transform(image_size, randaugment)
        self.eval_transform = cifar_eval_transform(image_size)
        self._source: dict[str, Any] | None = None

    @property
    def _num_classes(self) -> int:
        if self.kind == "cifar100" and self.label_type == "coarse":
            return 20
        return _CIFAR_FORMAT[self.kind]["num_classes"]

    @property
    def num_classes(self) -> int:
        """10 (CIFAR-10), 100 (CIFAR-100 fine) or 20 (CIFAR-100 coarse); known without reading files."""
        return self._num_classes

    def _load(self) -> dict[str, Any]:
        if self._source is not None:
            return self._source
        if has_hf_dataset(self.data_dir):
            splits = load_hf_splits(self.data_dir, ("train", "test"))
            if set(splits) != {"train", "test"}:
                raise missing_data_error("data_dir", self.data_dir, _cifar_layout(self.kind, self.data_dir)
                                         + f" (found HF splits {sorted(splits)}, need train and test)")
            columns = splits["train"].column_names
            image_column = next((c for c in ("img", "image") if c in columns), None)
            label_candidates = ["label"] if self.kind == "cifar10" else [f"{self.label_type}_label"]
            label_column = next((c for c in label_candidates if c in columns), None)
            if image_column is None or label_column is None:
                raise ValueError(f"{self.data_dir}: HF {self.kind} dataset needs an image column (img/image) and "
                                 f"a label column {label_candidates}; it has {columns}")
            feature = splits["train"].features[label_column]
            names = list(getattr(feature, "names", None) or [str(i) for i in range(self._num_classes)])
            self._source = {"hf": splits, "image_column": image_column, "label_column": label_column,
                            "label_names": names}
        else:
            data = read_cifar(self.data_dir, self.kind, self.label_type)
            self._source = {"arrays": data, "label_names": data.label_names}
        if len(self._source["label_names"]) != self._num_classes:
            raise ValueError(f"{self.data_dir}: {len(self._source['label_names'])} label names, expected "
                             f"{self._num_classes} for {self.kind} ({self.label_type})")
        return self._source

    @property
    def labels(self) -> list[str]:
        return list(self._load()["label_names"])

    def _train_rows(self) -> tuple[list[int], list[int]]:
        source = self._load()
        if "hf" in source:
            all_labels = [int(v) for v in source["hf"]["train"][source["label_column"]]]
        else:
            all_labels = source["arrays"].labels["train"]
        keys = [f"train/{i:06d}" for i in range(len(all_labels))]
        return stratified_split(keys, all_labels, self.val_fraction, self.seed)

    def split_source(self, split: str) -> str:
        """val -> test unless ``val_fraction > 0``; predict -> test (shared dataset objects)."""
        if split == "predict" or (split == "val" and self.val_fraction == 0):
            return "test"
        return split

    @property
    def preprocessing(self) -> dict[str, Any]:
        return preprocessing_config("cifar", self.image_size)

    def _build_split(self, split: str) -> Dataset:
        source = self._load()
        transform = self.train_transform if split == "train" else self.eval_transform
        if split in ("train", "val"):
            train_rows, val_rows = self._train_rows()
            rows = train_rows if split == "train" else val_rows
            if "hf" in source:
                return HFImageDataset(source["hf"]["train"], source["image_column"], source["label_column"],
                                      transform, rows, split="train")
            data: CIFARData = source["arrays"]
            train = ArrayImageDataset(data.images["train"], data.labels["train"],
                                      ids=[f"train/{i:06d}" for i in range(len(data.labels["train"]))])
            return _Subset(train, rows, transform)
        if "hf" in source:
            return HFImageDataset(source["hf"]["test"], source["image_column"], source["label_column"], transform,
                                  split="test")
        data = source["arrays"]
        return ArrayImageDataset(data.images["test"], data.labels["test"], transform,
                                 ids=[f"test/{i:06d}" for i in range(len(data.labels["test"]))])


class CIFAR10DataModule(_CIFARDataModule):
    """CIFAR-10 with the paper's preprocessing (bicubic resize to image_size, RandAugment for train).

    Args:
        data_dir: ``cifar-10-batches-py/`` (or its parent), ``cifar-10-python.tar.gz`` (or its parent), or a
            local Hugging Face dataset (save_to_disk folder or parquet files) with train/test splits.
        image_size: output side (224 in the paper).
        randaugment: apply RandAugment to training images.
        val_fraction: 0 (default, the paper): validate on the test split; > 0: hold out this seeded,
            stratified share of train for validation.
        label_type: ignored for CIFAR-10.
        batch_size, num_workers, pin_memory, persistent_workers, steps_per_epoch, seed, eval_batch_size:
            see :class:`~heinsen_zoo.data.base.ZooDataModule` (the paper: batch 50, 2000 steps per epoch).

    Example (a tiny archive written by :func:`heinsen_zoo.data.synthetic.write_cifar`):
        >>> import tempfile
        >>> from heinsen_zoo.data.synthetic import write_cifar
        >>> path = write_cifar(tempfile.mkdtemp(), "cifar10", n_train=20, n_test=10, archive=True)
        >>> dm = CIFAR10DataModule(path, image_size=32, batch_size=4, steps_per_epoch=3)
        >>> len(dm.train_dataloader()), dm.labels[0]
        (3, 'airplane')
    """

    kind = "cifar10"


class CIFAR100DataModule(_CIFARDataModule):
    """CIFAR-100 (fine labels by default, ``label_type="coarse"`` for the 20 superclasses).

    Args: as :class:`CIFAR10DataModule`, with ``cifar-100-python/`` / ``cifar-100-python.tar.gz``.

    Example:
        >>> import tempfile
        >>> from heinsen_zoo.data.synthetic import write_cifar
        >>> path = write_cifar(tempfile.mkdtemp(), "cifar100", n_train=20, n_test=10)
        >>> CIFAR100DataModule(path, image_size=32).num_classes
        100
    """

    kind = "cifar100"
