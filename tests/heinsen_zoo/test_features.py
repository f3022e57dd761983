"""Hidden-state cache: round trips (memory/disk), reuse, padding on collate, the cached DataModule."""

from __future__ import annotations

import os

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader

transformers = pytest.importorskip("transformers")
pytest.importorskip("timm")

from heinsen_zoo.backbones import FrozenBackbone, build_backbone  # noqa: E402
from heinsen_zoo.backbones.tiny import write_tiny_backbone  # noqa: E402
from heinsen_zoo.features import (  # noqa: E402
    CachedHiddenStatesDataModule,
    HiddenStatesDataset,
    cache_hidden_states,
    collate_hidden_states,
)
from heinsen_zoo.heads import RoutingHead  # noqa: E402

VIT = {
    "source": "timm", "id": "vit_tiny_patch16_224", "revision": None, "kind": "vision", "pretrained": False,
    "model_kwargs": {"img_size": 32, "depth": 2, "embed_dim": 32, "num_heads": 2},
}  # fmt: skip
TEXTS = [" ".join(["hello"] * 14), "hello there", "a b c d e f g", "x"]


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def vit():
    torch.manual_seed(0)
    return build_backbone(VIT)


@pytest.fixture(scope="module")
def tiny_bert_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny-bert")
    write_tiny_backbone("bert", path)
    return path


def image_batches(n_batches=2, batch_size=3):
    generator = torch.Generator().manual_seed(1)
    return [
        {"image": torch.randn(batch_size, 3, 32, 32, generator=generator),
         "label": torch.arange(batch_size) % 2, "index": torch.arange(batch_size) + b * batch_size}
        for b in range(n_batches)
    ]  # fmt: skip


class CountingBackbone:
    """Counts calls of a backbone's forward (to see whether a cache ran the backbone)."""

    def __init__(self, backbone):
        self.calls = 0
        self.handle = backbone.register_forward_hook(self._count)

    def _count(self, *args):
        self.calls += 1


def test_memory_cache_round_trip_equals_live_hidden_states(vit):
    batches = image_batches()
    cached = cache_hidden_states(vit, batches, storage="memory", progress=False)
    assert len(cached) == 6 and cached.storage == "memory" and (cached.d_depth, cached.d_emb) == (3, 32)
    item = cached[4]
    assert set(item) == {"hidden", "label", "index"}
    assert item["hidden"].shape == (5, 3, 32) and item["hidden"].dtype == torch.float16
    assert int(item["index"]) == 4 and int(item["label"]) == 1  # batch 1, position 1
    batch = next(iter(DataLoader(cached, batch_size=3, collate_fn=cached.collate)))
    live, _ = vit(batches[0]["image"])
    torch.testing.assert_close(batch["hidden"].float(), live, rtol=1e-3, atol=2e-3)
    assert torch.equal(batch["label"], batches[0]["label"]) and torch.equal(batch["index"], batches[0]["index"])


def test_disk_cache_is_reused_and_keyed(vit, tmp_path):
    batches = image_batches()
    counter = CountingBackbone(vit)
    try:
        first = cache_hidden_states(vit, batches, storage="disk", cache_dir=tmp_path, dataset_id="toy:v1",
                                    progress=True)  # fmt: skip
        calls = counter.calls
        assert calls == len(batches) and first.storage == "disk"
        again = cache_hidden_states(vit, batches, storage="disk", cache_dir=tmp_path, dataset_id="toy:v1")
        assert counter.calls == calls  # reused: the backbone did not run
        other = cache_hidden_states(vit, batches[:1], storage="disk", cache_dir=tmp_path, dataset_id="toy:v2",
                                    progress=False)  # fmt: skip
        assert len(other) == 3 and counter.calls == calls + 1
    finally:
        counter.handle.remove()
    folders = sorted(p.name for p in tmp_path.iterdir())
    assert len(folders) == 2 and not any(".tmp-" in name for name in folders)
    memory = cache_hidden_states(vit, batches, progress=False)
    for i in range(len(memory)):
        assert torch.equal(again[i]["hidden"], memory[i]["hidden"])
    assert not list(tmp_path.glob("*/*.pkl"))
    # a truncated cache is refused, not silently read
    hidden_file = tmp_path / first.meta["key"] / "hidden.bin"
    with open(hidden_file, "r+b") as handle:
        handle.truncate(os.path.getsize(hidden_file) - 2)
    with pytest.raises(ValueError, match="corrupt cache"):
        HiddenStatesDataset.load(hidden_file.parent)
    with pytest.raises(ValueError, match="dataset_id"):
        cache_hidden_states(vit, batches, storage="disk", cache_dir=tmp_path)


@pytest.mark.parametrize("pad_mode", ["mask", "empty_chunk"])
def test_text_cache_stores_only_real_positions_and_repads_like_live(tiny_bert_dir, pad_mode):
    spec = {"source": "hf", "id": "tiny-bert", "revision": None, "kind": "text", "local_path": str(tiny_bert_dir),
            "max_length": 8, "pad_mode": pad_mode}  # fmt: skip
    backbone = build_backbone(spec)
    batches = [{"text": TEXTS[:2], "label": torch.tensor([0, 1])}, {"text": TEXTS[2:], "label": torch.tensor([1, 0])}]
    cached = cache_hidden_states(backbone, batches, dtype="float32", progress=False)
    lengths = [cached[i]["hidden"].shape[0] for i in range(len(cached))]
    if pad_mode == "mask":  # up to the last real token ([SEP])
        assert lengths == [2 * 8 + 4, 4, 8 + 3, 3]
        assert all("padding_mask" in cached[i] for i in range(4))
    else:  # whole own chunks only; the empty chunk is stored once
        assert lengths == [24, 8, 16, 8] and cached.pad_hidden.shape == (8, 3, 32)
    batch = cached.collate([cached[i] for i in range(4)])
    live, live_mask = backbone(TEXTS)
    n_pos = batch["hidden"].shape[1]
    torch.testing.assert_close(batch["hidden"], live[:, :n_pos])
    if pad_mode == "mask":
        assert torch.equal(batch["padding_mask"], live_mask[:, :n_pos]) and bool(live_mask[:, n_pos:].all())
    else:
        assert n_pos == live.shape[1] and "padding_mask" not in batch
    # what matters: the head gives the same logits on cached and live hidden states
    head = RoutingHead(3, 32, 2, n_hid=4)
    torch.testing.assert_close(
        head(batch["hidden"], batch.get("padding_mask")), head(live, live_mask), rtol=1e-5, atol=1e-5
    )


def test_collate_pads_or_refuses():
    a = {"hidden": torch.ones(2, 3, 4), "padding_mask": torch.zeros(2, dtype=torch.bool), "index": torch.tensor(0)}
    b = {"hidden": torch.ones(4, 3, 4), "padding_mask": torch.zeros(4, dtype=torch.bool), "index": torch.tensor(1)}
    batch = collate_hidden_states([a, b])
    assert batch["hidden"].shape == (2, 4, 3, 4) and batch["padding_mask"][0].tolist() == [False, False, True, True]
    assert bool((batch["hidden"][0, 2:] == 0).all()) and "label" not in batch
    plain = [{k: v for k, v in s.items() if k != "padding_mask"} for s in (a, b)]
    with pytest.raises(ValueError, match="n_pos differs"):
        collate_hidden_states(plain)
    padded = collate_hidden_states(plain, pad_hidden=torch.full((2, 3, 4), 7.0))
    assert bool((padded["hidden"][0, 2:] == 7).all())
    with pytest.raises(ValueError, match="some cached samples have a padding_mask"):
        collate_hidden_states([a, plain[1]])


class _HugeBackbone(FrozenBackbone):
    """A test double whose hidden states overflow float16."""

    def __init__(self):
        super().__init__({"source": "timm", "id": "huge"})
        self.d_depth, self.d_emb = 2, 4

    def _hidden_states(self, images):
        return torch.full((images.shape[0], 3, 2, 4), 1e6), None


def test_float16_overflow_is_an_error_not_inf():
    batches = [{"image": torch.zeros(2, 3, 8, 8), "label": torch.tensor([0, 1])}]
    with pytest.raises(ValueError, match="overflow"):
        cache_hidden_states(_HugeBackbone(), batches, progress=False)
    cached = cache_hidden_states(_HugeBackbone(), batches, dtype=torch.float32, progress=False)
    assert float(cached[0]["hidden"].max()) == 1e6


class _ToyImages(torch.utils.data.Dataset):
    def __init__(self, n, seed):
        generator = torch.Generator().manual_seed(seed)
        self.images = torch.randn(n, 3, 32, 32, generator=generator)
        self.ids = [f"{seed}/{i}" for i in range(n)]

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return {"image": self.images[i], "label": i % 2, "index": i}


class _ToyDataModule(L.LightningDataModule):
    def __init__(self, n_train=6, n_val=4):
        super().__init__()
        self.save_hyperparameters()
        self.batch_size = 4

    def setup(self, stage=None):
        self.train, self.val = _ToyImages(self.hparams.n_train, 0), _ToyImages(self.hparams.n_val, 1)

    def train_dataloader(self):
        return DataLoader(self.train, batch_size=4, shuffle=True)

    def val_dataloader(self):
        return DataLoader(self.val, batch_size=4)

    def test_dataloader(self):  # the same samples as val (like BBC News), in a new dataset object
        return DataLoader(_ToyImages(self.hparams.n_val, 1), batch_size=4)


def test_cached_datamodule_caches_once_and_serves_cached_batches(vit, tmp_path, monkeypatch):
    dm = CachedHiddenStatesDataModule(_ToyDataModule(), VIT, storage="disk", cache_dir=str(tmp_path),
                                      batch_size=4, progress=False, splits=("train", "val"))  # fmt: skip
    dm.prepare_data()
    dm.setup("fit")
    assert len(list(tmp_path.iterdir())) == 2  # train + val
    train = list(dm.train_dataloader())
    assert sum(len(b["label"]) for b in train) == 6 and train[0]["hidden"].shape[1:] == (5, 3, 32)
    val = next(iter(dm.val_dataloader()))
    assert val["hidden"].dtype == torch.float16 and val["index"].tolist() == [0, 1, 2, 3]
    live, _ = dm.backbone()(_ToyImages(4, 1).images)
    torch.testing.assert_close(val["hidden"].float(), live, rtol=1e-3, atol=2e-3)
    # a second DataModule finds the disk caches; a different dataset gets new ones
    again = CachedHiddenStatesDataModule(_ToyDataModule(), VIT, storage="disk", cache_dir=str(tmp_path),
                                         progress=False, splits=("train", "val"))  # fmt: skip
    with monkeypatch.context() as patch:
        patch.setattr("heinsen_zoo.features.datamodule.build_backbone", lambda spec: pytest.fail("backbone rebuilt"))
        again.setup("fit")
    assert torch.equal(next(iter(again.val_dataloader()))["hidden"], val["hidden"])
    memory = CachedHiddenStatesDataModule(_ToyDataModule(n_val=3), VIT, storage="memory", progress=False)
    memory.setup("fit")
    assert memory._backbone is None  # freed once the splits are in memory
    with monkeypatch.context() as patch:
        patch.setattr("heinsen_zoo.features.datamodule.build_backbone", lambda spec: pytest.fail("backbone rebuilt"))
        memory.setup("test")  # test has val's ids: shares val's cache
    assert memory.cached["test"] is memory.cached["val"] and len(memory.cached["test"]) == 3
    with pytest.raises(ValueError, match="backbone_spec"):
        CachedHiddenStatesDataModule(_ToyDataModule(), None, progress=False).setup("fit")


def test_cached_datamodule_uses_the_base_loaders_under_ddp(vit):
    """The cached loaders are ZooDataModule's: per-device share of the global batch, DDP samplers, loader args."""
    from types import SimpleNamespace

    from heinsen_zoo.data.sampling import DistributedCyclingSampler, EvalShardSampler

    dm = CachedHiddenStatesDataModule(_ToyDataModule(n_val=3), VIT, batch_size=4, progress=False,
                                      splits=("train", "val"), eval_batch_size=2)  # fmt: skip
    dm.setup("fit")
    dm.trainer = SimpleNamespace(global_rank=1, world_size=2)  # rank 1 of 2
    train = dm.train_dataloader()
    assert train.batch_size == 2 and isinstance(train.sampler, DistributedCyclingSampler)
    assert sum(len(b["label"]) for b in train) == 3  # half of the 6 training samples
    val = dm.val_dataloader()
    assert val.batch_size == 2 and isinstance(val.sampler, EvalShardSampler)
    assert [i for b in val for i in b["index"].tolist()] == [1]  # rank 1's unpadded shard of 3
    with pytest.raises(ValueError, match="num_workers"):
        CachedHiddenStatesDataModule(_ToyDataModule(), VIT, num_workers=-1)


def test_a_full_disk_is_named_and_leaves_no_partial_cache(vit, tmp_path, monkeypatch):
    """ENOSPC while writing hidden.bin: one error naming cache_dir and what was written; the temporary folder goes."""
    import errno

    import heinsen_zoo.features.compute as compute

    class FullDisk:
        def __init__(self, *args, **kwargs):
            self.writes = 0

        def write(self, data):
            self.writes += 1
            if self.writes > 1:
                raise OSError(errno.ENOSPC, "No space left on device")

        def close(self):
            raise OSError(errno.ENOSPC, "No space left on device")  # the flush on close fails too

    monkeypatch.setattr(compute, "open", FullDisk, raising=False)
    with pytest.raises(OSError, match=r"cache_dir .*: no space left on the device .* MiB written for 1 samples") as info:
        cache_hidden_states(vit, image_batches(), storage="disk", cache_dir=tmp_path, dataset_id="toy:v1",
                            progress=False)  # fmt: skip
    assert info.value.errno == errno.ENOSPC and str(tmp_path) in str(info.value)
    assert list(tmp_path.iterdir()) == []
