"""Fused, chunked E/D/M loop of EfficientVectorRouting (SPEC §1 steps 4–7) with a hand-written backward.

Why. With plain autograd every iteration leaves several ``[..., n, n_out]`` tensors (the similarity logits
and their scaled/activated versions S, R, D_use, D_ign, φ, and, for a variable number of inputs, the two
beta tensors) plus the scaled inputs ``xs = x·scale`` (``[..., n, d_inp]``) in memory until backward. For
n = 1M, n_out = 100, d_inp = 1024 that is ~9 GB. Here one :class:`torch.autograd.Function` runs the whole
loop, streaming the inputs in blocks of rows, and keeps only what cannot be recomputed cheaply.

Algorithm (B = flattened batch, n inputs, m = n_out, d = d_inp, h = d_out, T = n_iters). Per iteration t
and per block of rows (several whole samples, or a row range of one sample; ``chunk_size`` rows, default
:func:`default_chunk_rows` ≈ 8 MiB per ``[rows, m]`` temporary on CPU, e.g. 20971 rows for m = 100, and
256 MiB on GPUs):

* E-step (t > 0): ``L = x_blk @ P_tᵀ`` (one matmul ``[rows, d] × [d, m]``), ``Z = L·W_S + B_S``,
  ``R = softmax_j(logσ(Z))`` over the unmasked j, computed on CPU as ``σ(Z) / Σ_j σ(Z)`` (the same value
  in three cheap passes; a block where some row's Σ_j σ(Z) underflows falls back to the log-space
  softmax, which other devices always use). Rows masked for every j get R = 0. t = 0: R = 1/m (or
  1/#unmasked j).
* D/M-steps element-wise: ``φ = f_a·((β_use + β_ign)·R − β_ign)``, which is ``β_use·D_use − β_ign·D_ign``
  with ``D_use = f_a·R``, ``D_ign = f_a − D_use``; then ``A_t += φᵀ @ x_blk`` (``[m, rows] × [rows, d]``)
  and ``s_t += Σ_i φ``. For variable n (β given as two ``nn.Linear``) both layers are one matmul
  ``x_blk @ [W_use + W_ign; W_ign]ᵀ`` at t = 0, whose outputs are directly ``[β_use + β_ign | β_ign]``;
  when ``a_logits`` is given as ``(W_A [1, d], B_A [1])`` (what EfficientVectorRouting(n_inp=-1) passes),
  W_A is one more row, so that ``a = scale·(x·W_A) + B_A`` costs no pass over x of its own, and its
  gradient joins the dx and weight-gradient products as one more column.
* Small [m, ·] operations (plain tensors): ``x_out_t = ((scale·A_t) ⊙ W_F1) @ W_F2 + s_t ⊗ B_F2`` and
  ``P_{t+1} = N(x_out_t) @ W_G1 ⊙ W_G2 + B_G2``; finally ``N(x_out)`` if ``normalize``.

Saved for backward: references to the inputs (no copies), the small ``A_t [B, m, d]``, ``s_t [B, m]``,
``P_t [B, m, d]``, and the outputs of the n-sized matmuls, which would cost a matmul to recompute: the
logits ``L_t`` for t = 1..T-1 and, for Linear betas, the beta block ``[B, n, 2m]``. Everything
element-wise (S, R, D_use, D_ign, φ, f_a and their pre-activations) is recomputed per block in backward.
Backward walks the iterations in reverse; per block: ``dφ = x_blk @ gA_tᵀ + gs_t`` (one matmul), the
element-wise chain gives ``dβ``, ``da``, ``dW_S``, ``dB_S`` and ``dL``; ``dP_t += dLᵀ @ x_blk``. The
small ops are differentiated by re-running them under autograd. Linear betas: ``dβ`` is summed over the
iterations per block and turned into weight gradients once, at t = 0. When x needs a gradient the left
factors ``φ_t, dL_t`` are kept per block and ``dx_blk = [φ_T−1, dL_T−1, …, φ_0(, dβ)] @ [gA_T−1; P_T−1;
…; gA_0(; W_β)]`` is one matmul (inner size (2T−1)·m, +2m) at t = 0, written once.

FLOPs equal those of plain autograd: no matmul is recomputed. Per iteration 2·B·n·m·d for ``φᵀx`` and
(t > 0) for ``xPᵀ``, plus 4·B·n·m·d once for Linear betas; backward twice that (three times with dx).

Memory, in elements, beyond the inputs, the parameters and their gradients::

    saved     = (T−1)·B·n·m  [+ 2·B·n·m for Linear betas]  + (2T−1)·B·m·d + T·B·m
    backward  + 2·B·n·m for Linear betas when T ≥ 2 (the dβ sum)
              [+ B·n·d for dx and ((2T−1)·m + 2m)·B·n for its left factors, when x needs a gradient]
              + ~12 · rows · m per-block temporaries

(plain autograd keeps ~6·T·B·n·m, plus B·n·d for xs, and 2·B·n·m for Linear betas).

Threads: on CPU the element-wise block work runs with one intra-op thread and only the matmuls (and the
small ops) use all of torch's threads (see ``_chain.SERIAL_ELEMENTWISE``); the thread count is restored
on exit, also on errors.

Autocast: under ``torch.autocast`` the n-sized products (``x Wbᵀ``, ``x Pᵀ``, ``φᵀx`` and their backward
products) run in the autocast dtype (bf16/fp16; x is cast once, the saved logits and betas are kept in
it), while the element-wise ``[n, n_out]`` chain, the accumulators ``A_t``, ``s_t``, the gradients and the
small ``[n_out, ·]`` ops run in float32 (the widest dtype of the floating inputs). Measured against the
float32 result: outputs within ~1e-2, gradients within ~4e-2 of their largest magnitude, as plain
autograd under the same autocast (tests/heinsen_routing/test_fused.py). Without autocast everything runs
in the widest floating input dtype.

GPU: on CUDA, for Linear betas without a mask and W_S/B_S shared by all inputs (``n_inp = -1``), the
element-wise chain of each block is one Triton kernel per direction (:mod:`._triton_chain`, see
:data:`TRITON_DEVICES`); the products stay cuBLAS calls. Elsewhere the torch chain runs.

Numerics: the same operations as SPEC §1 in another summation order (blocks) and with
``β_use·D_use − β_ign·D_ign`` regrouped as ``f_a·((β_use+β_ign)·R − β_ign)``; outputs and gradients match
plain autograd to rounding (float64 ~1e-12, float32 ~1e-6 relative). An empty batch (``[0, n, d]``)
gives an empty output; meta tensors give meta outputs (shape inference). Under ``torch.compile`` the call
is a graph break (runs eagerly; :class:`~heinsen_routing.EfficientVectorRouting` takes its plain path
while compiling instead). Double backward is not supported.

Example:
    >>> import torch
    >>> n, d, n_out, d_out = 6, 4, 3, 2
    >>> x = torch.randn(2, n, d)
    >>> out = fused_em_routing(
    ...     x, n ** -0.5, torch.randn(2, n), torch.randn(n, n_out), torch.randn(n, n_out),
    ...     torch.randn(n_out, d), torch.randn(d, d_out), torch.zeros(n_out, d_out),
    ...     torch.randn(d_out, d), torch.randn(n_out, d), torch.zeros(n_out, d),
    ...     torch.randn(n, n_out), torch.zeros(n, n_out), None, 2, True, chunk_size=4)
    >>> out.shape
    torch.Size([2, 3, 2])
"""

from __future__ import annotations

import contextlib
import math

import torch
from torch import Tensor, nn

from . import _triton_chain as _tri
from ._chain import (
    _betas,
    _blk,
    _blocks,
    _BlockState,
    _bmm_into,
    _norm,
    _pred,
    _with_threads,
    _x_out,
    default_chunk_rows,
)
from ._fused_backward import _backward
from .validation import autocast_enabled, check_bool_mask, check_broadcastable, check_floating, check_rank

__all__ = ["fused_em_routing", "default_chunk_rows"]

# Devices whose calls run the element-wise chain in the Triton kernels of _triton_chain (where supported).
# Tests running Triton's interpreter (TRITON_INTERPRET=1) add "cpu".
TRITON_DEVICES: tuple[str, ...] = ("cuda",)


def _no_autocast(device: torch.device) -> contextlib.AbstractContextManager:
    """Autocast off on ``device`` (a no-op context on device types without autocast, e.g. meta)."""
    if not autocast_enabled(device.type):
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, enabled=False)


class _FusedEMRouting(torch.autograd.Function):
    """The whole E/D/M loop; betas enter as (β_use + β_ign, β_ign): fixed tensors ``bu``/``bi`` (summed per
    block) or one stacked Linear ``x @ Wb.T + bb`` whose outputs are ``[β_use + β_ign | β_ign]``.

    Dtypes: the n-sized products run in x's dtype (``cdt``: the autocast dtype under autocast), everything
    element-wise, the accumulators A_t, s_t and the small ops in a's dtype (``edt``, float32 under autocast)."""

    @staticmethod
    @_with_threads
    def forward(  # type: ignore[override]
        ctx,
        x: Tensor,  # [B, n, d] contiguous, product dtype
        a: Tensor,  # [B, n], element-wise dtype
        bu: Tensor | None,  # [Bb, nb, mb] (fixed betas) or None
        bi: Tensor | None,
        Wb: Tensor | None,  # [2m, d] = [W_use + W_ign; W_ign] (Linear betas, product dtype) or None
        bb: Tensor | None,  # [2m] or None (product dtype)
        W_F1: Tensor,
        W_F2: Tensor,
        B_F2: Tensor,
        W_G1: Tensor,
        W_G2: Tensor,
        B_G2: Tensor,
        W_S: Tensor,  # [Bw, nw, mw]
        B_S: Tensor,
        scale: float | Tensor,  # float or [B, 1, 1], no gradient
        mask: Tensor | None,  # bool [Bm, nm, m]
        n_iters: int,
        normalize: bool,
        rows: int,
        for_backward: bool,  # False: nothing will call backward (no grad), keep no logits
        tri: bool,  # element-wise chain in the Triton kernels (see _triton_chain.supported)
        fold_a: bool,  # a is B_A [1]; the logits are scale·(x·W_A) + B_A with W_A = Wb's last row
    ) -> Tensor:
        B, n, d = x.shape
        m = W_F1.shape[0]
        edt = a.dtype
        B_A = None
        if fold_a:
            B_A, a = a, x.new_empty(B, n, dtype=edt)  # a: filled per block at t = 0
        par = ctx.threads.par
        blocks = _blocks(B, n, rows)
        linear = Wb is not None
        beta_blocks: list[Tensor] = []  # Linear betas: [Bc, c, 2m] = [β_use + β_ign | β_ign] per block
        logits: list[list[Tensor]] = []  # logits[t-1][k]: [Bc, c, m]
        As: list[Tensor] = []
        ss: list[Tensor] = []
        Ps: list[Tensor | None] = [None]
        leaves = [p.detach().requires_grad_(for_backward) for p in (W_F1, W_F2, B_F2, W_G1, W_G2, B_G2)]
        graphs: list[tuple[list[Tensor], Tensor]] = []  # per t: (inputs, P_{t+1} or the output)
        with _no_autocast(x.device):
            for t in range(n_iters):
                A = x.new_zeros(B, m, d, dtype=edt)
                s = x.new_zeros(B, m, dtype=edt)
                P = Ps[t]
                P_c = None if P is None else P.to(x.dtype).transpose(1, 2)  # [B, d, m] in the product dtype
                L_t: list[Tensor] = []
                for k, (bs, is_) in enumerate(blocks):
                    xb = x[bs, is_]  # [Bc, c, d]
                    Bc, c = xb.shape[0], xb.shape[1]
                    if linear and t == 0:
                        flat = xb.reshape(Bc * c, d)
                        with par():
                            beta = flat @ Wb.t() if bb is None else torch.addmm(bb, flat, Wb.t())
                        beta = beta.view(Bc, c, Wb.shape[0])
                        beta_blocks.append(beta)
                        if fold_a:
                            sc = scale if isinstance(scale, float) else scale[bs].view(Bc, 1)
                            torch.add(B_A, beta[..., 2 * m] * sc, out=a[bs, is_])  # [Bc, c]
                    L = None
                    if P_c is not None:
                        L = xb.new_empty(Bc, c, m)
                        with par():
                            torch.bmm(xb, P_c[bs], out=L)  # [Bc, c, m]
                        if for_backward:
                            L_t.append(L)
                    if tri:
                        phi = _tri.phi_forward(a[bs, is_], L, beta_blocks[k], W_S, B_S, x.dtype)
                        s[bs] += phi.sum(1, dtype=edt)
                    else:
                        bsum, bib = _betas(linear, beta_blocks, k, bu, bi, bs, is_, m, edt)
                        st = _BlockState(a[bs, is_], _blk(mask, bs, is_), bsum, bib, L, _blk(W_S, bs, is_),
                                         _blk(B_S, bs, is_), m)  # fmt: skip
                        phi = st.phi((Bc, c, m), inplace=True)  # [Bc, c, m]
                        s[bs] += phi.sum(1)
                    with par():
                        _bmm_into(A[bs], phi.transpose(1, 2), xb)
                if t > 0:
                    logits.append(L_t)
                As.append(A.requires_grad_(for_backward))
                ss.append(s.requires_grad_(for_backward))
                # The small [B, m, ·] ops run under autograd on detached leaves; backward reuses their graphs.
                with par(), torch.set_grad_enabled(for_backward):
                    x_out = _x_out(A, s, scale, *leaves[:3])  # [B, m, h]
                    if t < n_iters - 1:
                        P_next = _pred(x_out, *leaves[3:])  # [B, m, d]
                        graphs.append(([A, s, *leaves], P_next))
                        Ps.append(P_next.detach())
                    else:
                        out = _norm(x_out) if normalize else x_out
                        graphs.append(([A, s, *leaves[:3]], out))

        ctx.save_for_backward(x, a, bu, bi, Wb, bb, W_F1, W_F2, B_F2, W_G1, W_G2, B_G2, W_S, B_S, mask)
        ctx.scale, ctx.tri, ctx.fold_a, ctx.a = scale, tri, fold_a, a
        ctx.n_iters, ctx.normalize, ctx.blocks = n_iters, normalize, blocks
        ctx.As, ctx.ss, ctx.Ps, ctx.logits, ctx.beta_blocks = As, ss, Ps, logits, beta_blocks
        ctx.graphs = graphs
        return out.detach()

    @staticmethod
    @torch.autograd.function.once_differentiable
    @_with_threads
    def backward(ctx, g_out: Tensor):  # type: ignore[override]
        x, a, bu, bi, Wb, bb, W_F1, W_F2, B_F2, W_G1, W_G2, B_G2, W_S, B_S, mask = ctx.saved_tensors
        with _no_autocast(x.device):
            grads = _backward(ctx, g_out.to(a.dtype), x, ctx.a, bu, bi, Wb, bb, W_F1, W_F2, B_F2, W_G1, W_G2, B_G2,
                              W_S, B_S, mask)  # fmt: skip
        return (*grads, None, None, None, None, None, None, None, None)


def _canonical(name: str, t: Tensor, batch: list[int], n: int, m: int) -> Tensor:
    """Reshape ``t`` (broadcastable to [*batch, n, m]) to [Bb, nb, mb] with Bb in {1, B}, nb in {1, n}, mb in
    {1, m}; differentiable (copies only when the leading dims are partly broadcast)."""
    check_broadcastable(name, t, [*batch, n, m], "[..., n, n_out]")
    while t.dim() < 2:
        t = t.unsqueeze(0)
    lead = list(t.shape[:-2])
    if all(s == 1 for s in lead):
        return t.reshape(1, t.shape[-2], t.shape[-1])
    B = math.prod(batch)
    return t.expand(*batch, t.shape[-2], t.shape[-1]).reshape(B, t.shape[-2], t.shape[-1])


def _check_shape(name: str, t: Tensor, shape: tuple[int, ...], layout: str) -> None:
    if tuple(t.shape) != shape:
        raise ValueError(f"{name}: expected shape {layout} = {list(shape)}, got {list(t.shape)}")


@torch.compiler.disable
def fused_em_routing(
    x: Tensor,  # [..., n, d_inp], zero at padded positions, not scaled
    scale: float | Tensor,  # n^-0.5: float, or tensor broadcastable to [..., 1, 1]
    a_logits: Tensor | tuple[Tensor, Tensor],  # [..., n], or (W_A [1, d_inp], B_A [1]): computed here
    beta_use: Tensor | nn.Module,  # broadcastable to [..., n, n_out], or nn.Linear(d_inp, n_out)
    beta_ign: Tensor | nn.Module,
    W_F1: Tensor,  # [n_out, d_inp]
    W_F2: Tensor,  # [d_inp, d_out]
    B_F2: Tensor,  # [n_out, d_out]
    W_G1: Tensor,  # [d_out, d_inp]
    W_G2: Tensor,  # [n_out, d_inp]
    B_G2: Tensor,  # [n_out, d_inp]
    W_S: Tensor,  # [n1, n_out], n1 in {n, 1}
    B_S: Tensor,  # [n1, n_out]
    mask: Tensor | None,  # bool broadcastable to [..., n, n_out], True = input i ignored by output j
    n_iters: int,
    normalize: bool,
    chunk_size: int | None = None,
) -> Tensor:
    """SPEC §1 steps 4–7 (E/D/M loop and final normalisation) without storing ``[..., n, n_out]`` tensors.

    Returns x_out ``[..., n_out, d_out]``; equal (to rounding) to the plain autograd computation, with
    gradients for x, a_logits, the beta tensors or the beta Linear layers' parameters, and every W/B.
    ``chunk_size``: rows (input vectors, summed over samples) per block; default
    :func:`default_chunk_rows` (~8 MiB per ``[rows, n_out]`` temporary on CPU, 256 MiB on GPUs). See the
    module docstring.
    """
    x = check_floating("x", x)
    check_rank("x", x, 2, "[..., n, d_inp]")
    *batch, n, d = x.shape
    if n == 0:
        raise ValueError(f"x: expected at least one input vector (n >= 1), got shape {list(x.shape)}")
    n_out, d_out = W_F1.shape[0], W_F2.shape[-1]
    for name, t, shape, layout in (
        ("W_F1", W_F1, (n_out, d), "[n_out, d_inp]"),
        ("W_F2", W_F2, (d, d_out), "[d_inp, d_out]"),
        ("B_F2", B_F2, (n_out, d_out), "[n_out, d_out]"),
        ("W_G1", W_G1, (d_out, d), "[d_out, d_inp]"),
        ("W_G2", W_G2, (n_out, d), "[n_out, d_inp]"),
        ("B_G2", B_G2, (n_out, d), "[n_out, d_inp]"),
    ):
        check_floating(name, t)
        _check_shape(name, t, shape, layout)
    for name, t in (("W_S", W_S), ("B_S", B_S)):
        check_floating(name, t)
        if t.dim() != 2 or t.shape[0] not in (1, n) or t.shape[1] != n_out:
            raise ValueError(
                f"{name}: expected shape [n1, n_out] with n1 in (1, {n}), n_out = {n_out}, "
                f"got {list(t.shape)}"
            )
    fold_a = isinstance(a_logits, tuple)
    if fold_a:  # a = scale·(x·W_A) + B_A, computed in the beta product when the betas are Linear
        W_A, B_A = a_logits
        _check_shape("W_A", check_floating("W_A", W_A), (1, d), "[1, d_inp]")
        _check_shape("B_A", check_floating("B_A", B_A), (1,), "[1]")
    else:
        check_floating("a_logits", a_logits)
        check_broadcastable("a_logits", a_logits, [*batch, n], "[..., n]")
    if isinstance(n_iters, bool) or not isinstance(n_iters, int) or n_iters < 1:
        raise ValueError(f"n_iters: expected an int >= 1, got {n_iters!r}")
    if chunk_size is not None and (
        isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1
    ):
        raise ValueError(f"chunk_size: expected None or an int >= 1, got {chunk_size!r}")
    if isinstance(scale, Tensor):
        if scale.requires_grad:
            raise ValueError("scale: expected a tensor without gradient (n^-0.5 is not differentiable)")
        check_broadcastable("scale", scale, [*batch, 1, 1], "[..., 1, 1]")
    if mask is not None:
        mask = check_bool_mask("mask", mask)
        check_broadcastable("mask", mask, [*batch, n, n_out], "[..., n, n_out]")

    # Betas: a pair of nn.Linear is fused; any other module is applied here (plain autograd).
    linear = isinstance(beta_use, nn.Linear) and isinstance(beta_ign, nn.Linear)
    if not linear:
        if isinstance(beta_use, nn.Module):
            beta_use = beta_use(x)
        if isinstance(beta_ign, nn.Module):
            beta_ign = beta_ign(x)
        check_floating("beta_use", beta_use)
        check_floating("beta_ign", beta_ign)

    # Dtypes: element-wise work and accumulators in the widest floating input's dtype (parameters are usually
    # float32); the n-sized products in that dtype too, or in the autocast dtype under autocast.
    if fold_a and not linear:  # nothing to fold into: the logits by plain ops
        scale_a = scale if not isinstance(scale, Tensor) else scale.squeeze(-1)
        a_logits, fold_a = scale_a * (x @ W_A[0]) + B_A, False
    floats = [x, W_F1, W_F2, B_F2, W_G1, W_G2, B_G2, W_S, B_S]
    floats += [W_A, B_A] if fold_a else [a_logits]
    floats += [beta_use.weight, beta_ign.weight] if linear else [beta_use, beta_ign]
    dtype = floats[0].dtype
    for t in floats[1:]:
        dtype = torch.promote_types(dtype, t.dtype)
    device_type = x.device.type
    cdt = torch.get_autocast_dtype(device_type) if autocast_enabled(device_type) else dtype

    def cast(t: Tensor | None, to: torch.dtype = dtype) -> Tensor | None:
        return t if t is None or t.dtype == to else t.to(to)

    with _no_autocast(x.device):
        B = math.prod(batch)
        xb = cast(x, cdt).reshape(B, n, d).contiguous()  # [B, n, d]
        # [B, n] logits, or B_A [1] when they are computed in the Function (W_A is then Wb's last row)
        ab = cast(B_A) if fold_a else cast(a_logits).expand(*batch, n).reshape(B, n)
        if isinstance(scale, Tensor):
            scale = cast(scale).expand(*batch, 1, 1).reshape(B, 1, 1)
        else:
            scale = float(scale)
        if linear:
            _check_shape("beta_use.weight", beta_use.weight, (n_out, d), "[n_out, d_inp]")
            _check_shape("beta_ign.weight", beta_ign.weight, (n_out, d), "[n_out, d_inp]")
            W_use, W_ign = cast(beta_use.weight), cast(beta_ign.weight)
            # Wb [2m (+1), d]: outputs [β_use + β_ign | β_ign (| x·W_A)]
            W_rows = [W_use + W_ign, W_ign] + ([cast(W_A)] if fold_a else [])
            Wb = cast(torch.cat(W_rows, dim=0), cdt)
            if beta_use.bias is None and beta_ign.bias is None:
                bb = None
            else:
                b_use = W_use.new_zeros(n_out) if beta_use.bias is None else cast(beta_use.bias)
                b_ign = W_use.new_zeros(n_out) if beta_ign.bias is None else cast(beta_ign.bias)
                bb = cast(torch.cat([b_use + b_ign, b_ign] + ([W_use.new_zeros(1)] if fold_a else [])), cdt)
            bu = bi = None
        else:
            Wb = bb = None
            bu = _canonical("beta_use", cast(beta_use), batch, n, n_out)
            bi = _canonical("beta_ign", cast(beta_ign), batch, n, n_out)
        WS = cast(W_S).unsqueeze(0)  # [1, n1, n_out]
        BS = cast(B_S).unsqueeze(0)
        mk = None
        if mask is not None:
            mk = _canonical("mask", mask, batch, n, n_out)
            mk = mk.expand(mk.shape[0], mk.shape[1], n_out)  # [Bm, nm, n_out]
        rows = chunk_size if chunk_size is not None else default_chunk_rows(n_out, 4, device_type)
        differentiable = [xb, ab, W_F1, W_F2, B_F2, W_G1, W_G2, B_G2, WS, BS]
        differentiable += [Wb] + ([] if bb is None else [bb]) if linear else [bu, bi]
        for_backward = torch.is_grad_enabled() and any(t.requires_grad for t in differentiable)
        tri = device_type in TRITON_DEVICES and _tri.supported(linear, mk, WS, n_out)
        out = _FusedEMRouting.apply(
            xb, ab, bu, bi, Wb, bb, cast(W_F1), cast(W_F2), cast(B_F2), cast(W_G1), cast(W_G2), cast(B_G2),
            WS, BS, scale, mk, n_iters, bool(normalize), rows, for_backward, tri, fold_a,
        )  # fmt: skip
    return out.reshape(*batch, n_out, d_out)
