"""RoutingHead: SPEC §5 names/shapes/inits, padding contract, φ collection, input validation."""

from __future__ import annotations

import pytest
import torch

from heinsen_routing import EfficientVectorRouting
from heinsen_routing.credit import credit_per_position, end_to_end_credit
from heinsen_zoo.heads import RoutingHead

D_DEPTH, D_EMB, N_CLASSES, N_HID = 3, 16, 4, 8


@pytest.fixture
def head():
    torch.manual_seed(0)
    return RoutingHead(D_DEPTH, D_EMB, N_CLASSES, n_hid=N_HID)


def test_parameter_names_shapes_and_inits(head):
    params = dict(head.named_parameters())
    assert params["W"].shape == (D_DEPTH, D_EMB) and bool((params["W"] == 1).all())
    assert params["B"].shape == (D_DEPTH, D_EMB) and bool((params["B"] == 0).all())
    assert list(head.normalize.parameters()) == []  # LayerNorm without affine parameters
    layers = list(head.route)
    assert len(layers) == 3 and all(isinstance(layer, EfficientVectorRouting) for layer in layers)
    shapes = [(layer.n_inp, layer.n_out, layer.d_inp, layer.d_out) for layer in layers]
    assert shapes == [(-1, N_HID, D_EMB, D_EMB), (N_HID, N_HID, D_EMB, D_EMB), (N_HID, N_CLASSES, D_EMB, 1)]
    keys = set(head.state_dict())
    assert {"W", "B", "route.0.W_A", "route.0.compute_beta_use.weight", "route.1.beta_use",
            "route.2.CONST_ones_over_n_out"} <= keys  # fmt: skip
    assert {key.split(".")[0] for key in keys} == {"W", "B", "route"}
    assert RoutingHead(25, 1024, 1000).route[0].n_out == 64  # the paper's default n_hid


def test_forward_shapes_with_leading_dims(head):
    hidden = torch.randn(2, 3, 7, D_DEPTH, D_EMB)  # [..., n_pos, d_depth, d_emb]
    assert head(hidden).shape == (2, 3, N_CLASSES)
    assert head(hidden[0, 0]).shape == (N_CLASSES,)


def test_flatten_is_position_major(head):
    """Input vector pos * d_depth + depth of the first routing is hidden[pos, depth] (after normalize)."""
    hidden = torch.randn(1, 5, D_DEPTH, D_EMB)
    seen = {}
    handle = head.route[0].register_forward_pre_hook(lambda module, args: seen.setdefault("x", args[0]))
    head(hidden)
    handle.remove()
    x = seen["x"]  # [1, 5 * d_depth, d_emb]
    expected = torch.nn.functional.layer_norm(hidden[0, 2, 1], (D_EMB,))
    torch.testing.assert_close(x[0, 2 * D_DEPTH + 1], expected)


def test_padded_batch_equals_each_unpadded_sequence(head):
    lengths = [7, 3, 5]
    sequences = [torch.randn(n, D_DEPTH, D_EMB) for n in lengths]
    hidden = torch.full((3, max(lengths), D_DEPTH, D_EMB), float("nan"))  # garbage in the padding
    padding_mask = torch.ones(3, max(lengths), dtype=torch.bool)
    for b, seq in enumerate(sequences):
        hidden[b, : len(seq)] = seq
        padding_mask[b, : len(seq)] = False
    logits = head(hidden, padding_mask)
    for b, seq in enumerate(sequences):
        torch.testing.assert_close(logits[b], head(seq[None])[0], rtol=1e-5, atol=1e-5)
    logits.sum().backward()
    assert all(bool(torch.isfinite(p.grad).all()) for p in head.parameters() if p.grad is not None)
    assert head.W.grad is not None and head.route[2].W_F2.grad is not None


def test_return_phis_matches_logits_and_restores_layers(head):
    hidden = torch.randn(2, 6, D_DEPTH, D_EMB)
    padding_mask = torch.zeros(2, 6, dtype=torch.bool)
    padding_mask[1, 4:] = True
    logits, phis = head(hidden, padding_mask, return_phis=True)
    torch.testing.assert_close(logits, head(hidden, padding_mask))
    assert [tuple(p.shape) for p in phis] == [(2, 6 * D_DEPTH, N_HID), (2, N_HID, N_HID), (2, N_HID, N_CLASSES)]
    assert not any(layer.return_dict for layer in head.route)
    credit = credit_per_position(end_to_end_credit(phis), 6, D_DEPTH)  # [2, n_pos, n_classes]
    assert credit.shape == (2, 6, N_CLASSES) and bool((credit[1, 4:] == 0).all())


def test_half_precision_hidden_states_are_accepted(head):
    hidden = torch.randn(2, 4, D_DEPTH, D_EMB)
    torch.testing.assert_close(head(hidden.half()), head(hidden.half().float()))


def test_input_validation_names_the_argument(head):
    with pytest.raises(ValueError, match=r"hidden: expected d_depth = 3"):
        head(torch.randn(2, 4, D_DEPTH + 1, D_EMB))
    with pytest.raises(ValueError, match=r"hidden: expected d_emb = 16"):
        head(torch.randn(2, 4, D_DEPTH, D_EMB + 1))
    with pytest.raises(ValueError, match="hidden: expected a tensor of shape"):
        head(torch.randn(D_DEPTH, D_EMB))
    with pytest.raises(TypeError, match="hidden: expected a floating-point tensor"):
        head(torch.ones(2, 4, D_DEPTH, D_EMB, dtype=torch.long))
    with pytest.raises(TypeError, match="padding_mask: expected a torch.bool tensor"):
        head(torch.randn(2, 4, D_DEPTH, D_EMB), torch.zeros(2, 4))
    with pytest.raises(ValueError, match=r"padding_mask: expected shape \[..., n_pos\] = \[2, 4\]"):
        head(torch.randn(2, 4, D_DEPTH, D_EMB), torch.zeros(2, 5, dtype=torch.bool))
    with pytest.raises(ValueError, match="n_classes"):
        RoutingHead(D_DEPTH, D_EMB, 1)
    with pytest.raises(ValueError):
        head(torch.randn(1, 2, D_DEPTH, D_EMB), torch.ones(1, 2, dtype=torch.bool))  # nothing left to route
