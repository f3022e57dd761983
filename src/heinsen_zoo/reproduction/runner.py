"""``make reproduce-*``: preflight → fit → test → results/<row>.json → report, for each row in order.

    python -m heinsen_zoo.reproduction.runner --group text --gpus 4 --data-dir /data --model-dir /models
    python -m heinsen_zoo.reproduction.runner --rows cifar10 --smoke      # tiny stand-ins on CPU
    python -m heinsen_zoo.reproduction.runner --rows cifar10 --smoke --devices 2   # DDP over 2 CPU processes
    python -m heinsen_zoo.reproduction.runner --rows cifar10 --resume     # continue from runs/cifar10 last.ckpt
    python -m heinsen_zoo.reproduction.runner --rows cifar10 --args "--trainer.num_nodes 2"
    python -m heinsen_zoo.reproduction.runner --report-only               # re-render results/REPORT.md

Without ``--smoke`` a row that fails preflight (no GPU, no data, no backbone weights) stops the run before
any training with a message saying what is missing (online, missing public data is fetched first, see
:mod:`heinsen_zoo.data.fetch`). With ``--smoke`` every row runs the whole chain on tiny stand-ins (tiny
random backbones, small generated data in the real on-disk formats) on a CPU, with the paper's effective
batch; its numbers are marked as smoke and never reported as reproductions.

Honest numbers: the test number is that of the **final** head (after the last epoch, as the papers
report), or with ``--select val`` of the checkpoint with the best ``val/acc`` on a validation split that
is not the test split (e.g. ``--args "--data.init_args.val_fraction 0.1"`` carves one from train); the test
split never selects anything. Under DDP every test example is scored exactly once, and the run fails if
the number of examples scored differs from the split's size. Each result JSON records its provenance (see
:class:`~heinsen_zoo.reproduction.report.ResultRecord`).
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import time
from pathlib import Path
from typing import Any

from .preflight import preflight
from .provenance import BatchProbe, backbone_of, device_name, git_commit
from .report import ResultRecord, load_results, render_report, write_result
from .rows import Row, load_rows, order_by_dependencies, rows_in_group

SELECT_CHOICES = ("final", "val")


def _metric_value(metrics: dict, key: str = "test/acc") -> float:
    if key not in metrics:
        raise RuntimeError(f"test metrics: expected key {key!r}, got {sorted(metrics)}")
    return 100.0 * float(metrics[key])


def _is_rank_zero() -> bool:
    return int(os.environ.get("LOCAL_RANK", "0")) == 0 and int(os.environ.get("NODE_RANK", "0")) == 0


def row_root(row: Row, results_dir: Path, smoke: bool) -> Path:
    """The ``trainer.default_root_dir`` of a row's run (checkpoints in ``<root>/checkpoints``)."""
    return results_dir / "smoke" / row.name / "run" if smoke else results_dir / "runs" / row.name


def device_overrides(smoke: bool, devices: int | None) -> list[str]:
    """``--devices N``: smoke runs → N CPU processes (DDP over gloo); real runs → N devices of the config's
    accelerator (DDP when N > 1)."""
    if not devices:
        return []
    out = ["--trainer.devices", str(devices)]
    if smoke:
        out += ["--trainer.accelerator", "cpu"]
    if devices > 1:
        out += ["--trainer.strategy", "ddp"]
    return out


def _resume_path(root: Path, resume: bool) -> str | None:
    if not resume:
        return None
    path = root / "checkpoints" / "last.ckpt"
    if not path.is_file():
        raise SystemExit(
            f"error: RESUME=1: no checkpoint to resume from at {path} (run the row once without RESUME)"
        )
    return str(path)


def _val_is_test(datamodule: Any) -> bool:
    """True when the DataModule validates on its test split (CIFAR/IMDB/ImageNet by default)."""
    inner = getattr(datamodule, "datamodule", datamodule)  # a cached-features wrapper
    source = getattr(inner, "split_source", None)
    return not callable(source) or source("val") == source("test")


def _selection(cli: Any, select: str, root: Path):
    """``(checkpoint label, callback or None)`` for ``select``; refuses to select on the test split."""
    if select == "final":
        return "final", None
    if _val_is_test(cli.datamodule):
        raise SystemExit(
            f"error: --select val: {type(cli.datamodule).__name__} validates on its test split, so selecting a "
            "checkpoint would select on the test set; carve a validation split from train first, e.g. "
            'ARGS="--data.init_args.val_fraction 0.1", or keep the final head (--select final)'
        )
    from lightning.pytorch.callbacks import ModelCheckpoint

    callback = ModelCheckpoint(
        dirpath=root / "checkpoints" / "selected",
        monitor="val/acc",
        mode="max",
        save_top_k=1,
        filename="best-epoch{epoch:02d}",
        auto_insert_metric_name=False,
    )
    return "best val/acc on a validation split carved from train", callback


def _check_global_batch(row: str, datamodule: Any, world_size: int) -> None:
    """``error:`` before any process is launched when the paper's batch does not divide over the processes."""
    from heinsen_zoo.data.sampling import per_device_batch

    batch = getattr(datamodule, "batch_size", None)
    if isinstance(batch, int) and world_size > 1:
        try:
            per_device_batch(batch, world_size)
        except ValueError as error:
            raise SystemExit(f"error: {row}: {error}") from None


def _test_split_size(datamodule: Any) -> int | None:
    for getter in (lambda: datamodule.test_dataset, lambda: datamodule._get("test")):
        try:
            return len(getter())
        except Exception:  # noqa: BLE001 - a DataModule without that accessor
            continue
    return None


def run_row(
    row: Row,
    *,
    data_dir: Path,
    results_dir: Path,
    gpus: int,
    logger: str,
    precision: str | None,
    smoke: bool,
    extra_overrides: list[str] | None = None,
    devices: int | None = None,
    resume: bool = False,
    select: str = "final",
) -> ResultRecord:
    """Fit and test one row; returns (and writes, on global rank zero) its result record."""
    from heinsen_zoo.cli import build_experiment

    root = row_root(row, results_dir, smoke)
    options: dict[str, Any] = {"logger": logger}
    if smoke:
        from .smoke import prepare_smoke

        overrides = prepare_smoke(row, results_dir / "smoke" / row.name, results_dir)
        overrides += device_overrides(True, devices)
    else:
        sub = row.data_folder or row.name
        overrides = [
            "--data.init_args.data_dir",
            str(data_dir / sub),
            "--trainer.default_root_dir",
            str(root),
        ]
        options["gpus"] = devices or gpus
    if precision:
        overrides += ["--trainer.precision", precision]
    overrides += extra_overrides or []
    ckpt_path = _resume_path(root, resume)
    start = time.perf_counter()
    cli = build_experiment(row.experiment, overrides, **options)
    trainer = cli.trainer
    _check_global_batch(row.name, cli.datamodule, trainer.world_size)
    label, selector = _selection(cli, select, root)
    probe = BatchProbe(root)
    trainer.callbacks += [probe] + ([selector] if selector is not None else [])
    trainer.fit(cli.model, datamodule=cli.datamodule, ckpt_path=ckpt_path)
    tested_ckpt = selector.best_model_path if selector is not None else None
    tested = trainer.test(cli.model, datamodule=cli.datamodule, ckpt_path=tested_ckpt)
    wall = time.perf_counter() - start
    n_scored = int(round(float(tested[0].get("test/n_examples", -1))))
    split_size = _test_split_size(cli.datamodule)
    if split_size is not None and n_scored != split_size:
        raise RuntimeError(
            f"{row.name}: the test scored {n_scored} examples, the test split has {split_size}; "
            "the number would not be that of the split (padding duplicates or dropped examples)"
        )
    batches = probe.summary()
    backbone = backbone_of(cli.model)
    record = ResultRecord(
        row=row.name,
        value=_metric_value(tested[0]),
        wall_s=wall,
        smoke=smoke,
        metric=row.metric,
        gpus=trainer.world_size if trainer.strategy.root_device.type == "cuda" else 0,
        split=row.test_split or row.split,
        device=device_name(trainer),
        command=" ".join(sys.argv),
        checkpoint=label,
        checkpoint_path=tested_ckpt or str(root / "checkpoints" / "last.ckpt"),
        world_size=trainer.world_size,
        per_device_batch=batches["per_device_batch"],
        effective_batch=batches["effective_batch"],
        n_test_examples=n_scored,
        test_split_size=split_size,
        precision=str(trainer.precision),
        backbone_id=backbone["id"],
        backbone_revision=backbone["revision"],
        git_commit=git_commit(),
        seed=_seed(),
        resumed_from=ckpt_path,
    )
    if trainer.is_global_zero:
        record.curves_png = _plot_curves(trainer, results_dir, row.name, smoke)
        _export_tested_head(cli.model, trainer, root, tested[0])
        write_result(record, results_dir)
    return record


def _export_tested_head(task: Any, trainer: Any, root: Path, metrics: dict) -> Path | None:
    """The tested head as an export (``<root>/export``: config with the test metrics, model card), and with
    ``--logger wandb`` as a W&B model artifact; None for tasks without an export (the 2019 capsule tasks)."""
    if not callable(getattr(task, "export", None)):
        return None
    from heinsen_zoo.wandb_artifact import log_to_wandb_loggers

    scalars = {k: float(v) for k, v in metrics.items() if k.startswith(("val/", "test/"))}
    preprocessing = task.hparams.get("preprocessing")
    if preprocessing is None:  # as ExportPretrainedHead: the datamodule's, when the task records none
        preprocessing = getattr(trainer.datamodule, "preprocessing", None)
        preprocessing = preprocessing() if callable(preprocessing) else preprocessing
    export = task.export(root / "export", metrics=scalars, preprocessing=preprocessing)
    log_to_wandb_loggers(trainer, export)
    return export


def _plot_curves(trainer: Any, results_dir: Path, name: str, smoke: bool) -> str:
    """``curves/<row>[.smoke].png`` from the run's CSVLogger metrics.csv (relative to ``results_dir``); "" when
    the run kept no CSV log (only when a config sets its own logger: ``--logger`` always keeps one)."""
    from lightning.pytorch.loggers import CSVLogger

    from heinsen_zoo.curves import plot_learning_curves

    for logger in trainer.loggers:
        metrics = Path(logger.log_dir) / "metrics.csv" if isinstance(logger, CSVLogger) else None
        if metrics is not None and metrics.is_file():
            relative = Path("curves") / f"{name}{'.smoke' if smoke else ''}.png"
            plot_learning_curves(
                metrics, results_dir / relative, title=f"{name}{' (smoke)' if smoke else ''}"
            )
            return relative.as_posix()
    return ""


def _seed() -> int | None:
    value = os.environ.get("PL_GLOBAL_SEED")
    return int(value) if value is not None and value.lstrip("-").isdigit() else None


def fetch_missing(names: list[str], data_dir: Path, offline: bool) -> None:
    """Online, fetch the public data of rows whose data is missing (pinned, verified: heinsen_zoo.data.fetch).

    Offline (``--offline`` or HF_HUB_OFFLINE=1) nothing is fetched; the preflight then names what is missing.
    A failed fetch is printed and left to the preflight as well.
    """
    from heinsen_zoo.backbones import is_offline
    from heinsen_zoo.data.fetch import FetchError, fetch, row_folders

    from .preflight import check_data

    fetchable = row_folders()
    for name in names:
        if not check_data(name, data_dir):
            continue
        if name not in fetchable:  # e.g. a new row whose dataset has no fetcher in data/fetch.py
            print(
                f"data: {name}: missing under {data_dir}, and no fetcher for it: nothing fetched", flush=True
            )
            continue
        if offline or is_offline():
            print(f"data: {name}: missing under {data_dir}, and offline: nothing fetched", flush=True)
            continue
        print(f"data: {name}: fetching into {data_dir} (pinned, verified)", flush=True)
        try:
            fetch(name, data_dir)
        except FetchError as error:
            print(f"data: {name}: {error}", file=sys.stderr, flush=True)


def report(names: list[str], results_dir: Path, smoke: bool, rows: dict[str, Row]) -> bool:
    """Render the table for ``names`` into results/REPORT[.smoke].md and print it; returns all_ok."""
    results = load_results(results_dir, names, smoke=smoke)
    text, ok = render_report(rows, names, results)
    out = results_dir / ("REPORT.smoke.md" if smoke else "REPORT.md")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print(text)
    print(f"report written to {out}" + ("" if ok else "  — at least one row FAILED or is missing"))
    return ok


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="heinsen-zoo-reproduce",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    which = p.add_mutually_exclusive_group()
    which.add_argument("--group", choices=["vision", "text", "2019"], help="rows of one paper group")
    which.add_argument("--rows", nargs="+", help="row names (dependencies are added first)")
    p.add_argument(
        "--gpus", type=int, default=1, help="GPUs of this machine (DDP when > 1; same effective batch)"
    )
    p.add_argument(
        "--devices",
        type=int,
        default=None,
        help="processes: with --smoke N CPU processes (DDP over gloo), else N devices (like --gpus)",
    )
    p.add_argument(
        "--resume", action="store_true", help="continue each row from its <root>/checkpoints/last.ckpt"
    )
    p.add_argument(
        "--select",
        choices=SELECT_CHOICES,
        default="final",
        help="tested checkpoint: final (default, as the papers) or val (best val/acc; never the test split)",
    )
    p.add_argument("--args", default="", help='extra LightningCLI overrides, e.g. "--trainer.num_nodes 2"')
    p.add_argument("--data-dir", type=Path, default=Path("data"))
    p.add_argument("--model-dir", type=Path, default=None, help="local backbone weights (HEINSEN_MODEL_DIR)")
    p.add_argument("--results-dir", type=Path, default=Path("results"))
    p.add_argument("--precision", default=None)
    p.add_argument("--logger", default="csv", choices=["csv", "tensorboard", "wandb"])
    p.add_argument("--smoke", action="store_true", help="tiny stand-ins on CPU (checks the chain only)")
    p.add_argument("--offline", action="store_true", help="never fetch data (also when HF_HUB_OFFLINE=1)")
    p.add_argument("--report-only", action="store_true", help="only render the report from results/")
    p.add_argument("--skip-preflight", action="store_true", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        rows = load_rows()
        if args.group:
            names = rows_in_group(args.group, rows)
        elif args.rows:
            names = order_by_dependencies(args.rows, rows)
        else:
            names = list(rows)
    except (KeyError, ValueError, FileNotFoundError) as error:  # a user's row name or rows file
        print(f"error: {error.args[0] if error.args else error}", file=sys.stderr)
        return 2
    if args.report_only:
        if not (args.group or args.rows):  # every row that has a result
            suffix = ".smoke.json" if args.smoke else ".json"
            names = [n for n in rows if (args.results_dir / f"{n}{suffix}").is_file()]
            if not names:
                print(
                    f"report: no results under {args.results_dir} (run a reproduce target first)",
                    file=sys.stderr,
                )
                return 1
        return 0 if report(names, args.results_dir, args.smoke, rows) else 1
    if args.model_dir:
        os.environ["HEINSEN_MODEL_DIR"] = str(args.model_dir)
    if not args.smoke and not args.skip_preflight:
        fetch_missing(names, args.data_dir, offline=args.offline)
        gpus = args.devices or args.gpus
        reports = [preflight(rows[n], args.data_dir, gpus, args.model_dir, args.results_dir) for n in names]
        for r in reports:
            print(r.render())
        if not all(r.ok for r in reports):
            print(
                "\npreflight failed: nothing was trained. Fix the problems above (or run with SMOKE=1 to check "
                "the chain on tiny stand-ins).",
                file=sys.stderr,
            )
            return 2
    if args.devices is not None and args.devices < 1:
        print(f"error: --devices: expected an integer >= 1, got {args.devices}", file=sys.stderr)
        return 2
    extra = shlex.split(args.args)
    for name in names:
        print(f"\n=== {name}{' (smoke)' if args.smoke else ''}: {rows[name].task} ===", flush=True)
        run_row(
            rows[name],
            data_dir=args.data_dir,
            results_dir=args.results_dir,
            gpus=args.gpus,
            logger=args.logger,
            precision=args.precision,
            smoke=args.smoke,
            extra_overrides=extra,
            devices=args.devices,
            resume=args.resume,
            select=args.select,
        )
    if not _is_rank_zero():
        return 0
    return 0 if report(names, args.results_dir, args.smoke, rows) else 1


if __name__ == "__main__":
    sys.exit(main())
