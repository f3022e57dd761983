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
(CSV by default, and kept beside tensorboard/wandb for the curve PNGs; wandb runs offline unless ``WANDB_API_KEY`` is set).

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

import os
import sys

from .experiments import (
    LIGHTNING_SUBCOMMANDS,
    LOGGERS,
    configs_dir,
    expand_experiment_args,
    experiment_config_file,
    experiment_path,
    list_experiments,
)
from .lightning_run import _require_gpus, build_experiment, run_lightning
from .zoo_commands import run_zoo

__all__ = [
    "LIGHTNING_SUBCOMMANDS",
    "LOGGERS",
    "build_experiment",
    "configs_dir",
    "expand_experiment_args",
    "experiment_config_file",
    "experiment_path",
    "list_experiments",
    "main",
    "report_user_error",
    "run_lightning",
    "run_zoo",
]

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


def report_user_error(err: BaseException, hint: str = "") -> int:
    """Print ``err`` as one ``error: ...`` line (then ``hint``) on stderr and return the exit status 2; with
    ``HEINSEN_DEBUG=1`` re-raise it instead (the traceback)."""
    if os.environ.get("HEINSEN_DEBUG", "").strip() not in ("", "0"):
        raise err
    print(f"{_error_line(err)}{' ' + hint if hint else ''}", file=sys.stderr)
    return 2


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
        return report_user_error(err, _USER_ERRORS_HINT if argv[0] in LIGHTNING_SUBCOMMANDS else "")
