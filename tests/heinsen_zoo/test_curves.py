"""Learning curves from a Lightning CSVLogger metrics.csv (heinsen_zoo.curves)."""

from __future__ import annotations

import os

import pytest
from lightning.pytorch.loggers import CSVLogger

from heinsen_zoo.curves import MetricPoint, plot_learning_curves, read_metrics


def _write_lightning_metrics(root, epochs: int = 3, steps_per_epoch: int = 5) -> str:
    """A metrics.csv written by Lightning's own CSVLogger, in the order a Trainer logs."""
    logger = CSVLogger(root, name="logs")
    step = 0
    for epoch in range(epochs):
        for _ in range(steps_per_epoch):
            logger.log_metrics({"lr-RAdam": 1e-3 * (1 + step)}, step=step)
            logger.log_metrics({"train/loss": 2.0 / (1 + step), "epoch": epoch}, step=step)
            step += 1
        logger.log_metrics(
            {"val/acc": 0.5 + 0.1 * epoch, "val/loss": 1.0 - 0.2 * epoch, "epoch": epoch}, step=step - 1
        )
    logger.save()
    return f"{logger.log_dir}/metrics.csv"


def test_reads_and_plots_a_csvlogger_file(tmp_path):
    path = _write_lightning_metrics(tmp_path)
    series = read_metrics(path)
    assert set(series) == {"lr-RAdam", "train/loss", "val/acc", "val/loss"}
    assert len(series["train/loss"]) == 15 and len(series["lr-RAdam"]) == 15
    assert series["val/acc"] == [MetricPoint(4, 0, 0.5), MetricPoint(9, 1, 0.6), MetricPoint(14, 2, 0.7)]
    assert series["lr-RAdam"][0].epoch is None
    out = plot_learning_curves(path, tmp_path / "sub" / "curves.png", title="t")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in out.parent.iterdir()] == ["curves.png"]  # no temporary left behind
    umask = os.umask(0)
    os.umask(umask)
    assert out.stat().st_mode & 0o777 == 0o666 & ~umask  # a new file's usual mode, not mkstemp's 0600


def test_accepts_a_dataframe_and_works_without_lr(tmp_path):
    pd = pytest.importorskip("pandas")
    frame = pd.read_csv(_write_lightning_metrics(tmp_path, epochs=2)).drop(columns=["lr-RAdam"])
    assert len(read_metrics(frame)["val/acc"]) == 2
    assert plot_learning_curves(frame, tmp_path / "c.png").stat().st_size > 1000


def test_bad_inputs_name_the_problem(tmp_path):
    with pytest.raises(FileNotFoundError, match="metrics.*nowhere.csv"):
        read_metrics(tmp_path / "nowhere.csv")
    (tmp_path / "nostep.csv").write_text("epoch,train/loss\n0,1.0\n")
    with pytest.raises(ValueError, match="no 'step' column"):
        read_metrics(tmp_path / "nostep.csv")
    (tmp_path / "text.csv").write_text("epoch,step,train/loss\n0,1,abc\n")
    with pytest.raises(ValueError, match="row 2: not a number"):
        read_metrics(tmp_path / "text.csv")
    (tmp_path / "other.csv").write_text("epoch,step,test/acc\n0,1,0.5\n")
    with pytest.raises(ValueError, match=r"'train/loss' or 'val/acc'.*\['test/acc'\]"):
        plot_learning_curves(tmp_path / "other.csv", tmp_path / "x.png")
    with pytest.raises(TypeError, match="metrics.csv path or a pandas DataFrame"):
        read_metrics(42)
