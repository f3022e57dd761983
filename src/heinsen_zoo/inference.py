"""Predict with a zoo model: images, texts or smallNORB stereo pairs in, top-k classes out (optionally explained).

:func:`predict` takes a :class:`~heinsen_zoo.model.RoutingClassifier` (or a registry name / export directory,
loaded with :func:`heinsen_zoo.zoo.hub.from_pretrained`) or the 2019 :class:`~heinsen_zoo.capsules2019.
SmallNORBClassifier`, and a list of inputs:

* vision models: image file paths, folders (searched recursively, files sorted), PIL images, or image tensors
  ``[3, H, W]`` / ``[B, 3, H, W]`` (uint8 in [0, 255] or float in [0, 1], not yet normalised). Every image goes
  through the model's recorded evaluation preprocessing (``pretrained_cfg["preprocessing"]`` / config.json):
  square resize to ``resize`` (or ``floor(image_size / crop_pct)``) with ``interpolation``, centre crop
  ``center_crop`` (or ``image_size``), normalisation with ``mean`` / ``std``. Fields that are not recorded fall
  back to SPEC §5's evaluation transform: resize 224/0.9 bicubic, centre crop 224, mean = std = 0.5.
* text models: strings, or ``.txt`` files / folders of them (a string naming an existing file or folder is
  read from it; a string that looks like a path — no spaces, ending in ``.txt`` or holding a path separator —
  must exist; ``force_text=True`` treats every string as text). The backbone tokenizes and chunks (SPEC §5);
  a recorded ``text_cleanup`` of ``imdb_br_to_newline`` is applied first.
* smallNORB (2019): NORB ``*-dat.mat[.gz]`` files (every stereo pair in them, read with
  :func:`heinsen_zoo.data.smallnorb.read_norb_matrix`), pairs of 96×96 grey PNGs (consecutive PNG inputs are
  (left, right) pairs; folders give their PNGs sorted), ``(left, right)`` tuples, or tensors ``[2, 96, 96]`` /
  ``[N, 2, 96, 96]`` (uint8, or float in [0, 1]). Pixels are divided by 255, as in training.

Returns one :class:`Prediction` per input (its id and the top-k ``(label, probability)``), rendered by
:func:`format_table` or :func:`format_json`.

``explain_dir`` writes, per input, a PNG of the end-to-end credit assignment of the predicted class (SPEC §4,
:mod:`heinsen_zoo.explain`): for images the patch-credit heatmap over the image and the depth × patch map
(class token dropped); for texts the credit of every token drawn on the token (chunks of long texts
concatenated, padding left out).

Command line: ``heinsen-zoo infer MODEL INPUT... [--top-k 5] [--json] [--explain DIR] [--batch-size 8]
[--device cpu|cuda] [--text]``.

Example:
    >>> import torch
    >>> from heinsen_zoo.model import RoutingClassifier
    >>> spec = {"source": "timm", "id": "vit_tiny_patch16_224", "revision": None, "kind": "vision",
    ...         "pretrained": False, "model_kwargs": {"img_size": 32, "depth": 1, "embed_dim": 16, "num_heads": 2}}
    >>> model = RoutingClassifier(spec, n_classes=3, d_depth=2, d_emb=16, n_hid=4, labels=["a", "b", "c"])
    >>> model.pretrained_cfg = {"preprocessing": {"image_size": 32, "crop_pct": 1.0}}
    >>> preds = predict(model, [torch.rand(3, 40, 48), torch.rand(3, 32, 32)], top_k=2)
    >>> len(preds), len(preds[0].top_k), preds[0].label in ("a", "b", "c")
    (2, 2, True)
    >>> print(format_table(preds).splitlines()[0].split())
    ['#', 'input', 'top-1', 'top-2']
"""

from __future__ import annotations

import json
import math
import os
import re
import sys
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

__all__ = [
    "DEFAULT_MAX_CHUNKS",
    "IMAGE_SUFFIXES",
    "InputTruncatedWarning",
    "Prediction",
    "SPEC_EVAL_PREPROCESSING",
    "format_json",
    "format_table",
    "image_transform",
    "predict",
    "resolve_image_preprocessing",
    "text_tokens",
]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")
TEXT_SUFFIXES = (".txt",)
NORB_SUFFIXES = ("-dat.mat", "-dat.mat.gz")

#: SPEC §5's ImageNet evaluation transform, the fallback for every field a model does not record.
SPEC_EVAL_PREPROCESSING: dict[str, Any] = {
    "image_size": 224,
    "crop_pct": 0.9,
    "interpolation": "bicubic",
    "mean": [0.5, 0.5, 0.5],
    "std": [0.5, 0.5, 0.5],
}
#: Chunks per text when neither the call, the model's preprocessing nor its backbone spec sets ``max_chunks``.
DEFAULT_MAX_CHUNKS = 8
_CHARS_PER_TOKEN = 16  # generous: texts longer than max_chunks * max_length * 16 characters cannot fit anyway
_SMALLNORB_LABELS = ("animal", "human", "airplane", "truck", "car")  # smallNORB categories 0..4
_NORB_SIZE = 96


# --------------------------------------------------------------------------------------------- results


@dataclass
class Prediction:
    """The top-k classes of one input.

    Attributes:
        input_id: where the input came from (a file path, ``file[row]`` for NORB rows, ``text[3]: …`` for
            literal strings, ``tensor[0]`` / ``image[0]`` for in-memory inputs).
        top_k: ``(label, probability)`` pairs, most probable first.
        class_indices: the class index of each ``top_k`` entry.
        index: position of the input in the expanded input list.
        explanation: path of the credit-assignment PNG (with ``explain_dir``), else None.
    """

    input_id: str
    top_k: list[tuple[str, float]]
    class_indices: list[int]
    index: int
    explanation: str | None = None
    note: str | None = None  # e.g. how a long text was truncated

    @property
    def label(self) -> str:
        """The predicted (top-1) label."""
        return self.top_k[0][0]

    @property
    def probability(self) -> float:
        """The probability of the predicted label."""
        return self.top_k[0][1]

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict: ``input``, ``index``, ``top_k`` (label, class_index, probability), ``explanation``."""
        return {
            "input": self.input_id,
            "index": self.index,
            "top_k": [
                {"label": label, "class_index": k, "probability": prob}
                for (label, prob), k in zip(self.top_k, self.class_indices, strict=True)
            ],
            "explanation": self.explanation,
            "note": self.note,
        }


def format_json(predictions: Sequence[Prediction], indent: int | None = 2) -> str:
    """A JSON list with one object per prediction (see :meth:`Prediction.to_dict`)."""
    return json.dumps([p.to_dict() for p in predictions], indent=indent, ensure_ascii=False)


def _shorten(text: str, width: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def _shorten_id(input_id: str, width: int) -> str:
    """Texts keep their start; file ids keep their end (the file name)."""
    if input_id.startswith("text[") or len(input_id) <= width:
        return _shorten(input_id, width)
    return "…" + input_id[-(width - 1) :]


def format_table(predictions: Sequence[Prediction], input_width: int = 48) -> str:
    """A plain-text table: one row per input, one column per rank (``label probability%``)."""
    if not predictions:
        return "(no inputs)"
    k = max(len(p.top_k) for p in predictions)
    rows = [["#", "input", *[f"top-{r + 1}" for r in range(k)]]]
    for p in predictions:
        cells = [f"{label} {prob:.1%}" for label, prob in p.top_k]
        rows.append([str(p.index), _shorten_id(p.input_id, input_width), *cells, *[""] * (k - len(cells))])
    widths = [max(len(row[c]) for row in rows) for c in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows]
    explained = [p for p in predictions if p.explanation]
    if explained:
        lines.append(
            f"credit assignment written for {len(explained)} input(s) to {Path(explained[0].explanation).parent}"
        )
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------- preprocessing


def _as_triple(name: str, value: Any) -> list[float]:
    values = [float(value)] * 3 if isinstance(value, (int, float)) else [float(v) for v in value]
    if len(values) == 1:
        values = values * 3
    if len(values) != 3 or not all(math.isfinite(v) for v in values):
        raise ValueError(f"preprocessing[{name!r}]: expected 1 or 3 finite numbers, got {value!r}")
    if name == "std" and any(v <= 0 for v in values):
        raise ValueError(f"preprocessing['std']: expected positive values, got {value!r}")
    return values


def resolve_image_preprocessing(preprocessing: Mapping[str, Any] | None) -> dict[str, Any]:
    """The evaluation transform's parameters: ``resize`` (square side), ``crop`` (or None), ``interpolation``,
    ``mean``, ``std``.

    Understands the registry's fields (``image_size``, ``crop_pct``, ``interpolation``, ``mean``, ``std``),
    :func:`heinsen_zoo.data.transforms.preprocessing_config`'s (``resize``, ``center_crop``) and timm's data
    config (``input_size`` [3, H, W]). Missing fields take SPEC §5's values (:data:`SPEC_EVAL_PREPROCESSING`).

    Example:
        >>> resolve_image_preprocessing(None)["resize"], resolve_image_preprocessing(None)["crop"]
        (248, 224)
        >>> resolve_image_preprocessing({"image_size": 32, "crop_pct": 1.0})["resize"]
        32
    """
    cfg = dict(preprocessing or {})
    out: dict[str, Any] = {
        "interpolation": str(cfg.get("interpolation") or SPEC_EVAL_PREPROCESSING["interpolation"]).lower(),
        "mean": _as_triple("mean", cfg.get("mean", SPEC_EVAL_PREPROCESSING["mean"])),
        "std": _as_triple("std", cfg.get("std", SPEC_EVAL_PREPROCESSING["std"])),
    }
    resize = cfg.get("resize")
    if isinstance(resize, (int, float)) and not isinstance(resize, bool):
        crop = cfg.get("center_crop")
        out["resize"], out["crop"] = int(resize), (int(crop) if crop is not None else None)
    else:
        size = cfg.get("image_size")
        if size is None and isinstance(cfg.get("input_size"), (list, tuple)):
            size = cfg["input_size"][-1]
        size = int(size if size is not None else SPEC_EVAL_PREPROCESSING["image_size"])
        crop_pct = float(cfg.get("crop_pct") or SPEC_EVAL_PREPROCESSING["crop_pct"])
        if size < 1 or not 0.0 < crop_pct <= 1.0:
            raise ValueError(
                f"preprocessing: expected image_size >= 1 and crop_pct in (0, 1], got {size}, {crop_pct}"
            )
        out["resize"], out["crop"] = int(math.floor(size / crop_pct + 1e-9)), size
    return out


def image_transform(
    preprocessing: Mapping[str, Any] | None,
) -> tuple[Callable[[Any], torch.Tensor], dict[str, Any]]:
    """``(transform, params)``: transform maps a PIL image or an image tensor ``[3, H, W]`` (uint8, or float in
    [0, 1]) to the normalised model input ``[3, S, S]``; params from :func:`resolve_image_preprocessing`.

    Example:
        >>> import torch
        >>> transform, params = image_transform({"image_size": 16, "crop_pct": 0.8})
        >>> transform(torch.rand(3, 30, 40)).shape, params["resize"]
        (torch.Size([3, 16, 16]), 20)
    """
    from torchvision.transforms import v2 as T

    params = resolve_image_preprocessing(preprocessing)
    name = params["interpolation"].upper()
    if name not in T.InterpolationMode.__members__:
        known = sorted(m.lower() for m in T.InterpolationMode.__members__)
        raise ValueError(
            f"preprocessing['interpolation']: expected one of {known}, got {params['interpolation']!r}"
        )
    steps = [T.Resize((params["resize"],) * 2, interpolation=T.InterpolationMode[name], antialias=True)]
    if params["crop"] is not None:
        steps.append(T.CenterCrop(params["crop"]))
    steps.append(T.Normalize(params["mean"], params["std"]))
    pipeline = T.Compose(steps)

    def transform(image: Any) -> torch.Tensor:
        return pipeline(_image_to_tensor(image))

    return transform, params


def _image_to_tensor(image: Any) -> torch.Tensor:
    """A PIL image or an image tensor → float ``[3, H, W]`` in [0, 1]."""
    if isinstance(image, torch.Tensor):
        if image.dim() != 3 or image.shape[0] not in (1, 3):
            raise ValueError(
                f"image tensor: expected shape [3, H, W] (or [1, H, W]), got {list(image.shape)}"
            )
        if image.dtype == torch.uint8:
            image = image.float() / 255.0
        elif not image.is_floating_point():
            raise TypeError(f"image tensor: expected uint8 or a floating dtype, got {image.dtype}")
        if not bool(torch.isfinite(image).all()):
            raise ValueError("image tensor: holds NaN/inf values")
        image = image.float().cpu()
        return image.expand(3, *image.shape[1:]) if image.shape[0] == 1 else image
    from PIL import Image
    from torchvision.transforms.functional import pil_to_tensor

    if not isinstance(image, Image.Image):
        raise TypeError(
            f"image: expected a PIL image, a tensor [3, H, W] or a file path, got {type(image).__name__}"
        )
    return pil_to_tensor(image.convert("RGB")).float() / 255.0


# --------------------------------------------------------------------------------------------- inputs


@dataclass
class _Item:
    input_id: str
    payload: Any  # a Path (to read lazily), a PIL image, a tensor, a str, or (array, row) for NORB rows
    slug: str = field(default="input")


def _tensor_items(k: int, x: torch.Tensor) -> list[_Item]:
    """Input tensor ``k``: one item, or one per sample when it carries a batch dim ([B, C, H, W])."""
    if x.dim() == 4:
        return [_Item(f"tensor[{k}][{b}]", x[b], f"tensor{k}_{b}") for b in range(x.shape[0])]
    return [_Item(f"tensor[{k}]", x, f"tensor{k}")]


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_.")[:40] or "input"


def _files_under(path: Path, suffixes: Sequence[str], what: str) -> list[Path]:
    """``path`` itself, or the files under the folder ``path`` (recursively, sorted) ending in ``suffixes``."""
    if path.is_dir():
        found = sorted(p for p in path.rglob("*") if p.is_file() and p.name.lower().endswith(tuple(suffixes)))
        if not found:
            raise FileNotFoundError(
                f"input {str(path)!r}: folder holds no {what} files (looked for {', '.join(suffixes)})"
            )
        return found
    if path.is_file():
        return [path]
    raise FileNotFoundError(f"input {str(path)!r}: no such file or folder")


def _looks_like_path(text: str) -> bool:
    return (
        "\n" not in text
        and (text.lower().endswith(TEXT_SUFFIXES) or os.sep in text)
        and " " not in text.strip()
    )


def _text_items(inputs: Sequence[Any], force_text: bool) -> list[_Item]:
    items: list[_Item] = []
    for k, x in enumerate(inputs):
        if isinstance(x, str) and (force_text or not (os.path.exists(x) or _looks_like_path(x))):
            items.append(_Item(f"text[{k}]: {_shorten(x, 60)}", x, f"text{k}"))
        elif isinstance(x, (str, os.PathLike)):
            for path in _files_under(Path(x), TEXT_SUFFIXES, "text"):
                items.append(_Item(str(path), path, _slug(path.stem)))
        else:
            raise TypeError(
                f"inputs[{k}]: expected a str (text or .txt path) for a text model, got {type(x).__name__}"
            )
    return items


class InputTruncatedWarning(UserWarning):
    """A text input longer than the model's ``max_chunks`` (or ``max_chars``) was truncated to fit."""


def _read_text(path: Path, max_chars: int | None = None) -> str:
    """A UTF-8 text file; with ``max_chars`` only its first ``4 * max_chars + 4`` bytes are read (decoded
    up to the last complete character), so a huge file costs no more than a text that fits."""
    import codecs

    try:
        with path.open("rb") as handle:
            data = handle.read() if max_chars is None else handle.read(4 * max_chars + 4)
            complete = max_chars is None or not handle.read(1)
        return codecs.getincrementaldecoder("utf-8")().decode(data, final=complete)
    except UnicodeDecodeError as err:
        raise ValueError(f"input {str(path)!r}: not a UTF-8 text file ({err})") from err


def _image_items(inputs: Sequence[Any]) -> list[_Item]:
    from PIL import Image

    items: list[_Item] = []
    for k, x in enumerate(inputs):
        if isinstance(x, (str, os.PathLike)):
            for path in _files_under(Path(x), IMAGE_SUFFIXES, "image"):
                items.append(_Item(str(path), path, _slug(path.stem)))
        elif isinstance(x, Image.Image):
            items.append(_Item(f"image[{k}]", x, f"image{k}"))
        elif isinstance(x, torch.Tensor):
            items += _tensor_items(k, x)
        else:
            raise TypeError(
                f"inputs[{k}]: expected an image path, a folder, a PIL image or a tensor [3, H, W] for a vision "
                f"model, got {type(x).__name__}"
            )
    return items


def _load_image(item: _Item) -> Any:
    if not isinstance(item.payload, Path):
        return item.payload
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(item.payload) as image:
            return image.convert("RGB")
    except (UnidentifiedImageError, OSError) as err:
        raise ValueError(f"input {item.input_id!r}: not a readable image ({err})") from err


def _grey_png(path: Path) -> Any:
    import numpy as np
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            array = np.asarray(image.convert("L"), dtype=np.uint8)
    except (UnidentifiedImageError, OSError) as err:
        raise ValueError(f"input {str(path)!r}: not a readable image ({err})") from err
    if array.shape != (_NORB_SIZE, _NORB_SIZE):
        raise ValueError(
            f"input {str(path)!r}: expected a {_NORB_SIZE}×{_NORB_SIZE} grey image (one view of a smallNORB stereo "
            f"pair), got {array.shape[1]}×{array.shape[0]}; resize it first"
        )
    return array


def _norb_items(inputs: Sequence[Any]) -> list[_Item]:
    """Stereo-pair items; payload = uint8/float array or tensor [2, H, W] (or a pair of PNG paths)."""
    from heinsen_zoo.data.smallnorb import read_norb_matrix

    items: list[_Item] = []
    pngs: list[Path] = []
    for k, x in enumerate(inputs):
        if isinstance(x, (str, os.PathLike)):
            for path in _files_under(Path(x), (*NORB_SUFFIXES, ".png"), "smallNORB (-dat.mat[.gz] or .png)"):
                if path.name.lower().endswith(".png"):
                    pngs.append(path)
                    continue
                array = read_norb_matrix(path)
                if array.ndim != 4 or array.shape[1] != 2:
                    raise ValueError(
                        f"input {str(path)!r}: expected a NORB 'dat' matrix of stereo pairs [N, 2, 96, 96], got "
                        f"{array.dtype} {list(array.shape)} (a -cat or -info file?)"
                    )
                items += [
                    _Item(f"{path}[{row}]", (array, row), f"{_slug(path.name)}_{row}")
                    for row in range(len(array))
                ]
        elif isinstance(x, tuple) and len(x) == 2:
            items.append(_Item(f"pair[{k}]", x, f"pair{k}"))
        elif isinstance(x, torch.Tensor):
            items += _tensor_items(k, x)
        else:
            raise TypeError(
                f"inputs[{k}]: expected a NORB -dat.mat[.gz] file, PNG paths (left, right), a folder, a (left, right) "
                f"tuple or a tensor [2, 96, 96] for a smallNORB model, got {type(x).__name__}"
            )
    if len(pngs) % 2:
        raise ValueError(
            f"inputs: smallNORB PNG inputs come in (left, right) pairs, got {len(pngs)} PNG files: "
            f"{[str(p) for p in pngs][:6]}"
        )
    for left, right in zip(pngs[0::2], pngs[1::2], strict=True):
        items.append(_Item(f"{left}+{right.name}", (left, right), _slug(left.stem)))
    return items


def _stereo_tensor(item: _Item) -> torch.Tensor:
    """float [2, H, W] in [0, 1] of one stereo-pair item."""
    import numpy as np

    payload = item.payload
    if isinstance(payload, tuple) and len(payload) == 2 and not isinstance(payload[1], int):
        views = []
        for view in payload:
            if isinstance(view, (str, os.PathLike)):
                views.append(torch.from_numpy(_grey_png(Path(view)).copy()))
            else:
                from PIL import Image

                if isinstance(view, Image.Image):
                    view = torch.from_numpy(np.asarray(view.convert("L"), dtype=np.uint8).copy())
                if not isinstance(view, torch.Tensor) or view.dim() != 2:
                    raise ValueError(f"input {item.input_id!r}: each view must be a grey image [H, W]")
                views.append(view)
        if views[0].shape != views[1].shape:
            raise ValueError(f"input {item.input_id!r}: left and right views differ in size")
        payload = torch.stack(views)
    elif isinstance(payload, tuple):
        array, row = payload
        payload = torch.from_numpy(np.array(array[row]))
    if not isinstance(payload, torch.Tensor) or payload.dim() != 3 or payload.shape[0] != 2:
        shape = list(payload.shape) if isinstance(payload, torch.Tensor) else type(payload).__name__
        raise ValueError(f"input {item.input_id!r}: expected a stereo pair [2, H, W], got {shape}")
    if payload.dtype == torch.uint8:
        return payload.float() / 255.0
    if not payload.is_floating_point():
        raise TypeError(f"input {item.input_id!r}: expected uint8 or float pixels, got {payload.dtype}")
    return payload.float()


# --------------------------------------------------------------------------------------------- tokens


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


# --------------------------------------------------------------------------------------------- predict


def _model_kind(model: nn.Module) -> str:
    from heinsen_zoo.capsules2019 import SmallNORBClassifier, SSTClassifier
    from heinsen_zoo.model import RoutingClassifier

    if isinstance(model, RoutingClassifier):
        kind = model.backbone_spec.get("kind")
        if kind not in ("text", "vision"):
            raise ValueError(f"model: backbone kind must be 'text' or 'vision', got {kind!r}")
        return kind
    if isinstance(model, SmallNORBClassifier):
        return "norb"
    if isinstance(model, SSTClassifier):
        raise ValueError(
            "model: the 2019 SST capsule models classify GPT-2-large hidden states, not raw text; predict supports "
            "routing-head models and the 2019 smallNORB model"
        )
    raise TypeError(
        f"model: expected a RoutingClassifier or a SmallNORBClassifier, got {type(model).__name__}"
    )


def _labels(model: nn.Module, n_classes: int, kind: str) -> list[str]:
    labels = getattr(model, "labels", None) or (getattr(model, "pretrained_cfg", None) or {}).get("labels")
    if labels is None and kind == "norb" and n_classes == len(_SMALLNORB_LABELS):
        labels = list(_SMALLNORB_LABELS)
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
    """
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
        raise ValueError(f"top_k: expected an int >= 1, got {top_k!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size: expected an int >= 1, got {batch_size!r}")
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
                                transform, params, text_cleanup, max_chars)  # fmt: skip
    finally:
        if backbone is not None:
            backbone.max_chunks = saved_chunks


def _predict_batches(
    model: nn.Module, items: list[_Item], kind: str, labels: list[str], k: int, batch_size: int,
    device: torch.device, progress: bool | None, explain_path: Path | None, transform: Any, params: Any,
    text_cleanup: tuple[str, ...], max_chars: int | None,
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
                        if note:
                            warnings.warn(
                                f"input {batch[j].input_id!r}: {note}", InputTruncatedWarning, stacklevel=3
                            )
                    key, value = "text", texts
                hidden, padding_mask = model.hidden_states({key: value})
                head_mask = padding_mask if model.padding == "mask" else None
                if explain_path is not None:
                    from heinsen_zoo.explain import head_credit

                    out = head_credit(model.head, hidden, head_mask)
                    logits, credit = out["logits"], out["credit"].cpu()
                else:
                    logits, credit = model.head(hidden, head_mask), None
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
