"""Reproduction runs a GPU user can trust, checked on CPU stand-ins: DDP over 2 CPU processes (effective
batch, distinct examples per rank, every test example scored exactly once), resume after a crash or a
``kill -9`` (same final head as an uninterrupted run), bf16-mixed precision, and ``make`` knobs.

The DDP and kill -9 tests start real processes through the real runner (``python -m
heinsen_zoo.reproduction.runner``, what ``make reproduce-<row>`` runs) and take a minute or more each on
2 shared cores: they are ``slow`` (``make test-all``); CI's ``.ci/run`` also runs the DEVICES=2 smoke rows.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from heinsen_zoo.reproduction import runner as runner_module
from heinsen_zoo.reproduction.runner import main as runner_main

REPO = Path(__file__).resolve().parents[2]


pytestmark = pytest.mark.usefixtures("isolated_runner")


def _record(results: Path, row: str) -> dict:
    return json.loads((results / f"{row}.smoke.json").read_text())


def _head(results: Path, row: str) -> dict[str, torch.Tensor]:
    path = results / "smoke" / row / "run" / "checkpoints" / "last.ckpt"
    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


def _assert_same_head(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert sorted(a) == sorted(b)
    for key in a:
        assert torch.equal(a[key], b[key]), f"{key}: the resumed head differs from the uninterrupted one"


def _runner_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "heinsen_zoo.reproduction.runner", *args]


def _env(extra_path: Path | None = None) -> dict[str, str]:
    env = dict(os.environ)
    paths = [str(REPO / "src")] + ([str(extra_path)] if extra_path else [])
    env["PYTHONPATH"] = os.pathsep.join(paths + [env.get("PYTHONPATH", "")])
    env.pop("LOCAL_RANK", None)
    return env


# ---------------------------------------------------------------------------------------------- resume, fast
class _Crash(Exception):
    pass


def test_resume_after_a_crash_gives_the_final_head_of_an_uninterrupted_run(tmp_path, monkeypatch):
    """In-process: crash in the middle of epoch 1 → ``--resume`` from last.ckpt (epoch 0) → the same final
    head, bit for bit, as a run that was never interrupted; the record says where it resumed from."""
    plain = tmp_path / "plain"
    assert runner_main(["--rows", "cifar10", "--smoke", "--results-dir", str(plain)]) == 0

    class CrashingProbe(runner_module.BatchProbe):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if trainer.current_epoch == 1 and batch_idx == 1:
                raise _Crash

    crashed = tmp_path / "crashed"
    with monkeypatch.context() as patch:
        patch.setattr(runner_module, "BatchProbe", CrashingProbe)
        with pytest.raises(_Crash):
            runner_main(["--rows", "cifar10", "--smoke", "--results-dir", str(crashed)])
    last = crashed / "smoke" / "cifar10" / "run" / "checkpoints" / "last.ckpt"
    assert (
        torch.load(last, map_location="cpu", weights_only=True)["epoch"] == 0
    )  # the latest epoch, not stale
    assert not (crashed / "cifar10.smoke.json").exists()

    assert runner_main(["--rows", "cifar10", "--smoke", "--resume", "--results-dir", str(crashed)]) == 0
    record = _record(crashed, "cifar10")
    assert record["resumed_from"] == str(last)
    _assert_same_head(_head(crashed, "cifar10"), _head(plain, "cifar10"))
    assert record["value"] == _record(plain, "cifar10")["value"]


def test_resume_without_a_checkpoint_is_a_clear_error(tmp_path, capsys):
    with pytest.raises(SystemExit, match=r"error: RESUME=1: no checkpoint to resume from at .*last\.ckpt"):
        runner_main(["--rows", "cifar10", "--smoke", "--resume", "--results-dir", str(tmp_path / "r")])


def test_select_val_refuses_the_test_split(tmp_path):
    """CIFAR validates on its test split unless val_fraction carves a validation split from train."""
    with pytest.raises(SystemExit, match="would select on the test set"):
        runner_main(["--rows", "cifar10", "--smoke", "--select", "val", "--results-dir", str(tmp_path / "r")])


def test_select_val_on_a_split_carved_from_train(tmp_path):
    results = tmp_path / "r"
    args = ["--rows", "cifar10", "--smoke", "--select", "val", "--results-dir", str(results),
            "--args", "--data.init_args.val_fraction 0.2"]  # fmt: skip
    assert runner_main(args) == 0
    record = _record(results, "cifar10")
    assert record["checkpoint"] == "best val/acc on a validation split carved from train"
    assert (
        Path(record["checkpoint_path"]).parent.name == "selected"
        and Path(record["checkpoint_path"]).is_file()
    )
    assert record["n_test_examples"] == record["test_split_size"] == 31


# ---------------------------------------------------------------------------------------------- DDP, 2 CPU procs
@pytest.mark.slow  # two processes on 2 shared cores: ~1-2 min per row
@pytest.mark.parametrize(("row", "n_test", "batch"), [("cifar10", 31, 50), ("sst5", 15, 50)])
def test_ddp_two_cpu_processes_through_the_runner(tmp_path, row, n_test, batch):
    """``--smoke --devices 2`` (= ``make reproduce-<row> SMOKE=1 DEVICES=2``): 2 ranks x batch/2 = the paper's
    effective batch; the ranks' first-step examples are disjoint and together are exactly the first step of a
    single-process run; the odd test split is scored exactly once (no padding duplicates)."""
    from heinsen_zoo.data.sampling import CyclingRandomSampler

    results = tmp_path / "results"
    done = subprocess.run(_runner_cmd("--rows", row, "--smoke", "--devices", "2", "--results-dir", str(results)),
                          env=_env(), capture_output=True, text=True, timeout=900)  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    record = _record(results, row)
    assert record["world_size"] == 2 and record["device"] == "2x cpu"
    assert record["per_device_batch"] == [batch // 2, batch // 2] and record["effective_batch"] == batch
    assert record["checkpoint"] == "final"
    assert record["n_test_examples"] == record["test_split_size"] == n_test and n_test % 2 == 1
    probe = json.loads((results / "smoke" / row / "run" / "batch_probe.json").read_text())
    assert probe["first_step_disjoint"] is True
    firsts = [rank["first_step_indices"] for rank in probe["ranks"]]
    assert [len(f) for f in firsts] == [batch // 2, batch // 2]
    n_train = probe["train_dataset_size"]  # SST trains on every phrase of its trees
    single_first_step = CyclingRandomSampler(n_train, 3 * batch, seed=0).indices()[:batch].tolist()
    assert sorted(firsts[0] + firsts[1]) == sorted(single_first_step)
    assert f"| final | {n_test} | {batch} | 2x cpu |" in (results / "REPORT.smoke.md").read_text()


# ---------------------------------------------------------------------------------------------- kill -9, resume
_STALL = '''
import os, time
import lightning.pytorch as pl

class StallInEpoch1(pl.Callback):
    """Signal (marker file) and stall in the middle of epoch 1, so the test can kill -9 the process there."""
    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.current_epoch == 1 and batch_idx == 1:
            open(os.environ["STALL_MARKER"], "w").close()
            time.sleep(600)
'''


@pytest.mark.slow  # three runner processes: ~1-2 min
def test_kill_9_mid_epoch_then_make_resume_gives_the_uninterrupted_final_head(tmp_path):
    """``make reproduce-cifar10 SMOKE=1`` killed with SIGKILL in the middle of epoch 1, then ``make
    reproduce-cifar10 SMOKE=1 RESUME=1``: it continues from last.ckpt and ends with exactly the head of an
    uninterrupted run."""
    (tmp_path / "stall.py").write_text(_STALL)
    marker = tmp_path / "stalled"
    killed, plain = tmp_path / "killed", tmp_path / "plain"
    env = _env(tmp_path) | {"STALL_MARKER": str(marker)}
    make = [
        "make",
        "-s",
        "-C",
        str(REPO),
        "-o",
        ".venv/.installed",
        "reproduce-cifar10",
        "SMOKE=1",
        f"PY={sys.executable}",
    ]
    proc = subprocess.Popen(
        [*make, f"RESULTS_DIR={killed}", "ARGS=--trainer.callbacks+=stall.StallInEpoch1"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 600
        while not marker.exists():
            assert proc.poll() is None, "the run ended before reaching epoch 1"
            assert time.monotonic() < deadline, "the run never reached epoch 1"
            time.sleep(0.5)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # make and the runner: no clean shutdown of any kind
        proc.wait()
    last = killed / "smoke" / "cifar10" / "run" / "checkpoints" / "last.ckpt"
    assert torch.load(last, map_location="cpu", weights_only=True)["epoch"] == 0
    resumed = subprocess.run([*make, f"RESULTS_DIR={killed}", "RESUME=1"], env=_env(), capture_output=True,
                             text=True, timeout=900)  # fmt: skip
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    done = subprocess.run(
        [*make, f"RESULTS_DIR={plain}"], env=_env(), capture_output=True, text=True, timeout=900
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert _record(killed, "cifar10")["resumed_from"] == str(last)
    _assert_same_head(_head(killed, "cifar10"), _head(plain, "cifar10"))


# ---------------------------------------------------------------------------------------------- precision
_SLOW = pytest.mark.slow  # ~20-40 s each on 2 shared cores; sst5_2019 (bf16 autocast through the generative
# routing, the riskiest, ~5 s) stays in the default suite


@pytest.mark.parametrize(
    "row",
    ["sst5_2019"]
    + [
        pytest.param(r, marks=_SLOW)
        for r in ("smallnorb2019", "sst2_2019", "cifar10", "cifar100", "imagenet1k", "imdb", "sst5", "sst2")
    ],
)
def test_every_row_runs_in_bf16_mixed(tmp_path, row):
    """PRECISION=bf16-mixed (Lightning's CPU autocast stands in for the GPU's) through the whole chain."""
    results = tmp_path / "results"
    assert (
        runner_main(["--rows", row, "--smoke", "--precision", "bf16-mixed", "--results-dir", str(results)])
        == 0
    )
    record = _record(results, row)
    assert record["precision"] == "bf16-mixed"
    assert record["n_test_examples"] == record["test_split_size"]
    assert 0.0 <= record["value"] <= 100.0


def test_a_batch_the_processes_do_not_divide_is_a_clear_error_before_launch(tmp_path):
    """IMDB's paper batch is 5: 2 processes cannot share it; the runner says so before starting them."""
    with pytest.raises(
        SystemExit, match=r"error: imdb: batch_size: the effective \(global\) batch 5 does not divide"
    ):
        runner_main(["--rows", "imdb", "--smoke", "--devices", "2", "--results-dir", str(tmp_path / "r")])
