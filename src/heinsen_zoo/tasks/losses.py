"""Losses for classification with soft (mixed) targets.

Example:
    >>> import torch
    >>> logits = torch.tensor([[2.0, 0.0], [0.0, 2.0]])
    >>> hard = torch.tensor([0, 1])
    >>> soft = torch.nn.functional.one_hot(hard, 2).float()
    >>> bool(torch.isclose(soft_target_cross_entropy(logits, soft),
    ...                    torch.nn.functional.cross_entropy(logits, hard)))
    True
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from heinsen_routing.validation import check_finite, check_floating

__all__ = ["soft_target_cross_entropy"]


def soft_target_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of ``−Σ_c targets[b, c] · log_softmax(logits)[b, c]``, computed in float32+.

    Args:
        logits: ``[batch, n_classes]`` floating class scores.
        targets: ``[batch, n_classes]`` floating probabilities (each row sums to 1: one-hot or mixed).

    Returns:
        A scalar tensor (the loss; gradients flow to ``logits``).
    """
    check_floating("logits", logits)
    check_floating("targets", targets)
    if logits.dim() != 2:
        raise ValueError(f"logits: expected shape [batch, n_classes], got {list(logits.shape)}")
    if tuple(targets.shape) != tuple(logits.shape):
        raise ValueError(
            f"targets: expected shape [batch, n_classes] = {list(logits.shape)} (that of logits), "
            f"got {list(targets.shape)}"
        )
    if targets.device != logits.device:
        raise ValueError(f"targets: expected device {logits.device} (that of logits), got {targets.device}")
    check_finite("targets", targets)
    dtype = torch.promote_types(logits.dtype, torch.float32)
    return F.cross_entropy(logits.to(dtype), targets.to(dtype))
