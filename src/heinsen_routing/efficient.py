"""EfficientVectorRouting: the memory-efficient routing of "An Algorithm for Routing Vectors in Sequences"
(Heinsen, 2022), SPEC §1.

Example:
    >>> import torch
    >>> from heinsen_routing.efficient import EfficientVectorRouting
    >>> route = EfficientVectorRouting(n_inp=-1, n_out=4, d_inp=8, d_out=6)
    >>> x = torch.randn(2, 10, 8)                      # [batch, n_inp, d_inp]
    >>> route(x).shape                                 # [batch, n_out, d_out]
    torch.Size([2, 4, 6])
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ._em import (
    as_output,
    check_int_arg,
    check_n_inp,
    compute_betas,
    em_loop,
    init_betas,
    prepare_inputs,
)
from ._fused import fused_em_routing
from .validation import is_compiling

__all__ = ["EfficientVectorRouting", "plain_em_routing"]

# Below this many multiply-adds per n-sized product (batch·n·d_inp·n_out) the default path is the plain
# one; 0 = always the fused Function (see EfficientVectorRouting._fused_pays).
FUSED_MIN_WORK = 1 << 22


def _normalize(x_out: torch.Tensor) -> torch.Tensor:
    """N: LayerNorm over the last dim without affine parameters (eps 1e-5); identity when that dim is 1."""
    if x_out.shape[-1] == 1:
        return x_out
    return F.layer_norm(x_out, x_out.shape[-1:])


def plain_em_routing(
    x: torch.Tensor,
    scale: float | torch.Tensor,
    a_logits: torch.Tensor,
    beta_use: torch.Tensor,
    beta_ign: torch.Tensor,
    W_F1: torch.Tensor,
    W_F2: torch.Tensor,
    B_F2: torch.Tensor,
    W_G1: torch.Tensor,
    W_G2: torch.Tensor,
    B_G2: torch.Tensor,
    W_S: torch.Tensor,
    B_S: torch.Tensor,
    mask: torch.Tensor | None,
    n_iters: int,
    normalize: bool,
    memory_efficient: bool,
    return_dict: bool,
) -> torch.Tensor | dict[str, torch.Tensor | None]:
    """Steps 4-8 of SPEC §1 on already validated, prepared inputs (plain PyTorch ops, no checks).

    Args:
        x: [..., n, d_inp] input vectors, zeros at padded positions (NOT scaled by n^-0.5).
        scale: n^-0.5 — a Python float (no padding), or a tensor [..., 1, 1] holding the per-sample
            (number of unpadded inputs)^-0.5. xs = x * scale is never materialised on the efficient path.
        a_logits: [..., n] activation logits, a = scale * (x * W_A).sum(-1) + B_A (unmasked).
        beta_use, beta_ign: [n, n_out] parameters or [..., n, n_out] computed from x.
        W_F1 [n_out, d_inp], W_F2 [d_inp, d_out], B_F2 [n_out, d_out], W_G1 [d_out, d_inp],
        W_G2 [n_out, d_inp], B_G2 [n_out, d_inp], W_S and B_S [n, n_out] or [1, n_out]: the parameters.
        mask: None, or bool broadcastable to [..., n, n_out] with last dim exactly n_out, True where input
            i is ignored by output j; it already includes the padding (padded rows are True for every j).
        n_iters: iterations (>= 1). normalize: apply N to the final x_out.
        memory_efficient: if False, materialise the votes V [..., n, n_out, d_out].
        return_dict: return the dict of final-iteration values instead of x_out.

    Returns:
        x_out [..., n_out, d_out], or a dict with keys a_inp, V, pred_x_inp, S, R, D_use, D_ign, phi, x_out
        (V None when memory_efficient; pred_x_inp and S None when n_iters == 1; R, D_use, D_ign, phi
        [..., n, n_out]).
    """
    n_out = W_F1.shape[0]

    V = None
    if not memory_efficient:
        # V[..., i, j, h] = sum_d xs[i, d] W_F1[j, d] W_F2[d, h] + B_F2[j, h]   [..., n, n_out, d_out]
        V = torch.einsum("...id,jd,dh->...ijh", x * scale, W_F1, W_F2) + B_F2

    def combine(phi: torch.Tensor) -> torch.Tensor:  # phi [..., n, n_out] -> x_out [..., n_out, d_out]
        if V is not None:
            return torch.einsum("...ij,...ijh->...jh", phi, V)
        phi_x = (phi.transpose(-1, -2) @ x) * scale  # sum_i phi[i, j] xs[i, d]   [..., n_out, d_inp]
        return (phi_x * W_F1) @ W_F2 + phi.sum(-2).unsqueeze(-1) * B_F2

    def predict(x_out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        P = (_normalize(x_out) @ W_G1) * W_G2 + B_G2  # predicted inputs [..., n_out, d_inp]
        S = F.logsigmoid((x @ P.transpose(-1, -2)) * W_S + B_S)  # [..., n, n_out]
        return P, S

    result = em_loop(a_logits, beta_use, beta_ign, mask, n_iters, n_out, predict, combine)
    if normalize:
        result = result._replace(x_out=_normalize(result.x_out))
    return as_output(result, a_logits, V, return_dict)


class EfficientVectorRouting(nn.Module):
    """Routes n input vectors [..., n, d_inp] to n_out output vectors [..., n_out, d_out] by EM-like
    iterations in which output vectors compete to use or ignore input vectors, maximising "bang per bit"
    (SPEC §1). Memory is linear in each of n_inp, n_out, d_inp and d_out.

    Args:
        n_inp: number of input vectors, or -1 for a variable number (then the per-input parameters W_A,
            B_A, W_S, B_S are shared by all inputs and beta_use/beta_ign are computed from the inputs by
            the linear layers compute_beta_use/compute_beta_ign).
        n_out: number of output vectors (>= 2).
        d_inp, d_out: sizes of the input and output vectors (>= 1).
        n_iters: routing iterations (>= 1).
        normalize: apply N (LayerNorm without affine parameters, identity when d_out == 1) to the output.
        memory_efficient: if False, the votes V [..., n, n_out, d_out] are materialised (same results).
        return_dict: if True, forward returns a dict with keys a_inp, V, pred_x_inp, S, R, D_use, D_ign,
            phi, x_out (final-iteration values) instead of x_out.

    forward(x, mask=None, padding_mask=None):
        x: [..., n, d_inp] floating, n == n_inp for a fixed n_inp.
        mask: optional bool broadcastable to [..., n, n_out] ([n, n_out] is the common case); True where
            input i is ignored by output j. A row masked for every j gets R = 0 and phi = 0.
        padding_mask: optional bool broadcastable to [..., n]; True = padding. Padded inputs are removed:
            the n^-0.5 scaling counts only unpadded inputs per sample, padded values (even NaN/inf) have
            no influence on outputs or gradients, so a padded batch gives the outputs of routing each
            sequence unpadded on its own.

    Edge cases: an empty batch ([0, n, d_inp]) gives an empty [0, n_out, d_out] output (backward works);
    x must be on the parameters' device (ValueError naming x, the expected and the actual device); a layer
    moved to the meta device computes meta outputs (shape inference). Under torch.autocast the n-sized
    products run in the autocast dtype, the rest in float32 (see heinsen_routing._fused).

    Example:
        >>> import torch
        >>> route = EfficientVectorRouting(n_inp=5, n_out=3, d_inp=4, d_out=2)
        >>> x = torch.randn(2, 5, 4)                                  # [batch, n_inp, d_inp]
        >>> route(x).shape                                            # [batch, n_out, d_out]
        torch.Size([2, 3, 2])
        >>> padding_mask = torch.tensor([[False] * 5, [False] * 3 + [True] * 2])  # [batch, n_inp]
        >>> out = route(x, padding_mask=padding_mask)
        >>> route.return_dict = True
        >>> route(x, mask=torch.zeros(5, 3, dtype=torch.bool))["phi"].shape  # [batch, n_inp, n_out]
        torch.Size([2, 5, 3])
    """

    def __init__(
        self,
        n_inp: int,
        n_out: int,
        d_inp: int,
        d_out: int,
        n_iters: int = 2,
        normalize: bool = True,
        memory_efficient: bool = True,
        return_dict: bool = False,
    ) -> None:
        super().__init__()
        self.n_inp = check_n_inp(n_inp)
        self.n_out = check_int_arg("n_out", n_out, 2)
        self.d_inp = check_int_arg("d_inp", d_inp, 1)
        self.d_out = check_int_arg("d_out", d_out, 1)
        self.n_iters = check_int_arg("n_iters", n_iters, 1)
        self.normalize = bool(normalize)
        self.memory_efficient = bool(memory_efficient)
        self.return_dict = bool(return_dict)

        n1 = max(1, n_inp)
        self.W_A = nn.Parameter(torch.randn(n1, d_inp) * (2 * d_inp**-0.5))  # [n1, d_inp]
        self.B_A = nn.Parameter(torch.zeros(n1))  # [n1]
        self.W_F1 = nn.Parameter(torch.randn(n_out, d_inp))  # [n_out, d_inp]
        self.W_F2 = nn.Parameter(torch.randn(d_inp, d_out) * (2 * d_inp**-0.5))  # [d_inp, d_out]
        self.B_F2 = nn.Parameter(torch.zeros(n_out, d_out))  # [n_out, d_out]
        self.W_G1 = nn.Parameter(torch.randn(d_out, d_inp) * d_out**-0.5)  # [d_out, d_inp]
        self.W_G2 = nn.Parameter(torch.randn(n_out, d_inp))  # [n_out, d_inp]
        self.B_G2 = nn.Parameter(torch.zeros(n_out, d_inp))  # [n_out, d_inp]
        self.W_S = nn.Parameter(torch.randn(n1, n_out) * d_inp**-0.5)  # [n1, n_out]
        self.B_S = nn.Parameter(torch.zeros(n1, n_out))  # [n1, n_out]
        init_betas(self, n_inp, n_out, d_inp)

    def extra_repr(self) -> str:
        return (
            f"n_inp={self.n_inp}, n_out={self.n_out}, d_inp={self.d_inp}, d_out={self.d_out}, "
            f"n_iters={self.n_iters}, normalize={self.normalize}, memory_efficient={self.memory_efficient}, "
            f"return_dict={self.return_dict}"
        )

    def _fused_pays(self, x: torch.Tensor) -> bool:
        """Whether the fused Function is worth its fixed cost (~1-2 ms of Python per call): below
        FUSED_MIN_WORK multiply-adds per n-sized product (batch·n·d_inp·n_out) the plain path is faster
        (measured on CPU, 1 thread: 1.2 ms vs 2.5-3.7 ms fused and 1.5-2.2 ms for the original at
        2 × 10 × 8 → 4 × 6) and its memory is negligible anyway."""
        return x.numel() * self.n_out >= FUSED_MIN_WORK

    def _a_logits(self, x: torch.Tensor, scale_a: float | torch.Tensor) -> torch.Tensor:
        """a[..., i] = sum_d xs[i, d] W_A[i, d] + B_A[i], without materialising xs   [..., n]"""
        if self.W_A.shape[0] == 1:
            return scale_a * (x @ self.W_A[0]) + self.B_A
        return scale_a * torch.einsum("...nd,nd->...n", x, self.W_A) + self.B_A  # no [..., n, d] temp

    def forward(
        self,
        x: torch.Tensor,
        mask: torch.Tensor | None = None,
        padding_mask: torch.Tensor | None = None,
    ) -> torch.Tensor | dict[str, torch.Tensor | None]:
        """Route x [..., n, d_inp] to x_out [..., n_out, d_out] (or the dict, see the class docstring)."""
        x, mask, n_unpadded = prepare_inputs(
            x, mask, padding_mask, n_inp=self.n_inp, d_inp=self.d_inp, n_out=self.n_out, ref=self.W_A
        )
        if n_unpadded is None:
            scale = x.shape[-2] ** -0.5  # float
            scale_a = scale
        else:
            scale = n_unpadded.clamp(min=1).to(x.dtype).rsqrt()[..., None, None]  # [..., 1, 1]
            scale_a = scale.squeeze(-1)  # [..., 1]
        # The fused Function is a graph break: under torch.compile the plain path is traced instead.
        if self.memory_efficient and not self.return_dict and self._fused_pays(x) and not is_compiling():
            # Default fast path: fused, chunked loop; never stores the [..., n, n_out] tensors (see _fused).
            if self.n_inp > 0:
                beta_use, beta_ign = self.beta_use, self.beta_ign  # [n, n_out]
                a_logits = self._a_logits(x, scale_a)
            else:
                beta_use, beta_ign = self.compute_beta_use, self.compute_beta_ign  # fused Linear layers
                a_logits = (self.W_A, self.B_A)  # computed in the fused betas' product
            return fused_em_routing(
                x, scale, a_logits, beta_use, beta_ign,
                self.W_F1, self.W_F2, self.B_F2, self.W_G1, self.W_G2, self.B_G2, self.W_S, self.B_S,
                mask, self.n_iters, self.normalize,
            )  # fmt: skip
        beta_use, beta_ign = compute_betas(self, x)  # [n, n_out] or [..., n, n_out]
        a_logits = self._a_logits(x, scale_a)
        return plain_em_routing(
            x, scale, a_logits, beta_use, beta_ign,
            self.W_F1, self.W_F2, self.B_F2, self.W_G1, self.W_G2, self.B_G2, self.W_S, self.B_S,
            mask, self.n_iters, self.normalize, self.memory_efficient, self.return_dict,
        )  # fmt: skip
