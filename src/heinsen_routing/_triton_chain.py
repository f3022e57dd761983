"""Triton kernels for the element-wise [rows, n_out] chain of the fused routing loop (GPU path).

Per block of rows and per iteration the fused loop (:mod:`heinsen_routing._fused`) does two matrix products
over the inputs (cuBLAS) and, between them, a chain of ~10–20 element-wise operations on ``[rows, n_out]``
tensors (sigmoid, the logσ-softmax over the outputs, the "bang per bit" coefficient, and in backward their
derivatives). With torch ops every step is a kernel that reads and writes ``[rows, n_out]`` floats; here each
direction is ONE kernel that reads the product's output and the saved betas/logits once and writes only what
the next product needs:

* :func:`phi_forward`: ``φ = f_a·((β_use+β_ign)·R − β_ign)`` with ``R = softmax_j(logσ(L·W_S + B_S))`` (or
  1/n_out at t = 0), written in the product dtype (bf16/fp16 under autocast), plus ``Σ_rows φ`` per sample
  is left to the caller;
* :func:`chain_backward`: from ``dφ`` (fp32): ``da`` (added to the gradient of a), ``dβ`` (written or added to
  the fp32 ``[rows, 2·n_out]`` accumulator), ``dL`` (written where the caller wants it, e.g. a column slice
  of the dx left factor) and the column sums ``Σ_rows dZ·L`` and ``Σ_rows dZ`` (gradients of W_S, B_S).

All arithmetic is float32 in registers. Supported case (the one that matters on GPUs): a variable number of
inputs (betas from the two Linear layers, W_S/B_S shared by all inputs: ``[1, n_out]``), no routing mask,
``n_out <= 1024``; :func:`supported` says when. Everything else uses the torch chain.

Testing without a GPU: with ``TRITON_INTERPRET=1`` set before this module is imported, Triton runs these
kernels on CPU tensors; ``heinsen_routing._fused.TRITON_DEVICES = ("cpu",)`` then routes CPU calls here
(tests/heinsen_routing/test_triton_chain.py does that at tiny sizes).
"""

from __future__ import annotations

import os

import torch
from torch import Tensor

try:  # triton ships with CUDA builds of torch; absent elsewhere
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - depends on the installation
    triton = None
    tl = None

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"
MAX_N_OUT = 1024
_BLOCK_ROWS = 32  # rows per program


def is_available() -> bool:
    """True when Triton is importable."""
    return triton is not None


def supported(linear: bool, mask: Tensor | None, W_S: Tensor, n_out: int) -> bool:
    """The kernels handle this call: Triton importable, Linear betas, no mask, W_S/B_S shared by all inputs
    ([1, 1, n_out]), n_out <= 1024. (The caller decides on which devices to use them.)"""
    if triton is None or not linear or mask is not None or n_out > MAX_N_OUT:
        return False
    return W_S.shape[0] == 1 and W_S.shape[1] == 1


if triton is not None:

    @triton.jit
    def _routing_probs(
        L_ptr, ws_ptr, bs_ptr, r, j, mask2, jmask, stride_L, inv_m,
        HAS_L: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_M: tl.constexpr,
    ):  # fmt: skip
        """R [BLOCK_R, BLOCK_M] = softmax_j(logσ(L·W_S + B_S)) (or 1/m) and σ(Z) (0 when HAS_L is False)."""
        if HAS_L:
            L = tl.load(L_ptr + r[:, None] * stride_L + j[None, :], mask=mask2, other=0.0).to(tl.float32)
            ws = tl.load(ws_ptr + j, mask=jmask, other=0.0).to(tl.float32)
            bsv = tl.load(bs_ptr + j, mask=jmask, other=0.0).to(tl.float32)
            z = L * ws[None, :] + bsv[None, :]
            # logσ(z) = min(z, 0) − log(1 + exp(−|z|)), stable for any z
            s = tl.minimum(z, 0.0) - tl.log(1.0 + tl.exp(-tl.abs(z)))
            s = tl.where(jmask[None, :], s, float("-inf"))
            e = tl.exp(s - tl.max(s, axis=1)[:, None])
            e = tl.where(jmask[None, :], e, 0.0)
            R = e / tl.sum(e, axis=1)[:, None]
            sig_z = tl.sigmoid(z)
        else:
            L = tl.zeros((BLOCK_R, BLOCK_M), dtype=tl.float32)
            R = tl.zeros((BLOCK_R, BLOCK_M), dtype=tl.float32) + inv_m
            sig_z = tl.zeros((BLOCK_R, BLOCK_M), dtype=tl.float32)
        return L, R, sig_z

    @triton.jit
    def _block_state(
        a_ptr, L_ptr, beta_ptr, ws_ptr, bs_ptr, rows, m, stride_L, stride_beta, inv_m,
        HAS_L: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_M: tl.constexpr,
    ):  # fmt: skip
        """Rows r of this program, output columns j, their masks, f_a = σ(a), the betas and R (see above)."""
        r = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
        j = tl.arange(0, BLOCK_M)
        rmask = r < rows
        jmask = j < m
        mask2 = rmask[:, None] & jmask[None, :]
        fa = tl.sigmoid(tl.load(a_ptr + r, mask=rmask, other=0.0).to(tl.float32))
        beta_rows = beta_ptr + r[:, None] * stride_beta + j[None, :]
        bsum = tl.load(beta_rows, mask=mask2, other=0.0).to(tl.float32)
        bi = tl.load(beta_rows + m, mask=mask2, other=0.0).to(tl.float32)
        L, R, sig_z = _routing_probs(
            L_ptr, ws_ptr, bs_ptr, r, j, mask2, jmask, stride_L, inv_m, HAS_L, BLOCK_R, BLOCK_M
        )
        return r, j, rmask, jmask, mask2, fa, bsum, bi, L, R, sig_z

    @triton.jit
    def _phi_fwd_kernel(
        a_ptr, L_ptr, beta_ptr, ws_ptr, bs_ptr, phi_ptr,
        rows, m, stride_L, stride_beta, stride_phi, inv_m,
        HAS_L: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_M: tl.constexpr,
    ):  # fmt: skip
        r, j, rmask, jmask, mask2, fa, bsum, bi, L, R, sig_z = _block_state(
            a_ptr, L_ptr, beta_ptr, ws_ptr, bs_ptr, rows, m, stride_L, stride_beta, inv_m, HAS_L, BLOCK_R, BLOCK_M,
        )  # fmt: skip
        phi = fa[:, None] * (bsum * R - bi)
        tl.store(phi_ptr + r[:, None] * stride_phi + j[None, :], phi.to(phi_ptr.dtype.element_ty), mask=mask2)

    @triton.jit
    def _chain_bwd_kernel(
        dphi_ptr, a_ptr, ga_ptr, L_ptr, beta_ptr, ws_ptr, bs_ptr, acc_ptr, dL_ptr, phi_ptr, gws_ptr, gbs_ptr,
        rows, m, stride_dphi, stride_L, stride_beta, stride_acc, stride_dL, stride_phi, inv_m,
        HAS_L: tl.constexpr, NEED_A: tl.constexpr, NEED_BETA: tl.constexpr, ACC_ADD: tl.constexpr,
        WRITE_DL: tl.constexpr, WRITE_PHI: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_M: tl.constexpr,
    ):  # fmt: skip
        pid = tl.program_id(0)
        r, j, rmask, jmask, mask2, fa, bsum, bi, L, R, sig_z = _block_state(
            a_ptr, L_ptr, beta_ptr, ws_ptr, bs_ptr, rows, m, stride_L, stride_beta, inv_m, HAS_L, BLOCK_R, BLOCK_M,
        )  # fmt: skip
        coef = bsum * R - bi
        dphi = tl.load(dphi_ptr + r[:, None] * stride_dphi + j[None, :], mask=mask2, other=0.0).to(tl.float32)
        if WRITE_PHI:  # φ (left factor of dx)
            phi = fa[:, None] * coef
            tl.store(
                phi_ptr + r[:, None] * stride_phi + j[None, :], phi.to(phi_ptr.dtype.element_ty), mask=mask2
            )
        if NEED_A:  # da = Σ_j dφ·coef · σ'(a)
            da = tl.sum(dphi * coef, axis=1) * fa * (1.0 - fa)
            ga = tl.load(ga_ptr + r, mask=rmask, other=0.0)
            tl.store(ga_ptr + r, (ga.to(tl.float32) + da).to(ga_ptr.dtype.element_ty), mask=rmask)
        u = dphi * fa[:, None]
        if NEED_BETA:  # d(β_use+β_ign) = u·R, dβ_ign (free) = −u
            acc_rows = acc_ptr + r[:, None] * stride_acc + j[None, :]
            d_sum = u * R
            if ACC_ADD:
                d_sum += tl.load(acc_rows, mask=mask2, other=0.0)
                tl.store(acc_rows + m, tl.load(acc_rows + m, mask=mask2, other=0.0) - u, mask=mask2)
            else:
                tl.store(acc_rows + m, -u, mask=mask2)
            tl.store(acc_rows, d_sum, mask=mask2)
        if HAS_L:  # dR = u·bsum; dS = R·(dR − Σ_j dR·R); dZ = dS·(1 − σ(Z)); dL = dZ·W_S
            dRR = u * bsum * R
            dS = dRR - R * tl.sum(dRR, axis=1)[:, None]
            dZ = tl.where(mask2, dS * (1.0 - sig_z), 0.0)
            ws = tl.load(ws_ptr + j, mask=jmask, other=0.0).to(tl.float32)
            if WRITE_DL:
                dL = dZ * ws[None, :]
                tl.store(
                    dL_ptr + r[:, None] * stride_dL + j[None, :], dL.to(dL_ptr.dtype.element_ty), mask=mask2
                )
            tl.store(gws_ptr + pid * m + j, tl.sum(dZ * L, axis=0), mask=jmask)
            tl.store(gbs_ptr + pid * m + j, tl.sum(dZ, axis=0), mask=jmask)


def _grid(rows: int) -> tuple[int]:
    return (triton.cdiv(rows, _BLOCK_ROWS),)


def _rows2d(t: Tensor, m: int) -> Tensor:
    """[.., c, k] → [rows, k] view whose rows are evenly strided and unit-stride along the last dim."""
    flat = t.reshape(-1, t.shape[-1])
    if flat.stride(-1) != 1:
        flat = flat.contiguous()
    return flat


def phi_forward(
    a: Tensor, L: Tensor | None, beta: Tensor, W_S: Tensor, B_S: Tensor, out_dtype: torch.dtype
) -> Tensor:
    """φ [Bc, c, m] in ``out_dtype`` for one block: a [Bc, c], L [Bc, c, m] or None (t = 0), beta [Bc, c, 2m]
    (= [β_use + β_ign | β_ign]), W_S/B_S with m elements."""
    Bc, c = a.shape
    m = beta.shape[-1] // 2
    rows = Bc * c
    a1 = a.reshape(rows).contiguous()
    beta2 = _rows2d(beta, 2 * m)
    phi = torch.empty(Bc, c, m, dtype=out_dtype, device=a.device)
    L2 = _rows2d(L, m) if L is not None else beta2
    _phi_fwd_kernel[_grid(rows)](
        a1, L2, beta2, W_S.reshape(m).contiguous(), B_S.reshape(m).contiguous(), phi,
        rows, m, L2.stride(0), beta2.stride(0), m, 1.0 / m,
        HAS_L=L is not None, BLOCK_R=_BLOCK_ROWS, BLOCK_M=triton.next_power_of_2(m),
    )  # fmt: skip
    return phi


def chain_backward(
    dphi: Tensor,  # [Bc, c, m] float32
    a: Tensor,  # [Bc, c]
    ga: Tensor | None,  # [Bc, c] view of the gradient of a (added to), or None
    L: Tensor | None,  # [Bc, c, m] or None (t = 0)
    beta: Tensor,  # [Bc, c, 2m]
    W_S: Tensor,
    B_S: Tensor,
    acc: Tensor | None,  # [Bc, c, 2m (+1)] float32 dβ accumulator (columns 2m.. untouched), or None
    acc_add: bool,  # add to acc (else overwrite)
    dL_out: Tensor | None,  # [Bc, c, m] (may be a column slice) or None
    phi_out: Tensor | None,  # [Bc, c, m] (may be a column slice) or None
) -> tuple[Tensor, Tensor] | None:
    """Backward of the block's chain (see the module docstring); returns (Σ_rows dZ·L, Σ_rows dZ) [m] when
    L is given (the gradients of W_S and B_S from this block), else None."""
    Bc, c = a.shape
    m = dphi.shape[-1]
    rows = Bc * c
    dev = dphi.device
    dphi2 = _rows2d(dphi, m)
    beta2 = _rows2d(beta, 2 * m)
    a1 = a.reshape(rows).contiguous()
    ga1 = ga.view(rows) if ga is not None else a1  # a [B, n] gradient block: contiguous rows
    if ga is not None and not ga.is_contiguous():
        raise ValueError("ga: expected a contiguous block of the gradient of a_logits")
    L2 = _rows2d(L, m) if L is not None else dphi2
    acc2 = acc.view(rows, acc.shape[-1]) if acc is not None else dphi2

    def strided(t: Tensor | None) -> tuple[Tensor, int]:
        if t is None:
            return dphi2, 0
        if t.stride(-1) != 1 or (Bc > 1 and t.stride(0) != c * t.stride(1)):
            raise ValueError("expected an output whose rows are evenly strided with unit column stride")
        return t, t.stride(1)

    dL2, stride_dL = strided(dL_out)
    phi2, stride_phi = strided(phi_out)
    n_prog = _grid(rows)[0]
    parts = torch.empty(2, n_prog, m, dtype=torch.float32, device=dev) if L is not None else None
    gws = parts[0] if parts is not None else dphi2
    gbs = parts[1] if parts is not None else dphi2
    _chain_bwd_kernel[(n_prog,)](
        dphi2, a1, ga1, L2, beta2, W_S.reshape(m).contiguous(), B_S.reshape(m).contiguous(), acc2, dL2, phi2,
        gws, gbs, rows, m, dphi2.stride(0), L2.stride(0), beta2.stride(0), acc2.stride(0), stride_dL, stride_phi,
        1.0 / m,
        HAS_L=L is not None, NEED_A=ga is not None, NEED_BETA=acc is not None, ACC_ADD=bool(acc_add),
        WRITE_DL=dL_out is not None, WRITE_PHI=phi_out is not None,
        BLOCK_R=_BLOCK_ROWS, BLOCK_M=triton.next_power_of_2(m),
    )  # fmt: skip
    if parts is None:
        return None
    sums = parts.sum(1)  # [2, m]
    return sums[0], sums[1]
