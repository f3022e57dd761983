"""The demo's recipe study (reproduce/demo/budget_study.py): its training-subset draw and argument checks."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[2] / "reproduce" / "demo" / "budget_study.py"


def _study():
    spec = importlib.util.spec_from_file_location("budget_study_for_tests", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_stratified_rows_keep_each_topics_share():
    labels = torch.tensor([0] * 40 + [1] * 20 + [2] * 3 + [3] * 1)
    rows = _study().stratified_rows(labels, 0.25, seed=0)
    assert rows.tolist() == sorted(set(rows.tolist()))  # sorted, no repeats
    assert labels[rows].bincount(minlength=4).tolist() == [10, 5, 1, 1]  # round(0.25 n), at least one
    again = _study().stratified_rows(labels, 0.25, seed=0)
    other = _study().stratified_rows(labels, 0.25, seed=1)
    assert torch.equal(rows, again) and not torch.equal(rows, other)
    assert torch.equal(_study().stratified_rows(labels, 1.0, seed=3), torch.arange(len(labels)))


@pytest.mark.parametrize(
    "args, message",
    [
        (["--train-fraction", "1.5"], "error: --train-fraction: expected a number in (0, 1], got 1.5"),
        (["--val-every", "0"], "error: --val-every: expected a whole number >= 1, got 0"),
    ],
)
def test_bad_arguments_are_an_error_line(args, message):
    proc = subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr


def test_validated_epochs_every_nth_and_always_the_last():
    epochs = _study().validated_epochs
    assert epochs(10, 1) == list(range(1, 11))
    assert epochs(97, 10) == [10, 20, 30, 40, 50, 60, 70, 80, 90, 97]
    assert epochs(30, 10) == [10, 20, 30]  # the last once, not twice
    assert epochs(5, 10) == [5]
