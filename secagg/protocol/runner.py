"""Drive one Server and N Clients through a session in one process, over the real wire format.

Every message is encoded to bytes and decoded again at the receiver, so the runner exercises the
codec and counts the bytes each party sends and receives. A dropout schedule says which client
vanishes before which stage; a client that aborts (it detected misbehaviour) vanishes the same way.
An optional ``tamper`` hook lets tests corrupt bytes in transit.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np

from secagg.crypto.keys import SigningKey
from secagg.errors import ConfigError, ProtocolError
from secagg.protocol.client import Client
from secagg.protocol.messages import (
    ConsistencyRequest,
    ForwardedShares,
    KeyDirectory,
    MaskRequest,
    SessionParams,
    Setup,
    Stage,
    UnmaskRequest,
)
from secagg.protocol.server import Outgoing, Server
from secagg.protocol.wire import decode, encode

# the stage a client's reply to each server message belongs to
REPLY_STAGE: dict[type, Stage] = {
    Setup: Stage.ADVERTISE_KEYS, KeyDirectory: Stage.SHARE_KEYS, ForwardedShares: Stage.SHARE_CHECK,
    MaskRequest: Stage.MASKED_INPUT,
    ConsistencyRequest: Stage.CONSISTENCY_CHECK, UnmaskRequest: Stage.UNMASKING}

FAULTS = ("drop", "crash", "garbage", "duplicate")


@dataclass(frozen=True)
class Fault:
    """What client misbehaviour to inject, and at which stage.

    ``drop``: sends nothing from ``stage`` on. ``crash``: computes its reply, then dies before
    sending it (and sends nothing more). ``garbage``: sends ``data`` (random bytes if empty) instead
    of its reply at ``stage``. ``duplicate``: sends its reply at ``stage`` twice.
    """

    stage: Stage
    kind: str = "drop"
    data: bytes = b""

    def __post_init__(self) -> None:
        if self.kind not in FAULTS:
            raise ConfigError(f"kind: must be one of {', '.join(FAULTS)}, got {self.kind!r}")

# tamper(direction, client_id, stage, data) -> new data; direction is "to_client" or "to_server"
Tamper = Callable[[str, int, Stage, bytes], bytes]


@dataclass
class SessionReport:
    """What happened in one session: the sum, who took part, traffic and time."""

    result: np.ndarray | None
    params: SessionParams
    survivors: tuple[int, ...] = ()
    dropped: tuple[int, ...] = ()
    #: taken out by the share check (fewer than t holders could open their shares): in no sum
    excluded: tuple[int, ...] = ()
    client_aborts: dict[int, str] = field(default_factory=dict)
    rejected: list[tuple[int, str]] = field(default_factory=list)
    #: the server's report: survivor -> the neighbours whose shares it refused (bad ciphertexts)
    refused: dict[int, tuple[int, ...]] = field(default_factory=dict)
    #: the server's report: responder -> the clients whose secret it sent a wrong share of (found by
    #: the owner's commitment or public key, left out; the sum stayed exact)
    wrong_shares: dict[int, list[int]] = field(default_factory=dict)
    bytes_sent: dict[int, int] = field(default_factory=dict)
    bytes_received: dict[int, int] = field(default_factory=dict)
    server_bytes_sent: int = 0
    server_bytes_received: int = 0
    client_seconds: dict[int, float] = field(default_factory=dict)
    server_seconds: float = 0.0

    def max_client_bytes(self) -> int:
        """The most bytes any one client sent plus received."""
        return max((self.bytes_sent.get(u, 0) + self.bytes_received.get(u, 0)
                    for u in self.params.client_ids), default=0)


def run_session(params: SessionParams, inputs: Mapping[int, np.ndarray], *,
                drop_before: Mapping[int, Stage] | None = None, tamper: Tamper | None = None,
                server: Server | None = None, faults: Mapping[int, Fault] | None = None,
                identities: Mapping[int, SigningKey] | None = None) -> SessionReport:
    """Run one session to the end and return its report; :class:`AbortError` if it aborts.

    ``inputs[u]``: client ``u``'s quantized input (``vector_length`` uint32 words, < 2^bits).
    ``drop_before[u] = stage``: client ``u`` sends nothing from ``stage`` on.
    ``faults[u]``: a :class:`Fault` to inject for client ``u`` (drop, crash, garbage, duplicate).
    ``server``: a custom (e.g. adversarial) server object; a fresh :class:`Server` by default.
    ``identities``: the clients' Ed25519 identity keys for malicious mode (fresh ones if omitted);
    their public keys form the registry every client (and the default server) trusts.
    """
    drop_before = dict(drop_before or {})
    faults = dict(faults or {})
    for u, fault in faults.items():
        if fault.kind == "drop":
            drop_before[u] = min(drop_before.get(u, fault.stage), fault.stage)
    keys: dict[int, SigningKey] = {}
    registry = None
    if params.malicious:
        keys = dict(identities) if identities is not None else {
            u: SigningKey.generate() for u in params.client_ids}
        registry = {u: k.public for u, k in keys.items()}
    server = server if server is not None else Server(params, registry)
    clients = {u: Client(u, inputs[u], identity=keys.get(u), registry=registry if u in keys else None)
               for u in params.client_ids}
    report = SessionReport(None, params, bytes_sent=dict.fromkeys(params.client_ids, 0),
                           bytes_received=dict.fromkeys(params.client_ids, 0),
                           client_seconds=dict.fromkeys(params.client_ids, 0.0))
    gone: set[int] = set()

    def deliver(outgoing: Outgoing) -> None:
        cache: dict[int, bytes] = {}
        for u, message in outgoing:
            stage = REPLY_STAGE[type(message)]
            if u in gone or (u in drop_before and drop_before[u] <= stage):
                gone.add(u)
                continue
            data = cache.get(id(message)) or cache.setdefault(id(message), encode(message))
            if tamper is not None:
                data = tamper("to_client", u, stage, data)
            report.server_bytes_sent += len(data)
            report.bytes_received[u] += len(data)
            started = time.perf_counter()
            try:
                reply = clients[u].handle(decode(data))
                out = encode(reply)
            except ProtocolError as exc:
                report.client_aborts[u] = str(exc)
                gone.add(u)
                continue
            finally:
                report.client_seconds[u] += time.perf_counter() - started
            fault = faults.get(u)
            copies = 1
            if fault is not None and fault.stage == stage:
                if fault.kind == "crash":
                    report.client_aborts[u] = f"crashed before sending its {stage.name} reply"
                    gone.add(u)
                    continue
                if fault.kind == "garbage":
                    out = fault.data or os.urandom(len(out))
                copies = 2 if fault.kind == "duplicate" else 1
            if tamper is not None:
                out = tamper("to_server", u, stage, out)
            for _ in range(copies):
                report.bytes_sent[u] += len(out)
                report.server_bytes_received += len(out)
                started = time.perf_counter()
                try:
                    server.receive(decode(out), sender=u)  # the transport knows who sent it
                except ProtocolError as exc:
                    report.rejected.append((u, str(exc)))
                finally:
                    report.server_seconds += time.perf_counter() - started

    def server_step(step: Callable[[], Outgoing]) -> Outgoing:
        started = time.perf_counter()
        try:
            return step()
        finally:
            report.server_seconds += time.perf_counter() - started

    deliver(server_step(server.start))
    while server.stage is not None:
        deliver(server_step(server.advance))
    report.result = server.result
    report.survivors, report.dropped = server.survivors, server.dropped
    report.excluded = tuple(sorted(server.excluded))
    report.params, report.refused = server.params, dict(server.refused)  # (with the server's nonce)
    report.wrong_shares = dict(server.wrong_shares)
    return report
