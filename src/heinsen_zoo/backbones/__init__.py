"""Frozen pretrained backbones that report the hidden states of every layer.

A backbone is described by a plain dict (it goes into hparams and config.json, so it holds no objects)::

    {"source": "timm" | "hf" | "minilm", "id": str, "revision": str | None, "kind": "vision" | "text",
     ...options}

and built with :func:`build_backbone`. Every backbone is a :class:`FrozenBackbone` whose forward maps a
preprocessed image batch ``[batch, 3, H, W]`` or a list of texts to ``(hidden [batch, n_pos, d_depth,
d_emb], padding_mask [batch, n_pos] bool or None)``.

Options (all optional):

* every source: ``local_path`` (folder with the weights; see below), ``local_files_only`` (never download),
  ``autocast`` (autocast on CUDA, default True), ``autocast_dtype`` ("float16", the paper's and the default,
  or "bfloat16"), ``output_dtype`` ("float32"/"float16"/"bfloat16"; default the autocast dtype under CUDA
  autocast, else float32), ``model_kwargs`` (dict passed to the constructor).
* timm: ``pretrained`` (default True; False = random init, for tests), ``hf_hub_id`` (weights repo override).
* hf: ``dtype`` (weights dtype, default "float32").
* text: ``max_length`` (tokens per chunk), ``max_chunks``, ``pad_mode`` ("mask" | "empty_chunk"),
  ``chunk_batch_size``.

Offline: weights are looked up in ``local_path``, then ``$HEINSEN_MODEL_DIR/<id with / as -->`` (or
``$HEINSEN_MODEL_DIR/<id>``), then the Hugging Face cache at the pinned ``revision``. With HF_HUB_OFFLINE=1
(or ``local_files_only``) a missing model raises :class:`MissingModelError` at once, naming the
``huggingface-cli download`` command and where to put the files.

Paper specs: :data:`PAPER_BACKBONES`.

Example:
    >>> import torch
    >>> from heinsen_zoo.backbones import build_backbone
    >>> backbone = build_backbone({"source": "timm", "id": "vit_tiny_patch16_224", "revision": None,
    ...     "kind": "vision", "pretrained": False,
    ...     "model_kwargs": {"img_size": 32, "depth": 2, "embed_dim": 32, "num_heads": 2}})
    >>> hidden, padding_mask = backbone(torch.randn(2, 3, 32, 32))
    >>> (backbone.d_depth, backbone.d_emb, backbone.input_key), tuple(hidden.shape)
    ((3, 32, 'image'), (2, 5, 3, 32))
"""

from __future__ import annotations

from typing import Any

from ._resolve import MODEL_DIR_ENV, MissingModelError, is_offline
from .base import GPT2_LARGE_REVISION, FrozenBackbone
from .hf_backbone import MINILM_ID, PAD_MODES, HFTextBackbone, HFVisionBackbone, minilm_dir
from .timm_backbone import TimmBackbone, beit_hf_to_timm

__all__ = [
    "build_backbone",
    "check_backbone_spec",
    "FrozenBackbone",
    "TimmBackbone",
    "HFVisionBackbone",
    "HFTextBackbone",
    "MissingModelError",
    "beit_hf_to_timm",
    "minilm_dir",
    "is_offline",
    "MINILM_ID",
    "MODEL_DIR_ENV",
    "PAD_MODES",
    "PAPER_BACKBONES",
]

SOURCES = ("timm", "hf", "minilm")
KINDS = ("vision", "text")
_COMMON_KEYS = {
    "source", "id", "revision", "kind", "local_path", "local_files_only", "autocast", "autocast_dtype",
    "output_dtype", "model_kwargs",
}  # fmt: skip
_KEYS = {
    ("timm", "vision"): _COMMON_KEYS | {"pretrained", "hf_hub_id"},
    ("hf", "vision"): _COMMON_KEYS | {"dtype"},
    ("hf", "text"): _COMMON_KEYS | {"dtype", "max_length", "max_chunks", "pad_mode", "chunk_batch_size"},
}

#: The backbones of the papers, as specs (pass to :func:`build_backbone`; needs the weights locally offline).
PAPER_BACKBONES: dict[str, dict[str, Any]] = {
    "beit-large-hf": {"source": "hf", "id": "microsoft/beit-large-patch16-224", "revision": "0bd443c",
                      "kind": "vision"},
    "beit-large-timm": {"source": "timm", "id": "beit_large_patch16_224.in22k_ft_in22k_in1k", "revision": None,
                        "kind": "vision"},
    "roberta-large": {"source": "hf", "id": "roberta-large", "revision": "5069d8a", "kind": "text",
                      "max_length": 512, "pad_mode": "empty_chunk"},
    "gpt2-large": {"source": "hf", "id": "gpt2-large", "revision": GPT2_LARGE_REVISION, "kind": "text", "max_length": 1024,
                   "pad_mode": "mask"},
    "minilm": {"source": "minilm", "id": MINILM_ID, "revision": None, "kind": "text", "max_length": 256,
               "pad_mode": "mask"},
}  # fmt: skip


def check_backbone_spec(spec: Any) -> dict[str, Any]:
    """Validate a backbone spec and return a normalised copy (``kind`` filled in for timm/minilm).

    Raises TypeError/ValueError naming the offending key, what was expected and what was given.
    """
    if not isinstance(spec, dict):
        raise TypeError(f"spec: expected a dict backbone spec, got {type(spec).__name__}")
    spec = dict(spec)
    source = spec.get("source")
    if source not in SOURCES:
        raise ValueError(f"spec['source']: expected one of {SOURCES}, got {source!r}")
    if source == "minilm":
        spec.setdefault("id", MINILM_ID)
        spec.setdefault("kind", "text")
    if source == "timm":
        spec.setdefault("kind", "vision")
    if not isinstance(spec.get("id"), str) or not spec["id"]:
        raise ValueError(f"spec['id']: expected a model id string, got {spec.get('id')!r}")
    if str(spec["id"]).lower() == MINILM_ID:
        spec.setdefault("kind", "text")
    kind = spec.get("kind")
    if kind not in KINDS:
        raise ValueError(f"spec['kind']: expected one of {KINDS}, got {kind!r}")
    revision = spec.get("revision")
    if revision is not None and not isinstance(revision, str):
        raise TypeError(f"spec['revision']: expected a str or None, got {type(revision).__name__}")
    family = ("hf", kind) if source in ("hf", "minilm") else (source, kind)
    if family not in _KEYS:
        raise ValueError(f"spec['kind']: source {source!r} supports only 'vision', got {kind!r}")
    unknown = sorted(set(spec) - _KEYS[family])
    if unknown:
        raise ValueError(f"spec: unknown key(s) {unknown} for a {source} {kind} backbone; allowed: {sorted(_KEYS[family])}")
    model_kwargs = spec.get("model_kwargs")
    if model_kwargs is not None and not isinstance(model_kwargs, dict):
        raise TypeError(f"spec['model_kwargs']: expected a dict, got {type(model_kwargs).__name__}")
    return spec


def build_backbone(spec: dict[str, Any]) -> FrozenBackbone:
    """Build the frozen backbone described by ``spec`` (see the module docstring for keys)."""
    spec = check_backbone_spec(spec)
    if spec["source"] == "timm":
        return TimmBackbone(spec)
    if spec["kind"] == "vision":
        return HFVisionBackbone(spec)
    return HFTextBackbone(spec)
