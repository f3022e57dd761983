"""The demo's outputs: the results table (markdown), the test confusion matrix (PNG) and the list of the
articles the head gets wrong (CSV), with what the baselines predicted for them.

Example:
    >>> import numpy as np
    >>> confusion_matrix(np.array([0, 1, 1]), np.array([0, 1, 0]), 2).tolist()
    [[1, 0], [1, 1]]
    >>> print(results_table([Row("routing head", 0.99, 0.985, 100.0)]))
    | model | validation accuracy | test accuracy | train time |
    |---|---|---|---|
    | routing head | 99.00% | 98.50% | 100 s |
    >>> import pathlib, tempfile
    >>> out = pathlib.Path(tempfile.mkdtemp()) / "errors.csv"
    >>> shared = write_errors_csv(out, ["Rates rise", "Cup final", "New phone"], np.array([0, 1, 0]),
    ...     {"head": np.array([0, 0, 1]), "probe": np.array([1, 0, 0])}, ["business", "sport"])
    >>> print(out.read_text().strip()); shared
    article,true topic,head,probe
    Cup final,sport,business,business
    New phone,business,sport,business
    {'probe': 1}
    >>> splits = {0: [Row("head", 0.97, 0.98, 1.0), Row("probe", 0.96, 0.97, 1.0)],
    ...           1: [Row("head", 0.99, 0.97, 1.0), Row("probe", 0.98, 0.97, 1.0)]}
    >>> print(splits_table(splits))
    | split seed | head | probe |
    |---|---|---|
    | 0 | 98.00% (97.00%) | 97.00% (96.00%) |
    | 1 | 97.00% (99.00%) | 97.00% (98.00%) |
    | mean ± s.d. | 97.50% ± 0.71 | 97.00% ± 0.00 |
    <BLANKLINE>
    | head − | mean lead on test ± s.e. | per split | ahead / tied / behind |
    |---|---|---|---|
    | probe | +0.50 ± 0.50 points | +1.00, +0.00 | 1 / 1 / 0 of 2 |
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np

__all__ = [
    "Row",
    "results_table",
    "splits_table",
    "write_splits_csv",
    "read_splits_csv",
    "plot_splits",
    "confusion_matrix",
    "plot_confusion_matrix",
    "write_errors_csv",
]


class Row(NamedTuple):
    """One model's line of the table (accuracies in [0, 1])."""

    name: str
    val_acc: float
    test_acc: float
    seconds: float


def results_table(rows: Sequence[Row]) -> str:
    """A markdown table: model, validation accuracy, test accuracy, train time."""
    lines = ["| model | validation accuracy | test accuracy | train time |", "|---|---|---|---|"]
    for row in rows:
        lines.append(
            f"| {row.name} | {100 * row.val_acc:.2f}% | {100 * row.test_acc:.2f}% | {row.seconds:.0f} s |"
        )
    return "\n".join(lines)


def _models(results: Mapping[int, Sequence[Row]]) -> tuple[list[str], np.ndarray]:
    """The model names shared by every split's rows (same order; the first is the one compared) and the test
    accuracies in % ``[n_splits, n_models]``."""
    if not results:
        raise ValueError("results: expected the rows of at least one split, got none")
    names = [[row.name for row in rows] for rows in results.values()]
    if len(names[0]) < 2 or any(other != names[0] for other in names):
        raise ValueError(f"results: expected the same >= 2 models on every split, got {names}")
    return names[0], np.array([[row.test_acc for row in rows] for rows in results.values()]) * 100


def _write_csv(out_csv: str | Path, header: Sequence[str], rows: Iterable[Sequence[object]]) -> Path:
    """Write a CSV (header, then rows) atomically; returns its path."""
    from heinsen_zoo.atomic import write_text_atomic

    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    write_text_atomic(out_csv, text.getvalue())
    return Path(out_csv)


def splits_table(results: Mapping[int, Sequence[Row]]) -> str:
    """Markdown: each split's test accuracy per model (validation in brackets), the mean ± standard deviation over
    splits, then the first model's lead over each other one (mean with its standard error over splits, per split,
    and on how many splits it is ahead, tied or behind).

    Args:
        results: split seed -> rows, the same models in the same order on every split.
    """
    models, test = _models(results)  # test: [n_splits, n_models] in %
    lines = ["| split seed | " + " | ".join(models) + " |", "|---" * (len(models) + 1) + "|"]
    for seed, rows in results.items():
        cells = [f"{100 * row.test_acc:.2f}% ({100 * row.val_acc:.2f}%)" for row in rows]
        lines.append(f"| {seed} | " + " | ".join(cells) + " |")
    spread = test.std(0, ddof=1) if len(test) > 1 else np.full(len(models), np.nan)
    cells = [
        f"{m:.2f}% ± {sd:.2f}" if np.isfinite(sd) else f"{m:.2f}%"
        for m, sd in zip(test.mean(0), spread, strict=True)
    ]
    lines += ["| mean ± s.d. | " + " | ".join(cells) + " |", ""]
    lines += [
        f"| {models[0]} − | mean lead on test ± s.e. | per split | ahead / tied / behind |",
        "|---|---|---|---|",
    ]
    for j, name in enumerate(models[1:], start=1):
        lead = np.round(test[:, 0] - test[:, j], 6)
        ahead, behind = int((lead > 0).sum()), int((lead < 0).sum())
        per_split = ", ".join(f"{d:+.2f}" for d in lead)
        lines.append(
            f"| {name} | {lead.mean():+.2f}{_standard_error(lead)} points | {per_split} | "
            f"{ahead} / {len(lead) - ahead - behind} / {behind} of {len(lead)} |"
        )
    return "\n".join(lines)


def _standard_error(values: np.ndarray) -> str:
    """`` ± s.e.`` of the mean of ``values`` (sample standard deviation / sqrt(n)); empty for one value."""
    if len(values) < 2:
        return ""
    return f" ± {values.std(ddof=1) / np.sqrt(len(values)):.2f}"


def write_splits_csv(out_csv: str | Path, results: Mapping[int, Sequence[Row]]) -> Path:
    """One CSV row per split and model (split seed, model, validation and test accuracy, train seconds), written
    atomically; returns the path."""
    _models(results)  # only its check: the same models on every split
    return _write_csv(
        out_csv,
        ["split_seed", "model", "validation_accuracy", "test_accuracy", "train_seconds"],
        (
            [seed, row.name, f"{row.val_acc:.6f}", f"{row.test_acc:.6f}", f"{row.seconds:.1f}"]
            for seed, rows in results.items()
            for row in rows
        ),
    )


def read_splits_csv(path: str | Path) -> dict[int, list[Row]]:
    """The results a :func:`write_splits_csv` file holds (split seed -> rows), e.g. to redraw :func:`plot_splits`."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"splits csv: {str(path)!r} does not exist (written by the demo's --split-seeds)"
        )
    results: dict[int, list[Row]] = {}
    with path.open(newline="") as handle:
        for line in csv.DictReader(handle):
            try:
                row = Row(line["model"], float(line["validation_accuracy"]), float(line["test_accuracy"]),
                          float(line["train_seconds"]))  # fmt: skip
                results.setdefault(int(line["split_seed"]), []).append(row)
            except (KeyError, TypeError, ValueError) as err:
                raise ValueError(f"splits csv {str(path)!r}: unreadable row {line} ({err})") from err
    _models(results)  # only its check: the same models on every split
    return results


def plot_splits(results: Mapping[int, Sequence[Row]], out_png: str | Path, title: str = "") -> Path:
    """Each split's test accuracy per model as a line across the models (paired: the same split's articles), and
    the mean over splits; written atomically as a PNG."""
    import textwrap

    from heinsen_zoo.curves import save_png
    from heinsen_zoo.explain import _plt

    models, test = _models(results)  # test: [n_splits, n_models] in %
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7.6, 4.2))
    x = np.arange(len(models))
    for seed, accs in zip(results, test, strict=True):
        ax.plot(x, accs, marker="o", alpha=0.7, label=f"split seed {seed}")
    ax.plot(x, test.mean(0), marker="D", color="black", linewidth=2.5, label="mean over splits")
    ax.set_xticks(x, [textwrap.fill(name, 24) for name in models], fontsize=7)
    ax.set_ylabel("test accuracy (%)")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))  # beside the plot, hiding no point
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return save_png(fig, out_png)


def confusion_matrix(true: np.ndarray, pred: np.ndarray, n_classes: int) -> np.ndarray:
    """Counts ``[n_classes, n_classes]``: row = true class, column = predicted class."""
    true, pred = np.asarray(true), np.asarray(pred)
    if true.shape != pred.shape:
        raise ValueError(f"pred: expected the shape of true {list(true.shape)}, got {list(pred.shape)}")
    counts = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(counts, (true, pred), 1)
    return counts


def plot_confusion_matrix(
    counts: np.ndarray, labels: Sequence[str], out_png: str | Path, title: str = ""
) -> Path:
    """Draw a confusion matrix (counts in each cell, colour = share of the true class); write a PNG atomically."""
    from heinsen_zoo.curves import save_png
    from heinsen_zoo.explain import _plt

    counts = np.asarray(counts)
    if counts.shape != (len(labels), len(labels)):
        raise ValueError(
            f"counts: expected shape [{len(labels)}, {len(labels)}] (one row per label), got {list(counts.shape)}"
        )
    share = counts / np.maximum(counts.sum(1, keepdims=True), 1)
    plt = _plt()
    fig, ax = plt.subplots(figsize=(4.8, 4.2))
    ax.imshow(share, cmap="Blues", vmin=0.0, vmax=1.0)
    for i in range(len(labels)):
        for j in range(len(labels)):
            if counts[i, j]:
                ax.text(
                    j,
                    i,
                    str(counts[i, j]),
                    ha="center",
                    va="center",
                    fontsize=9,
                    color="white" if share[i, j] > 0.5 else "black",
                )
    ax.set_xticks(range(len(labels)), labels, rotation=35, ha="right", fontsize=8)
    ax.set_yticks(range(len(labels)), labels, fontsize=8)
    ax.set_xlabel("predicted topic")
    ax.set_ylabel("true topic")
    if title:
        ax.set_title(title, fontsize=9)
    return save_png(fig, out_png)


def write_errors_csv(
    out_csv: str | Path,
    titles: Sequence[str],
    true: np.ndarray,
    preds: Mapping[str, np.ndarray],
    labels: Sequence[str],
) -> dict[str, int]:
    """List the articles the first model of ``preds`` gets wrong: one CSV row per article (its title, the true
    topic, each model's prediction), written atomically.

    Args:
        out_csv: the CSV to write.
        titles: one title per article (the articles in the order of ``true``).
        true: ``[n]`` true class indices.
        preds: model name -> ``[n]`` predicted class indices; the first model's errors are listed.
        labels: class names.

    Returns:
        For every other model, how many of the first model's errors it gets wrong too.
    """
    true = np.asarray(true)
    for name, pred in preds.items():
        if np.shape(pred) != true.shape or len(titles) != len(true):
            raise ValueError(
                f"preds[{name!r}]: expected {len(true)} predictions and titles (one per true label), got "
                f"{np.shape(pred)[0] if np.ndim(pred) else 0} predictions and {len(titles)} titles"
            )
    first, *others = preds
    wrong = np.flatnonzero(np.asarray(preds[first]) != true)
    _write_csv(
        out_csv,
        ["article", "true topic", *preds],
        ([titles[i], labels[true[i]], *(labels[pred[i]] for pred in preds.values())] for i in wrong),
    )
    return {name: int((np.asarray(preds[name])[wrong] != true[wrong]).sum()) for name in others}
