"""The gRPC service over a real loopback socket: every bad input gets a status code, never a dead server.

One in-process server per module (plaintext, and a TLS variant), in secure mode with round 1 open for
four registered clients. Calls go through raw ``unary_unary`` stubs (bytes in, bytes out), so the tests
send exactly the bytes they mean to. After each refusal the server must still answer a valid
Hello/Login/Poll: a malformed or hostile call costs its sender a status code and nothing else.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import pytest

from secagg.aggregation import SecureSum
from secagg.backend import Pipeline
from secagg.crypto.keys import SigningKey
from secagg.protocol import wire
from secagg.protocol.client import Client
from secagg.protocol.messages import Setup, Stage
from secagg.transport.auth import Authenticator, login_message
from secagg.transport.coordinator import Coordinator
from secagg.transport.envelope import (
    TOKEN_BYTES,
    VERSION,
    Hello,
    Login,
    Poll,
    Submit,
    WorkKind,
    decode_challenge,
    decode_welcome,
    decode_work,
    encode_ack,
    encode_hello,
    encode_login,
    encode_poll,
    encode_submit,
)
from secagg.transport.service import SERVICE, TOKEN_METADATA, AggregationService, start_grpc_server
from secagg.transport.tls import make_tls_files

INVITED = (1, 2, 3, 4)
UNREGISTERED = 9
D = 3
MAX_MESSAGE = 64 * 1024
TIMEOUT = 5
CONFIG = '{"experiment": "wire-test"}'


@dataclass
class Deployment:
    service: AggregationService
    keys: dict[int, SigningKey]
    params: object
    port: int


def _deploy(tls: tuple[Path, Path] | None) -> tuple[Deployment, grpc.Server]:
    keys = {u: SigningKey.generate() for u in INVITED}
    coordinator = Coordinator("secure", task_seconds=600.0, stage_seconds=600.0, grace_seconds=600.0)
    server_round = Pipeline(SecureSum(), D).server(1, INVITED, weight_bound=2.0)
    params = server_round.sessions[0].params
    coordinator.begin_round(server_round, b"global weights", time.monotonic())
    service = AggregationService(coordinator, Authenticator({u: k.public for u, k in keys.items()}), CONFIG)
    server, port = start_grpc_server(service, "127.0.0.1:0" if tls is None else "localhost:0",
                                     max_message_bytes=MAX_MESSAGE, tls=tls, max_workers=8)
    return Deployment(service, keys, params, port), server


@pytest.fixture(scope="module")
def deployment() -> Iterator[Deployment]:
    dep, server = _deploy(None)
    yield dep
    server.stop(0)


@pytest.fixture
def channel(deployment: Deployment) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(f"127.0.0.1:{deployment.port}") as ch:
        yield ch


def _call(channel: grpc.Channel, method: str, request: bytes, token: bytes | None = None) -> bytes:
    stub = channel.unary_unary(f"/{SERVICE}/{method}")
    metadata = ((TOKEN_METADATA, token),) if token is not None else None
    return stub(request, timeout=TIMEOUT, metadata=metadata)


def _refused(channel: grpc.Channel, method: str, request: bytes, code: grpc.StatusCode,
             token: bytes | None = None) -> str:
    with pytest.raises(grpc.RpcError) as info:
        _call(channel, method, request, token)
    assert info.value.code() == code, info.value.details()
    return info.value.details()


def _login(channel: grpc.Channel, dep: Deployment, u: int) -> bytes:
    challenge = decode_challenge(_call(channel, "Hello", encode_hello(Hello(u))))
    signature = dep.keys[u].sign(login_message(challenge.nonce, u))
    welcome = decode_welcome(_call(channel, "Login", encode_login(Login(u, challenge.nonce, signature))))
    assert welcome.config == CONFIG and welcome.mode == "secure"
    assert len(welcome.token) == TOKEN_BYTES
    return welcome.token


def _assert_alive(channel: grpc.Channel, dep: Deployment, u: int = 1) -> None:
    """A valid Hello, Login and Poll still work: the client gets round 1's task and the session's Setup."""
    token = _login(channel, dep, u)
    work = decode_work(_call(channel, "Poll", encode_poll(Poll(0, 0, 0)), token))
    assert (work.kind, work.round, work.step) == (WorkKind.TASK, 1, 0)
    assert work.model == b"global weights" and work.weight_bound == 2.0
    setup = wire.decode(work.message)
    assert isinstance(setup, Setup) and setup.params == dep.params


def test_valid_session_over_the_wire(channel: grpc.Channel, deployment: Deployment) -> None:
    _assert_alive(channel, deployment, 2)
    token = _login(channel, deployment, 2)
    # nothing after the task yet: a short long-poll comes back with WAIT
    work = decode_work(_call(channel, "Poll", encode_poll(Poll(1, 0, 50)), token))
    assert work.kind is WorkKind.WAIT


# -- malformed bytes ------------------------------------------------------------------------------

GARBAGE = b"\xc1\x00garbage\xff"


@pytest.mark.parametrize(("method", "detail"), [("Hello", "Hello: not a valid msgpack object"),
                                                ("Login", "Login: not a valid msgpack object")])
def test_garbage_before_login_is_invalid_argument(channel: grpc.Channel, deployment: Deployment, method: str,
                                                  detail: str) -> None:
    assert _refused(channel, method, GARBAGE, grpc.StatusCode.INVALID_ARGUMENT).startswith(detail)
    _assert_alive(channel, deployment)


@pytest.mark.parametrize(("method", "detail"), [("Poll", "Poll: not a valid msgpack object"),
                                                ("Submit", "Submit: not a valid msgpack object")])
def test_garbage_with_a_token_is_invalid_argument(channel: grpc.Channel, deployment: Deployment, method: str,
                                                  detail: str) -> None:
    token = _login(channel, deployment, 3)
    assert _refused(channel, method, GARBAGE, grpc.StatusCode.INVALID_ARGUMENT, token).startswith(detail)
    _assert_alive(channel, deployment)


@pytest.mark.parametrize("method", ["Poll", "Submit"])
def test_garbage_without_a_token_is_unauthenticated(channel: grpc.Channel, deployment: Deployment,
                                                    method: str) -> None:
    detail = _refused(channel, method, GARBAGE, grpc.StatusCode.UNAUTHENTICATED)
    assert detail == "missing or malformed token: log in first"
    _assert_alive(channel, deployment)


def test_deeply_nested_envelope_is_invalid_argument_not_internal(channel: grpc.Channel,
                                                                deployment: Deployment) -> None:
    """Regression: a version field nested ~1000 deep used to raise RecursionError (answered INTERNAL)."""
    nested = b"\x93\xcd\x5e\xc7" + b"\x91" * 1000 + b"\x90" + b"\x01"
    detail = _refused(channel, "Hello", nested, grpc.StatusCode.INVALID_ARGUMENT)
    assert detail == f"Hello: unsupported version list (this build speaks {VERSION})"
    _assert_alive(channel, deployment)


def test_oversize_message_is_resource_exhausted(channel: grpc.Channel, deployment: Deployment) -> None:
    errors = len(deployment.service.errors)
    _refused(channel, "Hello", b"\x00" * (MAX_MESSAGE + 1), grpc.StatusCode.RESOURCE_EXHAUSTED)
    token = _login(channel, deployment, 3)
    _refused(channel, "Submit", encode_submit(Submit(1, 0, os.urandom(MAX_MESSAGE))),
             grpc.StatusCode.RESOURCE_EXHAUSTED, token)
    assert len(deployment.service.errors) == errors  # refused by gRPC before the service saw it
    _assert_alive(channel, deployment)


# -- authentication ---------------------------------------------------------------------------------

def test_unknown_client_hello_is_permission_denied(channel: grpc.Channel, deployment: Deployment) -> None:
    detail = _refused(channel, "Hello", encode_hello(Hello(UNREGISTERED)), grpc.StatusCode.PERMISSION_DENIED)
    assert detail == f"client {UNREGISTERED} is not in the registry"
    _assert_alive(channel, deployment)


def test_out_of_range_client_id_is_invalid_argument(channel: grpc.Channel, deployment: Deployment) -> None:
    detail = _refused(channel, "Hello", encode_hello(Hello(1 << 40)), grpc.StatusCode.INVALID_ARGUMENT)
    assert detail.startswith("Hello.client_id: expected an integer")
    _assert_alive(channel, deployment)


def test_login_with_a_bad_signature_is_unauthenticated(channel: grpc.Channel, deployment: Deployment) -> None:
    challenge = decode_challenge(_call(channel, "Hello", encode_hello(Hello(4))))
    forged = deployment.keys[1].sign(login_message(challenge.nonce, 4))  # client 1's key, client 4's login
    detail = _refused(channel, "Login", encode_login(Login(4, challenge.nonce, forged)),
                      grpc.StatusCode.UNAUTHENTICATED)
    assert detail == "signature of client 4 does not verify"
    _assert_alive(channel, deployment, 4)


def test_login_without_a_challenge_is_unauthenticated(channel: grpc.Channel, deployment: Deployment) -> None:
    nonce = b"\x07" * 32
    login = Login(2, nonce, deployment.keys[2].sign(login_message(nonce, 2)))
    detail = _refused(channel, "Login", encode_login(login), grpc.StatusCode.UNAUTHENTICATED)
    assert detail == "client 2: no such outstanding challenge (ask again)"
    _assert_alive(channel, deployment)


def test_replayed_login_is_unauthenticated(channel: grpc.Channel, deployment: Deployment) -> None:
    challenge = decode_challenge(_call(channel, "Hello", encode_hello(Hello(3))))
    signature = deployment.keys[3].sign(login_message(challenge.nonce, 3))
    login = encode_login(Login(3, challenge.nonce, signature))
    token = decode_welcome(_call(channel, "Login", login)).token
    _refused(channel, "Login", login, grpc.StatusCode.UNAUTHENTICATED)
    decode_work(_call(channel, "Poll", encode_poll(Poll(0, 0, 0)), token))  # the first login still holds


@pytest.mark.parametrize(("token", "detail"), [
    (None, "missing or malformed token: log in first"),
    (b"short", "missing or malformed token: log in first"),
    (b"\x00" * TOKEN_BYTES, "unknown token (the server may have restarted): log in again"),
])
def test_poll_without_a_valid_token_is_unauthenticated(channel: grpc.Channel, deployment: Deployment,
                                                       token: bytes | None, detail: str) -> None:
    got = _refused(channel, "Poll", encode_poll(Poll(0, 0, 0)), grpc.StatusCode.UNAUTHENTICATED, token)
    assert got == detail
    _assert_alive(channel, deployment)


def test_a_new_login_revokes_the_old_token_over_the_wire(channel: grpc.Channel,
                                                         deployment: Deployment) -> None:
    old = _login(channel, deployment, 2)
    new = _login(channel, deployment, 2)
    _refused(channel, "Poll", encode_poll(Poll(0, 0, 0)), grpc.StatusCode.UNAUTHENTICATED, old)
    assert decode_work(_call(channel, "Poll", encode_poll(Poll(0, 0, 0)), new)).kind is WorkKind.TASK


# -- the round's rules --------------------------------------------------------------------------------

def _advertisement(channel: grpc.Channel, dep: Deployment, u: int) -> tuple[bytes, bytes]:
    """Client ``u`` logs in, polls its task and computes its AdvertiseKeys: (token, wire bytes)."""
    token = _login(channel, dep, u)
    work = decode_work(_call(channel, "Poll", encode_poll(Poll(0, 0, 0)), token))
    reply = Client(u, np.arange(D + 1, dtype=np.uint32)).handle(wire.decode(work.message))
    return token, wire.encode(reply)


def test_wrong_round_is_failed_precondition(channel: grpc.Channel, deployment: Deployment) -> None:
    token, payload = _advertisement(channel, deployment, 1)
    detail = _refused(channel, "Submit", encode_submit(Submit(0, int(Stage.ADVERTISE_KEYS), payload)),
                      grpc.StatusCode.FAILED_PRECONDITION, token)
    assert detail == "message for round 0, but round 1 is open: late or early, refused"
    assert "late or early" in _refused(channel, "Submit", encode_submit(Submit(2, 0, payload)),
                                       grpc.StatusCode.FAILED_PRECONDITION, token)
    _assert_alive(channel, deployment)


def test_wrong_stage_is_failed_precondition(channel: grpc.Channel, deployment: Deployment) -> None:
    token, payload = _advertisement(channel, deployment, 1)
    detail = _refused(channel, "Submit", encode_submit(Submit(1, int(Stage.MASKED_INPUT), payload)),
                      grpc.StatusCode.FAILED_PRECONDITION, token)
    assert detail == "a MASKED_INPUT message during stage ADVERTISE_KEYS: refused"
    _assert_alive(channel, deployment)


def test_garbage_protocol_payload_is_invalid_argument(channel: grpc.Channel, deployment: Deployment) -> None:
    token = _login(channel, deployment, 1)
    detail = _refused(channel, "Submit", encode_submit(Submit(1, 0, b"\x93\x01\x02\x03")),
                      grpc.StatusCode.INVALID_ARGUMENT, token)
    assert detail == "secagg message: bad magic number"
    _assert_alive(channel, deployment)


def test_impersonation_is_failed_precondition(channel: grpc.Channel, deployment: Deployment) -> None:
    """Client 1 (authenticated by its token) submits client 2's advertisement."""
    _, theirs = _advertisement(channel, deployment, 2)
    token = _login(channel, deployment, 1)
    detail = _refused(channel, "Submit", encode_submit(Submit(1, 0, theirs)),
                      grpc.StatusCode.FAILED_PRECONDITION, token)
    assert detail == "server: a message from client 1 claims to come from client 2"
    _assert_alive(channel, deployment)


def test_advertisement_is_accepted_once(channel: grpc.Channel, deployment: Deployment) -> None:
    session = deployment.service.coordinator.server_round.sessions[0]
    assert session is not None
    token, payload = _advertisement(channel, deployment, 4)
    assert 4 not in session.keys
    assert _call(channel, "Submit", encode_submit(Submit(1, int(Stage.ADVERTISE_KEYS), payload)), token) \
        == encode_ack()
    assert 4 in session.keys
    detail = _refused(channel, "Submit", encode_submit(Submit(1, int(Stage.ADVERTISE_KEYS), payload)),
                      grpc.StatusCode.FAILED_PRECONDITION, token)
    assert detail == "server: duplicate AdvertiseKeys from client 4"
    assert session.keys[4] == wire.decode(payload)  # the first advertisement stands
    _assert_alive(channel, deployment)


def test_refusals_are_recorded(channel: grpc.Channel, deployment: Deployment) -> None:
    before = len(deployment.service.errors)
    _refused(channel, "Hello", GARBAGE, grpc.StatusCode.INVALID_ARGUMENT)
    [(method, message)] = list(deployment.service.errors)[before:]
    assert method == "Hello" and message.startswith("Hello: not a valid msgpack object")


# -- TLS ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tls_deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Deployment, Path]]:
    out = tmp_path_factory.mktemp("tls")
    files = make_tls_files(out)
    dep, server = _deploy((files.server_cert, files.server_key))
    yield dep, files.ca_cert
    server.stop(0)


def test_tls_channel_trusting_the_ca_works(tls_deployment: tuple[Deployment, Path]) -> None:
    dep, ca = tls_deployment
    credentials = grpc.ssl_channel_credentials(root_certificates=ca.read_bytes())
    with grpc.secure_channel(f"localhost:{dep.port}", credentials) as channel:
        _assert_alive(channel, dep, 3)
        _refused(channel, "Hello", GARBAGE, grpc.StatusCode.INVALID_ARGUMENT)
        _assert_alive(channel, dep, 3)


def test_tls_channel_trusting_another_ca_fails(tls_deployment: tuple[Deployment, Path],
                                               tmp_path: Path) -> None:
    dep, _ = tls_deployment
    other = make_tls_files(tmp_path).ca_cert
    credentials = grpc.ssl_channel_credentials(root_certificates=other.read_bytes())
    with grpc.secure_channel(f"localhost:{dep.port}", credentials) as channel:
        _refused(channel, "Hello", encode_hello(Hello(1)), grpc.StatusCode.UNAVAILABLE)


def test_plaintext_channel_to_the_tls_port_fails(tls_deployment: tuple[Deployment, Path]) -> None:
    dep, ca = tls_deployment
    with grpc.insecure_channel(f"localhost:{dep.port}") as channel:
        _refused(channel, "Hello", encode_hello(Hello(1)), grpc.StatusCode.UNAVAILABLE)
    # the TLS listener is unharmed
    credentials = grpc.ssl_channel_credentials(root_certificates=ca.read_bytes())
    with grpc.secure_channel(f"localhost:{dep.port}", credentials) as channel:
        _assert_alive(channel, dep)


def test_one_client_cannot_hold_more_than_two_long_polls(channel: grpc.Channel,
                                                         deployment: Deployment) -> None:
    """Each waiting poll holds a server thread: a third concurrent poll from the same client is
    RESOURCE_EXHAUSTED, so one client cannot starve the others; the two waiting ones still answer."""
    import threading

    from secagg.transport.envelope import MAX_ROUND, Poll, decode_work, encode_poll

    token = _login(channel, deployment, 4)
    far = encode_poll(Poll(MAX_ROUND, 0, 3000))  # nothing after this position: waits the full 3 s
    answers: list[bytes] = []
    waiting = [threading.Thread(target=lambda: answers.append(_call(channel, "Poll", far, token)))
               for _ in range(2)]
    for t in waiting:
        t.start()
    deadline = time.monotonic() + 2.0
    while deployment.service._polls[4] < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    detail = _refused(channel, "Poll", far, grpc.StatusCode.RESOURCE_EXHAUSTED, token)
    assert detail == "client 4 already has 2 polls waiting"
    for t in waiting:
        t.join(10)
    assert len(answers) == 2 and all(decode_work(a).kind.name == "WAIT" for a in answers)
    _assert_alive(channel, deployment, 4)
