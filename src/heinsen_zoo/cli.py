"""The one command line of the zoo: ``heinsen-zoo``.

Lightning subcommands (LightningCLI, configs merged in order)::

    heinsen-zoo fit --experiment cifar10 [--gpus 4] [--logger tensorboard] [--data.init_args.data_dir D]
    heinsen-zoo fit --config configs/trainer/base.yaml --config my.yaml
    heinsen-zoo validate|test|predict --experiment cifar10 --ckpt_path runs/cifar10/.../last.ckpt

``--experiment NAME`` reads ``configs/experiments/NAME.yaml`` (or a path): its ``defaults:`` list names the
config fragments (trainer/, model/, data/) that are merged first, then the experiment's own keys, then any
further ``--config``/``--key value`` arguments. ``--gpus N`` trains data-parallel on N GPUs with the same
effective batch (the per-device batch is divided by N). ``--logger csv|tensorboard|wandb`` picks the logger
(CSV by default; wandb runs offline unless ``WANDB_API_KEY`` is set).

Zoo subcommands (plain argparse)::

    heinsen-zoo list [PATTERN] [--pretrained]      # registry names
    heinsen-zoo info NAME                          # one entry: backbone, weights, expected metric
    heinsen-zoo experiments                        # the experiment configs and the command for each
    heinsen-zoo infer MODEL INPUT... [--top-k 5] [--json] [--explain DIR] [--batch-size 8]
                      [--device cpu|cuda] [--text]  # predict (MODEL: registry name or export dir)
    heinsen-zoo convert original|lightning|verify ...  # checkpoints -> export format (heinsen_zoo.zoo.convert)
    heinsen-zoo export CKPT OUT_DIR                # a Lightning .ckpt -> export dir (config.json + safetensors)

``infer`` inputs: image files or folders (vision models), texts or .txt files (text models; ``--text`` treats
every INPUT as text), NORB ``*-dat.mat[.gz]`` files or (left, right) pairs of 96x96 grey PNGs (smallNORB).
``--explain DIR`` writes a credit-assignment PNG per input. Errors print ``error: ...`` and exit with 2.

Fine-tuning from a zoo model (all but the last routing frozen)::

    heinsen-zoo fit --experiment finetune_demo [--model.init_args.init_from NAME_OR_EXPORT_DIR]
        [--model.init_args.replace_last true --model.init_args.n_classes K]

Example:
    >>> from heinsen_zoo.cli import expand_experiment_args
    >>> args, opts = expand_experiment_args(["fit", "--experiment", "cifar10", "--gpus", "2"])
    >>> opts["gpus"], args[0], args[1]
    (2, 'fit', '--config')
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml

LIGHTNING_SUBCOMMANDS = ("fit", "validate", "test", "predict")
LOGGERS = {
    "csv": "lightning.pytorch.loggers.CSVLogger",
    "tensorboard": "lightning.pytorch.loggers.TensorBoardLogger",
    "wandb": "lightning.pytorch.loggers.WandbLogger",
}


def configs_dir() -> Path:
    """The ``configs/`` folder: ``$HEINSEN_CONFIGS`` or the repository's own (beside ``src/``)."""
    env = os.environ.get("HEINSEN_CONFIGS")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[2] / "configs"


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


def _remove_quietly(path: str) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)


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
            tmp = tempfile.NamedTemporaryFile("w", suffix=f"-{path.stem}.yaml", delete=False)
            with tmp:
                yaml.safe_dump(spec, tmp, sort_keys=False)
            atexit.register(_remove_quietly, tmp.name)
            inserted += ["--config", tmp.name]
    elif gpus is not None and gpus > 1:
        inserted += ["--config", str(configs_dir() / "trainer" / "ddp.yaml")]
    if argv and argv[0] in LIGHTNING_SUBCOMMANDS:
        argv = [argv[0], *inserted, *argv[1:]]
    else:
        argv = [*inserted, *argv]
    return argv, {"experiment": experiment, "gpus": gpus, "logger": logger}


def _make_cli_class():
    """Build the LightningCLI subclass lazily (importing Lightning costs seconds)."""
    from lightning.pytorch import LightningDataModule, LightningModule
    from lightning.pytorch.cli import LightningCLI

    class ZooCLI(LightningCLI):
        """LightningCLI with the zoo's conventions (see the module docstring)."""

        zoo_options: dict[str, Any] = {}

        def before_instantiate_classes(self) -> None:
            config = self.config[self.subcommand] if self.subcommand else self.config
            _link_backbone_to_cache(config)
            _apply_gpus(config, self.zoo_options.get("gpus"))
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
    """A hidden-state cache DataModule computes features with the model's backbone spec."""
    data_args = _get(config, "data.init_args")
    model_backbone = _get(config, "model.init_args.backbone")
    if data_args is not None and "backbone_spec" in data_args and data_args["backbone_spec"] is None:
        data_args["backbone_spec"] = model_backbone


def _apply_gpus(config: Any, gpus: int | None) -> None:
    """N GPUs, same effective batch: devices = N, per-device batch = batch / N."""
    if gpus is None:
        return
    config["trainer"]["devices"] = gpus
    config["trainer"]["accelerator"] = "gpu"
    if gpus > 1:
        config["trainer"]["strategy"] = "ddp"
        data_args = _get(config, "data.init_args")
        if data_args is not None and data_args.get("batch_size"):
            batch = int(data_args["batch_size"])
            if batch % gpus:
                raise SystemExit(f"--gpus: the batch {batch} does not divide evenly over {gpus} GPUs")
            data_args["batch_size"] = batch // gpus


def _apply_logger(config: Any, logger: str, experiment: str | None) -> None:
    """CSV by default; tensorboard or wandb by switch. Never overrides a logger set in a config."""
    trainer = config["trainer"]
    if trainer.get("logger") not in (None, True):
        return
    root = trainer.get("default_root_dir") or "runs"
    init_args: dict[str, Any] = {"save_dir": root, "name": "logs"}
    if logger == "wandb":
        if not os.environ.get("WANDB_API_KEY"):
            os.environ.setdefault("WANDB_MODE", "offline")
        init_args = {"save_dir": root, "project": "heinsen-routing", "name": experiment or "run"}
    trainer["logger"] = {"class_path": LOGGERS[logger], "init_args": init_args}


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


def _zoo_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="heinsen-zoo", description="Heinsen routing model zoo.")
    sub = parser.add_subparsers(dest="command", required=True)
    p_list = sub.add_parser("list", help="list registered model names")
    p_list.add_argument("pattern", nargs="?", default="*")
    p_list.add_argument("--pretrained", action="store_true", help="only names whose weights are available")
    p_info = sub.add_parser("info", help="describe one registered model")
    p_info.add_argument("name")
    sub.add_parser("experiments", help="list experiment configs and their commands")
    p_infer = sub.add_parser(
        "infer",
        help="predict the classes of images, texts or smallNORB pairs",
        description="Top-k predictions of a zoo model (registry name or export directory) for INPUTs: image files "
        "or folders, texts or .txt files, NORB *-dat.mat[.gz] files or (left, right) pairs of 96x96 grey PNGs.",
    )
    p_infer.add_argument("model", help="registry name (heinsen-zoo list) or export directory")
    p_infer.add_argument("inputs", nargs="+", metavar="INPUT", help="image/text/NORB files, folders or texts")
    p_infer.add_argument("--top-k", type=int, default=5, help="classes reported per input (default 5)")
    p_infer.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p_infer.add_argument("--explain", metavar="DIR", default=None, help="write credit-assignment PNGs to DIR")
    p_infer.add_argument("--batch-size", type=int, default=8, help="inputs per forward pass (default 8)")
    p_infer.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p_infer.add_argument("--text", action="store_true", help="treat every INPUT as text, even if it names a file")
    p_convert = sub.add_parser(
        "convert", help="convert checkpoints into the export format (original | lightning | verify)", add_help=False
    )
    p_convert.add_argument("args", nargs=argparse.REMAINDER)
    p_export = sub.add_parser("export", help="export a Lightning .ckpt of a routing head to OUT_DIR")
    p_export.add_argument("ckpt", help="a RoutingClassificationTask checkpoint (.ckpt)")
    p_export.add_argument("out_dir", help="the export directory to write (config.json + model.safetensors)")
    return parser


def run_zoo(argv: list[str]) -> int:
    """The registry/inference subcommands; errors print ``error: <message>`` to stderr and return 2."""
    if argv and argv[0] == "convert":  # its own parser (subcommands original | lightning | verify)
        from heinsen_zoo.zoo import convert

        return 0 if convert.main(argv[1:]) == 0 else 2
    args = _zoo_parser().parse_args(argv)
    if args.command == "experiments":
        for name, title in list_experiments().items():
            print(f"{name:18s} {title}\n{'':18s} heinsen-zoo fit --experiment {name}")
        return 0
    from heinsen_zoo.zoo import registry
    from heinsen_zoo.zoo.errors import ZooError

    try:
        if args.command == "list":
            for name in registry.list_models(args.pattern, pretrained=args.pretrained):
                print(name)
            return 0
        if args.command == "info":
            print(registry.get_entry(args.name).describe())
            return 0
        if args.command == "export":
            from heinsen_zoo.zoo.convert import export_lightning_checkpoint

            out = export_lightning_checkpoint(args.ckpt, args.out_dir)
            print(f"wrote {out} (config.json + model.safetensors)")
            return 0
        if args.command == "infer":
            from heinsen_zoo.inference import format_json, format_table, predict
            from heinsen_zoo.zoo.hub import from_pretrained

            if args.device not in ("cpu", "cuda") and not args.device.startswith("cuda:"):
                raise ValueError(f"--device: expected cpu or cuda, got {args.device!r}")
            model = from_pretrained(args.model, map_location="cpu")
            predictions = predict(
                model, args.inputs, top_k=args.top_k, batch_size=args.batch_size, device=args.device,
                explain_dir=args.explain, force_text=args.text,
            )  # fmt: skip
            print(format_json(predictions) if args.json else format_table(predictions))
            return 0
    except (ZooError, KeyError, FileNotFoundError, ValueError) as err:
        plain_key_error = isinstance(err, KeyError) and not isinstance(err, ZooError) and err.args
        print(f"error: {err.args[0] if plain_key_error else err}", file=sys.stderr)
        return 2
    raise AssertionError(args.command)


def main(argv: list[str] | None = None) -> int:
    """Console-script entry point."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0
    if argv[0] in LIGHTNING_SUBCOMMANDS:
        run_lightning(argv)
        return 0
    return run_zoo(argv)


if __name__ == "__main__":
    sys.exit(main())
