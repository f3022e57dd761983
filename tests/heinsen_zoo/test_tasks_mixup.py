"""Hidden-state mixup and soft-target cross-entropy (heinsen_zoo.tasks.mixup / .losses)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from heinsen_zoo.tasks import HiddenStateMixup, mixup, sample_mix_ratio, soft_target_cross_entropy


def _batch(padded: bool = True):
    torch.manual_seed(0)
    hidden = torch.randn(4, 3, 2, 5)  # [batch, n_pos, d_depth, d_emb]
    padding_mask = torch.tensor([[0, 0, 1], [0, 0, 0], [0, 1, 1], [0, 0, 0]], dtype=torch.bool)
    targets = F.one_hot(torch.tensor([0, 1, 2, 1]), 3).float()
    return hidden, (padding_mask if padded else None), targets


def test_mixup_shapes_and_soft_targets():
    hidden, padding_mask, targets = _batch()
    out, mask, soft = mixup(
        hidden, padding_mask, targets, alpha=0.2, generator=torch.Generator().manual_seed(3)
    )
    assert out.shape == hidden.shape and out.dtype == hidden.dtype
    assert mask.shape == padding_mask.shape and mask.dtype == torch.bool
    assert soft.shape == targets.shape
    torch.testing.assert_close(soft.sum(-1), torch.ones(4))


def test_mixup_r1_reproduces_inputs_and_r0_gives_partner():
    hidden, _, targets = _batch(padded=False)
    out, mask, soft = mixup(hidden, None, targets, alpha=0.2, r=1.0)
    assert mask is None
    assert torch.equal(out, hidden) and torch.equal(soft, targets)

    hidden, padding_mask, targets = _batch()
    out, mask, soft = mixup(hidden, padding_mask, targets, alpha=0.2, r=1.0)
    assert torch.equal(mask, padding_mask) and torch.equal(soft, targets)
    assert torch.equal(out[~padding_mask], hidden[~padding_mask])  # every unpadded position unchanged
    assert torch.all(out[padding_mask] == 0)

    out, mask, soft = mixup(hidden, padding_mask, targets, alpha=0.2, r=0.0)
    partner_mask = torch.roll(padding_mask, -1, dims=0)  # the partner of example i is example i + 1
    assert torch.equal(mask, partner_mask)
    assert torch.equal(soft, torch.roll(targets, -1, dims=0))
    assert torch.equal(out[~mask], torch.roll(hidden, -1, dims=0)[~mask])


def test_mixup_partner_is_batch_rolled_by_one_and_masks_union():
    hidden, padding_mask, targets = _batch()
    r = 0.3
    out, mask, soft = mixup(hidden, padding_mask, targets, alpha=0.65, r=r)
    assert torch.equal(mask, padding_mask | torch.roll(padding_mask, -1, dims=0))
    expected = r * hidden + (1 - r) * torch.roll(hidden, -1, dims=0)
    torch.testing.assert_close(out[~mask], expected[~mask])
    torch.testing.assert_close(soft[1], r * targets[1] + (1 - r) * targets[2])
    # the last pairs with the first
    torch.testing.assert_close(soft[3], r * targets[3] + (1 - r) * targets[0])


def test_mixup_draws_one_ratio_per_example():
    """SPEC §5: r has shape [batch]; example i mixes with example i + 1 using its own r_i."""
    hidden, padding_mask, targets = _batch()
    g = torch.Generator().manual_seed(11)
    r = sample_mix_ratio(0.65, torch.Generator().manual_seed(11), n=4)  # the same draw, by hand
    assert r.shape == (4,) and len(set(r.tolist())) == 4  # distinct ratios, one per example
    out, mask, soft = mixup(hidden, padding_mask, targets, alpha=0.65, generator=g)
    for i in range(4):
        j = (i + 1) % 4
        torch.testing.assert_close(soft[i], (r[i] * targets[i] + (1 - r[i]) * targets[j]).float())
        keep = ~mask[i]
        expected = (r[i] * hidden[i] + (1 - r[i]) * hidden[j]).float()
        torch.testing.assert_close(out[i][keep], expected[keep])
    # r given as a tensor: r_i = 1 keeps example i, r_i = 0 takes its partner
    out, mask, soft = mixup(hidden, None, targets, alpha=0.2, r=torch.tensor([1.0, 0.0, 1.0, 0.0]))
    assert (
        torch.equal(out[0], hidden[0]) and torch.equal(out[1], hidden[2]) and torch.equal(out[3], hidden[0])
    )
    with pytest.raises(ValueError, match=r"r: expected a float or a tensor of shape \[batch=4\]"):
        mixup(hidden, None, targets, alpha=0.2, r=torch.ones(3))


def test_mixup_padded_nan_never_leaks():
    hidden, padding_mask, targets = _batch()
    hidden = hidden.clone()
    hidden[padding_mask] = float("nan")
    for r in (0.0, 0.4, 1.0):
        out, _, _ = mixup(hidden, padding_mask, targets, alpha=0.2, r=r)
        assert torch.isfinite(out).all()


def test_mixup_disabled_and_generator_reproducible():
    hidden, padding_mask, targets = _batch()
    for alpha in (None, 0, 0.0):
        out, mask, soft = mixup(hidden, padding_mask, targets, alpha=alpha)
        assert out is hidden and mask is padding_mask and soft is targets
    a = [sample_mix_ratio(0.2, torch.Generator().manual_seed(7)) for _ in range(2)]
    assert a[0] == a[1] and 0.0 <= a[0] <= 1.0
    # the generator, not the global RNG, drives the draw
    g = torch.Generator().manual_seed(7)
    torch.manual_seed(123)
    state = torch.get_rng_state()
    assert sample_mix_ratio(0.2, g) == a[0]
    assert torch.equal(torch.get_rng_state(), state)
    # Beta(α, α) with small α piles up near 0 and 1; its mean is 1/2
    draws = torch.tensor([sample_mix_ratio(0.2, g) for _ in range(400)])
    assert abs(float(draws.mean()) - 0.5) < 0.1
    assert float(((draws < 0.1) | (draws > 0.9)).float().mean()) > 0.5


def test_mixup_of_float16_cache_under_cpu_autocast():
    hidden, padding_mask, targets = _batch()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, mask, soft = mixup(hidden.half(), padding_mask, targets, alpha=0.2, r=0.25)
    assert out.dtype == torch.float16 and soft.dtype == torch.float32
    expected = 0.25 * hidden.half() + 0.75 * torch.roll(hidden.half(), -1, dims=0)
    torch.testing.assert_close(out[~mask], expected[~mask])


def test_hidden_state_mixup_state_round_trip():
    hidden, padding_mask, targets = _batch()
    mix = HiddenStateMixup(alpha=0.2, seed=5)
    state = mix.state_dict()
    first = mix(hidden, padding_mask, targets)
    second = mix(hidden, padding_mask, targets)
    mix.load_state_dict(state)
    again = mix(hidden, padding_mask, targets)
    assert torch.equal(first[0], again[0]) and torch.equal(first[2], again[2])
    assert not torch.equal(first[2], second[2])
    assert not HiddenStateMixup(None).enabled and HiddenStateMixup(0.65).enabled
    with pytest.raises(ValueError, match="generator_state"):
        mix.load_state_dict({"wrong": 1})


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"alpha": -1.0}, ValueError, "alpha"),
        ({"alpha": float("nan")}, ValueError, "alpha"),
        ({"alpha": 0.2, "r": 1.5}, ValueError, "r: expected"),
        ({"alpha": 0.2, "targets_onehot": torch.ones(3, 3)}, ValueError, "targets_onehot"),
        ({"alpha": 0.2, "padding_mask": torch.zeros(4, 2, dtype=torch.bool)}, ValueError, "padding_mask"),
        ({"alpha": 0.2, "padding_mask": torch.zeros(4, 3)}, TypeError, "padding_mask"),
        ({"alpha": 0.2, "hidden": torch.zeros(4, 3, dtype=torch.long)}, TypeError, "hidden"),
        ({"alpha": 0.2, "generator": "seed"}, TypeError, "generator"),
    ],
)
def test_mixup_bad_input_names_the_argument(kwargs, error, match):
    hidden, padding_mask, targets = _batch()
    args = {"hidden": hidden, "padding_mask": padding_mask, "targets_onehot": targets} | kwargs
    with pytest.raises(error, match=match):
        mixup(**args)


def test_soft_target_cross_entropy_matches_hard_and_mixed():
    torch.manual_seed(0)
    logits = torch.randn(5, 4, requires_grad=True)
    labels = torch.tensor([0, 3, 1, 2, 3])
    loss = soft_target_cross_entropy(logits, F.one_hot(labels, 4).float())
    torch.testing.assert_close(loss, F.cross_entropy(logits, labels))
    soft = 0.3 * F.one_hot(labels, 4).float() + 0.7 * F.one_hot(labels.roll(1), 4).float()
    mixed = soft_target_cross_entropy(logits, soft)
    expected = 0.3 * F.cross_entropy(logits, labels) + 0.7 * F.cross_entropy(logits, labels.roll(1))
    torch.testing.assert_close(mixed, expected)
    mixed.backward()
    assert logits.grad is not None and torch.isfinite(logits.grad).all()
    half = soft_target_cross_entropy(logits.detach().half(), soft)
    assert half.dtype == torch.float32


def test_soft_target_cross_entropy_bad_input():
    with pytest.raises(ValueError, match="targets: expected shape"):
        soft_target_cross_entropy(torch.randn(2, 3), torch.ones(2, 4) / 4)
    with pytest.raises(TypeError, match="targets"):
        soft_target_cross_entropy(torch.randn(2, 3), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="logits"):
        soft_target_cross_entropy(torch.randn(2, 3, 1), torch.ones(2, 3, 1))
    with pytest.raises(ValueError, match="finite"):
        soft_target_cross_entropy(torch.randn(2, 3), torch.full((2, 3), float("nan")))
