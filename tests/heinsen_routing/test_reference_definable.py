"""DefinableVectorRouting against the independent float64 reference of SPEC §2 (tests/.../reference.py)."""

from __future__ import annotations

import itertools

import pytest
import routing_reference as ref  # registered by conftest.py
import torch
from torch import nn

from heinsen_routing import DefinableVectorRouting

F64 = torch.float64
ATOL, RTOL = 1e-10, 1e-8
DICT_KEYS = {"a_inp", "V", "pred_x_inp", "S", "R", "D_use", "D_ign", "phi", "x_out"}
BETA_FIXED = ("beta_use", "beta_ign")
BETA_VARIABLE = ("compute_beta_use.weight", "compute_beta_use.bias",
                 "compute_beta_ign.weight", "compute_beta_ign.bias")


class Activation(nn.Module):
    """A: [..., n, d_inp] → [..., n, 1] activation logits."""

    def __init__(self, d_inp: int) -> None:
        super().__init__()
        self.lin = nn.Linear(d_inp, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(x)


class Votes(nn.Module):
    """F: [..., n, d_inp] → [..., n, n_out, d_out], one linear map per output."""

    def __init__(self, n_out: int, d_inp: int, d_out: int) -> None:
        super().__init__()
        self.W = nn.Parameter(torch.randn(n_out, d_inp, d_out) / d_inp ** 0.5)
        self.B = nn.Parameter(torch.randn(n_out, d_out) * 0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.einsum("...id,jdh->...ijh", x, self.W) + self.B


class Predictions(nn.Module):
    """G: [..., n_out, d_out] → [..., n_out, d_inp] (a nonlinear per-output generator)."""

    def __init__(self, n_out: int, d_inp: int, d_out: int) -> None:
        super().__init__()
        self.W = nn.Parameter(torch.randn(n_out, d_out, d_inp) / d_out ** 0.5)
        self.B = nn.Parameter(torch.randn(n_out, d_inp) * 0.1)

    def forward(self, x_out: torch.Tensor) -> torch.Tensor:
        return torch.tanh(torch.einsum("...jh,jhd->...jd", x_out, self.W) + self.B)


class Similarity(nn.Module):
    """S: (x [..., n, d_inp], P [..., n_out, d_inp]) → [..., n, n_out] log-sigmoid of scaled dot products."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(0.7))
        self.shift = nn.Parameter(torch.tensor(0.2))

    def forward(self, x: torch.Tensor, P: torch.Tensor) -> torch.Tensor:
        return nn.functional.logsigmoid(torch.einsum("...id,...jd->...ij", x, P) * self.scale + self.shift)


def make_modules(n_out, d_inp, d_out, seed=0):
    torch.manual_seed(seed)
    return (Activation(d_inp).double(), Votes(n_out, d_inp, d_out).double(),
            Predictions(n_out, d_inp, d_out).double(), Similarity().double())


def make_layer(n_inp, n_out, d_inp, d_out, n_iters=2, return_dict=False, seed=0):
    A, F, G, S = make_modules(n_out, d_inp, d_out, seed)
    kwargs = {"d_inp": d_inp} if n_inp == -1 else {}
    layer = DefinableVectorRouting(A, F, G, S, n_inp=n_inp, n_out=n_out, n_iters=n_iters,
                                   return_dict=return_dict, **kwargs).double()
    return layer, (A, F, G, S)


def beta_names(n_inp):
    return BETA_FIXED if n_inp > 0 else BETA_VARIABLE


def random_mask(*shape, generator=None):
    mask = torch.rand(*shape, generator=generator) < 0.4
    mask[..., 0] &= ~mask.all(dim=-1)
    return mask


def grads_of(out, upstream, inputs):
    grads = torch.autograd.grad((out * upstream).sum(), list(inputs), allow_unused=True)
    return [torch.zeros_like(t) if g is None else g for t, g in zip(inputs, grads, strict=True)]


def assert_close(actual, expected, what, atol=ATOL, rtol=RTOL):
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    torch.testing.assert_close(actual, expected, atol=atol, rtol=rtol, msg=lambda m: f"{what}: {m}")


GRID = list(itertools.product([4, -1], [2, 3], [1, 2, 3]))


@pytest.mark.parametrize("n_inp,n_out,n_iters", GRID, ids=[f"ninp{a}-nout{b}-it{c}" for a, b, c in GRID])
def test_matches_reference(n_inp, n_out, n_iters):
    d_inp, d_out = 3, 2
    layer, modules = make_layer(n_inp, n_out, d_inp, d_out, n_iters=n_iters)
    module_params = [p for m in modules for p in m.parameters()]
    layer_params = dict(layer.named_parameters())
    names = beta_names(n_inp)
    gen = torch.Generator().manual_seed(1)
    for batch, with_mask in itertools.product([(), (2,), (2, 3)], [False, True]):
        x = torch.randn(*batch, 4, d_inp, dtype=F64, generator=gen)
        mask = random_mask(4, n_out, generator=gen) if with_mask else None
        x_l = x.clone().requires_grad_(True)
        out = layer(x_l) if mask is None else layer(x_l, mask=mask)
        betas = {k: v.detach().clone().requires_grad_(True) for k, v in layer.state_dict().items() if k in names}
        assert set(betas) == set(names)
        x_r = x.clone().requires_grad_(True)
        expected = ref.definable_reference(*modules, betas, x_r, n_out=n_out, n_iters=n_iters, mask=mask)
        assert_close(out, expected["x_out"], "x_out")
        upstream = torch.randn(out.shape, dtype=F64, generator=gen)
        got = grads_of(out, upstream, [x_l] + [layer_params[k] for k in names] + module_params)
        want = grads_of(expected["x_out"], upstream, [x_r] + [betas[k] for k in names] + module_params)
        labels = ["x", *names] + [f"user module param {i}" for i in range(len(module_params))]
        for label, g, w in zip(labels, got, want, strict=True):
            assert_close(g, w, f"grad wrt {label}")


@pytest.mark.parametrize("n_inp", [4, -1])
@pytest.mark.parametrize("n_iters", [1, 2])
def test_return_dict(n_inp, n_iters):
    n_out, d_inp, d_out = 3, 3, 2
    layer, modules = make_layer(n_inp, n_out, d_inp, d_out, n_iters=n_iters, return_dict=True)
    x = torch.randn(2, 4, d_inp, dtype=F64)
    betas = {k: v for k, v in layer.state_dict().items() if k in beta_names(n_inp)}
    with torch.no_grad():
        got = layer(x)
        expected = ref.definable_reference(*modules, betas, x, n_out=n_out, n_iters=n_iters)
    assert set(got) == DICT_KEYS
    if n_iters == 1:
        assert got["pred_x_inp"] is None and got["S"] is None
    else:
        assert_close(got["pred_x_inp"], expected["pred_x_inp"], "pred_x_inp")
        assert_close(got["S"], expected["S"], "S")
    assert got["a_inp"].numel() == expected["a_inp"].numel()
    assert_close(got["a_inp"].reshape(expected["a_inp"].shape), expected["a_inp"], "a_inp")
    for key in ("V", "R", "D_use", "D_ign", "phi", "x_out"):
        assert_close(got[key].expand(expected[key].shape), expected[key], key)


def test_no_input_scaling_and_no_normalisation():
    """SPEC §2: x goes to A and F unscaled and x_out is not normalised (unlike §1)."""
    layer, (A, F, G, S) = make_layer(-1, 2, 2, 2, n_iters=1)
    x = torch.randn(9, 2, dtype=F64)
    betas = {k: v for k, v in layer.state_dict().items() if k in BETA_VARIABLE}
    with torch.no_grad():
        out = layer(x)
        expected = ref.definable_reference(A, F, G, S, betas, x, n_out=2, n_iters=1)["x_out"]
        scaled = ref.definable_reference(A, F, G, S, betas, x * 9 ** -0.5, n_out=2, n_iters=1)["x_out"]
    assert_close(out, expected, "x_out")
    assert not torch.allclose(out, scaled)
    assert not torch.allclose(out.mean(dim=-1), torch.zeros(2, dtype=F64), atol=1e-3)  # not LayerNorm'd


def test_state_dict_names_and_shapes():
    A, F, G, S = make_modules(3, 4, 2)
    fixed = DefinableVectorRouting(A, F, G, S, n_inp=5, n_out=3)
    sd = fixed.state_dict()
    assert tuple(sd["beta_use"].shape) == (5, 3) and tuple(sd["beta_ign"].shape) == (5, 3)
    assert torch.equal(sd["CONST_ones_over_n_out"].float(), torch.full((3,), 1 / 3))
    own = {k for k in sd if "." not in k or k.startswith("compute_beta_")}
    assert own == {"beta_use", "beta_ign", "CONST_ones_over_n_out"}
    layer_param_ids = {id(p) for p in fixed.parameters()}
    for module in (A, F, G, S):
        assert all(id(p) in layer_param_ids for p in module.parameters()), "user modules must be submodules"

    variable = DefinableVectorRouting(A, F, G, S, n_inp=-1, n_out=3, d_inp=4)
    sd = variable.state_dict()
    for name, shape in [("compute_beta_use.weight", (3, 4)), ("compute_beta_use.bias", (3,)),
                        ("compute_beta_ign.weight", (3, 4)), ("compute_beta_ign.bias", (3,))]:
        assert tuple(sd[name].shape) == shape, name
    assert "beta_use" not in sd and "beta_ign" not in sd


def test_strict_load_round_trip():
    layer1, _ = make_layer(4, 3, 3, 2, seed=1)
    layer2, _ = make_layer(4, 3, 3, 2, seed=2)
    x = torch.randn(2, 4, 3, dtype=F64)
    layer2.load_state_dict(layer1.state_dict(), strict=True)
    assert torch.equal(layer1(x), layer2(x))


def test_variable_length_with_d_inp_works_on_several_lengths():
    layer, modules = make_layer(-1, 3, 3, 2)
    betas = {k: v for k, v in layer.state_dict().items() if k in BETA_VARIABLE}
    for n in (1, 2, 7):
        x = torch.randn(2, n, 3, dtype=F64)
        with torch.no_grad():
            assert_close(layer(x), ref.definable_reference(*modules, betas, x, n_out=3, n_iters=2)["x_out"],
                         f"x_out (n={n})")


ERRORS = (ValueError, TypeError)


def test_variable_length_without_d_inp_is_a_clear_error():
    A, F, G, S = make_modules(3, 4, 2)
    with pytest.raises(ERRORS, match=r"\bd_inp\b"):
        DefinableVectorRouting(A, F, G, S, n_inp=-1, n_out=3)


@pytest.mark.parametrize("kwargs,arg", [(dict(n_inp=4, n_out=1), "n_out"), (dict(n_inp=0, n_out=3), "n_inp"),
                                        (dict(n_inp=4, n_out=3, n_iters=0), "n_iters")])
def test_bad_constructor_args(kwargs, arg):
    A, F, G, S = make_modules(3, 4, 2)
    with pytest.raises(ERRORS, match=rf"\b{arg}\b"):
        DefinableVectorRouting(A, F, G, S, **kwargs)


def test_forward_validation():
    layer, _ = make_layer(4, 3, 3, 2)
    with pytest.raises(ERRORS, match=r"\bx\b"):
        layer(torch.randn(3, dtype=F64))
    with pytest.raises(ERRORS, match=r"\bx\b"):
        layer(torch.randn(2, 5, 3, dtype=F64))  # n != n_inp
    with pytest.raises(ERRORS, match=r"\bmask\b"):
        layer(torch.randn(4, 3, dtype=F64), mask=torch.zeros(4, 3))
    with pytest.raises(ERRORS, match=r"\bmask\b"):
        layer(torch.randn(4, 3, dtype=F64), mask=torch.zeros(5, 3, dtype=torch.bool))
