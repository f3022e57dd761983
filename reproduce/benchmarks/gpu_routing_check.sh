#!/usr/bin/env bash
# One prepared GPU session for issue #12 (< 5 min on one H200; torch, triton and pytest are all it needs):
#   1. the gpu-marked routing tests (the Triton kernels against the torch chain, on CUDA, fp32 and bf16);
#   2. the GPU benchmark: ours vs the original (eager; and torch.compile(original) in bf16), fp32 and bf16
#      autocast, the shapes of issue #12's table; prints a markdown table (time, peak memory, ratios,
#      TFLOP/s, GB/s) and writes the raw results to $OUT/gpu_routing_bench.json (OUT defaults to /tmp).
# Usage (from anywhere):  bash reproduce/benchmarks/gpu_routing_check.sh
# Knobs: PY=python  ORIGINAL=path/to/original/heinsen_routing.py  CASES=paper-head,100k  REPEATS=3
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PY:-.venv/bin/python}
[ -x "$PY" ] || PY=python
ORIGINAL=${ORIGINAL:-../shared/reference/original_heinsen_routing/heinsen_routing.py}
OUT=${OUT:-/tmp}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
"$PY" -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__, 'cuda', torch.cuda.is_available())"

echo "## gpu-marked routing tests"
status=0
"$PY" -m pytest -q -p no:cacheprovider -m gpu tests/heinsen_routing -rs || status=$?

echo "## benchmark (ours vs the original)"
ARGS=(--device cuda --precisions fp32,bf16 --repeats "${REPEATS:-3}" --original "$ORIGINAL" --json "$OUT/gpu_routing_bench.json")
if [ -n "${CASES:-}" ]; then ARGS+=(--cases "$CASES"); else ARGS+=(--sizes gpu); fi
"$PY" reproduce/benchmarks/bench_routing.py "${ARGS[@]}"
[ "$status" -eq 0 ] || echo "## NOTE: the gpu-marked routing tests FAILED (exit $status); the table above is not to be trusted"
exit "$status"
