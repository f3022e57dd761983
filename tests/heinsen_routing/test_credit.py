"""heinsen_routing.credit against the reference of SPEC §4 (tests/.../reference.py)."""

from __future__ import annotations

import pytest
import routing_reference as ref  # registered by conftest.py
import torch

from heinsen_routing import EfficientVectorRouting
from heinsen_routing.credit import credit_map, credit_per_position, end_to_end_credit

F64 = torch.float64
ERRORS = (ValueError, TypeError)


def random_phis(sizes, batch=(), seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(*batch, a, b, dtype=F64, generator=gen) for a, b in zip(sizes[:-1], sizes[1:], strict=True)]


@pytest.mark.parametrize("sizes", [[6, 5, 4], [7, 5, 4, 3], [9, 8, 6, 4, 2]])
@pytest.mark.parametrize("batch", [(), (3,), (2, 2)])
def test_end_to_end_credit_matches_reference(sizes, batch):
    phis = random_phis(sizes, batch)
    got = end_to_end_credit(phis)
    expected = ref.end_to_end_credit_reference(phis)
    assert got.shape == (*batch, sizes[0], sizes[-1])
    # rtol 1e-4 also admits the original README's recipe, which additionally rescales φ1 by
    # 1/(std + eps) before the first product (an O(eps) relative difference).
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-8)


def test_end_to_end_credit_eps_per_spec():
    """With a large eps the formula is visible: prod_k = (prod_{k-1} @ φ_k) / (std + eps) (SPEC §4)."""
    phis = random_phis([6, 5, 4, 3], seed=1)
    for eps in (0.0, 0.5, 3.0):
        torch.testing.assert_close(end_to_end_credit(phis, eps=eps),
                                   ref.end_to_end_credit_reference(phis, eps=eps), rtol=1e-10, atol=1e-12)


def test_end_to_end_credit_batch_samples_are_independent():
    """Each sample's credit is normalised by its own std: batching must not change it."""
    phis = random_phis([6, 5, 4], batch=(3,), seed=2)
    phis[0][1] *= 1000.0  # one sample on a very different scale
    batched = end_to_end_credit(phis)
    for b in range(3):
        single = end_to_end_credit([p[b] for p in phis])
        torch.testing.assert_close(batched[b], single, rtol=1e-10, atol=1e-12)


def test_end_to_end_credit_single_phi_is_proportional():
    (phi,) = random_phis([5, 4], seed=3)
    got = end_to_end_credit([phi])
    assert got.shape == phi.shape
    torch.testing.assert_close(got / got.std(), phi / phi.std())


def test_end_to_end_credit_scale_invariance_and_std():
    phis = random_phis([6, 5, 4, 3], seed=4)
    got = end_to_end_credit(phis)
    scaled = end_to_end_credit([phis[0] * 10, phis[1] * 0.1, phis[2] * 7])
    torch.testing.assert_close(got, scaled, rtol=1e-4, atol=1e-8)
    assert abs(got.std().item() - 1.0) < 1e-4


def test_end_to_end_credit_differentiable_and_float32():
    phis = [p.float().requires_grad_(True) for p in random_phis([5, 4, 3], seed=5)]
    out = end_to_end_credit(phis)
    assert out.dtype == torch.float32
    out.square().sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in phis)


def test_end_to_end_credit_of_a_routing_chain():
    torch.manual_seed(6)
    layers = [EfficientVectorRouting(n_inp=n_inp, n_out=n_out, d_inp=4, d_out=4, return_dict=True).double()
              for n_inp, n_out in [(-1, 6), (6, 5), (5, 3)]]
    x = torch.randn(2, 9, 4, dtype=F64)
    phis = []
    with torch.no_grad():
        for layer in layers:
            out = layer(x)
            phis.append(out["phi"])
            x = out["x_out"]
    credit = end_to_end_credit(phis)
    assert credit.shape == (2, 9, 3)
    torch.testing.assert_close(credit, ref.end_to_end_credit_reference(phis), rtol=1e-4, atol=1e-8)


def test_end_to_end_credit_validation():
    with pytest.raises(ERRORS, match=r"\bphis\b"):
        end_to_end_credit([])
    with pytest.raises(ERRORS, match=r"\bphis\b"):
        end_to_end_credit([torch.randn(5, 4), torch.randn(3, 2)])  # 4 != 3
    with pytest.raises(ERRORS, match=r"\bphis\b"):
        end_to_end_credit([torch.randn(5), torch.randn(5, 2)])  # rank < 2
    with pytest.raises(ERRORS, match=r"\bphis\b"):
        end_to_end_credit([torch.randn(5, 4), "not a tensor"])
    with pytest.raises(ERRORS, match=r"\bphis\b"):
        end_to_end_credit([torch.randn(5, 4, dtype=F64), torch.randn(4, 2)])  # dtype mismatch


@pytest.mark.parametrize("batch", [(), (2,), (2, 3)])
def test_credit_map_position_major(batch):
    n_pos, depth, n_out = 4, 3, 5
    credit = torch.randn(*batch, n_pos * depth, n_out, dtype=F64)
    got = credit_map(credit, n_pos, depth)
    expected = ref.credit_map_reference(credit, n_pos, depth)
    assert got.shape == (*batch, n_pos, depth, n_out)
    assert torch.equal(got, expected)
    # Explicitly: input index = pos * depth + depth_idx.
    assert torch.equal(got[..., 2, 1, :], credit[..., 2 * depth + 1, :])
    per_pos = credit_per_position(credit, n_pos, depth)
    assert per_pos.shape == (*batch, n_pos, n_out)
    torch.testing.assert_close(per_pos, expected.sum(dim=-2), rtol=1e-12, atol=1e-12)


def test_credit_per_position_identifies_positions():
    """An input with all the credit shows up at its own position."""
    n_pos, depth = 5, 4
    credit = torch.zeros(n_pos * depth, 2)
    credit[3 * depth + 2, 1] = 1.0
    per_pos = credit_per_position(credit, n_pos, depth)
    expected = torch.zeros(n_pos, 2)
    expected[3, 1] = 1.0
    assert torch.equal(per_pos, expected)


def test_credit_map_validation():
    credit = torch.randn(12, 3)
    for n_pos, depth in [(5, 3), (4, 4), (0, 12), (12, 0), (-4, -3)]:
        with pytest.raises(ERRORS, match=r"\b(credit|n_pos|depth)\b"):
            credit_map(credit, n_pos, depth)
        with pytest.raises(ERRORS, match=r"\b(credit|n_pos|depth)\b"):
            credit_per_position(credit, n_pos, depth)
    with pytest.raises(ERRORS, match=r"\bcredit\b"):
        credit_map(torch.randn(12), 4, 3)
    with pytest.raises(ERRORS, match=r"\bcredit\b"):
        credit_per_position([[0.0] * 3] * 12, 4, 3)
