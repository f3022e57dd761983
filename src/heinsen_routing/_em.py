"""Machinery shared by the vector routings (2022): argument checks, beta parameters, input preparation and
the expectation (E), D and maximisation (M) loop.

Private module: the public classes are :class:`~heinsen_routing.EfficientVectorRouting` and
:class:`~heinsen_routing.DefinableVectorRouting`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import nn

from .masks import (
    check_inputs_finite,
    check_padding_mask,
    check_padding_not_empty,
    check_routing_mask,
    combine_masks,
    initial_routing,
    mask_activations,
    masked_softmax,
    padding_or_none,
    softmax_fill_mask,
    unpadded_counts,
    zero_padding,
)
from .validation import autocast_enabled, check_dim, check_floating, check_like, check_nonempty, check_rank

DICT_KEYS = ("a_inp", "V", "pred_x_inp", "S", "R", "D_use", "D_ign", "phi", "x_out")


def check_int_arg(name: str, value: object, minimum: int, also_allowed: tuple[int, ...] = ()) -> int:
    """Raise unless ``value`` is an int >= ``minimum`` (or one of ``also_allowed``)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name}: expected an int, got {type(value).__name__} ({value!r})")
    if value < minimum and value not in also_allowed:
        extra = "".join(f" or {v}" for v in also_allowed)
        raise ValueError(f"{name}: expected an int >= {minimum}{extra}, got {value}")
    return value


def check_n_inp(n_inp: object) -> int:
    """n_inp must be a positive int (fixed number of inputs) or -1 (variable number of inputs)."""
    if isinstance(n_inp, bool) or not isinstance(n_inp, int):
        raise TypeError(
            f"n_inp: expected an int (> 0, or -1 for variable length), got {type(n_inp).__name__}"
        )
    if n_inp <= 0 and n_inp != -1:
        raise ValueError(f"n_inp: expected an int > 0, or -1 for a variable number of inputs, got {n_inp}")
    return n_inp


def init_betas(module: nn.Module, n_inp: int, n_out: int, d_inp: int | None) -> None:
    """Register the "bang per bit" coefficients and the CONST_ones_over_n_out buffer on ``module``.

    Fixed n_inp: parameters beta_use, beta_ign [n_inp, n_out] ~ N(0, 1). n_inp == -1: linear layers
    compute_beta_use, compute_beta_ign = nn.Linear(d_inp, n_out) applied to the inputs.
    """
    if n_inp > 0:
        module.beta_use = nn.Parameter(torch.randn(n_inp, n_out))  # [n_inp, n_out]
        module.beta_ign = nn.Parameter(torch.randn(n_inp, n_out))  # [n_inp, n_out]
    else:
        if d_inp is None:
            raise ValueError("d_inp: required when n_inp == -1 (it sizes compute_beta_use/compute_beta_ign)")
        module.compute_beta_use = nn.Linear(d_inp, n_out)
        module.compute_beta_ign = nn.Linear(d_inp, n_out)
    module.register_buffer("CONST_ones_over_n_out", torch.ones(n_out) / n_out)  # [n_out]


def compute_betas(module: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(beta_use, beta_ign): the parameters [n_inp, n_out], or the linear layers applied to x ([..., n, n_out])."""
    if module.n_inp > 0:
        return module.beta_use, module.beta_ign
    return module.compute_beta_use(x), module.compute_beta_ign(x)


def reference_param(module: nn.Module) -> torch.Tensor:
    """A parameter whose dtype/device the inputs must match."""
    return module.beta_use if module.n_inp > 0 else module.compute_beta_use.weight


class PreparedInputs(NamedTuple):
    x: torch.Tensor  # [..., n, d_inp], zeros at padded positions
    mask: torch.Tensor | None  # bool, broadcastable to [..., n, n_out] with last dim n_out; padding included
    n_unpadded: torch.Tensor | None  # [...] int64 count of unpadded inputs, None without padding_mask


def prepare_inputs(
    x: object,
    mask: object,
    padding_mask: object,
    *,
    n_inp: int,
    d_inp: int | None,
    n_out: int,
    ref: torch.Tensor,
) -> PreparedInputs:
    """Validate x [..., n, d_inp] and the masks, zero padded inputs and merge the masks.

    Errors name the argument (x, mask, padding_mask) with the expected and actual shape/dtype/device.
    The dtype of x must be that of the layer's parameters (``ref``), except under autocast.
    """
    x = check_floating("x", x)
    layout = f"[..., n, d_inp={d_inp}]" if n_inp < 0 else f"[..., n={n_inp}, d_inp={d_inp}]"
    check_rank("x", x, 2, layout)
    if d_inp is not None:
        check_dim("x", x, -1, d_inp, "d_inp", layout)
    check_nonempty("x", x, -2, "input vector (n >= 1)")
    if n_inp > 0:
        check_dim("x", x, -2, n_inp, "n (number of input vectors, the layer's n_inp)", layout)
    check_like("x", x, "the layer's parameters", ref, dtype=False)  # device first (meta has no autocast)
    if not autocast_enabled(x.device.type):
        check_like("x", x, "the layer's parameters", ref)
    if mask is not None:
        mask = check_routing_mask(mask, x, n_out)
    n_unpadded = None
    if padding_mask is not None:
        padding_mask = padding_or_none(check_padding_mask(padding_mask, x))
    if padding_mask is not None:
        n_unpadded = unpadded_counts(padding_mask, x)  # [...]
        check_padding_not_empty(padding_mask, n_unpadded)
        x = zero_padding(x, padding_mask)
    # After zeroing, padded inputs (whatever they held, even NaN) are finite: one reduction checks the rest.
    check_inputs_finite(x, None)
    return PreparedInputs(x, combine_masks(mask, padding_mask, n_out), n_unpadded)


class EMResult(NamedTuple):
    """Final-iteration values of the routing loop (pred_x_inp and S are None when n_iters == 1)."""

    pred_x_inp: torch.Tensor | None  # [..., n_out, d_inp]
    S: torch.Tensor | None  # [..., n, n_out]
    R: torch.Tensor  # [..., n, n_out]
    D_use: torch.Tensor  # [..., n, n_out]
    D_ign: torch.Tensor  # [..., n, n_out]
    phi: torch.Tensor  # [..., n, n_out]
    x_out: torch.Tensor  # [..., n_out, d_out]


def em_loop(
    a_logits: torch.Tensor,
    beta_use: torch.Tensor,
    beta_ign: torch.Tensor,
    mask: torch.Tensor | None,
    n_iters: int,
    n_out: int,
    predict: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]],
    combine: Callable[[torch.Tensor], torch.Tensor],
) -> EMResult:
    """The E/D/M iterations common to the vector routings.

    Args:
        a_logits: [..., n] input activation logits.
        beta_use, beta_ign: [n, n_out] or [..., n, n_out] "bang per bit" coefficients.
        mask: None or bool broadcastable to [..., n, n_out] (last dim n_out), True = ignore (i, j).
        n_iters: number of iterations (>= 1).
        n_out: number of output vectors.
        predict: x_out [..., n_out, d_out] -> (P [..., n_out, d_inp], S [..., n, n_out]) for the E-step.
        combine: phi [..., n, n_out] -> x_out [..., n_out, d_out] for the M-step.
    """
    f_a = mask_activations(torch.sigmoid(a_logits).unsqueeze(-1), mask)  # [..., n, 1] or [..., n, n_out]
    fill_mask = softmax_fill_mask(mask)
    P = S = None
    x_out = R = D_use = D_ign = phi = None
    for iteration in range(n_iters):
        # E-step: routing probabilities R [..., n, n_out].
        if iteration == 0:
            R = initial_routing(mask, n_out, f_a)  # 1/n_out (float) or [..., n, n_out]
        else:
            P, S = predict(x_out)  # [..., n_out, d_inp], [..., n, n_out]
            R = masked_softmax(S, mask, fill_mask)
        # D-step: shares of data used and ignored.
        D_use = f_a * R  # [..., n, n_out] (or [..., n, 1] at iteration 0 without mask)
        D_ign = f_a - D_use
        # M-step: "bang per bit" and output vectors.
        phi = beta_use * D_use - beta_ign * D_ign  # [..., n, n_out]
        x_out = combine(phi)  # [..., n_out, d_out]
    if not isinstance(R, torch.Tensor):
        R = torch.full((), R, dtype=phi.dtype, device=phi.device)
    R, D_use, D_ign = (t.expand(phi.shape) for t in (R, D_use, D_ign))
    return EMResult(P, S, R, D_use, D_ign, phi, x_out)


def as_output(
    result: EMResult, a_logits: torch.Tensor, V: torch.Tensor | None, return_dict: bool
) -> torch.Tensor | dict[str, torch.Tensor | None]:
    """x_out, or the dict with keys a_inp, V, pred_x_inp, S, R, D_use, D_ign, phi, x_out."""
    if not return_dict:
        return result.x_out
    return {
        "a_inp": a_logits,
        "V": V,
        "pred_x_inp": result.pred_x_inp,
        "S": result.S,
        "R": result.R,
        "D_use": result.D_use,
        "D_ign": result.D_ign,
        "phi": result.phi,
        "x_out": result.x_out,
    }
