"""The reproduction rows: THE one definition of each paper row, read from ``configs/rows.yaml``.

Every consumer derives from these rows: the runner (which rows, their order, their experiment), the preflight
(data folder and required files, backbone id + revision, GPU memory), the smoke stand-ins (``smoke:``), the
Makefile's ``reproduce-<row>`` targets, the report (published number, tolerance) and the zoo registry's
expected metrics. This module imports neither the zoo nor Lightning (only PyYAML), so anything may read it.

The file ships inside the package (``heinsen_zoo/configs/rows.yaml``; ``reproduce/expected.yaml`` is a link
to it in a checkout). Files named in ``$HEINSEN_ROWS`` (``os.pathsep``-separated) are read after it and add
rows (a row name defined twice is an error naming both files).

Example:
    >>> rows = load_rows()
    >>> rows["cifar10"].published, rows["sst2"].depends_on, rows["cifar10"].backbone_id
    (99.2, 'sst5', 'microsoft/beit-large-patch16-224')
    >>> rows["cifar10"].data_folder, rows["smallnorb2019"].backbone_id is None
    ('cifar10', True)
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

__all__ = [
    "ROWS_ENV",
    "Row",
    "builtin_rows_path",
    "load_rows",
    "order_by_dependencies",
    "published_metric",
    "rows_in_group",
    "rows_paths",
]

ROWS_ENV = "HEINSEN_ROWS"
SCHEMA_VERSION = 1
_REQUIRED = ("paper", "group", "task", "backbone", "metric", "split", "published", "tolerance", "experiment")


def builtin_rows_path() -> Path:
    """The rows shipped with the package (``heinsen_zoo/configs/rows.yaml``)."""
    return Path(__file__).resolve().parents[1] / "configs" / "rows.yaml"


def rows_paths() -> list[Path]:
    """The built-in rows file, then every file named in ``$HEINSEN_ROWS``."""
    extra = [Path(p).expanduser() for p in os.environ.get(ROWS_ENV, "").split(os.pathsep) if p.strip()]
    return [builtin_rows_path(), *extra]


@dataclass(frozen=True)
class Row:
    """One published number, how to reproduce it, where its data and backbone come from, its smoke stand-ins.

    ``backbone`` reads ``<hub id> @ <revision>`` (or ``none (...)`` for a network trained end to end);
    ``data`` is ``{"folder": <DATA_DIR sub-folder>, "requires": [[alternative glob, ...], ...]}``;
    ``smoke`` is ``{"data": <smoke task or DataModule class path>, "backbone": <tiny kind>, "pad_mode": ...,
    "model": {<model init_args overrides>}, "init_from": <row whose smoke export this row starts from>}``.
    """

    name: str
    paper: str
    group: str
    task: str
    backbone: str
    metric: str
    split: str
    published: float
    tolerance: float
    experiment: str
    hardware: str = ""
    est_gpu_hours: float = 0.0
    data_layout: str = ""
    depends_on: str | None = None
    test_split: str | None = None
    data: dict[str, Any] = field(default_factory=dict)
    smoke: dict[str, Any] = field(default_factory=dict)
    min_gpu_memory_gb: float | None = None
    source: str = ""  # the file that defines the row
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def command(self) -> str:
        """The make target that reproduces this row."""
        return f"make reproduce-{self.name}"

    @property
    def backbone_id(self) -> str | None:
        """The backbone's hub id (None: no pretrained backbone)."""
        head = self.backbone.split("@")[0].strip()
        return None if head.split(" ")[0].lower() == "none" else head

    @property
    def backbone_revision(self) -> str | None:
        """The backbone's pinned revision (None when unpinned or no backbone)."""
        if self.backbone_id is None or "@" not in self.backbone:
            return None
        return self.backbone.split("@", 1)[1].strip() or None

    @property
    def data_folder(self) -> str | None:
        """The DATA_DIR sub-folder of the row's data (None when the row declares none)."""
        return self.data.get("folder")

    @property
    def data_requires(self) -> list[list[str]]:
        """Files preflight looks for under the data folder: each inner list holds alternatives."""
        return [list(alts) for alts in self.data.get("requires", [])]


_FIELDS = set(Row.__dataclass_fields__) - {"name", "extra", "source"}


def _check_row(path: Path, name: str, spec: Any) -> dict[str, Any]:
    where = f"{path}: row {name!r}"
    if not isinstance(spec, dict):
        raise ValueError(f"{where}: expected a mapping of fields, got {type(spec).__name__}")
    missing = sorted(set(_REQUIRED) - set(spec))
    if missing:
        raise ValueError(f"{where} lacks {missing}")
    for key in ("published", "tolerance"):
        if not isinstance(spec[key], int | float) or isinstance(spec[key], bool):
            raise ValueError(f"{where}: {key} must be a number, got {spec[key]!r}")
    data = spec.get("data", {})
    if not isinstance(data, dict) or (data and not isinstance(data.get("folder"), str)):
        raise ValueError(
            f"{where}: data must be {{folder: <sub-folder>, requires: [[glob, ...], ...]}}, got {data!r}"
        )
    requires = data.get("requires", [])
    if not isinstance(requires, list) or not all(
        isinstance(alts, list) and alts and all(isinstance(p, str) for p in alts) for alts in requires
    ):
        raise ValueError(
            f"{where}: data.requires must be a list of non-empty lists of globs, got {requires!r}"
        )
    smoke = spec.get("smoke", {})
    if not isinstance(smoke, dict) or (smoke and not isinstance(smoke.get("data"), str)):
        raise ValueError(f"{where}: smoke must be a mapping with a 'data' task or class path, got {smoke!r}")
    if not isinstance(smoke.get("model", {}), dict):
        raise ValueError(f"{where}: smoke.model must be a mapping of model init_args, got {smoke['model']!r}")
    return spec


def _read(path: Path) -> dict[str, Row]:
    if not path.is_file():
        raise FileNotFoundError(f"rows: {path} not found")
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict) or data.get("schema_version") != SCHEMA_VERSION:
        got = data.get("schema_version") if isinstance(data, dict) else data
        raise ValueError(f"{path}: expected schema_version {SCHEMA_VERSION}, got {got!r}")
    rows: dict[str, Row] = {}
    for name, spec in (data.get("rows") or {}).items():
        spec = _check_row(path, str(name), spec)
        known = {k: v for k, v in spec.items() if k in _FIELDS}
        extra = {k: v for k, v in spec.items() if k not in _FIELDS}
        known["group"] = str(known["group"])
        known["published"], known["tolerance"] = float(known["published"]), float(known["tolerance"])
        rows[str(name)] = Row(name=str(name), source=str(path), extra=extra, **known)
    return rows


def load_rows(path: str | Path | None = None) -> dict[str, Row]:
    """All rows in file order: ``path`` alone, or the built-in file plus ``$HEINSEN_ROWS``.

    Raises FileNotFoundError naming a missing file, ValueError naming a malformed row, a row defined twice, or
    a ``depends_on`` naming no row.
    """
    paths = [Path(path)] if path is not None else rows_paths()
    rows: dict[str, Row] = {}
    for file in paths:
        for name, row in _read(file).items():
            if name in rows:
                raise ValueError(f"rows: row {name!r} is defined in {rows[name].source} and again in {file}")
            rows[name] = row
    for row in rows.values():
        if row.depends_on and row.depends_on not in rows:
            raise ValueError(f"{row.source}: row {row.name!r} depends_on {row.depends_on!r}, not a row")
    return rows


def published_metric(name: str, rows: dict[str, Row] | None = None) -> tuple[str, str, float, float]:
    """``(metric, split, published value, tolerance)`` of row ``name`` (what the zoo registry reports)."""
    rows = rows if rows is not None else load_rows()
    if name not in rows:
        raise KeyError(f"row: unknown row {name!r}; known {sorted(rows)}")
    row = rows[name]
    return row.metric, row.split, row.published, row.tolerance


def rows_in_group(group: str, rows: dict[str, Row] | None = None) -> list[str]:
    """Row names of a group (``vision``, ``text``, ``2019``) in file order, dependencies first."""
    rows = rows if rows is not None else load_rows()
    names = [n for n, r in rows.items() if r.group == group]
    if not names:
        raise ValueError(
            f"group: no rows in group {group!r}; known groups {sorted({r.group for r in rows.values()})}"
        )
    return order_by_dependencies(names, rows)


def order_by_dependencies(names: list[str], rows: dict[str, Row]) -> list[str]:
    """Put each row after the row it depends on (adding that row when it is missing)."""
    ordered: list[str] = []

    def visit(name: str, stack: tuple[str, ...] = ()) -> None:
        if name in ordered:
            return
        if name not in rows:
            raise KeyError(f"row: unknown row {name!r}; known {sorted(rows)}")
        if name in stack:
            raise ValueError(f"row: dependency cycle {' -> '.join((*stack, name))}")
        dep = rows[name].depends_on
        if dep:
            visit(dep, (*stack, name))
        ordered.append(name)

    for name in names:
        visit(name)
    return ordered
