"""GenerativeMatrixRouting against the independent float64 reference of SPEC §3 (tests/.../reference.py)."""

from __future__ import annotations

import itertools
import math
import os
from pathlib import Path

import pytest
import routing_reference as ref  # registered by conftest.py
import torch

import heinsen_routing
from heinsen_routing import GenerativeMatrixRouting

F64 = torch.float64
ATOL, RTOL = 1e-10, 1e-8
DICT_KEYS = {"V", "log_p", "R", "D_use", "D_ign", "a_out", "mu_out", "sig2_out"}
OUTPUTS = ("a_out", "mu_out", "sig2_out")
ERRORS = (ValueError, TypeError)


def make_layer(n_inp, n_out, d_cov, d_inp, d_out, n_iters=3, single_beta=False, p_model="gaussian",
               return_dict=False, seed=0, dtype=F64):
    """A layer whose zero-initialised B and betas are made random so that they matter."""
    torch.manual_seed(seed)
    layer = GenerativeMatrixRouting(n_inp=n_inp, n_out=n_out, d_cov=d_cov, d_inp=d_inp, d_out=d_out,
                                    n_iters=n_iters, single_beta=single_beta, p_model=p_model,
                                    return_dict=return_dict).to(dtype)
    with torch.no_grad():
        layer.B.normal_(0.0, 0.3)
        layer.beta_use.normal_()
        if not single_beta:
            layer.beta_ign.normal_()
    return layer


def reference_params(layer, single_beta):
    params = ref.leaf_params(layer)
    if single_beta:
        params["beta_ign"] = params["beta_use"]  # one parameter used twice: its grads accumulate
    return params


def grads_of(outs, upstreams, inputs):
    loss = sum((o * u).sum() for o, u in zip(outs, upstreams, strict=True))
    grads = torch.autograd.grad(loss, list(inputs), allow_unused=True)
    return [torch.zeros_like(t) if g is None else g for t, g in zip(inputs, grads, strict=True)]


def assert_close(actual, expected, what, atol=ATOL, rtol=RTOL):
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    torch.testing.assert_close(actual, expected, atol=atol, rtol=rtol, msg=lambda m: f"{what}: {m}")


GRID = list(itertools.product([4, -1], [2, 3], [(1, 3, 2), (2, 2, 3)], [1, 2, 3], ["gaussian", "skm"],
                              [False, True]))


@pytest.mark.parametrize(
    "n_inp,n_out,dims,n_iters,p_model,single_beta",
    GRID,
    ids=[f"ninp{a}-nout{b}-dims{'x'.join(map(str, c))}-it{d}-{e}-single{int(f)}" for a, b, c, d, e, f in GRID],
)
def test_matches_reference(n_inp, n_out, dims, n_iters, p_model, single_beta):
    d_cov, d_inp, d_out = dims
    layer = make_layer(n_inp, n_out, d_cov, d_inp, d_out, n_iters, single_beta, p_model)
    names = [name for name, _ in layer.named_parameters()]
    layer_params = dict(layer.named_parameters())
    gen = torch.Generator().manual_seed(1)
    for batch in [(), (2,), (2, 3)]:
        a = torch.randn(*batch, 4, dtype=F64, generator=gen)
        mu = torch.randn(*batch, 4, d_cov, d_inp, dtype=F64, generator=gen)
        a_l, mu_l = a.clone().requires_grad_(True), mu.clone().requires_grad_(True)
        got = layer(a_l, mu_l)
        assert isinstance(got, tuple) and len(got) == 3
        params = reference_params(layer, single_beta)
        a_r, mu_r = a.clone().requires_grad_(True), mu.clone().requires_grad_(True)
        expected = ref.generative_reference(params, a_r, mu_r, n_iters=n_iters, p_model=p_model)
        want_out = [expected[k] for k in OUTPUTS]
        for key, g, w in zip(OUTPUTS, got, want_out, strict=True):
            assert_close(g, w, key)
        upstreams = [torch.randn(w.shape, dtype=F64, generator=gen) for w in want_out]
        g_got = grads_of(got, upstreams, [a_l, mu_l] + [layer_params[n] for n in names])
        g_want = grads_of(want_out, upstreams, [a_r, mu_r] + [params[n] for n in names])
        for label, g, w in zip(["a_inp", "mu_inp", *names], g_got, g_want, strict=True):
            assert_close(g, w, f"grad wrt {label}", atol=1e-9, rtol=1e-7)


@pytest.mark.parametrize("n_inp", [4, -1])
@pytest.mark.parametrize("n_iters", [1, 2, 3])
@pytest.mark.parametrize("p_model", ["gaussian", "skm"])
def test_return_dict(n_inp, n_iters, p_model):
    layer = make_layer(n_inp, 3, 2, 2, 2, n_iters=n_iters, p_model=p_model, return_dict=True)
    a = torch.randn(2, 4, dtype=F64)
    mu = torch.randn(2, 4, 2, 2, dtype=F64)
    with torch.no_grad():
        got = layer(a, mu)
        expected = ref.generative_reference(ref.leaf_params(layer), a, mu, n_iters=n_iters, p_model=p_model)
    assert isinstance(got, dict) and set(got) == DICT_KEYS
    if n_iters == 1:
        assert got["log_p"] is None
    else:
        assert_close(got["log_p"], expected["log_p"], "log_p")
    for key in ("V", "R", "D_use", "D_ign", "a_out", "mu_out", "sig2_out"):
        assert_close(got[key].expand(expected[key].shape), expected[key], key)
    assert got["V"].shape == (2, 4, 3, 2, 2)
    assert got["R"].shape == (2, 4, 3)


def test_eps_is_used():
    kwargs = dict(n_inp=-1, n_out=2, d_cov=1, d_inp=2, d_out=2, n_iters=2)
    torch.manual_seed(0)
    layer = GenerativeMatrixRouting(eps=0.1, **kwargs).double()
    a, mu = torch.randn(5, dtype=F64), torch.randn(5, 1, 2, dtype=F64)
    with torch.no_grad():
        got = layer(a, mu)
        expected = ref.generative_reference(ref.leaf_params(layer), a, mu, n_iters=2, eps=0.1)
    for key, g in zip(OUTPUTS, got, strict=True):
        assert_close(g, expected[key], key)


# --------------------------------------------------------------------------------------------------
# Parameters, single_beta, init, published checkpoints
# --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("n_inp", [6, -1])
@pytest.mark.parametrize("single_beta", [False, True])
def test_state_dict_names_shapes(n_inp, single_beta):
    n_out, d_cov, d_inp, d_out = 3, 2, 4, 5
    layer = GenerativeMatrixRouting(n_inp=n_inp, n_out=n_out, d_cov=d_cov, d_inp=d_inp, d_out=d_out,
                                    single_beta=single_beta)
    n1 = max(1, n_inp)
    want = {"W": (n1, n_out, d_inp, d_out), "B": (n1, n_out, d_cov, d_out), "beta_use": (n1, n_out),
            "beta_ign": (n1, n_out), "CONST_one": ()}
    sd = layer.state_dict()
    assert set(sd) == set(want), f"state_dict keys {sorted(sd)}"
    for name, shape in want.items():
        assert tuple(sd[name].shape) == shape, f"{name}: {tuple(sd[name].shape)} != {shape}"
        assert sd[name].dtype == torch.float32
    assert sd["CONST_one"].item() == 1.0
    assert dict(layer.named_buffers()).keys() == {"CONST_one"}
    if single_beta:
        assert layer.beta_ign is layer.beta_use
        assert {n for n, _ in layer.named_parameters()} == {"W", "B", "beta_use"}
    else:
        assert layer.beta_ign is not layer.beta_use
        assert {n for n, _ in layer.named_parameters()} == {"W", "B", "beta_use", "beta_ign"}


def test_single_beta_stays_tied_after_load_and_training_step():
    layer = make_layer(4, 3, 1, 2, 2, single_beta=True)
    other = make_layer(4, 3, 1, 2, 2, single_beta=True, seed=5)
    layer.load_state_dict(other.state_dict(), strict=True)
    assert layer.beta_ign is layer.beta_use
    assert torch.equal(layer.beta_use, other.beta_use)
    opt = torch.optim.SGD(layer.parameters(), lr=0.1)
    a_out, _, _ = layer(torch.randn(4, dtype=F64), torch.randn(4, 1, 2, dtype=F64))
    a_out.sum().backward()
    opt.step()
    assert layer.beta_ign is layer.beta_use and torch.equal(layer.beta_ign, layer.beta_use)


def test_init_distributions():
    torch.manual_seed(7)
    d_inp = 8
    layer = GenerativeMatrixRouting(n_inp=16, n_out=8, d_cov=4, d_inp=d_inp, d_out=8)
    W = layer.W.detach().double().flatten()
    assert abs(W.mean().item()) < 5 / d_inp / math.sqrt(W.numel())
    assert abs(W.std().item() * d_inp - 1) < 0.1, f"W std {W.std().item()} expected {1 / d_inp}"
    for name in ("B", "beta_use", "beta_ign"):
        assert torch.all(getattr(layer, name) == 0), f"{name} should start at zeros"


def _shared_dir() -> Path | None:
    env = os.environ.get("HEINSEN_SHARED")
    path = Path(env) if env else Path(__file__).resolve().parents[2] / ".." / "shared"
    return path if path.is_dir() else None


@pytest.mark.parametrize(
    "filename,layers",
    [
        ("smallNORB_pretrained_model_state_dict.pt",
         [dict(n_inp=-1, n_out=64, d_cov=4, d_inp=4, d_out=4), dict(n_inp=64, n_out=5, d_cov=4, d_inp=4, d_out=4)]),
        ("SST5R_pretrained_model_state_dict.pt",
         [dict(n_inp=-1, n_out=64, d_cov=1, d_inp=64, d_out=2), dict(n_inp=64, n_out=5, d_cov=1, d_inp=2, d_out=2)]),
    ],
)
def test_published_2019_routings_load_strictly(filename, layers):
    shared = _shared_dir()
    path = None if shared is None else shared / "checkpoints" / "heinsen2019" / filename
    if path is None or not path.is_file():
        pytest.skip(f"published checkpoint {filename} not found (set HEINSEN_SHARED)")
    sd = torch.load(path, map_location="cpu", weights_only=True)
    torch.manual_seed(0)
    x_a, x_mu = torch.randn(2, 10), torch.randn(2, 10, layers[0]["d_cov"], layers[0]["d_inp"])
    for k, kwargs in enumerate(layers):
        layer = GenerativeMatrixRouting(**kwargs)
        prefix = f"routings.{k}."
        sub = {name[len(prefix):]: t for name, t in sd.items() if name.startswith(prefix)}
        layer.load_state_dict(sub, strict=True)
        with torch.no_grad():
            expected = ref.generative_reference({name: t.double() for name, t in sub.items()},
                                                x_a.double(), x_mu.double(), n_iters=3)
            x_a, x_mu, sig2 = layer(x_a, x_mu)
        assert torch.isfinite(x_a).all() and torch.isfinite(x_mu).all() and (sig2 > 0).all()
        for key, got in zip(OUTPUTS, (x_a, x_mu, sig2), strict=True):
            assert_close(got.double(), expected[key], f"{filename} routing {k} {key}", atol=1e-3, rtol=1e-3)
    assert x_a.shape == (2, layers[-1]["n_out"])


@pytest.mark.parametrize("n_inp", [5, -1])
def test_published_style_fp32_close_to_reference(n_inp):
    layer = make_layer(n_inp, 4, 4, 4, 4, n_iters=3, dtype=torch.float32)
    a, mu = torch.randn(3, 5), torch.randn(3, 5, 4, 4)
    with torch.no_grad():
        got = layer(a, mu)
        params = {k: v.double() for k, v in layer.state_dict().items()}
        expected = ref.generative_reference(params, a.double(), mu.double(), n_iters=3)
    for key, g in zip(OUTPUTS, got, strict=True):
        assert g.dtype == torch.float32
        assert_close(g.double(), expected[key], key, atol=1e-3, rtol=1e-3)


# --------------------------------------------------------------------------------------------------
# -inf activation logits (the 2019 SST model feeds logit(0) = -inf for padding tokens)
# --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("p_model", ["gaussian", "skm"])
def test_minus_inf_logits_remove_inputs(p_model):
    layer = make_layer(-1, 3, 1, 3, 2, n_iters=3, p_model=p_model)
    a = torch.randn(2, 6, dtype=F64)
    mu = torch.randn(2, 6, 1, 3, dtype=F64)
    a[0, 4:] = float("-inf")
    a[1, 1] = float("-inf")
    mu_l = mu.clone().requires_grad_(True)
    got = layer(a, mu_l)
    sum(t.sum() for t in got).backward()
    for b in range(2):
        keep = torch.isfinite(a[b])
        single = layer(a[b, keep], mu[b, keep])
        for key, g, s in zip(OUTPUTS, got, single, strict=True):
            assert_close(g[b], s, f"{key} of sample {b}")
    assert torch.isfinite(mu_l.grad).all()
    assert torch.all(mu_l.grad[~torch.isfinite(a)] == 0)


# --------------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------------

@pytest.fixture
def layer32():
    return GenerativeMatrixRouting(n_inp=4, n_out=3, d_cov=2, d_inp=3, d_out=2)


@pytest.fixture
def var32():
    return GenerativeMatrixRouting(n_inp=-1, n_out=3, d_cov=2, d_inp=3, d_out=2)


def test_mu_inp_wrong_rank_or_dims(layer32, var32):
    for layer in (layer32, var32):
        for mu in (torch.randn(4, 3), torch.randn(4, 3, 3), torch.randn(4, 2, 4)):
            with pytest.raises(ERRORS, match=r"\bmu_inp\b"):
                layer(torch.randn(4), mu)


def test_a_inp_mu_inp_mismatch(layer32, var32):
    for layer in (layer32, var32):
        with pytest.raises(ERRORS, match=r"\ba_inp\b"):
            layer(torch.randn(5), torch.randn(4, 2, 3))
        with pytest.raises(ERRORS, match=r"\ba_inp\b"):
            layer(torch.randn(3, 4), torch.randn(2, 4, 2, 3))  # batch dims differ
        with pytest.raises(ERRORS, match=r"\ba_inp\b"):
            layer(torch.randn(4, 1), torch.randn(4, 2, 3))


def test_n_mismatch_fixed(layer32):
    with pytest.raises(ERRORS, match=r"\b(mu_inp|a_inp)\b"):
        layer32(torch.randn(5), torch.randn(5, 2, 3))


def test_empty_sequence(var32):
    with pytest.raises(ERRORS, match=r"\b(mu_inp|a_inp)\b"):
        var32(torch.randn(0), torch.randn(0, 2, 3))


def test_dtype_mismatch(layer32):
    with pytest.raises(ERRORS, match=r"\bmu_inp\b"):
        layer32(torch.randn(4, dtype=F64), torch.randn(4, 2, 3, dtype=F64))
    with pytest.raises(ERRORS, match=r"\ba_inp\b"):
        layer32(torch.randn(4, dtype=F64), torch.randn(4, 2, 3))
    with pytest.raises(ERRORS, match=r"\ba_inp\b"):
        layer32(torch.ones(4, dtype=torch.long), torch.randn(4, 2, 3))


def test_non_finite(layer32):
    mu = torch.randn(4, 2, 3)
    mu[2, 1, 0] = float("nan")
    with pytest.raises(ValueError, match=r"\bmu_inp\b"):
        layer32(torch.randn(4), mu)
    with heinsen_routing.skip_checks():
        layer32(torch.randn(4), mu)
    a = torch.randn(4)
    a[0] = float("nan")
    with pytest.raises(ValueError, match=r"\ba_inp\b"):
        layer32(a, torch.randn(4, 2, 3))


@pytest.mark.parametrize(
    "kwargs,arg",
    [
        (dict(p_model="bogus"), "p_model"),
        (dict(n_inp=0), "n_inp"),
        (dict(n_inp=-3), "n_inp"),
        (dict(d_cov=0), "d_cov"),
        (dict(n_iters=0), "n_iters"),
    ],
    ids=["p_model", "n_inp=0", "n_inp=-3", "d_cov=0", "n_iters=0"],
)
def test_bad_constructor_args(kwargs, arg):
    base = dict(n_inp=4, n_out=3, d_cov=2, d_inp=3, d_out=2)
    base.update(kwargs)
    with pytest.raises(ERRORS, match=rf"\b{arg}\b"):
        GenerativeMatrixRouting(**base)
