"""A hidden-state cache for small datasets: run the frozen backbone once, train the head many times.

:func:`cache_hidden_states` runs a :class:`~heinsen_zoo.backbones.FrozenBackbone` over a dataloader of raw
batches (``{"image" | "text": ..., "label": [B], "index": [B] (optional)}``) and returns a
:class:`HiddenStatesDataset` whose items are cached samples::

    {"hidden": [n_pos, d_depth, d_emb], "padding_mask": [n_pos] (when the backbone pads with a mask),
     "label": int64 scalar (when the batches had labels), "index": int64 scalar}

What is stored: hidden states in ``dtype`` (float16 by default; a conversion that would overflow raises),
per sample only up to its last unpadded position (trailing padding is re-created when batching), or, for
text backbones in "empty_chunk" mode, only the sample's own chunks (the empty-chunk hidden states are
stored once and re-appended when batching). Samples are stored flat (``[total_pos, d_depth, d_emb]`` plus
offsets), so samples of different lengths cost only their own positions.

Storage: ``"memory"`` (torch tensors) or ``"disk"``: a folder ``<cache_dir>/<key>/`` with raw little-endian
``hidden.bin`` (read through a numpy memmap), ``.npy`` arrays (offsets, labels, indices, padding mask,
empty chunk; loaded with ``allow_pickle=False``) and ``meta.json``. ``key`` is a sha256 of the backbone
spec, the dataset identity string, the dtype and the format version, so a second run with the same inputs
reuses the folder and anything else gets its own. Folders are written under a temporary name and renamed
when complete, so an interrupted run never leaves a cache that looks valid.

:class:`CachedHiddenStatesDataModule` wraps a raw LightningDataModule: it builds the backbone once, caches
the train/val/test splits and serves cached batches (:func:`collate_hidden_states` pads ``n_pos``).

Example:
    >>> import torch
    >>> from heinsen_zoo.backbones import build_backbone
    >>> from heinsen_zoo.features import cache_hidden_states
    >>> backbone = build_backbone({"source": "timm", "id": "vit_tiny_patch16_224", "revision": None,
    ...     "kind": "vision", "pretrained": False,
    ...     "model_kwargs": {"img_size": 32, "depth": 2, "embed_dim": 32, "num_heads": 2}})
    >>> batches = [{"image": torch.randn(4, 3, 32, 32), "label": torch.arange(4)}]
    >>> cached = cache_hidden_states(backbone, batches, progress=False)
    >>> len(cached), cached[0]["hidden"].shape, cached[0]["hidden"].dtype
    (4, torch.Size([5, 3, 32]), torch.float16)
    >>> loader = torch.utils.data.DataLoader(cached, batch_size=2, collate_fn=cached.collate)
    >>> next(iter(loader))["hidden"].shape                   # [B, n_pos, d_depth, d_emb]
    torch.Size([2, 5, 3, 32])
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.fabric.utilities.exceptions import MisconfigurationException
from torch.utils.data import DataLoader, Dataset, RandomSampler

from .backbones import FrozenBackbone, build_backbone, check_backbone_spec
from .data.sampling import DistributedCyclingSampler, EvalShardSampler, per_device_batch

__all__ = [
    "HiddenStatesDataset",
    "cache_hidden_states",
    "cache_key",
    "collate_hidden_states",
    "CachedHiddenStatesDataModule",
    "CACHE_FORMAT_VERSION",
]

CACHE_FORMAT_VERSION = 1
_NP_DTYPES = {torch.float16: np.float16, torch.float32: np.float32}
_DTYPE_NAMES = {"float16": torch.float16, "float32": torch.float32}


def _check_dtype(dtype: Any) -> torch.dtype:
    if isinstance(dtype, str) and dtype.replace("torch.", "") in _DTYPE_NAMES:
        dtype = _DTYPE_NAMES[dtype.replace("torch.", "")]
    if dtype not in _NP_DTYPES:
        raise ValueError(f"dtype: expected torch.float16 or torch.float32 (or their names), got {dtype!r}")
    return dtype


def cache_key(backbone_spec: Mapping[str, Any], dataset_id: str, dtype: torch.dtype) -> str:
    """The cache folder name: sha256 of (format version, backbone spec, dataset identity, dtype), 24 hex."""
    payload = {
        "format": CACHE_FORMAT_VERSION,
        "backbone": dict(backbone_spec),
        "dataset": str(dataset_id),
        "dtype": str(dtype),
    }
    text = json.dumps(payload, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:24]


# ---------------------------------------------------------------------------------------------------------
class HiddenStatesDataset(Dataset):
    """Cached hidden states of a dataset, one sample per item (see the module docstring for the items).

    Args:
        hidden: flat hidden states ``[total_pos, d_depth, d_emb]`` (tensor), or the path of a disk cache's
            ``hidden.bin`` with ``shape``/``dtype`` given in ``meta``.
        offsets: int64 ``[n_samples + 1]``; sample i is ``hidden[offsets[i]:offsets[i + 1]]``.
        indices: int64 ``[n_samples]`` dataset indices.
        labels: int64 ``[n_samples]`` or None.
        padding_mask: bool ``[total_pos]`` or None.
        pad_hidden: ``[chunk_len, d_depth, d_emb]`` empty-chunk hidden states used to pad, or None.
        meta: information about the cache (backbone spec, dataset id, dtype, key, shapes).
    """

    def __init__(
        self,
        hidden: torch.Tensor | str | os.PathLike,
        offsets: torch.Tensor,
        indices: torch.Tensor,
        labels: torch.Tensor | None = None,
        padding_mask: torch.Tensor | None = None,
        pad_hidden: torch.Tensor | None = None,
        meta: dict[str, Any] | None = None,
    ) -> None:
        self.meta = dict(meta or {})
        self._hidden_path = None if isinstance(hidden, torch.Tensor) else Path(hidden)
        self._hidden = hidden if isinstance(hidden, torch.Tensor) else None
        self.offsets = offsets.long()
        self.indices = indices.long()
        self.labels = labels.long() if labels is not None else None
        self.padding_mask = padding_mask
        self.pad_hidden = pad_hidden
        n = len(self.offsets) - 1
        if len(self.indices) != n or (self.labels is not None and len(self.labels) != n):
            raise ValueError(
                f"offsets ({n} samples), indices ({len(self.indices)}) and labels "
                f"({None if self.labels is None else len(self.labels)}) disagree on the number of samples"
            )
        if self._hidden is not None:
            self.meta.setdefault("d_depth", int(self._hidden.shape[1]))
            self.meta.setdefault("d_emb", int(self._hidden.shape[2]))
            self.meta.setdefault("total_pos", int(self._hidden.shape[0]))
        if int(self.offsets[-1]) != int(self.meta["total_pos"]):
            raise ValueError(f"offsets: last offset {int(self.offsets[-1])} != total positions {self.meta['total_pos']}")

    @property
    def d_depth(self) -> int:
        return int(self.meta["d_depth"])

    @property
    def d_emb(self) -> int:
        return int(self.meta["d_emb"])

    @property
    def storage(self) -> str:
        return "memory" if self._hidden_path is None else "disk"

    def _flat_hidden(self) -> torch.Tensor | np.memmap:
        if self._hidden is None:  # opened lazily, per process (DataLoader workers included)
            shape = (int(self.meta["total_pos"]), self.d_depth, self.d_emb)
            np_dtype = _NP_DTYPES[_check_dtype(self.meta["dtype"])]
            self._hidden = np.memmap(self._hidden_path, dtype=np_dtype, mode="r", shape=shape)
        return self._hidden

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        if self._hidden_path is not None:
            state["_hidden"] = None  # never pickle the memmap's content
        return state

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        if not -len(self) <= i < len(self):
            raise IndexError(f"index {i} out of range for {len(self)} cached samples")
        i = i % len(self)
        start, stop = int(self.offsets[i]), int(self.offsets[i + 1])
        flat = self._flat_hidden()
        hidden = flat[start:stop] if isinstance(flat, torch.Tensor) else torch.from_numpy(np.array(flat[start:stop]))
        item: dict[str, torch.Tensor] = {"hidden": hidden, "index": self.indices[i]}
        if self.padding_mask is not None:
            item["padding_mask"] = self.padding_mask[start:stop]
        if self.labels is not None:
            item["label"] = self.labels[i]
        return item

    def collate(self, samples: Sequence[Mapping[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        """Batch cached samples (pads n_pos, see :func:`collate_hidden_states`)."""
        return collate_hidden_states(samples, pad_hidden=self.pad_hidden)

    # -- disk format ---------------------------------------------------------------------------------------
    @classmethod
    def load(cls, directory: str | os.PathLike) -> HiddenStatesDataset:
        """Open a disk cache folder written by :func:`cache_hidden_states` (memmapped, nothing unpickled)."""
        directory = Path(directory)
        meta_path = directory / "meta.json"
        if not meta_path.is_file():
            raise FileNotFoundError(f"directory: {str(directory)!r} is not a hidden-state cache (no meta.json)")
        meta = json.loads(meta_path.read_text())
        if meta.get("format") != CACHE_FORMAT_VERSION:
            raise ValueError(
                f"directory: cache {str(directory)!r} has format {meta.get('format')!r}, expected "
                f"{CACHE_FORMAT_VERSION}; delete it to rebuild"
            )
        dtype = _check_dtype(meta["dtype"])
        expected = int(meta["total_pos"]) * int(meta["d_depth"]) * int(meta["d_emb"]) * torch.finfo(dtype).bits // 8
        actual = (directory / "hidden.bin").stat().st_size if (directory / "hidden.bin").exists() else -1
        if actual != expected:
            raise ValueError(
                f"directory: corrupt cache {str(directory)!r}: hidden.bin has {actual} bytes, expected {expected}; "
                "delete the folder to rebuild it"
            )

        def array(name: str) -> torch.Tensor | None:
            path = directory / f"{name}.npy"
            return torch.from_numpy(np.load(path, allow_pickle=False)) if path.exists() else None

        return cls(
            directory / "hidden.bin",
            offsets=array("offsets"),
            indices=array("indices"),
            labels=array("labels"),
            padding_mask=array("padding_mask"),
            pad_hidden=array("pad_hidden"),
            meta=meta,
        )


# ---------------------------------------------------------------------------------------------------------
def collate_hidden_states(
    samples: Sequence[Mapping[str, torch.Tensor]], pad_hidden: torch.Tensor | None = None
) -> dict[str, torch.Tensor]:
    """Batch cached samples into ``{"hidden": [B, n_pos, d_depth, d_emb], "padding_mask"?, "label"?, "index"}``.

    Samples shorter than the longest are padded: with zeros and ``padding_mask`` True when the samples carry
    a padding mask; with whole copies of ``pad_hidden`` (``[chunk_len, d_depth, d_emb]``, the empty-chunk
    hidden states of a text backbone in "empty_chunk" mode) otherwise. Anything else raises.
    """
    if len(samples) == 0:
        raise ValueError("samples: expected at least one cached sample, got none")
    lengths = [int(s["hidden"].shape[0]) for s in samples]
    n_pos = max(lengths)
    with_mask = ["padding_mask" in s for s in samples]
    if any(with_mask) and not all(with_mask):
        raise ValueError("samples: some cached samples have a padding_mask and others do not")
    first = samples[0]["hidden"]
    for i, s in enumerate(samples):
        if s["hidden"].shape[1:] != first.shape[1:] or s["hidden"].dtype != first.dtype:
            raise ValueError(
                f"samples[{i}]: hidden {list(s['hidden'].shape)} {s['hidden'].dtype} does not match samples[0]'s "
                f"[n_pos, {', '.join(map(str, first.shape[1:]))}] {first.dtype}"
            )
    # One copy per sample straight into the batch (no per-sample cat, no stack); only padding is filled.
    hidden_out = torch.empty(len(samples), n_pos, *first.shape[1:], dtype=first.dtype)  # [B, n_pos, ...]
    mask_out = torch.ones(len(samples), n_pos, dtype=torch.bool) if all(with_mask) else None  # [B, n_pos]
    for b, (s, length) in enumerate(zip(samples, lengths, strict=True)):
        missing = n_pos - length
        hidden_out[b, :length].view(-1).copy_(s["hidden"].reshape(-1))  # flat: a plain memory copy, ~5x faster
        if mask_out is not None:
            mask_out[b, :length] = s["padding_mask"]
            if missing:
                hidden_out[b, length:] = 0
        elif missing:
            if pad_hidden is None or missing % pad_hidden.shape[0] != 0:
                raise ValueError(
                    f"samples: n_pos differs ({sorted(set(lengths))}) but the samples have no padding_mask and "
                    f"no pad chunk fits (pad_hidden {None if pad_hidden is None else list(pad_hidden.shape)})"
                )
            hidden_out[b, length:] = pad_hidden.to(first.dtype).repeat(missing // pad_hidden.shape[0], 1, 1)
    batch = {"hidden": hidden_out, "index": torch.stack([torch.as_tensor(s["index"]) for s in samples])}
    if mask_out is not None:
        batch["padding_mask"] = mask_out
    if all("label" in s for s in samples):
        batch["label"] = torch.stack([torch.as_tensor(s["label"]) for s in samples]).long()
    return batch


# ---------------------------------------------------------------------------------------------------------
def _batch_input(batch: Mapping[str, Any], backbone: FrozenBackbone) -> Any:
    if not isinstance(batch, Mapping):
        raise TypeError(f"dataloader: expected batches as dicts (raw batch contract), got {type(batch).__name__}")
    if backbone.input_key not in batch:
        raise KeyError(f"dataloader: batches need key {backbone.input_key!r} for this backbone, got {sorted(batch)}")
    return batch[backbone.input_key]


def _trim(
    hidden: torch.Tensor, padding_mask: torch.Tensor | None, pad_chunk: torch.Tensor | None
) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
    """Per sample: hidden ``[n, d_depth, d_emb]`` without trailing padding (and its mask)."""
    out = []
    for b in range(hidden.shape[0]):
        if padding_mask is not None:
            real = (~padding_mask[b]).nonzero()
            keep = int(real[-1]) + 1 if len(real) else 1
            out.append((hidden[b, :keep], padding_mask[b, :keep]))
        elif pad_chunk is not None:
            chunk_len = pad_chunk.shape[0]
            n_chunks = hidden.shape[1] // chunk_len
            while n_chunks > 1 and torch.equal(hidden[b, (n_chunks - 1) * chunk_len : n_chunks * chunk_len], pad_chunk):
                n_chunks -= 1
            out.append((hidden[b, : n_chunks * chunk_len], None))
        else:
            out.append((hidden[b], None))
    return out


def _to_storage(name: str, hidden: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    stored = hidden.detach().to("cpu", dtype)
    if dtype != hidden.dtype and not bool(torch.isfinite(stored).all()) and bool(torch.isfinite(hidden).all()):
        raise ValueError(
            f"dtype: {name} overflow {dtype} (max |value| {float(hidden.abs().max()):.4g}); cache with torch.float32"
        )
    return stored


def cache_hidden_states(
    backbone: FrozenBackbone,
    dataloader: Iterable[Mapping[str, Any]],
    storage: str = "memory",
    cache_dir: str | os.PathLike | None = None,
    dtype: torch.dtype | str = torch.float16,
    progress: bool = True,
    dataset_id: str | None = None,
) -> HiddenStatesDataset:
    """Run ``backbone`` over ``dataloader`` once and cache the hidden states (see the module docstring).

    Args:
        backbone: a built frozen backbone (its ``spec`` keys the disk cache).
        dataloader: iterable of raw batches ``{"image" | "text": ..., "label": [B] (optional), "index": [B]
            (optional; else running positions)}``. Use a sequential loader without augmentation.
        storage: "memory" or "disk".
        cache_dir: folder of disk caches (required for "disk").
        dtype: storage dtype, torch.float16 (default) or torch.float32.
        progress: show a tqdm progress bar.
        dataset_id: a string identifying the dataset and its preprocessing (required for "disk": it keys the
            cache, so two datasets must never share one).

    Returns:
        A :class:`HiddenStatesDataset`; for "disk", a second call with the same backbone spec, dataset_id
        and dtype opens the existing folder without running the backbone.
    """
    if not isinstance(backbone, FrozenBackbone):
        raise TypeError(f"backbone: expected a FrozenBackbone (see build_backbone), got {type(backbone).__name__}")
    if storage not in ("memory", "disk"):
        raise ValueError(f"storage: expected 'memory' or 'disk', got {storage!r}")
    dtype = _check_dtype(dtype)
    meta: dict[str, Any] = {
        "format": CACHE_FORMAT_VERSION,
        "backbone": backbone.spec,
        "dataset": dataset_id,
        "dtype": str(dtype).replace("torch.", ""),
        "d_depth": backbone.d_depth,
        "d_emb": backbone.d_emb,
    }
    final_dir = tmp_dir = None
    if storage == "disk":
        if cache_dir is None:
            raise ValueError("cache_dir: required when storage='disk' (the folder that holds the caches)")
        if not dataset_id:
            raise ValueError("dataset_id: required when storage='disk' (a string identifying dataset + preprocessing)")
        meta["key"] = cache_key(backbone.spec, dataset_id, dtype)
        final_dir = Path(cache_dir).expanduser() / meta["key"]
        if (final_dir / "meta.json").is_file():
            return HiddenStatesDataset.load(final_dir)
        final_dir.parent.mkdir(parents=True, exist_ok=True)
        tmp_dir = Path(tempfile.mkdtemp(prefix=f".{meta['key']}.tmp-", dir=final_dir.parent))

    pad_chunk = backbone.pad_hidden_states()  # [chunk_len, d_depth, d_emb] or None
    hidden_parts: list[torch.Tensor] = []
    mask_parts: list[torch.Tensor] = []
    lengths: list[int] = []
    labels: list[torch.Tensor] = []
    indices: list[torch.Tensor] = []
    has_labels: bool | None = None
    has_mask: bool | None = None
    total = len(dataloader) if hasattr(dataloader, "__len__") else None
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=total, desc=f"caching hidden states ({backbone.spec.get('id')})", unit="batch")
    handle = open(tmp_dir / "hidden.bin", "wb") if tmp_dir is not None else None
    try:
        seen = 0
        for batch in dataloader:
            inputs = _batch_input(batch, backbone)
            hidden, padding_mask = backbone(inputs)  # [B, n_pos, d_depth, d_emb], [B, n_pos] or None
            n = hidden.shape[0]
            if has_mask is None:
                has_mask = padding_mask is not None
            elif has_mask != (padding_mask is not None):
                raise RuntimeError("backbone: returned a padding mask for some batches and not for others")
            if has_labels is None:
                has_labels = "label" in batch
            if has_labels:
                if "label" not in batch:
                    raise KeyError("dataloader: some batches have 'label' and others do not")
                labels.append(torch.as_tensor(batch["label"]).reshape(n).long().cpu())
            index = batch.get("index")
            indices.append(
                torch.as_tensor(index).reshape(n).long().cpu() if index is not None else torch.arange(seen, seen + n)
            )
            seen += n
            for sample_hidden, sample_mask in _trim(hidden, padding_mask, pad_chunk):
                stored = _to_storage("hidden states", sample_hidden, dtype)
                lengths.append(stored.shape[0])
                if handle is not None:
                    handle.write(stored.contiguous().numpy().tobytes())
                else:
                    hidden_parts.append(stored)
                if sample_mask is not None:
                    mask_parts.append(sample_mask.cpu())
            if bar is not None:
                bar.update(1)
        if not lengths:
            raise ValueError("dataloader: produced no batches; nothing to cache")
    except BaseException:
        if handle is not None:
            handle.close()
            shutil.rmtree(tmp_dir, ignore_errors=True)
        raise
    finally:
        if bar is not None:
            bar.close()

    offsets = torch.zeros(len(lengths) + 1, dtype=torch.long)
    offsets[1:] = torch.tensor(lengths).cumsum(0)
    meta["total_pos"] = int(offsets[-1])
    meta["n_samples"] = len(lengths)
    arrays = {
        "offsets": offsets,
        "indices": torch.cat(indices),
        "labels": torch.cat(labels) if has_labels else None,
        "padding_mask": torch.cat(mask_parts) if has_mask else None,
        "pad_hidden": _to_storage("pad chunk", pad_chunk, dtype) if pad_chunk is not None else None,
    }
    if handle is None:
        return HiddenStatesDataset(torch.cat(hidden_parts), meta=meta, **arrays)
    handle.close()
    for name, value in arrays.items():
        if value is not None:
            np.save(tmp_dir / f"{name}.npy", value.numpy(), allow_pickle=False)
    (tmp_dir / "meta.json").write_text(json.dumps(meta, indent=1, sort_keys=True, default=str))
    try:
        os.replace(tmp_dir, final_dir)
    except OSError:  # another process finished the same cache first
        shutil.rmtree(tmp_dir, ignore_errors=True)
    return HiddenStatesDataset.load(final_dir)


# ---------------------------------------------------------------------------------------------------------
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


def dataset_identity(datamodule: Any, split: str, dataset: Any) -> str:
    """A string naming a raw DataModule's split: class, hyperparameters (or public plain attributes), length,
    and the sha256 of the dataset's ``ids`` when it has them (so a change in how a split is drawn is a new cache)."""
    hparams = dict(getattr(datamodule, "hparams", {}) or {})
    if not hparams:
        hparams = {k: v for k, v in vars(datamodule).items() if not k.startswith("_")}
    # loader settings do not change the data
    for key in ("batch_size", "eval_batch_size", "num_workers", "pin_memory", "persistent_workers"):
        hparams.pop(key, None)
    plain = {k: _plain(v) for k, v in sorted(hparams.items()) if not isinstance(_plain(v), str) or not _plain(v).startswith("<")}
    length = len(dataset) if hasattr(dataset, "__len__") else None
    cls = type(datamodule)
    identity = {"class": f"{cls.__module__}.{cls.__qualname__}", "split": split, "hparams": plain, "length": length}
    fingerprint = CachedHiddenStatesDataModule._fingerprint(dataset)
    if fingerprint is not None:
        identity["ids_sha256"] = fingerprint[2]
    return json.dumps(identity, sort_keys=True)


class CachedHiddenStatesDataModule(L.LightningDataModule):
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

    Training batches use the raw DataModule's training sampler when it has one (``train_sampler(rank,
    world_size)``, e.g. fixed steps per epoch and DDP sharding), else a random permutation. A split whose
    dataset has the same ``ids`` as an already cached split (BBC's test split is its val split) shares
    that split's cache. Augmentations
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
    ) -> None:
        super().__init__()
        if storage not in ("memory", "disk"):
            raise ValueError(f"storage: expected 'memory' or 'disk', got {storage!r}")
        if storage == "disk" and cache_dir is None:
            raise ValueError("cache_dir: required when storage='disk'")
        if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1):
            raise ValueError(f"batch_size: expected a positive int or None, got {batch_size!r}")
        for split in splits:
            if split not in ("train", "val", "test", "predict"):
                raise ValueError(f"splits: expected names among train/val/test/predict, got {split!r}")
        self.datamodule = datamodule
        self.backbone_spec = dict(backbone_spec) if backbone_spec is not None else None
        self.storage = storage
        self.cache_dir = cache_dir
        self.batch_size = batch_size if batch_size is not None else getattr(datamodule, "batch_size", None) or 32
        self.dtype = _check_dtype(dtype)
        self.device = device
        self.progress = progress
        self.splits = tuple(splits)
        self.dataset_id = dataset_id
        self.cached: dict[str, HiddenStatesDataset] = {}
        self._backbone: FrozenBackbone | None = None
        self._by_fingerprint: dict[tuple, HiddenStatesDataset] = {}

    # -- passthroughs --------------------------------------------------------------------------------------
    @property
    def labels(self) -> Any:
        return getattr(self.datamodule, "labels", None)

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
        collate = getattr(self.datamodule, "collate_fn", None) or (loader.collate_fn if loader is not None else None)
        if isinstance(dataset, torch.utils.data.IterableDataset):
            return loader if loader is not None else DataLoader(dataset, batch_size=self.batch_size, collate_fn=collate)
        batch_size = getattr(self.datamodule, "eval_batch_size", None) or self.batch_size
        workers = getattr(self.datamodule, "num_workers", 0) or 0
        return DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate, num_workers=workers)

    @staticmethod
    def _fingerprint(dataset: Any) -> tuple | None:
        """Content fingerprint of datasets exposing stable ``ids`` (e.g. a test split that is the val split)."""
        ids = getattr(dataset, "ids", None)
        if isinstance(ids, (list, tuple)) and ids:
            return (type(dataset).__qualname__, len(ids), hashlib.sha256(json.dumps(list(ids), default=str).encode()).hexdigest())
        return None

    def _cache_split(self, split: str) -> HiddenStatesDataset | None:
        dataset, loader = self._raw(split)
        if dataset is None:
            return None
        if hasattr(dataset, "__len__") and len(dataset) == 0:
            raise ValueError(f"{split} split of {type(self.datamodule).__name__} is empty: nothing to cache "
                             "(e.g. max_per_class too small for val_fraction)")
        fingerprint = self._fingerprint(dataset)
        if fingerprint is not None and fingerprint in self._by_fingerprint:
            return self._by_fingerprint[fingerprint]  # same samples as an already cached split
        cached = self._compute_split(split, dataset, loader)
        if fingerprint is not None:
            self._by_fingerprint[fingerprint] = cached
        return cached

    def _compute_split(self, split: str, dataset: Any, loader: DataLoader | None) -> HiddenStatesDataset:
        identity = dataset_identity(self.datamodule, split, dataset)
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
            if split not in self.cached:
                cached = self._cache_split(split)
                if cached is not None:
                    self.cached[split] = cached
        if self._backbone is not None and self.storage == "memory":
            self._backbone = None  # free the backbone once everything needed is cached
            if torch.cuda.is_available():
                torch.cuda.empty_cache()

    def _get(self, split: str) -> HiddenStatesDataset:
        if split not in self.cached:
            raise RuntimeError(f"split {split!r} is not cached: call setup() first (cached: {sorted(self.cached)})")
        return self.cached[split]

    # -- loaders -------------------------------------------------------------------------------------------
    def _world(self) -> tuple[int, int]:
        trainer = getattr(self, "trainer", None)
        if trainer is not None:
            return int(trainer.global_rank), int(trainer.world_size)
        return 0, 1

    def train_dataloader(self) -> DataLoader:
        """Per-rank loader: ``per_device_batch(batch_size, world_size)`` examples per step (``batch_size`` is
        the effective batch); the raw DataModule's sampler when it has one (same stream as uncached)."""
        data = self._get("train")
        rank, world_size = self._world()
        per_device = per_device_batch(self.batch_size, world_size)
        sampler_fn = getattr(self.datamodule, "train_sampler", None)
        if callable(sampler_fn):
            sampler = sampler_fn(rank, world_size)
        elif world_size > 1:
            sampler = DistributedCyclingSampler(len(data), len(data), seed=0, rank=rank, world_size=world_size)
        else:
            sampler = RandomSampler(data)
        return DataLoader(data, batch_size=per_device, sampler=sampler, collate_fn=data.collate)

    def _eval_loader(self, split: str) -> DataLoader:
        """Sequential; under DDP each rank scores its own unpadded shard (every example exactly once)."""
        data = self._get(split)
        rank, world_size = self._world()
        sampler = None if world_size == 1 else EvalShardSampler(len(data), rank=rank, world_size=world_size)
        return DataLoader(data, batch_size=self.batch_size, shuffle=False, sampler=sampler, collate_fn=data.collate)

    def val_dataloader(self) -> DataLoader:
        return self._eval_loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader("test")

    def predict_dataloader(self) -> DataLoader:
        return self._eval_loader("predict")
