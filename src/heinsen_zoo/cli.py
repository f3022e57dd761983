"""The one command line of the zoo: ``heinsen-zoo``.

Lightning subcommands (LightningCLI, configs merged in order)::

    heinsen-zoo fit --experiment cifar10 [--gpus 4] [--logger tensorboard] [--data.init_args.data_dir D]
    heinsen-zoo fit --config configs/trainer/base.yaml --config my.yaml
    heinsen-zoo validate|test|predict --experiment cifar10 --ckpt_path runs/cifar10/.../last.ckpt

``--experiment NAME`` reads ``configs/experiments/NAME.yaml`` (or a path): its ``defaults:`` list names the
config fragments (trainer/, model/, data/) that are merged first, then the experiment's own keys, then any
further ``--config``/``--key value`` arguments. ``--gpus N`` trains data-parallel on N GPUs with the same
effective batch: configs state the paper's global batch and the DataModule gives each process
``batch / world_size`` (one place: ``heinsen_zoo.data.sampling.per_device_batch``). Checkpoints go to
``<trainer.default_root_dir>/checkpoints`` (``last.ckpt`` = the latest epoch, for ``--ckpt_path`` resumes). ``--logger csv|tensorboard|wandb`` picks the logger
(CSV by default; wandb runs offline unless ``WANDB_API_KEY`` is set).

Zoo subcommands (plain argparse)::

    heinsen-zoo list [PATTERN] [--pretrained]      # registry names
    heinsen-zoo info NAME                          # one entry: backbone, weights, expected metric
    heinsen-zoo experiments                        # the experiment configs and the command for each
    heinsen-zoo infer MODEL INPUT... [--top-k 5] [--json] [--explain DIR] [--batch-size 8]
                      [--device cpu|cuda] [--text]  # predict (MODEL: registry name or export dir)
    heinsen-zoo convert original|lightning|verify ...  # checkpoints -> export format (heinsen_zoo.zoo.convert)
    heinsen-zoo export CKPT OUT_DIR [--onnx]       # a Lightning .ckpt -> export dir (config.json + safetensors
                                                   # + model card README.md; --onnx adds a checked model.onnx)
    heinsen-zoo push EXPORT_DIR OWNER/REPO [--private]  # upload an export with its card to the Hugging Face Hub

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
import contextlib
import os
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any

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


def experiment_config_file(spec: dict[str, Any], stem: str) -> Path:
    """The experiment's own keys as a YAML file named by its content, in the zoo cache.

    ``<cache>/experiment-configs/<stem>-<sha256[:16]>.yaml`` (cache: ``$HEINSEN_ZOO_CACHE``, else
    ``~/.cache/heinsen_zoo``): the same config always maps to the same file, written once atomically, so
    nothing is left behind per run — not even when the run is killed (no temporary file, no ``atexit``).
    """
    import hashlib

    import yaml

    from heinsen_zoo.zoo.registry import cache_dir

    text = yaml.safe_dump(spec, sort_keys=False)
    folder = cache_dir() / "experiment-configs"
    path = folder / f"{stem}-{hashlib.sha256(text.encode()).hexdigest()[:16]}.yaml"
    if not path.is_file() or path.read_text() != text:
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=folder)
        try:
            with os.fdopen(fd, "w") as handle:
                handle.write(text)
            os.replace(tmp, path)
        finally:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
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


def _make_cli_class():
    """Build the LightningCLI subclass lazily (importing Lightning costs seconds)."""
    from lightning.pytorch import LightningDataModule, LightningModule
    from lightning.pytorch.cli import LightningCLI

    class ZooCLI(LightningCLI):
        """LightningCLI with the zoo's conventions (see the module docstring)."""

        zoo_options: dict[str, Any] = {}

        def _parse_ckpt_path(self) -> None:  # LightningCLI reads the checkpoint's hparams here: check it first
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
    """A hidden-state cache DataModule computes features with the model's backbone spec."""
    data_args = _get(config, "data.init_args")
    model_backbone = _get(config, "model.init_args.backbone")
    if data_args is not None and "backbone_spec" in data_args and data_args["backbone_spec"] is None:
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
    ckpt = safe_torch_load(path)  # UnsafeCheckpointError / CorruptFileError before Lightning unpickles anything
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


_USER_ERRORS_HINT = "(HEINSEN_DEBUG=1 shows the traceback)"


def _user_error_types() -> tuple[type[BaseException], ...]:
    """Exceptions that mean bad input (arguments, files, configs), reported as one ``error:`` line."""
    from heinsen_zoo.zoo.errors import ZooError

    types: list[type[BaseException]] = [ZooError, OSError, ValueError, KeyError, TypeError, ImportError]
    try:
        from lightning.fabric.utilities.exceptions import MisconfigurationException

        types.append(MisconfigurationException)
    except ImportError:  # pragma: no cover - lightning is a dependency
        pass
    return tuple(types)


def _error_line(err: BaseException) -> str:
    text = err.args[0] if isinstance(err, KeyError) and len(err.args) == 1 else err
    lines = str(text).strip().splitlines() or [type(err).__name__]
    message = " ".join(line.strip() for line in lines[:3])
    return message if message.startswith("error:") else f"error: {message}"


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
    p_infer.add_argument("--max-chunks", type=int, default=None,
                         help="text: chunks kept per input (default: the model's max_chunks, else 8)")
    p_infer.add_argument("--max-chars", type=int, default=None,
                         help="text: characters read per input (default: what max-chunks chunks can hold)")
    p_convert = sub.add_parser(
        "convert", help="convert checkpoints into the export format (original | lightning | verify)", add_help=False
    )
    p_convert.add_argument("args", nargs=argparse.REMAINDER)
    p_export = sub.add_parser("export", help="export a Lightning .ckpt of a routing head to OUT_DIR")
    p_export.add_argument("ckpt", help="a RoutingClassificationTask checkpoint (.ckpt)")
    p_export.add_argument("out_dir", help="the export directory to write (config.json + model.safetensors)")
    p_export.add_argument("--onnx", action="store_true", help="also write OUT_DIR/model.onnx (checked with onnxruntime)")
    p_export.add_argument("--opset", type=int, default=18, help="ONNX opset for --onnx (default 18)")
    p_push = sub.add_parser("push", help="upload an export directory with its model card to the Hugging Face Hub",
                            add_help=False)  # fmt: skip
    p_push.add_argument("args", nargs=argparse.REMAINDER)
    return parser


def run_zoo(argv: list[str]) -> int:
    """The registry/inference subcommands; errors print ``error: <message>`` to stderr and return 2."""
    if argv and argv[0] == "convert":  # its own parser (subcommands original | lightning | verify)
        from heinsen_zoo.zoo import convert

        return 0 if convert.main(argv[1:]) == 0 else 2
    if argv and argv[0] == "push":  # its own parser (heinsen_zoo.zoo.publish)
        from heinsen_zoo.zoo import publish

        return 0 if publish.main(argv[1:]) == 0 else 2
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
            print(f"wrote {out} (config.json + model.safetensors + README.md model card)")
            if args.onnx:
                from heinsen_zoo.export_onnx import describe, export_onnx

                print(describe(export_onnx(out, out / "model.onnx", opset=args.opset)))
            return 0
        if args.command == "infer":
            from heinsen_zoo.inference import InputTruncatedWarning, format_json, format_table, predict
            from heinsen_zoo.zoo.hub import from_pretrained

            if args.device not in ("cpu", "cuda") and not args.device.startswith("cuda:"):
                raise ValueError(f"--device: expected cpu or cuda, got {args.device!r}")
            model = from_pretrained(args.model, map_location="cpu")
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", InputTruncatedWarning)
                predictions = predict(
                    model, args.inputs, top_k=args.top_k, batch_size=args.batch_size, device=args.device,
                    explain_dir=args.explain, force_text=args.text, max_chunks=args.max_chunks,
                    max_chars=args.max_chars,
                )  # fmt: skip
            for warning in caught:
                if issubclass(warning.category, InputTruncatedWarning):
                    print(f"note: {warning.message}", file=sys.stderr)
                else:
                    warnings.showwarning(warning.message, warning.category, warning.filename, warning.lineno)
            print(format_json(predictions) if args.json else format_table(predictions))
            return 0
    except (ZooError, KeyError, FileNotFoundError, ValueError) as err:
        plain_key_error = isinstance(err, KeyError) and not isinstance(err, ZooError) and err.args
        print(f"error: {err.args[0] if plain_key_error else err}", file=sys.stderr)
        return 2
    raise AssertionError(args.command)


def main(argv: list[str] | None = None) -> int:
    """Console-script entry point: user errors of every subcommand print one ``error: ...`` line, exit 2."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0
    try:
        if argv[0] in LIGHTNING_SUBCOMMANDS:
            _require_gpus(argv)
            run_lightning(argv)
            return 0
        return run_zoo(argv)
    except SystemExit as exit_:
        if not isinstance(exit_.code, str):  # argparse/jsonargparse already printed usage and `error: ...`
            raise
        print(_error_line(SystemExit(exit_.code)), file=sys.stderr)
        return 2
    except _user_error_types() as err:
        if os.environ.get("HEINSEN_DEBUG", "").strip() not in ("", "0"):
            raise
        hint = f" {_USER_ERRORS_HINT}" if argv[0] in LIGHTNING_SUBCOMMANDS else ""
        print(f"{_error_line(err)}{hint}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
