"""Aggregation-rule speed and peak memory against in-run baselines.

For each size (n clients, d coordinates; float32 stack drawn from a standard normal), the robust rules
of :mod:`secagg.aggregation` (Meamed, MoNNA, ARC and MDA included; the geometric median both with its
defaults and as ByzFL runs it, 3 steps from 0; the poisoning literature's FLTrust, FLAME, FoolsGold,
DnC, SignGuard and RLR, with a root update and global weights in the batch) are timed on the same stack
(median of --repeats calls of ``aggregate``; the ``UpdateBatch`` is built, and validated, outside the
timing) and its peak memory measured as
the growth of the process's peak RSS (``resource.getrusage(...).ru_maxrss``) over its value right
after the stack was allocated (the peak is reset there through ``/proc/self/clear_refs`` on Linux, so
the import's own high-water mark does not hide small peaks). Each rule runs in a fresh ``spawn``
subprocess so that one rule's peak does not hide another's (tracemalloc does not see torch's
allocations). One untimed warm-up call precedes the timed ones (a warm-up over 5 s is the only timing).

Baselines, measured the same way in the same run:
  mean        ``torch.mean(U, dim=0)``
  np.median   ``np.median(U.numpy(), axis=0)``
  np.sort     ``np.sort(U.numpy(), axis=0)``
  mean+gram   ``torch.mean(U, dim=0)`` plus one n x n Gram matrix ``V @ V.T`` with ``V = U.double()``
              (the float64 conversion is timed too)

Targets (reported PASS/FAIL, not errors): Krum and Multi-Krum <= 3x mean+gram; coordinate median no
slower than np.median; trimmed mean no slower than np.sort; NNM peak memory <= 2x the input's size
at the largest size.

    python benchmarks/aggregators_speed.py             # n=50, d=10^5 and n=100, d=10^6 (~1.5 GB)
    python benchmarks/aggregators_speed.py --quick     # n=20, d=10^4 and n=50, d=10^5
    python benchmarks/aggregators_speed.py --json out.json --repeats 5
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import resource
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

KRUM_TARGET = 3.0
NNM_MEMORY_TARGET = 2.0
SLOW_SECONDS = 5.0

BASELINES = ("mean", "np.median", "np.sort", "mean+gram")


def _rules(n: int) -> dict[str, tuple[Any, str]]:
    """name -> (aggregator, baseline it is compared with)."""
    from secagg.aggregation import (
        AdaptiveRobustClipping,
        Bucketing,
        CoordinateMedian,
        Krum,
        Meamed,
        Mean,
        MinimumDiameterAveraging,
        MoNNA,
        MultiKrum,
        NearestNeighbourMixing,
        TrimmedMean,
    )
    from secagg.aggregation.centered_clipping import CenteredClipping

    f = n // 10
    rules: dict[str, tuple[Any, str]] = {
        "Mean": (Mean(), "mean"),
        "CoordinateMedian": (CoordinateMedian(), "np.median"),
        f"TrimmedMean(f={f})": (TrimmedMean(f=f), "np.sort"),
        f"Krum(f={f})": (Krum(f=f), "mean+gram"),
        f"MultiKrum(f={f})": (MultiKrum(f=f), "mean+gram"),
        f"NNM(f={f}, Mean)": (NearestNeighbourMixing(f=f, inner=Mean()), "mean+gram"),
        "Bucketing(2, Median)": (Bucketing(bucket_size=2, inner=CoordinateMedian()), "np.median"),
        "CenteredClipping(L=1)": (CenteredClipping(tau=1.0, iterations=1), "mean"),
        f"Meamed(f={f})": (Meamed(f=f), "np.sort"),
        f"MoNNA(f={f})": (MoNNA(f=f), "mean"),
        f"ARC(f={f}, Mean)": (AdaptiveRobustClipping(f=f, inner=Mean()), "mean"),
        f"ARC(f={f}, Median)": (AdaptiveRobustClipping(f=f, inner=CoordinateMedian()), "np.median"),
        f"MDA(f={f})": (MinimumDiameterAveraging(f=f), "mean+gram"),
    }
    from secagg.aggregation import DnC, FoolsGold, RobustLearningRate, SignGuard
    from secagg.aggregation.flame import FLAME
    from secagg.aggregation.fltrust import FLTrust
    rules |= {  # the poisoning literature's rules (batch.reference: a root update; global weights)
        "FLTrust": (FLTrust(), "mean+gram"),
        "FLAME (models)": (FLAME(), "mean+gram"),
        "FLAME (updates)": (FLAME(cluster_on="updates"), "mean+gram"),
        "FoolsGold": (FoolsGold(), "mean+gram"),
        f"DnC(f={f})": (DnC(f=f), "mean"),
        "SignGuard": (SignGuard(), "mean"),
        f"RLR(theta={max(1, n // 4)})": (RobustLearningRate(theta=max(1, n // 4)), "mean"),
    }
    try:
        from secagg.aggregation.bulyan import Bulyan
        if n >= 4 * f + 3:
            rules[f"Bulyan(f={f})"] = (Bulyan(f=f), "np.sort")
    except ImportError:
        pass
    try:
        from secagg.aggregation.geomed import GeometricMedian
        rules["GeometricMedian"] = (GeometricMedian(), "mean")
        rules["GeoMed(T=3, from 0)"] = (
            GeometricMedian(eps=0.1, max_iter=3, tol=1e-300, weighted=False, init="zero"), "mean")
    except ImportError:
        pass
    return rules


def _baseline_fn(name: str) -> Callable[[Any], Any]:
    import numpy as np
    import torch

    if name == "mean":
        return lambda u: torch.mean(u, dim=0)
    if name == "np.median":
        return lambda u: np.median(u.numpy(), axis=0)
    if name == "np.sort":
        return lambda u: np.sort(u.numpy(), axis=0)
    if name == "mean+gram":
        def mean_gram(u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            v = u.double()
            return torch.mean(u, dim=0), v @ v.T
        return mean_gram
    raise ValueError(name)


def _maxrss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


def _reset_peak_rss() -> int:
    """Reset the peak RSS to the current RSS (Linux ``clear_refs`` 5) and return it; without that
    facility return the peak so far (then peaks below the import-time high-water mark read 0)."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:
        pass
    return _maxrss_bytes()


def _worker(kind: str, name: str, n: int, d: int, repeats: int, seed: int) -> dict[str, Any]:
    """Run in a fresh process: build the stack, time ``name`` and measure its peak RSS growth."""
    import torch

    from secagg.aggregation.base import UpdateBatch

    g = torch.Generator().manual_seed(seed)
    u = torch.randn(n, d, generator=g, dtype=torch.float32)
    if kind == "rule":
        agg = _rules(n)[name][0]
        # a root-data update near the mean (FLTrust) and global weights (FLAME clusters G + u_i)
        batch = UpdateBatch(u, torch.ones(n, dtype=torch.float64), tuple(range(n)),
                            reference=u.mean(dim=0) + 0.1 * torch.randn(d, generator=g),
                            global_model=10.0 * torch.randn(d, generator=g))
        state = agg.init_state(d)

        def call() -> Any:
            return agg.aggregate(batch, state).update
    else:
        fn = _baseline_fn(name)

        def call() -> Any:
            return fn(u)
    base = _reset_peak_rss()
    t0 = time.perf_counter()
    out = call()
    warm = time.perf_counter() - t0
    del out
    times: list[float] = []
    for _ in range(repeats if warm <= SLOW_SECONDS else 0):
        t0 = time.perf_counter()
        out = call()
        times.append(time.perf_counter() - t0)
        del out
    times = times or [warm]
    return {"seconds": statistics.median(times), "runs": len(times),
            "peak_bytes": max(0, _maxrss_bytes() - base)}


def measure(ctx: Any, kind: str, name: str, n: int, d: int, repeats: int, seed: int) -> dict[str, Any]:
    with ctx.Pool(1, maxtasksperchild=1) as pool:
        return pool.apply(_worker, (kind, name, n, d, repeats, seed))


def run_size(ctx: Any, n: int, d: int, repeats: int, seed: int, check_nnm_memory: bool) -> dict[str, Any]:
    input_bytes = n * d * 4
    mib = 2.0 ** 20
    print(f"\n== n={n}, d={d} (float32 input {input_bytes / mib:.0f} MiB), median of {repeats} ==")
    print(f"{'rule':<24}{'seconds':>10}{'baseline':>12}{'ratio':>8}{'peak MiB':>10}{'peak/input':>12}")
    baselines = {}
    for b in BASELINES:
        r = measure(ctx, "baseline", b, n, d, repeats, seed)
        baselines[b] = r
        print(f"{'[' + b + ']':<24}{r['seconds']:>10.4f}{'':>12}{'':>8}"
              f"{r['peak_bytes'] / mib:>10.1f}{r['peak_bytes'] / input_bytes:>12.2f}")
    rules = {}
    checks: list[tuple[str, bool, str]] = []
    for name, (_, base) in _rules(n).items():
        r = measure(ctx, "rule", name, n, d, repeats, seed)
        ratio = r["seconds"] / baselines[base]["seconds"]
        r.update(baseline=base, ratio=ratio)
        rules[name] = r
        print(f"{name:<24}{r['seconds']:>10.4f}{base:>12}{ratio:>8.2f}"
              f"{r['peak_bytes'] / mib:>10.1f}{r['peak_bytes'] / input_bytes:>12.2f}")
        if name.startswith(("Krum", "MultiKrum")):
            checks.append((f"{name} <= {KRUM_TARGET}x mean+gram", ratio <= KRUM_TARGET, f"{ratio:.2f}x"))
        if name == "CoordinateMedian":
            checks.append(("CoordinateMedian no slower than np.median", ratio <= 1.0, f"{ratio:.2f}x"))
        if name.startswith("TrimmedMean"):
            checks.append((f"{name} no slower than np.sort", ratio <= 1.0, f"{ratio:.2f}x"))
        if name.startswith("NNM") and check_nnm_memory:
            rel = r["peak_bytes"] / input_bytes
            checks.append((f"{name} peak memory <= {NNM_MEMORY_TARGET}x input", rel <= NNM_MEMORY_TARGET,
                           f"{rel:.2f}x"))
    for label, ok, value in checks:
        print(f"  {'PASS' if ok else 'FAIL'}  {label}: {value}")
    return {"n": n, "d": d, "input_bytes": input_bytes, "baselines": baselines, "rules": rules,
            "checks": [{"target": label, "pass": ok, "value": value} for label, ok, value in checks]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="n=20, d=10^4 and n=50, d=10^5")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per rule (median)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None, help="write the figures to this file")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats: must be >= 1")
    sizes = [(20, 10**4), (50, 10**5)] if args.quick else [(50, 10**5), (100, 10**6)]
    ctx = mp.get_context("spawn")
    t0 = time.perf_counter()
    results = [run_size(ctx, n, d, args.repeats, args.seed, check_nnm_memory=(i == len(sizes) - 1))
               for i, (n, d) in enumerate(sizes)]
    print(f"\ntotal {time.perf_counter() - t0:.1f} s")
    if args.json is not None:
        args.json.write_text(json.dumps({"sizes": results}, indent=2))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
