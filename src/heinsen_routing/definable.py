"""DefinableVectorRouting: the routing of "An Algorithm for Routing Vectors in Sequences" (Heinsen, 2022)
with user-defined activation, vote, prediction and similarity functions (SPEC §2).

Example:
    >>> import torch
    >>> from torch import nn
    >>> from heinsen_routing.definable import DefinableVectorRouting
    >>> n_out, d_inp, d_out = 3, 4, 2
    >>> route = DefinableVectorRouting(
    ...     A=nn.Linear(d_inp, 1),                                            # [..., n, d_inp] -> [..., n, 1]
    ...     F=nn.Sequential(nn.Linear(d_inp, n_out * d_out), nn.Unflatten(-1, (n_out, d_out))),
    ...     G=nn.Linear(d_out, d_inp),                                        # [..., n_out, d_out] -> [..., n_out, d_inp]
    ...     S=lambda x, P: x @ P.transpose(-1, -2),                           # -> [..., n, n_out]
    ...     n_inp=-1, n_out=n_out, d_inp=d_inp,
    ... )
    >>> route(torch.randn(2, 7, d_inp)).shape                                 # [batch, n_out, d_out]
    torch.Size([2, 3, 2])
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from ._em import (
    as_output,
    check_int_arg,
    check_n_inp,
    compute_betas,
    em_loop,
    init_betas,
    prepare_inputs,
    reference_param,
)

__all__ = ["DefinableVectorRouting"]


def _check_callable(name: str, fn: object) -> None:
    if not callable(fn):
        raise TypeError(f"{name}: expected a callable (e.g. an nn.Module), got {type(fn).__name__}")


def _check_output(name: str, out: object, expected: list[int | None], layout: str) -> torch.Tensor:
    """Raise unless ``out`` is a tensor whose shape matches ``expected`` (None = any size)."""
    if not isinstance(out, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor of shape {layout}, got {type(out).__name__}")
    ok = out.dim() == len(expected) and all(
        e is None or e == s for e, s in zip(expected, out.shape, strict=True)
    )
    if not ok:
        want = [("*" if e is None else e) for e in expected]
        raise ValueError(f"{name}: expected a tensor of shape {layout} = {want}, got {list(out.shape)}")
    return out


class DefinableVectorRouting(nn.Module):
    """Vector routing (SPEC §2) with the activation logits, votes, predictions and similarities computed by
    user-supplied callables (registered as submodules A, F, G, S when they are nn.Modules).

    Args:
        A: x [..., n, d_inp] -> activation logits [..., n, 1].
        F: x [..., n, d_inp] -> votes V [..., n, n_out, d_out].
        G: x_out [..., n_out, d_out] -> predicted inputs P [..., n_out, d_inp] (may be generative).
        S: (x [..., n, d_inp], P [..., n_out, d_inp]) -> similarities [..., n, n_out] (ideally log-densities).
        n_inp: number of input vectors, or -1 for a variable number (then d_inp is required: beta_use and
            beta_ign are computed from the inputs by nn.Linear(d_inp, n_out) layers).
        n_out: number of output vectors (>= 2).
        n_iters: routing iterations (>= 1).
        return_dict: if True, forward returns a dict with keys a_inp, V, pred_x_inp, S, R, D_use, D_ign,
            phi, x_out (final-iteration values) instead of x_out.
        d_inp: size of the input vectors; required when n_inp == -1, optional (checked against x) otherwise.

    forward(x, mask=None, padding_mask=None) has the semantics of EfficientVectorRouting.forward, except
    that no n^-0.5 scaling and no normalisation is applied: padded inputs are replaced by zeros before
    A/F/S see them and are ignored by every output vector.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> route = DefinableVectorRouting(
        ...     A=nn.Linear(4, 1), F=lambda x: x.unsqueeze(-2).expand(*x.shape[:-1], 3, 4),
        ...     G=nn.Identity(), S=lambda x, P: -torch.cdist(x, P), n_inp=5, n_out=3)
        >>> x = torch.randn(2, 5, 4)                                            # [batch, n_inp, d_inp]
        >>> route(x).shape                                                      # [batch, n_out, d_out]
        torch.Size([2, 3, 4])
    """

    def __init__(
        self,
        A: Callable[[torch.Tensor], torch.Tensor],
        F: Callable[[torch.Tensor], torch.Tensor],
        G: Callable[[torch.Tensor], torch.Tensor],
        S: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        n_inp: int,
        n_out: int,
        n_iters: int = 2,
        return_dict: bool = False,
        d_inp: int | None = None,
    ) -> None:
        super().__init__()
        for name, fn in (("A", A), ("F", F), ("G", G), ("S", S)):
            _check_callable(name, fn)
        self.n_inp = check_n_inp(n_inp)
        self.n_out = check_int_arg("n_out", n_out, 2)
        self.n_iters = check_int_arg("n_iters", n_iters, 1)
        if d_inp is None and n_inp == -1:
            raise ValueError(
                "d_inp: required when n_inp == -1 (it sizes the compute_beta_use/compute_beta_ign layers), "
                "got None"
            )
        self.d_inp = None if d_inp is None else check_int_arg("d_inp", d_inp, 1)
        self.return_dict = bool(return_dict)
        self.A, self.F, self.G, self.S = A, F, G, S  # nn.Modules become submodules
        init_betas(self, n_inp, n_out, d_inp)

    def extra_repr(self) -> str:
        return (
            f"n_inp={self.n_inp}, n_out={self.n_out}, d_inp={self.d_inp}, n_iters={self.n_iters}, "
            f"return_dict={self.return_dict}"
        )

    def forward(
        self,
        x: torch.Tensor,
        mask: torch.Tensor | None = None,
        padding_mask: torch.Tensor | None = None,
    ) -> torch.Tensor | dict[str, torch.Tensor | None]:
        """Route x [..., n, d_inp] to x_out [..., n_out, d_out] (or the dict, see the class docstring)."""
        x, mask, _ = prepare_inputs(
            x, mask, padding_mask, n_inp=self.n_inp, d_inp=self.d_inp, n_out=self.n_out,
            ref=reference_param(self),
        )  # fmt: skip
        lead, n, d_inp = list(x.shape[:-2]), x.shape[-2], x.shape[-1]
        a = _check_output("A(x)", self.A(x), [*lead, n, 1], "[..., n, 1]")
        a_logits = a.squeeze(-1)  # [..., n]
        V = self.F(x)
        V = _check_output("F(x)", V, [*lead, n, self.n_out, None], "[..., n, n_out, d_out]")
        beta_use, beta_ign = compute_betas(self, x)  # [n, n_out] or [..., n, n_out]

        def predict(x_out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            P = _check_output("G(x_out)", self.G(x_out), [*lead, self.n_out, d_inp], "[..., n_out, d_inp]")
            S = _check_output("S(x, P)", self.S(x, P), [*lead, n, self.n_out], "[..., n, n_out]")
            return P, S

        def combine(phi: torch.Tensor) -> torch.Tensor:  # x_out[..., j, h] = sum_i phi[i, j] V[i, j, h]
            return torch.einsum("...ij,...ijh->...jh", phi, V)

        result = em_loop(a_logits, beta_use, beta_ign, mask, self.n_iters, self.n_out, predict, combine)
        return as_output(result, a, V, self.return_dict)
