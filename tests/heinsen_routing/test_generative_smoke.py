"""Quick sanity tests of GenerativeMatrixRouting (the float64 reference test lives elsewhere)."""

from __future__ import annotations

import pytest
import torch

from heinsen_routing.generative import GenerativeMatrixRouting


def _inputs(*lead: int, n: int = 6, d_cov: int = 2, d_inp: int = 3, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    a_inp = torch.randn(*lead, n, generator=gen)  # [..., n]
    mu_inp = torch.randn(*lead, n, d_cov, d_inp, generator=gen)  # [..., n, d_cov, d_inp]
    return a_inp, mu_inp


def test_parameters_names_shapes_and_inits() -> None:
    torch.manual_seed(0)
    layer = GenerativeMatrixRouting(n_inp=7, n_out=5, d_cov=2, d_inp=40, d_out=3)
    sd = layer.state_dict()
    assert list(sd) == ["W", "B", "beta_use", "beta_ign", "CONST_one"]
    assert sd["W"].shape == (7, 5, 40, 3) and sd["B"].shape == (7, 5, 2, 3)
    assert sd["beta_use"].shape == sd["beta_ign"].shape == (7, 5)
    assert torch.all(sd["B"] == 0) and torch.all(sd["beta_use"] == 0) and torch.all(sd["beta_ign"] == 0)
    assert sd["CONST_one"].item() == 1.0 and sd["CONST_one"].shape == ()
    assert abs(layer.W.std().item() - 1 / 40) < 0.2 / 40  # standard normal / d_inp
    assert layer.beta_ign is not layer.beta_use

    shared = GenerativeMatrixRouting(n_inp=-1, n_out=4, d_cov=1, d_inp=2, d_out=2, single_beta=True)
    assert shared.W.shape == (1, 4, 2, 2) and shared.beta_use.shape == (1, 4)
    assert shared.beta_ign is shared.beta_use
    assert set(shared.state_dict()) == {"W", "B", "beta_use", "beta_ign", "CONST_one"}
    assert len(list(shared.parameters())) == 3


@pytest.mark.parametrize("n_inp", [-1, 6])
@pytest.mark.parametrize("p_model", ["gaussian", "skm"])
def test_shapes_and_probabilities(n_inp: int, p_model: str) -> None:
    torch.manual_seed(0)
    layer = GenerativeMatrixRouting(
        n_inp, n_out=4, d_cov=2, d_inp=3, d_out=5, p_model=p_model, return_dict=True
    )
    torch.nn.init.normal_(layer.beta_use)
    torch.nn.init.normal_(layer.beta_ign)
    a_inp, mu_inp = _inputs(3, 2)
    out = layer(a_inp, mu_inp)
    assert out["V"].shape == (3, 2, 6, 4, 2, 5)
    assert out["R"].shape == out["D_use"].shape == out["log_p"].shape == (3, 2, 6, 4)
    assert out["a_out"].shape == (3, 2, 4)
    assert out["mu_out"].shape == out["sig2_out"].shape == (3, 2, 4, 2, 5)
    torch.testing.assert_close(out["R"].sum(-1), torch.ones(3, 2, 6))
    torch.testing.assert_close(
        out["D_use"] + out["D_ign"], torch.sigmoid(a_inp)[..., None].expand(3, 2, 6, 4)
    )
    assert torch.all(out["sig2_out"] >= layer.eps)
    if p_model == "skm":
        torch.testing.assert_close(out["log_p"].exp().sum(-1), torch.ones(3, 2, 6))
    # The tuple form returns the same three outputs.
    layer.return_dict = False
    a_out, mu_out, sig2_out = layer(a_inp, mu_inp)
    torch.testing.assert_close(a_out, out["a_out"])
    torch.testing.assert_close(mu_out, out["mu_out"])
    torch.testing.assert_close(sig2_out, out["sig2_out"])


def test_one_iteration_matches_closed_form() -> None:
    torch.manual_seed(1)
    layer = GenerativeMatrixRouting(
        -1, n_out=3, d_cov=2, d_inp=3, d_out=2, n_iters=1, return_dict=True
    ).double()
    torch.nn.init.normal_(layer.B)
    torch.nn.init.normal_(layer.beta_use)
    torch.nn.init.normal_(layer.beta_ign)
    a_inp, mu_inp = (t.double() for t in _inputs(n=5))
    out = layer(a_inp, mu_inp)
    assert out["log_p"] is None
    f_a = torch.sigmoid(a_inp)  # [n]
    votes = mu_inp @ layer.W[0, 1] + layer.B[0, 1]  # output j = 1: [n, d_cov, d_out]
    torch.testing.assert_close(out["V"][:, 1], votes)
    d_use = f_a / 3
    weights = d_use / (d_use.sum() + layer.eps)
    mu_1 = (weights[:, None, None] * votes).sum(0)
    sig2_1 = (weights[:, None, None] * (votes - mu_1) ** 2).sum(0) + layer.eps
    a_1 = (layer.beta_use[0, 1] * d_use).sum() - (layer.beta_ign[0, 1] * (f_a - d_use)).sum()
    torch.testing.assert_close(out["mu_out"][1], mu_1)
    torch.testing.assert_close(out["sig2_out"][1], sig2_1)
    torch.testing.assert_close(out["a_out"][1], a_1)


def test_variable_length_is_permutation_invariant_and_ignores_inactive_inputs() -> None:
    torch.manual_seed(2)
    layer = GenerativeMatrixRouting(-1, n_out=4, d_cov=2, d_inp=3, d_out=2)
    torch.nn.init.normal_(layer.beta_use)
    torch.nn.init.normal_(layer.beta_ign)
    a_inp, mu_inp = _inputs(2, n=6)
    ref = layer(a_inp, mu_inp)
    perm = torch.randperm(6)
    for got, want in zip(layer(a_inp[:, perm], mu_inp[:, perm]), ref, strict=True):
        torch.testing.assert_close(got, want)
    # Extra inputs with logit -inf (activation exactly 0) change nothing, whatever their poses.
    a_pad = torch.cat([a_inp, torch.full((2, 3), -float("inf"))], dim=-1)
    mu_pad = torch.cat([mu_inp, 100 * torch.randn(2, 3, 2, 3)], dim=-3)
    for got, want in zip(layer(a_pad, mu_pad), ref, strict=True):
        torch.testing.assert_close(got, want)
    # Batched equals per-sample.
    for b in range(2):
        for got, want in zip(layer(a_inp[b], mu_inp[b]), ref, strict=True):
            torch.testing.assert_close(got, want[b])


def test_gradients_are_finite() -> None:
    torch.manual_seed(3)
    layer = GenerativeMatrixRouting(6, n_out=3, d_cov=2, d_inp=3, d_out=2)
    a_inp, mu_inp = _inputs(4)
    mu_inp.requires_grad_(True)
    a_out, mu_out, sig2_out = layer(a_inp, mu_inp)
    (a_out.sum() + mu_out.square().sum() + sig2_out.sum()).backward()
    for tensor in (mu_inp.grad, layer.W.grad, layer.B.grad, layer.beta_use.grad, layer.beta_ign.grad):
        assert tensor is not None and torch.isfinite(tensor).all()


def test_constructor_errors() -> None:
    with pytest.raises(ValueError, match="n_inp"):
        GenerativeMatrixRouting(0, 3, 1, 2, 2)
    with pytest.raises(ValueError, match="n_out"):
        GenerativeMatrixRouting(-1, 0, 1, 2, 2)
    with pytest.raises(ValueError, match="d_cov"):
        GenerativeMatrixRouting(-1, 3, 0, 2, 2)
    with pytest.raises(ValueError, match="n_iters"):
        GenerativeMatrixRouting(-1, 3, 1, 2, 2, n_iters=0)
    with pytest.raises(ValueError, match="p_model.*'gaussian', 'skm'.*'laplace'"):
        GenerativeMatrixRouting(-1, 3, 1, 2, 2, p_model="laplace")
    with pytest.raises(ValueError, match="eps"):
        GenerativeMatrixRouting(-1, 3, 1, 2, 2, eps=0.0)


def test_forward_errors() -> None:
    layer = GenerativeMatrixRouting(6, n_out=3, d_cov=2, d_inp=3, d_out=2)
    a_inp, mu_inp = _inputs(4)
    with pytest.raises(TypeError, match="mu_inp: expected a torch.Tensor"):
        layer(a_inp, mu_inp.numpy())
    with pytest.raises(TypeError, match="a_inp: expected a floating-point tensor"):
        layer(a_inp.long(), mu_inp)
    with pytest.raises(ValueError, match=r"mu_inp: expected a tensor of shape \[..., n, d_cov, d_inp\]"):
        layer(a_inp, mu_inp[0, 0])
    with pytest.raises(ValueError, match="d_cov = 2"):
        layer(a_inp, mu_inp[..., :1, :])
    with pytest.raises(ValueError, match="d_inp = 3"):
        layer(a_inp, mu_inp[..., :2])
    with pytest.raises(ValueError, match="same leading dims"):
        layer(a_inp[:2], mu_inp)
    with pytest.raises(ValueError, match="same leading dims"):
        layer(a_inp[:, :5], mu_inp)
    with pytest.raises(ValueError, match=r"n \(the layer's n_inp\) = 6"):
        layer(a_inp[:, :5], mu_inp[:, :5])
    with pytest.raises(TypeError, match="a_inp: expected dtype torch.float32"):
        layer(a_inp.double(), mu_inp)
    with pytest.raises(TypeError, match="mu_inp: expected dtype torch.float32 .the layer's parameters"):
        layer(a_inp.double(), mu_inp.double())
    with pytest.raises(ValueError, match="device"):
        layer(a_inp.to("meta"), mu_inp.to("meta"))
    with pytest.raises(ValueError, match="a_inp: expected no NaN"):
        layer(torch.where(a_inp > 0, float("nan"), a_inp), mu_inp)
    with pytest.raises(ValueError, match="mu_inp: expected finite values"):
        layer(a_inp, mu_inp.clone().index_fill_(0, torch.tensor([1]), float("inf")))
    empty = GenerativeMatrixRouting(-1, n_out=3, d_cov=2, d_inp=3, d_out=2)
    with pytest.raises(ValueError, match="at least one input capsule"):
        empty(a_inp[:, :0], mu_inp[:, :0])
    # ±inf logits are valid (activations exactly 1 and 0).
    a_out, _, _ = layer(a_inp.clone().index_fill_(-1, torch.tensor([0]), float("inf")), mu_inp)
    assert torch.isfinite(a_out).all()


@pytest.mark.parametrize("n_inp", [6, -1])
def test_bf16_autocast_matches_float32(n_inp: int) -> None:
    """Under autocast the poses may be bf16 while a_inp stays float32 (issue #11): the votes run in bf16,
    the EM statistics in float32. Measured deviation from float32 on these inputs: < 2e-2 of the largest
    |value| (bf16 has an 8-bit mantissa, ~4e-3 relative per rounding)."""
    torch.manual_seed(5)
    layer = GenerativeMatrixRouting(n_inp, n_out=3, d_cov=2, d_inp=3, d_out=2)
    with torch.no_grad():
        layer.beta_use.normal_()
        layer.beta_ign.normal_()
    a_inp, mu_inp = _inputs(4)
    mu_inp.requires_grad_(True)
    ref = layer(a_inp, mu_inp)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = layer(a_inp, mu_inp.to(torch.bfloat16))  # a_inp float32, poses bf16
    for name, o, r in zip(("a_out", "mu_out", "sig2_out"), out, ref, strict=True):
        assert o.dtype == torch.float32, name
        err = float((o - r).detach().abs().max() / r.detach().abs().max())
        assert err < 2e-2, f"{name}: {err}"
    sum(o.sum() for o in out).backward()
    assert mu_inp.grad is not None and torch.isfinite(mu_inp.grad).all()


def test_zoo_2019_classifiers_run_under_bf16_autocast() -> None:
    """The 2019 heads (two GenerativeMatrixRouting layers each) run forward+backward under CPU bf16
    autocast and return float32 outputs close to the float32 run (issue #11)."""
    capsules = pytest.importorskip("heinsen_zoo.capsules2019")
    torch.manual_seed(0)
    norb = capsules.SmallNORBClassifier(n_parts=8, d_chns=8).eval()
    sst = capsules.SSTClassifier(d_depth=3, d_emb=16, d_inp=8, n_parts=4, n_classes=5)
    calls = [
        (norb, (torch.randn(2, 2, 32, 32),)),
        (sst, (torch.ones(2, 5, dtype=torch.bool), torch.randn(2, 5, 3, 16))),
    ]
    for model, args in calls:
        ref = model(*args)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(*args)
        for o, r in zip(out, ref, strict=True):
            assert o.dtype == torch.float32 and torch.isfinite(o).all()
            # whole model in bf16 (convolutions, linear layers too): measured up to ~6% of max|value|
            assert float((o - r).detach().abs().max()) <= 0.1 * float(r.detach().abs().max()) + 1e-6
        sum(o.float().sum() for o in out).backward()
