"""Mixup in hidden-state space (the 2022 paper's training regime, SPEC §5).

One mixing ratio ``r_i ~ Beta(alpha, alpha)`` is drawn **per example** (``r`` has shape [batch], as in the
paper's training code); example ``i`` is mixed with its partner, example ``i + 1`` (the last with the first:
the batch rolled by one, ``torch.roll(x, -1, dims=0)``):

    hidden[i]  = r_i · hidden[i]  + (1 − r_i) · hidden[i + 1]
    targets[i] = r_i · targets[i] + (1 − r_i) · targets[i + 1]
    padding[i] = (padding[i] if r_i > 0) | (padding[i + 1] if r_i < 1)   (the union over contributing examples)

Padded positions are zeroed before mixing, so whatever a cache stores there (even NaN) never leaks into
an unpadded position of the mix; with ``r = 1`` the inputs come back unchanged (padded positions read 0).

Example:
    >>> import torch
    >>> hidden = torch.randn(4, 3, 2, 8)                       # [batch, n_pos, d_depth, d_emb]
    >>> targets = torch.eye(5)[torch.tensor([0, 1, 2, 3])]     # [batch, n_classes]
    >>> g = torch.Generator().manual_seed(0)
    >>> mixed, mask, soft = mixup(hidden, None, targets, alpha=0.2, generator=g)
    >>> mixed.shape, mask, soft.sum(-1)
    (torch.Size([4, 3, 2, 8]), None, tensor([1., 1., 1., 1.]))
"""

from __future__ import annotations

import contextlib
import math

import torch

from heinsen_routing.validation import check_bool_mask, check_floating, check_rank

from .rng import SeededGenerator

__all__ = ["PARTNER_SHIFT", "HiddenStateMixup", "mixup", "sample_mix_ratio"]

PARTNER_SHIFT = -1  # torch.roll shift: the partner of example i is example i + 1 (SPEC §5)


def _check_alpha(alpha: float | None) -> float:
    """``alpha`` as a float; None and 0 mean "no mixup" (returned as 0.0)."""
    if alpha is None:
        return 0.0
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)):
        raise TypeError(f"alpha: expected a float >= 0 or None, got {type(alpha).__name__}")
    if not math.isfinite(alpha) or alpha < 0:
        raise ValueError(f"alpha: expected a finite float >= 0 (0 or None disables mixup), got {alpha}")
    return float(alpha)


def sample_mix_ratio(
    alpha: float | None, generator: torch.Generator | None = None, n: int | None = None
) -> float | torch.Tensor:
    """Draw mixing ratios ``r ~ Beta(alpha, alpha)``: one float (``n`` None) or a float64 tensor [n].

    ``alpha`` None or 0 gives 1.0 (every ratio 1: no mixing). ``generator`` (a CPU ``torch.Generator``) makes
    the draw reproducible and advances only that generator; without it the global CPU RNG is used.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> 0.0 <= sample_mix_ratio(0.2, g) <= 1.0
        True
        >>> sample_mix_ratio(0.2, g, n=3).shape, sample_mix_ratio(None)
        (torch.Size([3]), 1.0)
    """
    alpha = _check_alpha(alpha)
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
        raise ValueError(f"n: expected a positive int or None, got {n!r}")
    shape = torch.Size([] if n is None else [n])
    if alpha == 0.0:
        return 1.0 if n is None else torch.ones(shape, dtype=torch.float64)
    concentration = torch.tensor(alpha, dtype=torch.float64)
    beta = torch.distributions.Beta(concentration, concentration)
    if generator is not None:
        if not isinstance(generator, torch.Generator):
            raise TypeError(f"generator: expected a torch.Generator or None, got {type(generator).__name__}")
        if generator.device.type != "cpu":
            raise ValueError(f"generator: expected a CPU torch.Generator, got one on {generator.device}")
    if generator is None:
        r = beta.sample(shape)
    else:
        # torch.distributions samples from the global CPU generator only: run it on this generator's state.
        with torch.random.fork_rng(devices=[]):
            torch.set_rng_state(generator.get_state())
            r = beta.sample(shape)
            generator.set_state(torch.get_rng_state())
    return float(r) if n is None else r


def mixup(
    hidden: torch.Tensor,
    padding_mask: torch.Tensor | None,
    targets_onehot: torch.Tensor,
    alpha: float | None,
    generator: torch.Generator | None = None,
    *,
    r: float | torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """Mix a batch with itself rolled by one, in hidden-state space (one ``r`` per example).

    Args:
        hidden: ``[batch, n_pos, ...]`` floating hidden states, e.g. ``[batch, n_pos, d_depth, d_emb]``.
        padding_mask: ``[batch, n_pos]`` bool (True = padding) or None.
        targets_onehot: ``[batch, n_classes]`` floating targets (one-hot or already soft).
        alpha: Beta concentration; None or 0 disables mixup (the inputs are returned as they are).
        generator: optional CPU generator for the draw of ``r``.
        r: use these mixing ratios in [0, 1] instead of drawing them (``alpha`` is then only validated): a
            float (the same for every example) or a tensor [batch].

    Returns:
        ``(hidden [batch, n_pos, ...], padding_mask [batch, n_pos] or None, targets [batch, n_classes])``.

    Example:
        >>> h, t = torch.randn(3, 4, 2, 5), torch.eye(3)
        >>> out, _, soft = mixup(h, None, t, alpha=0.2, r=1.0)
        >>> bool(torch.equal(out, h)) and bool(torch.equal(soft, t))
        True
    """
    check_floating("hidden", hidden)
    check_rank("hidden", hidden, 2, "[batch, n_pos, ...]")
    check_floating("targets_onehot", targets_onehot)
    batch = hidden.shape[0]
    if targets_onehot.dim() != 2 or targets_onehot.shape[0] != batch:
        raise ValueError(
            f"targets_onehot: expected shape [batch={batch}, n_classes], got {list(targets_onehot.shape)}"
        )
    if targets_onehot.device != hidden.device:
        raise ValueError(
            f"targets_onehot: expected device {hidden.device} (that of hidden), got {targets_onehot.device}"
        )
    if padding_mask is not None:
        check_bool_mask("padding_mask", padding_mask)
        if padding_mask.dim() != 2 or tuple(padding_mask.shape) != tuple(hidden.shape[:2]):
            raise ValueError(
                f"padding_mask: expected shape [batch, n_pos] = {list(hidden.shape[:2])} (that of hidden "
                f"{list(hidden.shape)}), got {list(padding_mask.shape)}"
            )
        if padding_mask.device != hidden.device:
            raise ValueError(
                f"padding_mask: expected device {hidden.device} (that of hidden), got {padding_mask.device}"
            )
    alpha = _check_alpha(alpha)
    if r is None:
        if alpha == 0.0:
            return hidden, padding_mask, targets_onehot
        r = sample_mix_ratio(alpha, generator, n=batch)
    r = torch.as_tensor(r, dtype=torch.float64)
    if r.dim() == 0:
        r = r.expand(batch)
    if tuple(r.shape) != (batch,):
        raise ValueError(
            f"r: expected a float or a tensor of shape [batch={batch}], got shape {list(r.shape)}"
        )
    if not bool(((r >= 0.0) & (r <= 1.0)).all()):
        raise ValueError(f"r: expected mixing ratios in [0, 1], got {r.tolist()[:8]}")

    # Pure data mixing: never under autocast (CPU autocast rejects float16 inputs to some ops).
    autocast_off = (
        torch.autocast(device_type=hidden.device.type, enabled=False)
        if hidden.device.type in ("cpu", "cuda")
        else contextlib.nullcontext()
    )
    with autocast_off:
        return _mix(hidden, padding_mask, targets_onehot, r)


def _mix(
    hidden: torch.Tensor, padding_mask: torch.Tensor | None, targets_onehot: torch.Tensor, r: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """``r`` [batch] float64 on the CPU; the partner of example i is example i + 1."""
    trailing = [1] * (hidden.dim() - 1)
    if padding_mask is not None:
        # Zero padded positions first so a partner's padding (possibly non-finite) never leaks in.
        expand = padding_mask.view(*padding_mask.shape, *([1] * (hidden.dim() - 2)))  # [batch, n_pos, 1, ...]
        hidden = hidden.masked_fill(expand, 0.0)
    r_h = r.to(device=hidden.device, dtype=hidden.dtype).view(-1, *trailing)  # [batch, 1, ...]
    partner = torch.roll(hidden, PARTNER_SHIFT, dims=0)  # [batch, n_pos, ...]
    mixed = hidden * r_h + partner * (1.0 - r_h)  # [batch, n_pos, ...]
    r_t = r.to(device=targets_onehot.device, dtype=targets_onehot.dtype)[:, None]  # [batch, 1]
    partner_targets = torch.roll(targets_onehot, PARTNER_SHIFT, dims=0)  # [batch, n_classes]
    soft = targets_onehot * r_t + partner_targets * (1.0 - r_t)  # [batch, n_classes]
    mixed_mask = None
    if padding_mask is not None:
        uses_own = (r > 0.0).to(padding_mask.device)[:, None]  # [batch, 1]
        uses_partner = (r < 1.0).to(padding_mask.device)[:, None]  # [batch, 1]
        partner_mask = torch.roll(padding_mask, PARTNER_SHIFT, dims=0)  # [batch, n_pos]
        mixed_mask = (padding_mask & uses_own) | (partner_mask & uses_partner)  # [batch, n_pos]
        mixed = mixed.masked_fill(mixed_mask.view(*mixed_mask.shape, *([1] * (mixed.dim() - 2))), 0.0)
    return mixed, mixed_mask, soft


class HiddenStateMixup(SeededGenerator):
    """Stateful hidden-state mixup: ``alpha`` plus its own seeded CPU generator (:class:`.rng.SeededGenerator`:
    ``state_dict`` / ``load_state_dict``, so a resumed run draws the same ratios as an uninterrupted one).

    Example:
        >>> mix = HiddenStateMixup(alpha=0.65, seed=0)
        >>> state = mix.state_dict()
        >>> h, t = torch.randn(2, 3, 4), torch.eye(2)
        >>> a = mix(h, None, t)[0]
        >>> mix.load_state_dict(state)
        >>> bool(torch.equal(a, mix(h, None, t)[0]))
        True
    """

    def __init__(self, alpha: float | None, seed: int = 0) -> None:
        super().__init__(seed)
        self.alpha = _check_alpha(alpha)

    @property
    def enabled(self) -> bool:
        """False when ``alpha`` is None or 0 (calls return the inputs unchanged)."""
        return self.alpha > 0.0

    def __call__(
        self, hidden: torch.Tensor, padding_mask: torch.Tensor | None, targets_onehot: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """Mix one batch (see :func:`mixup`)."""
        return mixup(hidden, padding_mask, targets_onehot, self.alpha, self.generator)
