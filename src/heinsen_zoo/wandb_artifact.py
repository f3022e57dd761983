"""Log an exported head to Weights & Biases as a ``model`` artifact (``LOGGER=wandb`` / ``--logger wandb``).

:func:`log_export_artifact` adds the export's files (``config.json``, ``model.safetensors`` and, when
present, ``README.md`` and ``model.onnx``) to a ``wandb.Artifact`` of type ``model`` whose metadata is
the export's config (architecture, head arguments, backbone spec with revision, labels, padding,
preprocessing, metrics, sha256), and logs it to the run with aliases (``latest`` by default). The
artifact's name is ``<run name>-head`` unless given (W&B names allow letters, digits, ``-``, ``_``, ``.``).

:class:`heinsen_zoo.tasks.ExportPretrainedHead` calls it at the end of fit when the trainer has a
``WandbLogger``, so ``heinsen-zoo fit --experiment NAME --logger wandb`` (with
``model.init_args.export_dir`` set) records the trained head as a versioned artifact. Offline
(``WANDB_MODE=offline``, the default here without ``WANDB_API_KEY``) the artifact is stored in the run
folder and uploaded by ``wandb sync``. Use it later with
``run.use_artifact("ENTITY/PROJECT/NAME:latest").download()`` and ``from_pretrained(<that folder>)``.

Example:
    >>> _artifact_name("cifar10 run/3")
    'cifar10-run-3-head'
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

__all__ = ["ARTIFACT_FILES", "log_export_artifact", "log_to_wandb_loggers"]

ARTIFACT_FILES = ("config.json", "model.safetensors", "README.md", "model.onnx")


def _artifact_name(base: str) -> str:
    cleaned = re.sub(r"[^A-Za-z0-9_.-]+", "-", base).strip("-.") or "heinsen-zoo"
    return cleaned if cleaned.endswith("-head") else f"{cleaned}-head"


def _plain(value: Any) -> Any:
    """JSON-like copy (W&B metadata must be plain)."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def log_export_artifact(
    export_dir: str | os.PathLike,
    run: Any = None,
    *,
    name: str | None = None,
    aliases: Iterable[str] = ("latest",),
    description: str | None = None,
) -> Any:
    """Log ``export_dir`` as a W&B ``model`` artifact to ``run`` (default: ``wandb.run``); returns it.

    The export is validated first (config schema; the weights' SHA-256 against ``config.json``).
    """
    import wandb

    from heinsen_zoo.zoo import checksums, hub

    export_dir = Path(export_dir)
    config = hub.read_config(export_dir)
    recorded = (config.get("sha256") or {}).get(hub.WEIGHTS_NAME)
    checksums.verify(export_dir / hub.WEIGHTS_NAME, recorded, origin=str(export_dir / hub.CONFIG_NAME))
    run = run if run is not None else wandb.run
    if run is None:
        raise ValueError("log_export_artifact: no active W&B run; call wandb.init() or pass run=")
    artifact = wandb.Artifact(
        name=_artifact_name(name or getattr(run, "name", None) or config.get("name") or "heinsen-zoo"),
        type="model",
        description=description
        or f"heinsen-zoo export: {config['architecture']} {config['head']} over {(config.get('backbone') or {}).get('id')}",
        metadata=_plain(config),
    )
    for filename in ARTIFACT_FILES:
        if (export_dir / filename).is_file():
            artifact.add_file(str(export_dir / filename), name=filename)
    run.log_artifact(artifact, aliases=list(aliases))
    return artifact


def log_to_wandb_loggers(trainer: Any, export_dir: str | os.PathLike) -> list[Any]:
    """Log ``export_dir`` to every ``WandbLogger`` of a Lightning trainer; returns the artifacts."""
    try:
        from lightning.pytorch.loggers import WandbLogger
    except ImportError:  # pragma: no cover - lightning is a zoo dependency
        return []
    artifacts = []
    for logger in getattr(trainer, "loggers", []) or []:
        if isinstance(logger, WandbLogger):
            run = logger.experiment
            artifacts.append(log_export_artifact(export_dir, run, name=getattr(run, "name", None)))
    return artifacts
