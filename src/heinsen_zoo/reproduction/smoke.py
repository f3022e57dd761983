"""Smoke stand-ins for every reproduction row: tiny random backbones + tiny data in the real formats.

What each row swaps in is the row's own ``smoke:`` entry (``configs/rows.yaml``, :mod:`.rows`).

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

from .rows import Row, load_rows


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


def smoke_config(row: Row, work: Path, results_dir: Path) -> dict[str, Any]:
    """The config (trainer/model/data sections) that swaps the row's ``smoke:`` stand-ins into its experiment.

    ``smoke.data``: tiny data (a task of :mod:`heinsen_zoo.data.smoke` or a DataModule class path);
    ``smoke.backbone``: a tiny random backbone kind (shared by rows under ``<results>/smoke/backbones``);
    ``smoke.pad_mode``; ``smoke.model``: model init_args, where ``"{n_classes}"`` is the stand-in data's class
    count and ``"{export}"`` the run's export folder; ``smoke.init_from``: the row whose smoke export this row
    starts from.
    """
    from heinsen_zoo.data.smoke import smoke_data_spec

    spec = row.smoke
    if not spec:
        raise KeyError(
            f"row {row.name!r}: no smoke stand-ins; add a `smoke:` entry to the row in {row.source}"
        )
    data, n_classes = smoke_data_spec(spec["data"], work / "data", batch_size=None, steps_per_epoch=3)
    data["init_args"]["num_workers"] = 0
    values = {"{n_classes}": n_classes, "{export}": str(work / "export")}
    model: dict[str, Any] = {
        k: values.get(v, v) if isinstance(v, str) else v for k, v in spec.get("model", {}).items()
    }
    if spec.get("backbone"):
        from heinsen_zoo.backbones.tiny import write_tiny_backbone

        kind = spec["backbone"]
        backbone = write_tiny_backbone(kind, results_dir / "smoke" / "backbones" / kind)
        model["d_depth"], model["d_emb"] = backbone.pop("d_depth"), backbone.pop("d_emb")
        if spec.get("pad_mode"):
            backbone["pad_mode"] = spec["pad_mode"]
        model["backbone"] = backbone
    if spec.get("init_from"):  # fine-tuned from another row's smoke head, as that row's recipe
        model["init_from"] = str(results_dir / "smoke" / spec["init_from"] / "export")
    return {"trainer": smoke_trainer(work), "model": {"init_args": model}, "data": data}


def _rank_and_group() -> tuple[int, bool]:
    """(this process's rank, whether a torch.distributed process group exists)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), True
    return int(os.environ.get("LOCAL_RANK", "0")) + int(os.environ.get("NODE_RANK", "0")), False


def prepare_smoke(row: Row | str, work: str | Path, results_dir: str | Path) -> list[str]:
    """Write the stand-ins of ``row`` under ``work``; return the CLI arguments that select them.

    Under DDP only rank 0 writes; the other ranks wait (barrier) or, when launched by rank 0 after it wrote,
    read the config it left.
    """
    row = row if isinstance(row, Row) else load_rows()[row]
    work, results_dir = Path(work), Path(results_dir)
    path = work / "smoke.yaml"
    rank, grouped = _rank_and_group()
    if rank == 0:
        work.mkdir(parents=True, exist_ok=True)
        config = smoke_config(row, work, results_dir)
        tmp = path.with_suffix(".yaml.tmp")
        tmp.write_text(yaml.safe_dump(json.loads(json.dumps(config)), sort_keys=False))
        tmp.replace(path)
    if grouped:
        import torch.distributed as dist

        dist.barrier()
    if not path.is_file():
        raise FileNotFoundError(f"smoke: rank {rank} expected the stand-ins config {path} written by rank 0")
    return ["--config", str(path)]
