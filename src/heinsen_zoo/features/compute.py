"""Computing a hidden-state cache: run the frozen backbone once over a loader of raw batches."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from heinsen_zoo.backbones import FrozenBackbone

from .dataset import CACHE_FORMAT_VERSION, HiddenStatesDataset, _check_dtype, cache_key

__all__ = ["cache_hidden_states"]


def _batch_input(batch: Mapping[str, Any], backbone: FrozenBackbone) -> Any:
    if not isinstance(batch, Mapping):
        raise TypeError(
            f"dataloader: expected batches as dicts (raw batch contract), got {type(batch).__name__}"
        )
    if backbone.input_key not in batch:
        raise KeyError(
            f"dataloader: batches need key {backbone.input_key!r} for this backbone, got {sorted(batch)}"
        )
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
            while n_chunks > 1 and torch.equal(
                hidden[b, (n_chunks - 1) * chunk_len : n_chunks * chunk_len], pad_chunk
            ):
                n_chunks -= 1
            out.append((hidden[b, : n_chunks * chunk_len], None))
        else:
            out.append((hidden[b], None))
    return out


def _to_storage(name: str, hidden: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    stored = hidden.detach().to("cpu", dtype)
    if (
        dtype != hidden.dtype
        and not bool(torch.isfinite(stored).all())
        and bool(torch.isfinite(hidden).all())
    ):
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
        raise TypeError(
            f"backbone: expected a FrozenBackbone (see build_backbone), got {type(backbone).__name__}"
        )
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
            raise ValueError(
                "dataset_id: required when storage='disk' (a string identifying dataset + preprocessing)"
            )
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
    written = 0  # bytes of hidden states written to disk
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
                torch.as_tensor(index).reshape(n).long().cpu()
                if index is not None
                else torch.arange(seen, seen + n)
            )
            seen += n
            for sample_hidden, sample_mask in _trim(hidden, padding_mask, pad_chunk):
                stored = _to_storage("hidden states", sample_hidden, dtype)
                if handle is not None:
                    handle.write(stored.contiguous().numpy().tobytes())
                    written += stored.numel() * stored.element_size()
                else:
                    hidden_parts.append(stored)
                lengths.append(stored.shape[0])
                if sample_mask is not None:
                    mask_parts.append(sample_mask.cpu())
            if bar is not None:
                bar.update(1)
        if not lengths:
            raise ValueError("dataloader: produced no batches; nothing to cache")
    except BaseException as err:
        if handle is not None:
            with contextlib.suppress(OSError):  # closing flushes: on a full disk that fails too
                handle.close()
            shutil.rmtree(tmp_dir, ignore_errors=True)
        if isinstance(err, OSError) and err.errno == errno.ENOSPC:
            raise OSError(
                errno.ENOSPC,
                f"cache_dir {final_dir.parent}: no space left on the device while caching hidden states "
                f"({written / 2**20:.1f} MiB written for {len(lengths)} samples before it filled up; the partial "
                "cache was removed): free some space there or pass another cache_dir",
            ) from err
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
