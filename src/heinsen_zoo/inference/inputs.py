"""Expand prediction inputs (paths, folders, PIL images, tensors, texts, NORB files) into items read lazily."""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .results import _shorten

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")
TEXT_SUFFIXES = (".txt",)
NORB_SUFFIXES = ("-dat.mat", "-dat.mat.gz")
_NORB_SIZE = 96


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
