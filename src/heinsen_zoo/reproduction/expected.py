"""The published numbers (``reproduce/expected.yaml``) as typed rows.

Example:
    >>> rows = load_expected()
    >>> rows["cifar10"].published, rows["sst2"].depends_on
    (99.2, 'sst5')
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import yaml


def repo_root() -> Path:
    """The repository root (``$HEINSEN_REPO`` or the folder above ``src/``)."""
    env = os.environ.get("HEINSEN_REPO")
    return Path(env) if env else Path(__file__).resolve().parents[3]


def expected_path() -> Path:
    return repo_root() / "reproduce" / "expected.yaml"


@dataclass(frozen=True)
class ExpectedRow:
    """One published number and how to reproduce it."""

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
    extra: dict = field(default_factory=dict)

    @property
    def command(self) -> str:
        """The make target that reproduces this row."""
        return f"make reproduce-{self.name}"


_FIELDS = set(ExpectedRow.__dataclass_fields__) - {"name", "extra"}


def load_expected(path: str | Path | None = None) -> dict[str, ExpectedRow]:
    """Read the expected-numbers file; raises ValueError naming a row with missing fields."""
    path = Path(path) if path is not None else expected_path()
    if not path.is_file():
        raise FileNotFoundError(f"expected numbers: {path} not found")
    data = yaml.safe_load(path.read_text()) or {}
    if data.get("schema_version") != 1:
        raise ValueError(f"{path}: expected schema_version 1, got {data.get('schema_version')!r}")
    rows: dict[str, ExpectedRow] = {}
    for name, spec in (data.get("rows") or {}).items():
        missing = {"paper", "group", "task", "backbone", "metric", "split", "published", "tolerance", "experiment"}
        missing -= set(spec)
        if missing:
            raise ValueError(f"{path}: row {name!r} lacks {sorted(missing)}")
        known = {k: v for k, v in spec.items() if k in _FIELDS}
        extra = {k: v for k, v in spec.items() if k not in _FIELDS}
        known["group"] = str(known["group"])
        rows[name] = ExpectedRow(name=name, extra=extra, **known)
    return rows


def rows_in_group(group: str, rows: dict[str, ExpectedRow] | None = None) -> list[str]:
    """Row names of a group (``vision``, ``text``, ``2019``) in file order, dependencies first."""
    rows = rows if rows is not None else load_expected()
    names = [n for n, r in rows.items() if r.group == group]
    if not names:
        raise ValueError(f"group: no rows in group {group!r}; known groups {sorted({r.group for r in rows.values()})}")
    return order_by_dependencies(names, rows)


def order_by_dependencies(names: list[str], rows: dict[str, ExpectedRow]) -> list[str]:
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
