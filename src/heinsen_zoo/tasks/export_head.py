"""A callback that exports the trained routing head at the end of fit (``config.json`` + safetensors)."""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import rank_zero_info

__all__ = ["ExportPretrainedHead"]


class ExportPretrainedHead(pl.Callback):
    """At the end of fit, export the trained head to ``export_dir`` (global rank zero only).

    The final ``val/*`` and ``test/*`` metrics the trainer holds go into ``config.json["metrics"]``; the
    preprocessing recorded is the task's ``preprocessing`` hyperparameter, else the datamodule's
    ``preprocessing`` attribute (a dict, or a method returning one), else none. With a ``WandbLogger``
    (``--logger wandb``) the export is also logged as a W&B ``model`` artifact (:mod:`heinsen_zoo.wandb_artifact`).

    Example:
        >>> ExportPretrainedHead("exports/cifar10").export_dir
        PosixPath('exports/cifar10')
    """

    def __init__(self, export_dir: str | Path) -> None:
        if not isinstance(export_dir, (str, Path)) or not str(export_dir):
            raise ValueError(f"export_dir: expected a non-empty path, got {export_dir!r}")
        self.export_dir = Path(export_dir)

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        if not callable(getattr(pl_module, "export", None)) or not hasattr(
            pl_module.hparams, "preprocessing"
        ):
            raise TypeError(
                f"ExportPretrainedHead: expected a RoutingClassificationTask, got {type(pl_module).__name__}"
            )
        metrics = {
            k: float(v)
            for k, v in trainer.callback_metrics.items()
            if k.startswith(("val/", "test/")) and isinstance(v, torch.Tensor) and v.numel() == 1
        }
        preprocessing = pl_module.hparams.preprocessing
        if preprocessing is None and trainer.datamodule is not None:
            preprocessing = getattr(trainer.datamodule, "preprocessing", None)
            preprocessing = preprocessing() if callable(preprocessing) else preprocessing
        pl_module.export(self.export_dir, metrics, preprocessing)
        rank_zero_info(f"ExportPretrainedHead: head exported to {self.export_dir}")
        from heinsen_zoo.wandb_artifact import log_to_wandb_loggers

        for artifact in log_to_wandb_loggers(
            trainer, self.export_dir
        ):  # LOGGER=wandb: a versioned model artifact
            rank_zero_info(f"ExportPretrainedHead: logged W&B model artifact {artifact.name}")
