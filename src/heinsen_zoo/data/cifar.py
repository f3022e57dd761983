"""CIFAR-10 and CIFAR-100: the official "python version" (folder or archive) or a local Hugging Face dataset.

Batches: ``{"image": FloatTensor [B, 3, image_size, image_size], "label": LongTensor [B], "index": LongTensor [B]}``,
preprocessed as in SPEC §5 (see :mod:`heinsen_zoo.data.transforms`). Nothing is ever downloaded here.
The pickles are read with a restricted unpickler (:mod:`heinsen_zoo.data.safe_pickle`): a tampered file cannot
run code. The paper evaluates on the test split, so by default validation = test = predict = test;
``val_fraction > 0`` holds out a seeded stratified part of train for validation instead.
"""

from __future__ import annotations

import tarfile
from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import Dataset

from .base import (
    ZooDataModule,
    check_labels,
    missing_data_error,
    split_source_with_carved_val,
    stratified_split,
)
from .collate import collate_images
from .hf_local import HF_LAYOUT, has_hf_dataset, load_hf_splits
from .images import ArrayImageDataset, HFImageDataset, _Subset
from .safe_pickle import load_data_pickle
from .transforms import cifar_eval_transform, cifar_train_transform, preprocessing_config

__all__ = ["CIFAR100DataModule", "CIFAR10DataModule", "CIFARData", "read_cifar"]

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

    def __init__(
        self, images: dict[str, np.ndarray], labels: dict[str, list[int]], label_names: list[str]
    ) -> None:
        self.images = images
        self.labels = labels
        self.label_names = label_names


def _cifar_layout(kind: str, data_dir: Path) -> str:
    fmt = _CIFAR_FORMAT[kind]
    files = ", ".join(fmt["train"] + fmt["test"] + [fmt["meta"]])
    return (
        f"{data_dir}/{fmt['folder']}/{{{files}}}, the archive {data_dir}/{fmt['archive']} (or its path as "
        f"data_dir), or " + HF_LAYOUT
    )


def _decode_batch(kind: str, name: str, batch: Any, label_key: bytes) -> tuple[np.ndarray, list[int]]:
    if not isinstance(batch, dict) or b"data" not in batch or label_key not in batch:
        keys = sorted(batch) if isinstance(batch, dict) else type(batch).__name__
        raise ValueError(
            f"{kind} file {name!r}: expected a dict with keys b'data' and {label_key!r}, got {keys}"
        )
    data = batch[b"data"]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise ValueError(
            f"{kind} file {name!r}: b'data' must be uint8 [N, 3072], got "
            f"{getattr(data, 'dtype', type(data).__name__)} {getattr(data, 'shape', '')}"
        )
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
    folder = next(
        (
            c
            for c in (data_dir / fmt["folder"], data_dir)
            if c.is_dir() and all((c / n).is_file() for n in needed)
        ),
        None,
    )
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
                    if (
                        member.isfile()
                        and len(parts) == 2
                        and parts[0] == fmt["folder"]
                        and parts[1] in needed
                    ):
                        handle = tar.extractfile(member)
                        assert handle is not None
                        raw[parts[1]] = load_data_pickle(handle, f"{archive}:{member.name}")
        except tarfile.TarError as error:
            raise ValueError(f"{archive}: not a readable {kind} tar archive ({error})") from error
        absent = [name for name in needed if name not in raw]
        if absent:
            raise missing_data_error(
                "data_dir",
                archive,
                _cifar_layout(kind, data_dir) + f" (archive lacks {fmt['folder']}/{absent})",
            )
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

    default_batch_size = 50

    def __init__(
        self,
        data_dir: str | Path,
        image_size: int = 224,
        randaugment: bool = True,
        val_fraction: float = 0.0,
        label_type: str = "fine",
        **loader: Any,
    ) -> None:
        super().__init__(**loader)
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
                raise missing_data_error(
                    "data_dir",
                    self.data_dir,
                    _cifar_layout(self.kind, self.data_dir)
                    + f" (found HF splits {sorted(splits)}, need train and test)",
                )
            columns = splits["train"].column_names
            image_column = next((c for c in ("img", "image") if c in columns), None)
            label_candidates = ["label"] if self.kind == "cifar10" else [f"{self.label_type}_label"]
            label_column = next((c for c in label_candidates if c in columns), None)
            if image_column is None or label_column is None:
                raise ValueError(
                    f"{self.data_dir}: HF {self.kind} dataset needs an image column (img/image) and "
                    f"a label column {label_candidates}; it has {columns}"
                )
            feature = splits["train"].features[label_column]
            names = list(getattr(feature, "names", None) or [str(i) for i in range(self._num_classes)])
            self._source = {
                "hf": splits,
                "image_column": image_column,
                "label_column": label_column,
                "label_names": names,
            }
        else:
            data = read_cifar(self.data_dir, self.kind, self.label_type)
            self._source = {"arrays": data, "label_names": data.label_names}
        if len(self._source["label_names"]) != self._num_classes:
            raise ValueError(
                f"{self.data_dir}: {len(self._source['label_names'])} label names, expected "
                f"{self._num_classes} for {self.kind} ({self.label_type})"
            )
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
        return split_source_with_carved_val(split, self.val_fraction)

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
                return HFImageDataset(
                    source["hf"]["train"],
                    source["image_column"],
                    source["label_column"],
                    transform,
                    rows,
                    split="train",
                )
            data: CIFARData = source["arrays"]
            train = ArrayImageDataset(
                data.images["train"],
                data.labels["train"],
                ids=[f"train/{i:06d}" for i in range(len(data.labels["train"]))],
            )
            return _Subset(train, rows, transform)
        if "hf" in source:
            return HFImageDataset(
                source["hf"]["test"], source["image_column"], source["label_column"], transform, split="test"
            )
        data = source["arrays"]
        return ArrayImageDataset(
            data.images["test"],
            data.labels["test"],
            transform,
            ids=[f"test/{i:06d}" for i in range(len(data.labels["test"]))],
        )


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
        **loader: the loader arguments (batch_size, num_workers, pin_memory, persistent_workers,
            steps_per_epoch, seed, eval_batch_size) of :class:`~heinsen_zoo.data.base.ZooDataModule`
            (the paper: batch 50, 2000 steps per epoch).

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
