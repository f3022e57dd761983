"""Plain (straightforward autograd) implementation of the SPEC §1 E/D/M loop: the benchmark baseline.

Same signature as :func:`heinsen_routing._fused.fused_em_routing`; every intermediate is an ordinary
autograd tensor, so autograd keeps the ``[..., n, n_out]`` tensors of every iteration for backward.
``chunk_size`` is accepted for signature compatibility and ignored.

Example:
    >>> import torch
    >>> n, d, n_out, d_out = 5, 4, 3, 2
    >>> x = torch.randn(n, d)
    >>> out = plain_em_routing(
    ...     x, n ** -0.5, torch.randn(n), torch.randn(n, n_out), torch.randn(n, n_out),
    ...     torch.randn(n_out, d), torch.randn(d, d_out), torch.zeros(n_out, d_out),
    ...     torch.randn(d_out, d), torch.randn(n_out, d), torch.zeros(n_out, d),
    ...     torch.randn(n, n_out), torch.zeros(n, n_out), None, 2, True)
    >>> out.shape
    torch.Size([3, 2])
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def _norm(t: Tensor) -> Tensor:
    """N: layer norm over the last dim without affine parameters, identity when that dim is 1."""
    return F.layer_norm(t, t.shape[-1:], eps=1e-5) if t.shape[-1] > 1 else t


def plain_em_routing(
    x: Tensor,  # [..., n, d_inp], zero at padded positions, not scaled
    scale: float | Tensor,  # n^-0.5, float or broadcastable to [..., 1, 1]
    a_logits: Tensor,  # [..., n]
    beta_use: Tensor | nn.Module,  # broadcastable to [..., n, n_out], or Linear(d_inp, n_out)
    beta_ign: Tensor | nn.Module,
    W_F1: Tensor,  # [n_out, d_inp]
    W_F2: Tensor,  # [d_inp, d_out]
    B_F2: Tensor,  # [n_out, d_out]
    W_G1: Tensor,  # [d_out, d_inp]
    W_G2: Tensor,  # [n_out, d_inp]
    B_G2: Tensor,  # [n_out, d_inp]
    W_S: Tensor,  # [n1, n_out]
    B_S: Tensor,  # [n1, n_out]
    mask: Tensor | None,  # bool broadcastable to [..., n, n_out], True = ignore
    n_iters: int,
    normalize: bool,
    chunk_size: int | None = None,
) -> Tensor:
    """SPEC §1 steps 4–7 written literally with autograd; returns x_out [..., n_out, d_out]."""
    n_out = W_F1.shape[0]
    if isinstance(beta_use, nn.Module):
        beta_use = beta_use(x)  # [..., n, n_out]
    if isinstance(beta_ign, nn.Module):
        beta_ign = beta_ign(x)  # [..., n, n_out]
    xs = x * scale  # [..., n, d_inp]
    if mask is None:
        f_a = torch.sigmoid(a_logits).unsqueeze(-1)  # [..., n, 1]
        dead = None
    else:
        f_a = torch.sigmoid(a_logits.unsqueeze(-1).masked_fill(mask, float("-inf")))  # [..., n, n_out]
        dead = mask.all(dim=-1, keepdim=True)  # [..., n, 1] inputs ignored by every output
    x_out = None
    for t in range(n_iters):
        if t == 0:
            S = torch.full_like(f_a[..., :1], math.log(1.0 / n_out)).expand(*f_a.shape[:-1], n_out)
        else:
            P = _norm(x_out) @ W_G1 * W_G2 + B_G2  # [..., n_out, d_inp]
            S = F.logsigmoid((x @ P.transpose(-2, -1)) * W_S + B_S)  # [..., n, n_out]
        if mask is not None:
            S = S.masked_fill(mask, float("-inf")).masked_fill(dead, 0.0)  # dead rows: finite, f_a = 0
        R = torch.softmax(S, dim=-1)  # [..., n, n_out]
        if mask is not None:
            R = R.masked_fill(mask, 0.0)
        D_use = f_a * R  # [..., n, n_out]
        D_ign = f_a - D_use  # [..., n, n_out]
        phi = beta_use * D_use - beta_ign * D_ign  # [..., n, n_out]
        x_out = (phi.transpose(-2, -1) @ xs * W_F1) @ W_F2 + phi.sum(dim=-2).unsqueeze(-1) * B_F2
    if normalize:
        x_out = _norm(x_out)
    return x_out  # [..., n_out, d_out]
