"""Reproduction of the papers' published numbers: expected values, preflight, runs, report.

``reproduce/expected.yaml`` (repository root) holds every published number with its tolerance; each run
writes ``results/<row>.json``; :mod:`.report` renders the table and fails on an out-of-tolerance number.
"""

from .expected import ExpectedRow, load_expected
from .report import ResultRecord, judge, render_report, write_result

__all__ = ["ExpectedRow", "ResultRecord", "judge", "load_expected", "render_report", "write_result"]
