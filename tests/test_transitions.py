"""The protocol's phase transitions live in one table per side, and sessions follow exactly them."""

from __future__ import annotations

import numpy as np
import pytest

from secagg.crypto.keys import SigningKey
from secagg.errors import RemoteProtocolError
from secagg.protocol import client as client_module
from secagg.protocol import server as server_module
from secagg.protocol.client import Client, ClientPhase
from secagg.protocol.messages import KeyDirectory, SessionParams, Setup, UnmaskRequest
from secagg.protocol.runner import run_session
from secagg.protocol.server import Server, ServerPhase

NONCE = bytes(range(32))  # a fixed session nonce for hand-built setups (a Server draws a fresh one)


class PhaseLog(Server):
    """A server that records its phase after every step (test only)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.visited = [self.phase]

    def start(self):
        out = super().start()
        self.visited.append(self.phase)
        return out

    def advance(self):
        out = super().advance()
        self.visited.append(self.phase)
        return out


def _path(malicious: bool) -> list[ServerPhase]:
    phase, path = ServerPhase.COLLECT_KEYS, [ServerPhase.NEW, ServerPhase.COLLECT_KEYS]
    while phase in server_module.TRANSITIONS:
        row = server_module.TRANSITIONS[phase]
        phase = row[4] if malicious else row[3]
        path.append(phase)
    return path


@pytest.mark.parametrize("malicious", [False, True])
def test_a_session_visits_exactly_the_tables_phases(malicious):
    ids = (0, 1, 2, 3)
    params = SessionParams(round=1, model_version=bytes(32), client_ids=ids, threshold=3, degree=3,
                           vector_length=5, malicious=malicious, corrupt=0, nonce=NONCE)
    keys = {u: SigningKey.generate() for u in ids}
    registry = {u: k.public for u, k in keys.items()} if malicious else None
    server = PhaseLog(params, registry)
    inputs = {u: np.full(5, u, dtype=np.uint32) for u in ids}
    report = run_session(params, inputs, server=server, identities=keys if malicious else None)
    assert server.visited == _path(malicious)
    assert server.visited[-1] is ServerPhase.DONE
    assert np.array_equal(report.result, sum(inputs.values()).astype(np.uint32))


def test_the_client_table_covers_every_reachable_phase_and_refuses_the_rest():
    table = client_module.TRANSITIONS
    for mode in (False, True):
        phase = ClientPhase.NEW
        seen = []
        while phase not in seen:
            seen.append(phase)
            phase = table[(phase, mode)][2]
        assert seen[-1] is ClientPhase.DONE
        assert (ClientPhase.SIGNED in seen) == mode  # the consistency round only in malicious mode
    client = Client(0, np.zeros(3, dtype=np.uint32))
    with pytest.raises(RemoteProtocolError, match="got KeyDirectory while waiting for Setup"):
        client.handle(KeyDirectory(()))
    assert client.phase is ClientPhase.ABORTED  # a refused message aborts the session
    fresh = Client(0, np.zeros(3, dtype=np.uint32))
    params = SessionParams(round=1, model_version=bytes(32), client_ids=(0, 1), threshold=2, degree=1,
                           vector_length=3, nonce=NONCE)
    fresh.handle(Setup(params))
    assert fresh.phase is ClientPhase.ADVERTISED
    with pytest.raises(RemoteProtocolError, match="got UnmaskRequest while waiting for KeyDirectory"):
        fresh.handle(UnmaskRequest(b"", (0, 1), ()))
