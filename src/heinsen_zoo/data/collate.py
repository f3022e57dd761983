"""Collate functions turning lists of example dicts into the team's batch dicts.

Raw text batches are ``{"text": list[str], "label": LongTensor [B], "index": LongTensor [B]}``, raw vision
batches ``{"image": FloatTensor [B, 3, H, W], "label": LongTensor [B], "index": LongTensor [B]}``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

__all__ = ["collate_images", "collate_text"]


def _check_samples(samples: Sequence[Mapping[str, Any]], keys: tuple[str, ...]) -> None:
    if len(samples) == 0:
        raise ValueError("cannot collate an empty list of samples")
    for position, sample in enumerate(samples):
        if not isinstance(sample, Mapping):
            raise TypeError(f"sample {position} must be a dict, got {type(sample).__name__}")
        missing = [key for key in keys if key not in sample]
        if missing:
            raise KeyError(f"sample {position} lacks keys {missing}; it has {sorted(sample)}")


def _long(samples: Sequence[Mapping[str, Any]], key: str) -> torch.Tensor:
    values = [int(sample[key]) for sample in samples]
    return torch.tensor(values, dtype=torch.long)  # [B]


def collate_text(samples: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """``[{"text": str, "label": int, "index": int}, ...]`` -> ``{"text": list[str], "label": [B], "index": [B]}``.

    ``index`` is optional (kept when every sample has it).

    Example:
        >>> batch = collate_text([{"text": "good", "label": 1}, {"text": "bad", "label": 0}])
        >>> batch["text"], batch["label"].tolist()
        (['good', 'bad'], [1, 0])
    """
    _check_samples(samples, ("text", "label"))
    texts = []
    for position, sample in enumerate(samples):
        if not isinstance(sample["text"], str):
            raise TypeError(f"sample {position}: 'text' must be a str, got {type(sample['text']).__name__}")
        texts.append(sample["text"])
    batch: dict[str, Any] = {"text": texts, "label": _long(samples, "label")}
    if all("index" in sample for sample in samples):
        batch["index"] = _long(samples, "index")
    return batch


def collate_images(samples: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """``[{"image": [3, H, W], "label": int, "index": int}, ...]`` -> ``{"image": [B, 3, H, W], ...}``.

    Example:
        >>> batch = collate_images([{"image": torch.zeros(3, 4, 4), "label": 2, "index": 0}])
        >>> tuple(batch["image"].shape), batch["label"].tolist()
        ((1, 3, 4, 4), [2])
    """
    _check_samples(samples, ("image", "label"))
    images = [sample["image"] for sample in samples]
    first = images[0]
    for position, image in enumerate(images):
        if not isinstance(image, torch.Tensor) or image.dim() != 3:
            kind = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
            raise TypeError(f"sample {position}: 'image' must be a tensor [3, H, W], got {kind}")
        if image.shape != first.shape:
            raise ValueError(
                f"sample {position}: 'image' shape {tuple(image.shape)} differs from sample 0's "
                f"{tuple(first.shape)}; images in a batch must share one size (check the transforms)"
            )
    batch: dict[str, Any] = {"image": torch.stack(images), "label": _long(samples, "label")}  # [B, 3, H, W]
    if all("index" in sample for sample in samples):
        batch["index"] = _long(samples, "index")
    return batch
