"""Writers of TINY datasets in the REAL on-disk formats, for tests and ``make reproduce-* SMOKE=1``.

Each writer produces files the corresponding DataModule reads exactly as it reads the real dataset, and
returns the path to pass as that DataModule's ``data_dir``. The data carry a learnable signal so that a
smoke training can reach above-chance accuracy:

* images: every class has its own colour (hue ``label / n_classes``), plus per-pixel noise;
* IMDB reviews: class-specific sentiment words among shared filler;
* SST trees: each sentence's sentiment comes from one class-specific adjective, labelled at every node.

Example:
    >>> import tempfile
    >>> from heinsen_zoo.data import CIFAR10DataModule
    >>> root = write_cifar(tempfile.mkdtemp(), "cifar10", n_train=30, n_test=10, seed=0)
    >>> len(CIFAR10DataModule(root, image_size=32).train_dataset)
    30
"""

from __future__ import annotations

import colorsys
import io
import pickle
import tarfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from heinsen_zoo.labels import CIFAR10_LABELS

__all__ = [
    "CIFAR10_LABEL_NAMES",
    "class_image",
    "write_cifar",
    "write_cifar_hf",
    "write_imagenet_folder",
    "write_imdb",
    "write_sst_trees",
]

CIFAR10_LABEL_NAMES = CIFAR10_LABELS  # the official names, as in batches.meta
CIFAR100_FINE_NAMES = tuple(f"fine_{i:02d}" for i in range(100))
CIFAR100_COARSE_NAMES = tuple(f"coarse_{i:02d}" for i in range(20))


def _check_count(name: str, value: object, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return value


def class_image(rng: np.random.Generator, label: int, n_classes: int, size: int | tuple[int, int]) -> np.ndarray:
    """A uint8 image [H, W, 3] whose colour identifies the class (hue = label / n_classes), with noise.

    Example:
        >>> class_image(np.random.default_rng(0), 1, 4, 8).shape
        (8, 8, 3)
    """
    height, width = (size, size) if isinstance(size, int) else size
    red, green, blue = colorsys.hsv_to_rgb(label / n_classes, 0.85, 0.9)
    base = np.array([red, green, blue]) * 255.0  # [3]
    noise = rng.normal(0.0, 20.0, size=(height, width, 3))
    return np.clip(base + noise, 0, 255).astype(np.uint8)


@contextmanager
def _quiet_datasets() -> Iterator[Any]:
    """The ``datasets`` module with its progress bars off for the duration (restored afterwards)."""
    import datasets

    was_disabled = datasets.utils.are_progress_bars_disabled()
    datasets.disable_progress_bars()
    try:
        yield datasets
    finally:
        if not was_disabled:
            datasets.enable_progress_bars()


def _balanced_labels(rng: np.random.Generator, n: int, n_classes: int) -> list[int]:
    labels = np.arange(n) % n_classes
    return [int(v) for v in rng.permutation(labels)]


# ---- ImageNet folders --------------------------------------------------------------------------------


def write_imagenet_folder(
    root: str | Path,
    n_classes: int = 3,
    n_per_class: int = 4,
    image_size: int = 48,
    seed: int = 0,
    n_val_per_class: int | None = None,
    image_format: str = "JPEG",
) -> Path:
    """Write ``root/train/<wnid>/*.JPEG`` and ``root/val/<wnid>/*.JPEG`` (ImageFolder layout); returns root.

    Args:
        n_classes: class folders, named like ImageNet wnids (``n00000000``, ``n00000001``...).
        n_per_class: training images per class; ``n_val_per_class`` validation images (default the same).
        image_size: side of the square images (the real ones vary; the transforms resize anyway).
        image_format: "JPEG" (``.JPEG`` files as in ImageNet) or "PNG".
    """
    _check_count("n_classes", n_classes)
    _check_count("n_per_class", n_per_class)
    _check_count("image_size", image_size)
    if image_format not in ("JPEG", "PNG"):
        raise ValueError(f"image_format must be 'JPEG' or 'PNG', got {image_format!r}")
    n_val = n_per_class if n_val_per_class is None else _check_count("n_val_per_class", n_val_per_class)
    root = Path(root)
    rng = np.random.default_rng(seed)
    suffix = ".JPEG" if image_format == "JPEG" else ".png"
    for split, count in (("train", n_per_class), ("val", n_val)):
        for label in range(n_classes):
            wnid = f"n{label:08d}"
            folder = root / split / wnid
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                name = f"{wnid}_{i}" if split == "train" else f"ILSVRC2012_val_{label * count + i + 1:08d}"
                image = Image.fromarray(class_image(rng, label, n_classes, image_size))
                image.save(folder / f"{name}{suffix}", format=image_format)
    return root


# ---- CIFAR python pickles ----------------------------------------------------------------------------


def _cifar_arrays(rng: np.random.Generator, n: int, n_classes: int) -> tuple[np.ndarray, list[int]]:
    labels = _balanced_labels(rng, n, n_classes)
    images = np.stack([class_image(rng, label, n_classes, 32) for label in labels])  # [n, 32, 32, 3]
    data = images.transpose(0, 3, 1, 2).reshape(n, 3072)  # [n, 3072]: the R plane, then G, then B (row-major)
    return np.ascontiguousarray(data), labels


def _dump(value: object) -> bytes:
    # Protocol 4: bytes keys/values stay bytes and numpy arrays use numpy's _reconstruct, like the official
    # (Python 2) files read with encoding="bytes".
    return pickle.dumps(value, protocol=4)


def _cifar_files(kind: str, n_train: int, n_test: int, seed: int) -> tuple[str, dict[str, bytes]]:
    rng = np.random.default_rng(seed)
    files: dict[str, bytes] = {}
    if kind == "cifar10":
        data, labels = _cifar_arrays(rng, n_train, 10)
        parts = np.array_split(np.arange(n_train), 5)
        for number, rows in enumerate(parts, 1):
            files[f"data_batch_{number}"] = _dump({
                b"batch_label": f"training batch {number} of 5".encode(),
                b"labels": [labels[r] for r in rows],
                b"data": data[rows],
                b"filenames": [f"synthetic_{r:05d}.png".encode() for r in rows],
            })
        test_data, test_labels = _cifar_arrays(rng, n_test, 10)
        files["test_batch"] = _dump({
            b"batch_label": b"testing batch 1 of 1",
            b"labels": test_labels,
            b"data": test_data,
            b"filenames": [f"synthetic_test_{r:05d}.png".encode() for r in range(n_test)],
        })
        files["batches.meta"] = _dump({
            b"num_cases_per_batch": max(len(p) for p in parts),
            b"label_names": [name.encode() for name in CIFAR10_LABEL_NAMES],
            b"num_vis": 3072,
        })
        return "cifar-10-batches-py", files
    for split, n, batch_label in (("train", n_train, b"training batch 1 of 1"), ("test", n_test, b"testing batch 1 of 1")):
        data, fine = _cifar_arrays(rng, n, 100)
        files[split] = _dump({
            b"filenames": [f"synthetic_{split}_{r:05d}.png".encode() for r in range(n)],
            b"batch_label": batch_label,
            b"fine_labels": fine,
            b"coarse_labels": [label // 5 for label in fine],
            b"data": data,
        })
    files["meta"] = _dump({
        b"fine_label_names": [name.encode() for name in CIFAR100_FINE_NAMES],
        b"coarse_label_names": [name.encode() for name in CIFAR100_COARSE_NAMES],
    })
    return "cifar-100-python", files


def write_cifar(
    root: str | Path,
    kind: str = "cifar10",
    n_train: int = 50,
    n_test: int = 20,
    seed: int = 0,
    archive: bool = False,
) -> Path:
    """Write CIFAR-10/100 in the official "python version" format; returns the path to use as data_dir.

    Files and pickled dict keys are those of the official release: CIFAR-10 ``cifar-10-batches-py/``
    with ``data_batch_1..5`` and ``test_batch`` (``b"data"`` uint8 [N, 3072], ``b"labels"``,
    ``b"filenames"``, ``b"batch_label"``) and ``batches.meta`` (``b"label_names"``...); CIFAR-100
    ``cifar-100-python/`` with ``train``, ``test`` (``b"fine_labels"``, ``b"coarse_labels"``...) and ``meta``
    (``b"fine_label_names"``, ``b"coarse_label_names"``). Synthetic CIFAR-100 names are ``fine_00``...

    Args:
        kind: "cifar10" or "cifar100".
        n_train, n_test: numbers of images (labels balanced over the classes, shuffled).
        archive: False: write the extracted folder and return ``root``; True: write only the archive
            ``root/cifar-10-python.tar.gz`` (``cifar-100-python.tar.gz``) and return the archive's path.
    """
    if kind not in ("cifar10", "cifar100"):
        raise ValueError(f"kind must be 'cifar10' or 'cifar100', got {kind!r}")
    _check_count("n_train", n_train, 5 if kind == "cifar10" else 1)
    _check_count("n_test", n_test)
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    folder, files = _cifar_files(kind, n_train, n_test, seed)
    if not archive:
        (root / folder).mkdir(exist_ok=True)
        for name, content in files.items():
            (root / folder / name).write_bytes(content)
        return root
    archive_path = root / ("cifar-10-python.tar.gz" if kind == "cifar10" else "cifar-100-python.tar.gz")
    with tarfile.open(archive_path, "w:gz") as tar:
        directory = tarfile.TarInfo(folder)
        directory.type = tarfile.DIRTYPE
        directory.mode = 0o755
        tar.addfile(directory)
        for name, content in files.items():
            info = tarfile.TarInfo(f"{folder}/{name}")
            info.size = len(content)
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(content))
    return archive_path


def write_cifar_hf(root: str | Path, kind: str = "cifar10", n_train: int = 50, n_test: int = 20, seed: int = 0) -> Path:
    """Write CIFAR as a local Hugging Face DatasetDict (``save_to_disk``) with the hub's column names.

    CIFAR-10: ``img`` (Image), ``label`` (ClassLabel); CIFAR-100: ``img``, ``fine_label``, ``coarse_label``.
    Returns the dataset folder (``root/<kind>``).
    """
    import datasets

    if kind not in ("cifar10", "cifar100"):
        raise ValueError(f"kind must be 'cifar10' or 'cifar100', got {kind!r}")
    rng = np.random.default_rng(seed)
    n_classes = 10 if kind == "cifar10" else 100
    if kind == "cifar10":
        features = datasets.Features({
            "img": datasets.Image(), "label": datasets.ClassLabel(names=list(CIFAR10_LABEL_NAMES)),
        })
    else:
        features = datasets.Features({
            "img": datasets.Image(),
            "fine_label": datasets.ClassLabel(names=list(CIFAR100_FINE_NAMES)),
            "coarse_label": datasets.ClassLabel(names=list(CIFAR100_COARSE_NAMES)),
        })
    splits = {}
    for split, n in (("train", _check_count("n_train", n_train)), ("test", _check_count("n_test", n_test))):
        labels = _balanced_labels(rng, n, n_classes)
        images = [Image.fromarray(class_image(rng, label, n_classes, 32)) for label in labels]
        columns: dict[str, list] = {"img": images}
        if kind == "cifar10":
            columns["label"] = labels
        else:
            columns["fine_label"] = labels
            columns["coarse_label"] = [label // 5 for label in labels]
        splits[split] = datasets.Dataset.from_dict(columns, features=features)
    path = Path(root) / kind
    with _quiet_datasets():
        datasets.DatasetDict(splits).save_to_disk(str(path))
    return path


# ---- IMDB ---------------------------------------------------------------------------------------------

_IMDB_WORDS = {
    0: ["awful", "boring", "terrible", "waste", "worst", "dull", "disappointing", "poorly"],
    1: ["wonderful", "brilliant", "superb", "moving", "best", "delightful", "masterpiece", "excellent"],
}
_FILLER = ["the", "film", "movie", "plot", "actors", "story", "scene", "director", "was", "and", "it", "this",
           "really", "quite", "with", "a", "of", "characters", "ending", "music"]


def _review(rng: np.random.Generator, label: int) -> str:
    sentences = []
    for _ in range(int(rng.integers(2, 5))):
        words = list(rng.choice(_FILLER, size=int(rng.integers(5, 10))))
        for _ in range(2):
            words.insert(int(rng.integers(0, len(words) + 1)), str(rng.choice(_IMDB_WORDS[label])))
        sentences.append(" ".join(words).capitalize() + ".")
    return " ".join(sentences[:1]) + "<br /><br />" + " ".join(sentences[1:])


def write_imdb(root: str | Path, n_per_class: int = 4, seed: int = 0, layout: str = "aclImdb") -> Path:
    """Write IMDB-like reviews (with ``<br />`` tags) in the aclImdb or the Hugging Face layout.

    Args:
        n_per_class: reviews per class (neg, pos) in each of train and test.
        layout: "aclImdb": ``root/aclImdb/{train,test}/{neg,pos}/<id>_<rating>.txt`` plus a few
            ``train/unsup`` reviews (ignored by the DataModule); returns ``root/aclImdb``.
            "hf": a DatasetDict with train/test/unsupervised splits, columns ``text``, ``label``
            (ClassLabel neg/pos, -1 for unsupervised), saved with ``save_to_disk``; returns ``root/imdb``.
    """
    _check_count("n_per_class", n_per_class)
    if layout not in ("aclImdb", "hf"):
        raise ValueError(f"layout must be 'aclImdb' or 'hf', got {layout!r}")
    rng = np.random.default_rng(seed)
    reviews = {split: [(label, _review(rng, label)) for label in (0, 1) for _ in range(n_per_class)]
               for split in ("train", "test")}
    root = Path(root)
    if layout == "aclImdb":
        base = root / "aclImdb"
        for split, items in reviews.items():
            for number, (label, text) in enumerate(items):
                name = ("neg", "pos")[label]
                rating = int(rng.integers(1, 5)) if label == 0 else int(rng.integers(7, 11))
                folder = base / split / name
                folder.mkdir(parents=True, exist_ok=True)
                (folder / f"{number}_{rating}.txt").write_text(text, encoding="utf-8")
        unsup = base / "train" / "unsup"
        unsup.mkdir(parents=True, exist_ok=True)
        for number in range(2):
            (unsup / f"{number}_0.txt").write_text(_review(rng, number % 2), encoding="utf-8")
        (base / "imdb.vocab").write_text("\n".join(sorted(set(_FILLER))) + "\n", encoding="utf-8")
        return base
    import datasets

    features = datasets.Features({"text": datasets.Value("string"),
                                  "label": datasets.ClassLabel(names=["neg", "pos"])})
    splits = {split: datasets.Dataset.from_dict({"text": [t for _, t in items], "label": [y for y, _ in items]},
                                                features=features)
              for split, items in reviews.items()}
    splits["unsupervised"] = datasets.Dataset.from_dict(
        {"text": [_review(rng, 0)], "label": [-1]}, features=features)
    path = root / "imdb"
    with _quiet_datasets():
        datasets.DatasetDict(splits).save_to_disk(str(path))
    return path


# ---- SST PTB trees ------------------------------------------------------------------------------------

_SST_ADJECTIVES = {
    0: ["awful", "dreadful", "unwatchable", "abysmal"],
    1: ["dull", "weak", "clumsy", "tedious"],
    2: ["ordinary", "average", "familiar", "routine"],
    3: ["enjoyable", "charming", "solid", "likeable"],
    4: ["brilliant", "superb", "masterful", "wonderful"],
}
_SST_PREFIXES = [[], [], ["Frankly", ","], ["``", "Honestly", "''", ","], ["-LRB-", "Sigh", "-RRB-"]]
_SST_SUBJECTS = [["The", "film"], ["The", "movie"], ["This", "story"], ["The", "script"],
                 ["Spielberg", "'s", "latest"], ["The", "cast"]]
_SST_VERBS = [["is"], ["was"], ["feels"], ["seems"]]
_SST_SUFFIXES = [["."], ["!"], [",", "mostly", "."], ["at", "1\\/2", "hours", "."], ["and", "it", "'s", "long", "."]]


def _bracket(rng: np.random.Generator, tokens: list[str], lo: int, hi: int, key: int, label: int) -> str:
    """Random binary tree over tokens[lo:hi]; nodes covering position ``key`` get ``label``, others 2."""
    node_label = label if lo <= key < hi else 2
    if hi - lo == 1:
        return f"({node_label} {tokens[lo]})"
    split = int(rng.integers(lo + 1, hi))
    left = _bracket(rng, tokens, lo, split, key, label)
    right = _bracket(rng, tokens, split, hi, key, label)
    return f"({node_label} {left} {right})"


def _sst_line(rng: np.random.Generator, label: int) -> str:
    def pick(options: list[list[str]]) -> list[str]:
        return list(options[int(rng.integers(0, len(options)))])

    tokens = pick(_SST_PREFIXES) + pick(_SST_SUBJECTS) + pick(_SST_VERBS)
    key = len(tokens)
    tokens.append(str(rng.choice(_SST_ADJECTIVES[label])))
    tokens += pick(_SST_SUFFIXES)
    return _bracket(rng, tokens, 0, len(tokens), key, label)


def write_sst_trees(root: str | Path, n_train: int = 20, n_dev: int = 10, n_test: int = 10, seed: int = 0) -> Path:
    """Write ``root/trees/{train,dev,test}.txt``: valid PTB trees with labels 0-4 at every node; returns root.

    Each sentence's label (balanced over 0-4) is carried by one adjective; every node containing it has that
    label, every other node 2 (neutral). Tokens include PTB escapes (``-LRB-``, ``````/``''``, ``'s``,
    ``\\/``) so that detokenisation is exercised.
    """
    counts = {"train": _check_count("n_train", n_train), "dev": _check_count("n_dev", n_dev),
              "test": _check_count("n_test", n_test)}
    rng = np.random.default_rng(seed)
    folder = Path(root) / "trees"
    folder.mkdir(parents=True, exist_ok=True)
    for split, count in counts.items():
        lines = [_sst_line(rng, label) for label in _balanced_labels(rng, count, 5)]
        (folder / f"{split}.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return Path(root)
