"""Shared by the routing tests: the independent float64 reference and one intra-op thread for tiny tensors."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

REFERENCE_MODULE = "routing_reference"

# reference.py is a plain helper module (not collected); register it once so tests can `import routing_reference`.
if REFERENCE_MODULE not in sys.modules:
    _spec = importlib.util.spec_from_file_location(REFERENCE_MODULE, Path(__file__).with_name("reference.py"))
    _module = importlib.util.module_from_spec(_spec)
    sys.modules[REFERENCE_MODULE] = _module
    _spec.loader.exec_module(_module)


@pytest.fixture(autouse=True)
def _one_thread(request):
    """Tiny tensors: one intra-op thread is much faster on a shared machine (slow tests keep all)."""
    if request.node.get_closest_marker("slow"):
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(autouse=True)
def _fused_path_at_test_sizes(request, monkeypatch):
    """The layers dispatch tiny inputs to the plain path (EfficientVectorRouting._fused_pays); the tests use
    tiny inputs to check the default fused path, so they lower the threshold to 0 (tests marked
    ``default_dispatch`` keep it)."""
    if request.node.get_closest_marker("default_dispatch"):
        return
    from heinsen_routing import efficient

    monkeypatch.setattr(efficient, "FUSED_MIN_WORK", 0)


def pytest_configure(config):
    config.addinivalue_line("markers", "default_dispatch: keep the layers' fused/plain size threshold")
