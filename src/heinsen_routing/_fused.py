"""Fused, chunked E/D/M loop of EfficientVectorRouting (SPEC §1 steps 4–7) with a hand-written backward.

Why. With plain autograd every iteration leaves several ``[..., n, n_out]`` tensors (the similarity logits
and their scaled/activated versions S, R, D_use, D_ign, φ, and, for a variable number of inputs, the two
beta tensors) plus the scaled inputs ``xs = x·scale`` (``[..., n, d_inp]``) in memory until backward. For
n = 1M, n_out = 100, d_inp = 1024 that is ~9 GB. Here one :class:`torch.autograd.Function` runs the whole
loop, streaming the inputs in blocks of rows, and keeps only what cannot be recomputed cheaply.

Algorithm (B = flattened batch, n inputs, m = n_out, d = d_inp, h = d_out, T = n_iters). Per iteration t
and per block of rows (several whole samples, or a row range of one sample; ``chunk_size`` rows, default
:func:`default_chunk_rows` ≈ 8 MiB per ``[rows, m]`` temporary, e.g. 20971 rows for m = 100):

* E-step (t > 0): ``L = x_blk @ P_tᵀ`` (one matmul ``[rows, d] × [d, m]``), ``Z = L·W_S + B_S``,
  ``R = softmax_j(logσ(Z))`` over the unmasked j, computed on CPU as ``σ(Z) / Σ_j σ(Z)`` (the same value
  in three cheap passes; a block where some row's Σ_j σ(Z) underflows falls back to the log-space
  softmax, which other devices always use). Rows masked for every j get R = 0. t = 0: R = 1/m (or
  1/#unmasked j).
* D/M-steps element-wise: ``φ = f_a·((β_use + β_ign)·R − β_ign)``, which is ``β_use·D_use − β_ign·D_ign``
  with ``D_use = f_a·R``, ``D_ign = f_a − D_use``; then ``A_t += φᵀ @ x_blk`` (``[m, rows] × [rows, d]``)
  and ``s_t += Σ_i φ``. For variable n (β given as two ``nn.Linear``) both layers are one matmul
  ``x_blk @ [W_use + W_ign; W_ign]ᵀ`` at t = 0, whose outputs are directly ``[β_use + β_ign | β_ign]``.
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
              [+ B·n·d for dx and 2·(T−1)·B·n·m for its left factors, when x needs a gradient]
              + ~12 · rows · m per-block temporaries

(plain autograd keeps ~6·T·B·n·m, plus B·n·d for xs, and 2·B·n·m for Linear betas).

Threads: on CPU the element-wise block work runs with one intra-op thread and only the matmuls (and the
small ops) use all of torch's threads (see :data:`SERIAL_ELEMENTWISE`); the thread count is restored on
exit, also on errors.

Numerics: the same operations as SPEC §1 in another summation order (blocks) and with
``β_use·D_use − β_ign·D_ign`` regrouped as ``f_a·((β_use+β_ign)·R − β_ign)``; outputs and gradients match
plain autograd to rounding (float64 ~1e-12, float32 ~1e-6 relative). Under ``torch.autocast`` the
routing runs with autocast disabled in the widest dtype among its floating inputs (parameters are
usually float32), so results are close to float32. Under ``torch.compile`` the call is a graph break
(runs eagerly). Double backward is not supported.

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

import functools
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .validation import check_bool_mask, check_broadcastable, check_floating, check_rank

__all__ = ["fused_em_routing", "default_chunk_rows"]

# Target size of one [rows, n_out] block temporary. Measured on 2 shared CPU cores: blocks of a few
# thousand rows lose up to 2x to per-op threading overhead under load; ~8 MiB blocks (~20k rows for
# n_out = 100) keep per-op overhead negligible while temporaries stay ~100 MiB in all.
_TARGET_BLOCK_BYTES = 8 << 20
_MIN_ROWS = 1024
_MAX_ROWS = 1 << 16


def default_chunk_rows(n_out: int, element_size: int = 4) -> int:
    """Rows (input vectors, summed over samples) per block when ``chunk_size`` is None."""
    rows = _TARGET_BLOCK_BYTES // max(1, n_out * element_size)
    return int(min(_MAX_ROWS, max(_MIN_ROWS, rows)))


def _blocks(batch: int, n: int, rows: int) -> list[tuple[slice, slice]]:
    """Blocks of at most ``rows`` (sample, input) rows: whole samples if a sample fits, else row ranges
    of one sample. Each block of a contiguous [B, n, d] tensor is itself contiguous."""
    if rows >= n:
        per = max(1, rows // n)
        per = -(-batch // -(-batch // per))  # same block count, sizes as even as possible
        return [(slice(b0, min(batch, b0 + per)), slice(0, n)) for b0 in range(0, batch, per)]
    rows = -(-n // -(-n // rows))
    return [(slice(b, b + 1), slice(i0, min(n, i0 + rows))) for b in range(batch) for i0 in range(0, n, rows)]


def _blk(t: Tensor | None, bs: slice, is_: slice) -> Tensor | None:
    """Block of a canonical [Bb, nb, mb] tensor (dims of size 1 broadcast)."""
    if t is None:
        return None
    return t[bs if t.shape[0] > 1 else slice(None), is_ if t.shape[1] > 1 else slice(None)]


def _add_blk(buf: Tensor, bs: slice, is_: slice, grad: Tensor) -> None:
    """Accumulate a block gradient into the canonical [Bb, nb, mb] gradient buffer."""
    view = _blk(buf, bs, is_)
    view += grad.sum_to_size(view.shape)


def _norm(t: Tensor) -> Tensor:
    """N: layer norm over the last dim without affine parameters (eps 1e-5); identity if that dim is 1."""
    return F.layer_norm(t, t.shape[-1:], eps=1e-5) if t.shape[-1] > 1 else t


def _x_out(A: Tensor, s: Tensor, scale: float | Tensor, W_F1: Tensor, W_F2: Tensor, B_F2: Tensor) -> Tensor:
    """x_out [B, m, h] from A = Σ_i φ·x [B, m, d] and s = Σ_i φ [B, m]."""
    return (A * scale * W_F1) @ W_F2 + s.unsqueeze(-1) * B_F2


def _pred(x_out: Tensor, W_G1: Tensor, W_G2: Tensor, B_G2: Tensor) -> Tensor:
    """Predicted inputs P [B, m, d] from x_out [B, m, h]."""
    return _norm(x_out) @ W_G1 * W_G2 + B_G2


# R = softmax_j(logσ(Z)) equals σ(Z) / Σ_j σ(Z); the latter is used on CPU (3 cheap passes instead of
# logsigmoid + softmax) unless a row's Σ_j σ(Z) is below finfo.tiny / finfo.eps (all σ(Z) underflowing),
# in which case the block falls back to the log-space softmax. Other devices always use the log-space
# form (no host synchronisation per block).
_RATIO_SOFTMAX_DEVICES = ("cpu",)


class _BlockState:
    """Element-wise quantities of one block at one iteration (recomputed identically in backward)."""

    __slots__ = ("sig", "keep", "fa", "bsum", "bi", "R", "sig_z", "coef")

    def __init__(
        self,
        a_blk: Tensor,  # [Bc, c]
        mask_blk: Tensor | None,  # bool [Bm, c, m] (expanded over m)
        bsum: Tensor,  # β_use + β_ign, [.., c?, m?]
        bi: Tensor,  # β_ign
        L: Tensor | None,  # [Bc, c, m] logits x @ P^T (t > 0)
        W_S: Tensor | None,
        B_S: Tensor | None,
        n_out: int,
    ) -> None:
        self.sig = torch.sigmoid(a_blk).unsqueeze(-1)  # [Bc, c, 1]
        self.keep = None if mask_blk is None else (~mask_blk).to(self.sig.dtype)  # [Bm, c, m]
        self.fa = self.sig if self.keep is None else self.sig * self.keep  # f_a: [Bc, c, 1 or m]
        self.bsum, self.bi = bsum, bi
        self.sig_z = None  # σ(Z) (0 at masked entries), t > 0
        if L is None:  # t = 0: uniform over the unmasked outputs
            if self.keep is None:
                self.R = 1.0 / n_out
            else:
                self.R = self.keep / self.keep.sum(-1, keepdim=True).clamp(min=1.0)
        else:
            self.R = self._routing(L, W_S, B_S, mask_blk)
        coef = torch.mul(bsum, self.R)
        self.coef = _sub_(coef, bi)  # (β_use+β_ign)·R − β_ign, so that φ = f_a·coef

    def _routing(self, L: Tensor, W_S: Tensor, B_S: Tensor, mask_blk: Tensor | None) -> Tensor:
        """R = softmax_j(logσ(L·W_S + B_S)) over the unmasked j (rows masked for every j: 0)."""
        Z = torch.addcmul(B_S, L, W_S)  # [Bc, c, m]
        if L.device.type in _RATIO_SOFTMAX_DEVICES:
            sig_z = Z.sigmoid_()
            if self.keep is not None:
                sig_z.mul_(self.keep)
            total = sig_z.sum(-1, keepdim=True)  # [Bc, c, 1]
            tiny = torch.finfo(total.dtype).tiny / torch.finfo(total.dtype).eps
            low = total < tiny
            if mask_blk is not None:
                low &= ~mask_blk.all(-1, keepdim=True)
            if not bool(low.any()):
                self.sig_z = sig_z
                return sig_z / total.clamp_(min=tiny)
            Z = torch.addcmul(B_S, L, W_S)
        S = F.logsigmoid(Z)
        if mask_blk is not None:
            fill = mask_blk & ~mask_blk.all(-1, keepdim=True)  # rows masked everywhere stay finite
            S = S.masked_fill_(fill, float("-inf"))
        R = torch.softmax(S, dim=-1)
        self.sig_z = Z.sigmoid_()
        if mask_blk is not None:
            R.masked_fill_(mask_blk, 0.0)
            self.sig_z.mul_(self.keep)
        return R

    def phi(self, rows_shape: tuple[int, int, int], inplace: bool = False) -> Tensor:
        """φ [Bc, c, m] = f_a·coef (``inplace``: overwrite coef when shapes allow)."""
        phi = _mul_(self.coef, self.fa) if inplace else self.coef * self.fa
        if phi.shape != rows_shape:
            phi = phi.expand(rows_shape).contiguous()
        return phi


def _fits(t: Tensor, other: Tensor | float) -> bool:
    """True when an in-place op of ``t`` with ``other`` keeps t's shape."""
    return not isinstance(other, Tensor) or torch.broadcast_shapes(t.shape, other.shape) == t.shape


def _mul_(t: Tensor, other: Tensor | float) -> Tensor:
    return t.mul_(other) if _fits(t, other) else t * other


def _sub_(t: Tensor, other: Tensor) -> Tensor:
    return t.sub_(other) if _fits(t, other) else t - other


# On CPU the element-wise block work runs with one intra-op thread and only the matmuls use all of
# torch's threads: on a loaded machine every multi-threaded element-wise op on a block waits for a
# scheduler slice (~4-8 ms measured on 2 shared cores), which made blocked element-wise chains several
# times slower; on an idle machine it costs a few percent. Set to False to keep torch's thread count.
SERIAL_ELEMENTWISE = True


class _Threads:
    """Context: one intra-op thread inside (element-wise work); ``par()`` restores all threads (matmuls)."""

    def __init__(self, device: torch.device) -> None:
        self.n = torch.get_num_threads()
        self.on = SERIAL_ELEMENTWISE and device.type == "cpu" and self.n > 1

    def __enter__(self) -> _Threads:
        if self.on:
            torch.set_num_threads(1)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.on:
            torch.set_num_threads(self.n)

    def par(self) -> _Parallel:
        return _Parallel(self)


class _Parallel:
    def __init__(self, threads: _Threads) -> None:
        self.threads = threads

    def __enter__(self) -> None:
        if self.threads.on:
            torch.set_num_threads(self.threads.n)

    def __exit__(self, *exc: object) -> None:
        if self.threads.on:
            torch.set_num_threads(1)


def _with_threads(fn):
    """Run a Function's forward/backward inside :class:`_Threads` (available as ``ctx.threads``)."""

    @functools.wraps(fn)
    def wrapper(ctx, first: Tensor, *args):
        device = first.device if isinstance(first, Tensor) else torch.device("cpu")
        with _Threads(device) as threads:
            ctx.threads = threads
            return fn(ctx, first, *args)

    return wrapper


def _bmm_into(out: Tensor, a: Tensor, b: Tensor, accumulate: bool = True) -> None:
    """out += a @ b (or out = a @ b) for [Bc, ., .] operands (a plain matmul when Bc == 1)."""
    if out.shape[0] == 1:
        if accumulate:
            out[0].addmm_(a[0], b[0])
        else:
            torch.mm(a[0], b[0], out=out[0])
    elif accumulate:
        out.baddbmm_(a, b)
    else:
        torch.bmm(a, b, out=out)


class _FusedEMRouting(torch.autograd.Function):
    """The whole E/D/M loop; betas enter as (β_use + β_ign, β_ign): fixed tensors ``bu``/``bi`` (summed per
    block) or one stacked Linear ``x @ Wb.T + bb`` whose outputs are ``[β_use + β_ign | β_ign]``."""

    @staticmethod
    @_with_threads
    def forward(  # type: ignore[override]
        ctx,
        x: Tensor,  # [B, n, d] contiguous
        a: Tensor,  # [B, n]
        bu: Tensor | None,  # [Bb, nb, mb] (fixed betas) or None
        bi: Tensor | None,
        Wb: Tensor | None,  # [2m, d] = [W_use + W_ign; W_ign] (Linear betas) or None
        bb: Tensor | None,  # [2m] or None
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
    ) -> Tensor:
        B, n, d = x.shape
        m = W_F1.shape[0]
        par = ctx.threads.par
        blocks = _blocks(B, n, rows)
        linear = Wb is not None
        beta_blocks: list[Tensor] = []  # Linear betas: [Bc, c, 2m] = [β_use + β_ign | β_ign] per block
        logits: list[list[Tensor]] = []  # logits[t-1][k]: [Bc, c, m]
        As: list[Tensor] = []
        ss: list[Tensor] = []
        Ps: list[Tensor | None] = [None]
        x_out = None
        for t in range(n_iters):
            A = x.new_zeros(B, m, d)
            s = x.new_zeros(B, m)
            P = Ps[t]
            L_t: list[Tensor] = []
            for k, (bs, is_) in enumerate(blocks):
                xb = x[bs, is_]  # [Bc, c, d]
                Bc, c = xb.shape[0], xb.shape[1]
                if linear:
                    if t == 0:
                        flat = xb.reshape(Bc * c, d)
                        with par():
                            beta = flat @ Wb.t() if bb is None else torch.addmm(bb, flat, Wb.t())
                        beta_blocks.append(beta.view(Bc, c, 2 * m))
                    bsum, bib = beta_blocks[k][..., :m], beta_blocks[k][..., m:]
                else:
                    bib = _blk(bi, bs, is_)
                    bsum = _blk(bu, bs, is_) + bib
                L = None
                if P is not None:
                    L = xb.new_empty(Bc, c, m)
                    with par():
                        torch.bmm(xb, P[bs].transpose(1, 2), out=L)  # [Bc, c, m]
                    if for_backward:
                        L_t.append(L)
                st = _BlockState(
                    a[bs, is_], _blk(mask, bs, is_), bsum, bib, L, _blk(W_S, bs, is_), _blk(B_S, bs, is_), m
                )
                phi = st.phi((Bc, c, m), inplace=True)  # [Bc, c, m]
                with par():
                    _bmm_into(A[bs], phi.transpose(1, 2), xb)
                s[bs] += phi.sum(1)
            if t > 0:
                logits.append(L_t)
            As.append(A)
            ss.append(s)
            with par():
                x_out = _x_out(A, s, scale, W_F1, W_F2, B_F2)  # [B, m, h]
                if t < n_iters - 1:
                    Ps.append(_pred(x_out, W_G1, W_G2, B_G2))
        with par():
            out = _norm(x_out) if normalize else x_out

        ctx.save_for_backward(x, a, bu, bi, Wb, bb, W_F1, W_F2, B_F2, W_G1, W_G2, B_G2, W_S, B_S, mask)
        ctx.scale = scale
        ctx.n_iters, ctx.normalize, ctx.blocks = n_iters, normalize, blocks
        ctx.As, ctx.ss, ctx.Ps, ctx.logits, ctx.beta_blocks = As, ss, Ps, logits, beta_blocks
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    @_with_threads
    def backward(ctx, g_out: Tensor):  # type: ignore[override]
        x, a, bu, bi, Wb, bb, W_F1, W_F2, B_F2, W_G1, W_G2, B_G2, W_S, B_S, mask = ctx.saved_tensors
        needs = ctx.needs_input_grad
        need_x, need_a = needs[0], needs[1]
        linear = Wb is not None
        # dβ is needed for β's own gradients and, with Linear betas, for the dx term dβ @ Wb.
        need_beta = (needs[4] or needs[5] or need_x) if linear else (needs[2] or needs[3])
        need_WS, need_BS = needs[12], needs[13]
        scale, T, blocks = ctx.scale, ctx.n_iters, ctx.blocks
        par = ctx.threads.par
        B, n, d = x.shape
        m = W_F1.shape[0]

        gx = torch.empty_like(x) if need_x else None  # written once, at t = 0
        ga = torch.zeros_like(a) if need_a else None
        gbu = torch.zeros_like(bu) if (not linear and needs[2]) else None
        gbi = torch.zeros_like(bi) if (not linear and needs[3]) else None
        gWb = torch.zeros_like(Wb) if (linear and needs[4]) else None
        gbb = torch.zeros_like(bb) if (linear and bb is not None and needs[5]) else None
        gWS = torch.zeros_like(W_S) if need_WS else None
        gBS = torch.zeros_like(B_S) if need_BS else None
        dbeta_acc: list[Tensor | None] = [None] * len(blocks)  # Linear betas: Σ_t dβ per block, [Bc, c, 2m]

        small = [W_F1, W_F2, B_F2, W_G1, W_G2, B_G2]
        leaves = [p.detach().requires_grad_(True) for p in small]
        g_small: list[Tensor | None] = [None] * 6

        def small_grads(t: int, upstream: Tensor, through_pred: bool) -> tuple[Tensor, Tensor]:
            """Gradients w.r.t. A_t, s_t (and the small parameters) of x_out_t -> (P_{t+1} | output)."""
            with torch.enable_grad(), par():
                A_l = ctx.As[t].detach().requires_grad_(True)
                s_l = ctx.ss[t].detach().requires_grad_(True)
                y = _x_out(A_l, s_l, scale, *leaves[:3])
                if through_pred:
                    y = _pred(y, *leaves[3:])
                    inputs = [A_l, s_l, *leaves]
                else:
                    y = _norm(y) if ctx.normalize else y
                    inputs = [A_l, s_l, *leaves[:3]]
                grads = torch.autograd.grad(y, inputs, upstream, allow_unused=True)
            for i, g in enumerate(grads[2:]):
                if g is not None:
                    g_small[i] = g if g_small[i] is None else g_small[i] + g
            return grads[0], grads[1]

        # dx = Σ_t (φ_t @ gA_t + dL_t @ P_t) + dβ @ Wb: the left factors of t >= 1 are kept per block and
        # all terms are one matmul at t = 0 (inner size (2T−1)·m, +2m for Linear betas).
        dx_lhs: list[list[Tensor]] = [[] for _ in blocks]
        dx_rhs: list[Tensor] = []
        gA, gs = small_grads(T - 1, g_out, through_pred=False)
        for t in reversed(range(T)):
            P = ctx.Ps[t]
            gP = torch.zeros_like(P) if P is not None else None
            if need_x:
                dx_rhs += [gA] if P is None else [gA, P]  # [B, m, d] each
                if linear and t == 0:
                    dx_rhs.append(Wb.unsqueeze(0).expand(B, -1, -1))  # [B, 2m, d]
                if t == 0:
                    rhs = torch.cat(dx_rhs, dim=1)  # [B, (2T-1)m (+2m), d]
            gA_T = gA.transpose(1, 2)  # [B, d, m]
            for k, (bs, is_) in enumerate(blocks):
                xb = x[bs, is_]  # [Bc, c, d]
                Bc, c = xb.shape[0], xb.shape[1]
                if linear:
                    bsum, bib = ctx.beta_blocks[k][..., :m], ctx.beta_blocks[k][..., m:]
                else:
                    bib = _blk(bi, bs, is_)
                    bsum = _blk(bu, bs, is_) + bib
                L = ctx.logits[t - 1][k] if t > 0 else None
                WSb, BSb = _blk(W_S, bs, is_), _blk(B_S, bs, is_)
                st = _BlockState(a[bs, is_], _blk(mask, bs, is_), bsum, bib, L, WSb, BSb, m)
                with par():
                    dphi = torch.baddbmm(gs[bs].unsqueeze(1), xb, gA_T[bs])  # dφ [Bc, c, m]
                u = dphi * st.fa  # dφ·f_a
                if need_a:
                    dfa = dphi.mul_(st.coef)  # dφ is not needed any more
                    if st.keep is not None:
                        dfa.mul_(st.keep)
                    ga[bs, is_] += dfa.sum(-1) * (st.sig * (1.0 - st.sig)).squeeze(-1)
                # φ = f_a·(bsum·R − β_ign): d bsum = u·R, d β_ign (as a free variable) = −u, dR = u·bsum
                lhs = dx_lhs[k]
                if need_x:
                    lhs.append(st.phi((Bc, c, m)))
                uR = None  # u·R
                if need_beta and linear:
                    acc = dbeta_acc[k]
                    if acc is None:
                        acc = xb.new_empty(Bc, c, 2 * m)
                        uR = torch.mul(u, st.R, out=acc[..., :m])
                        torch.neg(u, out=acc[..., m:])
                        uR_owned = False  # a view of acc
                    else:
                        uR = u * st.R
                        acc[..., :m] += uR
                        acc[..., m:] -= u
                        uR_owned = True
                    dbeta_acc[k] = acc if t > 0 else None
                elif need_beta:
                    uR = u * st.R
                    uR_owned = True
                    if gbu is not None:
                        _add_blk(gbu, bs, is_, uR)
                    if gbi is not None:
                        _add_blk(gbi, bs, is_, uR - u)
                if L is not None:
                    if uR is None:
                        uR, uR_owned = u.mul_(st.R), True
                    dRR = uR.mul_(st.bsum) if uR_owned else uR * st.bsum  # dR·R
                    dS = dRR.addcmul_(st.R, dRR.sum(-1, keepdim=True), value=-1.0)  # R·(dR − Σ_j dR·R)
                    dZ = dS.addcmul_(dS, st.sig_z, value=-1.0)  # dS·(1 − σ(Z)) [Bc, c, m]
                    if need_WS:
                        _add_blk(gWS, bs, is_, dZ * L)
                    if need_BS:
                        _add_blk(gBS, bs, is_, dZ)
                    dL = _mul_(dZ, WSb)
                    with par():
                        _bmm_into(gP[bs], dL.transpose(1, 2), xb)
                    if need_x:
                        lhs.append(dL)
                if linear and need_beta and t == 0:
                    flat = acc.view(Bc * c, 2 * m)
                    if gWb is not None:
                        with par():
                            gWb.addmm_(flat.t(), xb.reshape(Bc * c, d))
                    if gbb is not None:
                        gbb += flat.sum(0)
                    if need_x:
                        lhs.append(acc)
                if need_x and t == 0:
                    lhs_t = lhs[0] if len(lhs) == 1 else torch.cat(lhs, dim=-1)  # [Bc, c, (2T-1)m (+2m)]
                    dx_lhs[k] = []
                    with par():
                        _bmm_into(gx[bs, is_], lhs_t, rhs[bs], accumulate=False)
            if t > 0:
                gA, gs = small_grads(t - 1, gP, through_pred=True)

        g_small_out = [g if needs[6 + i] else None for i, g in enumerate(g_small)]
        return (gx, ga, gbu, gbi, gWb, gbb, *g_small_out, gWS, gBS, None, None, None, None, None, None)


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
    a_logits: Tensor,  # [..., n]
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
    :func:`default_chunk_rows` (~8 MiB per ``[rows, n_out]`` temporary). See the module docstring.
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
            raise ValueError(f"{name}: expected shape [n1, n_out] with n1 in (1, {n}), n_out = {n_out}, "
                             f"got {list(t.shape)}")
    check_floating("a_logits", a_logits)
    check_broadcastable("a_logits", a_logits, [*batch, n], "[..., n]")
    if isinstance(n_iters, bool) or not isinstance(n_iters, int) or n_iters < 1:
        raise ValueError(f"n_iters: expected an int >= 1, got {n_iters!r}")
    if chunk_size is not None and (isinstance(chunk_size, bool) or not isinstance(chunk_size, int)
                                   or chunk_size < 1):
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

    # One compute dtype (the widest floating input; autocast off inside, see the module docstring).
    floats = [x, a_logits, W_F1, W_F2, B_F2, W_G1, W_G2, B_G2, W_S, B_S]
    floats += [beta_use.weight, beta_ign.weight] if linear else [beta_use, beta_ign]
    dtype = floats[0].dtype
    for t in floats[1:]:
        dtype = torch.promote_types(dtype, t.dtype)

    def cast(t: Tensor | None) -> Tensor | None:
        return t if t is None or t.dtype == dtype else t.to(dtype)

    device_type = x.device.type
    with torch.autocast(device_type=device_type, enabled=False):
        B = math.prod(batch)
        xb = cast(x).reshape(B, n, d).contiguous()  # [B, n, d]
        ab = cast(a_logits).expand(*batch, n).reshape(B, n)  # [B, n]
        if isinstance(scale, Tensor):
            scale = cast(scale).expand(*batch, 1, 1).reshape(B, 1, 1)
        else:
            scale = float(scale)
        if linear:
            _check_shape("beta_use.weight", beta_use.weight, (n_out, d), "[n_out, d_inp]")
            _check_shape("beta_ign.weight", beta_ign.weight, (n_out, d), "[n_out, d_inp]")
            W_use, W_ign = cast(beta_use.weight), cast(beta_ign.weight)
            Wb = torch.cat([W_use + W_ign, W_ign], dim=0)  # [2m, d]: outputs [β_use + β_ign | β_ign]
            if beta_use.bias is None and beta_ign.bias is None:
                bb = None
            else:
                b_use = Wb.new_zeros(n_out) if beta_use.bias is None else cast(beta_use.bias)
                b_ign = Wb.new_zeros(n_out) if beta_ign.bias is None else cast(beta_ign.bias)
                bb = torch.cat([b_use + b_ign, b_ign])  # [2m]
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
        rows = chunk_size if chunk_size is not None else default_chunk_rows(n_out, xb.element_size())
        differentiable = [xb, ab, W_F1, W_F2, B_F2, W_G1, W_G2, B_G2, WS, BS]
        differentiable += [Wb] + ([] if bb is None else [bb]) if linear else [bu, bi]
        for_backward = torch.is_grad_enabled() and any(t.requires_grad for t in differentiable)
        out = _FusedEMRouting.apply(
            xb, ab, bu, bi, Wb, bb, cast(W_F1), cast(W_F2), cast(B_F2), cast(W_G1), cast(W_G2), cast(B_G2),
            WS, BS, scale, mk, n_iters, bool(normalize), rows, for_backward,
        )
    return out.reshape(*batch, n_out, d_out)
