"""Benchmark EfficientVectorRouting: ours (heinsen_routing) vs the ORIGINAL module, side by side.

What a user would otherwise install is the original ``heinsen_routing`` package; this script loads its
module by path (``--original``, default ``../shared/reference/original_heinsen_routing/heinsen_routing.py``
relative to the repository; never copied into the project) and times both layers built with the same
parameters (``load_state_dict``: the state-dict names are the same), as a user runs them:
``EfficientVectorRouting(n_inp=-1, n_out, d_inp, d_out)`` (n_iters 2, normalize), forward + backward of
``out.sum()``. When the original is absent the comparison is skipped with a message and only ours runs.

Each implementation: build the inputs, one warm-up, then ``--repeats`` timed runs. Reported:

* time: the best (min) and median wall-clock seconds of one forward+backward (CUDA: synchronised);
* peak memory: CPU = the child's peak resident set size (VmHWM, reset right before the warm-up) minus the
  RSS before it (inputs and parameters already exist), minus the bytes of the gradients the run produces
  ("act": what autograd / our fused path hold for activations and temporaries); CUDA =
  ``torch.cuda.max_memory_allocated`` minus the allocation before the warm-up (gradients included);
* GFLOP/s (TFLOP/s on CUDA): the FLOPs of the n-sized matmuls of forward+backward (identical for both
  implementations) per second, and GB/s: bytes of x read once per n-sized product (a lower bound on the
  traffic) per second; on an H200 compare with ~790 TFLOP/s (bf16 dense) and ~4.3 TB/s.

Implementations: ``original`` (eager), ``ours`` (our default path), and on CUDA also ``original-compiled``
= ``torch.compile(original)`` (compiled during the warm-up; compile time not counted; bf16 only unless
``--compile-fp32``). On CPU every (case, implementation) runs in its own subprocess (RSS peaks); on CUDA
one subprocess per (case, precision) runs all implementations (peaks reset between them).

Usage:
    python reproduce/benchmarks/bench_routing.py --quick                 # CPU, < 1 min
    python reproduce/benchmarks/bench_routing.py --sizes cpu             # the README's CPU table (~5 GB RAM)
    python reproduce/benchmarks/bench_routing.py --sizes cpu-1m          # 1M inputs (~14 GB free RAM)
    python reproduce/benchmarks/bench_routing.py --device cuda --sizes gpu --precisions fp32,bf16
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import importlib.util
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
DEFAULT_ORIGINAL = REPO.parent / "shared" / "reference" / "original_heinsen_routing" / "heinsen_routing.py"

# name: (batch, n, d_inp, n_out, d_out, x requires grad, note)
CASES: dict[str, tuple[int, int, int, int, int, bool, str]] = {
    "tiny": (2, 2000, 256, 32, 256, True, "quick check"),
    "10k": (1, 10_000, 1024, 100, 1024, False, "README-like, smaller"),
    "paper-head": (8, 4925, 1024, 64, 1024, True, "paper head's first routing, batch 8"),
    "paper-head-64": (64, 4925, 1024, 64, 1024, True, "paper head's first routing, batch 64"),
    "100k": (1, 100_000, 1024, 100, 1024, False, "README-like"),
    "300k": (1, 300_000, 1024, 100, 1024, False, "README-like, fits ~4 GB for the original"),
    "1M": (1, 1_000_000, 1024, 100, 1024, False, "README-like"),
    "4M": (1, 4_000_000, 1024, 100, 1024, False, "README-like, large"),
}
SIZES = {
    "quick": ["tiny", "10k"],
    "cpu": ["paper-head", "100k", "300k"],  # the original needs ~4 GB of RAM at 300k
    "cpu-1m": ["1M"],  # the original needs ~12 GB of RAM (x, its scaled copy, ~12 [1M, 100] tensors)
    "gpu": ["paper-head", "paper-head-64", "100k", "1M", "4M"],
}
PRECISIONS = ("fp32", "bf16")  # bf16 = float32 parameters and inputs under torch.autocast(bfloat16)


def load_original(path: Path):
    """The original module, loaded by path under another module name (never imported from src/)."""
    spec = importlib.util.spec_from_file_location("original_heinsen_routing_bench", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _reset_peak() -> bool:
    """Reset this process's peak RSS (VmHWM); False when the kernel does not allow it."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _peak_bytes(reset_ok: bool) -> int:
    if reset_ok:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def big_products(x_grad: bool, n_iters: int = 2) -> int:
    """Number of n·n_out·d_inp-sized matmuls (each 2·B·n·n_out·d_inp FLOPs) of forward+backward, variable
    n_inp (two beta Linear layers): forward T (φᵀx) + T−1 (xPᵀ) + 2 (betas); backward the same for the
    gradients of φ, P and the beta weights, and again for dx when x requires grad."""
    one_pass = n_iters + (n_iters - 1) + 2
    return one_pass * (3 if x_grad else 2)


def run_case(case: str, impls: list[str], args: argparse.Namespace) -> list[dict]:
    """Child process: build one case, time forward+backward of each implementation, measure memory (on CPU
    the parent runs one implementation per child: RSS peaks need a fresh process)."""
    import torch

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    sys.path.insert(0, str(REPO / "src"))
    from heinsen_routing import EfficientVectorRouting

    batch, n, d, m, h, x_grad, _ = CASES[case]
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    torch.manual_seed(0)
    ours = EfficientVectorRouting(n_inp=-1, n_out=m, d_inp=d, d_out=h)
    x = torch.randn(batch, n, d, device=device).requires_grad_(x_grad)
    results = []
    for impl in impls:
        if impl == "ours":
            layer = ours
        else:
            original = load_original(Path(args.original))
            layer = original.EfficientVectorRouting(n_inp=-1, n_out=m, d_inp=d, d_out=h)
            layer.load_state_dict(ours.state_dict())
        layer = layer.to(device)
        leaves = list(layer.parameters()) + ([x] if x_grad else [])
        if impl == "original-compiled":
            layer = torch.compile(layer)
        try:
            results.append(_time_layer(torch, layer, x, leaves, case, impl, args))
        except Exception as error:  # e.g. a compilation failure: report it, time the others
            print(
                f"# {case}/{impl}/{args.precision} failed: {type(error).__name__}: {error}", file=sys.stderr
            )
        del layer, leaves
        if cuda:
            torch.cuda.empty_cache()
    return results


def _time_layer(torch, layer, x, leaves, case: str, impl: str, args: argparse.Namespace) -> dict:
    """One warm-up (compiles, if compiled) then ``args.repeats`` timed forward+backward runs of ``layer``."""
    batch, n, d, m, h, x_grad, _ = CASES[case]
    cuda = x.device.type == "cuda"
    autocast = torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=args.precision == "bf16")

    def fwd_bwd() -> None:
        for p in leaves:
            p.grad = None
        with autocast:
            out = layer(x)
        out.float().sum().backward()
        if cuda:
            torch.cuda.synchronize()

    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        reset_ok = True
    else:
        base = _rss_bytes()
        reset_ok = _reset_peak()
    walls, cpus = [], []
    for i in range(1 + args.repeats):
        c0 = resource.getrusage(resource.RUSAGE_SELF)
        t0 = time.perf_counter()
        fwd_bwd()
        wall = time.perf_counter() - t0
        c1 = resource.getrusage(resource.RUSAGE_SELF)
        if i > 0 or args.repeats == 0:
            walls.append(wall)
            cpus.append((c1.ru_utime - c0.ru_utime) + (c1.ru_stime - c0.ru_stime))
    peak = torch.cuda.max_memory_allocated() if cuda else _peak_bytes(reset_ok)
    grad_bytes = sum(p.grad.numel() * p.grad.element_size() for p in leaves if p.grad is not None)
    for p in leaves:
        p.grad = None
    best = min(walls)
    flops = big_products(x_grad) * 2.0 * batch * n * m * d
    x_bytes = big_products(x_grad) * batch * n * d * (2 if args.precision == "bf16" else 4)
    return {
        "case": case, "impl": impl, "precision": args.precision, "best_s": best,
        "median_s": statistics.median(walls), "cpu_s": statistics.median(cpus), "walls": walls,
        "peak_delta": peak - base, "grad_bytes": grad_bytes,
        "act_bytes": max(0, peak - base - (0 if cuda else grad_bytes)),
        "flops_per_s": flops / best, "bytes_per_s": x_bytes / best, "threads": torch.get_num_threads(),
    }  # fmt: skip


def _children(case: str, impls: list[str], precision: str, args: argparse.Namespace) -> list[dict]:
    """Run the implementations of one (case, precision): one subprocess each on CPU, one for all on CUDA."""
    groups = [impls] if args.device.startswith("cuda") else [[impl] for impl in impls]
    results = []
    for group in groups:
        cmd = [sys.executable, __file__, "--child", case, ",".join(group), "--device", args.device,
               "--precision", precision, "--repeats", str(args.repeats), "--threads", str(args.threads),
               "--original", str(args.original)]  # fmt: skip
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            print(f"# {case}/{','.join(group)}/{precision} failed (exit {proc.returncode}): "
                  f"{proc.stderr.strip()[-800:]}", file=sys.stderr)  # fmt: skip
            continue
        results += json.loads(proc.stdout.strip().splitlines()[-1])
    return results


def _gib(b: float) -> str:
    return f"{b / 2**30:.2f}"


def _machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{cpu}, {os.cpu_count()} CPUs"


def print_table(
    results: list[dict], cases: list[str], precisions: list[str], impls: list[str], cuda: bool
) -> None:
    """Markdown table: one row per (case, precision, impl), ratios against the eager original."""
    unit, scale = ("TFLOP/s", 1e12) if cuda else ("GFLOP/s", 1e9)
    mem = "peak GiB" if cuda else "act GiB"
    print(
        f"| shape (batch × n × d_inp → n_out × d_out) | x grad | precision | impl | best s (median) "
        f"| {mem} | {unit} | GB/s | time ratio | memory ratio |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    by = {(r["case"], r["precision"], r["impl"]): r for r in results}

    def gbs(r: dict) -> str:  # bytes of x per second: a bandwidth figure only meaningful on GPUs
        return f"{r['bytes_per_s'] / 1e9:.0f}" if cuda else "–"

    for case in cases:
        batch, n, d, m, h, x_grad, _ = CASES[case]
        shape = f"{batch} × {n:,} × {d} → {m} × {h}".replace(",", " ")
        for precision in precisions:
            base = by.get((case, precision, "original"))
            for impl in impls:
                r = by.get((case, precision, impl))
                if r is None:
                    continue
                t_ratio = f"{r['best_s'] / base['best_s']:.2f}" if base else "–"
                m_ratio = f"{r['act_bytes'] / base['act_bytes']:.2f}" if base and base["act_bytes"] else "–"
                print(
                    f"| {shape} | {'yes' if x_grad else 'no'} | {precision} | {impl} "
                    f"| {r['best_s']:.4f} ({r['median_s']:.4f}) | {_gib(r['act_bytes'])} "
                    f"| {r['flops_per_s'] / scale:.1f} | {gbs(r)} | {t_ratio} | {m_ratio} |"
                )
    print(
        f"\nratios: ours (or the compiled original) / the eager original, same run; time = best of the timed "
        f"runs; memory = {'CUDA peak allocated above the inputs' if cuda else 'peak RSS increase minus the gradients'}."
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--sizes",
        choices=sorted(SIZES),
        default=None,
        help="case set: quick (tiny, 10k), cpu (paper-head, 100k, 300k), cpu-1m (1M), "
        "gpu (paper-head, paper-head-64, 100k, 1M, 4M); default cpu, or gpu with --device cuda",
    )
    parser.add_argument(
        "--cases", default=None, help=f"comma-separated case names instead of --sizes: {', '.join(CASES)}"
    )
    parser.add_argument(
        "--quick", action="store_true", help="cases tiny and 10k, 1 timed run (< 1 min on CPU)"
    )
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument(
        "--precisions",
        default=None,
        help="comma-separated fp32,bf16 (bf16 = torch.autocast bfloat16); default fp32 on CPU, both on CUDA",
    )
    parser.add_argument(
        "--original",
        type=Path,
        default=DEFAULT_ORIGINAL,
        help="path of the original heinsen_routing.py (loaded by path, for comparison only)",
    )
    parser.add_argument(
        "--impls",
        default=None,
        help="comma-separated: original, ours, original-compiled (default: original,ours; "
        "+ original-compiled on CUDA)",
    )
    parser.add_argument("--repeats", type=int, default=3, help="timed runs after one warm-up")
    parser.add_argument("--compile-fp32", action="store_true", help="also time original-compiled in fp32")
    parser.add_argument("--compiled-cases", default="paper-head-64,100k,1M,4M",
                        help="cases where original-compiled runs (each costs a compilation, ~30-60 s)")  # fmt: skip
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--json", type=Path, default=None, help="also write the raw results here")
    parser.add_argument("--child", nargs=2, metavar=("CASE", "IMPL"), help=argparse.SUPPRESS)
    parser.add_argument("--precision", default="fp32", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(run_case(args.child[0], args.child[1].split(","), args)))
        return
    cuda = args.device.startswith("cuda")
    if args.quick:
        args.sizes, args.repeats = "quick", 1
    sizes = args.sizes or ("gpu" if cuda else "cpu")
    cases = SIZES[sizes] if args.cases is None else [c.strip() for c in args.cases.split(",") if c.strip()]
    for case in cases:
        if case not in CASES:
            parser.error(f"--cases: unknown case {case!r}; expected one of {', '.join(CASES)}")
    precisions = [p.strip() for p in (args.precisions or ("fp32,bf16" if cuda else "fp32")).split(",")]
    for p in precisions:
        if p not in PRECISIONS:
            parser.error(
                f"--precisions: expected a comma-separated subset of {', '.join(PRECISIONS)}, got {p!r}"
            )
    impls = [
        s.strip()
        for s in (args.impls or ("original,ours,original-compiled" if cuda else "original,ours")).split(",")
    ]
    if not args.original.is_file():
        print(
            f"# skipping the comparison: the original module is not at {args.original} "
            "(give its path with --original PATH); timing ours only",
            file=sys.stderr,
        )
        impls = [i for i in impls if not i.startswith("original")]
    try:
        torch_version = importlib.metadata.version("torch")
    except importlib.metadata.PackageNotFoundError:
        torch_version = "?"
    device_name = args.device
    if cuda:
        import torch

        device_name = f"{args.device} ({torch.cuda.get_device_name()})"
    threads = f"{args.threads} threads" if args.threads > 0 else "default threads"
    print(
        f"# {datetime.datetime.now(datetime.UTC).isoformat(timespec='minutes')}  {_machine()}, torch "
        f"{torch_version} ({threads}), device {device_name}, EfficientVectorRouting(n_inp=-1, n_iters=2), "
        f"forward+backward, best (median) of {args.repeats} after 1 warm-up"
    )
    results = []
    for case in cases:
        for precision in precisions:
            # The compiled original is compared in bf16 (the common case on GPUs), as in issue #12's table.
            compiled = (precision == "bf16" or args.compile_fp32) and case in args.compiled_cases.split(",")
            run = [i for i in impls if i != "original-compiled" or compiled]
            for r in _children(case, run, precision, args):
                results.append(r)
                print(f"#   {case:>13} {precision} {r['impl']:>17}: best {r['best_s']:.4f} s, "
                      f"median {r['median_s']:.4f} s, act {_gib(r['act_bytes'])} GiB", file=sys.stderr)  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    print()
    print_table(results, cases, precisions, impls, cuda)


if __name__ == "__main__":
    main()
