"""Secure-aggregation speed: client masking and server unmasking against their AES-CTR floors.

Every figure is measured in this run, on this machine, against a baseline measured in the same run:

(a) client masking, full graph, n = 100 clients, d = 10^6 uint32 words. The session is driven by hand
    (Server and Clients in one process, messages passed as objects) up to ForwardedShares; then every
    client's ``Client.handle(ForwardedShares)`` is timed: 99 X25519 agreements + HKDF for the share
    keys, 99 AES-GCM share decryptions, 99 agreements + HKDF for the pair seeds, then
    ``accumulate_masks`` over 100 seeds (self mask + 99 pair masks) and the encoding of the reply.
    Reported: the median over clients of the whole call, of ``accumulate_masks`` alone (timed inside
    the call), and of the rest. Floor: for the same 100 seeds, one AES-128-CTR encryptor each doing
    ``update_into`` over 4d zero bytes into one preallocated buffer, then ``np.add`` of the d words
    into one preallocated uint32 accumulator (median of --repeats). Target: client / floor <= 1.3.
    The rest of the call costs O(n) (about 200 X25519 agreements at n = 100), the floor O(n d): at
    --quick's small d the ratio is higher than at d = 10^6.
(b) server unmasking in the same session with 10% of the clients dropped after ShareKeys (their
    MaskedInput is never delivered; the survivors answer the UnmaskRequest). Timed:
    ``Server.advance()`` at COLLECT_UNMASK (Shamir reconstruction of the survivors' self-mask seeds
    and the dropped clients' mask keys, rebuilding those keys, deriving the dropped-survivor pair
    seeds, ``accumulate_masks``), on a fresh copy of the server state for each of --repeats runs,
    with the Lagrange-coefficient cache emptied each time. Split: the ``reconstruct`` calls, the
    ``accumulate_masks`` call, the rest. Floor: as in (a) for as many seeds as the server expands
    (10 * 90 pair masks + 90 self masks = 990 at n = 100). Target: server / floor <= 1.5.
(c) one whole SecAgg+ round through ``run_session`` (real wire encoding of every message), n = 1000,
    d = 10^5, 5% of the clients dropping after ShareKeys, degree k and threshold t from
    ``secaggplus_parameters(1000, --corrupt-fraction, 0.05)``. Reported: wall time, the sum of the
    clients' seconds, the server's seconds and the remainder (encoding of the server's messages,
    client construction, the runner). One process, one thread. Target: wall <= 10 s. With
    --breakdown the round is run again with timers on its hot functions (graph, wire decode, X25519,
    HKDF, Shamir, masks...) and the seconds of each are printed: where the round's time goes.
(d) traffic: mean bytes sent + received per surviving client over the plain update size 4d (the
    expansion factor), from ``run_session`` at (a)/(b)'s setting (with its 10% dropout) and at (c)'s.
    The mean over every invited client (dropped ones included, as ``SecureSum`` reports it) and the
    largest client are printed too. The expansion depends on d: the overhead is O(n) bytes per client.

Every session's unmasked sum is checked against the survivors' inputs summed mod 2^32; a wrong sum
makes the script exit with status 1. Target misses are reported (PASS/FAIL), not errors.

    python benchmarks/secagg_speed.py                 # full sizes (about a minute, ~1.1 GB of memory)
    python benchmarks/secagg_speed.py --quick         # n=50, d=2*10^5 for (a, b); n=200, d=10^4 for (c)
    python benchmarks/secagg_speed.py --breakdown     # also: where (c)'s time goes
    python benchmarks/secagg_speed.py --json out.json --corrupt-fraction 0.33
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import resource
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cryptography
import numpy as np
from cryptography.hazmat.backends.openssl.backend import backend as openssl_backend
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from secagg.crypto import aead, shamir
from secagg.crypto.keys import DHKeyPair
from secagg.errors import ConfigError
from secagg.protocol import client as client_module
from secagg.protocol import runner as runner_module
from secagg.protocol import server as server_module
from secagg.protocol import session as session_module
from secagg.protocol.client import Client
from secagg.protocol.finder import secaggplus_parameters
from secagg.protocol.messages import ForwardedShares, SessionParams, Stage
from secagg.protocol.runner import SessionReport, run_session
from secagg.protocol.server import Outgoing, Server

CLIENT_TARGET = 1.3
SERVER_TARGET = 1.5
ROUND_TARGET_S = 10.0
AB_DROPOUT = 0.10
ROUND_DROPOUT = 0.05

Masks = list[tuple[bytes, int]]


# -- instrumentation -------------------------------------------------------------------------------


@dataclass
class CallLog:
    """Seconds of every call of one wrapped function, and optionally something taken from its args."""

    seconds: list[float] = field(default_factory=list)
    captured: list[Any] = field(default_factory=list)


@contextmanager
def timed_calls(owner: object, name: str,
                capture: Callable[..., Any] | None = None) -> Iterator[CallLog]:
    """Wrap ``owner.name`` (a module's function or a class's plain method) for the duration of the
    block: each call is timed (and ``capture(*args)`` kept). The library looks such names up at call
    time, so it calls the wrapper."""
    original = getattr(owner, name)
    log = CallLog()

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            log.seconds.append(time.perf_counter() - started)
            if capture is not None:
                log.captured.append(capture(*args, **kwargs))

    setattr(owner, name, wrapper)
    try:
        yield log
    finally:
        setattr(owner, name, original)


def _masks_of(out: np.ndarray, masks: Sequence[tuple[bytes, int]], *_: Any) -> Masks:
    return list(masks)


def floor_seconds(seeds: Sequence[bytes], d: int, repeats: int) -> float:
    """Median seconds of the floor: per seed, a fresh AES-128-CTR encryptor ``update_into`` over 4d zero
    bytes into one preallocated buffer, then one full-length uint32 add into one accumulator."""
    zeros = bytes(4 * d)
    buf = bytearray(4 * d + 15)  # update_into wants room for len(data) + block size - 1
    keystream = np.frombuffer(buf, dtype=np.uint32, count=d)
    acc = np.zeros(d, dtype=np.uint32)
    runs = []
    for _ in range(repeats):
        started = time.perf_counter()
        for seed in seeds:
            encryptor = Cipher(algorithms.AES(seed[:16]), modes.CTR(seed[16:])).encryptor()
            encryptor.update_into(zeros, buf)
            np.add(acc, keystream, out=acc)
        runs.append(time.perf_counter() - started)
    return statistics.median(runs)


# -- sessions --------------------------------------------------------------------------------------


def random_inputs(ids: Sequence[int], d: int, rng: np.random.Generator) -> dict[int, np.ndarray]:
    return {u: rng.integers(0, 1 << 32, size=d, dtype=np.uint32) for u in ids}


def survivors_sum(inputs: Mapping[int, np.ndarray], survivors: Sequence[int]) -> np.ndarray:
    total = np.zeros(next(iter(inputs.values())).size, dtype=np.uint32)
    for u in survivors:
        np.add(total, inputs[u], out=total)  # wraps mod 2^32, like the protocol's ring
    return total


def full_graph_params(n: int, d: int) -> SessionParams:
    """Classic SecAgg: degree n - 1, threshold floor(n / 2) + 1 (``SecureSum``'s default fraction)."""
    return SessionParams(round=0, model_version=b"bench", client_ids=tuple(range(n)),
                         threshold=n // 2 + 1, degree=n - 1, vector_length=d)


def secaggplus_params(n: int, d: int, corrupt: float, dropout: float) -> tuple[SessionParams, str]:
    """SecAgg+ parameters from the finder, or the full graph (with a note) where no sparse k exists."""
    try:
        k, t = secaggplus_parameters(n, corrupt, dropout)
        note = f"secaggplus_parameters({n}, {corrupt}, {dropout}) -> k={k}, t={t}"
    except ConfigError:
        k, t = n - 1, n // 2 + 1
        note = f"no sparse SecAgg+ degree for n={n}: full graph k={k}, t={t}"
    params = SessionParams(round=0, model_version=b"bench", client_ids=tuple(range(n)),
                           threshold=t, degree=k, vector_length=d)
    return params, note


def drive_to_forwarded_shares(params: SessionParams, inputs: Mapping[int, np.ndarray]
                              ) -> tuple[Server, dict[int, Client], Outgoing]:
    """Setup -> AdvertiseKeys -> KeyDirectory -> ShareKeys by hand; returns the ForwardedShares batch."""
    server = Server(params)
    clients = {u: Client(u, inputs[u]) for u in params.client_ids}
    outgoing = server.start()
    for _ in range(2):
        for u, message in outgoing:
            server.receive(clients[u].handle(message))
        outgoing = server.advance()
    return server, clients, outgoing


def traffic(report: SessionReport, d: int) -> dict[str, float]:
    """Bytes per client over the plain update size 4d: survivors' mean, every client's mean, the max."""
    per = {u: report.bytes_sent[u] + report.bytes_received[u] for u in report.params.client_ids}
    survivors = [per[u] for u in report.survivors]
    return {"expansion": float(np.mean(survivors)) / (4 * d),
            "expansion_all_clients": float(np.mean(list(per.values()))) / (4 * d),
            "expansion_max": max(per.values()) / (4 * d),
            "survivor_bytes_mean": float(np.mean(survivors))}


def check_report(report: SessionReport, inputs: Mapping[int, np.ndarray], dropped: set[int]) -> bool:
    return (report.result is not None and not report.client_aborts and not report.rejected
            and set(report.dropped) == dropped
            and bool(np.array_equal(report.result, survivors_sum(inputs, report.survivors))))


# -- the benchmarks --------------------------------------------------------------------------------


def server_repeats(repeats: int) -> int:
    """The server's unmasking is ~10x a client's masking: fewer repeats of it."""
    return max(1, min(repeats, 3))


def bench_client_server(n: int, d: int, repeats: int, rng: np.random.Generator) -> dict[str, Any]:
    """(a), (b) and (d) at the (a)/(b) setting."""
    params = full_graph_params(n, d)
    inputs = random_inputs(params.client_ids, d, rng)
    dropped = {int(u) for u in rng.choice(n, size=round(AB_DROPOUT * n), replace=False)}
    survivors = [u for u in params.client_ids if u not in dropped]
    expected = survivors_sum(inputs, survivors)
    print(f"(a, b) full graph: n={n} clients, d={d} words, t={params.threshold}, "
          f"{len(dropped)} dropped after ShareKeys")

    started = time.perf_counter()
    server, clients, forwarded = drive_to_forwarded_shares(params, inputs)
    setup_s = time.perf_counter() - started
    print(f"  setup by hand (keys, Shamir splits, share encryption) for all clients: {setup_s:.2f} s")

    # (a): every client computes its MaskedInput; only the survivors' reach the server
    handle_s: list[float] = []
    with timed_calls(client_module, "accumulate_masks", capture=_masks_of) as acc_log:
        for u, message in forwarded:
            assert isinstance(message, ForwardedShares)
            started = time.perf_counter()
            reply = clients[u].handle(message)
            handle_s.append(time.perf_counter() - started)
            if u not in dropped:
                server.receive(reply)
            del reply
    seeds_per_client = len(acc_log.captured[0])
    client_s = statistics.median(handle_s)
    accumulate_s = statistics.median(acc_log.seconds)
    other_s = statistics.median(h - a for h, a in zip(handle_s, acc_log.seconds, strict=True))
    client_floor_s = floor_seconds([seed for seed, _ in acc_log.captured[0]], d, repeats)
    client_ratio = client_s / client_floor_s
    print(f"(a) one client's handle(ForwardedShares), median of {len(handle_s)} clients: {client_s:.4f} s "
          f"(min {min(handle_s):.4f}, max {max(handle_s):.4f})")
    print(f"    accumulate_masks over {seeds_per_client} seeds: {accumulate_s:.4f} s; the rest "
          f"(X25519, HKDF, AES-GCM, copy, tobytes): {other_s:.4f} s")
    print(f"    floor ({seeds_per_client} x [update_into {4 * d} B + uint32 add], median of {repeats}): "
          f"{client_floor_s:.4f} s")
    print(f"    client / floor = {client_ratio:.3f}x (accumulate_masks / floor = "
          f"{accumulate_s / client_floor_s:.3f}x); target <= {CLIENT_TARGET}x: "
          f"{'PASS' if client_ratio <= CLIENT_TARGET else 'FAIL'}")

    # (b): survivors answer the unmask request; time the server's last advance() on fresh copies
    for u, message in server.advance():
        server.receive(clients[u].handle(message))
    del clients
    runs: list[tuple[float, float, float, int]] = []
    server_seeds: list[bytes] = []
    correct = True
    for _ in range(server_repeats(repeats)):
        fresh = copy.deepcopy(server)
        shamir.lagrange_at_zero.cache_clear()  # every run pays for its Lagrange coefficients
        with timed_calls(server_module, "reconstruct") as rec_log, \
                timed_calls(server_module, "accumulate_masks", capture=_masks_of) as srv_acc:
            started = time.perf_counter()
            fresh.advance()
            total = time.perf_counter() - started
        correct &= fresh.result is not None and bool(np.array_equal(fresh.result, expected))
        runs.append((total, sum(rec_log.seconds), srv_acc.seconds[0], len(srv_acc.captured[0])))
        server_seeds = [seed for seed, _ in srv_acc.captured[0]]
        del fresh
    server_s = statistics.median(r[0] for r in runs)
    shamir_s = statistics.median(r[1] for r in runs)
    server_acc_s = statistics.median(r[2] for r in runs)
    n_seeds = runs[0][3]
    server_floor_s = floor_seconds(server_seeds, d, server_repeats(repeats))
    server_ratio = server_s / server_floor_s
    print(f"(b) server advance() at COLLECT_UNMASK, median of {len(runs)}: {server_s:.4f} s; sum correct: "
          f"{'yes' if correct else 'NO'}")
    print(f"    Shamir reconstruct ({len(survivors)} self-mask seeds + {len(dropped)} mask keys): "
          f"{shamir_s:.4f} s; accumulate_masks over {n_seeds} seeds: {server_acc_s:.4f} s; the rest "
          f"(share collection, X25519, HKDF, copy): {server_s - shamir_s - server_acc_s:.4f} s")
    print(f"    floor ({n_seeds} x [update_into {4 * d} B + uint32 add], median of "
          f"{server_repeats(repeats)}): {server_floor_s:.4f} s")
    print(f"    server / floor = {server_ratio:.3f}x; target <= {SERVER_TARGET}x: "
          f"{'PASS' if server_ratio <= SERVER_TARGET else 'FAIL'}")
    del server

    # (d) at this setting: a real run_session (wire encoding, byte counts), same inputs and dropouts
    started = time.perf_counter()
    report = run_session(params, inputs, drop_before=dict.fromkeys(dropped, Stage.MASKED_INPUT))
    session_s = time.perf_counter() - started
    session_ok = check_report(report, inputs, dropped)
    correct &= session_ok
    bytes_ = traffic(report, d)
    print(f"(d) run_session at this setting: {session_s:.2f} s wall, sum correct: "
          f"{'yes' if session_ok else 'NO'}; per surviving client {bytes_['survivor_bytes_mean']:.0f} B "
          f"sent + received vs {4 * d} B plain: expansion {bytes_['expansion']:.5f}x "
          f"(mean over all {n} clients {bytes_['expansion_all_clients']:.5f}x, max "
          f"{bytes_['expansion_max']:.5f}x)")
    return {"n_ab": n, "d_ab": d, "t_ab": params.threshold, "dropped_ab": len(dropped),
            "client_s": client_s, "client_s_min": min(handle_s), "accumulate_s": accumulate_s,
            "client_other_s": other_s, "client_floor_s": client_floor_s, "client_ratio": client_ratio,
            "client_seeds": seeds_per_client, "client_pass": client_ratio <= CLIENT_TARGET,
            "server_s": server_s, "server_shamir_s": shamir_s, "server_accumulate_s": server_acc_s,
            "server_seeds": n_seeds, "server_floor_s": server_floor_s, "server_ratio": server_ratio,
            "server_pass": server_ratio <= SERVER_TARGET, "session_ab_s": session_s,
            "expansion_ab": bytes_["expansion"], "expansion_ab_all_clients": bytes_["expansion_all_clients"],
            "correct_ab": correct}


def bench_round(n: int, d: int, corrupt: float, rng: np.random.Generator) -> dict[str, Any]:
    """(c) and (d) at the (c) setting: one whole SecAgg+ round through run_session."""
    params, note = secaggplus_params(n, d, corrupt, ROUND_DROPOUT)
    alt = [f"{c}: {secaggplus_parameters(n, c, ROUND_DROPOUT)}"
           for c in (0.05, 0.2, 0.33) if c != corrupt and _has_sparse(n, c)]
    inputs = random_inputs(params.client_ids, d, rng)
    dropped = {int(u) for u in rng.choice(n, size=round(ROUND_DROPOUT * n), replace=False)}
    print(f"(c) SecAgg+ round via run_session: n={n}, d={d}, {len(dropped)} dropped after ShareKeys; {note} "
          f"(other corrupt fractions, (k, t): {'; '.join(alt)})")
    started = time.perf_counter()
    report = run_session(params, inputs, drop_before=dict.fromkeys(dropped, Stage.MASKED_INPUT))
    wall = time.perf_counter() - started
    ok = check_report(report, inputs, dropped)
    clients_s = sum(report.client_seconds.values())
    other = wall - clients_s - report.server_seconds
    print(f"    wall {wall:.2f} s = clients {clients_s:.2f} s + server {report.server_seconds:.2f} s + "
          f"encoding/runner {other:.2f} s; sum correct: {'yes' if ok else 'NO'}; target <= "
          f"{ROUND_TARGET_S:g} s: {'PASS' if wall <= ROUND_TARGET_S else 'FAIL'}")
    bytes_ = traffic(report, d)
    print(f"(d) per surviving client {bytes_['survivor_bytes_mean']:.0f} B sent + received vs {4 * d} B "
          f"plain: expansion {bytes_['expansion']:.4f}x (mean over all {n} clients "
          f"{bytes_['expansion_all_clients']:.4f}x, max {bytes_['expansion_max']:.4f}x)")
    return {"round_n": n, "round_d": d, "corrupt_fraction": corrupt, "k": params.degree,
            "t": params.threshold, "round_n1000_s": wall, "round_clients_s": clients_s,
            "round_client_mean_s": clients_s / n, "round_server_s": report.server_seconds,
            "round_other_s": other, "round_pass": wall <= ROUND_TARGET_S,
            "expansion_round": bytes_["expansion"],
            "expansion_round_all_clients": bytes_["expansion_all_clients"],
            "correct_round": ok}


# where a round's time goes: (label, the functions timed for it); none of them calls another
COMPONENTS: tuple[tuple[str, tuple[tuple[object, str], ...]], ...] = (
    ("wire decode (all messages)", ((runner_module, "decode"),)),
    ("wire encode (all messages)", ((runner_module, "encode"),)),
    ("Harary graph (own row; server: all)",
     ((client_module, "ring_neighbours"), (server_module, "neighbour_table"))),
    ("session_id (every client + server)", ((client_module, "session_id"), (server_module, "session_id"))),
    ("X25519 agree", ((DHKeyPair, "agree"),)),
    ("HKDF of share keys and pair seeds", ((session_module, "hkdf"),)),
    ("AES-GCM seal/open of shares", ((aead, "seal"), (aead, "open_sealed"))),
    ("Shamir split (clients)", ((client_module, "split"),)),
    ("Shamir reconstruct (server)", ((server_module, "reconstruct"),)),
    ("server share collection (_collect)", ((Server, "_collect"),)),
    ("accumulate_masks (clients + server)", ((client_module, "accumulate_masks"),
                                             (server_module, "accumulate_masks"))),
)


def breakdown_round(n: int, d: int, corrupt: float, rng: np.random.Generator
                    ) -> tuple[dict[str, float], bool]:
    """The (c) round again with the hot functions wrapped in timers: seconds per component.

    Instrumented (a few hundred thousand wrapped calls), so its wall is a little above (c)'s."""
    params, _ = secaggplus_params(n, d, corrupt, ROUND_DROPOUT)
    inputs = random_inputs(params.client_ids, d, rng)
    dropped = {int(u) for u in rng.choice(n, size=round(ROUND_DROPOUT * n), replace=False)}
    logs: dict[str, list[CallLog]] = {}
    with ExitStack() as stack:
        for label, targets in COMPONENTS:
            logs[label] = [stack.enter_context(timed_calls(owner, name)) for owner, name in targets]
        started = time.perf_counter()
        report = run_session(params, inputs, drop_before=dict.fromkeys(dropped, Stage.MASKED_INPUT))
        wall = time.perf_counter() - started
    ok = check_report(report, inputs, dropped)
    parts = {label: sum(sum(log.seconds) for log in group) for label, group in logs.items()}
    calls = {label: sum(len(log.seconds) for log in group) for label, group in logs.items()}
    parts["everything else"] = wall - sum(parts.values())
    print(f"    breakdown of the same round, instrumented: wall {wall:.2f} s, sum correct: "
          f"{'yes' if ok else 'NO'}")
    for label, seconds in sorted(parts.items(), key=lambda item: -item[1]):
        count = f"{calls[label]:>8} calls" if label in calls else " " * 14
        print(f"      {label:<52}{seconds:>7.2f} s {100 * seconds / wall:>5.1f}% {count}")
    return parts, ok


def bench_malicious(n: int, d: int, rng: np.random.Generator) -> dict[str, Any]:
    """(e) Malicious-server mode vs honest-but-curious: same n, d, t and 10% dropout, full graph.

    Malicious mode adds Ed25519 signatures on every key advertisement (each client verifies all n),
    a ConsistencyCheck round (one signature per survivor, verified by every survivor) and slightly
    larger messages. Both sessions run through run_session over the real wire format.
    """
    corrupt = n // 3
    t = (n + corrupt) // 2 + 1  # the smallest threshold malicious mode accepts
    ids = tuple(range(n))
    inputs = random_inputs(ids, d, rng)
    dropped = {int(u) for u in rng.choice(n, size=n // 10, replace=False)}
    out: dict[str, Any] = {}
    for label, malicious in (("honest", False), ("malicious", True)):
        params = SessionParams(round=1, model_version=b"bench", client_ids=ids, threshold=t, degree=n - 1,
                               vector_length=d, malicious=malicious, corrupt=corrupt if malicious else 0)
        started = time.perf_counter()
        report = run_session(params, inputs, drop_before=dict.fromkeys(dropped, Stage.MASKED_INPUT))
        wall = time.perf_counter() - started
        ok = check_report(report, inputs, dropped)
        out[f"{label}_s"] = wall
        out[f"{label}_client_s"] = sum(report.client_seconds.values()) / n
        out[f"{label}_server_s"] = report.server_seconds
        out[f"{label}_bytes"] = traffic(report, d)["survivor_bytes_mean"]
        out[f"{label}_correct"] = ok
    out["malicious_overhead"] = out["malicious_s"] / out["honest_s"]
    print(f"(e) malicious-server mode vs honest-but-curious: n={n}, d={d}, t={t}, corrupt={corrupt}, "
          f"{len(dropped)} dropped after ShareKeys, full graph")
    for label in ("honest", "malicious"):
        line = (f"    {label:9s}: round {out[f'{label}_s']:.2f} s (client mean "
                f"{out[f'{label}_client_s']:.3f} s, server {out[f'{label}_server_s']:.2f} s), "
                f"{out[f'{label}_bytes']:.0f} B per surviving client; sum correct: ")
        print(line + ("yes" if out[f"{label}_correct"] else "NO"))
    print(f"    overhead: {out['malicious_overhead']:.3f}x wall, "
          f"+{out['malicious_bytes'] - out['honest_bytes']:.0f} B per client")
    return out


def _has_sparse(n: int, corrupt: float) -> bool:
    try:
        secaggplus_parameters(n, corrupt, ROUND_DROPOUT)
    except ConfigError:
        return False
    return True


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small sizes, under a minute in all")
    parser.add_argument("--corrupt-fraction", type=float, default=0.2,
                        help="for (c): fraction of clients colluding with the server (default 0.2)")
    parser.add_argument("--repeats", type=int, default=5, help="floor repeats (server: at most 3)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--breakdown", action="store_true",
                        help="rerun (c) with timers on its hot functions: where the round's time goes")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args()
    if args.repeats < 1:
        parser.error("--repeats: must be >= 1")
    n_ab, d_ab, n_round, d_round = (50, 200_000, 200, 10_000) if args.quick else (100, 10**6, 1000, 10**5)

    print(f"secure-aggregation speed{' (--quick)' if args.quick else ''}: {os.cpu_count()} CPUs, "
          f"cryptography {cryptography.__version__}, {openssl_backend.openssl_version_text()}, "
          f"numpy {np.__version__}; one process, one thread")
    rng = np.random.default_rng(args.seed)
    started = time.perf_counter()
    figures = bench_client_server(n_ab, d_ab, args.repeats, rng)
    figures |= bench_round(n_round, d_round, args.corrupt_fraction, rng)
    figures |= bench_malicious(n_ab, d_ab, rng)
    figures["correct"] = (figures["correct_ab"] and figures["correct_round"] and figures["honest_correct"]
                          and figures["malicious_correct"])
    if args.breakdown:
        figures["round_breakdown_s"], ok = breakdown_round(n_round, d_round, args.corrupt_fraction, rng)
        figures["correct"] &= ok
    figures["expansion"] = {"ab": figures["expansion_ab"], "round": figures["expansion_round"]}
    figures["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    figures["quick"] = args.quick
    print(f"summary: client {figures['client_ratio']:.3f}x floor "
          f"[{'PASS' if figures['client_pass'] else 'FAIL'} <= {CLIENT_TARGET}x], "
          f"server {figures['server_ratio']:.3f}x floor [{'PASS' if figures['server_pass'] else 'FAIL'} "
          f"<= {SERVER_TARGET}x], round n={n_round} {figures['round_n1000_s']:.2f} s "
          f"[{'PASS' if figures['round_pass'] else 'FAIL'} <= {ROUND_TARGET_S:g} s], sums "
          f"{'all correct' if figures['correct'] else 'WRONG'}; "
          f"benchmark {time.perf_counter() - started:.0f} s, "
          f"peak resident memory {figures['peak_rss_mib']:.0f} MiB")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))
    return 0 if figures["correct"] else 1


if __name__ == "__main__":
    sys.exit(main())
