"""What a reproduction run records about itself, so a number says how it was obtained.

* :class:`BatchProbe` (a Lightning callback) measures, on every rank, the training batch each process
  loads per step and the example indices of the run's first step; at the end of fit the ranks' numbers are
  gathered, giving the measured effective batch (what one optimizer step saw, all processes together) and
  whether the ranks' first-step examples were disjoint. It writes them to ``<root>/batch_probe.json``.
* :func:`git_commit`, :func:`backbone_of`, :func:`device_name`: the code version, the backbone (id and
  pinned revision) and the hardware of the run.

Example:
    >>> probe = BatchProbe()
    >>> probe.summary()["effective_batch"] is None      # nothing measured before a fit
    True
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch

from .expected import repo_root

__all__ = ["BatchProbe", "backbone_of", "device_name", "git_commit"]


def _batch_size_and_indices(batch: Any) -> tuple[int | None, list[int] | None]:
    if not isinstance(batch, Mapping) or "label" not in batch:
        return None, None
    labels = batch["label"]
    size = int(labels.shape[0]) if isinstance(labels, torch.Tensor) else len(labels)
    index = batch.get("index")
    indices = [int(i) for i in index.tolist()] if isinstance(index, torch.Tensor) else None
    return size, indices


class BatchProbe(pl.Callback):
    """Measure the per-process and effective training batch and the first step's examples per rank."""

    def __init__(self, out_dir: str | Path | None = None) -> None:
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.max_batch = 0
        self.first_step: list[int] | None = None
        self.gathered: list[dict[str, Any]] = []
        self.accumulate = 1
        self.train_dataset_size: int | None = None

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        size, indices = _batch_size_and_indices(batch)
        if size is None:
            return
        self.max_batch = max(self.max_batch, size)
        if self.first_step is None:
            self.first_step = indices if indices is not None else []

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        mine = {
            "rank": int(trainer.global_rank),
            "per_device_batch": self.max_batch,
            "first_step_indices": self.first_step or [],
        }
        if torch.distributed.is_available() and torch.distributed.is_initialized() and trainer.world_size > 1:
            gathered: list[Any] = [None] * torch.distributed.get_world_size()
            torch.distributed.all_gather_object(gathered, mine)
            self.gathered = sorted(gathered, key=lambda item: item["rank"])
        else:
            self.gathered = [mine]
        self.accumulate = int(trainer.accumulate_grad_batches or 1)
        loader = trainer.train_dataloader
        self.train_dataset_size = (
            len(loader.dataset) if hasattr(getattr(loader, "dataset", None), "__len__") else None
        )
        if self.out_dir is not None and trainer.is_global_zero:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            (self.out_dir / "batch_probe.json").write_text(json.dumps(self.summary(), indent=2) + "\n")

    def summary(self) -> dict[str, Any]:
        """``per_device_batch`` (list per rank), ``effective_batch`` and ``first_step_disjoint``."""
        if not self.gathered:
            return {"per_device_batch": [], "effective_batch": None, "first_step_disjoint": None, "ranks": []}
        per_rank = [item["per_device_batch"] for item in self.gathered]
        firsts = [item["first_step_indices"] for item in self.gathered]
        flat = [i for first in firsts for i in first]
        disjoint = len(flat) == len(set(flat)) if all(firsts) else None
        return {
            "per_device_batch": per_rank,
            "effective_batch": sum(per_rank) * self.accumulate,
            "first_step_disjoint": disjoint,
            "train_dataset_size": self.train_dataset_size,
            "ranks": self.gathered,
        }


def git_commit() -> str:
    """``git rev-parse HEAD`` of the repository (``+dirty`` when tracked files differ), else ``unknown``."""
    root = repo_root()
    try:
        head = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        dirty = (
            subprocess.run(
                ["git", "-C", str(root), "diff", "--quiet", "HEAD", "--"], capture_output=True, timeout=30
            ).returncode
            != 0
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return head + ("+dirty" if dirty else "")


def backbone_of(model: Any) -> dict[str, Any]:
    """``{"id", "revision", "source"}`` of the model's backbone spec (all None without a backbone)."""
    spec = getattr(getattr(model, "hparams", None), "get", lambda _key: None)("backbone")
    if not isinstance(spec, Mapping):
        return {"id": None, "revision": None, "source": None}
    return {
        "id": spec.get("id") or spec.get("local_path"),
        "revision": spec.get("revision"),
        "source": spec.get("source"),
    }


def device_name(trainer: pl.Trainer) -> str:
    """``"2x NVIDIA H200"``, ``"1x cpu"``... (processes x device) of a trainer."""
    try:
        root = trainer.strategy.root_device
        if root.type == "cuda":
            return f"{trainer.world_size}x {torch.cuda.get_device_name(root)}"
    except Exception:  # noqa: BLE001 - best-effort description only
        pass
    return "cpu" if trainer.world_size == 1 else f"{trainer.world_size}x cpu"
