"""The demo's outputs: the results table (markdown) and the test confusion matrix (PNG).

Example:
    >>> import numpy as np
    >>> confusion_matrix(np.array([0, 1, 1]), np.array([0, 1, 0]), 2).tolist()
    [[1, 0], [1, 1]]
    >>> print(results_table([Row("routing head", 0.99, 0.985, 100.0)]))
    | model | validation accuracy | test accuracy | train time |
    |---|---|---|---|
    | routing head | 99.00% | 98.50% | 100 s |
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np

__all__ = ["Row", "results_table", "confusion_matrix", "plot_confusion_matrix"]


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
