"""The Lightning subcommands (fit/validate/test/predict): the zoo's LightningCLI and its config hooks."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from .experiments import LOGGERS, expand_experiment_args

__all__ = ["build_experiment", "run_lightning"]


def _make_cli_class():
    """Build the LightningCLI subclass lazily (importing Lightning costs seconds)."""
    from lightning.pytorch import LightningDataModule, LightningModule
    from lightning.pytorch.cli import LightningCLI

    class ZooCLI(LightningCLI):
        """LightningCLI with the zoo's conventions (see the module docstring)."""

        zoo_options: dict[str, Any] = {}

        def _parse_ckpt_path(
            self,
        ) -> None:  # LightningCLI reads the checkpoint's hparams here: check it first
            if self.config.get("subcommand"):
                _guard_ckpt_path(self.config[self.config.subcommand])
            super()._parse_ckpt_path()

        def before_instantiate_classes(self) -> None:
            config = self.config[self.subcommand] if self.subcommand else self.config
            _link_backbone_to_cache(config)
            _apply_gpus(config, self.zoo_options.get("gpus"))
            _apply_checkpoint_dir(config)
            _apply_logger(config, self.zoo_options.get("logger", "csv"), self.zoo_options.get("experiment"))

    return ZooCLI, LightningModule, LightningDataModule


def _get(config: Any, dotted: str) -> Any:
    node = config
    for key in dotted.split("."):
        if node is None:
            return None
        node = node.get(key) if hasattr(node, "get") else getattr(node, key, None)
    return node


def _link_backbone_to_cache(config: Any) -> None:
    """A hidden-state cache DataModule computes features with the backbone the model builds: the model's
    spec as its padding policy resolves it (:func:`heinsen_zoo.model.encoder_spec`)."""
    data_args = _get(config, "data.init_args")
    model_backbone = _get(config, "model.init_args.backbone")
    if data_args is not None and "backbone_spec" in data_args and data_args["backbone_spec"] is None:
        if isinstance(model_backbone, dict):
            from heinsen_zoo.padding import encoder_spec

            model_backbone = encoder_spec(model_backbone, _get(config, "model.init_args.padding") or "mask")
        data_args["backbone_spec"] = model_backbone


def _apply_gpus(config: Any, gpus: int | None) -> None:
    """``--gpus N``: devices = N on the GPU accelerator (DDP when N > 1).

    The batch is NOT touched here: ``data.init_args.batch_size`` is the effective (global) batch of the paper
    and the DataModules split it over the processes in one place
    (:func:`heinsen_zoo.data.sampling.per_device_batch`), so every optimizer step sees that many examples
    whatever N is. A batch that N does not divide is rejected here, before any model is built.
    """
    if gpus is None:
        return
    config["trainer"]["devices"] = gpus
    config["trainer"]["accelerator"] = "gpu"
    if gpus > 1:
        config["trainer"]["strategy"] = "ddp"
        _check_batch_divides(config, gpus * int(config["trainer"].get("num_nodes") or 1), "--gpus")


def _check_batch_divides(config: Any, world_size: int, flag: str) -> None:
    """SystemExit (``error: ...``) naming ``flag`` when the global batch does not divide over ``world_size``."""
    from heinsen_zoo.data.sampling import per_device_batch

    for key in ("data.init_args.batch_size", "data.init_args.datamodule.init_args.batch_size"):
        batch = _get(config, key)
        if batch:
            try:
                per_device_batch(int(batch), world_size)
            except ValueError as error:
                raise SystemExit(f"error: {flag}: {error}") from None
            return


def _apply_checkpoint_dir(config: Any) -> None:
    """Checkpoints of a run go to ``<trainer.default_root_dir>/checkpoints`` (a fixed place, so that
    ``last.ckpt`` can be found to resume), unless a ModelCheckpoint names its own ``dirpath``."""
    trainer = config["trainer"]
    root = trainer.get("default_root_dir")
    if not root:
        return
    for callback in trainer.get("callbacks") or []:
        path = _get(callback, "class_path")
        args = _get(callback, "init_args")
        if path and str(path).endswith("ModelCheckpoint") and args is not None and not args.get("dirpath"):
            args["dirpath"] = str(Path(root) / "checkpoints")


_SPECIAL_CKPT_PATHS = ("last", "best", "hpc", "registry")


def _guard_ckpt_path(config: Any) -> None:
    """``--ckpt_path`` (command line or config file) is loaded weights-only, from a local file only.

    A URL is refused (download it, then pass the file); a local file is read by the zoo's safe loader
    (:func:`heinsen_zoo.zoo.convert.safe_torch_load`: refused before anything is unpickled if it holds
    arbitrary objects) before Lightning sees it, its hyper-parameters (which LightningCLI merges into the
    model's config) may name only heinsen_zoo classes and a plain backbone spec, and Lightning is told
    ``weights_only=True``.
    """
    if not hasattr(config, "get") or "ckpt_path" not in config:
        return
    ckpt = config.get("ckpt_path")
    if ckpt is None or str(ckpt) in _SPECIAL_CKPT_PATHS or str(ckpt).startswith("registry:"):
        if "weights_only" in config:
            config["weights_only"] = True
        return
    text = str(ckpt)
    if "://" in text:
        raise SystemExit(
            f"error: --ckpt_path {text}: checkpoints are not loaded from URLs (a checkpoint can run code when "
            "unpickled); download it, check where it came from, and pass the local file"
        )
    if config.get("weights_only") is False:
        raise SystemExit("error: --weights_only false: heinsen-zoo loads checkpoints weights-only")
    from heinsen_zoo.zoo.convert import safe_torch_load

    path = Path(text).expanduser()
    if not path.is_file():
        raise SystemExit(f"error: --ckpt_path: checkpoint file {text!r} not found")
    ckpt = safe_torch_load(
        path
    )  # UnsafeCheckpointError / CorruptFileError before Lightning unpickles anything
    hparams = ckpt.get("hyper_parameters") if isinstance(ckpt, dict) else None
    if isinstance(hparams, dict):  # LightningCLI turns these into the model's config: they are data too
        class_path = hparams.get("_class_path")
        if class_path is not None and not str(class_path).startswith("heinsen_zoo."):
            raise SystemExit(
                f"error: --ckpt_path {text}: its hyper_parameters name the class {class_path!r}; only heinsen_zoo "
                "tasks are instantiated from a checkpoint"
            )
        if isinstance(hparams.get("backbone"), dict):
            from heinsen_zoo.backbones._resolve import check_spec_from_file

            check_spec_from_file(hparams["backbone"], f"{text} (hyper_parameters)")
    config["weights_only"] = True


def _require_gpus(argv: list[str]) -> None:
    """``--gpus N`` on a machine with fewer than N CUDA GPUs: say so now (before configs, batches, Lightning)."""
    for i, arg in enumerate(argv):
        if arg == "--gpus" and i + 1 < len(argv):
            value = argv[i + 1]
        elif arg.startswith("--gpus="):
            value = arg.split("=", 1)[1]
        else:
            continue
        if not value.strip().isdigit() or int(value) < 1:
            return  # malformed: expand_experiment_args names the problem
        import torch

        available = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if available == 0:
            raise SystemExit(
                f"error: --gpus {int(value)}: no GPU on this machine (torch.cuda.is_available() is False); "
                "leave out --gpus to run on the CPU"
            )
        if available < int(value):
            raise SystemExit(f"error: --gpus {int(value)}: only {available} CUDA GPU(s) on this machine")
        return


def _apply_logger(config: Any, logger: str, experiment: str | None) -> None:
    """CSV by default (``<root>/logs``); tensorboard (``<root>/tensorboard``) or wandb by switch, each with the
    CSV log beside it (the learning-curve PNGs are drawn from its metrics.csv). Never overrides a logger set in
    a config."""
    trainer = config["trainer"]
    if trainer.get("logger") not in (None, True):
        return
    root = trainer.get("default_root_dir") or "runs"
    csv = {"class_path": LOGGERS["csv"], "init_args": {"save_dir": root, "name": "logs"}}
    if logger == "csv":
        trainer["logger"] = csv
        return
    # its own folder: two loggers under one name would take turns at <root>/logs/version_N
    init_args: dict[str, Any] = {"save_dir": root, "name": "tensorboard"}
    if logger == "wandb":
        if not os.environ.get("WANDB_API_KEY"):
            os.environ.setdefault("WANDB_MODE", "offline")
        init_args = {"save_dir": root, "project": "heinsen-routing", "name": experiment or "run"}
    trainer["logger"] = [{"class_path": LOGGERS[logger], "init_args": init_args}, csv]


def run_lightning(argv: list[str], run: bool = True):
    """Run a LightningCLI subcommand; returns the CLI object (trainer, model, datamodule)."""
    argv, options = expand_experiment_args(argv)
    cli_class, module_base, data_base = _make_cli_class()
    cli_class.zoo_options = options
    return cli_class(
        module_base,
        data_base,
        subclass_mode_model=True,
        subclass_mode_data=True,
        args=argv,
        run=run,
        save_config_kwargs={"overwrite": True},
    )


def build_experiment(experiment: str, overrides: list[str] | None = None, **options: Any):
    """Instantiate an experiment's model, datamodule and trainer without running a subcommand.

    ``overrides`` are LightningCLI arguments (``["--trainer.max_epochs", "1"]``); ``options`` may set
    ``gpus`` and ``logger`` like the command line. Returns the LightningCLI object.
    """
    argv = ["--experiment", experiment, *(overrides or [])]
    for key in ("gpus", "logger"):
        if options.get(key) is not None:
            argv += [f"--{key}", str(options[key])]
    return run_lightning(argv, run=False)
