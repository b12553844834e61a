"""Robust aggregators side by side with ByzFL's (0.0.11): seconds per call, speed-up, agreement.

One float32 (n, d) stack (standard normal, seeded through :mod:`secagg.seeding`) is built once; every
rule both libraries have is then timed on it in this one process: ByzFL with a torch tensor and with a
numpy array (its two backends), and ours through ``aggregate`` (the ``UpdateBatch`` is built, and
validated, outside the timing). The three are timed in turn within each repeat, so that a busy
machine slows all three alike; each figure is the fastest of ``--repeat`` calls after one untimed
warm-up (a warm-up over 5 s is the only timing): on a shared machine the minimum is the least
disturbed estimate (the JSON also keeps the median and every time). ``ratio`` is ByzFL's faster
backend over ours.
``max |diff|`` is the largest coordinate difference between our output and ByzFL's (torch backend, or
numpy where torch was skipped), ``rel`` the same over the largest coordinate of ByzFL's output.

The pairs (ByzFL -> ours; ``f`` is ``--f``, default n // 10):

  median        Median                  CoordinateMedian
  trimmed-mean  TrMean(f)               TrimmedMean(f)
  krum          Krum(f)                 Krum(f, neighbours=n-f-1)        ByzFL scores n - f - 1 neighbours
  multi-krum    MultiKrum(f)            MultiKrum(f, neighbours=n-f-1)
  geomed        GeometricMedian(0.1, 3) GeometricMedian(eps=0.1, max_iter=3, tol=1e-300, weighted=False,
                                                        init="zero")     ByzFL starts at 0, never stops early
  meamed        Meamed(f)               Meamed(f)
  monna         MoNNA(f, idx=0)         MoNNA(f, pivot=0)
  arc           ARC(f) + Average        AdaptiveRobustClipping(f, Mean(weighted=False))
  mda           MDA(--mda-f)            MinimumDiameterAveraging(--mda-f)
  cc            CenteredClipping(L=1, tau=100), from 0   CenteredClipping(tau=100, iterations=1), from 0
  nnm           NNM(f) + Average        NearestNeighbourMixing(f, Mean(weighted=False))

ByzFL is skipped (and says why) where it cannot run at this size: NNM gathers an (n, n - f, d) tensor
(36 GB at n = 100, d = 10^6: over --byzfl-max-gb; the pair is then also timed on the first d' columns,
the largest d' that fits), MDA enumerates C(n, f) subsets in Python (over --byzfl-max-subsets).
ByzFL's ARC clips its input in place, so it gets a fresh copy per call (made outside the timing).

    python benchmarks/aggregators_vs_byzfl.py                       # n=100, d=10^6 (~1.5 GB)
    python benchmarks/aggregators_vs_byzfl.py --n 50 --d 100000 --rules krum,median --repeat 5
    python benchmarks/aggregators_vs_byzfl.py --json byzfl.json

Needs ByzFL: ``pip install --no-deps byzfl==0.0.11`` (and scipy).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

SLOW_SECONDS = 5.0
RULES = ("median", "trimmed-mean", "krum", "multi-krum", "geomed", "meamed", "monna", "arc", "mda",
         "cc", "nnm")


@dataclass(frozen=True)
class Pair:
    """One rule in both libraries: ``byzfl(x)`` runs ByzFL on a tensor or array, ``ours`` is ours."""

    label: str
    byzfl: Callable[[Any], Any]
    ours: Any
    skip_byzfl: str | None = None  # why ByzFL cannot run at this size
    fresh_input: bool = False  # ByzFL writes into its input: give it a copy per call


def pairs(n: int, f: int, mda_f: int, d: int, max_gb: float, max_subsets: float) -> dict[str, Pair]:
    """The rules both libraries have, as configured for an (n, d) stack."""
    from secagg.aggregation import (
        AdaptiveRobustClipping,
        CenteredClipping,
        CoordinateMedian,
        GeometricMedian,
        Krum,
        Meamed,
        Mean,
        MinimumDiameterAveraging,
        MoNNA,
        MultiKrum,
        NearestNeighbourMixing,
        TrimmedMean,
    )
    from secagg.testing.byzfl import load_byzfl_aggregators

    byz = load_byzfl_aggregators()
    agg, pre = byz.aggregators, byz.preaggregators
    average = agg.Average()
    nnm_gb = n * (n - f) * d * 4 / 1e9
    mda_work = math.comb(n, mda_f) * math.comb(n - mda_f, 2)
    return {
        "median": Pair("median", lambda x: agg.Median()(x), CoordinateMedian()),
        "trimmed-mean": Pair(f"trimmed-mean f={f}", lambda x: agg.TrMean(f=f)(x), TrimmedMean(f=f)),
        "krum": Pair(f"krum f={f}", lambda x: agg.Krum(f=f)(x), Krum(f=f, neighbours=n - f - 1)),
        "multi-krum": Pair(f"multi-krum f={f}", lambda x: agg.MultiKrum(f=f)(x),
                           MultiKrum(f=f, neighbours=n - f - 1)),
        "geomed": Pair("geomed T=3", lambda x: agg.GeometricMedian(nu=0.1, T=3)(x),
                       GeometricMedian(eps=0.1, max_iter=3, tol=1e-300, weighted=False, init="zero")),
        "meamed": Pair(f"meamed f={f}", lambda x: agg.Meamed(f=f)(x), Meamed(f=f)),
        "monna": Pair(f"monna f={f}", lambda x: agg.MoNNA(f=f, idx=0)(x), MoNNA(f=f, pivot=0)),
        "arc": Pair(f"arc f={f} + mean", lambda x: average(pre.ARC(f=f)(x)),
                    AdaptiveRobustClipping(f=f, inner=Mean(weighted=False)), fresh_input=True),
        "mda": Pair(f"mda f={mda_f}", lambda x: agg.MDA(f=mda_f)(x), MinimumDiameterAveraging(f=mda_f),
                    skip_byzfl=None if mda_work <= max_subsets else
                    f"enumerates C({n},{mda_f}) subsets x C({n - mda_f},2) pairs = {mda_work:.1e}"),
        "cc": Pair("centered-clipping L=1", lambda x: agg.CenteredClipping(L=1, tau=100.0)(x),
                   CenteredClipping(tau=100.0, iterations=1)),
        "nnm": Pair(f"nnm f={f} + mean", lambda x: average(pre.NNM(f=f)(x)),
                    NearestNeighbourMixing(f=f, inner=Mean(weighted=False)),
                    skip_byzfl=None if nnm_gb <= max_gb else
                    f"gathers an (n, n-f, d) tensor: {nnm_gb:.0f} GB"),
    }


def _timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def run_rule(pair: Pair, u: torch.Tensor, repeat: int) -> dict[str, Any]:
    """Time ByzFL (torch, numpy) and ours in turn on ``u``; compare the outputs."""
    from secagg.aggregation.base import UpdateBatch

    n, d = u.shape
    batch = UpdateBatch(u, torch.ones(n, dtype=torch.float64), tuple(range(n)))
    state = pair.ours.init_state(d)

    def ours() -> torch.Tensor:
        return pair.ours.aggregate(batch, state).update

    inputs: dict[str, Any] = {"byzfl-torch": u, "byzfl-numpy": u.numpy()}
    names = ["ours"] if pair.skip_byzfl is not None else ["byzfl-torch", "byzfl-numpy", "ours"]
    times: dict[str, list[float]] = {k: [] for k in names}
    outputs: dict[str, Any] = {}
    slow: set[str] = set()
    for rep in range(repeat + 1):  # repeat 0 is the warm-up
        for name in names:
            if rep > 0 and name in slow:
                continue
            if name == "ours":
                elapsed, out = _timed(ours)
            else:
                x = inputs[name]
                if pair.fresh_input:  # ByzFL writes into its input; the copy is not timed
                    x = x.clone() if isinstance(x, torch.Tensor) else x.copy()
                elapsed, out = _timed(lambda x=x: pair.byzfl(x))
                del x
            if rep == 0:
                outputs[name] = out
                if elapsed > SLOW_SECONDS:
                    slow.add(name)
                    times[name].append(elapsed)
            else:
                times[name].append(elapsed)
            del out
    result: dict[str, Any] = {"label": pair.label}
    for name, ts in times.items():
        result[name] = min(ts)
        result[f"{name}-median"] = statistics.median(ts)
        result[f"{name}-all"] = ts
    if pair.skip_byzfl is not None:
        result["byzfl-skipped"] = pair.skip_byzfl
        return result
    best = min(result["byzfl-torch"], result["byzfl-numpy"])
    result["byzfl-best"] = best
    result["ratio"] = best / result["ours"]
    ref = torch.as_tensor(np.asarray(outputs["byzfl-torch"]), dtype=torch.float64)
    ours_out = outputs["ours"].to(torch.float64)
    diff = float((ours_out - ref).abs().max())
    scale = float(ref.abs().max())
    result["max_abs_diff"] = diff
    result["rel_diff"] = diff / scale if scale > 0 else diff
    return result


def _print_row(r: dict[str, Any]) -> None:
    if "byzfl-skipped" in r:
        print(f"{r['label']:<24}{'-':>12}{'-':>12}{r['ours']:>9.3f}{'-':>8}  ByzFL skipped: "
              f"{r['byzfl-skipped']}", flush=True)
    else:
        print(f"{r['label']:<24}{r['byzfl-torch']:>12.3f}{r['byzfl-numpy']:>12.3f}{r['ours']:>9.3f}"
              f"{r['ratio']:>8.2f}{r['max_abs_diff']:>12.2e}{r['rel_diff']:>10.1e}", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=100, help="clients (rows)")
    parser.add_argument("--d", type=int, default=10**6, help="coordinates (columns)")
    parser.add_argument("--f", type=int, default=None, help="assumed Byzantine clients (default n // 10)")
    parser.add_argument("--mda-f", type=int, default=2, help="f for MDA (ByzFL enumerates C(n, f) subsets)")
    parser.add_argument("--repeat", type=int, default=3, help="timed calls per contender (median)")
    parser.add_argument("--rules", default=",".join(RULES),
                        help=f"comma-separated subset of {','.join(RULES)}")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--byzfl-max-gb", type=float, default=4.0,
                        help="skip a ByzFL rule whose known temporaries exceed this many GB")
    parser.add_argument("--byzfl-max-subsets", type=float, default=5e7,
                        help="skip ByzFL's MDA above this many (subset, pair) visits")
    parser.add_argument("--json", type=Path, default=None, help="write the figures to this file")
    args = parser.parse_args(argv)
    rules = [r.strip() for r in args.rules.split(",") if r.strip()]
    unknown = sorted(set(rules) - set(RULES))
    if unknown:
        parser.error(f"--rules: unknown {', '.join(unknown)}; known: {', '.join(RULES)}")
    if args.repeat < 1:
        parser.error("--repeat: must be >= 1")
    n, d = args.n, args.d
    f = n // 10 if args.f is None else args.f
    if not (f >= 0 and 2 * f < n and args.mda_f >= 0 and 2 * args.mda_f < n):
        parser.error(f"--f/--mda-f: need 0 <= f and 2f < n = {n}")
    try:
        table = pairs(n, f, args.mda_f, d, args.byzfl_max_gb, args.byzfl_max_subsets)
    except ImportError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    from secagg.seeding import torch_generator

    u = torch.randn(n, d, generator=torch_generator(args.seed, "aggregators-vs-byzfl"), dtype=torch.float32)
    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    print(f"n={n} d={d} float32 ({n * d * 4 / 2**20:.0f} MiB), f={f}, "
          f"torch threads={torch.get_num_threads()}, cpus={os.cpu_count()}, load average {load[0]:.1f}, "
          f"fastest of {args.repeat}")
    header = (f"{'rule':<24}{'byzfl torch':>12}{'byzfl numpy':>12}{'ours':>9}{'ratio':>8}"
              f"{'max |diff|':>12}{'rel':>10}")
    print(header)
    results: dict[str, Any] = {}
    t0 = time.perf_counter()
    for name in rules:
        r = run_rule(table[name], u, args.repeat)
        results[name] = r
        _print_row(r)
        if name == "nnm" and "byzfl-skipped" in r:  # also where ByzFL's gather fits
            d_small = int(args.byzfl_max_gb * 1e9 // (n * (n - f) * 4))
            if 1 <= d_small < d:
                small = pairs(n, f, args.mda_f, d_small, args.byzfl_max_gb, args.byzfl_max_subsets)["nnm"]
                label = f"nnm f={f} d={d_small}"
                r = run_rule(Pair(label, small.byzfl, small.ours), u[:, :d_small].contiguous(), args.repeat)
                results[f"nnm-d{d_small}"] = r
                _print_row(r)
    print(f"total {time.perf_counter() - t0:.1f} s; load average now {os.getloadavg()[0]:.1f}")
    if args.json is not None:
        info = {"n": n, "d": d, "f": f, "mda_f": args.mda_f, "repeat": args.repeat, "seed": args.seed,
                "torch_threads": torch.get_num_threads(), "cpus": os.cpu_count(),
                "machine": platform.processor() or platform.machine(), "load_before": load[0],
                "torch": torch.__version__, "numpy": np.__version__}
        args.json.write_text(json.dumps({"config": info, "rules": results}, indent=2))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
