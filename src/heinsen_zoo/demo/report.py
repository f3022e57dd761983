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
"""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np

__all__ = ["Row", "results_table", "confusion_matrix", "plot_confusion_matrix", "write_errors_csv"]


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
    from heinsen_zoo.atomic import write_text_atomic

    true = np.asarray(true)
    for name, pred in preds.items():
        if np.shape(pred) != true.shape or len(titles) != len(true):
            raise ValueError(
                f"preds[{name!r}]: expected {len(true)} predictions and titles (one per true label), got "
                f"{np.shape(pred)[0] if np.ndim(pred) else 0} predictions and {len(titles)} titles"
            )
    first, *others = preds
    wrong = np.flatnonzero(np.asarray(preds[first]) != true)
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(["article", "true topic", *preds])
    for i in wrong:
        writer.writerow([titles[i], labels[true[i]], *(labels[pred[i]] for pred in preds.values())])
    write_text_atomic(out_csv, text.getvalue())
    return {name: int((np.asarray(preds[name])[wrong] != true[wrong]).sum()) for name in others}
