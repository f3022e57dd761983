"""Learning curves from a Lightning ``CSVLogger`` ``metrics.csv``, as one PNG.

Lightning's CSVLogger writes one row per logging call, with empty cells for the metrics not logged in it:
``train/loss`` every ``log_every_n_steps`` steps, ``val/acc`` and ``val/loss`` once per validation (with
their ``epoch``), and ``lr-<Optimizer>`` (from ``LearningRateMonitor``) per step. :func:`plot_learning_curves`
draws up to three panels sharing the optimizer-step axis: training loss (the logged points and their mean per
epoch), validation accuracy (one point per validation, labelled with its epoch) and validation loss, and the
learning rate when one was logged.

Example:
    >>> import tempfile, pathlib
    >>> rows = "epoch,step,train/loss,val/acc,lr-RAdam\\n0,9,1.5,,\\n,9,,,0.001\\n0,19,,0.8,\\n1,29,0.9,,\\n1,39,,0.9,\\n"
    >>> folder = pathlib.Path(tempfile.mkdtemp())
    >>> _ = (folder / "metrics.csv").write_text(rows)
    >>> sorted(read_metrics(folder / "metrics.csv"))
    ['lr-RAdam', 'train/loss', 'val/acc']
    >>> plot_learning_curves(folder / "metrics.csv", folder / "curves.png").name
    'curves.png'
"""

from __future__ import annotations

import csv
import math
import os
from collections import defaultdict
from pathlib import Path
from typing import Any, NamedTuple

from heinsen_zoo.atomic import atomic_path

__all__ = ["MetricPoint", "read_metrics", "plot_learning_curves", "save_png"]


class MetricPoint(NamedTuple):
    """One logged value: the optimizer step, the epoch (None when the row had none) and the value."""

    step: int
    epoch: int | None
    value: float


def _rows(source: Any) -> list[dict[str, Any]]:
    """Rows of a metrics.csv path, or of a pandas DataFrame (anything with ``to_dict("records")``)."""
    if hasattr(source, "to_dict") and hasattr(source, "columns"):
        return list(source.to_dict("records"))
    if not isinstance(source, (str, os.PathLike)):
        raise TypeError(
            f"metrics: expected a metrics.csv path or a pandas DataFrame, got {type(source).__name__}"
        )
    path = Path(source)
    if not path.is_file():
        raise FileNotFoundError(
            f"metrics: {str(path)!r} does not exist (expected a Lightning CSVLogger metrics.csv)"
        )
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def _number(value: Any) -> float | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    number = float(value)
    return None if math.isnan(number) else number


def read_metrics(source: str | os.PathLike | Any) -> dict[str, list[MetricPoint]]:
    """Every metric column of a CSVLogger metrics.csv (or DataFrame) as its logged points, in file order.

    Raises ValueError naming the file when it has no ``step`` column or a cell is not a number.
    """
    rows = _rows(source)
    name = str(source) if isinstance(source, (str, os.PathLike)) else "DataFrame"
    if not rows:
        raise ValueError(f"metrics: {name!r} has no rows")
    if "step" not in rows[0]:
        raise ValueError(f"metrics: {name!r} has no 'step' column (columns: {sorted(rows[0])})")
    series: dict[str, list[MetricPoint]] = defaultdict(list)
    for line, row in enumerate(rows, start=2):
        try:
            step = _number(row.get("step"))
            epoch = _number(row.get("epoch"))
            for column, cell in row.items():
                if column in ("step", "epoch") or column is None:
                    continue
                value = _number(cell)
                if value is not None and step is not None:
                    series[column].append(
                        MetricPoint(int(step), None if epoch is None else int(epoch), value)
                    )
        except ValueError as err:
            raise ValueError(f"metrics: {name!r} row {line}: not a number ({err})") from err
    return dict(series)


def _epoch_means(points: list[MetricPoint]) -> list[tuple[float, float]]:
    """(mean step, mean value) of the points of each epoch."""
    groups: dict[int, list[MetricPoint]] = defaultdict(list)
    for p in points:
        if p.epoch is not None:
            groups[p.epoch].append(p)
    return [
        (sum(p.step for p in group) / len(group), sum(p.value for p in group) / len(group))
        for _, group in sorted(groups.items())
    ]


def _xy(points: list[MetricPoint], scale: float = 1.0) -> tuple[list[int], list[float]]:
    return [p.step for p in points], [scale * p.value for p in points]


def plot_learning_curves(
    metrics: str | os.PathLike | Any,
    out_png: str | os.PathLike,
    title: str = "",
    train_loss: str = "train/loss",
    val_acc: str = "val/acc",
    val_loss: str = "val/loss",
) -> Path:
    """Draw training loss, validation accuracy (and loss) and the learning rate against the step; write a PNG.

    Args:
        metrics: a CSVLogger ``metrics.csv`` path, or a pandas DataFrame read from one.
        out_png: the PNG to write (parent folders are created; written atomically).
        title: figure title.
        train_loss, val_acc, val_loss: column names of those metrics; the learning rate is every column
            starting with ``lr-`` (LearningRateMonitor's names).

    Raises ValueError when neither ``train_loss`` nor ``val_acc`` was logged (naming the columns present).
    """
    from heinsen_zoo.explain import _plt

    series = read_metrics(metrics)
    if train_loss not in series and val_acc not in series:
        raise ValueError(
            f"metrics: expected a {train_loss!r} or {val_acc!r} column with values, got columns {sorted(series)}"
        )
    lr_columns = sorted(c for c in series if c.startswith("lr-"))
    panels = ["loss", "acc"] + (["lr"] if lr_columns else [])
    plt = _plt()
    fig, axes = plt.subplots(len(panels), 1, figsize=(7.0, 2.3 * len(panels)), sharex=True, squeeze=False)
    axes = axes[:, 0]

    ax = axes[0]
    if train_loss in series:
        points = series[train_loss]
        ax.plot(
            *_xy(points),
            ".",
            ms=2.5,
            alpha=0.35,
            color="tab:blue",
            label="train loss (logged steps)",
        )
        means = _epoch_means(points)
        if means:
            ax.plot(
                *zip(*means, strict=True), "-o", ms=3.5, color="tab:blue", label="train loss (epoch mean)"
            )
    if val_loss in series:
        points = series[val_loss]
        ax.plot(
            *_xy(points),
            "-s",
            ms=3.5,
            color="tab:orange",
            label="validation loss",
        )
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper right")

    ax = axes[1]
    if val_acc in series:
        points = series[val_acc]
        ax.plot(*_xy(points, 100.0), "-o", ms=3.5, color="tab:green")
        best = max(points, key=lambda p: p.value)
        last = points[-1]
        ax.set_title(
            f"validation accuracy: last {100 * last.value:.2f}% (epoch {last.epoch}), "
            f"best {100 * best.value:.2f}% (epoch {best.epoch})",
            fontsize=8,
            loc="left",
        )
    ax.set_ylabel("val accuracy (%)")
    ax.grid(alpha=0.3)

    if lr_columns:
        ax = axes[2]
        for column in lr_columns:
            points = series[column]
            ax.plot(*_xy(points), "-", label=column)
        ax.set_ylabel("learning rate")
        ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="upper right")
    axes[-1].set_xlabel("optimizer step")
    if title:
        fig.suptitle(title, fontsize=10)
    return save_png(fig, out_png)


def save_png(fig: Any, out_png: str | os.PathLike, dpi: int = 110) -> Path:
    """Lay out a matplotlib figure, write it as PNG atomically (a temporary file in the same folder, then
    renamed) and close it."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    try:
        with atomic_path(out_png) as tmp:
            fig.savefig(tmp, format="png", dpi=dpi)
    finally:
        plt.close(fig)
    return Path(out_png)
