"""Reproduction of the papers' published numbers: expected values, preflight, runs, report.

:mod:`.rows` reads ``configs/rows.yaml`` (package data; ``reproduce/expected.yaml`` links to it), THE one
definition of every row: published number, tolerance, data, backbone, smoke stand-ins. Each run
writes ``results/<row>.json``; :mod:`.report` renders the table and fails on an out-of-tolerance number.
"""

from .expected import ExpectedRow, load_expected
from .report import ResultRecord, judge, render_report, write_result
from .rows import Row, load_rows

__all__ = [
    "ExpectedRow",
    "ResultRecord",
    "Row",
    "judge",
    "load_expected",
    "load_rows",
    "render_report",
    "write_result",
]
