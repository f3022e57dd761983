"""Mixup in hidden-state space (the 2022 paper's training regime, SPEC §5).

One mixing ratio ``r ~ Beta(alpha, alpha)`` is drawn **per batch** (a scalar shared by every sample of the
batch, as in the original mixup recipe); each sample is mixed with its partner, the batch rolled by one
(``torch.roll(x, 1, dims=0)``: sample ``b`` is mixed with sample ``b - 1``, sample 0 with the last):

    hidden  = r · hidden  + (1 − r) · roll(hidden)
    targets = r · targets + (1 − r) · roll(targets)
    padding = (padding if r > 0) | (roll(padding) if r < 1)     (the union over contributing samples)

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

__all__ = ["HiddenStateMixup", "mixup", "sample_mix_ratio"]


def _check_alpha(alpha: float | None) -> float:
    """``alpha`` as a float; None and 0 mean "no mixup" (returned as 0.0)."""
    if alpha is None:
        return 0.0
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)):
        raise TypeError(f"alpha: expected a float >= 0 or None, got {type(alpha).__name__}")
    if not math.isfinite(alpha) or alpha < 0:
        raise ValueError(f"alpha: expected a finite float >= 0 (0 or None disables mixup), got {alpha}")
    return float(alpha)


def sample_mix_ratio(alpha: float | None, generator: torch.Generator | None = None) -> float:
    """Draw one mixing ratio ``r ~ Beta(alpha, alpha)``; returns 1.0 when ``alpha`` is None or 0.

    ``generator`` (a CPU ``torch.Generator``) makes the draw reproducible and advances only that generator;
    without it the global CPU RNG is used.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> 0.0 <= sample_mix_ratio(0.2, g) <= 1.0
        True
        >>> sample_mix_ratio(None)
        1.0
    """
    alpha = _check_alpha(alpha)
    if alpha == 0.0:
        return 1.0
    concentration = torch.tensor(alpha, dtype=torch.float64)
    beta = torch.distributions.Beta(concentration, concentration)
    if generator is None:
        return float(beta.sample())
    if not isinstance(generator, torch.Generator):
        raise TypeError(f"generator: expected a torch.Generator or None, got {type(generator).__name__}")
    if generator.device.type != "cpu":
        raise ValueError(f"generator: expected a CPU torch.Generator, got one on {generator.device}")
    # torch.distributions samples from the global CPU generator only: run it on this generator's state.
    with torch.random.fork_rng(devices=[]):
        torch.set_rng_state(generator.get_state())
        r = float(beta.sample())
        generator.set_state(torch.get_rng_state())
    return r


def mixup(
    hidden: torch.Tensor,
    padding_mask: torch.Tensor | None,
    targets_onehot: torch.Tensor,
    alpha: float | None,
    generator: torch.Generator | None = None,
    *,
    r: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """Mix a batch with itself rolled by one, in hidden-state space (one ``r`` per batch).

    Args:
        hidden: ``[batch, n_pos, ...]`` floating hidden states, e.g. ``[batch, n_pos, d_depth, d_emb]``.
        padding_mask: ``[batch, n_pos]`` bool (True = padding) or None.
        targets_onehot: ``[batch, n_classes]`` floating targets (one-hot or already soft).
        alpha: Beta concentration; None or 0 disables mixup (the inputs are returned as they are).
        generator: optional CPU generator for the draw of ``r``.
        r: use this mixing ratio in [0, 1] instead of drawing one (``alpha`` is then only validated).

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
        r = sample_mix_ratio(alpha, generator)
    r = float(r)
    if not 0.0 <= r <= 1.0:
        raise ValueError(f"r: expected a mixing ratio in [0, 1], got {r}")

    # Pure data mixing: never under autocast (CPU autocast rejects float16 inputs to some ops).
    autocast_off = (
        torch.autocast(device_type=hidden.device.type, enabled=False)
        if hidden.device.type in ("cpu", "cuda")
        else contextlib.nullcontext()
    )
    with autocast_off:
        return _mix(hidden, padding_mask, targets_onehot, r)


def _mix(
    hidden: torch.Tensor, padding_mask: torch.Tensor | None, targets_onehot: torch.Tensor, r: float
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    if padding_mask is not None:
        # Zero padded positions first so a partner's padding (possibly non-finite) never leaks in.
        expand = padding_mask.view(*padding_mask.shape, *([1] * (hidden.dim() - 2)))  # [batch, n_pos, 1, ...]
        hidden = hidden.masked_fill(expand, 0.0)
    partner = torch.roll(hidden, 1, dims=0)  # [batch, n_pos, ...]
    mixed = hidden * r + partner * (1.0 - r)  # [batch, n_pos, ...]
    soft = targets_onehot * r + torch.roll(targets_onehot, 1, dims=0) * (1.0 - r)  # [batch, n_classes]
    mixed_mask = None
    if padding_mask is not None:
        own = padding_mask if r > 0.0 else torch.zeros_like(padding_mask)
        other = torch.roll(padding_mask, 1, dims=0) if r < 1.0 else torch.zeros_like(padding_mask)
        mixed_mask = own | other  # [batch, n_pos]
        mixed = mixed.masked_fill(mixed_mask.view(*mixed_mask.shape, *([1] * (mixed.dim() - 2))), 0.0)
    return mixed, mixed_mask, soft


class HiddenStateMixup:
    """Stateful hidden-state mixup: ``alpha`` plus its own seeded CPU generator.

    The generator state round-trips through :meth:`state_dict` / :meth:`load_state_dict` (a uint8 tensor,
    safe for ``torch.load(weights_only=True)``), so a resumed run draws the same ratios as an uninterrupted one.

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
        self.alpha = _check_alpha(alpha)
        self.generator = torch.Generator(device="cpu")
        self.generator.manual_seed(int(seed))

    @property
    def enabled(self) -> bool:
        """False when ``alpha`` is None or 0 (calls return the inputs unchanged)."""
        return self.alpha > 0.0

    def __call__(
        self, hidden: torch.Tensor, padding_mask: torch.Tensor | None, targets_onehot: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """Mix one batch (see :func:`mixup`)."""
        return mixup(hidden, padding_mask, targets_onehot, self.alpha, self.generator)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The generator state, as ``{"generator_state": uint8 tensor}``."""
        return {"generator_state": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Restore the generator state saved by :meth:`state_dict`."""
        if not isinstance(state, dict) or "generator_state" not in state:
            keys = sorted(state) if isinstance(state, dict) else type(state).__name__
            raise ValueError(f"state: expected a dict with key 'generator_state', got {keys}")
        value = state["generator_state"]
        if not isinstance(value, torch.Tensor) or value.dtype != torch.uint8:
            raise TypeError(
                f"state['generator_state']: expected a torch.uint8 tensor, got "
                f"{getattr(value, 'dtype', type(value).__name__)}"
            )
        self.generator.set_state(value.cpu())
