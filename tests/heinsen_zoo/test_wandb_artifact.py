"""The exported head as a W&B model artifact, in offline mode (WANDB_MODE=offline: nothing leaves the machine)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch

wandb = pytest.importorskip("wandb")

from heinsen_zoo.model import RoutingClassifier  # noqa: E402
from heinsen_zoo.wandb_artifact import log_export_artifact, log_to_wandb_loggers  # noqa: E402
from heinsen_zoo.zoo.checksums import ChecksumMismatchError  # noqa: E402
from heinsen_zoo.zoo.hub import save_pretrained  # noqa: E402

SPEC = {"source": "hf", "id": "roberta-large", "revision": "5069d8a", "kind": "text"}


@pytest.fixture()
def offline(monkeypatch, tmp_path):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    return tmp_path


def export(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    model = RoutingClassifier(SPEC, n_classes=2, d_depth=3, d_emb=16, n_hid=4, labels=["neg", "pos"])
    return save_pretrained(model, tmp_path / "export", extra_config={"metrics": {"test/acc": 0.5}})


def run_records(root: Path, *expected: bytes, timeout: float = 20.0) -> bytes:
    """The bytes of the offline run's record log (protobuf records; names appear verbatim). wandb's service
    process may still be flushing it after ``run.finish()`` returns: wait (bounded) until every ``expected``
    byte string is there, then return what the file holds."""
    deadline = time.monotonic() + timeout
    while True:
        logs = list(root.rglob("offline-run-*/run-*.wandb"))
        data = logs[0].read_bytes() if len(logs) == 1 else b""
        if (len(logs) == 1 and all(e in data for e in expected)) or time.monotonic() > deadline:
            assert len(logs) == 1, f"expected one offline run log under {root}, found {logs}"
            return data
        time.sleep(0.2)


def test_export_logged_as_model_artifact_offline(offline):
    out = export(offline)
    run = wandb.init(project="heinsen-routing", name="cifar10 seed 0", dir=str(offline), mode="offline")
    try:
        artifact = log_export_artifact(out, run)
    finally:
        run.finish()
    assert artifact.type == "model" and artifact.name.startswith("cifar10-seed-0-head")
    assert sorted(artifact.manifest.entries) == ["README.md", "config.json", "model.safetensors"]
    assert artifact.metadata["head"] == {"d_depth": 3, "d_emb": 16, "n_classes": 2, "n_hid": 4}
    assert artifact.metadata["backbone"]["revision"] == "5069d8a"
    assert artifact.metadata["metrics"] == {"test/acc": 0.5}
    records = run_records(offline, b"cifar10-seed-0-head", b"model.safetensors", b"latest")
    assert b"cifar10-seed-0-head" in records and b"model.safetensors" in records and b"latest" in records


def test_lightning_wandb_logger_gets_the_artifact(offline):
    from lightning.pytorch.loggers import CSVLogger, WandbLogger

    out = export(offline)
    logger = WandbLogger(project="heinsen-routing", name="demo", save_dir=str(offline), offline=True)
    trainer = type("T", (), {"loggers": [CSVLogger(str(offline)), logger]})()
    try:
        (artifact,) = log_to_wandb_loggers(trainer, out)
    finally:
        logger.experiment.finish()
    assert artifact.name.startswith("demo-head")
    assert b"demo-head" in run_records(offline, b"demo-head")


def test_corrupt_export_is_not_logged(offline):
    out = export(offline)
    weights = out / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1] + b"\x01")
    with pytest.raises(ChecksumMismatchError):
        log_export_artifact(out, run=object())
    with pytest.raises(ValueError, match="no active W&B run"):
        log_export_artifact(export(offline / "again"))


def test_fit_with_wandb_logger_logs_the_exported_head(offline):
    """LOGGER=wandb: ExportPretrainedHead exports at fit end and logs the export as a model artifact."""
    import lightning.pytorch as pl
    from lightning.pytorch.loggers import WandbLogger

    from heinsen_zoo.tasks import RoutingClassificationTask

    torch.manual_seed(0)
    task = RoutingClassificationTask(
        backbone=SPEC, n_classes=2, d_depth=3, d_emb=16, n_hid=4, mixup_alpha=None,
        export_dir=str(offline / "export"),
    )  # fmt: skip
    batches = [{"hidden": torch.randn(4, 5, 3, 16), "label": torch.tensor([0, 1, 0, 1])}]
    logger = WandbLogger(project="heinsen-routing", name="tiny-fit", save_dir=str(offline), offline=True)
    trainer = pl.Trainer(
        max_steps=1, accelerator="cpu", logger=logger, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False,
    )  # fmt: skip
    try:
        trainer.fit(task, train_dataloaders=torch.utils.data.DataLoader(batches, batch_size=None))
    finally:
        logger.experiment.finish()
    assert (offline / "export" / "model.safetensors").is_file()
    records = run_records(offline, b"tiny-fit-head", b"model.safetensors")
    assert b"tiny-fit-head" in records and b"model.safetensors" in records
