"""Text inputs of a text model: tokens and their hidden-state positions, per-text limits and truncation notes."""

from __future__ import annotations

from typing import Any

from torch import nn

#: Chunks per text when neither the call, the model's preprocessing nor its backbone spec sets ``max_chunks``.
DEFAULT_MAX_CHUNKS = 8
_CHARS_PER_TOKEN = 16  # generous: texts longer than max_chunks * max_length * 16 characters cannot fit anyway


def text_tokens(backbone: Any, text: str) -> tuple[list[str], list[int]]:
    """The tokens of ``text`` as a text backbone sees them and their positions in its hidden states.

    Uses the backbone's ``tokenizer``, ``max_length`` and ``max_chunks`` exactly as it chunks texts (overflow
    into ``max_length`` chunks, each with its special tokens, concatenated along positions); padding is left
    out. Returns ``(tokens, positions)``, positions indexing ``hidden[:, n_pos]``.

    Example:
        >>> from heinsen_zoo.backbones import build_backbone
        >>> backbone = build_backbone({"source": "minilm", "max_length": 8})
        >>> tokens, positions = text_tokens(backbone, "hello world")
        >>> tokens, positions
        (['[CLS]', 'hello', 'world', '[SEP]'], [0, 1, 2, 3])
    """
    tokenizer = getattr(backbone, "tokenizer", None)
    max_length = getattr(backbone, "max_length", None)
    if tokenizer is None or not isinstance(max_length, int):
        raise TypeError(
            f"backbone: expected a text backbone with a tokenizer and max_length, got {type(backbone).__name__}"
        )
    enc = tokenizer(
        [text], max_length=max_length, truncation=True, padding="max_length", return_overflowing_tokens=True
    )
    ids, attention = enc["input_ids"], enc.get("attention_mask")
    max_chunks = getattr(backbone, "max_chunks", None)
    n_chunks = len(ids) if max_chunks is None else min(len(ids), int(max_chunks))
    tokens: list[str] = []
    positions: list[int] = []
    for rank in range(n_chunks):
        pieces = tokenizer.convert_ids_to_tokens(ids[rank])
        for j, piece in enumerate(pieces):
            if attention is None or attention[rank][j]:
                tokens.append(str(piece))
                positions.append(rank * max_length + j)
    if not tokens:  # an empty text for a tokenizer without special tokens: the backbone attends position 0
        tokens, positions = [str(tokenizer.convert_ids_to_tokens(ids[0][:1])[0])], [0]
    return tokens, positions


def _text_limits(model: nn.Module, max_chunks: int | None, max_chars: int | None) -> tuple[int, int]:
    """``(max_chunks, max_chars)`` per text: the arguments, else the model's recorded ``max_chunks``
    (preprocessing, then backbone spec), else :data:`DEFAULT_MAX_CHUNKS`; ``max_chars`` defaults to what
    ``max_chunks`` chunks can hold at 16 characters per token."""
    recorded = (getattr(model, "pretrained_cfg", None) or {}).get("preprocessing") or {}
    if max_chunks is None:
        max_chunks = recorded.get("max_chunks") or model.backbone_spec.get("max_chunks") or DEFAULT_MAX_CHUNKS
    if isinstance(max_chunks, bool) or not isinstance(max_chunks, int) or max_chunks < 1:
        raise ValueError(f"max_chunks: expected an int >= 1, got {max_chunks!r}")
    if max_chars is None:
        max_chars = max_chunks * int(model.backbone.max_length) * _CHARS_PER_TOKEN
    if isinstance(max_chars, bool) or not isinstance(max_chars, int) or max_chars < 1:
        raise ValueError(f"max_chars: expected an int >= 1, got {max_chars!r}")
    return max_chunks, max_chars


def _fit_text(backbone: Any, text: str, max_chunks: int, max_chars: int) -> tuple[str, str | None]:
    """``(text, note)``: the text cut to ``max_chars`` characters; the note says what was dropped (or None).
    The backbone itself keeps at most ``max_chunks`` chunks (see :func:`predict`)."""
    notes = []
    if len(text) > max_chars:
        notes.append(f"cut from {len(text)} to {max_chars} characters (max_chars)")
        text = text[:max_chars]
    enc = backbone.tokenizer(
        [text], max_length=backbone.max_length, truncation=True, return_overflowing_tokens=True
    )
    n_chunks = len(enc["input_ids"])
    if n_chunks > max_chunks:
        notes.append(
            f"{n_chunks} chunks of {backbone.max_length} tokens, only the first {max_chunks} used (max_chunks)"
        )
    return text, "; ".join(notes) or None
