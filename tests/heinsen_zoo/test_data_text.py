"""IMDB and SST DataModules, the PTB tree parser and the detokeniser."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

from heinsen_zoo.data import IMDBDataModule, SSTDataModule, collate_text  # noqa: E402
from heinsen_zoo.data.ptb_trees import dedup_majority, detokenize, parse_tree, parse_trees, to_sst2  # noqa: E402
from heinsen_zoo.data.synthetic import write_imdb, write_sst_trees  # noqa: E402

# ---- IMDB ---------------------------------------------------------------------------------------------


def _check_text_batch(batch: dict, batch_size: int) -> None:
    assert set(batch) == {"text", "label", "index"}
    assert len(batch["text"]) == batch_size and all(isinstance(t, str) for t in batch["text"])
    assert batch["label"].dtype == torch.long and batch["label"].shape == (batch_size,)


def test_imdb_acl_layout(tmp_path):
    path = write_imdb(tmp_path, n_per_class=3, seed=0, layout="aclImdb")
    assert (path / "train" / "unsup").is_dir()
    for data_dir in (path, tmp_path):  # the aclImdb folder or its parent
        dm = IMDBDataModule(data_dir, batch_size=2, steps_per_epoch=4)
        assert dm.labels == ["neg", "pos"] and dm.num_classes == 2
        assert len(dm.train_dataset) == 6 and len(dm.val_dataset) == 6 and len(dm.test_dataset) == 6  # unsup ignored
        assert sorted(dm.train_dataset.labels) == [0, 0, 0, 1, 1, 1]
        assert all("<br" not in t and "\n\n" in t for t in dm.train_dataset.texts)
        assert dm.train_dataset.ids[0].startswith("train/neg/")
        assert len(dm.train_dataloader()) == 4
        assert dm.val_dataset is dm.test_dataset  # the paper reports test accuracy
        _check_text_batch(next(iter(dm.train_dataloader())), 2)


def test_imdb_hf_layouts_match_acl(tmp_path):
    import datasets

    acl = IMDBDataModule(write_imdb(tmp_path / "a", n_per_class=3, seed=4), batch_size=2)
    hf_path = write_imdb(tmp_path / "h", n_per_class=3, seed=4, layout="hf")
    hf = IMDBDataModule(hf_path, batch_size=2)
    assert sorted(hf.train_dataset.texts) == sorted(acl.train_dataset.texts)
    assert len(hf.test_dataset) == 6
    _check_text_batch(next(iter(hf.val_dataloader())), 2)
    loaded = datasets.load_from_disk(str(hf_path))
    (tmp_path / "pq" / "plain_text").mkdir(parents=True)
    for split in ("train", "test", "unsupervised"):
        loaded[split].to_parquet(str(tmp_path / "pq" / "plain_text" / f"{split}-00000-of-00001.parquet"))
    parquet = IMDBDataModule(tmp_path / "pq")
    assert parquet.train_dataset.texts == hf.train_dataset.texts
    assert parquet.test_dataset.labels == hf.test_dataset.labels


def test_imdb_val_fraction_and_max_per_class(tmp_path):
    path = write_imdb(tmp_path, n_per_class=5)
    dm = IMDBDataModule(path, val_fraction=0.4, max_per_class=4)
    assert len(dm.train_dataset) == 4 and len(dm.val_dataset) == 4 and len(dm.test_dataset) == 8
    assert not set(dm.train_dataset.ids) & set(dm.val_dataset.ids)
    assert sorted(dm.val_dataset.labels) == [0, 0, 1, 1]


def test_imdb_missing_data(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"aclImdb/\{train,test\}/\{neg,pos\}/\*\.txt"):
        IMDBDataModule(tmp_path).setup("fit")
    path = write_imdb(tmp_path, n_per_class=1)
    for file in (path / "test" / "pos").iterdir():
        file.unlink()
    with pytest.raises(FileNotFoundError, match="test/pos"):
        IMDBDataModule(path).setup("test")


def test_imdb_synthetic_signal_words(tmp_path):
    dm = IMDBDataModule(write_imdb(tmp_path, n_per_class=4))
    for text, label in zip(dm.train_dataset.texts, dm.train_dataset.labels, strict=True):
        words = set(text.lower().replace(".", " ").split())
        assert words & ({"awful", "boring", "terrible", "waste", "worst", "dull", "disappointing", "poorly"}
                        if label == 0 else
                        {"wonderful", "brilliant", "superb", "moving", "best", "delightful", "masterpiece",
                         "excellent"})


# ---- PTB trees ----------------------------------------------------------------------------------------

SENTENCE = "(3 (2 It) (4 (4 (2 's) (4 (3 (2 a) (4 (3 lovely) (2 film))))) (2 .)))"


def test_parse_tree_leaves_labels_and_subtrees():
    tree = parse_tree(SENTENCE)
    assert tree.label == 3
    assert tree.leaves() == ["It", "'s", "a", "lovely", "film", "."]
    nodes = list(tree.subtrees())
    assert len(nodes) == 12 and nodes[0] is tree  # incl. the unary (4 (3 ...)) node
    assert [n.label for n in nodes if n.word is not None] == [2, 2, 2, 3, 2, 2]
    assert tree.text() == "It's a lovely film."
    assert {n.text() for n in nodes} >= {"a lovely film", "lovely film", "'s a lovely film", "."}


@pytest.mark.parametrize("line, message", [
    ("(3 (2 It) (4 good)", "unbalanced"),
    ("(3 (2 It) (4 good)))", "unbalanced"),
    ("(7 (2 It) (4 good))", "0-4"),
    ("(x (2 It))", "0-4"),
    ("(3 (2 It extra))", "unexpected token"),
    ("(3 (2 It (2 b)))", "cannot have children"),
    ("(3)", "neither a word nor children"),
    ("", "empty"),
])
def test_parse_tree_errors(line, message):
    with pytest.raises(ValueError, match=message):
        parse_tree(line)


def test_parse_trees_names_line():
    with pytest.raises(ValueError, match="train.txt:2"):
        parse_trees("(2 ok)\n(2 (2 broken)\n", source="train.txt")


@pytest.mark.parametrize("tokens, expected", [
    (["It", "does", "n't", "work", ",", "really", "."], "It doesn't work, really."),
    (["-LRB-", "Parenthetical", "-RRB-", "text", "!"], "(Parenthetical) text!"),
    (["He", "said", "``", "wow", "''", "."], 'He said "wow".'),
    (["1\\/2", "hours", "of", "\\*", "stars"], "1/2 hours of * stars"),
    (["the", "actors", "'", "work", "is", "n't", "bad", ";", "ca", "n't", "lose", "?"],
     "the actors' work isn't bad; can't lose?"),
    (["We", "'re", "sure", "they", "'ll", "pay", "$", "5", "or", "50", "%", "..."],
     "We're sure they'll pay $5 or 50% ..."),
])
def test_detokenize(tokens, expected):
    assert detokenize(tokens) == expected


def test_dedup_majority_and_sst2_mapping():
    assert dedup_majority(["x", "y", "x", "x", "y"], [1, 3, 2, 2, 4]) == (["x", "y"], [2, 3])
    assert [to_sst2(label) for label in range(5)] == [0, 0, None, 1, 1]
    with pytest.raises(ValueError):
        to_sst2(5)


# ---- SSTDataModule ------------------------------------------------------------------------------------

TRAIN_TREES = [
    "(3 (2 It) (4 (4 (2 's) (4 (3 (2 a) (4 (3 lovely) (2 film))))) (2 .)))",
    "(1 (2 (2 The) (2 film)) (1 (1 (2 is) (1 dull)) (2 .)))",
    "(0 (2 (2 The) (2 film)) (0 (0 (2 is) (0 awful)) (2 .)))",
]
DEV_TREES = ["(4 (2 Simply) (4 superb))", "(2 (2 A) (2 film))"]
TEST_TREES = ["(0 (0 Awful) (2 .))", "(0 (0 Awful) (2 .))", "(3 (2 -LRB-) (3 (3 fine) (2 -RRB-)))"]


@pytest.fixture
def sst_dir(tmp_path):
    trees = tmp_path / "trees"
    trees.mkdir()
    for name, lines in (("train", TRAIN_TREES), ("dev", DEV_TREES), ("test", TEST_TREES)):
        (trees / f"{name}.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return tmp_path


def test_sst5_phrases_dedup_and_roots(sst_dir):
    dm = SSTDataModule(sst_dir, n_classes=5, batch_size=4)
    train = dict(zip(dm.train_dataset.texts, dm.train_dataset.labels, strict=True))
    # "The film", "The", "film", "." and "is" occur in several trees: kept once (same label)
    assert len(dm.train_dataset) == len(train)
    assert train["The film"] == 2 and train["."] == 2 and train["It's a lovely film."] == 3
    assert train["is dull"] == 1 and train["The film is awful."] == 0
    n_nodes = sum(len(list(parse_tree(t).subtrees())) for t in TRAIN_TREES)
    assert len(train) < n_nodes
    assert dm.val_dataset.texts == ["Simply superb", "A film"] and dm.val_dataset.labels == [4, 2]
    assert dm.test_dataset.texts == ["Awful.", "Awful.", "(fine)"]  # roots kept as published (no dedup)
    assert SSTDataModule(sst_dir, dedup_eval=True).test_dataset.texts == ["Awful.", "(fine)"]
    assert dm.labels[0] == "very negative" and dm.num_classes == 5
    assert len(set(dm.train_dataset.ids)) == len(dm.train_dataset) and dm.test_dataset.ids[1] == "test.txt:2"
    assert dm.predict_dataset is dm.test_dataset and dm.preprocessing["detokenize"] == "ptb"
    assert len(SSTDataModule(sst_dir, train_phrases=False).train_dataset) == 3
    batch = next(iter(dm.train_dataloader()))
    assert set(batch) == {"text", "label", "index"} and len(batch["text"]) == 4


def test_sst2_drops_neutral_and_maps(sst_dir):
    dm = SSTDataModule(sst_dir / "trees", n_classes=2)  # data_dir may be the trees folder itself
    train = dict(zip(dm.train_dataset.texts, dm.train_dataset.labels, strict=True))
    assert "The film" not in train and "." not in train  # neutral phrases dropped
    assert train["It's a lovely film."] == 1 and train["lovely"] == 1 and train["is dull"] == 0
    assert train["awful"] == 0
    assert set(dm.train_dataset.labels) == {0, 1}
    assert dm.val_dataset.texts == ["Simply superb"] and dm.val_dataset.labels == [1]
    assert dm.labels == ["negative", "positive"] and dm.num_classes == 2


def test_sst_missing_and_bad_args(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"trees/\{train,dev,test\}\.txt"):
        SSTDataModule(tmp_path).setup("fit")
    with pytest.raises(ValueError, match="n_classes"):
        SSTDataModule(tmp_path, n_classes=3)


def test_synthetic_sst_trees_are_valid_and_learnable(tmp_path):
    root = write_sst_trees(tmp_path, n_train=25, n_dev=10, n_test=10, seed=2)
    for name in ("train", "dev", "test"):
        trees = parse_trees((root / "trees" / f"{name}.txt").read_text(), source=name)
        assert len(trees) == {"train": 25, "dev": 10, "test": 10}[name]
        assert all(0 <= node.label <= 4 for tree in trees for node in tree.subtrees())
    dm = SSTDataModule(root, n_classes=5)
    assert sorted(set(dm.val_dataset.labels)) == [0, 1, 2, 3, 4]
    assert all("-LRB-" not in t and "\\/" not in t and "``" not in t for t in dm.train_dataset.texts)
    # the adjective decides the label: a word-to-label lookup from train phrases classifies dev roots
    word_label = {t: y for t, y in zip(dm.train_dataset.texts, dm.train_dataset.labels, strict=True)
                  if " " not in t}
    predicted = [max((word_label.get(w.strip(".,!"), 2) for w in text.split()), key=lambda y: abs(y - 2))
                 for text in dm.val_dataset.texts]
    correct = sum(p == y for p, y in zip(predicted, dm.val_dataset.labels, strict=True))
    assert correct / len(predicted) > 0.5


def test_collate_text_errors():
    with pytest.raises(KeyError, match="label"):
        collate_text([{"text": "a"}])
    with pytest.raises(TypeError, match="str"):
        collate_text([{"text": 3, "label": 0}])
    with pytest.raises(ValueError, match="empty"):
        collate_text([])
