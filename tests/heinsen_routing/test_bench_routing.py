"""The ours-vs-original benchmark script (reproduce/benchmarks/bench_routing.py): skip message and table."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "reproduce" / "benchmarks" / "bench_routing.py"


def _bench():
    spec = importlib.util.spec_from_file_location("bench_routing_for_tests", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_missing_original_is_skipped_with_a_message(tmp_path):
    missing = tmp_path / "nowhere" / "heinsen_routing.py"
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--cases", "tiny", "--impls", "original", "--original", str(missing)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert f"skipping the comparison: the original module is not at {missing}" in proc.stderr
    assert "--original PATH" in proc.stderr


def test_table_ratios_are_against_the_eager_original(capsys):
    bench = _bench()
    common = {"case": "tiny", "precision": "fp32", "median_s": 1.0, "flops_per_s": 1e9, "bytes_per_s": 1e9}
    results = [
        {**common, "impl": "original", "best_s": 2.0, "act_bytes": 4 * 2**30},
        {**common, "impl": "ours", "best_s": 1.0, "act_bytes": 1 * 2**30},
    ]
    bench.print_table(results, ["tiny"], ["fp32"], ["original", "ours"], cuda=False)
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| 2 × 2 000")]
    assert rows[0].endswith("| 1.00 | 1.00 |") and rows[1].endswith("| 0.50 | 0.25 |")


def test_bench_counts_the_n_sized_products():
    bench = _bench()
    # forward: 2 (φᵀx) + 1 (xPᵀ) + 2 (betas); backward the same, and once more for dx
    assert bench.big_products(x_grad=False) == 10
    assert bench.big_products(x_grad=True) == 15
