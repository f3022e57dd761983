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

from .collate import collate_hidden_states
from .compute import cache_hidden_states
from .datamodule import CachedHiddenStatesDataModule, dataset_identity
from .dataset import CACHE_FORMAT_VERSION, HiddenStatesDataset, cache_key

__all__ = [
    "CACHE_FORMAT_VERSION",
    "CachedHiddenStatesDataModule",
    "HiddenStatesDataset",
    "cache_hidden_states",
    "cache_key",
    "collate_hidden_states",
    "dataset_identity",
]
