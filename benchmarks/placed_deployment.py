"""Placed pipelines deployed: real ``secagg serve`` + ``secagg client`` processes vs the same run simulated.

For each composition (DP-FedAvg over SecureSum, the distributed discrete Gaussian, Skellam, adaptive
clipping over SecureSum, secure bucketing with the median), the
script runs ``secagg train`` (one process) and a loopback deployment (``secagg keys``, ``secagg
serve`` over TLS, one ``secagg client`` process per client, one torch thread each) with the same
flags and seed, and prints final accuracy, final epsilon, seconds per round, and the bytes a client
moves per round (simulation: the protocol codec's bytes; deployment: the gRPC payload bytes of the
busiest client). The epsilons must agree exactly; accuracies differ only by the noise and dither,
which the deployment draws from each process's CSPRNG. The ratio of seconds per round is the
network overhead of the composition (training included).

    python benchmarks/placed_deployment.py                      # 10 clients, 5 rounds (~5 min)
    python benchmarks/placed_deployment.py --clients 4 --rounds 2 --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

COMPOSITIONS: dict[str, tuple[str, ...]] = {
    "dp-fedavg over SecureSum": ("--secure", "--dp", "central", "--noise-multiplier", "1.0", "--clip", "1.0"),
    "distributed DP (DDG)": ("--dp", "distributed", "--dp-mechanism", "ddg", "--noise-multiplier", "1.0",
                             "--clip", "1.0"),
    "distributed DP (Skellam)": ("--dp", "distributed", "--dp-mechanism", "skellam",
                                 "--noise-multiplier", "1.0", "--clip", "1.0"),
    "adaptive clipping over SecureSum": ("--secure", "--dp", "adaptive", "--noise-multiplier", "1.0",
                                         "--clip", "1.0"),
    "secure bucketing (median, s = 5)": ("--secure", "--aggregator", "median", "--bucketing", "5"),
}


def _secagg(*args: str, **kwargs: Any) -> subprocess.Popen[bytes]:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    return subprocess.Popen([sys.executable, "-m", "secagg", *args], env=env, **kwargs)


def _summary(results: dict[str, Any], deployed: bool) -> dict[str, float | None]:
    rounds = results["rounds"]

    def per_client(r: dict[str, Any]) -> float:
        if deployed:
            return float(r.get("net/client_bytes_max", 0.0))
        # the busiest client where the rule reports it, else the mean (secure bucketing's sessions)
        for suffix in ("client_bytes_max", "client_bytes_mean"):
            found = [v for k, v in r.items() if k.endswith(suffix)]
            if found:
                return float(found[0])
        return 0.0

    return {"accuracy": rounds[-1]["accuracy"], "epsilon": rounds[-1].get("epsilon"),
            "seconds_per_round": sum(r["seconds"] for r in rounds) / len(rounds),
            "client_bytes_per_round": sum(per_client(r) for r in rounds) / len(rounds),
            "aborted": sum(1 for r in rounds if r.get("aborted"))}


def _epsilon(value: float | None) -> str:
    return "no DP" if value is None else f"{value:.3f}"


def simulate(flags: tuple[str, ...], clients: int, rounds: int, out: Path) -> dict[str, float | None]:
    proc = _secagg("train", "--clients", str(clients), "--fraction", "1", "--rounds", str(rounds), *flags,
                   "--out", str(out), "--no-progress", stdout=subprocess.DEVNULL)
    if proc.wait(1800) != 0:
        raise SystemExit(f"secagg train failed: {flags}")
    return _summary(json.loads((out / "results.json").read_text()), deployed=False)


def deploy(flags: tuple[str, ...], clients: int, rounds: int, root: Path) -> dict[str, float | None]:
    if _secagg("keys", "--clients", str(clients), "--out", str(root / "keys"),
               stdout=subprocess.DEVNULL).wait(120) != 0:
        raise SystemExit("secagg keys failed")
    keys, port_file = root / "keys", root / "port"
    tls = keys / "tls"
    procs = [_secagg("serve", "--clients", str(clients), "--fraction", "1", "--rounds", str(rounds), *flags,
                     "--registry", str(keys / "registry.json"), "--tls-cert", str(tls / "server.pem"),
                     "--tls-key", str(tls / "server.key"), "--address", "127.0.0.1:0",
                     "--port-file", str(port_file), "--out", str(root / "run"),
                     "--wait-clients", str(clients), "--grace", "2",
                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    try:
        deadline = time.monotonic() + 120
        while not (port_file.exists() and port_file.read_text().strip()):
            if procs[0].poll() is not None or time.monotonic() > deadline:
                raise SystemExit("secagg serve did not start")
            time.sleep(0.1)
        port = port_file.read_text().strip()
        for u in range(clients):
            procs.append(_secagg("client", "--address", f"localhost:{port}", "--id", str(u),
                                 "--identity", str(keys / "clients" / f"client-{u}.pem"),
                                 "--ca-cert", str(keys / "tls" / "ca.pem"),
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        if procs[0].wait(1800) != 0:
            raise SystemExit(f"secagg serve failed: {flags}")
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.wait(30)
    return _summary(json.loads((root / "run" / "results.json").read_text()), deployed=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--only", choices=tuple(COMPOSITIONS), action="append", default=None)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, (name, flags) in enumerate(COMPOSITIONS.items()):
            if args.only and name not in args.only:
                continue
            sim = simulate(flags, args.clients, args.rounds, Path(tmp) / f"sim-{i}")
            net = deploy(flags, args.clients, args.rounds, Path(tmp) / f"net-{i}")
            rows.append({"composition": name, "simulation": sim, "deployment": net})
            print(f"done: {name}", file=sys.stderr, flush=True)
    print(f"{args.clients} clients, {args.rounds} rounds, digits; deployment = TLS over loopback, "
          f"one process per client, all on this machine\n")
    print("| composition | accuracy sim / net | epsilon sim / net | s/round sim / net (ratio) "
          "| KB per client per round sim / net | aborted rounds net |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        s, n = r["simulation"], r["deployment"]
        ratio = n["seconds_per_round"] / s["seconds_per_round"]
        print(f"| {r['composition']} | {100 * s['accuracy']:.1f}% / {100 * n['accuracy']:.1f}% | "
              f"{_epsilon(s['epsilon'])} / {_epsilon(n['epsilon'])} | {s['seconds_per_round']:.2f} / "
              f"{n['seconds_per_round']:.2f} ({ratio:.1f}x) | {s['client_bytes_per_round'] / 1e3:.1f} / "
              f"{n['client_bytes_per_round'] / 1e3:.1f} | {n['aborted']} |")
    if args.json is not None:
        doc = {"clients": args.clients, "rounds": args.rounds, "rows": rows}
        args.json.write_text(json.dumps(doc, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
