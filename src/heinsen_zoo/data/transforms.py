"""Image preprocessing of the 2022 paper (SPEC §5), with the image size as a parameter.

* ImageNet: resize to a square of ``floor(image_size / crop_pct)`` pixels (224 / 0.9 -> 248) with bicubic
  interpolation; then a random ``image_size`` crop + RandAugment (train) or the centre ``image_size`` crop
  (eval).
* CIFAR: resize to ``image_size`` x ``image_size`` bicubic; RandAugment for train.
* Both: to a float tensor in [0, 1], then normalise with mean = std = 0.5 per channel (values in [-1, 1]).

RandAugment uses torchvision's defaults (2 ops, magnitude 9). :func:`preprocessing_config` gives the JSON-able
description that goes into an exported model's ``config.json`` ("preprocessing"); :func:`eval_transform_from_config`
rebuilds the evaluation transform from it (e.g. for the demo).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torchvision import transforms as T

__all__ = [
    "MEAN",
    "STD",
    "cifar_eval_transform",
    "cifar_train_transform",
    "eval_transform_from_config",
    "imagenet_eval_transform",
    "imagenet_train_transform",
    "preprocessing_config",
    "resize_size",
]

MEAN = (0.5, 0.5, 0.5)
STD = (0.5, 0.5, 0.5)
Transform = Callable[[Any], torch.Tensor]


def _check_size(image_size: object) -> int:
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size <= 0:
        raise ValueError(f"image_size must be a positive int, got {image_size!r}")
    return image_size


def resize_size(image_size: int = 224, crop_pct: float = 0.9) -> int:
    """Side of the square resize before cropping: ``floor(image_size / crop_pct)`` (224, 0.9 -> 248).

    Example:
        >>> resize_size(224, 0.9), resize_size(32, 0.9)
        (248, 35)
    """
    _check_size(image_size)
    if not 0.0 < float(crop_pct) <= 1.0:
        raise ValueError(f"crop_pct must be in (0, 1], got {crop_pct!r}")
    return int(math.floor(image_size / crop_pct + 1e-9))


def _finish() -> list[Transform]:
    return [T.ToTensor(), T.Normalize(MEAN, STD)]


def imagenet_train_transform(image_size: int = 224, crop_pct: float = 0.9, randaugment: bool = True) -> Transform:
    """PIL image -> FloatTensor [3, image_size, image_size]: square bicubic resize, random crop, RandAugment.

    Example:
        >>> from PIL import Image
        >>> imagenet_train_transform(32)(Image.new("RGB", (50, 40))).shape
        torch.Size([3, 32, 32])
    """
    side = resize_size(image_size, crop_pct)
    steps: list[Transform] = [
        T.Lambda(_to_rgb),
        T.Resize((side, side), interpolation=T.InterpolationMode.BICUBIC),
        T.RandomCrop(image_size),
    ]
    if randaugment:
        steps.append(T.RandAugment())
    return T.Compose(steps + _finish())


def imagenet_eval_transform(image_size: int = 224, crop_pct: float = 0.9) -> Transform:
    """PIL image -> FloatTensor [3, image_size, image_size]: square bicubic resize, centre crop.

    Example:
        >>> from PIL import Image
        >>> imagenet_eval_transform(32)(Image.new("RGB", (50, 40))).shape
        torch.Size([3, 32, 32])
    """
    side = resize_size(image_size, crop_pct)
    return T.Compose([
        T.Lambda(_to_rgb),
        T.Resize((side, side), interpolation=T.InterpolationMode.BICUBIC),
        T.CenterCrop(image_size),
        *_finish(),
    ])


def cifar_train_transform(image_size: int = 224, randaugment: bool = True) -> Transform:
    """PIL image -> FloatTensor [3, image_size, image_size]: bicubic resize, RandAugment.

    Example:
        >>> from PIL import Image
        >>> cifar_train_transform(16)(Image.new("RGB", (32, 32))).shape
        torch.Size([3, 16, 16])
    """
    size = _check_size(image_size)
    steps: list[Transform] = [T.Lambda(_to_rgb), T.Resize((size, size), interpolation=T.InterpolationMode.BICUBIC)]
    if randaugment:
        steps.append(T.RandAugment())
    return T.Compose(steps + _finish())


def cifar_eval_transform(image_size: int = 224) -> Transform:
    """PIL image -> FloatTensor [3, image_size, image_size]: bicubic resize.

    Example:
        >>> from PIL import Image
        >>> cifar_eval_transform(16)(Image.new("RGB", (32, 32))).shape
        torch.Size([3, 16, 16])
    """
    size = _check_size(image_size)
    return T.Compose([
        T.Lambda(_to_rgb),
        T.Resize((size, size), interpolation=T.InterpolationMode.BICUBIC),
        *_finish(),
    ])


def _to_rgb(image: Any) -> Any:
    """Convert PIL images of any mode (L, RGBA, P, CMYK) to RGB; leave other inputs untouched."""
    convert = getattr(image, "convert", None)
    if callable(convert) and getattr(image, "mode", "RGB") != "RGB":
        return convert("RGB")
    return image


def preprocessing_config(kind: str, image_size: int = 224, crop_pct: float = 0.9) -> dict[str, Any]:
    """JSON-able description of the evaluation preprocessing (for an exported model's config.json).

    Args:
        kind: "imagenet" (resize then centre crop) or "cifar" (resize only).

    Example:
        >>> preprocessing_config("imagenet")["resize"], preprocessing_config("cifar", 32)["resize"]
        (248, 32)
    """
    _check_size(image_size)
    if kind == "imagenet":
        resize, crop = resize_size(image_size, crop_pct), image_size
    elif kind == "cifar":
        resize, crop = image_size, None
    else:
        raise ValueError(f"kind must be 'imagenet' or 'cifar', got {kind!r}")
    return {
        "kind": kind, "image_size": image_size, "resize": resize, "center_crop": crop,
        "interpolation": "bicubic", "mean": list(MEAN), "std": list(STD),
    }


def eval_transform_from_config(config: Mapping[str, Any]) -> Transform:
    """Rebuild the evaluation transform described by :func:`preprocessing_config`.

    Example:
        >>> from PIL import Image
        >>> eval_transform_from_config(preprocessing_config("imagenet", 32))(Image.new("RGB", (64, 48))).shape
        torch.Size([3, 32, 32])
    """
    missing = [key for key in ("resize", "mean", "std") if key not in config]
    if missing:
        raise KeyError(f"preprocessing config lacks keys {missing}; it has {sorted(config)}")
    interpolation = str(config.get("interpolation", "bicubic")).upper()
    if interpolation not in T.InterpolationMode.__members__:
        raise ValueError(f"preprocessing config: unknown interpolation {config.get('interpolation')!r}")
    steps: list[Transform] = [
        T.Lambda(_to_rgb),
        T.Resize((int(config["resize"]),) * 2, interpolation=T.InterpolationMode[interpolation]),
    ]
    if config.get("center_crop") is not None:
        steps.append(T.CenterCrop(int(config["center_crop"])))
    steps += [T.ToTensor(), T.Normalize(tuple(config["mean"]), tuple(config["std"]))]
    return T.Compose(steps)
