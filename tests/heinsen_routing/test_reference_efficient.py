"""EfficientVectorRouting against the independent float64 reference of SPEC §1 (tests/.../reference.py).

Covers outputs and gradients over a grid of configurations, return_dict, gradcheck, the state_dict
name/shape/dtype contract, initial distributions, strict loading, the padding-mask contract, input
validation, autocast and torch.compile.
"""

from __future__ import annotations

import itertools
import math

import pytest
import routing_reference as ref  # registered by conftest.py
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import heinsen_routing
from heinsen_routing import EfficientVectorRouting

F64 = torch.float64
ATOL, RTOL = 1e-10, 1e-8
DICT_KEYS = {"a_inp", "V", "pred_x_inp", "S", "R", "D_use", "D_ign", "phi", "x_out"}
BIASES = ("B_A", "B_F2", "B_G2", "B_S")


def make_layer(n_inp, n_out, d_inp, d_out, seed=0, dtype=F64, randomize_biases=True, **kwargs):
    """A layer in ``dtype`` whose zero-initialised biases are made random so that they matter."""
    torch.manual_seed(seed)
    layer = EfficientVectorRouting(n_inp=n_inp, n_out=n_out, d_inp=d_inp, d_out=d_out, **kwargs).to(dtype)
    if randomize_biases:
        with torch.no_grad():
            for name in BIASES:
                getattr(layer, name).normal_(0.0, 0.5)
    return layer


def random_mask(*shape, generator=None) -> torch.Tensor:
    """Random bool mask [..., n, n_out] (True = ignored) that leaves every input at least one output."""
    mask = torch.rand(*shape, generator=generator) < 0.4
    mask[..., 0] &= ~mask.all(dim=-1)
    return mask


def grads_of(out: torch.Tensor, upstream: torch.Tensor, inputs):
    grads = torch.autograd.grad((out * upstream).sum(), list(inputs), allow_unused=True)
    return [torch.zeros_like(t) if g is None else g for t, g in zip(inputs, grads, strict=True)]


def assert_close(actual, expected, what, atol=ATOL, rtol=RTOL):
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    torch.testing.assert_close(actual, expected, atol=atol, rtol=rtol, msg=lambda m: f"{what}: {m}")


def compare_with_reference(layer, x, n_iters, normalize, mask=None):
    """Forward + backward of layer and reference; compare outputs and grads wrt x and every parameter."""
    names = [name for name, _ in layer.named_parameters()]
    params = dict(layer.named_parameters())
    x_layer = x.clone().requires_grad_(True)
    out = layer(x_layer) if mask is None else layer(x_layer, mask=mask)
    ref_params = ref.leaf_params(layer)
    x_ref = x.clone().requires_grad_(True)
    expected = ref.efficient_reference(ref_params, x_ref, n_iters=n_iters, normalize=normalize, mask=mask)
    assert_close(out, expected["x_out"], "x_out")
    upstream = torch.randn_like(expected["x_out"])
    got = grads_of(out, upstream, [x_layer] + [params[n] for n in names])
    want = grads_of(expected["x_out"], upstream, [x_ref] + [ref_params[n] for n in names])
    for name, g, w in zip(["x"] + names, got, want, strict=True):
        assert_close(g, w, f"grad wrt {name}")


# --------------------------------------------------------------------------------------------------
# Outputs and gradients vs the reference over the configuration grid
# --------------------------------------------------------------------------------------------------

GRID = list(itertools.product([4, -1], [2, 5], [1, 3], [1, 2, 3], [True, False], [True, False]))


@pytest.mark.parametrize(
    "n_inp,n_out,d_out,n_iters,normalize,memory_efficient",
    GRID,
    ids=[f"ninp{a}-nout{b}-dout{c}-it{d}-norm{int(e)}-memeff{int(f)}" for a, b, c, d, e, f in GRID],
)
def test_matches_reference(n_inp, n_out, d_out, n_iters, normalize, memory_efficient):
    d_inp = 3
    layer = make_layer(n_inp, n_out, d_inp, d_out, n_iters=n_iters, normalize=normalize,
                       memory_efficient=memory_efficient)
    gen = torch.Generator().manual_seed(1)
    for batch in [(), (2,), (2, 3)]:
        n = 4 if n_inp > 0 else 5
        x = torch.randn(*batch, n, d_inp, dtype=F64, generator=gen)
        compare_with_reference(layer, x, n_iters, normalize)
        mask = random_mask(n, n_out, generator=gen)
        compare_with_reference(layer, x, n_iters, normalize, mask=mask)


@pytest.mark.parametrize("n_inp", [4, -1])
def test_batched_mask_broadcasts(n_inp):
    """mask may carry batch dims ([..., n, n_out]) and size-1 dims that broadcast."""
    layer = make_layer(n_inp, 3, 3, 2, n_iters=2)
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(2, 3, 4, 3, dtype=F64, generator=gen)
    for shape in [(2, 3, 4, 3), (3, 4, 3), (2, 1, 4, 3), (1, 4, 3)]:
        compare_with_reference(layer, x, 2, True, mask=random_mask(*shape, generator=gen))
    # [1, n_out]: output 0 ignores every input (it then receives no credit at all).
    compare_with_reference(layer, x, 2, True, mask=torch.tensor([[True, False, False]]))


def test_mask_equals_reference_semantics_of_ignoring():
    """An input masked for every output but one contributes only to that output."""
    layer = make_layer(-1, 3, 2, 2, n_iters=2)
    x = torch.randn(5, 2, dtype=F64)
    mask = torch.zeros(5, 3, dtype=torch.bool)
    mask[2, :2] = True
    out = layer(x, mask=mask)
    expected = ref.efficient_reference(ref.leaf_params(layer), x, n_iters=2, mask=mask)
    assert_close(out, expected["x_out"].detach(), "x_out")
    assert torch.all(expected["D_use"][2, :2] == 0)


# --------------------------------------------------------------------------------------------------
# return_dict
# --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("n_inp", [4, -1])
@pytest.mark.parametrize("n_iters", [1, 2, 3])
@pytest.mark.parametrize("memory_efficient", [True, False])
@pytest.mark.parametrize("with_mask", [False, True])
def test_return_dict(n_inp, n_iters, memory_efficient, with_mask):
    n_out, d_inp, d_out = 3, 3, 2
    layer = make_layer(n_inp, n_out, d_inp, d_out, n_iters=n_iters, memory_efficient=memory_efficient,
                       return_dict=True)
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(2, 4, d_inp, dtype=F64, generator=gen)
    mask = random_mask(4, n_out, generator=gen) if with_mask else None
    with torch.no_grad():
        got = layer(x) if mask is None else layer(x, mask=mask)
        expected = ref.efficient_reference(ref.leaf_params(layer), x, n_iters=n_iters, mask=mask)
    assert isinstance(got, dict)
    assert set(got) == DICT_KEYS
    if n_iters == 1:
        assert got["pred_x_inp"] is None and got["S"] is None
    else:
        assert_close(got["pred_x_inp"], expected["pred_x_inp"], "pred_x_inp")
        assert_close(got["S"], expected["S"], "S")
    if memory_efficient:
        assert got["V"] is None
    else:
        assert_close(got["V"], expected["V"], "V")
    # SPEC §1 defines a as a[..., i]; accept [..., n] or [..., n, 1] holding the same values.
    assert got["a_inp"].numel() == expected["a_inp"].numel()
    assert_close(got["a_inp"].reshape(expected["a_inp"].shape), expected["a_inp"], "a_inp")
    for key in ("R", "D_use", "D_ign", "phi"):
        assert_close(got[key].expand(expected[key].shape), expected[key], key)
        assert got[key].shape[-2:] == (4, n_out), f"{key}: shape {tuple(got[key].shape)}"
    assert_close(got["x_out"], expected["x_out"], "x_out")


def test_return_dict_phi_is_differentiable():
    layer = make_layer(4, 3, 2, 2, return_dict=True)
    x = torch.randn(4, 2, dtype=F64, requires_grad=True)
    out = layer(x)
    (out["phi"].sum() + out["x_out"].sum()).backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


# --------------------------------------------------------------------------------------------------
# gradcheck
# --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("n_inp", [3, -1])
@pytest.mark.parametrize("with_mask", [False, True])
def test_gradcheck(n_inp, with_mask):
    layer = make_layer(n_inp, 2, 2, 2, n_iters=3)
    names = [name for name, _ in layer.named_parameters()]
    x = torch.randn(2, 3, 2, dtype=F64, requires_grad=True)
    mask = torch.tensor([[False, True], [False, False], [True, False]]) if with_mask else None

    def fn(x, *param_values):
        state = dict(zip(names, param_values, strict=True))
        return torch.func.functional_call(layer, state, (x,), {"mask": mask})

    inputs = (x, *[p.detach().clone().requires_grad_(True) for _, p in layer.named_parameters()])
    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-5, rtol=1e-4, fast_mode=True)


def test_gradcheck_padding_mask():
    layer = make_layer(-1, 2, 2, 2, n_iters=2)
    x = torch.randn(2, 4, 2, dtype=F64, requires_grad=True)
    padding_mask = torch.tensor([[False, False, True, True], [False, True, False, False]])
    assert torch.autograd.gradcheck(lambda x: layer(x, padding_mask=padding_mask), (x,), eps=1e-6, atol=1e-5,
                                    fast_mode=True)


# --------------------------------------------------------------------------------------------------
# state_dict contract, init distributions, strict loading
# --------------------------------------------------------------------------------------------------

def expected_state_shapes(n_inp, n_out, d_inp, d_out):
    n1 = max(1, n_inp)
    shapes = {
        "W_A": (n1, d_inp), "B_A": (n1,), "W_F1": (n_out, d_inp), "W_F2": (d_inp, d_out),
        "B_F2": (n_out, d_out), "W_G1": (d_out, d_inp), "W_G2": (n_out, d_inp), "B_G2": (n_out, d_inp),
        "W_S": (n1, n_out), "B_S": (n1, n_out), "CONST_ones_over_n_out": (n_out,),
    }
    if n_inp > 0:
        shapes.update({"beta_use": (n_inp, n_out), "beta_ign": (n_inp, n_out)})
    else:
        shapes.update({
            "compute_beta_use.weight": (n_out, d_inp), "compute_beta_use.bias": (n_out,),
            "compute_beta_ign.weight": (n_out, d_inp), "compute_beta_ign.bias": (n_out,),
        })
    return shapes


@pytest.mark.parametrize("n_inp", [7, -1])
@pytest.mark.parametrize("d_out", [1, 4])
def test_state_dict_names_shapes_dtypes(n_inp, d_out):
    n_out, d_inp = 5, 6
    layer = EfficientVectorRouting(n_inp=n_inp, n_out=n_out, d_inp=d_inp, d_out=d_out)
    sd = layer.state_dict()
    want = expected_state_shapes(n_inp, n_out, d_inp, d_out)
    assert set(sd) == set(want), f"state_dict keys {sorted(sd)} != {sorted(want)}"
    for name, shape in want.items():
        assert tuple(sd[name].shape) == shape, f"{name}: {tuple(sd[name].shape)} != {shape}"
        assert sd[name].dtype == torch.float32, f"{name}: dtype {sd[name].dtype}"
    params = dict(layer.named_parameters())
    assert set(params) == set(want) - {"CONST_ones_over_n_out"}
    buffers = dict(layer.named_buffers())
    assert set(buffers) == {"CONST_ones_over_n_out"}
    assert torch.equal(buffers["CONST_ones_over_n_out"], torch.full((n_out,), 1.0 / n_out))
    assert "CONST_ones_over_n_out" not in layer._non_persistent_buffers_set
    double = EfficientVectorRouting(n_inp=n_inp, n_out=n_out, d_inp=d_inp, d_out=d_out).double()
    assert all(t.dtype == F64 for t in double.state_dict().values())


def _check_normal(name, t, std, z=5.0):
    """Mean and std within z standard errors (the std of a normal sample std is about std/sqrt(2N))."""
    t = t.detach().double().flatten()
    assert abs(t.mean().item()) < z * std / math.sqrt(t.numel()), f"{name}: mean {t.mean().item()}"
    rel = z / math.sqrt(2 * t.numel())
    assert abs(t.std().item() / std - 1) < rel, f"{name}: std {t.std().item()} expected {std} (±{rel:.0%})"


@pytest.mark.parametrize("n_inp", [64, -1])
def test_init_distributions(n_inp):
    n_out, d_inp, d_out = 48, 40, 24
    torch.manual_seed(123)
    layer = EfficientVectorRouting(n_inp=n_inp, n_out=n_out, d_inp=d_inp, d_out=d_out)
    _check_normal("W_A", layer.W_A, 2 * d_inp ** -0.5)
    _check_normal("W_F1", layer.W_F1, 1.0)
    _check_normal("W_F2", layer.W_F2, 2 * d_inp ** -0.5)
    _check_normal("W_G1", layer.W_G1, d_out ** -0.5)
    _check_normal("W_G2", layer.W_G2, 1.0)
    _check_normal("W_S", layer.W_S, d_inp ** -0.5)
    for name in BIASES:
        assert torch.all(getattr(layer, name) == 0), f"{name} should be zeros"
    if n_inp > 0:
        _check_normal("beta_use", layer.beta_use, 1.0)
        _check_normal("beta_ign", layer.beta_ign, 1.0)
        assert not torch.equal(layer.beta_use, layer.beta_ign)
    else:
        bound = d_inp ** -0.5  # nn.Linear default: U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for weight and bias
        for lin in (layer.compute_beta_use, layer.compute_beta_ign):
            assert isinstance(lin, torch.nn.Linear)
            assert lin.in_features == d_inp and lin.out_features == n_out
            assert lin.weight.abs().max() <= bound and lin.bias.abs().max() <= bound
            assert abs(lin.weight.std().item() / (bound / math.sqrt(3)) - 1) < 0.1


@pytest.mark.parametrize("n_inp", [5, -1])
def test_strict_load_gives_identical_outputs(n_inp):
    kwargs = dict(n_inp=n_inp, n_out=3, d_inp=4, d_out=2, n_iters=3)
    source = make_layer(seed=1, **kwargs)
    target = make_layer(seed=2, **kwargs)
    x = torch.randn(2, 5, 4, dtype=F64)
    assert not torch.allclose(source(x), target(x))
    result = target.load_state_dict(source.state_dict(), strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    assert torch.equal(source(x), target(x))
    # And a float32 layer loads a float64 state_dict (cast) with the same values.
    target32 = EfficientVectorRouting(**kwargs)
    target32.load_state_dict(source.state_dict(), strict=True)
    torch.testing.assert_close(target32(x.float()), source(x).float(), atol=1e-5, rtol=1e-4)


def test_strict_load_rejects_wrong_names():
    layer = EfficientVectorRouting(n_inp=3, n_out=2, d_inp=2, d_out=2)
    sd = layer.state_dict()
    sd["W_X"] = sd.pop("W_A")
    with pytest.raises(RuntimeError, match="W_A"):
        layer.load_state_dict(sd, strict=True)


# --------------------------------------------------------------------------------------------------
# Padding mask contract
# --------------------------------------------------------------------------------------------------

def _padded_batch(seqs, n_max, d, fill=0.0, padding_first=False):
    x = torch.full((len(seqs), n_max, d), fill, dtype=F64)
    pm = torch.ones(len(seqs), n_max, dtype=torch.bool)
    for b, s in enumerate(seqs):
        idx = torch.arange(n_max - len(s), n_max) if padding_first else torch.arange(len(s))
        x[b, idx] = s
        pm[b, idx] = False
    return x, pm


@pytest.mark.parametrize("n_iters", [1, 2, 3])
@pytest.mark.parametrize("padding_first", [False, True])
def test_padding_equals_unpadded_variable_length(n_iters, padding_first):
    d_inp, n_out, d_out = 3, 4, 2
    layer = make_layer(-1, n_out, d_inp, d_out, n_iters=n_iters)
    gen = torch.Generator().manual_seed(4)
    lengths = [3, 6, 1, 6]
    seqs = [torch.randn(n, d_inp, dtype=F64, generator=gen) for n in lengths]
    x, pm = _padded_batch(seqs, 6, d_inp, fill=7.0, padding_first=padding_first)
    x.requires_grad_(True)
    out = layer(x, padding_mask=pm)
    assert out.shape == (len(seqs), n_out, d_out)
    upstream = torch.randn(out.shape, dtype=F64, generator=gen)
    params = [p for _, p in layer.named_parameters()]
    got = grads_of(out, upstream, [x] + params)
    want_param_grads = [torch.zeros_like(p) for p in params]
    for b, s in enumerate(seqs):
        s = s.clone().requires_grad_(True)
        single = layer(s)
        assert_close(out[b], single, f"x_out of sample {b}")
        expected = ref.efficient_reference(ref.leaf_params(layer), s.detach(), n_iters=n_iters)["x_out"]
        assert_close(out[b].detach(), expected.detach(), f"x_out of sample {b} vs reference")
        g = grads_of(single, upstream[b], [s] + params)
        keep = ~pm[b]
        assert_close(got[0][b][keep], g[0], f"grad wrt x of sample {b}")
        assert torch.all(got[0][b][~keep] == 0), "grad at padded positions must be zero"
        want_param_grads = [acc + gi for acc, gi in zip(want_param_grads, g[1:], strict=True)]
    for (name, _), g, w in zip(layer.named_parameters(), got[1:], want_param_grads, strict=True):
        assert_close(g, w, f"grad wrt {name}")


def test_padding_in_the_middle_and_extra_batch_dims():
    layer = make_layer(-1, 3, 2, 3, n_iters=2)
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(2, 3, 5, 2, dtype=F64, generator=gen)
    pm = torch.rand(2, 3, 5, generator=gen) < 0.4
    pm[..., 2] = False
    out = layer(x, padding_mask=pm)
    for i in range(2):
        for j in range(3):
            keep = (~pm[i, j]).nonzero().squeeze(-1)
            assert_close(out[i, j], layer(x[i, j, keep]), f"sample {(i, j)}")


@pytest.mark.parametrize("n_iters", [1, 3])
def test_padding_with_fixed_n_inp_removes_inputs(n_iters):
    """With fixed n_inp, padding removes input i with its own per-input parameters (W_A[i], beta[i], ...)."""
    n_inp, n_out, d_inp, d_out = 5, 3, 2, 2
    layer = make_layer(n_inp, n_out, d_inp, d_out, n_iters=n_iters)
    gen = torch.Generator().manual_seed(6)
    x = torch.randn(3, n_inp, d_inp, dtype=F64, generator=gen)
    pm = torch.tensor([[False, True, False, False, True],
                       [False, False, False, False, False],
                       [True, True, True, True, False]])
    x_l = x.clone().requires_grad_(True)
    out = layer(x_l, padding_mask=pm)
    upstream = torch.randn(out.shape, dtype=F64, generator=gen)
    (gx,) = grads_of(out, upstream, [x_l])
    params = ref.leaf_params(layer)
    for b in range(3):
        keep = (~pm[b]).nonzero().squeeze(-1)
        xb = x[b, keep].clone().requires_grad_(True)
        expected = ref.efficient_reference(ref.select_inputs(params, keep), xb, n_iters=n_iters)["x_out"]
        assert_close(out[b], expected, f"x_out of sample {b}")
        (gxb,) = grads_of(expected, upstream[b], [xb])
        assert_close(gx[b, keep], gxb, f"grad wrt x of sample {b}")
        assert torch.all(gx[b][pm[b]] == 0)


@pytest.mark.parametrize("n_inp", [6, -1])
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf"), 1e300])
def test_padded_values_have_no_influence(n_inp, bad):
    layer = make_layer(n_inp, 3, 3, 2, n_iters=3)
    gen = torch.Generator().manual_seed(7)
    x = torch.randn(2, 6, 3, dtype=F64, generator=gen)
    pm = torch.zeros(2, 6, dtype=torch.bool)
    pm[0, 4:] = True
    pm[1, 1] = True
    x_bad = x.clone()
    x_bad[pm] = bad
    x_bad.requires_grad_(True)
    x_clean = x.clone().requires_grad_(True)
    params = [p for _, p in layer.named_parameters()]
    out_bad = layer(x_bad, padding_mask=pm)
    upstream = torch.randn(out_bad.shape, dtype=F64, generator=gen)
    g_bad = grads_of(out_bad, upstream, [x_bad] + params)
    out_clean = layer(x_clean, padding_mask=pm)
    g_clean = grads_of(out_clean, upstream, [x_clean] + params)
    assert torch.isfinite(out_bad).all()
    assert_close(out_bad, out_clean, "x_out", atol=1e-12, rtol=1e-12)
    assert torch.all(g_bad[0][pm] == 0)
    for (name, _), a, b in zip([("x", None)] + list(layer.named_parameters()), g_bad, g_clean, strict=True):
        assert torch.isfinite(a).all(), f"non-finite grad wrt {name}"
        assert_close(a, b, f"grad wrt {name} (padded values must not matter)", atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize("n_inp", [5, -1])
def test_padding_mask_combined_with_mask(n_inp):
    n_out = 3
    layer = make_layer(n_inp, n_out, 2, 2, n_iters=2)
    gen = torch.Generator().manual_seed(8)
    x = torch.randn(2, 5, 2, dtype=F64, generator=gen)
    pm = torch.tensor([[False, False, True, False, True], [False, False, False, False, False]])
    for mask in [random_mask(5, n_out, generator=gen), random_mask(2, 5, n_out, generator=gen)]:
        out = layer(x, mask=mask, padding_mask=pm)
        params = ref.leaf_params(layer)
        for b in range(2):
            keep = (~pm[b]).nonzero().squeeze(-1)
            mask_b = (mask if mask.dim() == 2 else mask[b])[keep]
            expected = ref.efficient_reference(ref.select_inputs(params, keep), x[b, keep], n_iters=2,
                                               mask=mask_b)["x_out"]
            assert_close(out[b], expected.detach(), f"x_out of sample {b}")


def test_padding_mask_return_dict_unpadded_entries():
    layer = make_layer(-1, 3, 2, 2, n_iters=2, return_dict=True)
    gen = torch.Generator().manual_seed(9)
    x = torch.randn(2, 4, 2, dtype=F64, generator=gen)
    pm = torch.tensor([[False, False, True, True], [False, False, False, False]])
    with torch.no_grad():
        got = layer(x, padding_mask=pm)
        expected = ref.efficient_reference(ref.leaf_params(layer), x[0, :2], n_iters=2)
    assert_close(got["x_out"][0], expected["x_out"], "x_out")
    for key in ("R", "D_use", "D_ign", "phi", "S"):
        assert_close(got[key][0, :2], expected[key], key)
    # Padded inputs receive no credit.
    assert torch.all(got["phi"][0, 2:] == 0)


def test_padding_mask_all_false_equals_no_padding_mask():
    layer = make_layer(4, 3, 2, 2)
    x = torch.randn(2, 4, 2, dtype=F64)
    pm = torch.zeros(2, 4, dtype=torch.bool)
    assert_close(layer(x, padding_mask=pm), layer(x), "x_out")


# --------------------------------------------------------------------------------------------------
# Validation: every bad input raises an error naming the argument
# --------------------------------------------------------------------------------------------------

ERRORS = (ValueError, TypeError)


@pytest.fixture
def small_layer():
    return EfficientVectorRouting(n_inp=4, n_out=3, d_inp=2, d_out=2)


@pytest.fixture
def var_layer():
    return EfficientVectorRouting(n_inp=-1, n_out=3, d_inp=2, d_out=2)


def test_x_wrong_rank(small_layer):
    with pytest.raises(ERRORS, match=r"\bx\b"):
        small_layer(torch.randn(2))


def test_x_not_tensor(small_layer):
    with pytest.raises(ERRORS, match=r"\bx\b"):
        small_layer([[0.0, 1.0]] * 4)


def test_x_wrong_last_dim(small_layer, var_layer):
    for layer in (small_layer, var_layer):
        with pytest.raises(ERRORS, match=r"\bx\b"):
            layer(torch.randn(4, 3))


def test_x_n_mismatch_fixed(small_layer):
    for n in (3, 5):
        with pytest.raises(ERRORS, match=r"\bx\b"):
            small_layer(torch.randn(2, n, 2))


def test_x_empty_sequence(var_layer):
    with pytest.raises(ERRORS, match=r"\bx\b"):
        var_layer(torch.randn(2, 0, 2))


def test_x_dtype_mismatch(small_layer):
    with pytest.raises(ERRORS, match=r"\bx\b"):
        small_layer(torch.randn(4, 2, dtype=F64))
    with pytest.raises(ERRORS, match=r"\bx\b"):
        small_layer(torch.randn(4, 2).half())


def test_x_integer(small_layer):
    with pytest.raises(ERRORS, match=r"\bx\b"):
        small_layer(torch.ones(4, 2, dtype=torch.long))


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_x_non_finite_and_skip_checks(small_layer, bad):
    x = torch.randn(4, 2)
    x[1, 0] = bad
    with pytest.raises(ValueError, match=r"\bx\b"):
        small_layer(x)
    with heinsen_routing.skip_checks():
        out = small_layer(x)  # no check: the non-finite value simply propagates
    assert out.shape == (3, 2)
    assert not torch.isfinite(out).all()
    with pytest.raises(ValueError, match=r"\bx\b"):  # checks are back on after the block
        small_layer(x)


def test_mask_not_bool(small_layer):
    for mask in (torch.zeros(4, 3), torch.zeros(4, 3, dtype=torch.long)):
        with pytest.raises(ERRORS, match=r"\bmask\b"):
            small_layer(torch.randn(4, 2), mask=mask)


@pytest.mark.parametrize("shape", [(5, 3), (4, 2), (4,), (3, 4, 3), (2, 2, 4, 3)])
def test_mask_wrong_shape(small_layer, shape):
    """mask must broadcast to [..., n, n_out] = [2, 4, 3] here without growing it."""
    with pytest.raises(ERRORS, match=r"\bmask\b"):
        small_layer(torch.randn(2, 4, 2), mask=torch.zeros(shape, dtype=torch.bool))


@pytest.mark.parametrize("shape", [(2, 5), (2, 3), (3, 4), (4, 2), (1, 2, 4)])
def test_padding_mask_wrong_shape(var_layer, shape):
    with pytest.raises(ERRORS, match=r"\bpadding_mask\b"):
        var_layer(torch.randn(2, 4, 2), padding_mask=torch.zeros(shape, dtype=torch.bool))


def test_padding_mask_not_bool(var_layer):
    for pm in (torch.zeros(2, 4), torch.zeros(2, 4, dtype=torch.long)):
        with pytest.raises(ERRORS, match=r"\bpadding_mask\b"):
            var_layer(torch.randn(2, 4, 2), padding_mask=pm)


def test_padding_mask_all_padded_sample(var_layer, small_layer):
    pm = torch.zeros(2, 4, dtype=torch.bool)
    pm[1] = True
    for layer in (var_layer, small_layer):
        with pytest.raises(ValueError, match=r"\bpadding_mask\b"):
            layer(torch.randn(2, 4, 2), padding_mask=pm)


@pytest.mark.parametrize(
    "kwargs,arg",
    [
        (dict(n_inp=4, n_out=1, d_inp=2, d_out=2), "n_out"),
        (dict(n_inp=4, n_out=0, d_inp=2, d_out=2), "n_out"),
        (dict(n_inp=0, n_out=2, d_inp=2, d_out=2), "n_inp"),
        (dict(n_inp=-2, n_out=2, d_inp=2, d_out=2), "n_inp"),
        (dict(n_inp=4, n_out=2, d_inp=0, d_out=2), "d_inp"),
        (dict(n_inp=4, n_out=2, d_inp=2, d_out=0), "d_out"),
        (dict(n_inp=4, n_out=2, d_inp=2, d_out=2, n_iters=0), "n_iters"),
    ],
    ids=["n_out=1", "n_out=0", "n_inp=0", "n_inp=-2", "d_inp=0", "d_out=0", "n_iters=0"],
)
def test_bad_constructor_args(kwargs, arg):
    with pytest.raises(ERRORS, match=rf"\b{arg}\b"):
        EfficientVectorRouting(**kwargs)


# --------------------------------------------------------------------------------------------------
# Memory (SPEC §1: linear in each of n_inp, n_out, d_inp, d_out), inputs left untouched, layouts
# --------------------------------------------------------------------------------------------------

class _LargestTensor(TorchDispatchMode):
    """Records the largest number of elements of any tensor produced by any op."""

    def __init__(self):
        super().__init__()
        self.largest = 0
        self.op = None

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor) and t.numel() > self.largest:
                self.largest, self.op = t.numel(), str(func)
        return out


@pytest.mark.parametrize("n_inp", [40, -1])
@pytest.mark.parametrize("with_padding", [False, True])
def test_memory_efficient_never_materialises_n_by_n_out_by_d(n_inp, with_padding):
    """No forward or backward intermediate has n·n_out·d elements when memory_efficient=True."""
    # n large enough that n·n_out·d dominates the legitimate O(n_iters·n_out·d) tensors (the fused path's
    # stacked right factors are [(2·n_iters + 1)·n_out, d_inp] = 385 elements here).
    n, n_out, d_inp, d_out = 40, 5, 11, 13
    limit = n * n_out * min(d_inp, d_out)  # 2200
    layer = make_layer(n_inp, n_out, d_inp, d_out, n_iters=3, memory_efficient=True)
    x = torch.randn(n, d_inp, dtype=F64, requires_grad=True)
    kwargs = {"padding_mask": torch.arange(n) % 3 == 1} if with_padding else {}
    with _LargestTensor() as probe:
        out = layer(x, **kwargs)
        out.square().sum().backward()
    assert probe.largest < limit, f"{probe.op} produced a tensor with {probe.largest} elements (>= {limit})"
    layer_v = make_layer(n_inp, n_out, d_inp, d_out, n_iters=3, memory_efficient=False)
    with _LargestTensor() as probe_v:
        layer_v(x)
    assert probe_v.largest >= n * n_out * d_out  # the probe does see V when it is materialised


def test_inputs_are_not_modified():
    layer = make_layer(-1, 3, 2, 2)
    x = torch.randn(2, 5, 2, dtype=F64)
    x[0, 3:] = float("nan")
    pm = torch.zeros(2, 5, dtype=torch.bool)
    pm[0, 3:] = True
    mask = random_mask(5, 3)
    x_copy, pm_copy, mask_copy = x.clone(), pm.clone(), mask.clone()
    layer(x, mask=mask, padding_mask=pm)
    assert torch.equal(x.isnan(), x_copy.isnan()) and torch.equal(x.nan_to_num(), x_copy.nan_to_num())
    assert torch.equal(pm, pm_copy) and torch.equal(mask, mask_copy)


def test_non_contiguous_inputs():
    layer = make_layer(4, 3, 3, 2)
    x = torch.randn(3, 4, 2, dtype=F64).transpose(0, 2)  # [2, 4, 3], non-contiguous
    assert not x.is_contiguous()
    assert_close(layer(x), layer(x.contiguous()), "x_out")
    mask = random_mask(3, 4).T
    assert_close(layer(x, mask=mask), layer(x.contiguous(), mask=mask.contiguous()), "x_out (mask)")


def test_bfloat16_layer_runs():
    torch.manual_seed(14)
    layer = EfficientVectorRouting(n_inp=-1, n_out=4, d_inp=8, d_out=4)
    x = torch.randn(2, 6, 8)
    with torch.no_grad():
        expected = layer(x)
        got = layer.to(torch.bfloat16)(x.to(torch.bfloat16))
    assert got.dtype == torch.bfloat16 and torch.isfinite(got).all()
    assert (got.float() - expected).abs().max().item() < 0.15


# --------------------------------------------------------------------------------------------------
# Autocast and torch.compile
# --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("n_inp", [8, -1])
def test_cpu_autocast_bfloat16_close_to_fp32(n_inp):
    torch.manual_seed(10)
    layer = EfficientVectorRouting(n_inp=n_inp, n_out=6, d_inp=16, d_out=8, n_iters=2)
    x = torch.randn(2, 8, 16)
    with torch.no_grad():
        expected = layer(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            got = layer(x)
    assert got.shape == expected.shape
    assert torch.isfinite(got).all()
    err = (got.float() - expected).abs().max().item()
    assert err < 0.1, f"bf16 autocast deviates from fp32 by {err} (LayerNorm'd outputs are O(1))"


def test_cpu_autocast_sequential_chain():
    """Under autocast a layer may emit bfloat16; the next layer (fp32 parameters) must accept it."""
    torch.manual_seed(13)
    model = torch.nn.Sequential(
        EfficientVectorRouting(n_inp=-1, n_out=6, d_inp=8, d_out=8),
        EfficientVectorRouting(n_inp=6, n_out=3, d_inp=8, d_out=4),
    )
    x = torch.randn(2, 7, 8)
    with torch.no_grad():
        expected = model(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            got = model(x)
    assert got.shape == expected.shape and torch.isfinite(got).all()
    assert (got.float() - expected).abs().max().item() < 0.15


def test_cpu_autocast_backward():
    layer = EfficientVectorRouting(n_inp=-1, n_out=4, d_inp=8, d_out=4)
    x = torch.randn(2, 5, 8, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = layer(x)
    out.float().square().sum().backward()
    assert torch.isfinite(x.grad).all()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in layer.parameters())


def _compile_matches_eager(n_inp, backend, padding=False):
    torch._dynamo.reset()
    torch.manual_seed(11)
    layer = EfficientVectorRouting(n_inp=n_inp, n_out=3, d_inp=4, d_out=2, n_iters=2)
    x = torch.randn(2, 5, 4)
    kwargs = {"padding_mask": torch.tensor([[False, False, False, True, True], [False] * 5])} if padding else {}
    compiled = torch.compile(layer, backend=backend)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x, **kwargs), layer(x, **kwargs), atol=1e-5, rtol=1e-5)


def test_compile_matches_eager_tiny():
    """Dynamo traces the layer (validation included) and the traced graph gives eager's output."""
    _compile_matches_eager(-1, backend="aot_eager")


@pytest.mark.slow
@pytest.mark.parametrize("n_inp", [5, -1])
@pytest.mark.parametrize("padding", [False, True])
def test_compile_inductor_matches_eager(n_inp, padding):
    _compile_matches_eager(n_inp, backend="inductor", padding=padding)


# --------------------------------------------------------------------------------------------------
# GPU (skipped without CUDA)
# --------------------------------------------------------------------------------------------------

@pytest.mark.gpu
def test_cuda_matches_cpu_and_rejects_cpu_input():
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    layer = make_layer(-1, 4, 3, 2, n_iters=3)
    x = torch.randn(2, 6, 3, dtype=F64)
    pm = torch.zeros(2, 6, dtype=torch.bool)
    pm[0, 4:] = True
    expected = layer(x, padding_mask=pm)
    cuda_layer = layer.cuda()
    got = cuda_layer(x.cuda(), padding_mask=pm.cuda())
    torch.testing.assert_close(got.cpu(), expected, atol=1e-9, rtol=1e-7)
    with pytest.raises(ERRORS, match=r"\bx\b"):
        cuda_layer(x)
    with pytest.raises(ERRORS, match=r"\bpadding_mask\b"):
        cuda_layer(x.cuda(), padding_mask=pm)
