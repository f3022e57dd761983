"""Blocks, block-wise element-wise chain (torch) and thread/matmul helpers of the fused routing loop.

Private helpers of :mod:`heinsen_routing._fused` (see its docstring for the algorithm): how the rows are cut
into blocks, the element-wise quantities of one block at one iteration (:class:`_BlockState`: f_a, R, σ(Z),
the "bang per bit" coefficient), the thread policy on CPU and matrix products that accumulate into a wider
dtype under autocast.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import Tensor

# Target size of one [rows, n_out] block temporary. Measured on 2 shared CPU cores: blocks of a few
# thousand rows lose up to 2x to per-op threading overhead under load; ~8 MiB blocks (~20k rows for
# n_out = 100) keep per-op overhead negligible while temporaries stay ~100 MiB in all. On GPUs every block
# costs ~15 kernel launches and Python work per pass, so blocks are much larger (256 MiB: ~670k rows for
# n_out = 100, the whole 64 × 4925 paper-head batch in one block); temporaries stay below ~2 GiB.
_TARGET_BLOCK_BYTES = 8 << 20
_TARGET_BLOCK_BYTES_GPU = 256 << 20
_MIN_ROWS = 1024
_MAX_ROWS = 1 << 16
_MAX_ROWS_GPU = 1 << 22


def default_chunk_rows(n_out: int, element_size: int = 4, device_type: str = "cpu") -> int:
    """Rows (input vectors, summed over samples) per block when ``chunk_size`` is None."""
    gpu = device_type not in ("cpu", "meta")
    target, most = (_TARGET_BLOCK_BYTES_GPU, _MAX_ROWS_GPU) if gpu else (_TARGET_BLOCK_BYTES, _MAX_ROWS)
    rows = target // max(1, n_out * element_size)
    return int(min(most, max(_MIN_ROWS, rows)))


def _blocks(batch: int, n: int, rows: int) -> list[tuple[slice, slice]]:
    """Blocks of at most ``rows`` (sample, input) rows: whole samples if a sample fits, else row ranges
    of one sample. Each block of a contiguous [B, n, d] tensor is itself contiguous. No blocks when
    batch == 0 (an empty batch routes nothing)."""
    if batch == 0:
        return []
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
    """out += a @ b (or out = a @ b) for [Bc, ., .] operands (a plain matmul when Bc == 1).

    The product runs in the narrower dtype of a and b (the other is cast to it: the autocast dtype under
    autocast); ``out`` may be wider (float32 accumulators under autocast), then the product is converted
    (CUDA: computed directly in out's dtype) and added."""
    if b.dtype != a.dtype:
        if a.element_size() < b.element_size():
            b = b.to(a.dtype)
        else:
            a = a.to(b.dtype)
    if out.dtype != a.dtype:
        prod = bmm_as(a, b, out.dtype)
        if accumulate:
            out += prod
        else:
            out.copy_(prod)
    elif out.shape[0] == 1:
        if accumulate:
            out[0].addmm_(a[0], b[0])
        else:
            torch.mm(a[0], b[0], out=out[0])
    elif accumulate:
        out.baddbmm_(a, b)
    else:
        torch.bmm(a, b, out=out)


_OUT_DTYPE_OK: dict[str, bool] = {}  # device type -> torch.bmm(..., out_dtype=) works there


def bmm_as(a: Tensor, b: Tensor, dtype: torch.dtype) -> Tensor:
    """a @ b ([Bc, ., .], same dtype) returned in ``dtype``; on CUDA bf16/fp16 products are written directly
    in float32 (``out_dtype``, fp32 accumulation, no rounded intermediate) where torch supports it."""
    if a.dtype == dtype:
        return torch.bmm(a, b)
    kind = a.device.type
    if kind == "cuda" and _OUT_DTYPE_OK.get(kind, True):
        try:
            return torch.bmm(a, b, out_dtype=dtype)
        except (TypeError, RuntimeError, NotImplementedError):
            _OUT_DTYPE_OK[kind] = False
    return torch.bmm(a, b).to(dtype)


def _baddbmm_as(bias: Tensor, a: Tensor, b: Tensor, dtype: torch.dtype) -> Tensor:
    """bias + a @ b in ``dtype`` (bias already in it); the product in a's dtype (see :func:`bmm_as`)."""
    if a.dtype == dtype:
        return torch.baddbmm(bias, a, b.to(dtype))
    return bmm_as(a, b.to(a.dtype), dtype).add_(bias)


def _betas(
    linear: bool, beta_blocks: list[Tensor], k: int, bu: Tensor | None, bi: Tensor | None, bs: slice, is_: slice,
    m: int, edt: torch.dtype,
) -> tuple[Tensor, Tensor]:  # fmt: skip
    """(β_use + β_ign, β_ign) of block k in the element-wise dtype."""
    if linear:
        beta = beta_blocks[k]
        return beta[..., :m].to(edt), beta[..., m : 2 * m].to(edt)
    bib = _blk(bi, bs, is_)
    return _blk(bu, bs, is_) + bib, bib
