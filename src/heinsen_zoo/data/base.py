"""Shared plumbing of the zoo's DataModules: loaders, fixed steps per epoch, DDP handling, splits.

Every DataModule of this package derives from :class:`ZooDataModule`, which owns

* the dataloader settings (``batch_size``, ``num_workers``, ``pin_memory``, ``persistent_workers``);
* the training sampler: always a seeded :class:`~heinsen_zoo.data.sampling.CyclingRandomSampler`, with
  ``steps_per_epoch * batch_size`` samples per epoch when ``steps_per_epoch`` is given (the paper's regime),
  one shuffled pass per epoch otherwise;
* DDP: ``batch_size`` is the *effective (global)* batch. Under a distributed Trainer each rank loads
  ``per_device_batch(batch_size, world_size)`` examples per step (the one place the batch is divided) from a :class:`DistributedCyclingSampler`, so steps per
  epoch, effective batch and data order do not change with the number of devices. That sampler is a
  ``DistributedSampler`` subclass, so Lightning's ``use_distributed_sampler`` (default True) leaves it alone;
  no Trainer setting is needed;
* evaluation loaders (validation, test, predict): sequential, ``eval_batch_size`` (default ``batch_size``);
  under DDP each rank evaluates its own :class:`~heinsen_zoo.data.sampling.EvalShardSampler` shard, so every
  example is scored exactly once (no padding duplicates).

Subclasses implement ``labels`` and ``_build_split(split)`` for ``split in ("train", "val", "test",
"predict")``, and may override ``split_source`` to make a split reuse another one's dataset object (e.g. CIFAR
validates on its test split: ``split_source("val") == "test"``), so that both share one dataset (and one
hidden-state cache), and ``preprocessing`` (a JSON-able description recorded in exported models).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import inspect
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

from .collate import collate_text
from .sampling import CyclingRandomSampler, DistributedCyclingSampler, EvalShardSampler, per_device_batch

__all__ = ["TextDataset", "ZooDataModule", "missing_data_error", "stratified_split"]

SPLITS = ("train", "val", "test", "predict")


def missing_data_error(argument: str, path: Path | str | None, expected: str) -> FileNotFoundError:
    """A FileNotFoundError naming the argument, the path looked at and the expected layout.

    Example:
        >>> str(missing_data_error("data_dir", "/nowhere", "/nowhere/train/<class>/*.JPEG"))[:40]
        "data_dir: no data at '/nowhere'; expecte"
    """
    return FileNotFoundError(
        f"{argument}: no data at {str(path)!r}; expected {expected}. The DataModule downloads nothing: "
        f"provide the files locally and pass their directory as {argument} (online, `make reproduce-<row>` and "
        "`python -m heinsen_zoo.data.fetch ROW --data-dir DATA_DIR` fetch the public datasets, pinned and verified)."
    )


def _sort_key(seed: int, key: str) -> str:
    return hashlib.sha256(f"{seed}:{key}".encode()).hexdigest()


def seeded_order(keys: Sequence[str], seed: int) -> list[int]:
    """Positions of ``keys`` in a seeded pseudo-random order that depends only on the key strings and seed.

    Independent of the input order, the platform and library versions (sha256 of ``f"{seed}:{key}"``).

    Example:
        >>> keys = ["a", "b", "c"]
        >>> [keys[i] for i in seeded_order(keys, 0)] == [keys[::-1][i] for i in seeded_order(keys[::-1], 0)]
        True
    """
    if len(set(keys)) != len(keys):
        raise ValueError("seeded_order needs unique keys")
    return sorted(range(len(keys)), key=lambda position: _sort_key(seed, keys[position]))


def stratified_split(
    keys: Sequence[str], labels: Sequence[int], val_fraction: float, seed: int
) -> tuple[list[int], list[int]]:
    """Deterministic stratified split: positions of the (train, val) examples, each list sorted by key.

    Per class, the examples are ordered by :func:`seeded_order` and the first ``round(val_fraction * n_c)``
    go to validation; so every class's validation share is within 0.5 example of ``val_fraction``, and the
    split depends only on (key strings, labels, seed), never on file-system order.

    Example:
        >>> train, val = stratified_split(["a", "b", "c", "d"], [0, 0, 1, 1], 0.5, seed=0)
        >>> len(train), len(val), sorted(train + val)
        (2, 2, [0, 1, 2, 3])
    """
    if len(keys) != len(labels):
        raise ValueError(f"keys ({len(keys)}) and labels ({len(labels)}) must have the same length")
    if not 0.0 <= float(val_fraction) < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction!r}")
    by_class: dict[int, list[int]] = {}
    for position, label in enumerate(labels):
        by_class.setdefault(int(label), []).append(position)
    train: list[int] = []
    val: list[int] = []
    for label in sorted(by_class):
        members = by_class[label]
        ordered = [members[i] for i in seeded_order([keys[m] for m in members], seed)]
        n_val = int(round(val_fraction * len(ordered)))
        val.extend(ordered[:n_val])
        train.extend(ordered[n_val:])
    return sorted(train, key=lambda p: keys[p]), sorted(val, key=lambda p: keys[p])


def check_labels(name: str, labels: Sequence[int], num_classes: int) -> None:
    """Raise ValueError when a label is outside ``[0, num_classes)``."""
    bad = [label for label in labels if not 0 <= int(label) < num_classes]
    if bad:
        raise ValueError(f"{name}: labels must be in [0, {num_classes}), found {sorted(set(bad))[:10]}")


class TextDataset(Dataset):
    """In-memory texts with integer labels; items are ``{"text": str, "label": int, "index": int}``.

    Args:
        texts: the texts.
        labels: one class index per text.
        ids: optional stable identifiers (e.g. file names), one per text.

    Example:
        >>> TextDataset(["good", "bad"], [1, 0])[1]
        {'text': 'bad', 'label': 0, 'index': 1}
    """

    def __init__(self, texts: Sequence[str], labels: Sequence[int], ids: Sequence[str] | None = None) -> None:
        if len(texts) != len(labels):
            raise ValueError(f"texts ({len(texts)}) and labels ({len(labels)}) must have the same length")
        if ids is not None and len(ids) != len(texts):
            raise ValueError(f"ids ({len(ids)}) and texts ({len(texts)}) must have the same length")
        self.texts = list(texts)
        self.labels = [int(label) for label in labels]
        self.ids = list(ids) if ids is not None else None

    def __len__(self) -> int:
        return len(self.texts)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {"text": self.texts[index], "label": self.labels[index], "index": int(index)}


def _check_nonneg_int(name: str, value: object, positive: bool = False) -> int:
    lowest = 1 if positive else 0
    if isinstance(value, bool) or not isinstance(value, int) or value < lowest:
        kind = "a positive" if positive else "a non-negative"
        raise ValueError(f"{name} must be {kind} int, got {value!r} ({type(value).__name__})")
    return value


def split_source_with_carved_val(split: str, val_fraction: float) -> str:
    """The split whose dataset ``split`` uses when the paper validates on its test split: val -> test unless a
    validation split is carved from train (``val_fraction > 0``); predict -> test (shared dataset objects).

    >>> split_source_with_carved_val("val", 0.0), split_source_with_carved_val("val", 0.1)
    ('test', 'val')
    """
    if split == "predict" or (split == "val" and val_fraction == 0):
        return "test"
    return split


def _names_class(class_path: object, cls: type) -> bool:
    """Whether ``class_path`` ("module.Name") resolves to ``cls``."""
    if not isinstance(class_path, str) or "." not in class_path:
        return False
    module, _, name = class_path.rpartition(".")
    try:
        return getattr(importlib.import_module(module), name, None) is cls
    except ImportError:
        return False


@contextlib.contextmanager
def _own_hyperparameters(cls: type) -> Iterator[None]:
    """Hide LightningCLI's config of the class being instantiated from ``save_hyperparameters`` of ``cls``
    when that config names another class (see ZooDataModule.save_hyperparameters)."""
    try:
        from lightning.pytorch.core.mixins.hparams_mixin import _given_hyperparameters
    except ImportError:  # another Lightning: nothing to hide
        yield
        return
    given = _given_hyperparameters.get()
    if given is None or _names_class(given.get("_class_path"), cls):
        yield
        return
    token = _given_hyperparameters.set(None)
    try:
        yield
    finally:
        _given_hyperparameters.reset(token)


class ZooDataModule(L.LightningDataModule):
    """Base DataModule: the loader arguments (defined here once), loaders, fixed steps per epoch, DDP-aware
    training sampler.

    A subclass takes its own data arguments and forwards the loader arguments: ``def __init__(self, data_dir:
    str, ..., **loader: Any)`` then ``super().__init__(**loader)`` (LightningCLI and ``--help`` still list them,
    as ``--data.init_args.batch_size`` etc.); its paper batch is the class attribute ``default_batch_size``.
    ``save_hyperparameters()`` records every loader argument, defaults included.

    Args:
        batch_size: effective (global) training batch size (None: the class's ``default_batch_size``); under
            DDP each rank loads ``batch_size // world_size`` (must divide evenly).
        num_workers: DataLoader worker processes (0 = load in the main process).
        pin_memory: DataLoader ``pin_memory``.
        persistent_workers: keep workers alive between epochs (only used when ``num_workers > 0``).
        steps_per_epoch: training batches per epoch (the paper's "epochs x steps"); None = one pass.
        seed: seed of the training order (and of splits, in subclasses that split).
        eval_batch_size: batch size of validation/test/predict loaders (default ``batch_size``).
    """

    collate_fn: Callable[[Sequence[dict[str, Any]]], dict[str, Any]] = staticmethod(collate_text)
    default_batch_size: int = 32
    # The loader arguments that never change which examples a split holds or their content (``seed`` can:
    # subclasses that split draw their splits from it). Hidden-state caches leave them out of their key.
    DATA_NEUTRAL_ARGS: tuple[str, ...] = (
        "batch_size", "num_workers", "pin_memory", "persistent_workers", "steps_per_epoch", "eval_batch_size",
    )  # fmt: skip
    # The arguments that only deal a corpus's examples to splits (see corpus); a corpus-wide hidden-state cache
    # leaves them out of its key and holds the sha256 of the corpus's ids instead.
    SPLIT_ARGS: tuple[str, ...] = ()

    def __init__(
        self,
        batch_size: int | None = None,
        num_workers: int = 0,
        pin_memory: bool = False,
        persistent_workers: bool = False,
        steps_per_epoch: int | None = None,
        seed: int = 0,
        eval_batch_size: int | None = None,
    ) -> None:
        super().__init__()
        if batch_size is None:
            batch_size = type(self).default_batch_size
        self.batch_size = _check_nonneg_int("batch_size", batch_size, positive=True)
        self.num_workers = _check_nonneg_int("num_workers", num_workers)
        self.pin_memory = bool(pin_memory)
        self.persistent_workers = bool(persistent_workers)
        self.steps_per_epoch = (
            None if steps_per_epoch is None else _check_nonneg_int("steps_per_epoch", steps_per_epoch, True)
        )
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ValueError(f"seed must be an int, got {seed!r}")
        self.seed = seed
        self.eval_batch_size = (
            self.batch_size
            if eval_batch_size is None
            else _check_nonneg_int("eval_batch_size", eval_batch_size, positive=True)
        )
        self._datasets: dict[str, Dataset] = {}

    @property
    def loader_args(self) -> dict[str, Any]:
        """The loader arguments as this DataModule uses them (defaults resolved)."""
        return {
            "batch_size": self.batch_size,
            "num_workers": self.num_workers,
            "pin_memory": self.pin_memory,
            "persistent_workers": self.persistent_workers,
            "steps_per_epoch": self.steps_per_epoch,
            "seed": self.seed,
            "eval_batch_size": self.eval_batch_size,
        }

    def save_hyperparameters(self, *args: Any, **kwargs: Any) -> None:
        """Lightning's, called from the subclass's ``__init__``, plus every loader argument (defaults included,
        which ``**loader`` forwarding would leave out).

        A DataModule built inside another one by LightningCLI (``CachedHiddenStatesDataModule(datamodule=...)``)
        would otherwise take the *outer* class's config as its hyperparameters (Lightning hands the config
        being instantiated to every ``save_hyperparameters`` called meanwhile): its progress bar or cache folder
        would then look like data, and a hidden-state cache would be recomputed for them. Here a config naming
        another class is set aside and the caller's own arguments are saved.
        """
        kwargs.setdefault(
            "frame", inspect.currentframe().f_back
        )  # the caller's arguments, as Lightning's own
        with _own_hyperparameters(type(self)):
            super().save_hyperparameters(*args, **kwargs)
        for key, value in self.loader_args.items():
            self.hparams.setdefault(key, value)

    # ---- to implement -------------------------------------------------------------------------------
    @property
    def labels(self) -> list[str]:
        """Class names, index = class id."""
        raise NotImplementedError

    def _build_split(self, split: str) -> Dataset:
        raise NotImplementedError

    # ---- shared -------------------------------------------------------------------------------------
    @property
    def num_classes(self) -> int:
        """Number of classes (``len(labels)``)."""
        return len(self.labels)

    @property
    def preprocessing(self) -> dict[str, Any] | None:
        """JSON-able description of the input preprocessing (recorded in exported configs); None if none."""
        return None

    def corpus(self) -> Dataset | None:
        """Every example the splits are dealt from, each once, as a dataset with stable ``ids`` (those of the
        splits' datasets are among them), or None (the default) when the splits are not views of one corpus.

        A hidden-state cache (:class:`~heinsen_zoo.features.CachedHiddenStatesDataModule`) runs the backbone over
        the corpus once and serves every split, under any split seed, from it.
        """
        return None

    def split_source(self, split: str) -> str:
        """The split whose dataset ``split`` uses (default: predict -> test, others themselves)."""
        return "test" if split == "predict" else split

    def dataset(self, split: str) -> Dataset:
        """The dataset of ``split`` ("train", "val", "test" or "predict"), built on first use and cached.

        Splits with the same :meth:`split_source` return the same object.
        """
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        source = self.split_source(split)
        if source not in SPLITS:
            raise ValueError(
                f"{type(self).__name__}.split_source({split!r}) returned {source!r}, not a split"
            )
        if source not in self._datasets:
            self._datasets[source] = self._build_split(source)
        return self._datasets[source]

    @property
    def train_dataset(self) -> Dataset:
        return self.dataset("train")

    @property
    def val_dataset(self) -> Dataset:
        return self.dataset("val")

    @property
    def test_dataset(self) -> Dataset:
        return self.dataset("test")

    @property
    def predict_dataset(self) -> Dataset:
        return self.dataset("predict")

    def setup(self, stage: str | None = None) -> None:
        """Build (and validate) the datasets the stage needs; raises FileNotFoundError on missing data."""
        needed = {
            "fit": ("train", "val"),
            "validate": ("val",),
            "test": ("test",),
            "predict": ("predict",),
            None: ("train", "val", "test"),
        }
        if stage not in needed:
            raise ValueError(f"stage must be one of fit/validate/test/predict/None, got {stage!r}")
        for split in needed[stage]:
            self.dataset(split)

    def _world(self) -> tuple[int, int]:
        """(rank, world_size) from the attached Trainer, else from torch.distributed, else (0, 1)."""
        trainer = getattr(self, "trainer", None)
        if trainer is not None:
            return int(trainer.global_rank), int(trainer.world_size)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            return torch.distributed.get_rank(), torch.distributed.get_world_size()
        return 0, 1

    def train_sampler(
        self, rank: int = 0, world_size: int = 1
    ) -> CyclingRandomSampler | DistributedCyclingSampler:
        """The training sampler for this rank: ``steps_per_epoch * batch_size`` global samples per epoch."""
        dataset_len = len(self.train_dataset)
        if dataset_len == 0:
            raise ValueError(f"{type(self).__name__}: the training split is empty")
        num_samples = dataset_len if self.steps_per_epoch is None else self.steps_per_epoch * self.batch_size
        if world_size == 1:
            return CyclingRandomSampler(dataset_len, num_samples, seed=self.seed)
        return DistributedCyclingSampler(
            dataset_len, num_samples, seed=self.seed, rank=rank, world_size=world_size
        )

    def _loader(self, dataset: Dataset, batch_size: int, sampler: Any = None) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=batch_size,
            sampler=sampler,
            shuffle=False,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.persistent_workers and self.num_workers > 0,
            collate_fn=self.collate_fn,
            drop_last=False,
        )

    def train_dataloader(self) -> DataLoader:
        rank, world_size = self._world()
        per_device = per_device_batch(self.batch_size, world_size)
        return self._loader(self.train_dataset, per_device, self.train_sampler(rank, world_size))

    def _eval_loader(self, dataset: Dataset) -> DataLoader:
        rank, world_size = self._world()
        sampler = (
            None if world_size == 1 else EvalShardSampler(len(dataset), rank=rank, world_size=world_size)
        )
        return self._loader(dataset, self.eval_batch_size, sampler)

    def val_dataloader(self) -> DataLoader:
        return self._eval_loader(self.val_dataset)

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader(self.test_dataset)

    def predict_dataloader(self) -> DataLoader:
        return self._eval_loader(self.predict_dataset)
