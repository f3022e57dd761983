"""The Triton kernels of the element-wise chain (heinsen_routing._triton_chain) against the torch chain.

Without a GPU the kernels run in Triton's interpreter (TRITON_INTERPRET=1 must be set before Triton compiles
anything, so that check runs in a subprocess, at tiny sizes). With CUDA the real kernels run
(``@pytest.mark.gpu``; ``make test-gpu`` or reproduce/benchmarks/gpu_routing_check.sh)."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

HERE = Path(__file__).resolve()
REPO = HERE.parents[2]

# (batch, n, d, n_out, d_out, n_iters, chunk_size, Linear biases, a from (W_A, B_A) folded into the beta
# product): blocks of whole samples, row ranges of one sample, one iteration (no logits), three iterations.
SETTINGS = [
    ((2,), 40, 8, 5, 6, 2, 16, True, False),
    ((2,), 13, 8, 5, 6, 3, 7, True, True),
    ((3,), 6, 8, 3, 6, 1, 100, False, True),
    ((), 30, 8, 5, 6, 2, None, True, False),
]
BF16_OUT_TOL, BF16_GRAD_TOL = 2e-2, 6e-2  # as in test_fused.test_autocast_bf16_close_to_float32


def _test_fused():
    spec = importlib.util.spec_from_file_location("test_fused_for_triton", HERE.with_name("test_fused.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def check_against_torch_chain(device: str, settings=SETTINGS, scale_up: int = 1) -> list[str]:
    """Run every setting through the torch chain and the Triton chain on ``device``; assert float32 agreement
    (1e-5 of max) and bf16-autocast closeness to float32; return one line per setting."""
    from heinsen_routing import _fused

    tf = _test_fused()
    lines = []
    for batch, n, d, m, h, n_iters, chunk, bias, fold in settings:
        case = tf.make_case(batch, n * scale_up, d, m, h, True, None, 1, torch.float32, seed=n)
        x, a, beta_use, beta_ign, W, mask = case
        if not bias:
            beta_use.bias, beta_ign.bias = None, None
        if fold:  # the case's "a" becomes W_A [1, d] (its gradient is checked); B_A is fixed
            a = torch.randn(1, d, generator=torch.Generator().manual_seed(n)) * d**-0.5
        B_A = torch.full((1,), 0.3, device=device)
        moved = [t.detach().to(device).requires_grad_(True) for t in (x, a, *W)]
        beta_use, beta_ign = beta_use.to(device), beta_ign.to(device)
        case = (moved[0], moved[1], beta_use, beta_ign, moved[2:], None)
        results = {}

        def fn(x, scale, a, *rest, fold=fold, B_A=B_A, **kw):
            return _fused.fused_em_routing(x, scale, (a, B_A) if fold else a, *rest, **kw)

        for name, devices, autocast in [
            ("torch", (), False),
            ("triton", (device,), False),
            ("triton-bf16", (device,), True),
        ]:
            saved = _fused.TRITON_DEVICES
            _fused.TRITON_DEVICES = devices
            try:
                with torch.autocast(device, dtype=torch.bfloat16, enabled=autocast):
                    results[name] = tf.run(fn, case, n_iters, True, chunk_size=chunk)
            finally:
                _fused.TRITON_DEVICES = saved
        (o_t, g_t), (o_k, g_k), (o_b, g_b) = results["torch"], results["triton"], results["triton-bf16"]
        err = max([tf.max_rel(o_k, o_t)] + [tf.max_rel(gk, gt) for gk, gt in zip(g_k, g_t, strict=True)])
        errs = [f"{tf.max_rel(gk, gt):.1e}" for gk, gt in zip(g_k, g_t, strict=True)]
        assert err < 1e-5, f"float32 Triton chain vs torch chain, {batch} {n} T={n_iters}: {err} {errs}"
        err_out = tf.max_rel(o_b, o_t)
        err_grad = max(tf.max_rel(gb, gt) for gb, gt in zip(g_b, g_t, strict=True))
        assert err_out < BF16_OUT_TOL and err_grad < BF16_GRAD_TOL, (err_out, err_grad)
        lines.append(
            f"{batch} n={n * scale_up} T={n_iters} chunk={chunk}: fp32 {err:.1e}, bf16 {err_out:.1e}/{err_grad:.1e}"
        )
    return lines


def test_kernels_in_the_triton_interpreter():
    """Tiny sizes on CPU through TRITON_INTERPRET=1 (a subprocess: the flag must precede Triton's import)."""
    pytest.importorskip("triton")
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": str(REPO / "src")}
    proc = subprocess.run([sys.executable, str(HERE)], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert proc.stdout.count("fp32") == len(SETTINGS), proc.stdout


def test_triton_path_is_only_taken_where_supported():
    from heinsen_routing import _triton_chain

    if not _triton_chain.is_available():
        pytest.skip("triton not installed")
    shared = torch.zeros(1, 1, 4)
    assert _triton_chain.supported(True, None, shared, 4)
    assert not _triton_chain.supported(False, None, shared, 4)  # fixed betas
    assert not _triton_chain.supported(True, torch.zeros(1, 1, 4, dtype=torch.bool), shared, 4)  # a mask
    assert not _triton_chain.supported(True, None, torch.zeros(1, 7, 4), 4)  # per-input W_S
    assert not _triton_chain.supported(True, None, shared, 2048)  # n_out > 1024


@pytest.mark.gpu
def test_kernels_on_cuda():
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    pytest.importorskip("triton")
    lines = check_against_torch_chain("cuda", scale_up=50)
    print("\n".join(lines))


if __name__ == "__main__":  # the interpreter check (run by test_kernels_in_the_triton_interpreter)
    torch.set_num_threads(1)
    print("\n".join(check_against_torch_chain("cpu")))


@pytest.mark.gpu
def test_layer_on_cuda_matches_cpu_in_fp32_and_bf16():
    """The default path on CUDA (GPU-sized blocks, Triton chain) against the CPU fused path: float32 within
    1e-4 of max (different summation orders and cuBLAS kernels), bf16 autocast within the documented bound."""
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    from heinsen_routing import EfficientVectorRouting

    torch.manual_seed(0)
    layer = EfficientVectorRouting(n_inp=-1, n_out=16, d_inp=64, d_out=32)
    x = torch.randn(4, 3000, 64)
    results = {}
    for name, device, autocast in [
        ("cpu", "cpu", False),
        ("cuda", "cuda", False),
        ("cuda-bf16", "cuda", True),
    ]:
        model = layer.to(device)
        xd = x.to(device).requires_grad_(True)
        with torch.autocast(device, dtype=torch.bfloat16, enabled=autocast):
            out = model(xd)
        (out.float() * torch.linspace(-1, 1, out.shape[-1], device=device)).sum().backward()
        grads = [xd.grad.cpu(), *(p.grad.cpu() for p in model.parameters())]
        results[name] = (out.detach().float().cpu(), grads)
        model.zero_grad()
    for name, tol_out, tol_grad in [("cuda", 1e-4, 1e-4), ("cuda-bf16", BF16_OUT_TOL, BF16_GRAD_TOL)]:
        out, grads = results[name]
        ref_out, ref_grads = results["cpu"]
        assert (out - ref_out).abs().max() <= tol_out * ref_out.abs().max(), name
        for g, r in zip(grads, ref_grads, strict=True):
            assert (g - r).abs().max() <= tol_grad * r.abs().max() + 1e-12, name
