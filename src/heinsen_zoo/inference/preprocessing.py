"""The evaluation image transform a zoo model records (or SPEC §5's fallback), for prediction."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import torch

#: SPEC §5's ImageNet evaluation transform, the fallback for every field a model does not record.
SPEC_EVAL_PREPROCESSING: dict[str, Any] = {
    "image_size": 224,
    "crop_pct": 0.9,
    "interpolation": "bicubic",
    "mean": [0.5, 0.5, 0.5],
    "std": [0.5, 0.5, 0.5],
}


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
