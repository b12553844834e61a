"""Network overhead of secure aggregation over gRPC: real client processes on loopback vs in-process.

For each client count (default 10 and 50) the script starts that many client processes once; each
logs in (Ed25519) and runs SecAgg sessions over gRPC with synthetic inputs (no training, so the
figures isolate the protocol and the transport). For each vector length (default 10^5 and 10^6) it
runs a warm-up round and a measured round, checks the unmasked sum against the inputs, and compares
with the same session driven in one process by ``secagg.protocol.run_session`` (same n, d, t).

Reported per (n, d): seconds per round over the network vs in-process (the overhead ratio) and the
payload bytes on the wire (server total, and the largest client's), vs the in-process codec bytes.
Payload bytes exclude gRPC/HTTP2 framing and TLS (loopback runs in the clear unless --tls).

    python benchmarks/network_overhead.py [--clients 10 50] [--dims 100000 1000000] [--tls]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from secagg.aggregation import SecureSum
from secagg.backend import Pipeline, ServerRound
from secagg.crypto.keys import SigningKey
from secagg.protocol import SessionParams, run_session
from secagg.seeding import numpy_rng
from secagg.transport.auth import Authenticator, load_identity, save_identity
from secagg.transport.coordinator import Coordinator
from secagg.transport.envelope import Work
from secagg.transport.node import NetworkClient
from secagg.transport.service import AggregationService, message_limit, start_grpc_server
from secagg.transport.tls import make_tls_files

WEIGHTS = b""  # no model: the session's model version is the hash of these (empty) weights


def synthetic_input(client: int, round_index: int, d: int) -> np.ndarray:
    """Benchmark data, reproducible on both sides (not secret)."""
    return numpy_rng(1234, "bench-input", client, round_index).integers(0, 2**32, size=d, dtype=np.uint32)


class SyntheticClient(NetworkClient):
    """A client whose session input is synthetic: no task, no training."""

    def __init__(self, *args, max_dim: int, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.max_dim = max_dim

    def _setup(self, config_json: str) -> None:
        self._limit = message_limit(self.max_dim)
        self._connect()

    def session_input(self, work: Work, params: SessionParams) -> np.ndarray:
        return synthetic_input(self.id, work.round, params.vector_length)


def worker(args: argparse.Namespace) -> int:
    import torch

    torch.set_num_threads(1)
    ca = Path(args.ca).read_bytes() if args.ca else None
    client = SyntheticClient(f"localhost:{args.port}", args.id, load_identity(args.key), ca_cert=ca,
                             max_dim=args.max_dim, give_up_seconds=120)
    client.run()
    return 0


def run_network(n: int, dims: list[int], tls: bool, tmp: Path) -> dict[int, dict[str, float]]:
    keys = {u: SigningKey.generate() for u in range(n)}
    for u, k in keys.items():
        save_identity(tmp / f"client-{u}.pem", k)
    files = make_tls_files(tmp / "tls") if tls else None
    lock = threading.Condition()
    coordinator = Coordinator("secure", task_seconds=600, stage_seconds=600, grace_seconds=600)
    service = AggregationService(coordinator, Authenticator({u: k.public for u, k in keys.items()}),
                                 json.dumps({"benchmark": True}), lock)
    server, port = start_grpc_server(service, "127.0.0.1:0", max_message_bytes=message_limit(max(dims)),
                                     tls=(files.server_cert, files.server_key) if files else None,
                                     max_workers=n + 16)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    procs = [subprocess.Popen([sys.executable, __file__, "--worker", "--port", str(port), "--id", str(u),
                               "--key", str(tmp / f"client-{u}.pem"), "--max-dim", str(max(dims)),
                               *(["--ca", str(files.ca_cert)] if files else [])], env=env)
             for u in range(n)]
    started = time.perf_counter()
    if service.wait_for_logins(n, 600.0) < n:
        raise SystemExit(f"only {service.auth.logged_in()} of {n} clients logged in within 600 s")
    print(f"  {n} client processes logged in after {time.perf_counter() - started:.1f} s", flush=True)
    out: dict[int, dict[str, float]] = {}
    ids = tuple(range(n))
    r = 0
    try:
        for d in dims:
            for measured in (False, True):
                r += 1
                params = SessionParams(round=r, model_version=hashlib.sha256(WEIGHTS).digest(),
                                       client_ids=ids, threshold=n // 2 + 1, degree=n - 1,
                                       vector_length=d, bits=32)
                service.traffic.reset()
                t0 = time.perf_counter()
                # the raw session (d words, no weight word) under the backend's server round
                server_round = ServerRound(Pipeline(SecureSum(), d), r, ids, 1.0, sessions=[params])
                outcome = service.exchange_round(server_round, WEIGHTS)
                seconds = time.perf_counter() - t0
                sent, received = service.traffic.reset()
                assert outcome.result is not None, outcome.aborted
                expected = sum(synthetic_input(u, r, d).astype(np.uint64) for u in outcome.survivors)
                assert np.array_equal(expected % 2**32, outcome.result), "wrong sum"
                assert len(outcome.survivors) == n, outcome
                if measured:
                    out[d] = {"seconds": seconds,
                              "server_bytes": float(sum(sent.values()) + sum(received.values())),
                              "client_bytes_max": float(max(sent[u] + received[u] for u in ids))}
        with lock:
            coordinator.finish()
            lock.notify_all()
        for p in procs:
            p.wait(120)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
        server.stop(0)
    return out


def run_local(n: int, d: int) -> dict[str, float]:
    params = SessionParams(round=1, model_version=b"local", client_ids=tuple(range(n)), threshold=n // 2 + 1,
                           degree=n - 1, vector_length=d, bits=32)
    inputs = {u: synthetic_input(u, 1, d) for u in range(n)}
    run_session(params, inputs)  # warm-up
    t0 = time.perf_counter()
    report = run_session(params, inputs)
    seconds = time.perf_counter() - t0
    return {"seconds": seconds,
            "server_bytes": float(report.server_bytes_sent + report.server_bytes_received),
            "client_bytes_max": float(report.max_client_bytes())}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, nargs="+", default=[10, 50])
    parser.add_argument("--dims", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--tls", action="store_true", help="serve over TLS (a throwaway CA)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--id", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--key", help=argparse.SUPPRESS)
    parser.add_argument("--ca", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--max-dim", dest="max_dim", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)
    rows = []
    for n in args.clients:
        print(f"n = {n}: starting client processes", flush=True)
        with tempfile.TemporaryDirectory() as tmp:
            network = run_network(n, args.dims, args.tls, Path(tmp))
        for d in args.dims:
            local = run_local(n, d)
            rows.append((n, d, network[d], local))
    print(f"\n| clients | d | network s/round | in-process s | time ratio | network MB (server) | "
          f"in-process MB | bytes ratio | max client MB |{' (TLS)' if args.tls else ''}")
    print("|---|---|---|---|---|---|---|---|---|")
    for n, d, net, loc in rows:
        print(f"| {n} | {d:.0e} | {net['seconds']:.2f} | {loc['seconds']:.2f} | "
              f"{net['seconds'] / loc['seconds']:.2f}x | {net['server_bytes'] / 1e6:.1f} | "
              f"{loc['server_bytes'] / 1e6:.1f} | {net['server_bytes'] / loc['server_bytes']:.3f}x | "
              f"{net['client_bytes_max'] / 1e6:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
