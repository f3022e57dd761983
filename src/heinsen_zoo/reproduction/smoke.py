"""Smoke stand-ins for every reproduction row: tiny random backbones + tiny data in the real formats.

:func:`prepare_smoke` writes them under a work folder and returns the LightningCLI arguments that swap them
into the row's experiment (same task class, same DataModule class, same code path), on CPU, in seconds.
The training batch stays the experiment's (the paper's effective batch), so a smoke run under DDP
(``--devices 2``) shows the same ``effective_batch`` as a real one. A smoke number says the chain runs; it is
never a reproduction (the report marks it).

Under DDP the launched processes run the runner again: only the first process writes the stand-ins (before
it launches the others, or before a barrier when the process group already exists); the others read them.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import yaml

# row -> (smoke data task of heinsen_zoo.data.smoke, tiny backbone kind)
SMOKE_PLAN: dict[str, tuple[str, str]] = {
    "imagenet1k": ("imagenet", "beit"),
    "cifar10": ("cifar10", "beit"),
    "cifar100": ("cifar100", "beit"),
    "imdb": ("imdb", "bert"),
    "sst5": ("sst5", "bert"),
    "sst2": ("sst2", "bert"),
}


def smoke_trainer(work: Path) -> dict[str, Any]:
    """CPU trainer settings of every smoke run: 2 short epochs, logs under ``work/run``."""
    return {
        "accelerator": "cpu",
        "devices": 1,
        "strategy": "auto",
        "precision": "32-true",
        "max_epochs": 2,
        "default_root_dir": str(work / "run"),
        "log_every_n_steps": 1,
        "enable_model_summary": False,
    }


def _smoke_2022(row: str, work: Path, results_dir: Path) -> dict[str, Any]:
    from heinsen_zoo.backbones.tiny import write_tiny_backbone
    from heinsen_zoo.data.smoke import make_smoke_datamodule, write_smoke_data

    task, kind = SMOKE_PLAN[row]
    spec = write_tiny_backbone(
        kind, results_dir / "smoke" / "backbones" / kind
    )  # shared: sst2 starts from sst5
    d_depth, d_emb = spec.pop("d_depth"), spec.pop("d_emb")
    if kind != "beit":
        spec["pad_mode"] = "empty_chunk"  # the paper's rule, exercised end to end
    data = write_smoke_data(task, work / "data", image_size=32, batch_size=None, steps_per_epoch=3)
    data["init_args"]["num_workers"] = 0
    n_classes = make_smoke_datamodule(task, work / "data", image_size=32).num_classes
    model: dict[str, Any] = {
        "backbone": spec,
        "d_depth": d_depth,
        "d_emb": d_emb,
        "n_classes": n_classes,
        "top_k": [1],
        "labels": None,
        "export_dir": str(work / "export"),
    }
    if row == "sst2":  # fine-tuned from the smoke SST-5 head, as the paper's recipe
        model["init_from"] = str(results_dir / "smoke" / "sst5" / "export")
    return {"trainer": smoke_trainer(work), "model": {"init_args": model}, "data": data}


def _rank_and_group() -> tuple[int, bool]:
    """(this process's rank, whether a torch.distributed process group exists)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), True
    return int(os.environ.get("LOCAL_RANK", "0")) + int(os.environ.get("NODE_RANK", "0")), False


def prepare_smoke(row: str, work: str | Path, results_dir: str | Path) -> list[str]:
    """Write the stand-ins of ``row`` under ``work``; return the CLI arguments that select them.

    Under DDP only rank 0 writes; the other ranks wait (barrier) or, when launched by rank 0 after it wrote,
    read the config it left.
    """
    work, results_dir = Path(work), Path(results_dir)
    path = work / "smoke.yaml"
    rank, grouped = _rank_and_group()
    if rank == 0:
        work.mkdir(parents=True, exist_ok=True)
        if row in SMOKE_PLAN:
            config = _smoke_2022(row, work, results_dir)
        else:
            from heinsen_zoo.reproduction.smoke2019 import smoke_2019_config

            config = smoke_2019_config(row, work)
        tmp = path.with_suffix(".yaml.tmp")
        tmp.write_text(yaml.safe_dump(json.loads(json.dumps(config)), sort_keys=False))
        tmp.replace(path)
    if grouped:
        import torch.distributed as dist

        dist.barrier()
    if not path.is_file():
        raise FileNotFoundError(f"smoke: rank {rank} expected the stand-ins config {path} written by rank 0")
    return ["--config", str(path)]
