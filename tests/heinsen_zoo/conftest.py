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


@pytest.fixture
def isolated_zoo(tmp_path, monkeypatch):
    """Offline, a private cache and zoo home, no user registry or local weight folders; the registry (and the
    record of user registry files read) is restored afterwards."""
    from heinsen_zoo.zoo import registry

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HEINSEN_ZOO_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HEINSEN_ZOO_HOME", str(tmp_path / "home"))
    for var in ("HEINSEN_2022_DIR", "HEINSEN_2019_DIR", "HEINSEN_ZOO_REGISTRY", "HEINSEN_MODEL_DIR"):
        monkeypatch.delenv(var, raising=False)
    registry.list_models()  # the built-ins are registered before the snapshot
    saved = dict(registry._REGISTRY)
    loaded = set(registry._USER_FILES_LOADED)
    yield
    registry._REGISTRY.clear()
    registry._REGISTRY.update(saved)
    registry._USER_FILES_LOADED.clear()
    registry._USER_FILES_LOADED.update(loaded)
