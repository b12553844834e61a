"""SecAgg+ at scale: what one client and the server pay per round as the federation grows.

For each n, one SecAgg+ round over the real wire encoding of every message, d words per input, 5% of
the clients dropping after ShareKeys, (k, t) from ``secaggplus_parameters(n, 0.2, 0.05)``. With
``--workers 1`` the round runs in one process (``run_session``); with ``--workers W`` the server runs in
the main process and the clients in W worker processes (each hosting every W-th client, fed batches of
wire bytes over a pipe: the server's work and the clients' overlap, as in a deployment). Each n runs
in its own process so that its peak memory is its own. Printed per n: k, t, wall seconds, server
seconds (its encode, decode and state machine), mean and largest client seconds, bytes a client
receives and sends per round (mean over survivors, and the largest), the server's and a worker's peak
resident memory, and received bytes per client divided by k (flat when a client's cost grows like k,
growing like n / k when it grows like n). The sum is checked against the survivors' inputs.

    python benchmarks/secaggplus_scale.py                         # n = 250, 500, 1000, 2000; d = 1000
    python benchmarks/secaggplus_scale.py --n 1000 10000 100000 --dim 10000 --workers 2 --out runs/scale
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

_POOL: dict[int, np.ndarray] = {}
_SPREAD = 1 << 16


def _input(u: int, d: int) -> np.ndarray:
    """Client ``u``'s benchmark input: a read-only view into one seeded pool of random words (not
    secret; rebuilt to check the sum). Views, not copies: 10^5 clients' inputs of 10^4 words would
    otherwise hold 4 GB in the simulation that no real client holds."""
    if d not in _POOL:
        pool = np.random.default_rng(7).integers(0, 2**32, d + _SPREAD, dtype=np.uint64).astype(np.uint32)
        pool.flags.writeable = False
        _POOL[d] = pool
    offset = (u * 40503) % _SPREAD
    return _POOL[d][offset : offset + d]


def _setup(n: int, d: int, dropout: float, corrupt: float):
    from secagg.protocol import SessionParams, secaggplus_parameters
    from secagg.protocol.messages import Stage

    k, t = secaggplus_parameters(n, corrupt, dropout)
    params = SessionParams(round=1, model_version=b"scale", client_ids=tuple(range(n)), threshold=t,
                           degree=k, vector_length=d)
    rng = np.random.default_rng(n)  # not secret: which clients drop
    dropped = {int(u): Stage.MASKED_INPUT for u in rng.choice(n, int(dropout * n), replace=False)}
    return params, dropped


def _host(conn: Any, ids: list[int], d: int) -> None:
    """A worker process: hosts the clients ``ids`` and answers batches ``[[u, message], ...]`` of wire
    bytes with ``[[u, reply or None, seconds], ...]`` (msgpack both ways: no pickle on the pipe)."""
    import msgpack

    from secagg.errors import ProtocolError
    from secagg.protocol.client import Client
    from secagg.protocol.wire import decode, encode

    clients = {u: Client(u, _input(u, d)) for u in ids}
    while data := conn.recv_bytes():
        out = []
        for u, message in msgpack.unpackb(data):
            started = time.perf_counter()
            try:
                reply = encode(clients[u].handle(decode(message)))
            except ProtocolError:
                reply = None
            out.append([u, reply, time.perf_counter() - started])
        conn.send_bytes(msgpack.packb(out))
    conn.send_bytes(msgpack.packb(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024))


def _pooled(params: Any, dropped: dict[int, Any], workers: int, chunk: int = 256) -> dict[str, Any]:
    """One round: the server here, the clients in ``workers`` processes; the figures of :func:`measure`."""
    import multiprocessing
    from multiprocessing.connection import wait

    import msgpack

    from secagg.errors import ProtocolError
    from secagg.protocol.runner import REPLY_STAGE
    from secagg.protocol.server import Server
    from secagg.protocol.wire import decode, encode

    n, d = params.num_clients, params.vector_length
    context = multiprocessing.get_context("fork")
    pipes, procs = [], []
    for w in range(workers):
        mine, theirs = context.Pipe()
        proc = context.Process(target=_host, args=(theirs, list(range(w, n, workers)), d), daemon=True)
        proc.start()
        pipes.append(mine)
        procs.append(proc)
    received, sent, seconds = np.zeros(n, np.int64), np.zeros(n, np.int64), np.zeros(n)
    server_s = 0.0
    start = time.perf_counter()
    server = Server(params)

    def deliver(outgoing: list) -> None:
        nonlocal server_s
        began = time.perf_counter()
        encoded: dict[int, bytes] = {}
        queues: list[list] = [[] for _ in range(workers)]
        for u, message in outgoing:
            if u in dropped and dropped[u] <= REPLY_STAGE[type(message)]:
                continue
            if id(message) not in encoded:
                encoded[id(message)] = encode(message)
            queues[u % workers].append([u, encoded[id(message)]])
            received[u] += len(encoded[id(message)])
        encoded.clear()
        server_s += time.perf_counter() - began
        batches = [[q[i : i + chunk] for i in range(0, len(q), chunk)] for q in queues]
        busy = {}
        for w, pipe in enumerate(pipes):
            if batches[w]:
                pipe.send_bytes(msgpack.packb(batches[w].pop(0)))
                busy[pipe] = w
        while busy:
            for pipe in wait(list(busy)):
                w = busy.pop(pipe)
                replies = msgpack.unpackb(pipe.recv_bytes())
                if batches[w]:  # keep the worker busy while the server takes these replies in
                    pipe.send_bytes(msgpack.packb(batches[w].pop(0)))
                    busy[pipe] = w
                began = time.perf_counter()
                for u, reply, spent in replies:
                    seconds[u] += spent
                    if reply is None:
                        continue
                    sent[u] += len(reply)
                    try:
                        server.receive(decode(reply), sender=u)
                    except ProtocolError as exc:
                        raise SystemExit(f"server refused client {u}: {exc}") from exc
                server_s += time.perf_counter() - began

    def step(fn: Any) -> list:
        nonlocal server_s
        began = time.perf_counter()
        out = fn()
        server_s += time.perf_counter() - began
        return out

    deliver(step(server.start))
    while server.stage is not None:
        deliver(step(server.advance))
    wall = time.perf_counter() - start
    worker_mb = []
    for pipe, proc in zip(pipes, procs, strict=True):
        pipe.send_bytes(b"")
        worker_mb.append(msgpack.unpackb(pipe.recv_bytes()))
        proc.join()
    want = np.zeros(d, dtype=np.uint64)
    for u in server.survivors:
        want += _input(u, d)
    if not np.array_equal(want % (1 << 32), server.result):
        raise SystemExit(f"n={n}: wrong sum")
    live = list(server.survivors)
    return {"wall_s": wall, "server_s": server_s, "seconds": seconds[live], "received": received[live],
            "sent": sent[live], "worker_peak_mb": max(worker_mb)}


def measure(n: int, d: int, dropout: float = 0.05, corrupt: float = 0.2, workers: int = 1) -> dict[str, Any]:
    """One round at size ``n``: the figures above (run inside a fresh process)."""
    from secagg.protocol import run_session

    params, dropped = _setup(n, d, dropout, corrupt)
    if workers > 1:
        r = _pooled(params, dropped, workers)
        wall, server_s, worker_mb = r["wall_s"], r["server_s"], r["worker_peak_mb"]
        seconds, received, sent = r["seconds"], r["received"], r["sent"]
    else:
        inputs = {u: _input(u, d) for u in params.client_ids}
        start = time.perf_counter()
        report = run_session(params, inputs, drop_before=dropped)
        wall, server_s, worker_mb = time.perf_counter() - start, report.server_seconds, 0.0
        want = np.zeros(d, dtype=np.uint64)
        for u in report.survivors:
            want += inputs[u]
        if not np.array_equal(want % (1 << 32), report.result):
            raise SystemExit(f"n={n}: wrong sum")
        live = list(report.survivors)
        received = np.array([report.bytes_received[u] for u in live])
        sent = np.array([report.bytes_sent[u] for u in live])
        seconds = np.array([report.client_seconds[u] for u in live])
    k, t = params.degree, params.threshold
    return {"n": n, "d": d, "k": k, "t": t, "workers": workers, "wall_s": wall, "server_s": server_s,
            "client_s_mean": float(np.mean(seconds)), "client_s_max": float(np.max(seconds)),
            "received_mean": float(np.mean(received)), "received_max": int(np.max(received)),
            "sent_mean": float(np.mean(sent)), "sent_max": int(np.max(sent)),
            "received_per_k": float(np.mean(received)) / k,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "worker_peak_mb": worker_mb}


def _plot(rows: list[dict[str, Any]], path: Path, before: list[dict[str, Any]] | None = None) -> None:
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = [r["n"] for r in rows]
    fig, ax = plt.subplots(figsize=(8.5, 4))
    ax.loglog(n, [r["received_mean"] / 1e3 for r in rows], "o-", label="received per client (KB)")
    ax.loglog(n, [r["sent_mean"] / 1e3 for r in rows], "s-", label="sent per client (KB)")
    ax.loglog(n, [r["client_s_mean"] * 1e3 for r in rows], "^-", label="client time (ms)")
    ax.loglog(n, [r["k"] for r in rows], "k--", label="k (degree)")
    if before:  # an earlier run (another wire version): what a client received then
        nb = [r["n"] for r in before]
        ax.loglog(nb, [r["received_mean"] / 1e3 for r in before], "o:", color="grey",
                  label=f"received per client, before (KB, d = {before[0]['d']})")
        n = sorted({*n, *nb})
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())  # no overlapping 2x10^2 labels
    ax.set_xticks(n, [str(v) for v in n], rotation=45 if len(n) > 6 else 0)
    ax.set_xlabel("clients in the round (n)")
    ax.set_title(f"SecAgg+ per-client cost, d = {rows[0]['d']}")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)  # outside: no line hidden
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, nargs="+", default=[250, 500, 1000, 2000])
    parser.add_argument("--dim", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=1,
                        help="client processes (1: the whole round in one process, run_session)")
    parser.add_argument("--out", type=Path, default=None, help="write results.json and scale.png here")
    parser.add_argument("--before", type=Path, default=None,
                        help="a results.json of an earlier run to draw beside this one")
    parser.add_argument("--worker", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker is not None:
        print(json.dumps(measure(args.worker, args.dim, workers=args.workers)))
        return 0
    rows = []
    where = "one process" if args.workers == 1 else f"server + {args.workers} client processes"
    print(f"SecAgg+ round, d = {args.dim}, 5% dropout after ShareKeys, (k, t) for 20% corrupt, {where}")
    print("| n | k | t | wall s | server s | client ms mean / max | received KB mean / max | "
          "sent KB mean | received / k (B) | server peak MB | worker peak MB |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    for n in args.n:
        out = subprocess.run([sys.executable, __file__, "--worker", str(n), "--dim", str(args.dim),
                              "--workers", str(args.workers)],
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
              f"{r['received_per_k']:.0f} | {r['peak_rss_mb']:.0f} | {r['worker_peak_mb']:.0f} |", flush=True)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "results.json").write_text(json.dumps(rows, indent=1) + "\n")
        before = json.loads(args.before.read_text()) if args.before is not None else None
        _plot(rows, args.out / "scale.png", before)
        print(f"wrote {args.out / 'results.json'} and {args.out / 'scale.png'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
