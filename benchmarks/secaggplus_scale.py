"""SecAgg+ at scale: what one client and the server pay per round as the federation grows.

For each n, one SecAgg+ round through ``run_session`` (the real wire encoding of every message, one
process, one thread), d words per input, 5% of the clients dropping after ShareKeys, (k, t) from
``secaggplus_parameters(n, 0.2, 0.05)``. Each n runs in its own process so that its peak memory is
its own. Printed per n: k, t, wall seconds, server seconds, mean and largest client seconds, bytes a
client receives and sends per round (mean over survivors, and the largest), the server's peak
resident memory, and received bytes per client divided by k (flat when a client's cost grows like k,
growing like n / k when it grows like n). The sum is checked against the survivors' inputs.

    python benchmarks/secaggplus_scale.py                         # n = 250, 500, 1000, 2000; d = 1000
    python benchmarks/secaggplus_scale.py --n 1000 10000 --dim 10000 --out runs/scale
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np


def measure(n: int, d: int, dropout: float = 0.05, corrupt: float = 0.2) -> dict[str, Any]:
    """One round at size ``n``: the figures above (run inside a fresh process)."""
    from secagg.protocol import SessionParams, run_session, secaggplus_parameters
    from secagg.protocol.messages import Stage

    k, t = secaggplus_parameters(n, corrupt, dropout)
    ids = tuple(range(n))
    params = SessionParams(round=1, model_version=b"scale", client_ids=ids, threshold=t, degree=k,
                           vector_length=d)
    rng = np.random.default_rng(n)  # not secret: benchmark inputs
    inputs = {u: rng.integers(0, 2**32, d, dtype=np.uint64).astype(np.uint32) for u in ids}
    dropped = {int(u): Stage.MASKED_INPUT
               for u in rng.choice(n, int(dropout * n), replace=False)}  # not secret: which clients drop
    start = time.perf_counter()
    report = run_session(params, inputs, drop_before=dropped)
    wall = time.perf_counter() - start
    want = np.zeros(d, dtype=np.uint64)
    for u in report.survivors:
        want += inputs[u]
    if not np.array_equal(want % (1 << 32), report.result):
        raise SystemExit(f"n={n}: wrong sum")
    live = list(report.survivors)
    received = [report.bytes_received[u] for u in live]
    sent = [report.bytes_sent[u] for u in live]
    seconds = [report.client_seconds[u] for u in live]
    return {"n": n, "d": d, "k": k, "t": t, "wall_s": wall, "server_s": report.server_seconds,
            "client_s_mean": float(np.mean(seconds)), "client_s_max": float(np.max(seconds)),
            "received_mean": float(np.mean(received)), "received_max": int(np.max(received)),
            "sent_mean": float(np.mean(sent)), "sent_max": int(np.max(sent)),
            "received_per_k": float(np.mean(received)) / k,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def _plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = [r["n"] for r in rows]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.loglog(n, [r["received_mean"] / 1e3 for r in rows], "o-", label="received per client (KB)")
    ax.loglog(n, [r["sent_mean"] / 1e3 for r in rows], "s-", label="sent per client (KB)")
    ax.loglog(n, [r["client_s_mean"] * 1e3 for r in rows], "^-", label="client time (ms)")
    ax.loglog(n, [r["k"] for r in rows], "k--", label="k (degree)")
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())  # no overlapping 2x10^2 labels
    ax.set_xticks(n, [str(v) for v in n])
    ax.set_xlabel("clients in the round (n)")
    ax.set_title(f"SecAgg+ per-client cost, d = {rows[0]['d']}")
    ax.legend()
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, nargs="+", default=[250, 500, 1000, 2000])
    parser.add_argument("--dim", type=int, default=1000)
    parser.add_argument("--out", type=Path, default=None, help="write results.json and scale.png here")
    parser.add_argument("--worker", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker is not None:
        print(json.dumps(measure(args.worker, args.dim)))
        return 0
    rows = []
    print(f"SecAgg+ round, d = {args.dim}, 5% dropout after ShareKeys, (k, t) for 20% corrupt")
    print("| n | k | t | wall s | server s | client ms mean / max | received KB mean / max | "
          "sent KB mean | received / k (B) | server peak MB |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    for n in args.n:
        out = subprocess.run([sys.executable, __file__, "--worker", str(n), "--dim", str(args.dim)],
                             capture_output=True, text=True, env=env, check=False)
        if out.returncode != 0:
            print(f"n={n}: failed\n{out.stderr[-2000:]}")
            return 1
        r = json.loads(out.stdout.strip().splitlines()[-1])
        rows.append(r)
        print(f"| {n} | {r['k']} | {r['t']} | {r['wall_s']:.1f} | {r['server_s']:.1f} | "
              f"{r['client_s_mean'] * 1e3:.1f} / {r['client_s_max'] * 1e3:.1f} | "
              f"{r['received_mean'] / 1e3:.1f} / {r['received_max'] / 1e3:.1f} | "
              f"{r['sent_mean'] / 1e3:.1f} | "
              f"{r['received_per_k']:.0f} | {r['peak_rss_mb']:.0f} |", flush=True)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "results.json").write_text(json.dumps(rows, indent=1) + "\n")
        _plot(rows, args.out / "scale.png")
        print(f"wrote {args.out / 'results.json'} and {args.out / 'scale.png'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
