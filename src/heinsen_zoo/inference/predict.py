"""The batched prediction loop: :func:`predict` (see :mod:`heinsen_zoo.inference` for the inputs it takes)."""

from __future__ import annotations

import math
import os
import sys
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from heinsen_zoo.labels import SMALLNORB_LABELS

from .inputs import (
    InputTruncatedWarning,
    _image_items,
    _Item,
    _load_image,
    _norb_items,
    _read_text,
    _stereo_tensor,
    _text_items,
)
from .preprocessing import image_transform
from .results import Prediction, _shorten
from .text import _fit_text, _text_limits, text_tokens


def _model_kind(model: nn.Module) -> str:
    """``"text"``, ``"vision"`` or ``"norb"``: what the model's family (its zoo architecture record) takes."""
    from heinsen_zoo.zoo.architectures import architecture_for_model

    arch = architecture_for_model(model, bare=False)
    if arch is None or arch.input_kind is None:
        raise TypeError(
            f"model: expected a RoutingClassifier or a SmallNORBClassifier, got {type(model).__name__}"
        )
    return arch.input_kind(model)


def _labels(model: nn.Module, n_classes: int, kind: str) -> list[str]:
    labels = getattr(model, "labels", None) or (getattr(model, "pretrained_cfg", None) or {}).get("labels")
    if labels is None and kind == "norb" and n_classes == len(SMALLNORB_LABELS):
        labels = list(SMALLNORB_LABELS)
    if labels is None:
        return [str(i) for i in range(n_classes)]
    if len(labels) != n_classes:
        raise ValueError(f"model: {len(labels)} labels for {n_classes} classes")
    return [str(label) for label in labels]


def _device(device: str | torch.device) -> torch.device:
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"device: expected 'cpu', 'cuda' or 'cuda:N', got {device!r}") from err
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device: 'cuda' requested but no CUDA GPU is available (use --device cpu)")
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"device: expected 'cpu' or 'cuda', got {str(device)!r}")
    return device


def _batches(items: list[_Item], batch_size: int, progress: bool) -> Iterator[list[_Item]]:
    from tqdm.auto import tqdm

    starts = range(0, len(items), batch_size)
    bar = tqdm(starts, desc="predict", unit="batch", file=sys.stderr, disable=not progress, leave=False)
    for start in bar:
        yield items[start : start + batch_size]


def _prefix_tokens(backbone: Any, n_pos: int) -> int:
    """Class/distillation tokens in front of the patches (1 for BEiT/ViT)."""
    model = getattr(backbone, "model", None)
    known = getattr(model, "num_prefix_tokens", None)
    candidates = [int(known)] if isinstance(known, int) else [1, 0, 2]
    for p in candidates:
        grid = math.isqrt(max(n_pos - p, 0))
        if grid > 0 and grid * grid == n_pos - p:
            return p
    raise ValueError(f"explain: {n_pos} image positions do not form a square patch grid (plus class tokens)")


def predict(
    model: nn.Module | str | os.PathLike,
    inputs: Any,
    top_k: int = 5,
    batch_size: int = 8,
    device: str | torch.device = "cpu",
    explain_dir: str | os.PathLike | None = None,
    force_text: bool = False,
    progress: bool | None = None,
    max_chunks: int | None = None,
    max_chars: int | None = None,
    on_long: str = "truncate",
) -> list[Prediction]:
    """Top-k predictions of ``model`` for ``inputs`` (see the module docstring for what inputs may be).

    Args:
        model: a RoutingClassifier, a SmallNORBClassifier, or a registry name / export directory to load.
        inputs: one input or a list of them.
        top_k: classes reported per input (capped at the number of classes).
        batch_size: inputs per forward pass.
        device: "cpu" or "cuda" (the model is moved there).
        explain_dir: when set, write a credit-assignment PNG per input there (routing-head models).
        force_text: treat every string as text, even when it names a file.
        progress: a tqdm bar on stderr; None = only when there is more than one batch.
        max_chunks: text models: chunks of ``max_length`` tokens kept per text (the cost of one input is
            bounded by it); default the model's recorded ``max_chunks``, else :data:`DEFAULT_MAX_CHUNKS`.
        max_chars: text models: characters read per text (files are read no further); default what
            ``max_chunks`` chunks can hold. Truncations are reported (:class:`InputTruncatedWarning`, and
            ``Prediction.note``).
        on_long: text models: what a text over those limits gets: ``"truncate"`` (its first chunks are
            predicted, the truncation reported) or ``"error"`` (ValueError naming the input; for pipelines
            that must score whole texts).
    """
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
        raise ValueError(f"top_k: expected an int >= 1, got {top_k!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size: expected an int >= 1, got {batch_size!r}")
    if on_long not in ("truncate", "error"):
        raise ValueError(f"on_long: expected 'truncate' or 'error', got {on_long!r}")
    device = _device(device)
    if isinstance(model, (str, os.PathLike)):
        from heinsen_zoo.zoo.hub import from_pretrained

        model = from_pretrained(os.fspath(model), map_location=device)
    kind = _model_kind(model)
    if force_text and kind != "text":
        raise ValueError(f"force_text (--text): the model is a {kind} model, not a text model")
    if explain_dir is not None and kind == "norb":
        raise ValueError(
            "explain (--explain): credit assignment is drawn for routing-head models (SPEC §4); the 2019 smallNORB "
            "model has none"
        )
    single = isinstance(inputs, (str, os.PathLike, torch.Tensor)) or (
        kind == "norb" and isinstance(inputs, tuple)
    )
    if single or (not isinstance(inputs, Sequence) and hasattr(inputs, "mode") and hasattr(inputs, "size")):
        inputs = [inputs]  # one input (a PIL image, a path, a text, a tensor, a stereo pair)
    inputs = list(inputs)
    if not inputs:
        raise ValueError("inputs: expected at least one input, got none")
    items = {"text": lambda: _text_items(inputs, force_text), "vision": lambda: _image_items(inputs),
             "norb": lambda: _norb_items(inputs)}[kind]()  # fmt: skip
    model = model.to(device).eval()
    if kind == "norb":
        n_classes = int(model.n_objs)
    else:
        n_classes = int(model.n_classes)
    labels = _labels(model, n_classes, kind)
    k = min(top_k, n_classes)
    explain_path = Path(explain_dir) if explain_dir is not None else None
    if explain_path is not None:
        if explain_path.exists() and not explain_path.is_dir():
            raise ValueError(
                f"explain (--explain): {str(explain_path)!r} exists and is not a folder; name a folder"
            )
        explain_path.mkdir(parents=True, exist_ok=True)
    transform = params = None
    if kind == "vision":
        recorded = (getattr(model, "pretrained_cfg", None) or {}).get("preprocessing")
        if not recorded:
            warnings.warn(
                "predict: the model records no image preprocessing; using SPEC §5's evaluation transform "
                "(resize 224/0.9 bicubic, centre crop 224, mean = std = 0.5)",
                stacklevel=2,
            )
        transform, params = image_transform(recorded)
    text_cleanup = ()
    backbone = None
    if kind == "text":
        text_cleanup = tuple(
            (getattr(model, "pretrained_cfg", None) or {}).get("preprocessing", {}).get("text_cleanup") or ()
        )
        max_chunks, max_chars = _text_limits(model, max_chunks, max_chars)
        backbone = model.backbone
        saved_chunks = backbone.max_chunks
        backbone.max_chunks = max_chunks if saved_chunks is None else min(saved_chunks, max_chunks)
    try:
        return _predict_batches(model, items, kind, labels, k, batch_size, device, progress, explain_path,
                                transform, params, text_cleanup, max_chars, on_long)  # fmt: skip
    finally:
        if backbone is not None:
            backbone.max_chunks = saved_chunks


def _predict_batches(
    model: nn.Module, items: list[_Item], kind: str, labels: list[str], k: int, batch_size: int,
    device: torch.device, progress: bool | None, explain_path: Path | None, transform: Any, params: Any,
    text_cleanup: tuple[str, ...], max_chars: int | None, on_long: str,
) -> list[Prediction]:  # fmt: skip
    """The batched forward passes of :func:`predict` (inputs read lazily, one batch at a time)."""

    show = progress if progress is not None else len(items) > batch_size
    predictions: list[Prediction] = []
    with torch.no_grad():
        for batch in _batches(items, batch_size, show):
            if kind == "norb":
                images = torch.stack([_stereo_tensor(item) for item in batch]).to(device)
                logits = model(images)[0]
                credit = None
            else:
                if kind == "vision":
                    raw = torch.stack([transform(_load_image(item)) for item in batch])
                    key, value = "image", raw.to(device)
                else:
                    texts = [
                        _read_text(i.payload, max_chars) if isinstance(i.payload, Path) else i.payload
                        for i in batch
                    ]
                    if "imdb_br_to_newline" in text_cleanup:
                        from heinsen_zoo.data.text import clean_imdb_text

                        texts = [clean_imdb_text(t) for t in texts]
                    notes = []
                    for j, text in enumerate(texts):
                        texts[j], note = _fit_text(model.backbone, text, model.backbone.max_chunks, max_chars)
                        notes.append(note)
                        if note and on_long == "error":
                            raise ValueError(
                                f"input {batch[j].input_id!r} is longer than the model reads: {note}; nothing was "
                                "predicted (on_long='error': raise max_chunks / max_chars, or truncate)"
                            )
                        elif note:
                            warnings.warn(
                                f"input {batch[j].input_id!r}: {note}", InputTruncatedWarning, stacklevel=3
                            )
                    key, value = "text", texts
                hidden, head_mask = model.encode({key: value})  # the model's padding policy
                if explain_path is not None:
                    from heinsen_zoo.explain import head_credit

                    out = head_credit(model.head, hidden, head_mask)
                    logits, credit = out["logits"], out["credit"].cpu()
                else:
                    logits, credit = model.classify(hidden, head_mask), None
            probs = torch.softmax(logits.float(), dim=-1).cpu()
            top_p, top_i = probs.topk(k, dim=-1)
            for b, item in enumerate(batch):
                index = len(predictions)
                classes = top_i[b].tolist()
                pred = Prediction(
                    input_id=item.input_id,
                    top_k=[(labels[c], float(p)) for c, p in zip(classes, top_p[b].tolist(), strict=True)],
                    class_indices=classes,
                    index=index,
                    note=notes[b] if kind == "text" else None,
                )
                if credit is not None:
                    path = explain_path / f"{index:04d}_{item.slug}.png"
                    title = f"{_shorten(item.input_id, 70)} → {pred.label} ({pred.probability:.1%})"
                    per_class = credit[b, :, :, classes[0]]  # [n_pos, depth]
                    if kind == "vision":
                        _plot_image(model, raw[b], per_class, params, path, title)
                    else:
                        _plot_text(model, value[b], per_class, path, title)
                    pred.explanation = str(path)
                predictions.append(pred)
    return predictions


def _plot_image(
    model: Any, image: torch.Tensor, credit: torch.Tensor, params: dict, path: Path, title: str
) -> None:
    from heinsen_zoo.explain import plot_image_credit

    mean = torch.tensor(params["mean"])[:, None, None]
    std = torch.tensor(params["std"])[:, None, None]
    pixels = (image.cpu() * std + mean).clamp(0, 1)  # [3, H, W] in [0, 1]
    n_prefix = _prefix_tokens(model.backbone, credit.shape[0])
    if n_prefix > 1:  # keep one leading row for plot_image_credit to drop
        credit = credit[n_prefix - 1 :]
    plot_image_credit(pixels, credit, path, title=title, has_class_token=n_prefix > 0, mean=0.0, std=1.0)


def _plot_text(model: Any, text: str, credit: torch.Tensor, path: Path, title: str) -> None:
    from heinsen_zoo.explain import plot_text_credit

    tokens, positions = text_tokens(model.backbone, text)
    if positions[-1] >= credit.shape[0]:
        raise RuntimeError(
            f"explain: token position {positions[-1]} beyond the {credit.shape[0]} hidden-state positions"
        )
    scores = credit[positions].sum(-1)  # [n_tokens], summed over depth
    plot_text_credit(tokens, scores, path, title=title)
