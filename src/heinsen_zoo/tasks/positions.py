"""Random position subsets for training: each example keeps ``k`` of its positions for one step.

The routing head is a function of the *set* of its input vectors (one per position and depth; the position is
in the hidden states themselves), so a step can route a random subset of an example's positions. Drawn anew
for every example and every step, the subset is an augmentation (each step sees a different part of the
text), and it divides the head's cost by about ``n_pos / k``. Validation, test and inference always route
every position.

Positions are drawn uniformly without replacement among an example's **unpadded** positions (padded
positions are kept only when fewer than ``k`` are unpadded, and stay marked as padding) and kept in their
original order.

Example:
    >>> import torch
    >>> hidden = torch.arange(2 * 6, dtype=torch.float32).view(2, 6, 1, 1)  # [batch, n_pos, d_depth, d_emb]
    >>> mask = torch.tensor([[False] * 6, [False] * 2 + [True] * 4])        # example 1: 2 real positions
    >>> g = torch.Generator().manual_seed(0)
    >>> kept, kept_mask = sample_positions(hidden, mask, 3, g)
    >>> kept.shape, kept_mask.tolist()
    (torch.Size([2, 3, 1, 1]), [[False, False, False], [False, False, True]])
    >>> kept[1, :2].flatten().tolist()                                    # both real positions, in order
    [6.0, 7.0]
"""

from __future__ import annotations

import torch

from heinsen_routing.validation import check_bool_mask, check_rank

from .rng import SeededGenerator

__all__ = ["PositionSampler", "sample_positions"]


def _check_k(k: int | None) -> int:
    """``k`` as an int; None means "keep every position" (returned as 0)."""
    if k is None:
        return 0
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"train_positions: expected None or an int >= 1, got {k!r}")
    return k


def sample_positions(
    hidden: torch.Tensor,
    padding_mask: torch.Tensor | None,
    k: int,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Keep ``k`` random positions of every example (all of them when ``n_pos <= k``).

    Args:
        hidden: ``[batch, n_pos, ...]`` hidden states, e.g. ``[batch, n_pos, d_depth, d_emb]``.
        padding_mask: bool ``[batch, n_pos]`` (True = padding) or None.
        k: positions to keep per example (>= 1).
        generator: optional CPU generator for the draw (the global CPU RNG otherwise).

    Returns:
        ``(hidden [batch, min(k, n_pos), ...], padding_mask [batch, min(k, n_pos)] or None)``.
    """
    k = _check_k(k)
    check_rank("hidden", hidden, 2, "[batch, n_pos, ...]")
    batch, n_pos = hidden.shape[:2]
    if padding_mask is not None:
        check_bool_mask("padding_mask", padding_mask)
        if tuple(padding_mask.shape) != (batch, n_pos):
            raise ValueError(
                f"padding_mask: expected shape [batch, n_pos] = {[batch, n_pos]} (that of hidden "
                f"{list(hidden.shape)}), got {list(padding_mask.shape)}"
            )
    if k >= n_pos:
        return hidden, padding_mask
    scores = torch.rand(batch, n_pos, generator=generator)  # [batch, n_pos] in [0, 1)
    if padding_mask is not None:
        scores += padding_mask.cpu()  # padded positions sort after every unpadded one
    keep = scores.topk(k, dim=1, largest=False).indices.sort(dim=1).values  # [batch, k], original order
    keep = keep.to(hidden.device)
    rows = torch.arange(batch, device=hidden.device)[:, None]  # [batch, 1]
    kept_mask = padding_mask[rows, keep] if padding_mask is not None else None  # [batch, k]
    return hidden[rows, keep], kept_mask


class PositionSampler(SeededGenerator):
    """Stateful :func:`sample_positions`: ``k`` plus its own seeded CPU generator (:class:`.rng.SeededGenerator`:
    ``state_dict`` / ``load_state_dict``, so a resumed run draws the same subsets).

    Example:
        >>> sampler = PositionSampler(2, seed=0)
        >>> state = sampler.state_dict()
        >>> h = torch.randn(3, 5, 4)
        >>> a = sampler(h, None)[0]
        >>> sampler.load_state_dict(state)
        >>> bool(torch.equal(a, sampler(h, None)[0])), a.shape
        (True, torch.Size([3, 2, 4]))
    """

    def __init__(self, k: int | None, seed: int = 0) -> None:
        super().__init__(seed)
        self.k = _check_k(k)

    @property
    def enabled(self) -> bool:
        """False when ``k`` is None (calls return the inputs unchanged)."""
        return self.k > 0

    def __call__(
        self, hidden: torch.Tensor, padding_mask: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Subsample one batch (see :func:`sample_positions`)."""
        if not self.enabled:
            return hidden, padding_mask
        return sample_positions(hidden, padding_mask, self.k, self.generator)
