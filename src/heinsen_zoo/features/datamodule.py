"""A DataModule serving cached hidden states of a raw DataModule's splits (the backbone runs once).

It is a :class:`~heinsen_zoo.data.base.ZooDataModule`: the loader arguments, the per-rank training loader
(``per_device_batch`` of the global ``batch_size``, the training sampler) and the unpadded DDP evaluation
shards are the base's; this module adds only what caching needs (which split to cache, where, and how to
recognise a split already cached).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.fabric.utilities.exceptions import MisconfigurationException
from torch.utils.data import DataLoader, Dataset

from heinsen_zoo.backbones import FrozenBackbone, build_backbone, check_backbone_spec
from heinsen_zoo.data.base import ZooDataModule

from .collate import collate_hidden_states
from .compute import cache_hidden_states
from .dataset import HiddenStatesDataset, _check_dtype, cache_key

__all__ = ["CachedHiddenStatesDataModule", "dataset_identity", "ids_fingerprint"]


def _plain(value: Any) -> Any:
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, os.PathLike):
        return str(value)
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return f"<{type(value).__module__}.{type(value).__qualname__}>"


def ids_fingerprint(dataset: Any) -> tuple | None:
    """Content fingerprint of a dataset exposing stable ``ids`` (e.g. a test split that is the val split)."""
    ids = getattr(dataset, "ids", None)
    if isinstance(ids, (list, tuple)) and ids:
        digest = hashlib.sha256(json.dumps(list(ids), default=str).encode()).hexdigest()
        return (type(dataset).__qualname__, len(ids), digest)
    return None


def dataset_identity(datamodule: Any, split: str, dataset: Any, leave_out: Sequence[str] = ()) -> str:
    """A string naming a raw DataModule's split: class, hyperparameters (or public plain attributes) but those in
    ``leave_out``, length, and the sha256 of the dataset's ``ids`` when it has them (so a change in how a split is
    drawn is a new cache)."""
    hparams = dict(getattr(datamodule, "hparams", {}) or {})
    if not hparams:
        hparams = {k: v for k, v in vars(datamodule).items() if not k.startswith("_")}
    # loader settings do not change the data (ZooDataModule.DATA_NEUTRAL_ARGS)
    for key in (*ZooDataModule.DATA_NEUTRAL_ARGS, *leave_out):
        hparams.pop(key, None)
    plain = {
        k: _plain(v)
        for k, v in sorted(hparams.items())
        if not isinstance(_plain(v), str) or not _plain(v).startswith("<")
    }
    length = len(dataset) if hasattr(dataset, "__len__") else None
    cls = type(datamodule)
    identity = {
        "class": f"{cls.__module__}.{cls.__qualname__}",
        "split": split,
        "hparams": plain,
        "length": length,
    }
    fingerprint = ids_fingerprint(dataset)
    if fingerprint is not None:
        identity["ids_sha256"] = fingerprint[2]
    return json.dumps(identity, sort_keys=True)


class CachedHiddenStatesDataModule(ZooDataModule):
    """Serve cached hidden states of a raw DataModule's splits (computed once with the frozen backbone).

    Args:
        datamodule: the raw DataModule (batches ``{"image" | "text", "label", "index"?}``).
        backbone_spec: the backbone spec (the CLI links it from the model's ``backbone``).
        storage: "memory" or "disk".
        cache_dir: folder of disk caches (required for "disk").
        batch_size: batch size of the cached loaders (default: the raw DataModule's ``batch_size``).
        dtype: storage dtype ("float16" default, or "float32").
        device: where the backbone runs while caching (default: "cuda" when available, else "cpu").
        progress: show progress bars.
        splits: which splits to cache (default train, val, test — those the raw DataModule provides).
        dataset_id: extra string mixed into every split's identity (e.g. a data version).
        share_corpus: when the raw DataModule has a corpus (``corpus()`` returns a dataset, e.g. BBC News), cache
            the corpus once and serve each split as a view of it, so another split seed or split fraction
            reuses the cache (default True); False caches each split on its own.
        **loader: the other loader arguments of :class:`~heinsen_zoo.data.base.ZooDataModule` (``num_workers``,
            ``pin_memory``, ``persistent_workers``, ``eval_batch_size``; ``steps_per_epoch`` and ``seed`` for the
            training sampler when the raw DataModule has none) for the cached loaders.

    Training batches use the raw DataModule's training sampler when it has one (``train_sampler(rank,
    world_size)``, e.g. fixed steps per epoch and DDP sharding), else the base's seeded shuffle. A split whose
    dataset has the same ``ids`` as an already cached split (BBC's test split is its val split) shares
    that split's cache; with a corpus, every split is a view of the corpus's cache. Augmentations
    of the raw training data are applied once, when caching. With "disk" storage the caches are computed
    in ``prepare_data`` (once per node under DDP) and opened in ``setup``.

    Example:
        >>> from heinsen_zoo.features import CachedHiddenStatesDataModule
        >>> # dm = CachedHiddenStatesDataModule(BBCNewsDataModule(), {"source": "minilm"}, storage="memory")
        >>> # trainer.fit(task, datamodule=dm)
    """

    def __init__(
        self,
        datamodule: L.LightningDataModule,
        backbone_spec: dict[str, Any] | None = None,
        storage: str = "memory",
        cache_dir: str | None = None,
        batch_size: int | None = None,
        dtype: str = "float16",
        device: str | None = None,
        progress: bool = True,
        splits: Sequence[str] = ("train", "val", "test"),
        dataset_id: str | None = None,
        share_corpus: bool = True,
        **loader: Any,
    ) -> None:
        if storage not in ("memory", "disk"):
            raise ValueError(f"storage: expected 'memory' or 'disk', got {storage!r}")
        if storage == "disk" and cache_dir is None:
            raise ValueError("cache_dir: required when storage='disk'")
        if batch_size is not None and (
            isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1
        ):
            raise ValueError(f"batch_size: expected a positive int or None, got {batch_size!r}")
        for split in splits:
            if split not in ("train", "val", "test", "predict"):
                raise ValueError(f"splits: expected names among train/val/test/predict, got {split!r}")
        # the loader arguments and loaders are the base's; batch_size is the global (effective) batch
        super().__init__(batch_size=batch_size or getattr(datamodule, "batch_size", None) or 32, **loader)
        self.datamodule = datamodule
        self.backbone_spec = dict(backbone_spec) if backbone_spec is not None else None
        self.storage = storage
        self.cache_dir = cache_dir
        self.dtype = _check_dtype(dtype)
        self.device = device
        self.progress = progress
        self.splits = tuple(splits)
        self.dataset_id = dataset_id
        if not isinstance(share_corpus, bool):
            raise ValueError(f"share_corpus: expected True or False, got {share_corpus!r}")
        self.share_corpus = share_corpus
        self._corpus: tuple[HiddenStatesDataset, dict[Any, int]] | None = None  # cache, row of each id
        self._backbone: FrozenBackbone | None = None
        self._by_fingerprint: dict[tuple, HiddenStatesDataset] = {}

    # -- passthroughs --------------------------------------------------------------------------------------
    @property
    def labels(self) -> Any:
        return getattr(self.datamodule, "labels", None)

    @property
    def preprocessing(self) -> Any:
        preprocessing = getattr(self.datamodule, "preprocessing", None)
        return preprocessing() if callable(preprocessing) else preprocessing

    @property
    def cached(self) -> dict[str, HiddenStatesDataset]:
        """The splits cached so far (``{"train": HiddenStatesDataset, ...}``)."""
        return self._datasets  # type: ignore[return-value]

    @property
    def num_classes(self) -> Any:
        return getattr(self.datamodule, "num_classes", None)

    # -- caching -------------------------------------------------------------------------------------------
    def _spec(self) -> dict[str, Any]:
        if self.backbone_spec is None:
            raise ValueError("backbone_spec: required (the CLI links it from model.init_args.backbone)")
        return check_backbone_spec(self.backbone_spec)

    def backbone(self) -> FrozenBackbone:
        """The frozen backbone used for caching (built once)."""
        if self._backbone is None:
            device = self.device or ("cuda" if torch.cuda.is_available() else "cpu")
            self._backbone = build_backbone(self._spec()).to(device)
        return self._backbone

    def _raw(self, split: str) -> tuple[Any, DataLoader | None]:
        """(dataset, raw loader) of a split, or (None, None) when the raw DataModule lacks it."""
        dm = self.datamodule
        if callable(getattr(dm, "dataset", None)):  # heinsen_zoo ZooDataModule
            try:
                return dm.dataset(split), None
            except NotImplementedError:
                return None, None
        method = getattr(dm, f"{split}_dataloader", None)
        if method is None:
            return None, None
        try:
            loader = method()
        except (NotImplementedError, MisconfigurationException):  # Lightning's "must be implemented"
            return None, None
        return loader.dataset, loader

    def _sequential_loader(self, dataset: Any, loader: DataLoader | None) -> Iterable[Mapping[str, Any]]:
        collate = getattr(self.datamodule, "collate_fn", None) or (
            loader.collate_fn if loader is not None else None
        )
        if isinstance(dataset, torch.utils.data.IterableDataset):
            return (
                loader
                if loader is not None
                else DataLoader(dataset, batch_size=self.batch_size, collate_fn=collate)
            )
        batch_size = getattr(self.datamodule, "eval_batch_size", None) or self.batch_size
        workers = getattr(self.datamodule, "num_workers", 0) or 0
        return DataLoader(
            dataset, batch_size=batch_size, shuffle=False, collate_fn=collate, num_workers=workers
        )

    def _cache_split(self, split: str) -> HiddenStatesDataset | None:
        dataset, loader = self._raw(split)
        if dataset is None:
            return None
        if hasattr(dataset, "__len__") and len(dataset) == 0:
            raise ValueError(
                f"{split} split of {type(self.datamodule).__name__} is empty: nothing to cache "
                "(e.g. max_per_class too small for val_fraction)"
            )
        corpus = self._corpus_cache()
        if corpus is not None:
            return self._corpus_view(split, dataset, *corpus)
        fingerprint = ids_fingerprint(dataset)
        if fingerprint is not None and fingerprint in self._by_fingerprint:
            return self._by_fingerprint[fingerprint]  # same samples as an already cached split
        cached = self._compute(dataset_identity(self.datamodule, split, dataset), dataset, loader)
        if fingerprint is not None:
            self._by_fingerprint[fingerprint] = cached
        return cached

    def _corpus_cache(self) -> tuple[HiddenStatesDataset, dict[Any, int]] | None:
        """(the cache of the raw DataModule's corpus, the row of each of its ids), computed once; None when
        ``share_corpus`` is off or the raw DataModule has no corpus."""
        corpus_of = getattr(self.datamodule, "corpus", None)
        if self._corpus is None and self.share_corpus and callable(corpus_of):
            corpus = corpus_of()
            if corpus is None:
                return None
            name = f"{type(self.datamodule).__name__}.corpus()"
            ids = getattr(corpus, "ids", None)
            if not isinstance(ids, (list, tuple)) or len(ids) == 0:
                raise ValueError(f"{name}: expected a non-empty dataset with a list of ids, got ids {ids!r}")
            rows = {sample_id: row for row, sample_id in enumerate(ids)}
            if len(rows) != len(ids):
                raise ValueError(f"{name}: expected each id once, got {len(ids) - len(rows)} repeated")
            leave_out = getattr(self.datamodule, "SPLIT_ARGS", ())
            identity = dataset_identity(self.datamodule, "corpus", corpus, leave_out)
            self._corpus = (self._compute(identity, corpus, None), rows)
        return self._corpus

    def _corpus_view(
        self, split: str, dataset: Any, corpus: HiddenStatesDataset, rows: dict[Any, int]
    ) -> HiddenStatesDataset:
        """The split as a view of the corpus's cache, item k = the split's example k (its ``index`` k)."""
        owner = type(self.datamodule).__name__
        ids = getattr(dataset, "ids", None)
        if not isinstance(ids, (list, tuple)) or len(ids) != len(dataset):
            raise ValueError(
                f"{owner}: its {split} dataset has no ids (one per example); with a corpus() every split's "
                "dataset names its examples by the corpus's ids"
            )
        missing = [sample_id for sample_id in ids if sample_id not in rows]
        if missing:
            raise ValueError(
                f"{owner}: {len(missing)} examples of the {split} split are not in its corpus(), e.g. {missing[0]!r}"
            )
        view = corpus.view([rows[sample_id] for sample_id in ids])
        labels = getattr(dataset, "labels", None)
        if (
            labels is not None
            and view.labels is not None
            and view.labels.tolist() != [int(y) for y in labels]
        ):
            raise ValueError(
                f"{owner}: the {split} split's labels differ from its corpus()'s for the same ids"
            )
        return view

    def _compute(self, identity: str, dataset: Any, loader: DataLoader | None) -> HiddenStatesDataset:
        """The cache of ``dataset`` (opened when a disk cache of the same identity exists, else computed)."""
        if self.dataset_id:
            identity += "|" + self.dataset_id
        if self.storage == "disk":
            key = cache_key(self._spec(), identity, self.dtype)
            folder = Path(self.cache_dir).expanduser() / key
            if (folder / "meta.json").is_file():
                return HiddenStatesDataset.load(folder)
        return cache_hidden_states(
            self.backbone(),
            self._sequential_loader(dataset, loader),
            storage=self.storage,
            cache_dir=self.cache_dir,
            dtype=self.dtype,
            progress=self.progress,
            dataset_id=identity,
        )

    def prepare_data(self) -> None:
        """Prepare the raw data; with disk storage also compute the caches (once, on the main process)."""
        if hasattr(self.datamodule, "prepare_data"):
            self.datamodule.prepare_data()
        if self.storage == "disk":
            if hasattr(self.datamodule, "setup"):
                self.datamodule.setup(None)
            for split in self.splits:
                self._cache_split(split)

    def setup(self, stage: str | None = None) -> None:
        """Set up the raw DataModule and cache (or open the caches of) the splits the stage needs."""
        needed = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",), "predict": ("predict",)}
        wanted = [s for s in needed.get(stage, self.splits) if s in self.splits or stage == "predict"]
        if hasattr(self.datamodule, "setup"):
            self.datamodule.setup(stage)
        for split in wanted:
            if split not in self._datasets:
                cached = self._cache_split(split)
                if cached is not None:
                    self._datasets[split] = cached
        if self._backbone is not None and self.storage == "memory":
            self._backbone = None  # free the backbone once everything needed is cached
            if torch.cuda.is_available():
                torch.cuda.empty_cache()

    # -- the base's hooks (its loaders do the rest) -------------------------------------------------------
    def split_source(self, split: str) -> str:
        """Every split is served on its own (a view of the corpus's cache, or its own cache; a raw split with the
        same ``ids`` as a cached one shares its cache)."""
        return split

    def _build_split(self, split: str) -> Dataset:
        cached = self._cache_split(split)
        if cached is None:
            raise ValueError(f"split {split!r}: the raw {type(self.datamodule).__name__} has no {split} data")
        return cached

    def collate_fn(self, samples: Sequence[Mapping[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        """Batch cached samples; text backbones in "empty_chunk" mode pad with their empty chunk."""
        some = next(iter(self._datasets.values()), None)
        return collate_hidden_states(samples, pad_hidden=getattr(some, "pad_hidden", None))

    def train_sampler(self, rank: int = 0, world_size: int = 1) -> Any:
        """The raw DataModule's training sampler when it has one (the same stream as uncached training),
        else the base's seeded sampler (one shuffled pass per epoch)."""
        sampler_fn = getattr(self.datamodule, "train_sampler", None)
        if callable(sampler_fn):
            return sampler_fn(rank, world_size)
        return super().train_sampler(rank, world_size)
