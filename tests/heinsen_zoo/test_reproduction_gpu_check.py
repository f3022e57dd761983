"""``make gpu-check``: refuses clearly without CUDA; its plan, result readers and table (GPU-free parts)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from heinsen_zoo.reproduction import gpu_check


def test_without_cuda_it_says_so_and_exits_nonzero(monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert gpu_check.main([]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: gpu-check needs a CUDA GPU") and "torch.cuda.is_available() is False" in err


@pytest.mark.slow  # a make + python process: ~15 s; the in-process test above covers the logic
@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA path")
def test_make_gpu_check_fails_clearly_on_this_cpu_machine():
    from heinsen_zoo.reproduction.expected import repo_root

    # -o: never (re)install here, even if pyproject.toml is newer than the install stamp
    make = [
        "make",
        "-s",
        "-C",
        str(repo_root()),
        "-o",
        ".venv/.installed",
        "gpu-check",
        f"PY={sys.executable}",
    ]
    done = subprocess.run(make,
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode != 0 and "error: gpu-check needs a CUDA GPU" in done.stderr


def test_plan_is_runnable_commands(tmp_path):
    from heinsen_zoo.cli import expand_experiment_args
    from heinsen_zoo.reproduction.runner import parse_args

    steps = gpu_check.plan(tmp_path, python="py")
    assert [s.kind for s in steps] == ["pytest", "row", "row", "demo"]
    assert sum(s.timeout_s for s in steps) <= 5 * 60  # the whole check stays under 5 minutes
    assert steps[0].command[:6] == ["py", "-m", "pytest", "-q", "-m", "gpu"]
    for step in steps[1:3]:
        args = parse_args(step.command[3:])
        assert (
            args.smoke
            and args.precision == "bf16-mixed"
            and args.args.split()[:2] == ["--trainer.accelerator", "gpu"]
        )
    assert [parse_args(s.command[3:]).rows for s in steps[1:3]] == [["cifar10"], ["sst5"]]
    argv, options = expand_experiment_args(steps[3].command[3:])
    assert options["experiment"] == "bbc_minilm_demo" and argv[0] == "fit" and "gpu" in argv


def test_result_readers(tmp_path):
    assert (
        gpu_check._pytest_result("...\n===== 4 passed, 1 skipped in 12.3s =====\n") == "4 passed, 1 skipped"
    )
    (tmp_path / "cifar10.smoke.json").write_text(
        json.dumps(
            {"value": 12.5, "n_test_examples": 31, "device": "1x NVIDIA H200", "precision": "bf16-mixed"}
        )
    )
    assert gpu_check._row_result(tmp_path) == "12.50% on 31 test examples, 1x NVIDIA H200, bf16-mixed"
    metrics = tmp_path / "logs" / "version_0" / "metrics.csv"
    metrics.parent.mkdir(parents=True)
    metrics.write_text("epoch,step,val/acc,train/loss\n0,9,0.5,\n0,10,,1.2\n1,19,0.9324,\n")
    assert gpu_check._demo_result(tmp_path) == "val/acc 93.24% (last epoch)"


def test_table_and_exit_status(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *_: "FakeGPU")
    outcomes = iter(
        [(True, "4 passed", 10.0), (True, "ok", 20.0), (False, "exit 1: boom", 5.0), (True, "ok", 30.0)]
    )
    monkeypatch.setattr(gpu_check, "run_step", lambda step: next(outcomes))
    assert gpu_check.main(["--out", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "| gpu-marked tests | pass | 4 passed | 10 s |" in out
    assert "| smoke sst5 (text), bf16-mixed | **FAIL** | exit 1: boom | 5 s |" in out
    assert "total 65 s on 1x FakeGPU" in out
