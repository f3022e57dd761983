"""Masks for the vector routings: validation, combination and masked routing steps.

Two kinds of mask reach a routing layer:

* ``mask`` (the original semantics): bool, broadcastable to ``[..., n, n_out]``; True where input
  vector ``i`` is ignored by output vector ``j``.
* ``padding_mask``: bool, broadcastable to ``[..., n]``; True where input vector ``i`` is padding. A padded
  input is removed: its values are replaced by zeros before anything else and it is ignored by every
  output vector.

Both are merged into one bool tensor broadcastable to ``[..., n, n_out]`` (last dim exactly ``n_out``) by
:func:`combine_masks`; the routing loop then uses :func:`mask_activations`, :func:`initial_routing` and
:func:`masked_softmax`. A row masked for every output (e.g. a padded input) gets routing probabilities and
credit exactly 0, never NaN.

Example:
    >>> import torch
    >>> from heinsen_routing.masks import combine_masks, initial_routing
    >>> mask = torch.tensor([[False, True, True], [True, True, True]])  # [n=2, n_out=3]
    >>> padding_mask = torch.tensor([[False, False], [False, True]])     # [batch=2, n=2]
    >>> combined = combine_masks(mask, padding_mask, n_out=3)             # [batch=2, n=2, n_out=3]
    >>> initial_routing(combined, n_out=3, like=torch.zeros(())).tolist()
    [[[1.0, 0.0, 0.0], [0.0, 0.0, 0.0]], [[1.0, 0.0, 0.0], [0.0, 0.0, 0.0]]]
"""

from __future__ import annotations

import torch

from .validation import (
    check_bool_mask,
    check_broadcastable,
    check_dim,
    check_finite,
    check_like,
    check_rank,
    checks_enabled,
    is_compiling,
)

__all__ = [
    "check_routing_mask",
    "check_padding_mask",
    "check_padding_not_empty",
    "check_inputs_finite",
    "combine_masks",
    "zero_padding",
    "padding_or_none",
    "unpadded_counts",
    "mask_activations",
    "initial_routing",
    "softmax_fill_mask",
    "masked_softmax",
]


def check_routing_mask(mask: object, x: torch.Tensor, n_out: int) -> torch.Tensor:
    """Validate ``mask`` (True = input i ignored by output j) against x ``[..., n, d_inp]``.

    The mask must be a bool tensor on x's device with at least 2 dims (``[n, n_out]`` is the common case;
    a bare 1-dim mask would be ambiguous when n == n_out) whose shape broadcasts to ``[..., n, n_out]``
    without adding or growing any of x's leading dims.
    """
    mask = check_bool_mask("mask", mask)
    check_like("mask", mask, "x", x, dtype=False)
    check_rank("mask", mask, 2, "[..., n, n_out] (e.g. [n, n_out]; size-1 dims broadcast)")
    check_broadcastable("mask", mask, [*x.shape[:-1], n_out], "[..., n, n_out]")
    return mask


def check_padding_mask(padding_mask: object, x: torch.Tensor) -> torch.Tensor:
    """Validate ``padding_mask`` (True = padding) against x ``[..., n, d_inp]``: bool, on x's device, last
    dim exactly n, leading dims broadcastable to x's."""
    padding_mask = check_bool_mask("padding_mask", padding_mask)
    check_like("padding_mask", padding_mask, "x", x, dtype=False)
    check_rank("padding_mask", padding_mask, 1, "[..., n]")
    check_dim("padding_mask", padding_mask, -1, x.shape[-2], "n (x's number of input vectors)", "[..., n]")
    check_broadcastable("padding_mask", padding_mask, list(x.shape[:-1]), "[..., n]")
    return padding_mask


def check_padding_not_empty(padding_mask: torch.Tensor, n_unpadded: torch.Tensor) -> None:
    """Raise ValueError when a sample has no unpadded input (skipped when checks are disabled)."""
    if not checks_enabled():
        return
    empty = n_unpadded == 0
    if bool(empty.any()):
        first = [int(i) for i in empty.nonzero()[0]]
        raise ValueError(
            f"padding_mask: every input vector of {int(empty.sum())} sample(s) is padding (first at batch "
            f"index {first}, padding_mask shape {list(padding_mask.shape)}); each sample needs at least one "
            "unpadded input (False)"
        )


def check_inputs_finite(x: torch.Tensor, padding_mask: torch.Tensor | None) -> None:
    """Raise when x holds NaN/inf outside padded positions (skipped when checks are disabled)."""
    check_finite("x", x, None if padding_mask is None else padding_mask.unsqueeze(-1))


def zero_padding(x: torch.Tensor, padding_mask: torch.Tensor | None) -> torch.Tensor:
    """Replace padded input vectors by zeros: x ``[..., n, d]``, padding_mask ``[..., n]``.

    ``torch.where`` (not a product) is used, so NaN/inf garbage at padded positions neither reaches the
    outputs nor the gradients.
    """
    if padding_mask is None:
        return x
    return torch.where(padding_mask.unsqueeze(-1), torch.zeros((), dtype=x.dtype, device=x.device), x)


def padding_or_none(padding_mask: torch.Tensor | None) -> torch.Tensor | None:
    """``padding_mask``, or None when nothing is padding, so callers take the unmasked path (no masking passes).

    Eager mode only: while torch.compile / torch.export traces (data-dependent branches cannot be traced) the
    mask is returned as is and the masked path, which gives the same result, is kept.
    """
    if padding_mask is None or is_compiling() or bool(padding_mask.any()):
        return padding_mask
    return None


def unpadded_counts(padding_mask: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Number of unpadded inputs per sample, ``[...]`` (int64), padding_mask broadcast to x's ``[..., n]``."""
    return (~padding_mask).expand(x.shape[:-1]).sum(-1)


def combine_masks(
    mask: torch.Tensor | None, padding_mask: torch.Tensor | None, n_out: int
) -> torch.Tensor | None:
    """Merge ``mask`` (``[..., n, n_out]``-broadcastable) and ``padding_mask`` (``[..., n]``) into one bool
    tensor broadcastable to ``[..., n, n_out]`` whose last dim is exactly ``n_out`` (None if both are None).

    A padded input is ignored by every output vector.
    """
    if padding_mask is not None:
        padding_rows = padding_mask.unsqueeze(-1)  # [..., n, 1]
        mask = padding_rows if mask is None else mask | padding_rows
    if mask is None:
        return None
    return mask.expand(*mask.shape[:-1], n_out)


def mask_activations(f_a: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Input activations ``f_a`` ``[..., n, 1]`` → ``[..., n, n_out]`` with 0 where ``mask`` is True.

    Identical to σ(a with -inf at the masked (i, j)) and with zero gradient at masked entries.
    """
    if mask is None:
        return f_a
    return torch.where(mask, torch.zeros((), dtype=f_a.dtype, device=f_a.device), f_a)


def initial_routing(mask: torch.Tensor | None, n_out: int, like: torch.Tensor) -> torch.Tensor | float:
    """Routing probabilities of the first iteration.

    Without a mask: the float 1/n_out (broadcasts everywhere). With a mask ``[..., n, n_out]``: the
    softmax over j of log(1/n_out) with masked entries at -inf, i.e. 1/(number of unmasked j) at unmasked
    entries and 0 at masked ones; a row masked for every j gets all zeros (the naive softmax gives NaN).
    The result has the dtype and device of ``like``.
    """
    if mask is None:
        return 1.0 / n_out
    keep = (~mask).to(like.dtype)  # [..., n, n_out]
    return keep / keep.sum(-1, keepdim=True).clamp(min=1.0)


def softmax_fill_mask(mask: torch.Tensor | None) -> torch.Tensor | None:
    """Entries to set to -inf before the softmax over j: the masked ones, except in rows masked for every
    j (those rows are zeroed after the softmax instead, so that they give 0, not NaN, with finite
    gradients)."""
    if mask is None:
        return None
    return mask & ~mask.all(-1, keepdim=True)


def masked_softmax(
    S: torch.Tensor, mask: torch.Tensor | None, fill_mask: torch.Tensor | None = None
) -> torch.Tensor:
    """softmax over the last dim (j) of S ``[..., n, n_out]`` with masked entries excluded.

    ``fill_mask`` is :func:`softmax_fill_mask` of ``mask`` (pass it to avoid recomputing it every
    iteration). Masked entries are exactly 0; a row masked for every j is all zeros.

    Example:
        >>> import torch
        >>> S = torch.zeros(2, 3)
        >>> mask = torch.tensor([[False, False, True], [True, True, True]])
        >>> masked_softmax(S, mask).tolist()
        [[0.5, 0.5, 0.0], [0.0, 0.0, 0.0]]
    """
    if mask is None:
        return S.softmax(dim=-1)
    if fill_mask is None:
        fill_mask = softmax_fill_mask(mask)
    R = S.masked_fill(fill_mask, float("-inf")).softmax(dim=-1)
    return R.masked_fill(mask, 0.0)
