"""The gRPC service: four unary byte-in/byte-out methods in front of the coordinator.

``/secagg.v1.Aggregation/{Hello,Login,Poll,Submit}`` carry the envelopes of
:mod:`secagg.transport.envelope` as raw bytes (no protobuf schema to generate; the envelopes are
checked by their own decoders). Poll and Submit need the bearer token from Login in the
``secagg-token-bin`` metadata entry. Every failure is a gRPC status with a message, never a crash:
INVALID_ARGUMENT for malformed bytes, UNAUTHENTICATED for a bad login or token, PERMISSION_DENIED for
an unknown client, FAILED_PRECONDITION for a message the current round or stage does not accept;
gRPC itself answers RESOURCE_EXHAUSTED for a message above the size limit set at startup.

The coordinator and authenticator are plain objects guarded by one condition variable; Poll blocks
on it (long poll) so a client hears of the next stage as soon as the driver opens it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict, deque
from collections.abc import Callable
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from secagg.backend import ServerRound
from secagg.errors import ConfigError, RemoteProtocolError, WireError
from secagg.transport.auth import Authenticator, AuthError
from secagg.transport.coordinator import Coordinator, Rejected, RoundOutcome
from secagg.transport.envelope import (
    Challenge,
    Welcome,
    Work,
    WorkKind,
    decode_hello,
    decode_login,
    decode_poll,
    decode_submit,
    encode_ack,
    encode_challenge,
    encode_welcome,
    encode_work,
)

SERVICE = "secagg.v1.Aggregation"
TOKEN_METADATA = "secagg-token-bin"
MAX_POLL_SECONDS = 10.0
ENVELOPE_SLACK = 1 << 20  # headers, ids, signatures and msgpack framing around the largest vector

log = logging.getLogger("secagg.transport")

_CODES = {"invalid": grpc.StatusCode.INVALID_ARGUMENT, "precondition": grpc.StatusCode.FAILED_PRECONDITION,
          "denied": grpc.StatusCode.PERMISSION_DENIED, "busy": grpc.StatusCode.RESOURCE_EXHAUSTED}
MAX_POLLS_PER_CLIENT = 2  # one live long poll, plus one a dropped connection may leave for <= 10 s


def message_limit(dim: int) -> int:
    """The largest message either side accepts for a model of ``dim`` coordinates, in bytes.

    The biggest payloads are the global weights (safetensors, <= 8 bytes per coordinate for float64
    models) and a masked input (4 bytes per coordinate); everything else is small. A 10^6-parameter
    float32 model needs ~4 MB, gRPC's default limit, hence an explicit bound.
    """
    return 8 * (dim + 1) + ENVELOPE_SLACK


@dataclass
class Traffic:
    """Bytes each client sent and received (payloads, without gRPC/TLS framing), per round."""

    sent: dict[int, int] = field(default_factory=lambda: defaultdict(int))
    received: dict[int, int] = field(default_factory=lambda: defaultdict(int))

    def reset(self) -> tuple[dict[int, int], dict[int, int]]:
        out = (dict(self.sent), dict(self.received))
        self.sent.clear()
        self.received.clear()
        return out


class AggregationService:
    """Answers client calls from ``coordinator`` and ``auth`` under ``lock`` (shared with the driver)."""

    def __init__(self, coordinator: Coordinator, auth: Authenticator, welcome_config: str,
                 lock: threading.Condition | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.coordinator = coordinator
        self.auth = auth
        self.config = welcome_config
        self.lock = lock if lock is not None else threading.Condition()
        self.clock = clock
        self.traffic = Traffic()
        # (method, message) of the latest refused calls, for tests and logs; bounded against floods
        self.errors: deque[tuple[str, str]] = deque(maxlen=1000)
        self._polls: dict[int, int] = defaultdict(int)  # client -> long polls in flight

    # -- plumbing ---------------------------------------------------------------------------------

    def handler(self) -> grpc.GenericRpcHandler:
        methods = {"Hello": self.hello, "Login": self.login, "Poll": self.poll, "Submit": self.submit}
        return grpc.method_handlers_generic_handler(SERVICE, {
            name: grpc.unary_unary_rpc_method_handler(self._guard(name, fn)) for name, fn in methods.items()})

    def _guard(self, name: str, fn: Callable[[bytes, grpc.ServicerContext], bytes]
               ) -> Callable[[bytes, grpc.ServicerContext], bytes]:
        def call(request: bytes, context: grpc.ServicerContext) -> bytes:
            try:
                return fn(request, context)
            except (WireError, Rejected) as exc:
                code = _CODES[exc.code] if isinstance(exc, Rejected) else grpc.StatusCode.INVALID_ARGUMENT
                return self._refuse(context, name, code, str(exc))
            except AuthError as exc:
                return self._refuse(context, name, grpc.StatusCode.UNAUTHENTICATED, str(exc))
            except RemoteProtocolError as exc:  # the peer broke the protocol: its error, not ours
                return self._refuse(context, name, grpc.StatusCode.FAILED_PRECONDITION, str(exc))
            except Exception as exc:  # ours (LocalProtocolError, ConfigError, a bug): log, answer INTERNAL
                # and never take the server down
                log.exception("%s: unexpected error", name)
                return self._refuse(context, name, grpc.StatusCode.INTERNAL, f"internal error: {exc}")
        return call

    def _refuse(self, context: grpc.ServicerContext, method: str, code: grpc.StatusCode,
                message: str) -> bytes:
        self.errors.append((method, message))
        log.info("%s refused (%s): %s", method, code.name, message)
        context.set_code(code)
        context.set_details(message[:1000])
        return b""

    def _client(self, context: grpc.ServicerContext) -> int:
        token = dict(context.invocation_metadata()).get(TOKEN_METADATA)
        with self.lock:
            return self.auth.client_of(token if isinstance(token, bytes) else None)

    def wait_for_logins(self, count: int, timeout: float) -> int:
        """Block until ``count`` clients hold a token or ``timeout`` seconds passed; how many do."""
        give_up = self.clock() + timeout
        with self.lock:
            while self.auth.logged_in() < count and self.clock() < give_up:
                self.lock.wait(min(1.0, max(0.0, give_up - self.clock())))
            return self.auth.logged_in()

    # -- the round driver -------------------------------------------------------------------------

    def exchange_round(self, server: ServerRound, model: bytes) -> RoundOutcome:
        """Open ``server``'s round on the coordinator and close its stages as they become due (everyone
        answered, grace or deadline passed) until it ends, the global ``model``'s bytes going with the
        first message; the clients' calls arrive meanwhile on gRPC threads."""
        with self.lock:
            opened = self.clock()
            self.coordinator.begin_round(server, model, opened)
            round_index = server.round
            self.lock.notify_all()
            while True:
                now = self.clock()
                if not self.coordinator.due(now):
                    self.lock.wait(max(0.0, self.coordinator.wake_at() - now))
                    continue
                stage = self.coordinator.stage_name()
                outcome = self.coordinator.advance(now)
                log.info("round %d: stage %s closed after %.2f s", round_index, stage, self.clock() - opened)
                opened = self.clock()
                self.lock.notify_all()
                if outcome is not None:
                    return outcome

    # -- methods ----------------------------------------------------------------------------------

    def hello(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        hello = decode_hello(request)
        with self.lock:
            if hello.client_id not in self.auth.registry:
                raise Rejected("denied", f"client {hello.client_id} is not in the registry")
            return encode_challenge(Challenge(self.auth.challenge(hello.client_id, self.clock())))

    def login(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        login = decode_login(request)
        with self.lock:
            token = self.auth.login(login.client_id, login.nonce, login.signature, self.clock())
            self.lock.notify_all()  # the driver may be waiting for clients to log in
        log.info("client %d logged in", login.client_id)
        return encode_welcome(Welcome(token, self.config, self.coordinator.mode))

    def poll(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        client = self._client(context)
        poll = decode_poll(request)
        give_up = self.clock() + min(poll.wait_ms / 1000.0, MAX_POLL_SECONDS)
        with self.lock:
            if self._polls[client] >= MAX_POLLS_PER_CLIENT:  # one client must not hold every worker
                raise Rejected("busy", f"client {client} already has {MAX_POLLS_PER_CLIENT} polls waiting")
            self._polls[client] += 1
            self.coordinator.seen(client, self.clock())
            try:
                self.traffic.sent[client] += len(request)
                while True:
                    item = self.coordinator.poll(client, poll.after_round, poll.after_step)
                    remaining = give_up - self.clock()
                    if item is not None or remaining <= 0 or not context.is_active():
                        break
                    self.lock.wait(remaining)
                data = item.data if item is not None else _WAIT
                self.traffic.received[client] += len(data)
                return data
            finally:
                self._polls[client] -= 1

    def submit(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        client = self._client(context)
        submit = decode_submit(request)
        with self.lock:
            self.traffic.sent[client] += len(request)
            self.coordinator.seen(client, self.clock())
            self.coordinator.submit(client, submit.round, submit.stage, submit.payload, self.clock())
            self.lock.notify_all()  # the driver may close the stage now
        return encode_ack()


_WAIT = encode_work(Work(WorkKind.WAIT))


def start_grpc_server(service: AggregationService, address: str, *, max_message_bytes: int,
                      tls: tuple[Path, Path] | None = None, max_workers: int = 64) -> tuple[grpc.Server, int]:
    """Serve ``service`` on ``address`` ("host:port"; port 0 picks a free one); return (server, port).

    ``tls``: (certificate chain PEM, private key PEM) for a TLS listener; ``None`` listens in the
    clear (loopback tests and trusted networks only). ``max_workers`` bounds concurrent calls: each
    client holds at most one long poll, so it should exceed the number of clients.
    """
    options = [("grpc.max_receive_message_length", max_message_bytes),
               ("grpc.max_send_message_length", max_message_bytes),
               ("grpc.so_reuseport", 0)]
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=max_workers), options=options,
                         maximum_concurrent_rpcs=max_workers * 4)
    server.add_generic_rpc_handlers((service.handler(),))
    if tls is not None:
        cert, key = tls
        creds = grpc.ssl_server_credentials([(key.read_bytes(), cert.read_bytes())])
        port = server.add_secure_port(address, creds)
    else:
        port = server.add_insecure_port(address)
    if port == 0:
        raise ConfigError(f"address: could not listen on {address!r} (in use or not a local address)")
    server.start()
    return server, port
