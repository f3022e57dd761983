"""A corpus-wide hidden-state cache: splits (of any split seed) are views of one cache of the raw corpus."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import Dataset

pytest.importorskip("timm")

from heinsen_zoo.backbones import build_backbone  # noqa: E402
from heinsen_zoo.data.base import ZooDataModule  # noqa: E402
from heinsen_zoo.data.collate import collate_images  # noqa: E402
from heinsen_zoo.features import CachedHiddenStatesDataModule, HiddenStatesDataset  # noqa: E402

SMALL_VIT = {
    "source": "timm", "id": "vit_tiny_patch16_224", "revision": None, "kind": "vision", "pretrained": False,
    "model_kwargs": {"img_size": 32, "depth": 1, "embed_dim": 16, "num_heads": 2},
}  # fmt: skip
N_IMAGES = 10
IMAGES = torch.randn(N_IMAGES, 3, 32, 32, generator=torch.Generator().manual_seed(123))


class _Images(Dataset):
    def __init__(self, rows: list[int], ids: list[str] | None) -> None:
        self.rows, self.ids = rows, ids
        self.labels = [row % 2 for row in rows]

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict:
        return {"image": IMAGES[self.rows[i]], "label": self.labels[i], "index": i}


class _Corpus(ZooDataModule):
    """10 images dealt by ``seed`` to 3 validation (= test) and 7 training images; the corpus is all 10."""

    collate_fn = staticmethod(collate_images)
    SPLIT_ARGS = ("seed",)

    def __init__(self, seed: int = 0, corpus_ids: list[str] | None = None, split_ids: bool = True) -> None:
        super().__init__(batch_size=4, seed=seed)
        self.save_hyperparameters()
        self.corpus_ids = corpus_ids or [f"img{row}" for row in range(N_IMAGES)]
        self.split_ids = split_ids

    @property
    def labels(self) -> list[str]:
        return ["even", "odd"]

    def corpus(self) -> _Images:
        return _Images(list(range(N_IMAGES)), self.corpus_ids)

    def split_rows(self, split: str) -> list[int]:
        order = torch.randperm(N_IMAGES, generator=torch.Generator().manual_seed(self.seed)).tolist()
        return order[3:] if split == "train" else order[:3]

    def _build_split(self, split: str) -> _Images:
        rows = self.split_rows(split)
        return _Images(rows, [f"img{row}" for row in rows] if self.split_ids else None)


class _Counting:
    """Counts the backbone's forward calls while caching."""

    def __init__(self, monkeypatch) -> None:
        self.calls = 0
        real = build_backbone

        def build(spec):
            backbone = real(spec)
            backbone.register_forward_hook(lambda *args: setattr(self, "calls", self.calls + 1))
            return backbone

        monkeypatch.setattr("heinsen_zoo.features.datamodule.build_backbone", build)


def _cached(raw: ZooDataModule, tmp_path, **kwargs) -> CachedHiddenStatesDataModule:
    dm = CachedHiddenStatesDataModule(
        raw, SMALL_VIT, storage="disk", cache_dir=str(tmp_path), progress=False, **kwargs
    )
    dm.prepare_data()
    dm.setup("fit")
    dm.setup("test")
    return dm


def test_a_view_serves_some_cached_samples_without_copying():
    hidden = torch.arange(6 * 2 * 3, dtype=torch.float32).reshape(
        6, 2, 3
    )  # 3 samples of 1, 2 and 3 positions
    cache = HiddenStatesDataset(hidden, torch.tensor([0, 1, 3, 6]), torch.arange(3), torch.tensor([5, 6, 7]))
    part = cache.view([2, 0], indices=torch.tensor([10, 11]))
    assert len(part) == 2 and len(cache) == 3
    assert (
        torch.equal(part[0]["hidden"], hidden[3:6]) and part[0]["hidden"].data_ptr() == hidden[3:6].data_ptr()
    )
    assert [int(part[k]["index"]) for k in range(2)] == [10, 11] and part.labels.tolist() == [7, 5]
    inner = part.view([1])  # a view of a view: sample 0 of the cache
    assert (
        torch.equal(inner[0]["hidden"], hidden[0:1])
        and int(inner[0]["index"]) == 0
        and inner.labels.tolist() == [5]
    )
    assert len(cache.view([])) == 0
    with pytest.raises(IndexError, match=r"rows: expected sample numbers in \[0, 3\), got 1..3"):
        cache.view([1, 3])
    with pytest.raises(ValueError, match=r"indices: expected one per row \(2\), got 1"):
        cache.view([0, 1], indices=torch.tensor([0]))


def test_every_split_seed_is_served_from_one_corpus_cache(tmp_path, monkeypatch):
    counting = _Counting(monkeypatch)
    first = _cached(_Corpus(seed=0), tmp_path)
    assert len(list(tmp_path.iterdir())) == 1  # one cache: the corpus, not one per split
    assert counting.calls == 3  # 10 images in batches of 4, once
    live, _ = first.backbone()(IMAGES)  # [10, n_pos, d_depth, d_emb]
    counting.calls = 0
    for split in ("train", "val", "test"):
        rows = first.datamodule.split_rows(split)
        cached = first.cached[split]
        assert len(cached) == len(rows) and cached.labels.tolist() == [row % 2 for row in rows]
        for k, row in enumerate(rows):
            item = cached[k]
            assert int(item["index"]) == k and int(item["label"]) == row % 2
            torch.testing.assert_close(item["hidden"].float(), live[row], rtol=1e-3, atol=2e-3)
    batch = next(iter(first.val_dataloader()))
    assert batch["index"].tolist() == [0, 1, 2] and batch["hidden"].shape[0] == 3

    other = _cached(_Corpus(seed=1), tmp_path)  # another split of the same corpus: nothing to compute
    assert counting.calls == 0 and len(list(tmp_path.iterdir())) == 1
    rows = other.datamodule.split_rows("val")
    assert rows != first.datamodule.split_rows("val")
    torch.testing.assert_close(other.cached["val"][0]["hidden"].float(), live[rows[0]], rtol=1e-3, atol=2e-3)


def test_share_corpus_false_caches_each_split_on_its_own(tmp_path):
    dm = _cached(_Corpus(seed=0), tmp_path, share_corpus=False)
    assert len(list(tmp_path.iterdir())) == 2  # train and val; test has val's ids, so it shares val's cache
    assert dm.cached["test"] is dm.cached["val"] and len(dm.cached["train"]) == 7
    with pytest.raises(ValueError, match="share_corpus: expected True or False, got 'yes'"):
        CachedHiddenStatesDataModule(_Corpus(), SMALL_VIT, share_corpus="yes")


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (_Corpus(corpus_ids=["same"] * N_IMAGES), r"_Corpus.corpus\(\): expected each id once, got 9 repeated"),
        (_Corpus(corpus_ids=[f"other{row}" for row in range(N_IMAGES)]),
         r"_Corpus: 7 examples of the train split are not in its corpus\(\), e.g. 'img"),
        (_Corpus(split_ids=False), r"_Corpus: its train dataset has no ids \(one per example\)"),
    ],
)  # fmt: skip
def test_a_corpus_that_does_not_hold_the_splits_is_an_error(raw, message):
    dm = CachedHiddenStatesDataModule(raw, SMALL_VIT, storage="memory", progress=False)
    with pytest.raises(ValueError, match=message):
        dm.setup("fit")
