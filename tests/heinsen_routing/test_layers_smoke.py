"""Quick sanity tests of the core routing layers, masks and credit helpers (tiny sizes, CPU)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from heinsen_routing import (
    DefinableVectorRouting,
    EfficientVectorRouting,
    collect_phis,
    credit_map,
    credit_per_position,
    end_to_end_credit,
    plain_em_routing,
    set_checks_enabled,
    skip_checks,
)
from heinsen_routing.masks import masked_softmax

DICT_KEYS = {"a_inp", "V", "pred_x_inp", "S", "R", "D_use", "D_ign", "phi", "x_out"}


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def _definable(
    n_inp: int, n_out: int = 3, d_inp: int = 5, d_out: int = 4, **kwargs
) -> DefinableVectorRouting:
    return DefinableVectorRouting(
        A=nn.Linear(d_inp, 1),
        F=nn.Sequential(nn.Linear(d_inp, n_out * d_out), nn.Unflatten(-1, (n_out, d_out))),
        G=nn.Linear(d_out, d_inp),
        S=lambda x, P: -torch.cdist(x, P),
        n_inp=n_inp,
        n_out=n_out,
        d_inp=d_inp,
        **kwargs,
    )


# ----------------------------------------------------------------------------------------------- shapes


@pytest.mark.parametrize("n_inp", [7, -1])
@pytest.mark.parametrize("lead", [(), (2,), (2, 3)])
@pytest.mark.parametrize("d_out", [1, 4])
def test_efficient_output_shapes(n_inp: int, lead: tuple[int, ...], d_out: int) -> None:
    route = EfficientVectorRouting(n_inp, n_out=3, d_inp=5, d_out=d_out)
    x = torch.randn(*lead, 7, 5)  # [..., n_inp, d_inp]
    x_out = route(x)
    assert x_out.shape == (*lead, 3, d_out)
    assert torch.isfinite(x_out).all()
    if d_out > 1:  # N = LayerNorm without affine: zero mean, unit variance per output vector
        torch.testing.assert_close(x_out.mean(-1), torch.zeros(*lead, 3), atol=1e-5, rtol=0)


def test_state_dict_keys_and_shapes_fixed_and_variable() -> None:
    n_inp, n_out, d_inp, d_out = 6, 3, 5, 4
    common = {
        "B_F2": (n_out, d_out), "W_F1": (n_out, d_inp), "W_F2": (d_inp, d_out), "W_G1": (d_out, d_inp),
        "W_G2": (n_out, d_inp), "B_G2": (n_out, d_inp), "CONST_ones_over_n_out": (n_out,),
    }  # fmt: skip
    fixed = {
        k: tuple(v.shape) for k, v in EfficientVectorRouting(n_inp, n_out, d_inp, d_out).state_dict().items()
    }
    assert fixed == {
        **common, "W_A": (n_inp, d_inp), "B_A": (n_inp,), "W_S": (n_inp, n_out), "B_S": (n_inp, n_out),
        "beta_use": (n_inp, n_out), "beta_ign": (n_inp, n_out),
    }  # fmt: skip
    variable = {
        k: tuple(v.shape) for k, v in EfficientVectorRouting(-1, n_out, d_inp, d_out).state_dict().items()
    }
    assert variable == {
        **common, "W_A": (1, d_inp), "B_A": (1,), "W_S": (1, n_out), "B_S": (1, n_out),
        "compute_beta_use.weight": (n_out, d_inp), "compute_beta_use.bias": (n_out,),
        "compute_beta_ign.weight": (n_out, d_inp), "compute_beta_ign.bias": (n_out,),
    }  # fmt: skip
    route = EfficientVectorRouting(n_inp, n_out, d_inp, d_out)
    assert torch.equal(route.CONST_ones_over_n_out, torch.full((n_out,), 1 / n_out))
    assert "CONST_ones_over_n_out" in route.state_dict()  # persistent buffer


def test_initial_distributions() -> None:
    n_inp, n_out, d_inp, d_out = 64, 48, 100, 36
    route = EfficientVectorRouting(n_inp, n_out, d_inp, d_out)
    expected_std = {
        "W_A": 2 * d_inp**-0.5, "W_F1": 1.0, "W_F2": 2 * d_inp**-0.5, "W_G1": d_out**-0.5, "W_G2": 1.0,
        "W_S": d_inp**-0.5, "beta_use": 1.0, "beta_ign": 1.0,
    }  # fmt: skip
    for name, std in expected_std.items():
        p = getattr(route, name).detach()
        assert abs(p.std().item() / std - 1) < 0.15, name
        assert abs(p.mean().item()) < 0.2 * std, name
    for name in ("B_A", "B_F2", "B_G2", "B_S"):
        assert torch.count_nonzero(getattr(route, name)) == 0, name


# ------------------------------------------------------------------------------------------ return_dict


@pytest.mark.parametrize("n_iters", [1, 2])
@pytest.mark.parametrize("memory_efficient", [True, False])
def test_return_dict(n_iters: int, memory_efficient: bool) -> None:
    route = EfficientVectorRouting(
        -1, 3, 5, 4, n_iters=n_iters, memory_efficient=memory_efficient, return_dict=True
    )
    x = torch.randn(2, 7, 5)
    out = route(x)
    assert set(out) == DICT_KEYS
    assert out["a_inp"].shape == (2, 7)
    for key in ("R", "D_use", "D_ign", "phi"):
        assert out[key].shape == (2, 7, 3), key
    assert out["x_out"].shape == (2, 3, 4)
    if n_iters == 1:
        assert out["pred_x_inp"] is None and out["S"] is None
        torch.testing.assert_close(out["R"], torch.full((2, 7, 3), 1 / 3))
    else:
        assert out["pred_x_inp"].shape == (2, 3, 5) and out["S"].shape == (2, 7, 3)
        assert (out["S"] <= 0).all()  # log-sigmoid
        torch.testing.assert_close(out["R"].sum(-1), torch.ones(2, 7))
    assert (out["V"] is None) == memory_efficient
    if not memory_efficient:
        assert out["V"].shape == (2, 7, 3, 4)
    torch.testing.assert_close(
        out["D_use"] + out["D_ign"], torch.sigmoid(out["a_inp"])[..., None].expand(2, 7, 3)
    )


@pytest.mark.parametrize("n_inp", [7, -1])
def test_memory_efficient_matches_materialised_votes(n_inp: int) -> None:
    route = EfficientVectorRouting(n_inp, 3, 5, 4, n_iters=3).double()
    x = torch.randn(2, 7, 5, dtype=torch.float64)
    mask = torch.rand(7, 3) < 0.3
    efficient = route(x, mask=mask)
    route.memory_efficient = False
    torch.testing.assert_close(route(x, mask=mask), efficient, rtol=1e-10, atol=1e-12)


def test_plain_em_routing_is_what_forward_calls() -> None:
    route = EfficientVectorRouting(-1, 3, 5, 4, n_iters=2).double()
    x = torch.randn(2, 7, 5, dtype=torch.float64)
    scale = 7**-0.5
    a = scale * (x * route.W_A).sum(-1) + route.B_A
    direct = plain_em_routing(
        x, scale, a, route.compute_beta_use(x), route.compute_beta_ign(x),
        route.W_F1, route.W_F2, route.B_F2, route.W_G1, route.W_G2, route.B_G2, route.W_S, route.B_S,
        None, 2, True, True, False,
    )  # fmt: skip
    torch.testing.assert_close(direct, route(x), rtol=1e-12, atol=1e-12)


# ------------------------------------------------------------------------------------------ masks


def test_padding_contract_matches_unpadded_sequences() -> None:
    """A padded batch with padding_mask = each sequence routed unpadded on its own (garbage at padding)."""
    route = EfficientVectorRouting(-1, 3, 5, 4, n_iters=3).double()
    lengths = [8, 5, 1]
    x = torch.randn(3, 8, 5, dtype=torch.float64)
    padding_mask = torch.arange(8)[None] >= torch.tensor(lengths)[:, None]  # [batch, n]
    x_padded = x.masked_fill(padding_mask[..., None], float("nan")).requires_grad_(True)
    padded_out = route(x_padded, padding_mask=padding_mask)
    for b, length in enumerate(lengths):
        torch.testing.assert_close(padded_out[b], route(x[b, :length]), rtol=1e-10, atol=1e-12)
    padded_out.square().sum().backward()
    assert torch.isfinite(x_padded.grad).all()
    assert (x_padded.grad[padding_mask] == 0).all()
    assert all(torch.isfinite(p.grad).all() for p in route.parameters())


def test_padding_combined_with_mask_and_fixed_n_inp() -> None:
    route = EfficientVectorRouting(6, 3, 5, 4, n_iters=2, return_dict=True).double()
    x = torch.randn(2, 6, 5, dtype=torch.float64)
    padding_mask = torch.tensor([[False] * 6, [False] * 4 + [True] * 2])
    mask = torch.zeros(6, 3, dtype=torch.bool)
    mask[0, 1] = True
    out = route(x, mask=mask, padding_mask=padding_mask)
    assert (out["phi"][1, 4:] == 0).all() and (out["R"][1, 4:] == 0).all()
    assert (out["R"][:, 0, 1] == 0).all() and (out["phi"][:, 0, 1] == 0).all()
    # padding an input = masking it for every output, plus the scaling by the unpadded count
    assert torch.isfinite(out["x_out"]).all()


def test_fully_masked_row_gives_zero_not_nan() -> None:
    route = EfficientVectorRouting(-1, 3, 5, 4, n_iters=3, return_dict=True)
    x = torch.randn(2, 6, 5, requires_grad=True)
    mask = torch.zeros(6, 3, dtype=torch.bool)
    mask[2] = True  # input 2 is ignored by every output
    out = route(x, mask=mask)
    for key in ("R", "D_use", "D_ign", "phi"):
        assert torch.isfinite(out[key]).all(), key
        assert (out[key][:, 2] == 0).all(), key
    out["x_out"].sum().backward()
    assert torch.isfinite(x.grad).all()
    assert all(torch.isfinite(p.grad).all() for p in route.parameters() if p.grad is not None)


def test_mask_broadcasting_equivalence() -> None:
    route = EfficientVectorRouting(-1, 3, 5, 4, n_iters=2)
    x = torch.randn(2, 6, 5)
    mask = torch.rand(6, 3) < 0.4
    torch.testing.assert_close(route(x, mask=mask), route(x, mask=mask.expand(2, 6, 3).clone()))
    no_mask = route(x)
    torch.testing.assert_close(route(x, mask=torch.zeros(6, 3, dtype=torch.bool)), no_mask)


def test_masked_softmax_rows() -> None:
    S = torch.randn(4, 3)
    mask = torch.tensor(
        [[False, False, False], [False, True, False], [True, True, False], [True, True, True]]
    )
    R = masked_softmax(S, mask)
    torch.testing.assert_close(R[0], S[0].softmax(-1))
    assert R[1, 1] == 0 and torch.isclose(R[1].sum(), torch.tensor(1.0))
    torch.testing.assert_close(R[2], torch.tensor([0.0, 0.0, 1.0]))
    assert (R[3] == 0).all()


# ------------------------------------------------------------------------------------------ validation


@pytest.mark.parametrize(
    ("kwargs", "name", "error"),
    [
        ({"n_inp": 0}, "n_inp", ValueError),
        ({"n_inp": -2}, "n_inp", ValueError),
        ({"n_inp": 2.0}, "n_inp", TypeError),
        ({"n_out": 1}, "n_out", ValueError),
        ({"d_inp": 0}, "d_inp", ValueError),
        ({"d_out": 0}, "d_out", ValueError),
        ({"n_iters": 0}, "n_iters", ValueError),
        ({"n_iters": True}, "n_iters", TypeError),
    ],
)
def test_constructor_errors_name_the_argument(kwargs: dict, name: str, error: type) -> None:
    args = {"n_inp": 4, "n_out": 3, "d_inp": 5, "d_out": 2, **kwargs}
    with pytest.raises(error, match=name):
        EfficientVectorRouting(**args)


def _bad_forward_inputs() -> list:
    x = torch.randn(2, 6, 5)
    padding_all = torch.zeros(2, 6, dtype=torch.bool)
    padding_all[1] = True
    x_nan = x.clone()
    x_nan[0, 1, 2] = float("nan")
    return [
        ({"x": [[1.0]]}, "x", TypeError),
        ({"x": torch.ones(2, 6, 5, dtype=torch.long)}, "x", TypeError),
        ({"x": torch.randn(5)}, "x", ValueError),
        ({"x": torch.randn(2, 6, 4)}, "d_inp", ValueError),
        ({"x": torch.randn(2, 0, 5)}, "x", ValueError),
        ({"x": x.double()}, "x", TypeError),
        ({"x": x_nan}, "x", ValueError),
        ({"x": x, "mask": torch.zeros(6, 3)}, "mask", TypeError),
        ({"x": x, "mask": torch.zeros(6, 4, dtype=torch.bool)}, "mask", ValueError),
        ({"x": x, "mask": torch.zeros(5, 3, dtype=torch.bool)}, "mask", ValueError),
        ({"x": x, "mask": torch.zeros(4, 2, 6, 3, dtype=torch.bool)}, "mask", ValueError),  # grows batch
        ({"x": x, "mask": torch.zeros(3, dtype=torch.bool)}, "mask", ValueError),  # ambiguous 1-dim mask
        ({"x": x, "padding_mask": torch.zeros(2, 6)}, "padding_mask", TypeError),
        ({"x": x, "padding_mask": torch.zeros(2, 5, dtype=torch.bool)}, "padding_mask", ValueError),
        ({"x": x, "padding_mask": torch.zeros(2, 1, dtype=torch.bool)}, "padding_mask", ValueError),
        ({"x": x, "padding_mask": torch.zeros(3, 2, 6, dtype=torch.bool)}, "padding_mask", ValueError),
        ({"x": x, "padding_mask": padding_all}, "padding_mask", ValueError),
    ]


@pytest.mark.parametrize("case", range(len(_bad_forward_inputs())))
def test_forward_errors_name_the_argument(case: int) -> None:
    kwargs, name, error = _bad_forward_inputs()[case]
    route = EfficientVectorRouting(-1, 3, 5, 2)
    with pytest.raises(error, match=name):
        route(**kwargs)


def test_fixed_n_inp_mismatch_and_nan_at_padding_allowed() -> None:
    route = EfficientVectorRouting(6, 3, 5, 2)
    with pytest.raises(ValueError, match="n_inp"):
        route(torch.randn(2, 7, 5))
    x = torch.randn(2, 6, 5)
    padding_mask = torch.zeros(2, 6, dtype=torch.bool)
    padding_mask[1, 3:] = True
    x[1, 4] = float("inf")
    assert torch.isfinite(route(x, padding_mask=padding_mask)).all()


def test_skip_checks_disables_finite_scan() -> None:
    route = EfficientVectorRouting(-1, 3, 5, 2)
    x = torch.randn(2, 6, 5)
    x[0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="skip_checks"):
        route(x)
    with skip_checks():
        out = route(x)
    assert torch.isnan(out[0]).any() and torch.isfinite(out[1]).all()
    set_checks_enabled(False)
    try:
        route(x)
    finally:
        set_checks_enabled(True)


def test_autocast_bfloat16_cpu() -> None:
    chain = nn.Sequential(EfficientVectorRouting(-1, 4, 8, 6), EfficientVectorRouting(4, 3, 6, 1))
    x = torch.randn(2, 10, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = chain(x)
        chain(x.bfloat16())  # lower-precision inputs are accepted under autocast
    assert out.shape == (2, 3, 1) and torch.isfinite(out).all()
    torch.testing.assert_close(out.float(), chain(x), atol=0.1, rtol=0.1)


# ------------------------------------------------------------------------------------------ definable


@pytest.mark.parametrize("n_inp", [7, -1])
def test_definable_shapes_dict_and_padding(n_inp: int) -> None:
    route = _definable(n_inp, n_iters=2, return_dict=True)
    x = torch.randn(2, 7, 5)
    out = route(x)
    assert set(out) == DICT_KEYS and out["x_out"].shape == (2, 3, 4) and out["V"].shape == (2, 7, 3, 4)
    assert out["phi"].shape == (2, 7, 3)
    padding_mask = torch.tensor([[False] * 7, [False] * 4 + [True] * 3])
    x_garbage = x.masked_fill(padding_mask[..., None], float("nan"))
    padded = route(x_garbage, padding_mask=padding_mask)
    assert torch.isfinite(padded["x_out"]).all() and (padded["phi"][1, 4:] == 0).all()
    if n_inp == -1:  # no scaling in §2: a padded sequence equals the unpadded one
        torch.testing.assert_close(padded["x_out"][1], route(x[1, :4])["x_out"])
    assert {"A.weight", "F.0.weight", "G.weight", "CONST_ones_over_n_out"} <= set(route.state_dict())


def test_definable_errors() -> None:
    with pytest.raises(ValueError, match="d_inp"):
        DefinableVectorRouting(nn.Identity(), nn.Identity(), nn.Identity(), lambda x, p: x, n_inp=-1, n_out=3)
    with pytest.raises(TypeError, match="A"):
        DefinableVectorRouting(None, nn.Identity(), nn.Identity(), lambda x, p: x, n_inp=4, n_out=3)
    route = DefinableVectorRouting(
        A=nn.Linear(5, 2), F=nn.Identity(), G=nn.Identity(), S=lambda x, P: x, n_inp=-1, n_out=3, d_inp=5
    )
    with pytest.raises(ValueError, match=r"A\(x\)"):
        route(torch.randn(2, 7, 5))
    route.A = nn.Linear(5, 1)
    with pytest.raises(ValueError, match=r"F\(x\)"):
        route(torch.randn(2, 7, 5))


# ------------------------------------------------------------------------------------------ credit


def test_end_to_end_credit_and_maps() -> None:
    phi1, phi2, phi3 = torch.randn(2, 12, 4), torch.randn(2, 4, 3), torch.randn(2, 3, 2)
    credit = end_to_end_credit([phi1, phi2, phi3])
    expected = phi1 @ phi2
    expected = expected / (expected.std(dim=(-2, -1), keepdim=True) + 1e-5)
    expected = expected @ phi3
    expected = expected / (expected.std(dim=(-2, -1), keepdim=True) + 1e-5)
    torch.testing.assert_close(credit, expected)
    torch.testing.assert_close(end_to_end_credit([phi1]), phi1)
    with pytest.raises(ValueError, match=r"phis\[1\]"):
        end_to_end_credit([phi1, phi3])
    with pytest.raises(ValueError, match="phis"):
        end_to_end_credit([])

    per_depth = credit_map(credit, n_pos=4, depth=3)  # [batch, n_pos, depth, n_out]
    assert per_depth.shape == (2, 4, 3, 2)
    torch.testing.assert_close(per_depth[:, 1, 2], credit[:, 1 * 3 + 2])
    per_pos = credit_per_position(credit, 4, 3, drop_first=True)
    torch.testing.assert_close(per_pos, per_depth.sum(-2)[:, 1:])
    with pytest.raises(ValueError, match="credit"):
        credit_map(credit, n_pos=5, depth=3)


def test_collect_phis_restores_return_dict() -> None:
    chain = nn.Sequential(EfficientVectorRouting(-1, 4, 8, 8), EfficientVectorRouting(4, 2, 8, 3))
    x = torch.randn(2, 10, 8)
    padding_mask = torch.zeros(2, 10, dtype=torch.bool)
    padding_mask[1, 6:] = True
    x_out, phis = collect_phis(chain, x, padding_mask=padding_mask)
    assert [tuple(p.shape) for p in phis] == [(2, 10, 4), (2, 4, 2)]
    assert not any(layer.return_dict for layer in chain)
    torch.testing.assert_close(x_out, chain[1](chain[0](x, padding_mask=padding_mask)))
    assert end_to_end_credit(phis).shape == (2, 10, 2)


# ------------------------------------------------------------------------------------------ compile


@pytest.mark.slow
def test_torch_compile_fullgraph_matches_eager() -> None:
    route = EfficientVectorRouting(-1, 4, 8, 6, n_iters=3)
    x = torch.randn(2, 10, 8)
    padding_mask = torch.zeros(2, 10, dtype=torch.bool)
    padding_mask[1, 5:] = True
    mask = torch.rand(10, 4) < 0.3
    compiled = torch.compile(route, fullgraph=True)
    torch.testing.assert_close(
        compiled(x, mask=mask, padding_mask=padding_mask), route(x, mask, padding_mask)
    )


# ------------------------------------------------------------------------------------------ edge cases


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("n_inp", [-1, 10])
def test_empty_batch_gives_empty_output_and_gradients(n_inp: int, fused: bool, monkeypatch) -> None:
    """[0, n, d] routes nothing: an empty [0, n_out, d_out] output, and backward gives empty/zero gradients
    (fused path and plain path, which the default takes for an empty batch)."""
    from heinsen_routing import efficient

    monkeypatch.setattr(efficient, "FUSED_MIN_WORK", 0 if fused else 1)
    route = EfficientVectorRouting(n_inp, 4, 8, 6)
    x = torch.randn(0, 10, 8, requires_grad=True)
    out = route(x)
    assert out.shape == (0, 4, 6)
    out.sum().backward()
    assert x.grad.shape == (0, 10, 8)
    assert route.W_F1.grad is not None and not route.W_F1.grad.any()
    padded = route(x, padding_mask=torch.zeros(0, 10, dtype=torch.bool))
    assert padded.shape == (0, 4, 6)


def test_meta_device() -> None:
    """A meta input to a CPU layer names x with the expected and actual device; a layer moved to meta
    computes output shapes on meta (shape inference, no data), forward and backward."""
    route = EfficientVectorRouting(-1, 4, 8, 6)
    with pytest.raises(ValueError, match=r"x: expected device cpu .* got meta"):
        route(torch.randn(2, 10, 8, device="meta"))
    meta_route = EfficientVectorRouting(-1, 4, 8, 6).to("meta")
    x = torch.randn(2, 10, 8, device="meta", requires_grad=True)
    out = meta_route(x)
    assert out.device.type == "meta" and out.shape == (2, 4, 6)
    out.sum().backward()
    assert x.grad.shape == x.shape


def test_empty_batch_through_the_zoo_routing_head() -> None:
    heads = pytest.importorskip("heinsen_zoo.heads")
    head = heads.RoutingHead(d_depth=3, d_emb=8, n_classes=5, n_hid=4)
    hidden = torch.randn(0, 7, 3, 8, requires_grad=True)  # [batch, n_pos, d_depth, d_emb]
    logits = head(hidden)
    assert logits.shape == (0, 5)
    logits.sum().backward()
    assert hidden.grad.shape == hidden.shape


@pytest.mark.default_dispatch
def test_tiny_inputs_take_the_plain_path_and_large_ones_the_fused(monkeypatch) -> None:
    """Below FUSED_MIN_WORK multiply-adds per product the fused Function's fixed cost is not worth it."""
    from heinsen_routing import efficient

    calls = []
    fused = efficient.fused_em_routing

    def counting(*args, **kwargs):
        calls.append(args[0].shape)
        return fused(*args, **kwargs)

    monkeypatch.setattr(efficient, "fused_em_routing", counting)
    route = EfficientVectorRouting(-1, 4, 8, 6)
    tiny = torch.randn(2, 10, 8)
    assert 2 * 10 * 8 * 4 < efficient.FUSED_MIN_WORK
    plain = route(tiny)
    assert calls == []
    monkeypatch.setattr(efficient, "FUSED_MIN_WORK", tiny.numel() * 4)
    torch.testing.assert_close(route(tiny), plain, rtol=1e-5, atol=1e-6)
    assert calls == [tiny.shape]
