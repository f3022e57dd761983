"""Experiment configs: where they are, and ``--experiment/--gpus/--logger`` expanded into LightningCLI arguments."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

__all__ = [
    "LIGHTNING_SUBCOMMANDS",
    "LOGGERS",
    "configs_dir",
    "expand_experiment_args",
    "experiment_config_file",
    "experiment_path",
    "list_experiments",
]

LIGHTNING_SUBCOMMANDS = ("fit", "validate", "test", "predict")
LOGGERS = {
    "csv": "lightning.pytorch.loggers.CSVLogger",
    "tensorboard": "lightning.pytorch.loggers.TensorBoardLogger",
    "wandb": "lightning.pytorch.loggers.WandbLogger",
}


def configs_dir() -> Path:
    """The ``configs/`` folder: ``$HEINSEN_CONFIGS`` or the package's own (``heinsen_zoo/configs``, package
    data, so a wheel install has them; the repository's top-level ``configs`` links to it)."""
    env = os.environ.get("HEINSEN_CONFIGS")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[1] / "configs"


def experiment_path(name: str) -> Path:
    """Resolve an experiment name (``cifar10``) or a YAML path to an existing file."""
    candidate = Path(name)
    if candidate.suffix in (".yaml", ".yml") and candidate.is_file():
        return candidate
    path = configs_dir() / "experiments" / f"{name}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in (configs_dir() / "experiments").glob("*.yaml"))
        raise SystemExit(f"--experiment: no experiment named {name!r} (looked for {path}); known: {known}")
    return path


def list_experiments() -> dict[str, str]:
    """Experiment names with the first comment line of each file (its paper row)."""
    out = {}
    for path in sorted((configs_dir() / "experiments").glob("*.yaml")):
        first = path.read_text().splitlines()[0] if path.stat().st_size else ""
        out[path.stem] = first.lstrip("# ").strip()
    return out


def _pop_option(argv: list[str], flag: str) -> str | None:
    """Remove ``flag VALUE`` or ``flag=VALUE`` from argv and return VALUE (None when absent)."""
    for i, arg in enumerate(argv):
        if arg == flag:
            if i + 1 >= len(argv):
                raise SystemExit(f"{flag}: expected a value")
            value = argv[i + 1]
            del argv[i : i + 2]
            return value
        if arg.startswith(flag + "="):
            del argv[i]
            return arg.split("=", 1)[1]
    return None


def experiment_config_file(spec: dict[str, Any], stem: str) -> Path:
    """The experiment's own keys as a YAML file named by its content, in the zoo cache.

    ``<cache>/experiment-configs/<stem>-<sha256[:16]>.yaml`` (cache: ``$HEINSEN_ZOO_CACHE``, else
    ``~/.cache/heinsen_zoo``): the same config always maps to the same file, written once atomically, so
    nothing is left behind per run — not even when the run is killed (no temporary file, no ``atexit``).
    """
    import hashlib

    import yaml

    from heinsen_zoo.atomic import write_text_atomic
    from heinsen_zoo.zoo.registry import cache_dir

    text = yaml.safe_dump(spec, sort_keys=False)
    folder = cache_dir() / "experiment-configs"
    path = folder / f"{stem}-{hashlib.sha256(text.encode()).hexdigest()[:16]}.yaml"
    if not path.is_file() or path.read_text() != text:
        write_text_atomic(path, text)
    return path


def expand_experiment_args(argv: list[str]) -> tuple[list[str], dict[str, Any]]:
    """Turn ``--experiment``, ``--gpus`` and ``--logger`` into plain LightningCLI arguments.

    Returns the new argv and the options consumed (``experiment``, ``gpus``, ``logger``).
    """
    argv = list(argv)
    experiment = _pop_option(argv, "--experiment")
    gpus_text = _pop_option(argv, "--gpus")
    logger = _pop_option(argv, "--logger") or "csv"
    if logger not in LOGGERS:
        raise SystemExit(f"--logger: expected one of {sorted(LOGGERS)}, got {logger!r}")
    gpus = None
    if gpus_text is not None:
        try:
            gpus = int(gpus_text)
        except ValueError:
            raise SystemExit(f"--gpus: expected an integer >= 1, got {gpus_text!r}") from None
        if gpus < 1:
            raise SystemExit(f"--gpus: expected an integer >= 1, got {gpus}")
    inserted: list[str] = []
    if experiment is not None:
        path = experiment_path(experiment)
        import yaml  # lazily: list/info/--help run on a base install (without the zoo extra)

        spec = yaml.safe_load(path.read_text()) or {}
        defaults = spec.pop("defaults", []) or []
        for fragment in defaults:
            frag_path = configs_dir() / fragment
            if not frag_path.is_file():
                raise SystemExit(f"{path}: defaults entry {fragment!r} not found at {frag_path}")
            inserted += ["--config", str(frag_path)]
        if gpus is not None and gpus > 1:
            inserted += ["--config", str(configs_dir() / "trainer" / "ddp.yaml")]
        if spec:
            inserted += ["--config", str(experiment_config_file(spec, path.stem))]
    elif gpus is not None and gpus > 1:
        inserted += ["--config", str(configs_dir() / "trainer" / "ddp.yaml")]
    if argv and argv[0] in LIGHTNING_SUBCOMMANDS:
        argv = [argv[0], *inserted, *argv[1:]]
    else:
        argv = [*inserted, *argv]
    return argv, {"experiment": experiment, "gpus": gpus, "logger": logger}
