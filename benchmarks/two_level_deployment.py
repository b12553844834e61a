"""A two-level deployment measured: real top-server, combiner and client processes against one flat server.

The script makes the identities (``secagg keys --clients N --combiners M``), then runs the same
training twice on loopback over TLS, one torch thread per process:

* flat: ``secagg serve --secure`` and N ``secagg client`` processes;
* two levels: ``secagg serve --secure --combiners M`` (the top), M ``secagg serve --combiner J``
  processes, and the N clients, each connected to its combiner (client c to combiner c mod M).

Printed per layout: final accuracy, seconds per round (the median over the rounds after the first,
which also waits for the processes to start), the largest client's bytes per round, the bytes the
flat server or each combiner moves per round (with its clients, and to the top), and the top
server's. Bytes are gRPC payload bytes (no HTTP/2 framing, no TLS). The ratio rows compare the
two-level figures with the flat ones of the same run. ``--json`` writes everything.

    python benchmarks/two_level_deployment.py                           # 12 clients, 3 combiners
    python benchmarks/two_level_deployment.py --clients 24 --combiners 4 --rounds 4 --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any


def _spawn(root: Path, name: str, args: list[str]) -> subprocess.Popen[bytes]:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    with open(root / f"{name}.log", "ab") as log:
        return subprocess.Popen([sys.executable, "-m", "secagg", *args], stdout=log, stderr=subprocess.STDOUT,
                                env=env, cwd=root)


def _port(path: Path, proc: subprocess.Popen[bytes], timeout: float = 120.0) -> int:
    deadline = time.monotonic() + timeout
    while not (path.exists() and path.read_text().strip()):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{path.stem} did not start; see {path.parent}")
        time.sleep(0.1)
    return int(path.read_text())


def run_layout(root: Path, clients: int, combiners: int, rounds: int, timeout: float) -> dict[str, Any]:
    """One deployment (``combiners`` = 0: flat) under ``root`` (keys already there); its figures."""
    tls = root / "deploy" / "tls"
    out, audit = root / "run", root / "audit"
    procs: list[subprocess.Popen[bytes]] = []
    server_flags = ["serve", "--secure", "--clients", str(clients), "--fraction", "1",
                    "--rounds", str(rounds),
                    "--tls-cert", str(tls / "server.pem"), "--tls-key", str(tls / "server.key"),
                    "--address", "127.0.0.1:0", "--port-file", str(root / "port"), "--out", str(out),
                    "--audit-dir", str(audit), "--stage-timeout", "60", "--grace", "5",
                    "--wait-timeout", "300"]
    if combiners:
        server_flags += ["--combiners", str(combiners), "--registry", "deploy/combiners/registry.json",
                         "--wait-clients", str(combiners), "--task-timeout", "300"]
    else:
        server_flags += ["--registry", "deploy/registry.json", "--wait-clients", str(clients)]
    try:
        server = _spawn(root, "server", server_flags)
        procs.append(server)
        top = _port(root / "port", server)
        ports = {}
        for j in range(combiners):
            proc = _spawn(root, f"combiner-{j}", [
                "serve", "--combiner", str(j), "--top", f"localhost:{top}",
                "--identity", f"deploy/combiners/combiner-{j}.pem", "--top-ca-cert", str(tls / "ca.pem"),
                "--registry", "deploy/registry.json", "--tls-cert", str(tls / "server.pem"),
                "--tls-key", str(tls / "server.key"), "--address", "127.0.0.1:0",
                "--port-file", str(root / f"combiner-{j}.port"), "--audit-dir", str(audit),
                "--task-timeout", "240", "--stage-timeout", "60", "--grace", "5"])
            procs.append(proc)
            ports[j] = _port(root / f"combiner-{j}.port", proc)
        for u in range(clients):
            port = ports[u % combiners] if combiners else top
            procs.append(_spawn(root, f"client-{u}", [
                "client", "--address", f"localhost:{port}", "--id", str(u),
                "--identity", f"deploy/clients/client-{u}.pem", "--ca-cert", str(tls / "ca.pem")]))
        if server.wait(timeout) != 0:
            raise RuntimeError(f"the server failed; see {root / 'server.log'}")
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait(10)
    history = json.loads((out / "results.json").read_text())["rounds"]
    later = history[1:] or history
    row: dict[str, Any] = {
        "accuracy": history[-1]["accuracy"],
        "seconds_per_round": statistics.median(r["seconds"] for r in later),
        "first_round_seconds": history[0]["seconds"],
        "clients_summed": [r["clients"] for r in history],
    }
    if not combiners:
        row["client_bytes"] = max(r["net/client_bytes_max"] for r in later)
        row["server_bytes"] = statistics.median(r["net/server_bytes"] for r in later)
        return row
    per_combiner, client_bytes = [], []
    for r in range(2 if rounds > 1 else 1, rounds + 1):
        for j in range(combiners):
            meta = json.loads((audit / f"combiner-{j}-round-{r}.json").read_text())
            per_combiner.append(meta["server_bytes"])
            client_bytes.append(max(meta["client_bytes"].values()))
    row["client_bytes"] = max(client_bytes)
    row["combiner_bytes"] = max(per_combiner)  # with its clients
    row["combiner_top_bytes"] = max(r["net/client_bytes_max"] for r in later)  # its top session
    row["top_bytes"] = statistics.median(r["net/server_bytes"] for r in later)
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=12)
    parser.add_argument("--combiners", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds per deployment at most")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.combiners < 2 or args.clients < 3 * args.combiners:
        parser.error("--combiners: at least 2, with at least 3 clients each (min_clients)")
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        subprocess.run([sys.executable, "-m", "secagg", "keys", "--clients", str(args.clients), "--combiners",
                        str(args.combiners), "--out", str(base / "keys")], check=True, capture_output=True)
        results = {}
        for name, m in (("flat", 0), ("two-level", args.combiners)):
            root = base / name
            root.mkdir()
            (root / "deploy").symlink_to(base / "keys")
            started = time.perf_counter()
            results[name] = run_layout(root, args.clients, m, args.rounds, args.timeout)
            results[name]["wall_seconds"] = time.perf_counter() - started
    flat, two = results["flat"], results["two-level"]
    print(f"{args.clients} clients, {args.combiners} combiners, {args.rounds} rounds, loopback, TLS")
    print(f"{'':<34}{'flat':>14}{'two levels':>14}{'ratio':>8}")
    rows = [("final accuracy (%)", 100 * flat["accuracy"], 100 * two["accuracy"]),
            ("seconds per round (after round 1)", flat["seconds_per_round"], two["seconds_per_round"]),
            ("KiB per client per round", flat["client_bytes"] / 1024, two["client_bytes"] / 1024),
            ("KiB at the server / a combiner", flat["server_bytes"] / 1024,
             (two["combiner_bytes"] + two["combiner_top_bytes"]) / 1024),
            ("KiB at the top server", float("nan"), two["top_bytes"] / 1024)]
    for label, a, b in rows:
        flat_text, ratio = (f"{a:>14.2f}", f"{b / a:8.2f}") if a == a else (f"{'-':>14}", "")
        print(f"{label:<34}{flat_text}{b:>14.2f}{ratio}")
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"clients": args.clients, "combiners": args.combiners,
                                         "rounds": args.rounds, **results}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
