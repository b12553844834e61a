"""A real deployment on loopback for tests: ``secagg serve`` and ``secagg client`` as OS processes.

Processes are started with ``python -m secagg`` (one torch thread each, so ten of them share two
cores without spinning), write their logs under the test's directory, and are SIGKILLed at
teardown whatever happened. Every wait has a timeout, so a broken build fails instead of hanging.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from secagg.crypto.keys import SigningKey
from secagg.transport.auth import save_identity, save_registry
from secagg.transport.tls import make_tls_files


class Deployment:
    """Keys, certificates and processes of one test deployment under ``root``."""

    def __init__(self, root: Path, clients: int) -> None:
        self.root, self.clients = root, clients
        registry = {}
        for u in range(clients):
            key = SigningKey.generate()
            save_identity(root / "clients" / f"client-{u}.pem", key)
            registry[u] = key.public
        save_registry(root / "registry.json", registry)
        self.tls = make_tls_files(root / "tls")
        self.out, self.audit = root / "run", root / "audit"
        self.server: subprocess.Popen[bytes] | None = None
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.port = 0

    def _spawn(self, name: str, args: list[str]) -> subprocess.Popen[bytes]:
        env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1")
        log = open(self.root / f"{name}.log", "ab")  # noqa: SIM115 - closed with the process
        proc = subprocess.Popen([sys.executable, "-m", "secagg", *args], stdout=log, stderr=subprocess.STDOUT,
                                env=env, cwd=self.root)
        log.close()
        self.procs[name] = proc
        return proc

    def serve(self, *flags: str, rounds: int = 3, port: int = 0, timeout: float = 90.0,
              registry: str = "registry.json") -> int:
        """Start the server (TLS; ``flags`` add training options) on ``port`` (0: any); return the port."""
        port_file = self.root / "port"
        port_file.unlink(missing_ok=True)
        self.server = self._spawn("server", [
            "serve", "--clients", str(self.clients), "--fraction", "1", "--rounds", str(rounds),
            "--registry", registry, "--tls-cert", str(self.tls.server_cert),
            "--tls-key", str(self.tls.server_key), "--address", f"127.0.0.1:{port}",
            "--port-file", str(port_file),
            "--out", str(self.out), "--audit-dir", str(self.audit), "--task-timeout", "60",
            "--stage-timeout", "20", "--grace", "2", "--wait-clients", str(self.clients),
            "--wait-timeout", "60", *flags])
        deadline = time.monotonic() + timeout
        while not (port_file.exists() and port_file.read_text().strip()):
            if self.server.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"server did not start:\n{self.log('server')}")
            time.sleep(0.1)
        self.port = int(port_file.read_text())
        return self.port

    def combiners(self, m: int) -> None:
        """Identities and a registry (``combiners/registry.json``) for ``m`` combiners."""
        registry = {}
        for j in range(m):
            key = SigningKey.generate()
            save_identity(self.root / "combiners" / f"combiner-{j}.pem", key)
            registry[j] = key.public
        save_registry(self.root / "combiners" / "registry.json", registry)
        self.combiner_ports: dict[int, int] = {}

    def combiner(self, j: int, *flags: str, timeout: float = 90.0) -> int:
        """Start combiner ``j`` under the top server (TLS both ways); return the port it serves on."""
        port_file = self.root / f"combiner-{j}.port"
        port_file.unlink(missing_ok=True)
        proc = self._spawn(f"combiner-{j}", [
            "serve", "--combiner", str(j), "--top", f"localhost:{self.port}",
            "--identity", f"combiners/combiner-{j}.pem", "--top-ca-cert", str(self.tls.ca_cert),
            "--registry", "registry.json", "--tls-cert", str(self.tls.server_cert),
            "--tls-key", str(self.tls.server_key), "--address", "127.0.0.1:0", "--port-file", str(port_file),
            "--audit-dir", str(self.audit), "--task-timeout", "60", "--stage-timeout", "20", "--grace", "2",
            "--give-up", "60", *flags])
        deadline = time.monotonic() + timeout
        while not (port_file.exists() and port_file.read_text().strip()):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"combiner {j} did not start:\n{self.log(f'combiner-{j}')}")
            time.sleep(0.1)
        self.combiner_ports[j] = int(port_file.read_text())
        return self.combiner_ports[j]

    def client(self, u: int, *flags: str, port: int | None = None) -> subprocess.Popen[bytes]:
        """Start client ``u``, connected to the server (or to the combiner on ``port``)."""
        return self._spawn(f"client-{u}", [
            "client", "--address", f"localhost:{port or self.port}", "--id", str(u),
            "--identity", f"clients/client-{u}.pem", "--ca-cert", str(self.tls.ca_cert),
            "--audit-dir", str(self.audit), "--give-up", "60", *flags])

    def wait_server(self, timeout: float = 240.0) -> dict[str, Any]:
        """Wait for the server to finish; return results.json."""
        assert self.server is not None
        try:
            code = self.server.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"server still running after {timeout} s:\n{self.log('server')}") from None
        assert code == 0, f"server exited with {code}:\n{self.log('server')}"
        return json.loads((self.out / "results.json").read_text())

    def wait_rounds(self, rounds: int, timeout: float = 120.0) -> None:
        """Wait until results.json holds ``rounds`` committed rounds."""
        deadline = time.monotonic() + timeout
        path = self.out / "results.json"
        while time.monotonic() < deadline:
            if path.exists() and len(json.loads(path.read_text())["rounds"]) >= rounds:
                return
            time.sleep(0.1)
        raise AssertionError(f"fewer than {rounds} rounds after {timeout} s:\n{self.log('server')}")

    def log(self, name: str) -> str:
        path = self.root / f"{name}.log"
        return path.read_text(errors="replace")[-6000:] if path.exists() else "(no log)"

    def kill_all(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
            proc.wait(10)

    def audited_rounds(self, bits: int = 32) -> dict[int, dict[str, Any]]:
        """Each audited round's survivor sets, with ``exact``: the server's unmasked sum (each session's,
        with several) equals the sum mod 2^bits of the inputs its surviving clients recorded."""
        out = {}
        for meta_path in sorted(self.audit.glob("round-*.json")):
            r = int(meta_path.stem.split("-")[1])
            meta = json.loads(meta_path.read_text())
            result = np.load(self.audit / f"round-{r}-sum.npy")
            # several sessions (secure bucketing): one row per group, each its survivors' sum
            groups = meta.get("group_survivors", [meta["survivors"]])
            rows = result.reshape(len(groups), -1).astype(np.uint64)
            exact = True
            for row, members in zip(rows, groups, strict=True):
                total = np.zeros(row.shape, dtype=np.uint64)
                for u in members:
                    total += np.load(self.audit / f"client-{u}-round-{r}.npy").astype(np.uint64)
                exact = exact and bool(np.array_equal(total % (1 << bits), row))
            meta["exact"] = exact
            out[r] = meta
        return out
