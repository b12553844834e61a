"""The aggregation backend for another FL system: this library's placed pipeline, that system's transport.

An external system (Flower, FEDn, a hospital's own stack) moves bytes between its server and its
clients; this module says what the bytes are. One round::

    pipeline = Pipeline(aggregator, dim)                         # both sides build the same one
    server = pipeline.server(round_index, client_ids, weight_bound=W)
    outgoing = server.start()                                    # {client id: bytes} to deliver
    while outgoing:
        for u, data in outgoing.items():                         # on client u:
            reply = clients[u].handle(data)                      #   clients[u] = pipeline.client(...)
            server.receive(u, reply)                             # back on the server
        outgoing = server.advance()                              # close the stage (at a deadline, or
    result = server.finish(aggregator_state)                     # when server.stage_complete)

Each client applies the configuration's client steps to its own update (:mod:`secagg.placement`:
local DP's noise, clipping above a secure sum) before anything leaves it. In secure mode the bytes
after the first message are the secure-aggregation protocol's own wire format
(:mod:`secagg.protocol.wire`) and the server only ever holds the masked sum; in plain mode a client
sends one checked envelope with its released row. The first message of a round is a
:class:`~secagg.transport.envelope.Work` envelope (the session's Setup, or nothing in plain mode,
and the public weight bound). ``secagg serve``/``secagg client`` speak the same bytes over gRPC.

Errors: a peer's malformed or out-of-order message raises :class:`~secagg.errors.ProtocolError` or
:class:`~secagg.errors.WireError` and leaves the receiving side unchanged (drop it, or the peer);
misuse of this API by the caller raises :class:`~secagg.errors.ConfigError`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
import torch

from secagg.aggregation import Aggregate, Aggregator, AggState
from secagg.crypto.keys import SigningKey
from secagg.errors import AbortError, ConfigError, RemoteProtocolError
from secagg.placement import Placement, place, released_batch
from secagg.protocol.client import Client
from secagg.protocol.messages import Setup, Stage
from secagg.protocol.runner import REPLY_STAGE
from secagg.protocol.server import Server
from secagg.protocol.wire import decode, encode
from secagg.seeding import round_seed
from secagg.transport.envelope import (
    UPDATE_STAGE,
    PlainUpdate,
    Work,
    WorkKind,
    decode_update,
    decode_work,
    encode_update,
    encode_work,
)
from secagg.validation import check_int

__all__ = ["ClientRound", "Pipeline", "ServerRound"]


@dataclass(frozen=True)
class Pipeline:
    """``aggregator`` placed for a deployment on updates of ``dim`` coordinates.

    ``registry``: every client's Ed25519 public key, for malicious-mode secure sums (the server checks
    signatures; each client must get the registry from its operator, never from the server).
    ``seed``: the run's public seed (round seeds, distributed DP's public rotation), the same on
    every side.
    """

    aggregator: Aggregator
    dim: int
    registry: Mapping[int, bytes] | None = field(default=None, compare=False)
    seed: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.aggregator, Aggregator):
            raise ConfigError(f"aggregator: expected an Aggregator, got {type(self.aggregator).__name__}")
        check_int("dim", self.dim, minimum=1)
        check_int("seed", self.seed, minimum=0)
        _ = self.placement  # refuse an aggregator that cannot be placed now, not mid-round

    @cached_property
    def placement(self) -> Placement:
        return place(self.aggregator)

    def round_seed(self, round_index: int) -> int:
        """The public seed of round ``round_index`` (as the simulation derives it)."""
        return round_seed(self.seed, round_index)

    @property
    def mode(self) -> str:
        """``"secure"`` or ``"plain"`` (see :class:`~secagg.placement.Placement`)."""
        return self.placement.mode

    def server(self, round_index: int, client_ids: Sequence[int], *, weight_bound: float,
               model_version: bytes | None = None, state: AggState | None = None) -> ServerRound:
        """The server side of round ``round_index`` with these clients; ``weight_bound``: the public
        bound W > 0 on a client's example count (a weighted secure sum scales each update by w / W);
        ``model_version``: 32 bytes the clients can check (e.g. the SHA-256 of the weights sent);
        ``state``: the aggregator's state this round starts from (default: its initial state), whose
        public part the first message carries to the clients (adaptive clipping's clip norm); pass the
        same state to :meth:`ServerRound.finish`."""
        if not (isinstance(weight_bound, int | float) and weight_bound > 0):
            raise ConfigError(f"weight_bound: must be > 0 (the largest example count a client may have), "
                              f"got {weight_bound!r}")
        if self.placement.groups is not None:
            raise ConfigError(f"aggregator: {self.placement.groups.kind!r} runs one secure session per "
                              f"bucket; ServerRound drives one session per round so far (secagg serve runs "
                              f"it; the client side, Pipeline.client, takes part in either)")
        if state is None:
            state = self.aggregator.init_state(self.dim)
        return ServerRound(self, check_int("round_index", round_index, minimum=0),
                           tuple(check_int("client_ids", u, minimum=0) for u in client_ids),
                           float(weight_bound), model_version, self.placement.public(state))

    def client(self, client_id: int, update: np.ndarray | torch.Tensor, num_examples: int, *,
               train_loss: float = 0.0, identity: SigningKey | None = None,
               model_version: bytes | None = None) -> ClientRound:
        """The client side of one round for this client's flat ``update`` (``dim`` floats) computed on
        ``num_examples`` examples; ``identity``: its Ed25519 key (malicious mode, with ``registry``);
        ``model_version``: refuse a session announcing another one."""
        u = torch.as_tensor(np.asarray(update, dtype=np.float64)).reshape(-1)
        if u.numel() != self.dim:
            raise ConfigError(f"update: expected {self.dim} coordinates, got {u.numel()}")
        if not bool(torch.isfinite(u).all()):
            raise ConfigError("update: must be finite (no NaN/Inf)")
        return ClientRound(self, check_int("client_id", client_id, minimum=0), u,
                           check_int("num_examples", num_examples, minimum=0), float(train_loss), identity,
                           model_version)


class ServerRound:
    """The server's side of one round (see the module docstring); messages in, messages out."""

    def __init__(self, pipeline: Pipeline, round_index: int, client_ids: tuple[int, ...],
                 weight_bound: float, model_version: bytes | None, public: tuple[float, ...] = ()) -> None:
        if len(set(client_ids)) != len(client_ids) or not client_ids:
            raise ConfigError(f"client_ids: expected distinct ids, got {client_ids}")
        self.pipeline, self.round, self.client_ids = pipeline, round_index, client_ids
        self.weight_bound, self.public = weight_bound, public
        self._updates: dict[int, PlainUpdate] = {}
        self._server: Server | None = None
        self._started = self._closed = False
        session = pipeline.placement.session
        if session is not None:
            params = pipeline.placement.session_params(client_ids, pipeline.dim, round_index)
            if model_version is not None:
                params = dataclasses.replace(params, model_version=model_version)
            self._server = Server(params, pipeline.registry)

    @property
    def done(self) -> bool:
        """The round is over: :meth:`finish` may be called."""
        return self._closed if self._server is None else self._server.result is not None

    @property
    def stage_complete(self) -> bool:
        """Everyone who could answer the current stage has answered (advance now, no need to wait)."""
        if self._server is None:
            return self._started and not self._closed and set(self._updates) == set(self.client_ids)
        return self._server.stage_complete()

    def start(self) -> dict[int, bytes]:
        """The first message for every client: a Work envelope (with the Setup in secure mode)."""
        if self._started:
            raise ConfigError("start: the round has already started")
        self._started = True
        if self._server is None:
            return dict.fromkeys(self.client_ids, self._task(b""))
        return {u: self._task(encode(m)) for u, m in self._server.start()}

    def _task(self, setup: bytes) -> bytes:
        return encode_work(Work(WorkKind.TASK, self.round, 0, b"", setup, self.weight_bound, self.public))

    def receive(self, client_id: int, data: bytes) -> None:
        """One client's reply, as authenticated by the transport (``client_id`` is who sent it).
        :class:`ProtocolError`/:class:`WireError` for a bad one; nothing changes then."""
        if not self._started:
            raise ConfigError("receive: start the round first")
        if self._server is not None:
            self._server.receive(decode(data), sender=client_id)
            return
        if self._closed:
            raise RemoteProtocolError(f"client {client_id}: the round is closed")
        if client_id not in self.client_ids:
            raise RemoteProtocolError(f"client {client_id}: not invited to round {self.round}")
        if client_id in self._updates:
            raise RemoteProtocolError(f"client {client_id}: already sent its update")
        self._updates[client_id] = decode_update(data, self.pipeline.dim)

    def advance(self) -> dict[int, bytes]:
        """Close the current stage; the next stage's messages, or ``{}`` once the round is done.
        :class:`AbortError` if too few clients answered to go on."""
        if not self._started:
            raise ConfigError("advance: start the round first")
        if self._server is None:
            if not self._updates:
                raise AbortError("no client sent an update")
            self._closed = True
            return {}
        if self._server.stage is None:
            return {}
        encoded: dict[int, bytes] = {}  # id(message) -> bytes: a broadcast is encoded once, not per client
        out = {}
        for u, m in self._server.advance():
            if id(m) not in encoded:
                encoded[id(m)] = encode(m)
            out[u] = encoded[id(m)]
        return out

    @property
    def survivors(self) -> tuple[int, ...]:
        """The clients whose updates the aggregate covers."""
        return tuple(sorted(self._updates)) if self._server is None else self._server.survivors

    def finish(self, state: AggState) -> Aggregate:
        """The round's aggregate (the server's part of the pipeline, on the sum or the released rows),
        from the aggregator's ``state``; :class:`ConfigError` before the round is done."""
        if not self.done:
            raise ConfigError("finish: the round is not done (advance until it returns {})")
        placement = self.pipeline.placement
        if self._server is not None:
            assert self._server.result is not None
            return placement.aggregate_sum(self._server.result, self._server.params,
                                           len(self._server.survivors), self.pipeline.dim,
                                           self.pipeline.round_seed(self.round), state, torch.float32)
        # the round's public seed, as in a deployment (seeded rules such as bucketing agree with it)
        batch = released_batch(self._updates, self.round, self.pipeline.round_seed(self.round))
        return self.pipeline.aggregator.aggregate_released(batch, state)


class ClientRound:
    """One client's side of one round (see the module docstring): :meth:`handle` each server message."""

    def __init__(self, pipeline: Pipeline, client_id: int, update: torch.Tensor, num_examples: int,
                 train_loss: float, identity: SigningKey | None, model_version: bytes | None) -> None:
        self.pipeline, self.id, self.num_examples = pipeline, client_id, num_examples
        self.train_loss, self.identity, self.model_version = train_loss, identity, model_version
        self._update = update
        self._session: Client | None = None
        self._sent_plain = False
        #: what this client released (after its client steps), for the client's own audit
        self.released: torch.Tensor | None = None
        #: its secure-sum input (ring words), when it joined a session, for the client's own audit
        self.session_input: np.ndarray | None = None
        #: the stage its last reply answers (a protocol Stage value, or UPDATE_STAGE for a plain update)
        self.reply_stage: int | None = None

    def handle(self, data: bytes) -> bytes:
        """This client's reply to one server message; :class:`ProtocolError`/:class:`WireError` for a
        bad one (the session aborts: this client takes no further part in the round)."""
        if self._session is not None:
            message = decode(data)
            stage = REPLY_STAGE.get(type(message))
            if stage is None:
                raise RemoteProtocolError(
                    f"client {self.id}: unexpected {type(message).__name__} from the server")
            reply = encode(self._session.handle(message))
            self.reply_stage = int(stage)
            return reply
        if self._sent_plain:
            raise RemoteProtocolError(f"client {self.id}: the round's update was already sent")
        return self.start(decode_work(data))

    def start(self, work: Work) -> bytes:
        """This client's reply to the round's first message, already decoded (a transport that reads
        the envelope itself, such as ``secagg client``, calls this instead of :meth:`handle`)."""
        if self._session is not None or self._sent_plain:
            raise RemoteProtocolError(f"client {self.id}: the round has already started")
        if work.kind is not WorkKind.TASK:
            raise RemoteProtocolError(
                f"client {self.id}: expected the round's first message, got {work.kind.name}")
        placement = self.pipeline.placement
        if not work.message:  # plain mode: one release, in the clear
            if placement.session is not None:
                raise RemoteProtocolError(f"client {self.id}: the server asked for a plain update, but this "
                                          f"pipeline places a secure sum: refusing to send it in the clear")
            self.released = placement.release(self._update.clone(), work.public)
            self._sent_plain = True
            self.reply_stage = UPDATE_STAGE
            row = self.released.to(torch.float32).numpy().astype("<f4").tobytes()
            return encode_update(PlainUpdate(self.num_examples, self.train_loss, row))
        session = placement.session
        if session is None:
            raise RemoteProtocolError(
                f"client {self.id}: the server opened a secure session, but this pipeline "
                f"has no secure sum")
        setup = decode(work.message)
        if not isinstance(setup, Setup):
            raise RemoteProtocolError(f"client {self.id}: expected a Setup, got {type(setup).__name__}")
        params = setup.params
        placement.check_group(params.client_ids)
        if self.model_version is not None and params.model_version != self.model_version:
            raise RemoteProtocolError(
                f"client {self.id}: the session's model version is not the expected one")
        try:
            want = placement.session_params(params.client_ids, self.pipeline.dim, params.round).vector_length
        except (ConfigError, AbortError) as exc:  # the server's session does not fit this pipeline
            raise RemoteProtocolError(
                f"client {self.id}: the session does not fit this pipeline: {exc}") from exc
        if params.vector_length != want:
            raise RemoteProtocolError(
                f"client {self.id}: the session sums {params.vector_length} words, this "
                f"pipeline's updates need {want}")
        self.released = placement.release(self._update.clone(), work.public)
        # every secret draw (dither, distributed DP's noise share) from the OS CSPRNG, here
        value = session.session_input(self.released.to(torch.float64).numpy(), float(self.num_examples),
                                      work.weight_bound, params, self.pipeline.round_seed(params.round))
        if params.malicious:
            if self.identity is None or self.pipeline.registry is None:
                missing = "identity" if self.identity is None else "registry"
                raise ConfigError(f"{missing}: a malicious-mode session needs this client's identity and "
                                  f"the registry (from the operator, never from the server)")
            session_client = Client(self.id, value, identity=self.identity, registry=self.pipeline.registry)
        else:
            session_client = Client(self.id, value)
        reply = encode(session_client.handle(setup))
        self._session, self.session_input = session_client, value
        self.reply_stage = int(Stage.ADVERTISE_KEYS)
        return reply
