"""Backward of the fused routing loop (:class:`heinsen_routing._fused._FusedEMRouting`).

Walks the iterations in reverse; per block of rows: ``dφ = x_blk @ gA_tᵀ + gs_t`` (one product), the
element-wise chain (Triton kernel on CUDA, torch ops elsewhere) gives ``da``, ``dβ``, ``dW_S``, ``dB_S`` and
``dL``; ``dP_t += dLᵀ @ x_blk``. The small ops are differentiated through the graphs kept by forward. At
t = 0 one product gives the beta (and W_A) weight gradients and one writes dx from all the left factors
(see the module docstring of :mod:`heinsen_routing._fused`).
"""

from __future__ import annotations

import torch
from torch import Tensor

from . import _triton_chain as _tri
from ._chain import _add_blk, _baddbmm_as, _betas, _blk, _BlockState, _bmm_into, _mul_


def _dx_columns(t: int, n_iters: int, m: int) -> tuple[int, int]:
    """Column offsets of φ_t and dL_t in the dx left factor [φ_T−1, dL_T−1, …, φ_1, dL_1, φ_0 (, dβ)]."""
    phi = (n_iters - 1 - t) * 2 * m
    return phi, phi + m


def _backward(ctx, g_out, x, a, bu, bi, Wb, bb, W_F1, W_F2, B_F2, W_G1, W_G2, B_G2, W_S, B_S, mask):
    """Gradients of :class:`_FusedEMRouting` (see the module docstring), in the order of its inputs."""
    needs = ctx.needs_input_grad
    linear, fold_a = Wb is not None, ctx.fold_a
    need_x = needs[0]
    # da is needed for a's gradient (B_A's when a = scale·(x·W_A) + B_A is folded into Wb, and then also
    # for W_A = Wb's last row and for dx)
    need_a = needs[1] or (fold_a and (needs[4] or need_x))
    # dβ is needed for β's own gradients and, with Linear betas, for the dx term dβ @ Wb.
    need_beta = (needs[4] or needs[5] or need_x) if linear else (needs[2] or needs[3])
    need_WS, need_BS = needs[12], needs[13]
    T, blocks, tri = ctx.n_iters, ctx.blocks, ctx.tri
    par = ctx.threads.par
    B, n, d = x.shape
    m = W_F1.shape[0]
    edt, cdt = a.dtype, x.dtype
    n_beta = Wb.shape[0] if linear else 0  # 2m (+1 when a is folded)

    def zeros(t: Tensor) -> Tensor:  # fp32/edt accumulator, contiguous
        return torch.zeros(t.shape, dtype=edt, device=t.device)

    gx = torch.empty_like(x, memory_format=torch.contiguous_format) if need_x else None  # written at t = 0
    ga = zeros(a) if need_a else None
    gbu = zeros(bu) if (not linear and needs[2]) else None
    gbi = zeros(bi) if (not linear and needs[3]) else None
    gWb = zeros(Wb) if (linear and needs[4]) else None
    gbb = zeros(bb) if (linear and bb is not None and needs[5]) else None
    gWS = zeros(W_S) if need_WS else None
    gBS = zeros(B_S) if need_BS else None
    dbeta_acc: list[Tensor | None] = [None] * len(blocks)  # Linear betas: Σ_t dβ per block, [Bc, c, 2m] edt

    g_small: list[Tensor | None] = [None] * 6

    def small_grads(t: int, upstream: Tensor) -> tuple[Tensor, Tensor]:
        """Gradients w.r.t. A_t, s_t (and the small parameters) of x_out_t -> (P_{t+1} | output), through the
        graph kept by forward."""
        inputs, target = ctx.graphs[t]
        with par():
            grads = torch.autograd.grad(target, inputs, upstream, retain_graph=True, allow_unused=True)
        for i, g in enumerate(grads[2:]):
            if g is not None:
                g_small[i] = g if g_small[i] is None else g_small[i] + g
        return grads[0], grads[1]

    # dx = Σ_t (φ_t @ gA_t + dL_t @ P_t) + dβ @ Wb: the left factors are written per block into one
    # [Bc, c, (2T−1)·m (+2m)] buffer (product dtype) and all terms are one matmul at t = 0.
    n_cols = (2 * T - 1) * m + n_beta
    dx_lhs: list[Tensor | None] = [None] * len(blocks)
    dx_rhs: list[Tensor] = []
    gA, gs = small_grads(T - 1, g_out)
    for t in reversed(range(T)):
        P = ctx.Ps[t]
        gP = zeros(P) if P is not None else None
        if need_x:
            dx_rhs += [gA] if P is None else [gA, P]  # [B, m, d] each
            if t == 0:
                if linear:
                    dx_rhs.append(Wb.unsqueeze(0).expand(B, -1, -1))  # [B, 2m, d]
                rhs = torch.cat([r.to(cdt) for r in dx_rhs], dim=1)  # [B, n_cols, d]
        gA_T = gA.transpose(1, 2).to(cdt)  # [B, d, m]
        col_phi, col_dL = _dx_columns(t, T, m)
        for k, (bs, is_) in enumerate(blocks):
            xb = x[bs, is_]  # [Bc, c, d]
            Bc, c = xb.shape[0], xb.shape[1]
            L = ctx.logits[t - 1][k] if t > 0 else None
            if need_x and dx_lhs[k] is None:
                dx_lhs[k] = xb.new_empty(Bc, c, n_cols)
            lhs = dx_lhs[k]
            with par():
                dphi = _baddbmm_as(gs[bs].unsqueeze(1), xb, gA_T[bs], edt)  # dφ [Bc, c, m]
            if linear and need_beta and dbeta_acc[k] is None:
                acc, acc_add = xb.new_empty(Bc, c, n_beta, dtype=edt), False
                dbeta_acc[k] = acc
            elif linear and need_beta:
                acc, acc_add = dbeta_acc[k], True
            else:
                acc, acc_add = None, False
            if tri:
                dL = lhs[..., col_dL : col_dL + m] if (need_x and L is not None) else None
                if L is not None and dL is None:
                    dL = xb.new_empty(Bc, c, m)
                sums = _tri.chain_backward(
                    dphi, a[bs, is_], ga[bs, is_] if need_a else None, L, ctx.beta_blocks[k], W_S, B_S, acc,
                    acc_add, dL, lhs[..., col_phi:col_phi + m] if need_x else None,
                )  # fmt: skip
                if sums is not None:
                    if need_WS:
                        gWS += sums[0]
                    if need_BS:
                        gBS += sums[1]
            else:
                bsum, bib = _betas(linear, ctx.beta_blocks, k, bu, bi, bs, is_, m, edt)
                WSb, BSb = _blk(W_S, bs, is_), _blk(B_S, bs, is_)
                st = _BlockState(a[bs, is_], _blk(mask, bs, is_), bsum, bib, L, WSb, BSb, m)
                dL = _chain_backward_torch(st, dphi, L, WSb, bs, is_, acc, acc_add, ga, gbu, gbi, gWS, gBS,
                                           need_beta and not linear)  # fmt: skip
                if need_x:
                    lhs[..., col_phi : col_phi + m].copy_(st.phi((Bc, c, m)))
                    if dL is not None:
                        lhs[..., col_dL : col_dL + m].copy_(dL)
            if L is not None:
                with par():
                    _bmm_into(gP[bs], dL.transpose(1, 2), xb)
            if linear and need_beta and t == 0:
                if fold_a:  # d(x·W_A) = scale·da, complete now for this block
                    sc = ctx.scale if isinstance(ctx.scale, float) else ctx.scale[bs].view(Bc, 1)
                    torch.mul(ga[bs, is_], sc, out=acc[..., 2 * m])
                flat = acc.view(1, Bc * c, n_beta)
                if gWb is not None:
                    with par():
                        _bmm_into(gWb.unsqueeze(0), flat.transpose(1, 2), xb.reshape(1, Bc * c, d))
                if gbb is not None:
                    gbb += flat[0].sum(0)
                if need_x:
                    lhs[..., (2 * T - 1) * m :].copy_(acc)
                dbeta_acc[k] = None
            if need_x and t == 0:
                with par():
                    _bmm_into(gx[bs, is_], lhs, rhs[bs], accumulate=False)
                dx_lhs[k] = None
        if t > 0:
            gA, gs = small_grads(t - 1, gP)

    def cast(g: Tensor | None, like: Tensor | None) -> Tensor | None:
        return None if g is None else g.to(like.dtype)

    g_small_out = [g if needs[6 + i] else None for i, g in enumerate(g_small)]
    if fold_a:  # the input was B_A [1]
        ga = ga.sum().reshape(1) if needs[1] else None
    return (gx, ga, gbu, gbi, cast(gWb, Wb), cast(gbb, bb), *g_small_out, gWS, gBS)


def _chain_backward_torch(
    st: _BlockState, dphi: Tensor, L: Tensor | None, WSb: Tensor, bs: slice, is_: slice, acc: Tensor | None,
    acc_add: bool, ga: Tensor | None, gbu: Tensor | None, gbi: Tensor | None, gWS: Tensor | None,
    gBS: Tensor | None, fixed_betas: bool,
) -> Tensor | None:  # fmt: skip
    """Backward of one block's element-wise chain with torch ops: accumulates da, dβ (into ``acc`` for
    Linear betas, else into gbu/gbi), dW_S, dB_S; returns dL [Bc, c, m] (None at t = 0)."""
    u = dphi * st.fa  # dφ·f_a
    if ga is not None:
        dfa = dphi.mul_(st.coef)  # dφ is not needed any more
        if st.keep is not None:
            dfa.mul_(st.keep)
        ga[bs, is_] += dfa.sum(-1) * (st.sig * (1.0 - st.sig)).squeeze(-1)
    # φ = f_a·(bsum·R − β_ign): d bsum = u·R, d β_ign (as a free variable) = −u, dR = u·bsum
    uR, uR_owned = None, False  # u·R
    if acc is not None:
        m = u.shape[-1]
        if not acc_add:
            uR = torch.mul(u, st.R, out=acc[..., :m])
            torch.neg(u, out=acc[..., m : 2 * m])
        else:
            uR, uR_owned = u * st.R, True
            acc[..., :m] += uR
            acc[..., m : 2 * m] -= u
    elif fixed_betas:
        uR, uR_owned = u * st.R, True
        if gbu is not None:
            _add_blk(gbu, bs, is_, uR)
        if gbi is not None:
            _add_blk(gbi, bs, is_, uR - u)
    if L is None:
        return None
    if uR is None:
        uR, uR_owned = u.mul_(st.R), True
    dRR = uR.mul_(st.bsum) if uR_owned else uR * st.bsum  # dR·R
    dS = dRR.addcmul_(st.R, dRR.sum(-1, keepdim=True), value=-1.0)  # R·(dR − Σ_j dR·R)
    dZ = dS.addcmul_(dS, st.sig_z, value=-1.0)  # dS·(1 − σ(Z)) [Bc, c, m]
    if gWS is not None:
        _add_blk(gWS, bs, is_, dZ * L)
    if gBS is not None:
        _add_blk(gBS, bs, is_, dZ)
    return _mul_(dZ, WSb)
