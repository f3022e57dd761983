"""The reproduction rows (configs/rows.yaml): one definition per row that the runner, preflight, smoke plan,
Makefile, fetcher and registry read; backbone ids/revisions agree with the code; a toy row added through the
four files the README names runs its whole smoke chain."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import pytest  # noqa: E402
import yaml  # noqa: E402

from heinsen_zoo.backbones import PAPER_BACKBONES  # noqa: E402
from heinsen_zoo.data.smoke import SMOKE_TASKS  # noqa: E402
from heinsen_zoo.reproduction.preflight import check_backbone, check_data  # noqa: E402
from heinsen_zoo.reproduction.rows import builtin_rows_path, load_rows, published_metric  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
CONFIGS = builtin_rows_path().parent
TOY = Path(__file__).parent / "fixtures" / "toy_row"


def test_rows_file_is_package_data_and_reproduce_expected_links_to_it():
    assert builtin_rows_path() == REPO / "src" / "heinsen_zoo" / "configs" / "rows.yaml"
    assert (REPO / "reproduce" / "expected.yaml").resolve() == builtin_rows_path()
    assert (REPO / "configs").resolve() == CONFIGS
    from heinsen_zoo.reproduction.expected import ExpectedRow, load_expected

    assert load_expected() == load_rows() and ExpectedRow is type(load_rows()["cifar10"])


def test_every_row_names_an_experiment_smoke_data_and_data_folder():
    for name, row in load_rows().items():
        assert (CONFIGS / "experiments" / f"{row.experiment}.yaml").is_file(), name
        assert row.smoke["data"] in SMOKE_TASKS, name
        assert row.data_folder and row.data_requires, name
    assert published_metric("cifar10") == ("top1", "test", 99.2, 0.5)


def test_backbone_ids_and_revisions_agree_with_the_code():
    """configs are YAML data; heinsen_zoo.backbones.PAPER_BACKBONES is the one definition in code."""
    by_id = {spec["id"]: spec["revision"] for spec in PAPER_BACKBONES.values() if spec["source"] == "hf"}
    for name, row in load_rows().items():
        if row.backbone_id is not None:
            assert by_id[row.backbone_id] == row.backbone_revision, name
    seen = set()
    for path in sorted((CONFIGS / "model").glob("*.yaml")):
        backbone = (yaml.safe_load(path.read_text())["model"]["init_args"] or {}).get("backbone")
        if backbone and backbone.get("source") == "hf":
            assert by_id[backbone["id"]] == backbone["revision"], path.name
            seen.add(backbone["id"])
    assert seen == {"microsoft/beit-large-patch16-224", "roberta-large", "gpt2-large"}


def test_makefile_lists_the_rows_of_the_file():
    out = subprocess.run(["make", "-s", "rows"], cwd=REPO, capture_output=True, text=True, check=True).stdout
    assert out.split() == list(load_rows())


def test_a_malformed_or_duplicated_row_is_an_error_naming_the_file(tmp_path, monkeypatch):
    bad = tmp_path / "bad.yaml"
    bad.write_text("schema_version: 1\nrows:\n  x: {paper: p, group: g}\n")
    with pytest.raises(ValueError, match=r"bad.yaml: row 'x' lacks \['backbone'"):
        load_rows(bad)
    dup = tmp_path / "dup.yaml"
    dup.write_text(
        yaml.safe_dump(
            {
                "schema_version": 1,
                "rows": {"cifar10": yaml.safe_load(builtin_rows_path().read_text())["rows"]["cifar10"]},
            }
        )
    )
    monkeypatch.setenv("HEINSEN_ROWS", str(dup))
    with pytest.raises(ValueError, match="'cifar10' is defined in .*rows.yaml and again in .*dup.yaml"):
        load_rows()


def test_toy_row_through_the_four_files_runs_its_smoke_chain(tmp_path, monkeypatch, capsys):
    """A new dataset + experiment + row: its DataModule, data config, experiment config and row; nothing else."""
    added = sorted(
        p.relative_to(TOY).as_posix() for p in TOY.rglob("*") if p.is_file() and "__pycache__" not in p.parts
    )
    assert added == ["configs/data/toy.yaml", "configs/experiments/toy.yaml", "rows.yaml", "toy_data.py"]
    work = tmp_path / "toy"
    shutil.copytree(TOY, work)
    for shared in ("trainer", "model"):  # the rest of configs/, unchanged
        (work / "configs" / shared).symlink_to(CONFIGS / shared)
    monkeypatch.setenv("HEINSEN_ZOO_CACHE", str(tmp_path / "zoo-cache"))  # merged configs land here, not in ~/.cache
    monkeypatch.setenv("HEINSEN_CONFIGS", str(work / "configs"))
    monkeypatch.setenv("HEINSEN_ROWS", str(work / "rows.yaml"))
    monkeypatch.syspath_prepend(str(work))

    row = load_rows()["toy"]
    assert list(load_rows())[-1] == "toy" and row.backbone_id == "roberta-large"
    # Preflight reads the row: the data folder and files it needs.
    assert check_data(row, tmp_path / "data") == [
        f"data: {tmp_path / 'data' / 'toy'} does not exist (DATA_DIR={tmp_path / 'data'}); expected "
        f"{tmp_path / 'data' / 'toy' / 'train.tsv'}; {tmp_path / 'data' / 'toy' / 'test.tsv'}"
    ]
    assert "roberta-large@5069d8a not found" in check_backbone(row, tmp_path / "models")[0]
    # The Makefile's row list, from the same file.
    out = subprocess.run(["make", "-s", "rows"], cwd=REPO, capture_output=True, text=True, check=True).stdout
    assert out.split()[-1] == "toy"

    from heinsen_zoo.reproduction.runner import main as runner_main

    # Without SMOKE: nothing to fetch for it, and preflight stops before training (no data, no GPU here).
    args = ["--rows", "toy", "--data-dir", str(tmp_path / "data"), "--results-dir", str(tmp_path / "real")]
    assert runner_main(args) == 2
    out = capsys.readouterr()
    assert "data: toy: missing under" in out.out and "no fetcher for it" in out.out
    assert (
        "none of ['train.tsv'] found" in out.out or f"{tmp_path / 'data' / 'toy'} does not exist" in out.out
    )
    assert "preflight failed: nothing was trained" in out.err

    results = tmp_path / "results"
    assert runner_main(["--rows", "toy", "--smoke", "--results-dir", str(results)]) == 0
    record = json.loads((results / "toy.smoke.json").read_text())
    assert record["n_test_examples"] == record["test_split_size"] == 11  # toy_data.smoke_data's test split
    assert record["effective_batch"] == 10 and record["backbone_id"] == "tiny-bert-smoke"
    assert 0.0 <= record["value"] <= 100.0
    line = next(x for x in (results / "REPORT.smoke.md").read_text().splitlines() if x.startswith("| toy "))
    assert "| smoke |" in line
    config = json.loads((results / "smoke" / "toy" / "export" / "config.json").read_text())
    assert config["head"]["n_classes"] == 2


@pytest.mark.slow
def test_a_wheel_install_has_the_configs_and_rows(tmp_path):
    """`pip install .` (not editable): experiments and rows come from the package data."""
    import sys

    src = tmp_path / "src"
    archive = subprocess.run(["git", "archive", "HEAD"], cwd=REPO, capture_output=True, check=True).stdout
    src.mkdir()
    subprocess.run(["tar", "-x", "-C", str(src)], input=archive, check=True)
    pip = [sys.executable, "-m", "pip"]
    subprocess.run([*pip, "wheel", str(src), "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path / "w")],
                   check=True, capture_output=True)  # fmt: skip
    wheel = next((tmp_path / "w").glob("*.whl"))
    subprocess.run(
        [*pip, "install", "-q", "--no-deps", "--target", str(tmp_path / "t"), str(wheel)], check=True
    )
    code = (
        "from heinsen_zoo.cli.experiments import experiment_path; from heinsen_zoo.reproduction.rows import load_rows;"
        "print(experiment_path('cifar10')); print(load_rows()['cifar10'].source)"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(tmp_path / "t")},
                         capture_output=True, text=True, check=True).stdout.split()  # fmt: skip
    assert out == [
        str(tmp_path / "t" / "heinsen_zoo" / "configs" / "experiments" / "cifar10.yaml"),
        str(tmp_path / "t" / "heinsen_zoo" / "configs" / "rows.yaml"),
    ]
