"""Fixed steps per epoch: cycling sampler, its distributed split, and the DataModules' training loaders."""

from __future__ import annotations

from collections import Counter
from types import SimpleNamespace

import lightning as L
import pytest
import torch
from torch.utils.data import DistributedSampler

from heinsen_zoo.data import CyclingRandomSampler, DistributedCyclingSampler, TextDataset, ZooDataModule


class _ToyDataModule(ZooDataModule):
    """n_examples texts "t<i>" with label i % 2."""

    def __init__(self, n_examples: int = 10, **kwargs):
        super().__init__(**kwargs)
        self.n_examples = n_examples

    @property
    def labels(self) -> list[str]:
        return ["even", "odd"]

    def _build_split(self, split: str) -> TextDataset:
        return TextDataset([f"t{i}" for i in range(self.n_examples)], [i % 2 for i in range(self.n_examples)])


def test_cycling_sampler_length_and_fresh_permutations():
    sampler = CyclingRandomSampler(dataset_len=7, num_samples=20, seed=3)
    indices = list(sampler)
    assert len(sampler) == 20 and len(indices) == 20
    # the stream is made of whole permutations: positions [0,7) and [7,14) each cover the dataset once
    assert sorted(indices[:7]) == list(range(7))
    assert sorted(indices[7:14]) == list(range(7))
    assert indices[:7] != indices[7:14]  # a fresh permutation each time the previous one runs out
    # the 6 leftover positions of epoch 0 and the first of epoch 1 complete the third permutation
    sampler.set_epoch(1)
    next_epoch = list(sampler)
    assert sorted(indices[14:] + next_epoch[:1]) == list(range(7))


def test_cycling_sampler_deterministic_per_epoch_and_reshuffles():
    a = CyclingRandomSampler(50, 50, seed=0)
    b = CyclingRandomSampler(50, 50, seed=0)
    assert list(a) == list(b) and list(a) == list(a)  # depends on (seed, epoch) only, not on call count
    epoch0 = list(a)
    a.set_epoch(1)
    epoch1 = list(a)
    assert sorted(epoch0) == sorted(epoch1) == list(range(50))  # num_samples == len: one pass per epoch
    assert epoch0 != epoch1  # reshuffled
    assert list(CyclingRandomSampler(50, 50, seed=1)) != epoch0
    b.set_epoch(1)
    assert list(b) == epoch1


def test_cycling_sampler_even_coverage_over_epochs():
    sampler = CyclingRandomSampler(dataset_len=10, num_samples=7, seed=0)
    counts: Counter[int] = Counter()
    for epoch in range(10):  # 70 positions = 7 whole permutations
        sampler.set_epoch(epoch)
        counts.update(sampler)
    assert set(counts.values()) == {7}


@pytest.mark.parametrize("bad", [0, -1, 2.5, True])
def test_cycling_sampler_rejects_bad_sizes(bad):
    with pytest.raises(ValueError, match="num_samples"):
        CyclingRandomSampler(10, bad)
    with pytest.raises(ValueError, match="dataset_len"):
        CyclingRandomSampler(bad, 10)


def test_distributed_split_disjoint_equal_and_same_effective_batch():
    single = list(CyclingRandomSampler(12, 12, seed=5))
    ranks = [DistributedCyclingSampler(12, 12, seed=5, rank=r, world_size=3) for r in range(3)]
    parts = [list(s) for s in ranks]
    assert [len(p) for p in parts] == [4, 4, 4] == [len(s) for s in ranks]
    assert sorted(sum(parts, [])) == list(range(12))  # disjoint and complete
    # with per-rank batch 2 (global 6), step i of the DDP run sees exactly step i of the single run
    for step in range(2):
        ddp_batch = sum((p[2 * step : 2 * step + 2] for p in parts), [])
        assert sorted(ddp_batch) == sorted(single[6 * step : 6 * step + 6])
    # Lightning keeps samplers that already are DistributedSamplers (no silent replacement)
    assert isinstance(ranks[0], DistributedSampler)


def test_distributed_sampler_uneven_rounds_up_and_set_epoch():
    ranks = [DistributedCyclingSampler(10, 7, seed=0, rank=r, world_size=2) for r in range(2)]
    assert [len(list(s)) for s in ranks] == [4, 4]  # 7 rounded up to 8 so no rank waits forever
    before = list(ranks[0])
    ranks[0].set_epoch(1)
    assert list(ranks[0]) != before
    with pytest.raises(ValueError, match="rank"):
        DistributedCyclingSampler(10, 7, rank=2, world_size=2)


def test_datamodule_steps_per_epoch_and_full_pass():
    dm = _ToyDataModule(n_examples=10, batch_size=4, steps_per_epoch=5)
    loader = dm.train_dataloader()
    batches = list(loader)
    assert len(loader) == 5 and len(batches) == 5
    assert all(len(b["text"]) == 4 for b in batches)
    assert isinstance(loader.sampler, CyclingRandomSampler) and loader.sampler.num_samples == 20
    full = _ToyDataModule(n_examples=10, batch_size=4)
    assert len(full.train_dataloader()) == 3  # one pass: ceil(10 / 4)
    assert sorted(i for b in full.train_dataloader() for i in b["index"].tolist()) == list(range(10))
    assert len(full.val_dataloader()) == 3


def test_datamodule_distributed_rank_handling():
    dm = _ToyDataModule(n_examples=12, batch_size=6, steps_per_epoch=2)
    single = [b["index"].tolist() for b in dm.train_dataloader()]
    per_rank = []
    for rank in range(3):
        dm.trainer = SimpleNamespace(global_rank=rank, world_size=3)
        loader = dm.train_dataloader()
        assert isinstance(loader.sampler, DistributedCyclingSampler) and loader.batch_size == 2
        per_rank.append([b["index"].tolist() for b in loader])
    for step in range(2):
        assert sorted(sum((r[step] for r in per_rank), [])) == sorted(single[step])
    dm.trainer = SimpleNamespace(global_rank=0, world_size=4)
    with pytest.raises(ValueError, match="does not divide over world_size=4"):
        dm.train_dataloader()


def test_datamodule_argument_validation():
    with pytest.raises(ValueError, match="batch_size"):
        _ToyDataModule(batch_size=0)
    with pytest.raises(ValueError, match="steps_per_epoch"):
        _ToyDataModule(steps_per_epoch=0)
    with pytest.raises(ValueError, match="num_workers"):
        _ToyDataModule(num_workers=-1)


class _RecordingModule(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.seen: list[list[int]] = []

    def training_step(self, batch, batch_idx):
        self.seen.append(batch["index"].tolist())
        return (self.weight - 1.0).pow(2).sum()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_lightning_trainer_uses_steps_per_epoch_and_sets_epoch():
    dm = _ToyDataModule(n_examples=10, batch_size=3, steps_per_epoch=4, seed=1)
    model = _RecordingModule()
    trainer = L.Trainer(max_epochs=2, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                        limit_val_batches=0)
    trainer.fit(model, datamodule=dm)
    assert len(model.seen) == 8 and trainer.global_step == 8
    stream = CyclingRandomSampler(10, 24, seed=1).indices().tolist()  # epochs 0 and 1 = positions [0, 24)
    assert sum(model.seen, []) == stream  # Lightning called set_epoch(1): epoch 1 continued the stream


def test_lightning_ddp_keeps_our_distributed_sampler():
    """Lightning's own check (private API; skipped if it moves) must not want to replace our sampler."""
    trainer = L.Trainer(strategy="ddp", accelerator="cpu", devices=2, logger=False, enable_progress_bar=False)
    connector = getattr(trainer, "_data_connector", None)
    if connector is None or not hasattr(connector, "_requires_distributed_sampler"):
        pytest.skip("Lightning's data connector API changed")
    assert trainer._accelerator_connector.is_distributed and trainer._accelerator_connector.use_distributed_sampler
    dm = _ToyDataModule(n_examples=12, batch_size=6, steps_per_epoch=2)
    dm.trainer = SimpleNamespace(global_rank=1, world_size=2)
    assert not connector._requires_distributed_sampler(dm.train_dataloader())
    assert not connector._requires_distributed_sampler(dm.val_dataloader())  # ours: unpadded shards, kept


def test_per_device_batch_is_the_one_division():
    from heinsen_zoo.data.sampling import per_device_batch

    assert per_device_batch(50, 1) == 50 and per_device_batch(50, 2) == 25 and per_device_batch(50, 5) == 10
    with pytest.raises(ValueError, match=r"effective \(global\) batch 50 does not divide over world_size=4"):
        per_device_batch(50, 4)
    with pytest.raises(ValueError, match="world_size"):
        per_device_batch(50, 0)


@pytest.mark.parametrize(("n", "world_size"), [(31, 2), (7, 3), (2, 4), (0, 2)])
def test_eval_shard_sampler_scores_every_example_exactly_once(n, world_size):
    from torch.utils.data import DistributedSampler

    from heinsen_zoo.data.sampling import EvalShardSampler

    shards = [list(EvalShardSampler(n, rank=r, world_size=world_size)) for r in range(world_size)]
    assert sorted(i for shard in shards for i in shard) == list(range(n))  # no padding duplicate, none lost
    assert [len(EvalShardSampler(n, rank=r, world_size=world_size)) for r in range(world_size)] == [
        len(s) for s in shards
    ]
    # Lightning keeps a DistributedSampler as it is (its own one would pad the last shard)
    assert isinstance(EvalShardSampler(n, rank=0, world_size=world_size), DistributedSampler)
    with pytest.raises(ValueError, match="rank"):
        EvalShardSampler(n, rank=world_size, world_size=world_size)


def test_eval_loaders_shard_without_padding_under_ddp(tmp_path):
    from heinsen_zoo.data.sampling import EvalShardSampler
    from heinsen_zoo.data.smoke import make_smoke_datamodule

    dm = make_smoke_datamodule("cifar10", tmp_path, image_size=8, batch_size=4)
    n = len(dm.test_dataset)
    assert n % 2 == 1  # the smoke test split is odd on purpose
    seen = []
    for rank in range(2):
        dm.trainer = SimpleNamespace(global_rank=rank, world_size=2)
        loader = dm.test_dataloader()
        assert isinstance(loader.sampler, EvalShardSampler)
        seen += [i for batch in loader for i in batch["index"].tolist()]
    assert sorted(seen) == list(range(n))
