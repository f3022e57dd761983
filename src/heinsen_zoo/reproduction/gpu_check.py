"""``make gpu-check``: what can only be checked on a GPU, in one script, in under 5 minutes.

On a machine with (at least) one CUDA GPU it runs, each step in its own process with a time limit:

1. every ``gpu``-marked test (``pytest -m gpu``);
2. one vision and one text smoke row (CIFAR-10, SST-5: the whole reproduction chain on tiny stand-ins) on
   the GPU in ``bf16-mixed``;
3. the demo experiment (``bbc_minilm_demo``: a routing head over MiniLM on BBC News) fitted on the GPU;

then prints a short markdown table (step, status, result, wall time) and exits 0 only if every step passed.
Without CUDA it says so and exits with status 2 before running anything.

    python -m heinsen_zoo.reproduction.gpu_check [--out runs/gpu-check]
"""

from __future__ import annotations

import argparse
import csv
import json
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from .expected import repo_root

__all__ = ["Step", "main", "plan"]

NO_CUDA = (
    "error: gpu-check needs a CUDA GPU, and torch.cuda.is_available() is False on this machine (torch {torch}, "
    "built for CUDA {cuda}). Run `make gpu-check` on a machine with an NVIDIA GPU and a CUDA build of torch; "
    "the CPU checks are `make test` and `.ci/run`."
)


@dataclass
class Step:
    """One check: a command, its time limit, and how to read its result."""

    name: str
    command: list[str]
    timeout_s: float
    kind: str  # "pytest" | "row" | "demo"
    output: Path | None = None  # the row's results dir or the demo's root dir


def plan(out: Path, python: str = sys.executable) -> list[Step]:
    """The steps of the check, writing under ``out``."""
    runner = [python, "-m", "heinsen_zoo.reproduction.runner", "--smoke", "--precision", "bf16-mixed"]
    on_gpu = "--trainer.accelerator gpu --trainer.devices 1"
    steps = [
        Step("gpu-marked tests", [python, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider",
                                  str(repo_root() / "tests")], 120, "pytest"),
    ]  # fmt: skip
    for row, what in (("cifar10", "vision"), ("sst5", "text")):
        results = out / f"smoke-{row}"
        command = [*runner, "--rows", row, "--results-dir", str(results), f"--args={on_gpu}"]
        steps.append(Step(f"smoke {row} ({what}), bf16-mixed", command, 45, "row", results))
    demo = out / "demo"
    command = [python, "-m", "heinsen_zoo.cli", "fit", "--experiment", "bbc_minilm_demo", "--trainer.accelerator",
               "gpu", "--trainer.devices", "1", "--trainer.default_root_dir", str(demo)]  # fmt: skip
    steps.append(Step("demo experiment (bbc_minilm_demo)", command, 90, "demo", demo))
    return steps


def _pytest_result(text: str) -> str:
    found = re.findall(r"=+ (.*(?:passed|failed|skipped|error).*?) in [0-9.]+s", text)
    return found[-1] if found else "no summary line"


def _row_result(results: Path) -> str:
    files = sorted(results.glob("*.smoke.json"))
    if not files:
        return "no result JSON"
    record = json.loads(files[0].read_text())
    return (f"{record['value']:.2f}% on {record['n_test_examples']} test examples, {record['device']}, "
            f"{record['precision']}")  # fmt: skip


def _demo_result(root: Path) -> str:
    values = []
    for metrics in sorted(root.glob("logs/version_*/metrics.csv")):
        with metrics.open() as handle:
            values += [row["val/acc"] for row in csv.DictReader(handle) if row.get("val/acc")]
    return f"val/acc {100 * float(values[-1]):.2f}% (last epoch)" if values else "no val/acc logged"


def run_step(step: Step) -> tuple[bool, str, float]:
    """Run one step; returns (passed, result text, wall seconds)."""
    start = time.perf_counter()
    try:
        done = subprocess.run(
            step.command, capture_output=True, text=True, timeout=step.timeout_s, cwd=repo_root()
        )
    except subprocess.TimeoutExpired:
        return False, f"timed out after {step.timeout_s:.0f} s", time.perf_counter() - start
    wall = time.perf_counter() - start
    text = done.stdout + done.stderr
    if step.kind == "pytest":
        result = _pytest_result(text)
    elif step.kind == "row":
        result = _row_result(step.output)
    else:
        result = _demo_result(step.output)
    if done.returncode != 0:
        tail = " | ".join(line for line in text.strip().splitlines()[-3:])
        result = f"exit {done.returncode}: {result}; {tail[-300:]}"
    return done.returncode == 0, result, wall


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gpu-check", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("runs/gpu-check"), help="where the runs write")
    args = parser.parse_args(argv)
    import torch

    if not torch.cuda.is_available():
        print(NO_CUDA.format(torch=torch.__version__, cuda=torch.version.cuda), file=sys.stderr)
        return 2
    print(
        f"gpu-check on {torch.cuda.get_device_name(0)} (torch {torch.__version__}, CUDA {torch.version.cuda})"
    )
    rows = []
    for step in plan(args.out.resolve()):
        print(f"... {step.name}", flush=True)
        rows.append((step.name, *run_step(step)))
    print("\n| step | status | result | wall time |\n|---|---|---|---|")
    for name, ok, result, wall in rows:
        print(f"| {name} | {'pass' if ok else '**FAIL**'} | {result} | {wall:.0f} s |")
    total = sum(row[3] for row in rows)
    print(f"\ntotal {total:.0f} s on 1x {torch.cuda.get_device_name(0)}")
    return 0 if all(row[1] for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
