"""The whole reproduction chain on tiny stand-ins: runner → fit → test → results/<row>.smoke.json → report.

``--smoke`` swaps tiny random backbones and tiny real-format data into each row's experiment (same task and
DataModule classes) and runs on CPU; its numbers are marked smoke and never count as reproductions.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from heinsen_zoo.reproduction.runner import main as runner_main

pytestmark = pytest.mark.usefixtures("isolated_runner")


def _result(results: Path, row: str) -> dict:
    path = results / f"{row}.smoke.json"
    assert path.is_file(), f"{path} not written; results holds {sorted(p.name for p in results.iterdir())}"
    record = json.loads(path.read_text())
    assert record["row"] == row and record["smoke"] is True and record["gpus"] == 0
    assert record["device"] == "cpu"
    assert (
        isinstance(record["value"], float)
        and math.isfinite(record["value"])
        and 0.0 <= record["value"] <= 100.0
    )
    assert record["wall_s"] > 0
    return record


def _report_line(report: str, row: str) -> str:
    (line,) = [line for line in report.splitlines() if line.startswith(f"| {row} |")]
    return line


def test_smoke_cifar10_runs_the_whole_chain(tmp_path, capsys):
    results = tmp_path / "results"
    assert runner_main(["--rows", "cifar10", "--smoke", "--results-dir", str(results)]) == 0
    record = _result(results, "cifar10")
    # Provenance: the final head (nothing selected on the test split), what it was scored on, how it ran.
    assert record["checkpoint"] == "final" and Path(record["checkpoint_path"]).name == "last.ckpt"
    assert Path(record["checkpoint_path"]).is_file()
    assert record["n_test_examples"] == record["test_split_size"] == 31  # the smoke CIFAR-10 test split
    assert (
        record["world_size"] == 1 and record["per_device_batch"] == [50] and record["effective_batch"] == 50
    )
    assert record["precision"] == "32-true" and record["seed"] == 0 and record["resumed_from"] is None
    assert record["backbone_id"] == "tiny-beit-smoke" and "backbone_revision" in record
    assert len(record["git_commit"].split("+")[0]) == 40 or record["git_commit"] == "unknown"
    assert not (results / "cifar10.json").exists() and not (results / "REPORT.md").exists()
    report = (results / "REPORT.smoke.md").read_text()
    line = _report_line(report, "cifar10")
    assert "| smoke |" in line and "(smoke)" in line and f"{record['value']:.2f}" in line
    assert "| final | 31 | 50 | cpu | 32-true |" in line
    assert "NOT reproductions" in report
    assert report in capsys.readouterr().out  # the report is printed too
    # The trained head was exported in the zoo format.
    export = results / "smoke" / "cifar10" / "export"
    config = json.loads((export / "config.json").read_text())
    assert config["head"]["n_classes"] == 10 and config["backbone"]["id"] == "tiny-beit-smoke"
    assert not (tmp_path / "runs").exists()


def _spy_on_init_from(monkeypatch) -> list[dict]:
    """Record every ``init_from`` load: the source, the keys re-initialised, the head right after loading."""
    from heinsen_zoo.tasks import RoutingClassificationTask

    loads: list[dict] = []
    real_load = RoutingClassificationTask.load_initial_weights

    def recording_load(self):
        reinitialized = real_load(self)
        head = {k: v.detach().clone().cpu() for k, v in self.model.head.state_dict().items()}
        loads.append({"source": self.hparams.init_from, "reinitialized": reinitialized, "head": head})
        return reinitialized

    monkeypatch.setattr(RoutingClassificationTask, "load_initial_weights", recording_load)
    return loads


@pytest.mark.slow  # ~22 s alone (~7 s once the imports are warm)
def test_smoke_sst2_runs_sst5_first_and_starts_from_its_export(tmp_path, monkeypatch):
    loads = _spy_on_init_from(monkeypatch)
    results = tmp_path / "results"
    assert runner_main(["--rows", "sst2", "--smoke", "--results-dir", str(results)]) == 0
    _result(results, "sst5")
    _result(results, "sst2")
    report = (results / "REPORT.smoke.md").read_text()
    assert report.index("| sst5 |") < report.index("| sst2 |")

    sst5 = load_file(str(results / "smoke" / "sst5" / "export" / "model.safetensors"))
    sst2 = load_file(str(results / "smoke" / "sst2" / "export" / "model.safetensors"))
    last = sorted(k for k in sst5 if k.startswith("route.2."))
    frozen = sorted(set(sst5) - set(last))
    assert last and frozen and set(sst2) == set(sst5)

    # sst2 (and only sst2) loaded the sst5 export at the start of fit, re-creating the last routing.
    (load,) = loads
    assert Path(load["source"]) == results / "smoke" / "sst5" / "export"
    assert load["reinitialized"] == last
    for key in frozen:
        assert torch.equal(load["head"][key], sst5[key]), f"{key}: not loaded from the sst5 export"
    # sst5 trained its head (W starts at ones, B at zeros), so matching it is not a coincidence of init.
    assert not torch.equal(sst5["W"], torch.ones_like(sst5["W"]))
    assert not torch.equal(sst5["B"], torch.zeros_like(sst5["B"]))
    # All but the last routing stayed frozen through sst2's training; the last one is a 2-class routing.
    for key in frozen:
        assert torch.equal(sst2[key], sst5[key]), f"{key}: changed while frozen"
    assert any(sst2[k].shape != sst5[k].shape for k in last)
    sst2_config = json.loads((results / "smoke" / "sst2" / "export" / "config.json").read_text())
    assert sst2_config["head"]["n_classes"] == 2
