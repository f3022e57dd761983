"""Checks before spending GPU hours: data layout, backbone weights, GPUs, disk; and a time estimate.

Every problem found is reported at once (not just the first), each with what to do about it.

Example:
    >>> from heinsen_zoo.reproduction.rows import load_rows
    >>> report = preflight(load_rows()["cifar10"], data_dir="/nonexistent", gpus=1)
    >>> report.ok
    False
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from .rows import Row, load_rows

# Data folder + required files, backbone id + revision and GPU memory are the row's own (configs/rows.yaml).
DEFAULT_MIN_GPU_MEMORY_GB = 16
MIN_FREE_DISK_GB = 20


@dataclass
class PreflightReport:
    row: str
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def render(self) -> str:
        head = f"preflight {self.row}: " + ("OK" if self.ok else f"{len(self.problems)} problem(s)")
        body = [f"  ✗ {p}" for p in self.problems] + [f"  · {n}" for n in self.notes]
        return "\n".join([head, *body])


def _row(row: str | Row) -> Row:
    return row if isinstance(row, Row) else load_rows()[row]


def check_data(row: str | Row, data_dir: str | Path) -> list[str]:
    """Problems with the data layout of ``row`` under ``data_dir`` (empty when fine or nothing declared)."""
    row = _row(row)
    if row.data_folder is None:
        return []
    requirements = row.data_requires
    root = Path(data_dir) / row.data_folder
    if not root.is_dir():
        return [
            f"data: {root} does not exist (DATA_DIR={data_dir}); expected {requirements_text(root, requirements)}"
        ]
    problems = []
    for alternatives in requirements:
        if not any(any(root.glob(pattern)) for pattern in alternatives):
            problems.append(f"data: none of {alternatives} found under {root}")
    return problems


def requirements_text(root: Path, requirements: list[list[str]]) -> str:
    return "; ".join(" or ".join(str(root / p) for p in alts) for alts in requirements)


def _hf_cache_has(repo_id: str, revision: str | None) -> bool:
    hub_cache = Path(
        os.environ.get("HF_HUB_CACHE") or Path(os.environ.get("HF_HOME", "~/.cache/huggingface")) / "hub"
    )
    snapshots = hub_cache.expanduser() / f"models--{repo_id.replace('/', '--')}" / "snapshots"
    if not snapshots.is_dir():
        return False
    return any(p.name.startswith(revision or "") for p in snapshots.iterdir())


def check_backbone(row: str | Row, model_dir: str | Path | None) -> list[str]:
    """Problems finding the backbone weights of ``row`` offline (MODEL_DIR or the HF cache)."""
    row = _row(row)
    repo_id, revision = row.backbone_id, row.backbone_revision
    if repo_id is None:
        return []
    candidates = []
    if model_dir:
        candidates += [Path(model_dir) / repo_id, Path(model_dir) / repo_id.replace("/", "--")]
    if any((c / "config.json").is_file() for c in candidates) or _hf_cache_has(repo_id, revision):
        return []
    rev = f" --revision {revision}" if revision else ""
    where = f"{Path(model_dir) / repo_id}" if model_dir else "the Hugging Face cache (or set MODEL_DIR)"
    return [
        f"backbone: {repo_id}{'@' + revision if revision else ''} not found in {where}; on a machine with "
        f"internet run `huggingface-cli download {repo_id}{rev} --local-dir <MODEL_DIR>/{repo_id}` and pass MODEL_DIR"
    ]


def check_gpus(row: str | Row, gpus: int) -> list[str]:
    """Problems with the GPUs: count and memory per device."""
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency
        return ["gpu: torch is not installed"]
    if not torch.cuda.is_available():
        return [
            f"gpu: no CUDA GPU visible (GPUS={gpus} requested); the paper-scale runs need GPUs — "
            "use SMOKE=1 for the CPU smoke chain"
        ]
    row = _row(row)
    count = torch.cuda.device_count()
    problems = []
    if count < gpus:
        problems.append(f"gpu: GPUS={gpus} requested, {count} visible")
    need = row.min_gpu_memory_gb or DEFAULT_MIN_GPU_MEMORY_GB
    for i in range(min(count, gpus)):
        total = torch.cuda.get_device_properties(i).total_memory / 2**30
        if total < need:
            problems.append(f"gpu: device {i} has {total:.0f} GiB, {row.name} needs about {need} GiB")
    return problems


def check_disk(path: str | Path, min_free_gb: float = MIN_FREE_DISK_GB) -> list[str]:
    path = Path(path)
    probe = path if path.exists() else next((p for p in path.parents if p.exists()), Path("."))
    free = shutil.disk_usage(probe).free / 2**30
    if free < min_free_gb:
        return [
            f"disk: {free:.1f} GiB free at {probe}, at least {min_free_gb} GiB wanted for checkpoints and logs"
        ]
    return []


def preflight(
    row: Row,
    data_dir: str | Path,
    gpus: int,
    model_dir: str | Path | None = None,
    results_dir: str | Path = "results",
) -> PreflightReport:
    """All checks for one row, plus the time estimate as a note."""
    report = PreflightReport(row.name)
    report.problems += check_gpus(row, gpus)
    report.problems += check_data(row, data_dir)
    report.problems += check_backbone(row, model_dir)
    report.problems += check_disk(results_dir)
    hours = row.est_gpu_hours / max(gpus, 1)
    report.notes.append(f"estimate: about {hours:.1f} h on {gpus} GPU(s) ({row.hardware})")
    if row.depends_on:
        report.notes.append(f"depends on {row.depends_on}: its export must exist first (run in order)")
    return report
