"""The reproduction framework: expected numbers, preflight messages, report verdicts."""

from __future__ import annotations

import json

import pytest

from heinsen_zoo.reproduction.expected import load_expected, order_by_dependencies, rows_in_group
from heinsen_zoo.reproduction.preflight import check_backbone, check_data, preflight
from heinsen_zoo.reproduction.report import ResultRecord, judge, load_results, render_report, write_result
from heinsen_zoo.reproduction.runner import main as runner_main

PUBLISHED = {  # SPEC §5 and §6
    "imagenet1k": 86.7, "cifar10": 99.2, "cifar100": 93.8, "imdb": 96.2, "sst5": 59.8, "sst2": 96.0,
    "smallnorb2019": 99.1, "sst5_2019": 58.5, "sst2_2019": 95.6,
}


def test_expected_holds_every_published_number():
    rows = load_expected()
    assert {n: r.published for n, r in rows.items()} == PUBLISHED
    for row in rows.values():
        assert 0 < row.tolerance <= 1.0
        assert row.command == f"make reproduce-{row.name}"


def test_groups_order_dependencies_first():
    rows = load_expected()
    assert rows_in_group("vision", rows) == ["imagenet1k", "cifar10", "cifar100"]
    assert rows_in_group("text", rows) == ["imdb", "sst5", "sst2"]
    assert order_by_dependencies(["sst2"], rows) == ["sst5", "sst2"]
    with pytest.raises(KeyError, match="unknown row 'nope'"):
        order_by_dependencies(["nope"], rows)
    with pytest.raises(ValueError, match="no rows in group"):
        rows_in_group("audio", rows)


def _fabricate(results_dir, values: dict[str, float], smoke=False):
    for name, value in values.items():
        write_result(ResultRecord(row=name, value=value, wall_s=3600.0, gpus=4, smoke=smoke), results_dir)


def test_report_passes_within_tolerance_and_fails_outside(tmp_path):
    rows = load_expected()
    names = ["imdb", "sst5", "sst2"]
    _fabricate(tmp_path, {"imdb": 96.0, "sst5": 60.5, "sst2": 94.5})  # sst2 is 1.5 below 96.0 (tol 1.0)
    text, ok = render_report(rows, names, load_results(tmp_path, names, smoke=False))
    assert not ok
    assert "| sst2 |" in text and "**FAIL**" in text
    assert "| imdb | IMDB | heinsen2022 | 96.2 | 96.00 | -0.20 | ±0.5 | pass |" in text
    # The command-line report step exits non-zero on the failure.
    assert runner_main(["--report-only", "--rows", *names, "--results-dir", str(tmp_path)]) == 1
    assert (tmp_path / "REPORT.md").read_text() == text


def test_report_all_pass_exits_zero(tmp_path):
    _fabricate(tmp_path, {"cifar10": 99.0, "cifar100": 93.9, "imagenet1k": 86.9})
    assert runner_main(["--report-only", "--group", "vision", "--results-dir", str(tmp_path)]) == 0


def test_missing_result_fails_and_smoke_is_never_a_reproduction(tmp_path):
    rows = load_expected()
    assert judge(rows["cifar10"], None) == "missing"
    _fabricate(tmp_path, {"cifar10": 12.0}, smoke=True)
    results = load_results(tmp_path, ["cifar10"], smoke=True)
    assert judge(rows["cifar10"], results["cifar10"]) == "smoke"
    text, ok = render_report(rows, ["cifar10"], results)
    assert ok and "NOT reproductions" in text and "(smoke)" in text
    # A smoke result is never read as a real one.
    assert load_results(tmp_path, ["cifar10"], smoke=False)["cifar10"] is None


def test_corrupt_results_file_is_rejected(tmp_path):
    (tmp_path / "sst5.json").write_text(json.dumps({"row": "sst5", "value": "NaN?", "wall_s": 1, "gpus": 1}))
    with pytest.raises(ValueError, match="value must be a finite number"):
        load_results(tmp_path, ["sst5"], smoke=False)
    (tmp_path / "sst5.json").write_text(json.dumps({"row": "sst5"}))
    with pytest.raises(ValueError, match="lacks"):
        load_results(tmp_path, ["sst5"], smoke=False)


def test_preflight_names_what_is_missing(tmp_path):
    rows = load_expected()
    problems = check_data("cifar10", tmp_path)
    assert len(problems) == 1 and str(tmp_path / "cifar10") in problems[0]
    (tmp_path / "cifar10" / "cifar-10-batches-py").mkdir(parents=True)
    (tmp_path / "cifar10" / "cifar-10-batches-py" / "data_batch_1").write_bytes(b"x")
    assert check_data("cifar10", tmp_path) == []
    msg = check_backbone("sst5", tmp_path / "models")
    assert msg and "roberta-large" in msg[0] and "5069d8a" in msg[0] and "huggingface-cli download" in msg[0]
    (tmp_path / "models" / "roberta-large").mkdir(parents=True)
    (tmp_path / "models" / "roberta-large" / "config.json").write_text("{}")
    assert check_backbone("sst5", tmp_path / "models") == []
    report = preflight(rows["sst2"], tmp_path, gpus=2, model_dir=tmp_path / "models", results_dir=tmp_path)
    assert any("estimate" in n for n in report.notes) and any("depends on sst5" in n for n in report.notes)


def test_runner_stops_in_preflight_without_gpu_or_data(tmp_path, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: preflight would pass the GPU check")
    code = runner_main(["--group", "vision", "--data-dir", str(tmp_path / "nodata"), "--results-dir", str(tmp_path)])
    out = capsys.readouterr()
    assert code == 2
    assert "no CUDA GPU visible" in out.out and "does not exist" in out.out
    assert "nothing was trained" in out.err
