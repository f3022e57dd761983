"""Checks before spending GPU hours: data layout, backbone weights, GPUs, disk; and a time estimate.

Every problem found is reported at once (not just the first), each with what to do about it.

Example:
    >>> from heinsen_zoo.reproduction.expected import load_expected
    >>> report = preflight(load_expected()["cifar10"], data_dir="/nonexistent", gpus=1)
    >>> report.ok
    False
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from heinsen_zoo.backbones.base import GPT2_LARGE_REVISION

from .expected import ExpectedRow

# Hugging Face layouts the CIFAR and IMDB DataModules read (heinsen_zoo.data.hf_local): a save_to_disk folder
# or the hub's parquet files (e.g. plain_text/train-00000-of-00001.parquet, as heinsen_zoo.data.fetch writes).
_HF_LAYOUTS = ["dataset_dict.json", "**/train-*.parquet"]

# Where each row's data lives under DATA_DIR, and the files that must exist (any one pattern per entry).
DATA_CHECKS: dict[str, tuple[str, list[list[str]]]] = {
    "imagenet1k": ("imagenet", [["train/*/*"], ["val/*/*"]]),
    "cifar10": ("cifar10", [["cifar-10-batches-py/data_batch_1", "cifar-10-python.tar.gz", *_HF_LAYOUTS]]),
    "cifar100": ("cifar100", [["cifar-100-python/train", "cifar-100-python.tar.gz", *_HF_LAYOUTS]]),
    "imdb": ("imdb", [["aclImdb/train/pos/*.txt", "train/pos/*.txt", *_HF_LAYOUTS]]),
    "sst5": ("sst", [["trees/train.txt"], ["trees/test.txt"]]),
    "sst2": ("sst", [["trees/train.txt"], ["trees/test.txt"]]),
    "sst5_2019": ("sst", [["trees/train.txt"], ["trees/test.txt"]]),
    "sst2_2019": ("sst", [["trees/train.txt"], ["trees/test.txt"]]),
    "smallnorb2019": (
        "smallnorb",
        [
            [
                "smallnorb-5x46789x9x18x6x2x96x96-training-dat.mat",
                "smallnorb-5x46789x9x18x6x2x96x96-training-dat.mat.gz",
            ],
            [
                "smallnorb-5x01235x9x18x6x2x96x96-testing-dat.mat",
                "smallnorb-5x01235x9x18x6x2x96x96-testing-dat.mat.gz",
            ],
        ],
    ),
}

# Backbone (hub id, pinned revision) per row; None = no pretrained backbone.
BACKBONES: dict[str, tuple[str, str | None] | None] = {
    "imagenet1k": ("microsoft/beit-large-patch16-224", "0bd443c"),
    "cifar10": ("microsoft/beit-large-patch16-224", "0bd443c"),
    "cifar100": ("microsoft/beit-large-patch16-224", "0bd443c"),
    "imdb": ("roberta-large", "5069d8a"),
    "sst5": ("roberta-large", "5069d8a"),
    "sst2": ("roberta-large", "5069d8a"),
    "sst5_2019": ("gpt2-large", GPT2_LARGE_REVISION),
    "sst2_2019": ("gpt2-large", GPT2_LARGE_REVISION),
    "smallnorb2019": None,
}

MIN_GPU_MEMORY_GB = {"smallnorb2019": 8}
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


def check_data(row: str, data_dir: str | Path) -> list[str]:
    """Problems with the data layout of ``row`` under ``data_dir`` (empty when fine)."""
    if row not in DATA_CHECKS:
        return []
    sub, requirements = DATA_CHECKS[row]
    root = Path(data_dir) / sub
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


def check_backbone(row: str, model_dir: str | Path | None) -> list[str]:
    """Problems finding the backbone weights of ``row`` offline (MODEL_DIR or the HF cache)."""
    backbone = BACKBONES.get(row)
    if backbone is None:
        return []
    repo_id, revision = backbone
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


def check_gpus(row: str, gpus: int) -> list[str]:
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
    count = torch.cuda.device_count()
    problems = []
    if count < gpus:
        problems.append(f"gpu: GPUS={gpus} requested, {count} visible")
    need = MIN_GPU_MEMORY_GB.get(row, DEFAULT_MIN_GPU_MEMORY_GB)
    for i in range(min(count, gpus)):
        total = torch.cuda.get_device_properties(i).total_memory / 2**30
        if total < need:
            problems.append(f"gpu: device {i} has {total:.0f} GiB, {row} needs about {need} GiB")
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
    row: ExpectedRow,
    data_dir: str | Path,
    gpus: int,
    model_dir: str | Path | None = None,
    results_dir: str | Path = "results",
) -> PreflightReport:
    """All checks for one row, plus the time estimate as a note."""
    report = PreflightReport(row.name)
    report.problems += check_gpus(row.name, gpus)
    report.problems += check_data(row.name, data_dir)
    report.problems += check_backbone(row.name, model_dir)
    report.problems += check_disk(results_dir)
    hours = row.est_gpu_hours / max(gpus, 1)
    report.notes.append(f"estimate: about {hours:.1f} h on {gpus} GPU(s) ({row.hardware})")
    if row.depends_on:
        report.notes.append(f"depends on {row.depends_on}: its export must exist first (run in order)")
    return report
