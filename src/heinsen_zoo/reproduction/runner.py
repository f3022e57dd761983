"""``make reproduce-*``: preflight → fit → test → results/<row>.json → report, for each row in order.

    python -m heinsen_zoo.reproduction.runner --group text --gpus 4 --data-dir /data --model-dir /models
    python -m heinsen_zoo.reproduction.runner --rows cifar10 --smoke      # tiny stand-ins on CPU
    python -m heinsen_zoo.reproduction.runner --report-only               # re-render results/REPORT.md

Without ``--smoke`` a row that fails preflight (no GPU, no data, no backbone weights) stops the run before
any training with a message saying what is missing. With ``--smoke`` every row runs the whole chain on tiny
stand-ins (tiny random backbones, small generated data in the real on-disk formats) in minutes on a CPU;
its numbers are marked as smoke and never reported as reproductions.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from .expected import ExpectedRow, load_expected, order_by_dependencies, rows_in_group
from .preflight import DATA_CHECKS, preflight
from .report import ResultRecord, load_results, render_report, write_result


def _metric_value(metrics: dict, key: str = "test/acc") -> float:
    if key not in metrics:
        raise RuntimeError(f"test metrics: expected key {key!r}, got {sorted(metrics)}")
    return 100.0 * float(metrics[key])


def _is_rank_zero() -> bool:
    return int(os.environ.get("LOCAL_RANK", "0")) == 0 and int(os.environ.get("NODE_RANK", "0")) == 0


def run_row(
    row: ExpectedRow, *, data_dir: Path, results_dir: Path, gpus: int, logger: str, precision: str | None,
    smoke: bool, extra_overrides: list[str] | None = None,
) -> ResultRecord:
    """Fit and test one row; returns (and writes) its result record."""
    from heinsen_zoo.cli import build_experiment

    if smoke:
        from .smoke import prepare_smoke

        overrides = prepare_smoke(row.name, results_dir / "smoke" / row.name, results_dir)
        options = {"logger": logger}
    else:
        sub = DATA_CHECKS.get(row.name, (row.name, []))[0]
        overrides = ["--data.init_args.data_dir", str(data_dir / sub)]
        overrides += ["--trainer.default_root_dir", str(results_dir / "runs" / row.name)]
        if precision:
            overrides += ["--trainer.precision", precision]
        options = {"logger": logger, "gpus": gpus}
    overrides += extra_overrides or []
    start = time.perf_counter()
    cli = build_experiment(row.experiment, overrides, **options)
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    ckpt = "best" if cli.trainer.checkpoint_callback and cli.trainer.checkpoint_callback.best_model_path else None
    tested = cli.trainer.test(cli.model, datamodule=cli.datamodule, ckpt_path=ckpt)
    wall = time.perf_counter() - start
    record = ResultRecord(
        row=row.name, value=_metric_value(tested[0]), wall_s=wall, gpus=0 if smoke else gpus, smoke=smoke,
        metric=row.metric, split=row.test_split or row.split, device=_device_name(cli.trainer),
        command=" ".join(sys.argv), checkpoint=str(getattr(cli.trainer.checkpoint_callback, "best_model_path", "")),
    )
    if _is_rank_zero():
        write_result(record, results_dir)
    return record


def _device_name(trainer) -> str:
    try:
        import torch

        if trainer.strategy.root_device.type == "cuda":
            return f"{trainer.num_devices}x {torch.cuda.get_device_name(trainer.strategy.root_device)}"
    except Exception:  # noqa: BLE001 - best-effort description only
        pass
    return "cpu"


def report(names: list[str], results_dir: Path, smoke: bool, rows: dict[str, ExpectedRow]) -> bool:
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
    p = argparse.ArgumentParser(prog="heinsen-zoo-reproduce", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    which = p.add_mutually_exclusive_group()
    which.add_argument("--group", choices=["vision", "text", "2019"], help="rows of one paper group")
    which.add_argument("--rows", nargs="+", help="row names (dependencies are added first)")
    p.add_argument("--gpus", type=int, default=1)
    p.add_argument("--data-dir", type=Path, default=Path("data"))
    p.add_argument("--model-dir", type=Path, default=None, help="local backbone weights (HEINSEN_MODEL_DIR)")
    p.add_argument("--results-dir", type=Path, default=Path("results"))
    p.add_argument("--precision", default=None)
    p.add_argument("--logger", default="csv", choices=["csv", "tensorboard", "wandb"])
    p.add_argument("--smoke", action="store_true", help="tiny stand-ins on CPU (checks the chain only)")
    p.add_argument("--report-only", action="store_true", help="only render the report from results/")
    p.add_argument("--skip-preflight", action="store_true", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    rows = load_expected()
    if args.group:
        names = rows_in_group(args.group, rows)
    elif args.rows:
        names = order_by_dependencies(args.rows, rows)
    else:
        names = list(rows)
    if args.report_only:
        if not (args.group or args.rows):  # every row that has a result
            suffix = ".smoke.json" if args.smoke else ".json"
            names = [n for n in rows if (args.results_dir / f"{n}{suffix}").is_file()]
            if not names:
                print(f"report: no results under {args.results_dir} (run a reproduce target first)", file=sys.stderr)
                return 1
        return 0 if report(names, args.results_dir, args.smoke, rows) else 1
    if args.model_dir:
        os.environ["HEINSEN_MODEL_DIR"] = str(args.model_dir)
    if not args.smoke and not args.skip_preflight:
        reports = [preflight(rows[n], args.data_dir, args.gpus, args.model_dir, args.results_dir) for n in names]
        for r in reports:
            print(r.render())
        if not all(r.ok for r in reports):
            print("\npreflight failed: nothing was trained. Fix the problems above (or run with SMOKE=1 to check "
                  "the chain on tiny stand-ins).", file=sys.stderr)
            return 2
    for name in names:
        print(f"\n=== {name}{' (smoke)' if args.smoke else ''}: {rows[name].task} ===", flush=True)
        run_row(rows[name], data_dir=args.data_dir, results_dir=args.results_dir, gpus=args.gpus,
                logger=args.logger, precision=args.precision, smoke=args.smoke)
    if not _is_rank_zero():
        return 0
    return 0 if report(names, args.results_dir, args.smoke, rows) else 1


if __name__ == "__main__":
    sys.exit(main())
