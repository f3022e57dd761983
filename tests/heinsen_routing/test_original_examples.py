"""The use cases of the original heinsen_routing README, run against this package.

Each runs at reduced size by default and at the README's full size under ``@pytest.mark.slow``
(on CUDA when available). Small cases are also checked value-by-value against the float64 reference.
"""

from __future__ import annotations

import pytest
import routing_reference as ref  # registered by conftest.py
import torch
from torch import nn

import heinsen_routing
from heinsen_routing import EfficientVectorRouting as Routing

F64 = torch.float64
SLOW_DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def _reference_chain(model: nn.Sequential, x: torch.Tensor, n_iters: int = 2) -> torch.Tensor:
    for layer in model:
        x = ref.efficient_reference(ref.leaf_params(layer), x, n_iters=n_iters)["x_out"]
    return x


# (a) toy chain 10k → 1k → 100 → 10 ---------------------------------------------------------------

def _toy_chain(d: int, device: str = "cpu") -> None:
    torch.manual_seed(0)
    model = nn.Sequential(
        Routing(n_inp=10000, n_out=1000, d_inp=d, d_out=2 * d),
        Routing(n_inp=1000, n_out=100, d_inp=2 * d, d_out=3 * d),
        Routing(n_inp=100, n_out=10, d_inp=3 * d, d_out=4 * d),
    ).to(device)
    x_inp = torch.randn(10_000, d, device=device)
    with torch.no_grad():
        x_out = model(x_inp)
    assert x_out.shape == (10, 4 * d)
    assert torch.isfinite(x_out).all()
    # normalize=True (default): every output vector is LayerNorm'd.
    torch.testing.assert_close(x_out.mean(-1), torch.zeros(10, device=device), atol=1e-4, rtol=0)


def test_toy_chain_reduced():
    _toy_chain(d=64)


@pytest.mark.slow
def test_toy_chain_full_size():
    _toy_chain(d=1024, device=SLOW_DEVICE)


def test_toy_chain_tiny_matches_reference():
    torch.manual_seed(1)
    model = nn.Sequential(
        Routing(n_inp=40, n_out=12, d_inp=3, d_out=4),
        Routing(n_inp=12, n_out=5, d_inp=4, d_out=6),
        Routing(n_inp=5, n_out=2, d_inp=6, d_out=8),
    ).double()
    x = torch.randn(40, 3, dtype=F64)
    with torch.no_grad():
        torch.testing.assert_close(model(x), _reference_chain(model, x), atol=1e-10, rtol=1e-8)


# (b) sequence to sequence ---------------------------------------------------------------------------

def test_sequence_to_sequence():
    torch.manual_seed(2)
    batch_sz, (n_inp, d_inp), (n_out, d_out) = 4, (64, 32), (32, 48)
    model = Routing(n_inp=n_inp, n_out=n_out, d_inp=d_inp, d_out=d_out)
    x_inp = torch.randn(batch_sz, n_inp, d_inp, requires_grad=True)
    x_out = model(x_inp)
    assert x_out.shape == (batch_sz, n_out, d_out)
    x_out.square().sum().backward()
    assert torch.isfinite(x_inp.grad).all() and x_inp.grad.abs().sum() > 0


def test_sequence_to_sequence_residual_same_length():
    torch.manual_seed(3)
    n, d = 10, 6
    model = Routing(n_inp=n, n_out=n, d_inp=d, d_out=d).double()
    x = torch.randn(3, n, d, dtype=F64)
    with torch.no_grad():
        y = x + model(x)
        expected = x + ref.efficient_reference(ref.leaf_params(model), x, n_iters=2)["x_out"]
    assert y.shape == x.shape
    torch.testing.assert_close(y, expected, atol=1e-10, rtol=1e-8)


@pytest.mark.slow
def test_sequence_to_sequence_full_size():
    torch.manual_seed(2)
    model = Routing(n_inp=2000, n_out=1000, d_inp=1024, d_out=2048).to(SLOW_DEVICE)
    x_inp = torch.randn(4, 2000, 1024, device=SLOW_DEVICE)
    x_out = model(x_inp)
    assert x_out.shape == (4, 1000, 2048) and torch.isfinite(x_out).all()


# (c) sequence to vector -------------------------------------------------------------------------------

def test_sequence_to_vector():
    torch.manual_seed(4)
    batch_sz, (n_inp, d_inp), d_vec = 4, (50, 32), 64
    model = Routing(n_inp=n_inp, n_out=d_vec, d_inp=d_inp, d_out=1)
    x_out = model(torch.randn(batch_sz, n_inp, d_inp)).squeeze(-1)
    assert x_out.shape == (batch_sz, d_vec) and torch.isfinite(x_out).all()


def test_sequence_to_vector_matches_reference():
    torch.manual_seed(5)
    model = Routing(n_inp=7, n_out=9, d_inp=4, d_out=1).double()
    x = torch.randn(2, 7, 4, dtype=F64)
    with torch.no_grad():
        got = model(x).squeeze(-1)
        expected = ref.efficient_reference(ref.leaf_params(model), x, n_iters=2)["x_out"].squeeze(-1)
    assert got.shape == (2, 9)
    torch.testing.assert_close(got, expected, atol=1e-10, rtol=1e-8)


# (d) sequences of varying length ------------------------------------------------------------------------

def test_varying_length():
    torch.manual_seed(6)
    batch_sz, d_inp, (n_out, d_out) = 4, 32, (16, 32)
    model = Routing(n_inp=-1, n_out=n_out, d_inp=d_inp, d_out=d_out)
    for seq_len in [1, 2, 17, int(torch.randint(1, 300, []).item())]:
        x_out = model(torch.randn(batch_sz, seq_len, d_inp))
        assert x_out.shape == (batch_sz, n_out, d_out) and torch.isfinite(x_out).all()


def test_varying_length_padded_batch_equals_separate_batches():
    """Batches of different lengths routed separately equal one padded batch with a padding_mask."""
    torch.manual_seed(7)
    model = Routing(n_inp=-1, n_out=5, d_inp=8, d_out=8).double()
    batches = [torch.randn(2, n, 8, dtype=F64) for n in (3, 11, 6)]
    with torch.no_grad():
        separate = torch.cat([model(b) for b in batches])
        x = torch.zeros(6, 11, 8, dtype=F64)
        pm = torch.ones(6, 11, dtype=torch.bool)
        for k, b in enumerate(batches):
            x[2 * k:2 * k + 2, :b.shape[1]] = b
            pm[2 * k:2 * k + 2, :b.shape[1]] = False
        together = model(x, padding_mask=pm)
    torch.testing.assert_close(together, separate, atol=1e-10, rtol=1e-8)


# (e) two-stage routing of a very long sequence ----------------------------------------------------------

def _two_stage(n_inp, d_inp, n_hid, d_hid, n_out, d_out, device="cpu", backward=False):
    torch.manual_seed(8)
    model = nn.Sequential(
        Routing(n_inp=n_inp, n_out=n_hid, d_inp=d_inp, d_out=d_hid),  # "summarize"
        Routing(n_inp=n_hid, n_out=n_out, d_inp=d_hid, d_out=d_out),  # "rewrite"
    ).to(device)
    x_inp = torch.randn(n_inp, d_inp, device=device, requires_grad=backward)
    with torch.set_grad_enabled(backward):
        x_out = model(x_inp)
        assert x_out.shape == (n_out, d_out) and torch.isfinite(x_out).all()
        if backward:
            x_out.square().sum().backward()
            assert torch.isfinite(x_inp.grad).all()


def test_two_stage_reduced():
    _two_stage(25_000, 32, 10, 320, 100, 32, backward=True)


@pytest.mark.slow
def test_two_stage_full_size():
    _two_stage(250_000, 1024, 100, 10240, 1000, 1024, device=SLOW_DEVICE, backward=SLOW_DEVICE == "cuda")


# (f) recurrent residual routings ----------------------------------------------------------------------

class RecurrentResidualRoutings(nn.Module):
    """The same two routings applied n_iters times as a residual: x = x + route(norm(x))."""

    def __init__(self, n_emb: int, d_emb: int, n_iters: int, seq_compression_factor: int = 8) -> None:
        super().__init__()
        n_hid = max(2, n_emb // seq_compression_factor)
        self.n_iters = n_iters
        self.normalize = nn.LayerNorm(d_emb)
        self.residualize = nn.Sequential(
            Routing(n_inp=n_emb, n_out=n_hid, d_inp=d_emb, d_out=d_emb),
            Routing(n_inp=n_hid, n_out=n_emb, d_inp=d_emb, d_out=d_emb),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for _ in range(self.n_iters):
            x = self.normalize(x)
            x = x + self.residualize(x)
        return x


@pytest.mark.parametrize("n_emb,d_emb", [(16, 8), (40, 24)])
def test_recurrent_residual_routings(n_emb, d_emb):
    torch.manual_seed(9)
    model = RecurrentResidualRoutings(n_emb, d_emb, n_iters=5)
    x_inp = torch.randn(4, n_emb, d_emb, requires_grad=True)
    x_out = model(x_inp)
    assert x_out.shape == x_inp.shape and torch.isfinite(x_out).all()
    x_out.square().sum().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    assert model.residualize[0].W_F1.grad.abs().sum() > 0


def test_recurrent_routing_matches_reference():
    torch.manual_seed(10)
    layer = Routing(n_inp=6, n_out=6, d_inp=4, d_out=4).double()
    x = torch.randn(2, 6, 4, dtype=F64)
    y, y_ref = x, x
    with torch.no_grad():
        for _ in range(3):
            y = y + layer(y)
            y_ref = y_ref + ref.efficient_reference(ref.leaf_params(layer), y_ref, n_iters=2)["x_out"]
    torch.testing.assert_close(y, y_ref, atol=1e-9, rtol=1e-8)


# (g) composable credit assignments --------------------------------------------------------------------

class SequentialRoutingsWithCreditAssignments(nn.Module):
    """Routings applied in sequence; returns the output and the phi of every routing."""

    def __init__(self, kwds_by_routing):
        super().__init__()
        self.routings = nn.ModuleList([Routing(**kwds, return_dict=True) for kwds in kwds_by_routing])

    def forward(self, x):
        phis = []
        for routing in self.routings:
            outputs = routing(x)
            x = outputs["x_out"]
            phis.append(outputs["phi"])
        return x, phis


def _credit_chain(sizes, d, dtype=torch.float32, device="cpu"):
    torch.manual_seed(11)
    kwds = [dict(n_inp=a, n_out=b, d_inp=d, d_out=d) for a, b in zip(sizes[:-1], sizes[1:], strict=True)]
    model = SequentialRoutingsWithCreditAssignments(kwds).to(device=device, dtype=dtype)
    x_inp = torch.randn(sizes[0], d, dtype=dtype, device=device)
    with torch.no_grad():
        x_out, phis = model(x_inp)
        credit = heinsen_routing.credit.end_to_end_credit(phis)
    assert x_out.shape == (sizes[-1], d)
    assert [tuple(p.shape) for p in phis] == list(zip(sizes[:-1], sizes[1:], strict=True))
    assert credit.shape == (sizes[0], sizes[-1]) and torch.isfinite(credit).all()
    # The README's recipe: prod = φ1, then prod @ φ after each routing, each time / (prod.std() + eps).
    prod = None
    for phi in phis:
        prod = phi if prod is None else prod @ phi
        prod = prod / (prod.std() + 1e-5)
    torch.testing.assert_close(credit, prod, rtol=1e-3, atol=1e-5)
    return model, x_inp, x_out, phis, credit


def test_credit_assignment_chain_reduced():
    model, x_inp, x_out, phis, credit = _credit_chain([50, 40, 30, 20, 10], d=16, dtype=F64)
    torch.testing.assert_close(credit, ref.end_to_end_credit_reference(phis), rtol=1e-4, atol=1e-8)
    # phi and x_out of every routing against the reference, routing by routing.
    x = x_inp
    for routing, phi in zip(model.routings, phis, strict=True):
        expected = ref.efficient_reference(ref.leaf_params(routing), x, n_iters=2)
        torch.testing.assert_close(phi, expected["phi"].detach(), atol=1e-10, rtol=1e-8)
        x = expected["x_out"].detach()
    torch.testing.assert_close(x_out, x, atol=1e-10, rtol=1e-8)


@pytest.mark.slow
def test_credit_assignment_chain_full_size():
    _credit_chain([500, 400, 300, 200, 100], d=1024, device=SLOW_DEVICE)
