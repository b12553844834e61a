"""Bits on the wire against accuracy: the secure sum at b = 32, 16, 12 and 8 bits on digits.

Three encodings of each client's weighted update into ``Z_(2^b)``, both summed by the same SecAgg
session and both sending their masked words packed at ``b`` bits (:mod:`secagg.protocol.packing`):

* ``grid``: :class:`~secagg.quantize.Quantizer`, every coordinate clipped to ``[-r, r]``
  (``--secure-range``, r = :data:`RANGE`) and rounded at random to a grid with room for every client
  at ``r``: d + 1 words.
* ``rotation``: :mod:`secagg.rotated_quantize`, the update clipped to L2 norm C
  (``--secure-clip-norm``, C = :data:`CLIP`), rotated (random Hadamard, public signs), rounded at
  random with modular clipping, the quantum chosen so the sum wraps with probability <= 1e-9:
  ``pad_length(d) + 1`` words (8,193 for the digits MLP's 4,810 coordinates: the power-of-2 padding
  costs 70% more words at every b).
* ``rotation-dct``: the same with the orthonormal DCT-II as the rotation (``--secure-transform dct``):
  nothing padded, d + 1 words, a quantum sqrt(2 L_hadamard / d) coarser.

Setting: the library's defaults (digits, 20 clients, all in every round, E = 5, B = 10, lr 0.1, the
``mlp``), ``--rounds`` rounds (20), seeds 0 .. ``--seeds``-1, plus the plain (unquantized) mean as the
reference. Reported per cell: final and last-5 test accuracy (mean over seeds), bytes per client per
round (everything it sent and received in the session, from the in-process session's byte counts),
the masked input's bytes alone, and the encoding's worst-case error of the weighted sum (in units of
the weight bound; grid: per coordinate; rotation: the L2 norm of the error vector, and the bound on
the sum wrapping).

    python benchmarks/bits_digits.py                      # 2 seeds, 20 rounds, 18 runs
    python benchmarks/bits_digits.py --quick              # 2 rounds, 1 seed, b = 32 and 8

Output: a markdown table, ``OUT/bits.json`` and ``OUT/bits.png`` (accuracy and bytes against b).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import torch

from secagg.aggregation import Aggregator, Mean, SecureSum
from secagg.experiment import ExperimentConfig, run_experiment
from secagg.fedavg import FedAvgConfig
from secagg.protocol.packing import packed_length

BITS = (32, 16, 12, 8)
RANGE = 1.0  # the --secure-range default
CLIP = 2.0  # the --secure-clip-norm default
LAST = 5
MODES = ("grid", "rotation", "rotation-dct")


def aggregator(mode: str, bits: int) -> Aggregator:
    if mode == "plain":
        return Mean()
    if mode == "grid":
        return SecureSum(value_range=RANGE, bits=bits)
    return SecureSum(bits=bits, rotation=True, clip_norm=CLIP,
                     transform="dct" if mode == "rotation-dct" else "hadamard")


def run_cell(mode: str, bits: int, seed: int, rounds: int) -> dict[str, Any]:
    torch.set_num_threads(1)
    start = time.perf_counter()
    agg = aggregator(mode, bits)
    config = ExperimentConfig(fedavg=FedAvgConfig(rounds=rounds, aggregator=agg), seed=seed)
    result = run_experiment(config)
    history = result.history
    accuracy = [float(h["accuracy"]) for h in history]
    cell: dict[str, Any] = {"mode": mode, "bits": bits, "seed": seed, "accuracy": accuracy,
                            "final": accuracy[-1], "last5": statistics.fmean(accuracy[-LAST:])}
    if isinstance(agg, SecureSum):
        dim = result.fedavg.layout.dim
        cell["client_bytes"] = statistics.fmean(float(h["agg/client_bytes_mean"]) for h in history)
        cell["masked_input_bytes"] = packed_length(agg.words(dim), bits)
        key = "agg/quantization_error_norm_bound" if agg.rotation else "agg/quantization_error_bound"
        cell["error_bound"] = max(float(h[key]) for h in history)
        if agg.rotation:
            cell["wrap_probability"] = max(float(h["agg/wrap_probability"]) for h in history)
            cell["clipped_fraction"] = max(float(h["agg/clipped_fraction"]) for h in history)
    cell["seconds"] = time.perf_counter() - start
    return cell


def run_grid(bits: Sequence[int], seeds: int, rounds: int, jobs: int, progress: bool = True
             ) -> list[dict[str, Any]]:
    cells = [("plain", 32, s, rounds) for s in range(seeds)]
    cells += [(m, b, s, rounds) for m in MODES for b in bits for s in range(seeds)]
    out: list[dict[str, Any]] = []

    def report(cell: dict[str, Any]) -> None:
        out.append(cell)
        if progress:
            print(f"[{len(out)}/{len(cells)}] {cell['mode']:<12} b={cell['bits']:<2} seed {cell['seed']}: "
                  f"final {cell['final']:.4f} ({cell['seconds']:.1f} s)", file=sys.stderr, flush=True)

    if jobs <= 1:
        for c in cells:
            report(run_cell(*c))
    else:
        with ProcessPoolExecutor(max_workers=jobs) as pool:
            for cell in pool.map(run_cell, *zip(*cells, strict=True)):
                report(cell)
    return out


def summarize(cells: list[dict[str, Any]]) -> list[dict[str, Any]]:
    groups: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for c in cells:
        groups.setdefault((c["mode"], c["bits"]), []).append(c)
    rows = []
    for (mode, bits), runs in groups.items():
        row = {"mode": mode, "bits": bits, "seeds": len(runs),
               "final": statistics.fmean(r["final"] for r in runs),
               "last5": statistics.fmean(r["last5"] for r in runs)}
        for key in ("masked_input_bytes", "error_bound", "wrap_probability", "clipped_fraction"):
            if key in runs[0]:
                row[key] = max(r[key] for r in runs)
        if "client_bytes" in runs[0]:
            row["client_bytes"] = statistics.fmean(r["client_bytes"] for r in runs)
        rows.append(row)
    order = {"plain": 0, "grid": 1, "rotation": 2, "rotation-dct": 3}
    return sorted(rows, key=lambda r: (order[r["mode"]], -r["bits"]))


def markdown_table(rows: list[dict[str, Any]]) -> str:
    lines = ["| encoding | bits | accuracy final / last-5 (%) | KiB per client per round "
             "| masked input (KiB) | error bound of the sum (worst case) |", "|---|---|---|---|---|---|"]
    for r in rows:
        acc = f"{100 * r['final']:.1f} / {100 * r['last5']:.1f}"
        if r["mode"] == "plain":
            lines.append(f"| plain mean (no secure sum) | - | {acc} | - | - | - |")
            continue
        err = (f"{r['error_bound']:.2g} per coordinate" if r["mode"] == "grid"
               else f"{r['error_bound']:.2g} L2 (wrap <= {r['wrap_probability']:.0e})")
        lines.append(f"| {r['mode']} | {r['bits']} | {acc} | {r['client_bytes'] / 1024:.1f} | "
                     f"{r['masked_input_bytes'] / 1024:.1f} | {err} |")
    return "\n".join(lines)


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.4))
    plain = next((r for r in rows if r["mode"] == "plain"), None)
    for mode, marker in zip(MODES, ("o", "s", "^"), strict=True):
        pts = sorted((r["bits"], r) for r in rows if r["mode"] == mode)
        if not pts:
            continue
        bits = [b for b, _ in pts]
        left.plot(bits, [100 * r["final"] for _, r in pts], marker=marker, label=mode)
        right.plot(bits, [r["client_bytes"] / 1024 for _, r in pts], marker=marker, label=mode)
    if plain is not None:
        left.axhline(100 * plain["final"], color="grey", ls="--", label="plain mean")
    for ax, label in ((left, "final test accuracy (%)"), (right, "KiB per client per round")):
        ax.set_xlabel("bits b (ring Z_2^b)")
        ax.set_ylabel(label)
        ax.set_xticks(list(BITS))
        ax.invert_xaxis()
        ax.legend(fontsize=8)
    fig.suptitle("digits, 20 clients: secure sum at b bits", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=None, help="seeds 0..N-1 (default 2; --quick 1)")
    parser.add_argument("--rounds", type=int, default=None, help="rounds (default 20; --quick 2)")
    parser.add_argument("--bits", default=None, help="comma list (default 32,16,12,8; --quick 32,8)")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--jobs", type=int, default=1, help="runs in parallel processes (default 1)")
    parser.add_argument("--out", default="runs/bits", help="folder for bits.json and bits.png")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    rounds = args.rounds if args.rounds is not None else 2 if args.quick else 20
    seeds = args.seeds if args.seeds is not None else 1 if args.quick else 2
    bits = ([int(b) for b in args.bits.split(",")] if args.bits else [32, 8] if args.quick else list(BITS))
    if rounds < 1 or seeds < 1 or args.jobs < 1 or any(not 8 <= b <= 32 for b in bits):
        raise SystemExit("--rounds, --seeds, --jobs must be >= 1 and every --bits in [8, 32]")
    start = time.perf_counter()
    cells = run_grid(bits, seeds, rounds, args.jobs, progress=not args.no_progress)
    rows = summarize(cells)
    table = markdown_table(rows)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    plot(rows, out / "bits.png")
    result = {"settings": {"rounds": rounds, "seeds": seeds, "bits": bits, "range": RANGE, "clip": CLIP,
                           "seconds": time.perf_counter() - start},
              "rows": rows, "table": table, "runs": cells}
    (out / "bits.json").write_text(json.dumps(result, indent=2))
    print(table)
    print(f"\n{len(cells)} runs in {time.perf_counter() - start:.0f} s; {out / 'bits.json'}, "
          f"{out / 'bits.png'}")
    return result


if __name__ == "__main__":
    main()
