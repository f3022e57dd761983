"""Fixtures shared by the zoo's tests."""

from __future__ import annotations

import sys
import tempfile

import pytest


@pytest.fixture
def isolated_runner(monkeypatch, tmp_path):
    """Run the reproduction runner in ``tmp_path``: nothing lands in the repository or the shared /tmp, and
    LightningCLI sees no pytest arguments."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.setattr(sys, "argv", ["heinsen-zoo-reproduce"])
