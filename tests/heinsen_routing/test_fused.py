"""Exactness of the fused, chunked E/D/M loop (heinsen_routing._fused) against plain autograd."""

from __future__ import annotations

import importlib.util
import itertools
from pathlib import Path

import pytest
import torch
from torch import nn

from heinsen_routing import _chain, _fused
from heinsen_routing._fused import _blocks, default_chunk_rows, fused_em_routing

REPO = Path(__file__).resolve().parents[2]


def _load_plain():
    path = REPO / "reproduce" / "benchmarks" / "plain_routing.py"
    spec = importlib.util.spec_from_file_location("plain_routing_for_tests", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.plain_em_routing


plain_em_routing = _load_plain()


def make_case(batch, n, d, m, h, linear, mask_kind, n1, dtype, seed=0):
    """Inputs of one routing call; every floating tensor (or Linear) requires grad."""
    gen = torch.Generator().manual_seed(seed)

    def rnd(*shape, std=1.0):
        return (torch.randn(*shape, generator=gen, dtype=torch.float64) * std).to(dtype).requires_grad_(True)

    x = rnd(*batch, n, d)
    a = rnd(*batch, n)
    if linear:
        torch.manual_seed(seed)
        beta_use, beta_ign = nn.Linear(d, m).to(dtype), nn.Linear(d, m).to(dtype)
    else:
        beta_use, beta_ign = rnd(n, m), rnd(n, m)
    W = [
        rnd(m, d),
        rnd(d, h, std=d**-0.5),
        rnd(m, h),
        rnd(h, d, std=h**-0.5),
        rnd(m, d),
        rnd(m, d),
        rnd(n1, m, std=d**-0.5),
        rnd(n1, m),
    ]
    mask = None
    if mask_kind == "random":  # per sample, with a row masked for every output
        mask = torch.rand(*batch, n, m, generator=gen) < 0.4
        mask[..., 1, :] = True
    elif mask_kind == "shared":  # [n, m], one fully masked row
        mask = torch.rand(n, m, generator=gen) < 0.4
        mask[-1, :] = True
    elif mask_kind == "padding":  # [..., n, 1]: the last two inputs of every sample
        mask = torch.zeros(*batch, n, 1, dtype=torch.bool)
        mask[..., -2:, :] = True
    return x, a, beta_use, beta_ign, W, mask


def leaves_of(x, a, beta_use, beta_ign, W):
    betas = (
        [*beta_use.parameters(), *beta_ign.parameters()]
        if isinstance(beta_use, nn.Module)
        else [beta_use, beta_ign]
    )
    return [x, a, *betas, *W]


def run(fn, case, n_iters, normalize, chunk_size=None, scale=None):
    x, a, beta_use, beta_ign, W, mask = case
    scale = x.shape[-2] ** -0.5 if scale is None else scale
    out = fn(x, scale, a, beta_use, beta_ign, *W, mask, n_iters, normalize, chunk_size=chunk_size)
    weights = torch.randn(out.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    grads = torch.autograd.grad(
        (out * weights.to(out.dtype)).sum(), leaves_of(*case[:5]), allow_unused=True, materialize_grads=True
    )
    return out, grads


def max_rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| / max |b| (0 when both are 0)."""
    scale = b.detach().abs().max().item()
    diff = (a.detach() - b.detach()).abs().max().item()
    return diff / scale if scale > 0 else diff


SETTINGS = [  # (n_iters, normalize, d_out, n1, chunk_size): chunks < n, not dividing n, > n, default
    (1, True, 3, 7, 3),
    (2, False, 1, 1, 5),
    (3, True, 3, 7, 100),
    (2, True, 3, 1, None),
]


GRID = list(itertools.product([(), (2,), (2, 3)], [False, True], [None, "random", "shared", "padding"]))


@pytest.mark.parametrize("index", range(len(GRID)))
def test_float64_grid_matches_plain(index):
    """Every (batch dims, beta kind, mask kind) with two of the four settings, rotating, so that each setting
    meets each mask kind and beta kind."""
    batch, linear, mask_kind = GRID[index]
    first = (index // 8 + index // 4 + index) % 4  # batch, beta and mask indices summed
    for n_iters, normalize, h, n1, chunk in (SETTINGS[first], SETTINGS[(first + 2) % 4]):
        case = make_case(batch, 7, 5, 4, h, linear, mask_kind, n1, torch.float64)
        out_p, grads_p = run(plain_em_routing, case, n_iters, normalize)
        out_f, grads_f = run(fused_em_routing, case, n_iters, normalize, chunk)
        assert out_f.shape == out_p.shape == (*batch, 4, h)
        assert torch.isfinite(out_f).all()
        torch.testing.assert_close(out_f, out_p, rtol=1e-10, atol=1e-11)
        for i, (gf, gp) in enumerate(zip(grads_f, grads_p, strict=True)):
            assert gf.shape == gp.shape
            assert torch.isfinite(gf).all(), f"gradient {i} not finite"
            torch.testing.assert_close(gf, gp, rtol=1e-9, atol=1e-10, msg=lambda s, i=i: f"grad {i}: {s}")


@pytest.mark.parametrize("linear", [False, True], ids=["fixed", "linear"])
def test_float32_within_1e5_relative(linear):
    case = make_case((2,), 200, 32, 16, 24, linear, "random", 1, torch.float32, seed=3)
    out_p, grads_p = run(plain_em_routing, case, 3, True)
    out_f, grads_f = run(fused_em_routing, case, 3, True, chunk_size=96)
    assert max_rel(out_f, out_p) < 1e-5
    for gf, gp in zip(grads_f, grads_p, strict=True):
        assert max_rel(gf, gp) < 1e-5


def test_per_sample_scale_tensor():
    case = make_case((3,), 6, 4, 3, 2, True, "padding", 1, torch.float64)
    scale = torch.tensor([4.0, 5.0, 6.0], dtype=torch.float64).rsqrt().view(3, 1, 1)
    out_p, grads_p = run(plain_em_routing, case, 2, True, scale=scale)
    out_f, grads_f = run(fused_em_routing, case, 2, True, chunk_size=4, scale=scale)
    torch.testing.assert_close(out_f, out_p, rtol=1e-10, atol=1e-11)
    for gf, gp in zip(grads_f, grads_p, strict=True):
        torch.testing.assert_close(gf, gp, rtol=1e-9, atol=1e-10)


def test_fully_masked_rows_get_no_credit_and_no_gradient():
    case = make_case((2,), 5, 4, 3, 2, False, "random", 5, torch.float64)
    out, grads = run(fused_em_routing, case, 3, True, chunk_size=2)
    assert torch.isfinite(out).all()
    grad_a = grads[1]
    assert torch.equal(grad_a[:, 1], torch.zeros_like(grad_a[:, 1]))  # row 1 is masked for every output


def test_linear_without_bias_and_mixed_modules():
    case = list(make_case((2,), 6, 4, 3, 2, True, None, 1, torch.float64))
    case[2] = nn.Linear(4, 3, bias=False).double()
    out_p, grads_p = run(plain_em_routing, tuple(case), 2, True)
    out_f, grads_f = run(fused_em_routing, tuple(case), 2, True, chunk_size=4)
    torch.testing.assert_close(out_f, out_p, rtol=1e-10, atol=1e-11)
    for gf, gp in zip(grads_f, grads_p, strict=True):
        torch.testing.assert_close(gf, gp, rtol=1e-9, atol=1e-10)
    case[2] = nn.Sequential(nn.Linear(4, 3)).double()  # any other module is applied as is
    out_p, _ = run(plain_em_routing, tuple(case), 2, True)
    out_f, _ = run(fused_em_routing, tuple(case), 2, True)
    torch.testing.assert_close(out_f, out_p, rtol=1e-10, atol=1e-11)


@pytest.mark.parametrize("linear", [False, True], ids=["fixed", "linear"])
def test_gradcheck(linear):
    x, a, beta_use, beta_ign, W, mask = make_case((2,), 4, 3, 2, 2, linear, "random", 4, torch.float64)
    if linear:
        params = [*beta_use.parameters(), *beta_ign.parameters()]

        def fn(x, a, *rest):
            return fused_em_routing(x, 0.5, a, beta_use, beta_ign, *rest, mask, 2, True, chunk_size=3)

        inputs = (x, a, *W)
    else:
        params = []

        def fn(x, a, bu, bi, *rest):
            return fused_em_routing(x, 0.5, a, bu, bi, *rest, mask, 2, True, chunk_size=3)

        inputs = (x, a, beta_use, beta_ign, *W)
    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-6, fast_mode=True)
    if params:  # the Linear parameters, through a closure
        w0 = params[0].detach().clone()

        def fn_w(w):
            with torch.no_grad():
                params[0].copy_(w)
            return fused_em_routing(x, 0.5, a, beta_use, beta_ign, *W, mask, 2, True, chunk_size=3)

        out = fused_em_routing(x, 0.5, a, beta_use, beta_ign, *W, mask, 2, True, chunk_size=3)
        (g,) = torch.autograd.grad(out.sum(), params[0])
        num = torch.zeros_like(w0)
        for idx in itertools.product(*(range(s) for s in w0.shape)):
            w = w0.clone()
            w[idx] += 1e-6
            plus = fn_w(w).sum()
            w[idx] -= 2e-6
            minus = fn_w(w).sum()
            num[idx] = (plus - minus) / 2e-6
        with torch.no_grad():
            params[0].copy_(w0)
        torch.testing.assert_close(g, num, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("seed", [0, 1])
def test_autocast_bf16_close_to_float32(seed):
    """Under autocast the n-sized products run in bf16 and the element-wise chain and accumulators in float32.

    Measured against the float32 result (max |diff| / max |float32|, seeds 0-2, n = 40 and 300): outputs
    <= 8e-3, gradients <= 4e-2; plain autograd under the same autocast deviates as much (<= 9e-3, <= 4e-2).
    Bounds here: 2e-2 and 6e-2."""
    case = make_case((2,), 40, 16, 4, 8, True, None, 1, torch.float32, seed=seed)
    out32, grads32 = run(fused_em_routing, case, 2, True, chunk_size=16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out_ac, grads_ac = run(fused_em_routing, case, 2, True, chunk_size=16)
        out_pl, _ = run(plain_em_routing, case, 2, True)
    assert out_ac.dtype == torch.float32  # the small ops and the normalisation run in float32
    assert 0 < max_rel(out_ac, out32) < 2e-2  # > 0: the products did run in bf16
    assert max_rel(out_ac, out_pl) < 2e-2
    for g_ac, g32 in zip(grads_ac, grads32, strict=True):
        assert g_ac.dtype == g32.dtype
        assert max_rel(g_ac, g32) < 6e-2
    x, a, beta_use, beta_ign, W, mask = case
    with torch.autocast("cpu", dtype=torch.bfloat16):  # an upstream autocast op handed over bf16 inputs
        x16 = (x * 1.0).to(torch.bfloat16)
        out16 = fused_em_routing(x16, 40**-0.5, a, beta_use, beta_ign, *W, None, 2, True)
        (gx,) = torch.autograd.grad(out16.sum(), x)
    assert gx.dtype == torch.float32 and torch.isfinite(gx).all()
    assert max_rel(out16, out32) < 2e-2


def test_torch_compile_of_a_caller():
    case = make_case((2,), 12, 8, 3, 4, True, "shared", 1, torch.float32, seed=7)
    x, a, beta_use, beta_ign, W, mask = case

    def head(x, a):
        out = fused_em_routing(x, 12**-0.5, a, beta_use, beta_ign, *W, mask, 2, True, chunk_size=5)
        return (out * 2.0).sum(-1)

    expected = head(x, a)
    (gx_expected,) = torch.autograd.grad(expected.sum(), x)
    compiled = torch.compile(head, backend="aot_eager")
    got = compiled(x, a)
    (gx,) = torch.autograd.grad(got.sum(), x)
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(gx, gx_expected, rtol=1e-6, atol=1e-6)


@pytest.mark.slow
def test_torch_compile_inductor_of_a_caller():
    case = make_case((2,), 12, 8, 3, 4, False, "random", 12, torch.float32, seed=8)
    x, a, beta_use, beta_ign, W, mask = case

    def head(x, a):
        return fused_em_routing(x, 12**-0.5, a, beta_use, beta_ign, *W, mask, 2, True, chunk_size=5).sum(-1)

    expected = head(x, a)
    got = torch.compile(head)(x, a)
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6)
    (gx,) = torch.autograd.grad(got.sum(), x)
    (gx_expected,) = torch.autograd.grad(head(x, a).sum(), x)
    torch.testing.assert_close(gx, gx_expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("mask_kind", [None, "random"])
def test_log_space_softmax_path_matches_plain(monkeypatch, mask_kind):
    """The path used off-CPU (softmax of logσ, no host sync) and the CPU ratio path agree with plain."""
    monkeypatch.setattr(_chain, "_RATIO_SOFTMAX_DEVICES", ())
    monkeypatch.setattr(_chain, "SERIAL_ELEMENTWISE", False)
    case = make_case((2,), 7, 5, 4, 3, True, mask_kind, 1, torch.float64)
    out_p, grads_p = run(plain_em_routing, case, 3, True)
    out_f, grads_f = run(fused_em_routing, case, 3, True, chunk_size=4)
    torch.testing.assert_close(out_f, out_p, rtol=1e-10, atol=1e-11)
    for gf, gp in zip(grads_f, grads_p, strict=True):
        torch.testing.assert_close(gf, gp, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("dtype, shift", [(torch.float32, -150.0), (torch.float64, -800.0)])
def test_underflowing_similarities_fall_back_to_log_space(monkeypatch, dtype, shift):
    """With σ(Z) == 0 for every j of some rows, R must still be softmax_j(logσ(Z)), as in plain autograd."""
    case = make_case((2,), 9, 5, 4, 3, False, "random", 9, dtype, seed=4)
    x, a, beta_use, beta_ign, W, mask = case
    with torch.no_grad():
        W[7][:5] += shift  # B_S: rows 0..4 far below the sigmoid's range
        W[6].mul_(50.0)  # W_S: spread the similarities so that R is far from uniform
    out_p, grads_p = run(plain_em_routing, case, 2, True)
    calls = []
    logsigmoid = _chain.F.logsigmoid

    def counting_logsigmoid(z):
        calls.append(z.shape)
        return logsigmoid(z)

    monkeypatch.setattr(_chain.F, "logsigmoid", counting_logsigmoid)
    out_f, grads_f = run(fused_em_routing, case, 2, True, chunk_size=4)
    assert calls, "the log-space fallback was not used"
    assert torch.isfinite(out_f).all()
    tol = 1e-5 if dtype == torch.float32 else 1e-10
    assert max_rel(out_f, out_p) < tol
    for gf, gp in zip(grads_f, grads_p, strict=True):
        assert torch.isfinite(gf).all()
        assert max_rel(gf, gp) < tol * 10


def test_no_grad_and_partial_requires_grad():
    case = make_case((2,), 9, 5, 4, 3, True, "random", 1, torch.float64)
    x, a, beta_use, beta_ign, W, mask = case
    with torch.no_grad():
        out_ng = fused_em_routing(x, 9**-0.5, a, beta_use, beta_ign, *W, mask, 2, True, chunk_size=4)
    out_p = plain_em_routing(x, 9**-0.5, a, beta_use, beta_ign, *W, mask, 2, True)
    assert not out_ng.requires_grad
    torch.testing.assert_close(out_ng, out_p, rtol=1e-10, atol=1e-11)
    # only one small parameter and the Linear bias need gradients
    for p in [x, a, *W, beta_use.weight, beta_ign.weight]:
        p.requires_grad_(False)
    targets = [W[1].requires_grad_(True), beta_use.bias]
    grads = []
    for fn in (plain_em_routing, fused_em_routing):
        out = fn(x, 9**-0.5, a, beta_use, beta_ign, *W, mask, 3, False, chunk_size=4)
        grads.append(torch.autograd.grad(out.square().sum(), targets))
    for gf, gp in zip(grads[1], grads[0], strict=True):
        torch.testing.assert_close(gf, gp, rtol=1e-9, atol=1e-10)


def test_thread_count_is_restored(monkeypatch):
    before = torch.get_num_threads()
    case = make_case((2,), 30, 6, 4, 3, True, None, 1, torch.float32)
    run(fused_em_routing, case, 2, True, chunk_size=7)
    assert torch.get_num_threads() == before

    def failing(*args):
        raise RuntimeError("boom")

    monkeypatch.setattr(_fused, "_bmm_into", failing)
    with pytest.raises(RuntimeError, match="boom"):
        run(fused_em_routing, case, 2, True, chunk_size=7)
    assert torch.get_num_threads() == before


def test_saved_memory_matches_the_formula():
    """Only the logits of iterations >= 1 and the Linear-beta block are kept: (T-1)·B·n·m + 2·B·n·m."""
    batch, n, d, m, n_iters = (3,), 50, 8, 4, 3
    case = make_case(batch, n, d, m, 5, True, None, 1, torch.float32)
    x, a, beta_use, beta_ign, W, mask = case
    out = fused_em_routing(x, n**-0.5, a, beta_use, beta_ign, *W, mask, n_iters, True, chunk_size=20)
    node = out.grad_fn
    while node is not None and not hasattr(node, "logits"):
        node = node.next_functions[0][0]
    assert node is not None
    saved = sum(t.numel() for ts in node.logits for t in ts) + sum(t.numel() for t in node.beta_blocks)
    assert saved == (n_iters - 1) * 3 * n * m + 2 * 3 * n * m
    small = sum(t.numel() for t in [*node.As, *node.ss, *node.Ps[1:]])
    assert small == n_iters * 3 * m * d + n_iters * 3 * m + (n_iters - 1) * 3 * m * d


def test_blocks_cover_every_row_once():
    for batch, n, rows in [(1, 10, 3), (3, 7, 7), (3, 7, 15), (4, 5, 2), (2, 9, 100)]:
        seen = torch.zeros(batch, n, dtype=torch.int64)
        for bs, is_ in _blocks(batch, n, rows):
            seen[bs, is_] += 1
            assert (bs.stop - bs.start) * (is_.stop - is_.start) <= max(rows, n)
        assert torch.equal(seen, torch.ones_like(seen))
    assert 256 <= default_chunk_rows(100) <= 1 << 16


def test_matches_core_plain_em_routing():
    efficient = pytest.importorskip("heinsen_routing.efficient")
    core = getattr(efficient, "plain_em_routing", None)
    if core is None:
        pytest.skip("heinsen_routing.efficient.plain_em_routing not available")
    for linear, mask_kind in [(False, "shared"), (True, "random")]:
        case = make_case((2,), 7, 5, 4, 3, linear, mask_kind, 1, torch.float64)
        x, a, beta_use, beta_ign, W, mask = case

        def core_fn(x, scale, a, bu, bi, *rest, chunk_size=None):
            *W_, mask_, n_iters, normalize = rest
            if isinstance(bu, nn.Module):
                bu, bi = bu(x), bi(x)
            mask_ = None if mask_ is None else mask_.expand(*mask_.shape[:-1], W_[0].shape[0])
            return core(x, scale, a, bu, bi, *W_, mask_, n_iters, normalize, True, False)

        out_c, grads_c = run(core_fn, case, 2, True)
        out_f, grads_f = run(fused_em_routing, case, 2, True, chunk_size=3)
        torch.testing.assert_close(out_f, out_c, rtol=1e-10, atol=1e-11)
        for gf, gc in zip(grads_f, grads_c, strict=True):
            torch.testing.assert_close(gf, gc, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize(
    "change, match",
    [
        ({"x": torch.zeros(4, dtype=torch.float64)}, "x: expected a tensor of shape"),
        ({"W_F1": torch.zeros(3, 4, dtype=torch.float64)}, r"W_F1: expected shape \[n_out, d_inp\]"),
        ({"W_S": torch.zeros(2, 4, dtype=torch.float64)}, "W_S: expected shape"),
        ({"mask": torch.zeros(5, 4, dtype=torch.float32)}, "mask: expected a torch.bool"),
        ({"mask": torch.zeros(3, 5, 4, dtype=torch.bool)}, "mask: expected a shape broadcastable"),
        ({"n_iters": 0}, "n_iters: expected an int >= 1"),
        ({"chunk_size": 0}, "chunk_size: expected None or an int >= 1"),
        ({"a_logits": torch.zeros(2, 6, dtype=torch.float64)}, "a_logits: expected a shape broadcastable"),
        ({"beta_use": torch.zeros(6, 4, dtype=torch.float64)}, "beta_use: expected a shape broadcastable"),
    ],
)
def test_bad_arguments_name_the_argument(change, match):
    x, a, beta_use, beta_ign, W, mask = make_case((2,), 5, 3, 4, 2, False, None, 1, torch.float64)
    kwargs = dict(zip(["W_F1", "W_F2", "B_F2", "W_G1", "W_G2", "B_G2", "W_S", "B_S"], W, strict=True))
    kwargs.update(
        x=x, scale=0.5, a_logits=a, beta_use=beta_use, beta_ign=beta_ign, mask=mask, n_iters=2, normalize=True
    )
    kwargs.update(change)
    with pytest.raises((ValueError, TypeError), match=match):
        fused_em_routing(**kwargs)


@pytest.mark.parametrize("scale_kind", ["float", "tensor"])
def test_activation_logits_folded_into_the_beta_product(scale_kind):
    """a_logits given as (W_A [1, d], B_A [1]) is computed inside (one more column of the beta product, and
    of the dx and weight-gradient products): same values and gradients as passing the logits."""
    dt = torch.float64
    x, a, beta_use, beta_ign, W, mask = make_case((2,), 9, 5, 4, 3, True, "padding", 1, dt)
    gen = torch.Generator().manual_seed(3)
    W_A = torch.randn(1, 5, generator=gen, dtype=dt).requires_grad_(True)
    B_A = torch.randn(1, generator=gen, dtype=dt).requires_grad_(True)
    scale = 9**-0.5 if scale_kind == "float" else torch.tensor([[[0.3]], [[0.5]]], dtype=dt)
    scale_a = scale if scale_kind == "float" else scale.squeeze(-1)
    leaves = [x, W_A, B_A, *W, *beta_use.parameters(), *beta_ign.parameters()]
    results = []
    for a_arg in (None, (W_A, B_A)):
        a_logits = scale_a * (x @ W_A[0]) + B_A if a_arg is None else a_arg
        out = fused_em_routing(x, scale, a_logits, beta_use, beta_ign, *W, mask, 2, True, chunk_size=4)
        weights = torch.randn(out.shape, generator=torch.Generator().manual_seed(1), dtype=dt)
        results.append((out, torch.autograd.grad((out * weights).sum(), leaves)))
    (out_p, grads_p), (out_f, grads_f) = results
    torch.testing.assert_close(out_f, out_p, rtol=1e-12, atol=1e-12)
    for gf, gp in zip(grads_f, grads_p, strict=True):
        torch.testing.assert_close(gf, gp, rtol=1e-10, atol=1e-12)
