"""Peer misbehaviour and caller misuse are different errors, and the gRPC codes follow from which.

``RemoteProtocolError`` (a peer's message breaks the protocol; ``WireError`` is one) vs
``LocalProtocolError`` (this side drove its state machine wrongly). Both are ``ProtocolError``.
"""

from __future__ import annotations

import grpc
import numpy as np
import pytest

from secagg.aggregation import Mean
from secagg.backend import Pipeline
from secagg.errors import ConfigError, LocalProtocolError, ProtocolError, RemoteProtocolError, WireError
from secagg.protocol.client import Client
from secagg.protocol.messages import SessionParams, Setup
from secagg.protocol.server import Server
from secagg.protocol.wire import decode
from secagg.transport.auth import Authenticator
from secagg.transport.coordinator import Coordinator
from secagg.transport.service import AggregationService

NONCE = bytes(range(32))  # a fixed session nonce for hand-built setups (a Server draws a fresh one)


def _params() -> SessionParams:
    return SessionParams(round=1, model_version=bytes(32), client_ids=(0, 1, 2), threshold=2, degree=2,
                         vector_length=4, nonce=NONCE)


def test_the_hierarchy():
    assert issubclass(RemoteProtocolError, ProtocolError) and issubclass(LocalProtocolError, ProtocolError)
    assert issubclass(WireError, RemoteProtocolError)
    assert not issubclass(LocalProtocolError, RemoteProtocolError)


def test_driving_a_server_wrongly_is_local_and_a_peers_bad_message_is_remote():
    server = Server(_params())
    with pytest.raises(LocalProtocolError, match="nothing to advance"):
        server.advance()
    server.start()
    with pytest.raises(LocalProtocolError, match="already started"):
        server.start()
    advert = Client(1, np.zeros(4, dtype=np.uint32)).handle(Setup(_params()))
    with pytest.raises(RemoteProtocolError, match="claims to come from client 1"):
        server.receive(advert, sender=2)  # client 2 replays client 1's advertisement
    with pytest.raises(WireError):
        decode(b"\x00garbage")


def test_a_client_without_its_identity_in_malicious_mode_is_local_misuse():
    import dataclasses

    with pytest.raises(LocalProtocolError, match="needs an identity key"):
        Client(0, np.zeros(4, dtype=np.uint32)).handle(Setup(dataclasses.replace(_params(), malicious=True)))


def test_a_coordinator_opened_twice_is_local_misuse():
    coordinator = Coordinator("plain", 10.0, 10.0, 1.0)
    pipeline = Pipeline(Mean(), 4)
    coordinator.begin_round(pipeline.server(1, (0,), weight_bound=1.0), b"", 0.0)
    with pytest.raises(LocalProtocolError, match="round 1 is still open"):
        coordinator.begin_round(pipeline.server(2, (0,), weight_bound=1.0), b"", 0.0)


class _Context:
    def __init__(self) -> None:
        self.code: grpc.StatusCode | None = None
        self.details = ""

    def set_code(self, code: grpc.StatusCode) -> None:
        self.code = code

    def set_details(self, details: str) -> None:
        self.details = details


@pytest.mark.parametrize("error, code", [
    (RemoteProtocolError("a peer's bad message"), grpc.StatusCode.FAILED_PRECONDITION),
    (WireError("bad bytes"), grpc.StatusCode.INVALID_ARGUMENT),
    (LocalProtocolError("our own state machine driven wrongly"), grpc.StatusCode.INTERNAL),
    (ConfigError("our own configuration"), grpc.StatusCode.INTERNAL),
])
def test_grpc_codes_say_whose_fault_it_was(error, code):
    service = AggregationService(Coordinator("plain", 10.0, 10.0, 1.0),
                                 Authenticator({0: bytes(32)}), "{}")

    def handler(request: bytes, context: object) -> bytes:
        raise error

    context = _Context()
    assert service._guard("Submit", handler)(b"", context) == b""  # type: ignore[arg-type]
    assert context.code == code
