"""Random position subsets for training (heinsen_zoo.tasks.positions) and their use in the task."""

from __future__ import annotations

import pytest
import torch

from heinsen_zoo.tasks.positions import PositionSampler, sample_positions


def _batch(lengths: list[int], n_pos: int = 10) -> tuple[torch.Tensor, torch.Tensor]:
    hidden = torch.arange(len(lengths) * n_pos, dtype=torch.float32).view(len(lengths), n_pos, 1, 1)
    mask = torch.arange(n_pos)[None, :] >= torch.tensor(lengths)[:, None]  # [batch, n_pos]
    return hidden, mask


def test_keeps_k_unpadded_positions_in_order_and_padding_only_when_short():
    hidden, mask = _batch([10, 7, 3])
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        kept, kept_mask = sample_positions(hidden, mask, 4, g)
        assert kept.shape == (3, 4, 1, 1) and kept_mask.shape == (3, 4)
        positions = kept.flatten(1) - (torch.arange(3) * 10)[:, None]  # [3, 4] original position indices
        assert bool((positions[:, 1:] > positions[:, :-1]).all())  # original order, no repeats
        assert bool((positions[0] < 10).all()) and bool((positions[1] < 7).all())  # only unpadded ones
        assert positions[2, :3].tolist() == [0, 1, 2]  # all 3 real positions, then one padded
        assert kept_mask.tolist()[:2] == [[False] * 4] * 2 and kept_mask[2].tolist() == [False] * 3 + [True]
        assert torch.equal(kept_mask, mask.gather(1, positions.long()))


def test_draws_cover_every_position_uniformly():
    hidden, _ = _batch([10])
    g = torch.Generator().manual_seed(1)
    counts = torch.zeros(10)
    for _ in range(2000):
        kept, _ = sample_positions(hidden, None, 3, g)
        counts[kept.flatten().long()] += 1
    expected = 2000 * 3 / 10  # 600 per position
    assert float((counts - expected).abs().max()) < 5 * (expected * 0.7) ** 0.5  # ~5 sigma


def test_short_sequences_and_disabled_sampler_come_back_unchanged():
    hidden, mask = _batch([5, 2], n_pos=5)
    same, same_mask = sample_positions(hidden, mask, 5)
    assert same is hidden and same_mask is mask
    off = PositionSampler(None)
    assert not off.enabled and off(hidden, mask)[0] is hidden


def test_state_round_trip_repeats_the_draw():
    sampler = PositionSampler(3, seed=7)
    hidden, mask = _batch([10, 9, 8, 10])
    state = sampler.state_dict()
    first = sampler(hidden, mask)[0]
    assert not torch.equal(first, sampler(hidden, mask)[0])  # a new draw each call
    sampler.load_state_dict(state)
    assert torch.equal(first, sampler(hidden, mask)[0])


@pytest.mark.parametrize("k", [0, -1, 2.5, True, "8"])
def test_bad_k_names_the_argument(k):
    with pytest.raises(ValueError, match="train_positions: expected None or an int >= 1"):
        PositionSampler(k)


def test_bad_mask_and_state_name_the_problem():
    hidden, mask = _batch([3, 3])
    with pytest.raises(ValueError, match=r"padding_mask: expected shape \[batch, n_pos\] = \[2, 10\]"):
        sample_positions(hidden, mask[:, :5], 2)
    with pytest.raises(ValueError, match="generator_state"):
        PositionSampler(2).load_state_dict({"state": torch.zeros(3)})


def test_task_routes_the_sampled_subset_in_training_and_every_position_in_evaluation():
    from heinsen_zoo.tasks import RoutingClassificationTask, soft_target_cross_entropy

    spec = {"source": "timm", "id": "vit_tiny_patch16_224", "revision": None, "kind": "vision",
            "pretrained": False, "model_kwargs": {"img_size": 32, "depth": 1, "embed_dim": 8, "num_heads": 2}}  # fmt: skip
    torch.manual_seed(0)
    task = RoutingClassificationTask(spec, n_classes=3, d_depth=2, d_emb=8, n_hid=4, mixup_alpha=None,
                                     train_positions=3)  # fmt: skip
    hidden = torch.randn(4, 7, 2, 8)
    batch = {
        "hidden": hidden,
        "padding_mask": torch.zeros(4, 7, dtype=torch.bool),
        "label": torch.arange(4) % 3,
    }
    state = task.position_sampler.state_dict()
    loss = task.training_step(batch, 0)
    generator = torch.Generator()
    generator.set_state(state["generator_state"])
    kept, kept_mask = sample_positions(hidden, batch["padding_mask"], 3, generator)
    targets = torch.nn.functional.one_hot(batch["label"], 3).float()
    expected = soft_target_cross_entropy(task.model({"hidden": kept, "padding_mask": kept_mask}), targets)
    torch.testing.assert_close(loss, expected)
    # evaluation sees all 7 positions: the logits differ from those of any 3-position subset
    full = task.model(batch)
    assert not torch.allclose(full, task.model({"hidden": kept, "padding_mask": kept_mask}))
    with pytest.raises(ValueError, match="train_positions"):
        RoutingClassificationTask(spec, n_classes=3, d_depth=2, d_emb=8, n_hid=4, train_positions=0)
