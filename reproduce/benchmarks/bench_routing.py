"""Benchmark the E/D/M loop of EfficientVectorRouting: plain autograd vs the fused chunked path.

For every case and implementation a fresh subprocess builds the inputs, runs forward+backward once as
warm-up and then ``--repeats`` more times, and reports:

* time: median wall-clock seconds (``time.perf_counter``) of one forward+backward (and the median process
  CPU seconds from ``resource.getrusage``, a load-independent measure of work on a shared machine);
* memory: on CPU the peak resident set size during the runs minus the RSS just before them (after the
  inputs and parameters exist). The peak is the kernel's VmHWM of the child, reset right before the
  warm-up through ``/proc/self/clear_refs`` (falls back to ``resource.getrusage(RUSAGE_SELF).ru_maxrss``
  where that is not allowed). "act" subtracts the bytes of the gradients the run produces (parameter
  grads and, where x requires grad, dx), leaving the memory autograd/the fused path use for
  activations and temporaries. On CUDA: ``torch.cuda.max_memory_allocated`` minus the allocation before;
* GFLOP/s: the matmul FLOPs of forward+backward (the n·n_out·d_inp products and the small
  n_out·d_inp·d_out ones; identical for both implementations, nothing recomputed) per second.

Implementations: ``plain`` = SPEC §1 written literally with autograd (``plain_routing.py`` next to this
file; it materialises xs = x·n^-0.5 as the SPEC does), ``core`` = ``heinsen_routing.efficient.
plain_em_routing`` when importable (betas from the Linear layers computed before the call, xs never
materialised), ``fused`` = ``heinsen_routing._fused.fused_em_routing`` (default chunking).

Usage:
    python reproduce/benchmarks/bench_routing.py --quick          # < 1 min
    python reproduce/benchmarks/bench_routing.py --sizes all      # the full table (needs ~16 GB free RAM)
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

# name: (batch, n, d_inp, n_out, d_out, variable n_inp (Linear betas), x requires grad, note)
CASES: dict[str, tuple[int, int, int, int, int, bool, bool, str]] = {
    "tiny": (2, 2000, 256, 32, 256, True, True, "quick check"),
    "10k": (1, 10_000, 1024, 100, 1024, True, False, "README-like, smaller"),
    "paper-head-1": (8, 4925, 1024, 64, 1024, True, True, "paper head's first layer, batch 8"),
    "100k": (1, 100_000, 1024, 100, 1024, True, False, "README-like"),
    "1M": (1, 1_000_000, 1024, 100, 1024, True, False, "README-like"),
    "1M-fixed": (1, 1_000_000, 1024, 100, 1024, False, False, "README example, n_inp=1M fixed params"),
}
SIZES = {
    "quick": ["tiny", "10k"],
    "small": ["tiny", "10k"],
    "paper": ["paper-head-1"],
    "large": ["100k", "1M", "1M-fixed"],
    "all": ["tiny", "10k", "paper-head-1", "100k", "1M", "1M-fixed"],
}
# The fixed-n 1M case is run for the fused path only (plain would need > 20 GB).
FUSED_ONLY = {"1M-fixed"}


def _load_plain():
    spec = importlib.util.spec_from_file_location("plain_routing", HERE / "plain_routing.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.plain_em_routing


def _rss_bytes() -> int:
    """Current resident set size of this process."""
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


def matmul_flops(batch: int, n: int, d: int, m: int, h: int, linear: bool, x_grad: bool, n_iters: int) -> float:
    """FLOPs of the matmuls of forward+backward (equal for plain and fused)."""
    big = 2.0 * batch * n * m * d  # one [n, d] x [d, n_out]-sized product
    fwd = n_iters + (n_iters - 1) + (2 if linear else 0)
    bwd = n_iters + (n_iters - 1) + (2 if linear else 0)  # dphi, dP, dW_beta
    if x_grad:
        bwd += n_iters + (n_iters - 1) + (2 if linear else 0)  # dx terms
    small = 2.0 * batch * m * d * h  # (A ⊙ W_F1) @ W_F2 and N(x_out) @ W_G1
    small_count = n_iters + (n_iters - 1)
    return big * (fwd + bwd) + small * small_count * 3  # backward of a small product: 2 products


def run_case(case: str, impl: str, device: str, dtype_name: str, repeats: int, threads: int) -> dict:
    """Child process: build one case, time forward+backward of one implementation, measure memory."""
    import torch

    if threads > 0:
        torch.set_num_threads(threads)
    sys.path.insert(0, str(REPO / "src"))
    from heinsen_routing._fused import fused_em_routing

    batch, n, d, m, h, linear, x_grad, _ = CASES[case]
    dtype = getattr(torch, dtype_name)
    n_iters = 2
    gen = torch.Generator(device="cpu").manual_seed(0)
    kw = {"dtype": dtype, "device": device}

    def param(*shape: int, std: float = 1.0) -> torch.Tensor:
        t = torch.empty(*shape, **kw)
        t.normal_(0.0, std, generator=gen if device == "cpu" else None)
        return t.requires_grad_(True)

    x = torch.empty(batch, n, d, **kw)
    x.normal_(generator=gen if device == "cpu" else None)
    x.requires_grad_(x_grad)
    a = param(batch, n)  # stands for the caller's a_logits (a leaf here)
    if linear:
        beta_use = torch.nn.Linear(d, m).to(**kw)
        beta_ign = torch.nn.Linear(d, m).to(**kw)
        n1 = 1
    else:
        beta_use, beta_ign = param(n, m), param(n, m)
        n1 = n
    W = {
        "W_F1": param(m, d), "W_F2": param(d, h, std=2 * d**-0.5), "B_F2": param(m, h, std=0.0),
        "W_G1": param(h, d, std=h**-0.5), "W_G2": param(m, d), "B_G2": param(m, d, std=0.0),
        "W_S": param(n1, m, std=d**-0.5), "B_S": param(n1, m, std=0.0),
    }
    leaves = [a, *W.values()]
    leaves += [*beta_use.parameters(), *beta_ign.parameters()] if linear else [beta_use, beta_ign]
    if x_grad:
        leaves.append(x)
    scale = n**-0.5

    if impl == "fused":
        def step() -> torch.Tensor:
            return fused_em_routing(x, scale, a, beta_use, beta_ign, *W.values(), None, n_iters, True)
    elif impl == "plain":
        plain = _load_plain()

        def step() -> torch.Tensor:
            return plain(x, scale, a, beta_use, beta_ign, *W.values(), None, n_iters, True)
    elif impl == "core":
        from heinsen_routing.efficient import plain_em_routing as core

        def step() -> torch.Tensor:
            bu = beta_use(x) if linear else beta_use
            bi = beta_ign(x) if linear else beta_ign
            return core(x, scale, a, bu, bi, *W.values(), None, n_iters, True, True, False)
    else:
        raise ValueError(f"impl: expected plain, core or fused, got {impl!r}")

    def fwd_bwd() -> None:
        for p in leaves:
            p.grad = None
        out = step()
        out.sum().backward()
        if device == "cuda":
            torch.cuda.synchronize()

    cuda = device == "cuda"
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        reset_ok = True
    else:
        base = _rss_bytes()
        reset_ok = _reset_peak()
    walls, cpus = [], []
    for i in range(1 + repeats):
        c0 = resource.getrusage(resource.RUSAGE_SELF)
        t0 = time.perf_counter()
        fwd_bwd()
        wall = time.perf_counter() - t0
        c1 = resource.getrusage(resource.RUSAGE_SELF)
        if i > 0 or repeats == 0:
            walls.append(wall)
            cpus.append((c1.ru_utime - c0.ru_utime) + (c1.ru_stime - c0.ru_stime))
    peak = torch.cuda.max_memory_allocated() if cuda else _peak_bytes(reset_ok)
    grad_bytes = sum(p.grad.numel() * p.grad.element_size() for p in leaves if p.grad is not None)
    wall = statistics.median(walls)
    return {
        "case": case, "impl": impl, "wall_s": wall, "cpu_s": statistics.median(cpus), "walls": walls,
        "peak_delta": peak - base, "grad_bytes": grad_bytes, "act_bytes": max(0, peak - base - grad_bytes),
        "peak_total": peak, "gflops": matmul_flops(batch, n, d, m, h, linear, x_grad, n_iters) / wall / 1e9,
        "threads": torch.get_num_threads(), "peak_from": "cuda" if cuda else ("VmHWM" if reset_ok else "ru_maxrss"),
    }


def _child(case: str, impl: str, args: argparse.Namespace) -> dict | None:
    cmd = [sys.executable, __file__, "--child", case, impl, "--device", args.device, "--dtype", args.dtype,
           "--repeats", str(args.repeats), "--threads", str(args.threads)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        print(f"# {case}/{impl} failed (exit {proc.returncode}): {proc.stderr.strip()[-600:]}", file=sys.stderr)
        return None
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    child = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024  # max over children so far
    result["children_maxrss"] = child
    return result


def _gb(b: float) -> str:
    return f"{b / 2**30:.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", choices=sorted(SIZES), default="small",
                        help="which cases: quick/small (tiny, 10k), paper (paper-head-1), large (100k, 1M, 1M-fixed), all")
    parser.add_argument("--cases", default=None, help=f"comma-separated case names instead of --sizes: {', '.join(CASES)}")
    parser.add_argument("--quick", action="store_true", help="cases tiny and 10k, plain and fused, 1 repeat (< 1 min)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64", "bfloat16", "float16"])
    parser.add_argument("--repeats", type=int, default=3, help="timed runs after one warm-up (median)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--impls", default=None,
                        help="comma-separated: plain, core, fused (default: all three; --quick: plain,fused)")
    parser.add_argument("--json", type=Path, default=None, help="also write the raw results here")
    parser.add_argument("--child", nargs=2, metavar=("CASE", "IMPL"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(run_case(*args.child, args.device, args.dtype, args.repeats, args.threads)))
        return
    if args.quick:
        args.sizes, args.repeats = "quick", 1
        args.impls = args.impls or "plain,fused"
    args.impls = args.impls or "plain,core,fused"
    cases = SIZES[args.sizes] if args.cases is None else [c.strip() for c in args.cases.split(",") if c.strip()]
    for case in cases:
        if case not in CASES:
            parser.error(f"--cases: unknown case {case!r}; expected one of {', '.join(CASES)}")
    impls = [s.strip() for s in args.impls.split(",") if s.strip()]
    if "core" in impls and importlib.util.find_spec("heinsen_routing.efficient") is None:
        sys.path.insert(0, str(REPO / "src"))
        if importlib.util.find_spec("heinsen_routing.efficient") is None:
            impls.remove("core")

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    try:
        torch_version = importlib.metadata.version("torch")
    except importlib.metadata.PackageNotFoundError:
        torch_version = "?"
    threads = f"{args.threads} threads" if args.threads > 0 else "default threads"
    print(f"# {datetime.datetime.now().isoformat(timespec='minutes')}  {cpu}, {os.cpu_count()} CPUs, "
          f"torch {torch_version} ({threads}), device {args.device}, {args.dtype}, n_iters 2, forward+backward, "
          f"median of {args.repeats} after 1 warm-up")
    results = []
    for case in cases:
        for impl in impls:
            if case in FUSED_ONLY and impl != "fused":
                continue
            r = _child(case, impl, args)
            if r is not None:
                results.append(r)
                print(f"#   {case:>13} {impl:>5}: {r['wall_s']:.3f} s wall, {r['cpu_s']:.3f} s cpu, "
                      f"peak +{_gb(r['peak_delta'])} GB, act {_gb(r['act_bytes'])} GB", file=sys.stderr)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))

    print()
    print("| case | shape (batch × n × d_inp → n_out × d_out) | x grad | impl | time s (cpu s) | peak +GB | act GB "
          "| GFLOP/s | time ratio | act ratio |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    by = {(r["case"], r["impl"]): r for r in results}
    for case in cases:
        batch, n, d, m, h, linear, x_grad, note = CASES[case]
        shape = f"{batch} × {n} × {d} → {m} × {h}" + ("" if linear else " (fixed n_inp)")
        base = by.get((case, "plain"))
        for impl in impls:
            r = by.get((case, impl))
            if r is None:
                continue
            ratio_t = f"{r['wall_s'] / base['wall_s']:.2f}" if base else "–"
            ratio_m = f"{r['act_bytes'] / base['act_bytes']:.2f}" if base and base["act_bytes"] else "–"
            print(f"| {case} | {shape} | {'yes' if x_grad else 'no'} | {impl} | {r['wall_s']:.2f} ({r['cpu_s']:.2f}) "
                  f"| {_gb(r['peak_delta'])} | {_gb(r['act_bytes'])} | {r['gflops']:.0f} | {ratio_t} | {ratio_m} |")
    print("\nratios: against plain (SPEC-literal autograd) in the same run; act = peak RSS increase minus "
              "the gradients' bytes.")


if __name__ == "__main__":
    main()
