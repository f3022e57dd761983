"""Reproduction runs write training-curve PNGs from their CSV log, and the report links them."""

from __future__ import annotations

from pathlib import Path

from heinsen_zoo.reproduction.expected import load_expected
from heinsen_zoo.reproduction.report import ResultRecord, load_results, render_report, write_result
from heinsen_zoo.reproduction.runner import _plot_curves


def csv_logger_with_metrics(root: Path):
    from lightning.pytorch.loggers import CSVLogger

    logger = CSVLogger(str(root), name="logs")
    folder = Path(logger.log_dir)
    folder.mkdir(parents=True)
    rows = ["epoch,step,train/loss,val/acc,val/loss,lr-RAdam"]
    for step in range(1, 41):
        epoch = (step - 1) // 10
        rows.append(f"{epoch},{step},{2.0 / step:.4f},,,{1e-3 * min(1.0, step / 12):.6f}")
        if step % 10 == 0:
            rows.append(f"{epoch},{step},,{0.5 + 0.1 * epoch:.2f},{1.0 / (epoch + 1):.3f},")
    (folder / "metrics.csv").write_text("\n".join(rows) + "\n")
    return logger


def test_run_curves_png_is_written_and_linked(tmp_path):
    results = tmp_path / "results"
    trainer = type("Trainer", (), {"loggers": [csv_logger_with_metrics(tmp_path / "run")]})()
    relative = _plot_curves(trainer, results, "cifar10", smoke=True)
    assert relative == "curves/cifar10.smoke.png"
    png = results / relative
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    write_result(
        ResultRecord(row="cifar10", value=50.0, wall_s=1.0, gpus=0, smoke=True, curves_png=relative), results
    )
    rows = load_expected()
    text, _ = render_report(rows, ["cifar10"], load_results(results, ["cifar10"], smoke=True))
    assert "- cifar10: [curves/cifar10.smoke.png](curves/cifar10.smoke.png)" in text
    # The link is relative to the report's folder (results/REPORT.smoke.md).
    assert (results / "curves" / "cifar10.smoke.png").is_file()


def test_no_csv_log_means_no_curves(tmp_path):
    trainer = type("Trainer", (), {"loggers": []})()
    assert _plot_curves(trainer, tmp_path, "cifar10", smoke=False) == ""
    old = ResultRecord(row="cifar10", value=99.0, wall_s=1.0, gpus=1)  # results written before curves existed
    text, _ = render_report(load_expected(), ["cifar10"], {"cifar10": old})
    assert "Training curves" not in text


def test_results_file_round_trips_curves_field(tmp_path):
    record = ResultRecord(row="imdb", value=96.0, wall_s=3.0, gpus=1, curves_png="curves/imdb.png")
    path = write_result(record, tmp_path)
    assert ResultRecord.from_json(path).curves_png == "curves/imdb.png"


def test_tested_head_is_exported_with_its_test_metrics(tmp_path):
    import json

    import torch

    from heinsen_zoo.reproduction.runner import _export_tested_head
    from heinsen_zoo.tasks import RoutingClassificationTask

    spec = {"source": "hf", "id": "roberta-large", "revision": "5069d8a", "kind": "text"}
    task = RoutingClassificationTask(spec, n_classes=2, d_depth=3, d_emb=16, n_hid=4, mixup_alpha=None)
    trainer = type("Trainer", (), {"loggers": [], "datamodule": None})()
    metrics = {"test/acc": torch.tensor(0.75), "test/loss": 0.5, "other": 1.0}
    out = _export_tested_head(task, trainer, tmp_path / "run", metrics)
    config = json.loads((out / "config.json").read_text())
    assert config["metrics"] == {"test/acc": 0.75, "test/loss": 0.5}
    assert "75.0" in (out / "README.md").read_text()  # the card shows the measured accuracy in percent
    assert _export_tested_head(object(), trainer, tmp_path / "other", metrics) is None
