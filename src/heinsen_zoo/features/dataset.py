"""The hidden-state cache format: :class:`HiddenStatesDataset` (memory or a disk folder) and its key."""

from __future__ import annotations

import copy
import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from .collate import collate_hidden_states

__all__ = ["CACHE_FORMAT_VERSION", "HiddenStatesDataset", "cache_key"]

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
        self._stored_labels = self.labels  # per stored sample (a view's labels are its rows' labels)
        self._rows: torch.Tensor | None = None  # a view's stored samples (see view); None = all, in order
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
            raise ValueError(
                f"offsets: last offset {int(self.offsets[-1])} != total positions {self.meta['total_pos']}"
            )

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
        return len(self.offsets) - 1 if self._rows is None else len(self._rows)

    def view(
        self, rows: Sequence[int] | torch.Tensor, indices: torch.Tensor | None = None
    ) -> HiddenStatesDataset:
        """Some of the cached samples as a dataset of their own, sharing the stored hidden states (nothing is
        copied): item k is sample ``rows[k]`` of this one, with ``index`` ``indices[k]`` (default k).

        Example:
            >>> cache = HiddenStatesDataset(torch.zeros(6, 2, 3), torch.tensor([0, 1, 3, 6]), torch.arange(3))
            >>> part = cache.view([2, 0])
            >>> len(part), part[0]["hidden"].shape, int(part[0]["index"])
            (2, torch.Size([3, 2, 3]), 0)
        """
        rows = torch.as_tensor(rows, dtype=torch.long).reshape(-1)
        n = len(self)
        if len(rows) and (int(rows.min()) < 0 or int(rows.max()) >= n):
            raise IndexError(f"rows: expected sample numbers in [0, {n}), got {rows.min()}..{rows.max()}")
        indices = torch.arange(len(rows)) if indices is None else torch.as_tensor(indices).long().reshape(-1)
        if len(indices) != len(rows):
            raise ValueError(f"indices: expected one per row ({len(rows)}), got {len(indices)}")
        stored = rows if self._rows is None else self._rows[rows]  # rows of the stored samples
        part = copy.copy(self)  # shares the hidden states (tensor or memmap path) and the flat padding mask
        part._rows, part.indices = stored, indices
        part.labels = None if self._stored_labels is None else self._stored_labels[stored]
        return part

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        if not -len(self) <= i < len(self):
            raise IndexError(f"index {i} out of range for {len(self)} cached samples")
        i = i % len(self)
        row = i if self._rows is None else int(self._rows[i])  # the stored sample
        start, stop = int(self.offsets[row]), int(self.offsets[row + 1])
        flat = self._flat_hidden()
        hidden = (
            flat[start:stop]
            if isinstance(flat, torch.Tensor)
            else torch.from_numpy(np.array(flat[start:stop]))
        )
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
            raise FileNotFoundError(
                f"directory: {str(directory)!r} is not a hidden-state cache (no meta.json)"
            )
        meta = json.loads(meta_path.read_text())
        if meta.get("format") != CACHE_FORMAT_VERSION:
            raise ValueError(
                f"directory: cache {str(directory)!r} has format {meta.get('format')!r}, expected "
                f"{CACHE_FORMAT_VERSION}; delete it to rebuild"
            )
        dtype = _check_dtype(meta["dtype"])
        expected = (
            int(meta["total_pos"]) * int(meta["d_depth"]) * int(meta["d_emb"]) * torch.finfo(dtype).bits // 8
        )
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
