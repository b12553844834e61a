"""Two-level secure aggregation at scale: N clients under m combiners against one flat SecAgg+ session.

Both sides sum the same N inputs of d random 32-bit words (no training: the protocol's cost alone),
with SecAgg+ graphs sized by :class:`secagg.aggregation.SecureSum`'s policy (``graph="secaggplus"``,
5% corrupt, 10% dropout assumed) and 5% of the clients actually dropping after ShareKeys. Flat: one
session of all N (``run_session``). Two-level: :class:`secagg.aggregation.HierarchicalSecureSum`, each
combiner one session of its ~N/m clients, then one top session of the m combiners. Everything runs in
this one process, clients included, so wall times are CPU work: ``flat`` is one server's session;
``per combiner`` is the slowest combiner's session (what a round costs when the combiners run on their
own machines, as they do in a deployment), ``level 1`` all combiners one after the other, and ``top``
the top session. Bytes are what crosses the wire (the real encoding of every message): per client
(sent + received, mean over those that completed), per combiner (as its clients' server plus as a
client of the top), and the top server's. Both sums are checked against the survivors' inputs.

    python benchmarks/hierarchical_scale.py                      # N = 1000, m = 10, d = 1000
    python benchmarks/hierarchical_scale.py --clients 10000 --combiners 10 --dim 10000 --out runs/hier
    python benchmarks/hierarchical_scale.py --clients 10000 --ray     # each combiner a Ray task
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from secagg.aggregation import HierarchicalSecureSum, SecureSum
from secagg.aggregation.secure import simulated_dropouts
from secagg.parallel import ClientExecutor, LocalExecutor, RayExecutor
from secagg.protocol.runner import run_session
from secagg.seeding import numpy_rng

DROPOUT = 0.05


def inputs_for(n: int, d: int) -> dict[int, np.ndarray]:
    """Benchmark inputs (not secret): read-only views into one seeded pool, so N x d words are not
    all held at once."""
    spread = 1 << 14
    pool = np.random.default_rng(7).integers(0, 2**32, d + spread, dtype=np.uint64).astype(np.uint32)
    pool.flags.writeable = False
    return {u: pool[(u * 40503) % spread:][:d] for u in range(n)}


def flat(inputs: dict[int, np.ndarray], d: int, secure: SecureSum) -> dict[str, Any]:
    ids = tuple(sorted(inputs))
    params = secure.session_params(ids, d, 1)
    drop = simulated_dropouts(ids, DROPOUT, numpy_rng(0, "scale-dropout"))
    start = time.perf_counter()
    report = run_session(params, inputs, drop_before=drop)
    wall = time.perf_counter() - start
    want = sum(inputs[u].astype(np.uint64) for u in report.survivors) % (1 << 32)
    assert report.result is not None and np.array_equal(report.result.astype(np.uint64), want)
    client = [report.bytes_sent[u] + report.bytes_received[u] for u in report.survivors]
    return {"k": params.degree, "t": params.threshold, "seconds": wall,
            "server_seconds": report.server_seconds, "client_bytes": float(np.mean(client)),
            "server_bytes": report.server_bytes_sent + report.server_bytes_received,
            "survivors": len(report.survivors)}


def two_level(inputs: dict[int, np.ndarray], d: int, combiners: int, secure: SecureSum,
              executor: ClientExecutor | None = None) -> dict[str, Any]:
    agg = HierarchicalSecureSum(combiners=combiners, secure=secure)
    start = time.perf_counter()
    report = agg.run(inputs, d, round_index=1, seed=0, executor=executor)
    wall = time.perf_counter() - start
    want = sum(inputs[u].astype(np.uint64) for u in report.survivors) % (1 << 32)
    assert np.array_equal(report.total.astype(np.uint64), want)
    per = [v for k, v in report.seconds.items() if k.startswith("combiner_")]
    members = len(inputs) // combiners
    params = secure.session_params(tuple(range(members)), d, 1)
    return {"combiner_k": params.degree, "combiner_t": params.threshold, "seconds": wall,
            "level1_seconds": report.seconds["level1"], "combiner_seconds_max": max(per),
            "top_seconds": report.seconds["top"], "client_bytes": float(np.mean(report.client_bytes)),
            "combiner_bytes_max": max(report.combiner_bytes.values()), "top_bytes": report.top_bytes,
            "survivors": len(report.survivors)}


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--combiners", type=int, default=10)
    parser.add_argument("--dim", type=int, default=1000)
    parser.add_argument("--out", default="runs/hierarchical", help="folder for hierarchical.json")
    parser.add_argument("--ray", action="store_true",
                        help="run each combiner's session (its clients included) as a Ray task, side by side "
                             "(a local Ray unless --ray-address): level 1's wall time is then measured, not "
                             "inferred from the slowest combiner")
    parser.add_argument("--ray-address", default=None, metavar="ADDR",
                        help="join this Ray cluster; implies --ray")
    args = parser.parse_args(argv)
    if args.clients < 2 * args.combiners or args.combiners < 2 or args.dim < 1:
        raise SystemExit("--clients must be >= 2 x --combiners >= 4, --dim >= 1")
    secure = SecureSum(graph="secaggplus", dropout=DROPOUT)
    inputs = inputs_for(args.clients, args.dim)
    executor: ClientExecutor = (RayExecutor(address=args.ray_address, threads=1)
                                if args.ray or args.ray_address else LocalExecutor())
    with executor:
        executor.map(abs, [0])  # start Ray (and a worker) before the clock does
        levels = two_level(inputs, args.dim, args.combiners, secure, executor)
    result = {"clients": args.clients, "combiners": args.combiners, "dim": args.dim, "dropout": DROPOUT,
              "combiners_on": "ray" if isinstance(executor, RayExecutor) else "this process",
              "two_level": levels, "flat": flat(inputs, args.dim, secure)}
    f, h = result["flat"], result["two_level"]
    kib = 1024.0
    print(f"N = {args.clients} clients, m = {args.combiners} combiners, d = {args.dim}, "
          f"{DROPOUT:.0%} dropout\n")
    print("| | flat SecAgg+ | two-level |\n|---|---|---|")
    print(f"| graph (k, t) | ({f['k']}, {f['t']}) | combiners ({h['combiner_k']}, {h['combiner_t']}), "
          f"top of {args.combiners} |")
    if result["combiners_on"] != "ray":
        print(f"| seconds per round, one process | {f['seconds']:.1f} | {h['seconds']:.1f} |")
    print(f"| seconds per round, combiners in parallel (slowest + top) | {f['seconds']:.1f} | "
          f"{h['combiner_seconds_max'] + h['top_seconds']:.1f} |")
    if result["combiners_on"] == "ray":
        print(f"| seconds per round, combiners as Ray tasks (measured) | {f['seconds']:.1f} | "
              f"{h['seconds']:.1f} |")
    print(f"| KiB per client | {f['client_bytes'] / kib:.1f} | {h['client_bytes'] / kib:.1f} |")
    print(f"| KiB per server (flat) / per combiner (max) | {f['server_bytes'] / kib:.0f} | "
          f"{h['combiner_bytes_max'] / kib:.0f} |")
    print(f"| KiB at the top server | - | {h['top_bytes'] / kib:.0f} |")
    print(f"| clients summed | {f['survivors']} | {h['survivors']} |")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "hierarchical.json").write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
