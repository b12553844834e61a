"""Secure bucketing: bucket size vs privacy vs robustness, measured on synthetic update stacks.

Each cell aggregates one round of ``n`` client updates of which ``f`` are Byzantine and reports the
relative error ``||aggregate - honest mean|| / ||honest mean||`` (mean over seeds) and the wall time
of one aggregation. Privacy is the anonymity set: the fewest clients whose updates the server sees
only as a sum (1 = individual updates visible, n = only the total).

Honest updates: ``mu + sigma * N(0, I) / sqrt(d)`` with ``||mu|| = 1`` (so the spread between
clients is comparable to the signal: non-IID-like heterogeneity). Attacks, each crafted from the
honest updates of the round (omniscient, as in the papers):

  alie       A Little Is Enough (Baruch et al. 2019): every attacker sends ``mean + z * std`` per
             coordinate, ``z = Phi^-1((n - s) / n)`` with ``s = floor(n / 2 + 1) - f``.
  sign-flip  every attacker sends ``-10 * mean`` (a large, obvious outlier).

Defences: ``SecureSum`` (FedAvg mean under secure aggregation: anonymity n, no robustness); the
coordinate median on individual updates (anonymity 1); and ``SecureBucketing(s, median)`` for
several bucket sizes s (anonymity s: a SecAgg session inside every bucket, the median across the
bucket means). A bucket of s tolerates s - 2 clients colluding with the server (the column
"colluders"); with the sessions' ``corrupt_fraction`` of 0.05, a round of n clients assumes
floor(0.05 n) colluders, and bucket sizes too small for that run under
``threat_model="honest-but-curious-server"`` (marked "honest server": they assume no client colludes).
The attack-suite runner (issue 7) measures the same trade-off as final accuracy.

    python benchmarks/secure_bucketing_tradeoff.py            # n=40, d=2000, 3 seeds (~1 min)
    python benchmarks/secure_bucketing_tradeoff.py --quick    # n=20, d=500, 1 seed
    python benchmarks/secure_bucketing_tradeoff.py --json out.json --plot out.png
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

from attacks import alie_z
from secagg.aggregation import Aggregator, CoordinateMedian, SecureBucketing, SecureSum, UpdateBatch
from secagg.seeding import torch_generator

BUCKET_SIZES = (2, 3, 4, 5, 8, 10)
ATTACKS = ("alie", "sign-flip")


def make_round(n: int, f: int, d: int, sigma: float, attack: str,
               seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(stack of n updates with the f attackers last, the honest mean)."""
    g = torch_generator(seed, "tradeoff")
    mu = torch.randn(d, generator=g, dtype=torch.float64)
    mu /= mu.norm()
    honest = mu + sigma * torch.randn(n - f, d, generator=g, dtype=torch.float64) / math.sqrt(d)
    mean = honest.mean(dim=0)
    if f == 0:
        return honest.float(), mean
    if attack == "alie":
        bad = mean + alie_z(n, f) * honest.std(dim=0)  # ALIE, shifted the other way from attacks.ALIE
    elif attack == "sign-flip":
        bad = -10.0 * mean
    else:
        raise ValueError(f"attack: unknown {attack!r}; known: {', '.join(ATTACKS)}")
    return torch.cat([honest, bad.expand(f, d)]).float(), mean


def defences(n: int) -> dict[str, tuple[Aggregator, int, str]]:
    """name -> (aggregator, anonymity set, colluders tolerated under its threat model)."""
    secure = SecureSum(value_range=4.0)
    out: dict[str, tuple[Aggregator, int, str]] = {
        "SecureSum (mean)": (secure, n, str(n - 2)),
        "median, no secure agg.": (CoordinateMedian(), 1, "-"),
    }
    colluders = SecureBucketing(secure=secure).assumed_colluders(n)
    for s in BUCKET_SIZES:
        if 2 * s <= n:
            if s >= max(3, colluders + 2):
                agg = SecureBucketing(bucket_size=s, inner=CoordinateMedian(), secure=secure)
                tolerated = str(s - 2)
            else:
                agg = SecureBucketing(bucket_size=s, inner=CoordinateMedian(), secure=secure,
                                      threat_model="honest-but-curious-server")
                tolerated = f"{s - 2} (honest server)"
            out[f"SecureBucketing(s={s}, median)"] = (agg, s, tolerated)
    return out


def run(n: int, d: int, sigma: float, fs: list[int], seeds: int,
        progress: bool = True) -> list[dict[str, Any]]:
    from rich.progress import Progress

    rows: list[dict[str, Any]] = []
    cells = [(attack, f, name) for attack in ATTACKS for f in fs for name in defences(n)
             if not (f == 0 and attack != ATTACKS[0])]
    with Progress(disable=not progress) as bar:
        task = bar.add_task("cells", total=len(cells))
        for attack, f, name in cells:
            agg, anonymity, colluders = defences(n)[name]
            errors, times = [], []
            for seed in range(seeds):
                stack, mean = make_round(n, f, d, sigma, attack, seed)
                # a random seating: the attackers are not always in the last buckets
                perm = torch.randperm(n, generator=torch_generator(seed, "seating"))
                batch = UpdateBatch(stack[perm], torch.ones(n, dtype=torch.float64), tuple(range(n)),
                                    round=0, seed=seed)
                t0 = time.perf_counter()
                out = agg.aggregate(batch, agg.init_state(d)).update.double()
                times.append(time.perf_counter() - t0)
                errors.append(float((out - mean).norm() / mean.norm()))
            rows.append({"attack": attack if f else "none", "f": f, "defence": name, "anonymity": anonymity,
                         "colluders": colluders,
                         "relative_error": statistics.fmean(errors), "seconds": statistics.median(times)})
            bar.advance(task)
    return rows


def markdown(rows: list[dict[str, Any]], n: int, fs: list[int]) -> str:
    names = list(dict.fromkeys(r["defence"] for r in rows))
    columns = [("none", 0)] + [(a, f) for a in ATTACKS for f in fs if f]
    head = "| defence | anonymity | colluders | " + " | ".join(f"{a} f={f}" if f else "no attack"
                                                             for a, f in columns)
    lines = [head + " | s/round |", "|---" * (len(columns) + 4) + "|"]
    for name in names:
        mine = {(r["attack"], r["f"]): r for r in rows if r["defence"] == name}
        cells = " | ".join(f"{mine[c]['relative_error']:.3f}" for c in columns)
        secs = max(r["seconds"] for r in mine.values())
        first = mine[columns[0]]
        lines.append(f"| {name} | {first['anonymity']} | {first['colluders']} | {cells} | {secs:.3f} |")
    return f"relative error ||aggregate - honest mean|| / ||honest mean||, n={n}\n\n" + "\n".join(lines)


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    attacked = [(a, f) for a, f in dict.fromkeys((r["attack"], r["f"]) for r in rows) if f]
    fig, axes = plt.subplots(1, len(ATTACKS), figsize=(5 * len(ATTACKS), 4), sharey=True)
    for ax, attack in zip(axes, ATTACKS, strict=True):
        for a, f in attacked:
            if a != attack:
                continue
            pts = sorted((r["anonymity"], r["relative_error"]) for r in rows
                         if r["attack"] == a and r["f"] == f and r["defence"].startswith("SecureBucketing"))
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=f"bucketing, f={f}")
            mean_err = next(r["relative_error"] for r in rows
                            if r["attack"] == a and r["f"] == f and r["defence"].startswith("SecureSum"))
            ax.axhline(mean_err, linestyle="--", linewidth=0.8, color=ax.lines[-1].get_color(),
                       label=f"SecureSum mean, f={f}")
        ax.set(title=attack, xlabel="anonymity set = bucket size", yscale="log")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    axes[0].set_ylabel("relative error to the honest mean")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="n=20, d=500, 1 seed")
    parser.add_argument("--sigma", type=float, default=1.0, help="honest spread relative to ||mu|| = 1")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--plot", type=Path, default=None, help="write a PNG of error vs bucket size")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    n, d, seeds = (20, 500, 1) if args.quick else (40, 2000, 3)
    fs = [0, n // 10, n // 5, 3 * n // 10]
    t0 = time.perf_counter()
    rows = run(n, d, args.sigma, fs, seeds, progress=not args.no_progress)
    print(markdown(rows, n, fs))
    print(f"\nd={d}, sigma={args.sigma}, {seeds} seed(s), total {time.perf_counter() - t0:.1f} s")
    if args.json is not None:
        args.json.write_text(json.dumps({"n": n, "d": d, "sigma": args.sigma, "rows": rows}, indent=2))
        print(f"wrote {args.json}")
    if args.plot is not None:
        plot(rows, args.plot)
        print(f"wrote {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
