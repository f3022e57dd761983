"""Results files and the reproduction report.

Each run writes ``results/<row>.json`` (:func:`write_result`); :func:`render_report` turns the results of a
set of rows into a markdown table next to the published numbers and says whether every row passed.
Smoke runs (tiny stand-ins on CPU) are marked ``smoke`` and never count as reproductions.

Example:
    >>> from heinsen_zoo.reproduction.expected import load_expected
    >>> rows = load_expected()
    >>> judge(rows["cifar10"], ResultRecord(row="cifar10", value=99.0, wall_s=1.0, gpus=1))
    'pass'
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .rows import Row as ExpectedRow


@dataclass
class ResultRecord:
    """What one run measured and how. ``value`` is in percent, like the published numbers.

    Provenance: ``checkpoint`` is ``"final"`` (the head after the last epoch, what the papers report) or the
    selection rule used (never the test split); ``world_size`` processes with ``per_device_batch`` each gave
    the measured ``effective_batch``; ``n_test_examples`` were scored (equal to ``test_split_size``, checked);
    ``precision``, backbone id + pinned revision, ``git_commit``, ``seed``, ``wall_s`` and ``device`` describe
    the run; ``resumed_from`` names the checkpoint a resumed run continued from.
    """

    row: str
    value: float
    wall_s: float
    gpus: int
    smoke: bool = False
    metric: str = "top1"
    split: str = "test"
    device: str = ""
    command: str = ""
    checkpoint: str = "final"
    checkpoint_path: str = ""
    world_size: int = 1
    per_device_batch: list = field(default_factory=list)
    effective_batch: int | None = None
    n_test_examples: int | None = None
    test_split_size: int | None = None
    precision: str = ""
    backbone_id: str | None = None
    backbone_revision: str | None = None
    git_commit: str = ""
    seed: int | None = None
    resumed_from: str | None = None
    curves_png: str = ""  # training curves (loss, accuracy, learning rate), relative to the results folder
    finished_at: str = field(default_factory=lambda: time.strftime("%Y-%m-%d %H:%M:%S"))

    @classmethod
    def from_json(cls, path: str | Path) -> ResultRecord:
        data = json.loads(Path(path).read_text())
        missing = {"row", "value", "wall_s", "gpus"} - set(data)
        if missing:
            raise ValueError(f"{path}: results file lacks {sorted(missing)}")
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        record = cls(**known)
        if not isinstance(record.value, (int, float)) or not math.isfinite(record.value):
            raise ValueError(f"{path}: value must be a finite number, got {record.value!r}")
        return record


def write_result(record: ResultRecord, results_dir: str | Path) -> Path:
    """Write ``<results_dir>/<row>.json`` (smoke runs: ``<row>.smoke.json``)."""
    results_dir = Path(results_dir)
    results_dir.mkdir(parents=True, exist_ok=True)
    path = results_dir / (f"{record.row}.smoke.json" if record.smoke else f"{record.row}.json")
    path.write_text(json.dumps(asdict(record), indent=2) + "\n")
    return path


def judge(expected: ExpectedRow, result: ResultRecord | None) -> str:
    """``pass``, ``FAIL`` (outside tolerance), ``missing`` (no result) or ``smoke`` (ran, not judged)."""
    if result is None:
        return "missing"
    if result.smoke:
        return "smoke"
    return "pass" if abs(result.value - expected.published) <= expected.tolerance + 1e-9 else "FAIL"


def _fmt_time(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def load_results(results_dir: str | Path, names: list[str], smoke: bool) -> dict[str, ResultRecord | None]:
    results_dir = Path(results_dir)
    out: dict[str, ResultRecord | None] = {}
    for name in names:
        path = results_dir / (f"{name}.smoke.json" if smoke else f"{name}.json")
        out[name] = ResultRecord.from_json(path) if path.is_file() else None
    return out


def render_report(
    rows: dict[str, ExpectedRow], names: list[str], results: dict[str, ResultRecord | None]
) -> tuple[str, bool]:
    """Markdown table of the rows ``names``; returns (markdown, all_ok).

    all_ok is False when any row FAILs or is missing; smoke rows are ok when they ran.
    """
    lines = [
        "| row | task | paper | published | ours | difference | tolerance | status | checkpoint | n test | "
        "eff. batch | devices | precision | wall time |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    ok = True
    for name in names:
        exp = rows[name]
        res = results.get(name)
        status = judge(exp, res)
        ok &= status in ("pass", "smoke")
        if res is None:
            ours = diff = wall = devices = ckpt = n_test = batch = precision = "—"
        else:
            ours = f"{res.value:.2f}"
            diff = f"{res.value - exp.published:+.2f}" if not res.smoke else "(smoke)"
            wall, devices = _fmt_time(res.wall_s), res.device or str(res.gpus)
            ckpt, precision = res.checkpoint or "—", res.precision or "—"
            n_test = "—" if res.n_test_examples is None else str(res.n_test_examples)
            batch = "—" if res.effective_batch is None else str(res.effective_batch)
        shown = "**FAIL**" if status == "FAIL" else status
        lines.append(
            f"| {name} | {exp.task} | {exp.paper} | {exp.published:.1f} | {ours} | {diff} | "
            f"±{exp.tolerance:.1f} | {shown} | {ckpt} | {n_test} | {batch} | {devices} | {precision} | {wall} |"
        )
    commits = sorted({r.git_commit for r in results.values() if r is not None and r.git_commit})
    if commits:
        lines.append("")
        lines.append(
            f"_code: git {', '.join(commits)}; 'final' = the head after the last epoch (as the papers "
            "report); n test = examples scored, equal to the split's size._"
        )
    curves = [
        (name, results[name].curves_png) for name in names if results.get(name) and results[name].curves_png
    ]
    if curves:
        lines += [
            "",
            "Training curves (loss, validation accuracy, learning rate per step, from the run's CSV log):",
            "",
        ]
        lines += [f"- {name}: [{png}]({png})" for name, png in curves]
    if any(r is not None and r.smoke for r in results.values()):
        lines.append("")
        lines.append(
            "_smoke: the whole chain ran on tiny stand-ins (tiny random backbones, generated data in the real "
            "formats); these numbers are NOT reproductions of the papers._"
        )
    return "\n".join(lines) + "\n", ok
