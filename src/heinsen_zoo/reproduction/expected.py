"""Deprecated alias of :mod:`heinsen_zoo.reproduction.rows` (the rows were first called "expected numbers").

``ExpectedRow`` is :class:`~heinsen_zoo.reproduction.rows.Row`; ``load_expected`` is
:func:`~heinsen_zoo.reproduction.rows.load_rows`; ``expected_path()`` is the built-in rows file
(``reproduce/expected.yaml`` links to it in a checkout).

Example:
    >>> rows = load_expected()
    >>> rows["cifar10"].published, rows["sst2"].depends_on
    (99.2, 'sst5')
"""

from __future__ import annotations

import os
from pathlib import Path

from .rows import Row, builtin_rows_path, load_rows, order_by_dependencies, rows_in_group

__all__ = [
    "ExpectedRow",
    "expected_path",
    "load_expected",
    "order_by_dependencies",
    "repo_root",
    "rows_in_group",
]

ExpectedRow = Row
load_expected = load_rows
expected_path = builtin_rows_path


def repo_root() -> Path:
    """The repository root (``$HEINSEN_REPO`` or the folder above ``src/``; a checkout's root)."""
    env = os.environ.get("HEINSEN_REPO")
    return Path(env) if env else Path(__file__).resolve().parents[3]
