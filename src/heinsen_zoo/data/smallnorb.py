"""smallNORB: the official files, a Lightning DataModule, tiny synthetic files.

The official files (https://cs.nyu.edu/~ylclab/data/norb-v1.0-small/), plain or gzipped (``.gz``)::

    smallnorb-5x46789x9x18x6x2x96x96-training-{dat,cat,info}.mat   (24300 stereo pairs, instances 4 6 7 8 9)
    smallnorb-5x01235x9x18x6x2x96x96-testing-{dat,cat,info}.mat    (24300 stereo pairs, instances 0 1 2 3 5)

``dat``: uint8 ``[N, 2, 96, 96]``; ``cat``: int32 ``[N]`` (category 0-4: animal, human, airplane, truck, car);
``info``: int32 ``[N, 4]`` (instance 0-9, elevation 0-8 (30° to 70° in 5° steps), azimuth 0, 2, ..., 34
(× 10°), lighting 0-5).

The NORB binary matrix format is read and written by :mod:`heinsen_zoo.data.norb_format`.

Batches of :class:`SmallNORBDataModule` are dicts::

    {"image": float32 [B, 2, 96, 96] (pixels / 255), "label": int64 [B],
     "meta": int64 [B, 5] (columns META_FIELDS = category, instance, elevation, azimuth, lighting; raw file
             values), "index": int64 [B] (row in the split's files)}

Example:
    >>> import tempfile
    >>> from heinsen_zoo.data.smallnorb import SmallNORBDataModule, write_tiny_smallnorb
    >>> root = tempfile.mkdtemp()
    >>> _ = write_tiny_smallnorb(root, n_train=10, n_test=5, seed=0)
    >>> dm = SmallNORBDataModule(root, batch_size=4)
    >>> dm.setup("fit")
    >>> batch = next(iter(dm.train_dataloader()))
    >>> batch["image"].shape, batch["meta"].shape
    (torch.Size([4, 2, 96, 96]), torch.Size([4, 5]))
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from heinsen_zoo.labels import SMALLNORB_LABELS

from .base import ZooDataModule, stratified_split
from .norb_format import read_norb_matrix, write_norb_matrix

__all__ = [
    "META_FIELDS",
    "SMALLNORB_LABELS",
    "SmallNORBDataModule",
    "SmallNORBDataset",
    "collate_smallnorb",
    "expected_files",
    "load_smallnorb_split",
    "read_norb_matrix",
    "write_norb_matrix",
    "write_tiny_smallnorb",
]

META_FIELDS = ("category", "instance", "elevation", "azimuth", "lighting")
PREFIXES = {
    "train": "smallnorb-5x46789x9x18x6x2x96x96-training",
    "test": "smallnorb-5x01235x9x18x6x2x96x96-testing",
}
KINDS = ("dat", "cat", "info")
INSTANCES = {"train": (4, 6, 7, 8, 9), "test": (0, 1, 2, 3, 5)}
IMAGE_SIZE = 96

# ---------------------------------------------------------------------------------------------------------------
# The smallNORB files.


def expected_files(split: str) -> list[str]:
    """Official file names of ``split`` ("train" or "test"), each also accepted with ``.gz``."""
    if split not in PREFIXES:
        raise ValueError(f"split: expected 'train' or 'test', got {split!r}")
    return [f"{PREFIXES[split]}-{kind}.mat" for kind in KINDS]


def _find_file(data_dir: Path, split: str, kind: str) -> Path:
    name = f"{PREFIXES[split]}-{kind}.mat"
    for candidate in (data_dir / name, data_dir / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    listing = "\n  ".join(expected_files("train") + expected_files("test"))
    raise FileNotFoundError(
        f"data_dir: smallNORB file {data_dir / name} (or {name}.gz) not found. Expected in {data_dir}, plain or "
        f"gzipped:\n  {listing}\nNo download is attempted: get them from "
        "https://cs.nyu.edu/~ylclab/data/norb-v1.0-small/ and pass their folder as data_dir "
        "(or write synthetic ones with heinsen_zoo.data.smallnorb.write_tiny_smallnorb)."
    )


def load_smallnorb_split(
    data_dir: str | os.PathLike, split: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Read one split's three files: ``(images uint8 [N, 2, 96, 96], labels int64 [N], meta int64 [N, 5])``.

    ``meta`` columns are :data:`META_FIELDS` (the category, then the four ``info`` columns), raw values.
    """
    if split not in PREFIXES:
        raise ValueError(f"split: expected 'train' or 'test', got {split!r}")
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        listing = ", ".join(expected_files("train") + expected_files("test"))
        raise FileNotFoundError(
            f"data_dir: {data_dir} is not a directory; expected one holding {listing} (or .gz)"
        )
    paths = {kind: _find_file(data_dir, split, kind) for kind in KINDS}
    images = read_norb_matrix(paths["dat"])
    cat = read_norb_matrix(paths["cat"])
    info = read_norb_matrix(paths["info"])
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != (2, IMAGE_SIZE, IMAGE_SIZE):
        raise ValueError(
            f"{paths['dat']}: expected a uint8 matrix of shape [N, 2, 96, 96], got {images.dtype} {list(images.shape)}"
        )
    n = images.shape[0]
    if cat.shape != (n,) or not np.issubdtype(cat.dtype, np.integer):
        raise ValueError(
            f"{paths['cat']}: expected an integer matrix of shape [{n}], got {cat.dtype} {list(cat.shape)}"
        )
    if info.shape != (n, 4) or not np.issubdtype(info.dtype, np.integer):
        raise ValueError(
            f"{paths['info']}: expected an integer matrix of shape [{n}, 4], got {info.dtype} {list(info.shape)}"
        )
    labels = cat.astype(np.int64)
    if n and (labels.min() < 0 or labels.max() >= len(SMALLNORB_LABELS)):
        raise ValueError(
            f"{paths['cat']}: expected categories in 0..4, found {sorted(set(labels.tolist()))[:10]}"
        )
    meta = np.concatenate([labels[:, None], info.astype(np.int64)], axis=1)  # [N, 5]
    return images, labels, meta


class SmallNORBDataset(Dataset):
    """Stereo pairs with labels and metadata; items ``{"image", "label", "meta", "index"}`` (see module doc).

    Args:
        images: uint8 ``[N, 2, H, W]``; labels: int ``[N]``; meta: int ``[N, 5]``.
        indices: rows to expose (default all).
        augment: random crops of size ``crop`` from the image padded by ``pad`` pixels (edge replication);
            without it, a centre crop of size ``crop`` (the whole image when ``crop == H == W``).
    """

    def __init__(
        self,
        images: np.ndarray,
        labels: np.ndarray,
        meta: np.ndarray,
        indices: Sequence[int] | None = None,
        augment: bool = False,
        pad: int = 16,
        crop: int = IMAGE_SIZE,
    ) -> None:
        if not (len(images) == len(labels) == len(meta)):
            raise ValueError(
                f"images ({len(images)}), labels ({len(labels)}) and meta ({len(meta)}) differ in length"
            )
        height, width = images.shape[-2:]
        if not 1 <= crop <= min(height, width) + (2 * pad if augment else 0):
            raise ValueError(
                f"crop: expected 1..{min(height, width) + (2 * pad if augment else 0)}, got {crop}"
            )
        self.images, self.labels, self.meta = images, labels, meta
        self.indices = np.arange(len(images)) if indices is None else np.asarray(indices, dtype=np.int64)
        self.augment, self.pad, self.crop = bool(augment), int(pad), int(crop)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, position: int) -> dict[str, Any]:
        index = int(self.indices[position])
        image = torch.from_numpy(np.array(self.images[index], dtype=np.float32)) / 255.0  # [2, H, W]
        if self.augment:
            if self.pad:
                image = F.pad(image[None], (self.pad,) * 4, mode="replicate")[0]  # [2, H + 2·pad, W + 2·pad]
            top = int(torch.randint(image.shape[-2] - self.crop + 1, ()))
            left = int(torch.randint(image.shape[-1] - self.crop + 1, ()))
        else:
            top = (image.shape[-2] - self.crop) // 2
            left = (image.shape[-1] - self.crop) // 2
        image = image[:, top : top + self.crop, left : left + self.crop]
        return {
            "image": image.contiguous(),
            "label": int(self.labels[index]),
            "meta": torch.as_tensor(np.asarray(self.meta[index]), dtype=torch.long),
            "index": index,
        }


def collate_smallnorb(samples: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
    """Stack items of :class:`SmallNORBDataset` into a batch dict (see module doc)."""
    if not samples:
        raise ValueError("cannot collate an empty list of samples")
    return {
        "image": torch.stack([s["image"] for s in samples]),  # [B, 2, H, W]
        "label": torch.tensor([s["label"] for s in samples], dtype=torch.long),  # [B]
        "meta": torch.stack([s["meta"] for s in samples]),  # [B, 5]
        "index": torch.tensor([s["index"] for s in samples], dtype=torch.long),  # [B]
    }


class SmallNORBDataModule(ZooDataModule):
    """smallNORB stereo pairs for the 2019 capsule classifier (SPEC §6).

    Training batches are random 96×96 crops of the images padded by 16 pixels (edge replication); evaluation
    batches are the images as they are. Validation uses the test set (as the paper reports test accuracy)
    unless ``val_fraction > 0``, which holds out a seeded, class-stratified fraction of the training set.

    Args:
        data_dir: folder with the six official files (plain or ``.gz``); see :func:`expected_files`.
        **loader: the loader arguments (batch_size, num_workers, pin_memory, persistent_workers,
            steps_per_epoch, seed, eval_batch_size) of :class:`~heinsen_zoo.data.base.ZooDataModule` (the paper:
            batch 20).
        pad: edge padding of training images before the random crop.
        crop: side of the crops (96: same size as the images).
        val_fraction: fraction of the training set held out for validation (0: validate on the test set).
    """

    collate_fn = staticmethod(collate_smallnorb)

    default_batch_size = 20

    def __init__(
        self,
        data_dir: str,
        pad: int = 16,
        crop: int = IMAGE_SIZE,
        val_fraction: float = 0.0,
        **loader: Any,
    ) -> None:
        super().__init__(**loader)
        if isinstance(pad, bool) or not isinstance(pad, int) or pad < 0:
            raise ValueError(f"pad: expected an int >= 0, got {pad!r}")
        if isinstance(crop, bool) or not isinstance(crop, int) or not 1 <= crop <= IMAGE_SIZE:
            raise ValueError(f"crop: expected an int in 1..{IMAGE_SIZE}, got {crop!r}")
        if not 0.0 <= float(val_fraction) < 1.0:
            raise ValueError(f"val_fraction: expected a float in [0, 1), got {val_fraction!r}")
        self.data_dir = Path(data_dir)
        self.pad, self.crop, self.val_fraction = pad, crop, float(val_fraction)
        self.save_hyperparameters()
        self._arrays: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}

    @property
    def labels(self) -> list[str]:
        return list(SMALLNORB_LABELS)

    def arrays(self, split: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(images, labels, meta)`` of the official ``split`` ("train" or "test"), read once and cached."""
        if split not in self._arrays:
            self._arrays[split] = load_smallnorb_split(self.data_dir, split)
        return self._arrays[split]

    def _train_val_indices(self) -> tuple[list[int], list[int]]:
        _, labels, _ = self.arrays("train")
        keys = [f"{i:06d}" for i in range(len(labels))]
        return stratified_split(keys, labels.tolist(), self.val_fraction, self.seed)

    def _build_split(self, split: str) -> Dataset:
        if split == "train":
            indices = self._train_val_indices()[0] if self.val_fraction > 0 else None
            return SmallNORBDataset(
                *self.arrays("train"), indices, augment=True, pad=self.pad, crop=self.crop
            )
        if split == "val" and self.val_fraction > 0:
            indices = self._train_val_indices()[1]
            return SmallNORBDataset(*self.arrays("train"), indices, augment=False, crop=self.crop)
        return SmallNORBDataset(*self.arrays("test"), augment=False, crop=self.crop)  # val, test, predict


# ---------------------------------------------------------------------------------------------------------------
# Tiny synthetic files in the official format (tests, SMOKE runs).


def _synthetic_metadata(n: int, split: str) -> np.ndarray:
    """``[n, 5]`` metadata enumerating views in a fixed order: category fastest (balanced classes), then
    azimuth, elevation, lighting and instance; so the first 5·k samples hold, per category, the azimuths of
    k consecutive views at elevation 0, lighting 0 (trajectories for the pose plot)."""
    k = np.arange(n)
    j = k // 5
    instances = np.asarray(INSTANCES[split])
    return np.stack(
        [k % 5, instances[(j // 972) % 5], (j // 18) % 9, 2 * (j % 18), (j // 162) % 6], axis=1
    ).astype(np.int64)


def _render(meta: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """uint8 ``[n, 2, 96, 96]`` stereo pairs of a dark k-lobed blob (k = category + 2) on a light background,
    rotated by the azimuth, squashed by the elevation, shaded by the lighting, with a 3-pixel disparity."""
    coords = np.arange(IMAGE_SIZE, dtype=np.float32) - (IMAGE_SIZE - 1) / 2
    out = np.empty((len(meta), 2, IMAGE_SIZE, IMAGE_SIZE), dtype=np.uint8)
    for start in range(0, len(meta), 256):
        m = meta[start : start + 256].astype(np.float32)
        category, instance, elevation, azimuth, lighting = (m[:, c, None, None, None] for c in range(5))
        squash = 0.55 + 0.45 * elevation / 8  # [b, 1, 1, 1]
        shift = np.array([-1.5, 1.5], dtype=np.float32)[None, :, None, None]  # stereo disparity
        dy = coords[None, None, :, None] / squash  # [b, 1, 96, 1]
        dx = coords[None, None, None, :] - shift  # [1, 2, 1, 96]
        radius = np.sqrt(dy**2 + dx**2)  # [b, 2, 96, 96]
        theta = np.arctan2(dy, dx) - np.deg2rad(10 * azimuth)
        edge = (20 + instance) * (1 + 0.35 * np.cos((category + 2) * theta))
        inside = 1 / (1 + np.exp(np.clip(radius - edge, -30, 30)))  # soft edge
        background = 0.65 + 0.03 * lighting
        shade = 0.15 + 0.04 * lighting + 0.1 * np.cos(theta)  # a lit side
        image = background * (1 - inside) + shade * inside
        image = image + rng.normal(0.0, 0.02, size=image.shape)
        out[start : start + 256] = np.clip(np.rint(image * 255), 0, 255).astype(np.uint8)
    return out


def write_tiny_smallnorb(
    directory: str | os.PathLike,
    n_train: int = 40,
    n_test: int = 40,
    seed: int = 0,
    compress: bool = False,
) -> dict[str, Path]:
    """Write synthetic smallNORB files in the official format and names (``.gz`` when ``compress``).

    Images are rendered blobs whose shape depends on the category and whose look depends on azimuth,
    elevation and lighting (learnable, not the real dataset). Metadata enumerate views in a fixed order (see
    ``_synthetic_metadata``); ``seed`` drives the pixel noise. Returns ``{file name: path}``.

    Example:
        >>> import tempfile
        >>> paths = write_tiny_smallnorb(tempfile.mkdtemp(), n_train=5, n_test=5)
        >>> sorted(paths)[0]
        'smallnorb-5x01235x9x18x6x2x96x96-testing-cat.mat'
    """
    for name, value in (("n_train", n_train), ("n_test", n_test)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"{name}: expected an int >= 0, got {value!r}")
    directory = Path(directory)
    rng = np.random.default_rng(seed)
    paths: dict[str, Path] = {}
    for split, n in (("train", n_train), ("test", n_test)):
        meta = _synthetic_metadata(n, split)
        arrays = {
            "dat": _render(meta, rng),
            "cat": meta[:, 0].astype(np.int32),
            "info": meta[:, 1:].astype(np.int32),
        }
        for kind, name in zip(KINDS, expected_files(split), strict=True):
            path = directory / (f"{name}.gz" if compress else name)
            write_norb_matrix(path, arrays[kind])
            paths[name] = path
    return paths
