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

Stateless client workers (Flower's, a serverless function per message): after a secure round's first
message, :meth:`ClientRound.suspend` turns the client's side into bytes for the worker's record
store, and :meth:`Pipeline.resume_client` rebuilds it before the next message (the identity key
again from the operator, never from the store)::

    record = clients[u].suspend()                                # after start/handle
    clients[u] = pipeline.resume_client(record, identity=key)    # in the next worker; then handle()
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
import torch

from secagg import codec
from secagg.aggregation import Aggregate, Aggregator, AggState, UpdateBatch
from secagg.crypto.keys import SigningKey
from secagg.errors import AbortError, ConfigError, RemoteProtocolError
from secagg.layout import ParamLayout
from secagg.placement import Placement, place, released_batch
from secagg.protocol.client import Client, open_record, seal_record
from secagg.protocol.messages import MODEL_VERSION_MAX_BYTES, SessionParams, Setup, Stage
from secagg.protocol.runner import REPLY_STAGE
from secagg.protocol.server import Server
from secagg.protocol.wire import decode, encode
from secagg.seeding import round_seed
from secagg.transport.envelope import (
    MAX_PLANNED,
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

__all__ = ["ClientRound", "Pipeline", "ServerRound", "SessionSum"]


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
        same state to :meth:`ServerRound.finish`.

        In secure mode the round runs one session for all ``client_ids``, or one per bucket for secure
        bucketing (the buckets drawn from the round's public seed, as the simulation draws them).
        :class:`ConfigError` for a round this configuration refuses (too few clients for a session, a
        bucket too small for the threat model)."""
        round_index = check_int("round_index", round_index, minimum=0)
        ids = tuple(check_int("client_ids", u, minimum=0) for u in client_ids)
        if state is None:
            state = self.aggregator.init_state(self.dim)
        sessions: list[SessionParams] | None = None
        placement = self.placement
        if placement.combiners is not None:  # the top server of a two-level round
            from secagg.two_level import TopRound

            _check_distinct(ids)
            return TopRound(self, round_index, ids, weight_bound, placement.public(state), model_version)
        if placement.session is not None:
            _check_distinct(ids)  # before seating them in sessions
            groups = placement.session_groups(ids, self.round_seed(round_index))
            sessions = [placement.session_params(g, self.dim, round_index) for g in groups]
            if model_version is not None:
                sessions = [dataclasses.replace(p, model_version=model_version) for p in sessions]
        return ServerRound(self, round_index, ids, weight_bound, placement.public(state), sessions)

    def combiner_server(self, round_index: int, members: Sequence[int], *, planned: int, weight_bound: float,
                        public: tuple[float, ...] = (), model_version: bytes | None = None) -> ServerRound:
        """A combiner's side of a two-level round towards its own clients (:mod:`secagg.two_level`):
        one session over ``members`` (the round's clients under it, as the top server sent them),
        whose clients encode on the grid of the whole round's ``planned`` clients; ``weight_bound``
        and ``public`` are the top server's, passed on. :class:`ConfigError` for a plain or one-level
        pipeline."""
        placement = self.placement
        if placement.combiners is None:
            raise ConfigError(f"combiner_server: {self.aggregator.kind!r} is not a two-level secure sum")
        ids = tuple(check_int("members", u, minimum=0) for u in members)
        _check_distinct(ids)
        params = placement.session_params(tuple(sorted(ids)), self.dim, check_int("round_index", round_index,
                                                                                   minimum=0))
        if model_version is not None:
            params = dataclasses.replace(params, model_version=model_version)
        return ServerRound(self, round_index, ids, weight_bound, public, [params],
                           planned=check_int("planned", planned, minimum=len(ids)))

    def combiner(self, combiner_id: int, *, identity: SigningKey | None = None,
                 model_version: bytes | None = None) -> ClientRound:
        """Combiner ``combiner_id``'s side of a two-level round towards the top server
        (:class:`secagg.two_level.CombinerRound`); ``identity``: its Ed25519 key (malicious mode, with
        this pipeline's ``registry`` of the combiners' keys); ``model_version``: refuse a top session
        announcing another one."""
        from secagg.two_level import CombinerRound

        if self.placement.combiners is None:
            raise ConfigError(f"combiner: {self.aggregator.kind!r} is not a two-level secure sum")
        return CombinerRound(self, check_int("combiner_id", combiner_id, minimum=0), identity, model_version)

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

    def resume_client(self, data: bytes, *, identity: SigningKey | None = None) -> ClientRound:
        """The client round a :meth:`ClientRound.suspend` record was taken of, ready to
        :meth:`~ClientRound.handle` the round's next message; ``identity``: the client's Ed25519 key,
        as for :meth:`client` (the registry is this pipeline's). After a resume ``released`` is
        ``None``: the released update is not kept, only the session input it was encoded into
        (``session_input``), and that only until the masked input is sent (then it is empty).
        :class:`ConfigError` naming the field for a record that is not intact,
        or for a pipeline without a secure sum."""
        if self.placement.session is None:
            raise ConfigError("resume_client: a plain pipeline has no secure session to resume")
        raw = open_record(data, what="client round record", magic=_ROUND_MAGIC, version=_ROUND_VERSION,
                          label=_ROUND_LABEL, limits=_ROUND_LIMITS, arity=len(_ROUND_FIELDS))
        f = dict(zip(_ROUND_FIELDS, raw, strict=True))
        for name in ("client_id", "num_examples", "reply_stage"):
            if type(f[name]) is not int or f[name] < 0:
                raise ConfigError(f"client round record.{name}: expected an integer >= 0")
        if f["reply_stage"] not in {int(s) for s in Stage}:
            raise ConfigError(f"client round record.reply_stage: expected a protocol stage, "
                              f"got {f['reply_stage']}")
        if type(f["train_loss"]) is not float:
            raise ConfigError("client round record.train_loss: expected a float")
        version = f["model_version"]
        if version is not None and (type(version) is not bytes or len(version) > MODEL_VERSION_MAX_BYTES):
            raise ConfigError(f"client round record.model_version: expected none or at most "
                              f"{MODEL_VERSION_MAX_BYTES} bytes")
        if type(f["session"]) is not bytes:
            raise ConfigError("client round record.session: expected bytes")
        session = Client.restore(f["session"], identity=identity,
                                 registry=self.registry if identity is not None else None)
        if session.id != f["client_id"]:
            raise ConfigError(f"client round record.session: a snapshot of client {session.id}, not of "
                              f"client {f['client_id']}")
        if session.params is None:
            raise ConfigError("client round record.session: the session never started")
        # the update was released and encoded already: what is left of it is the session's input
        out = ClientRound(self, f["client_id"], torch.zeros(0, dtype=torch.float64), f["num_examples"],
                          f["train_loss"], identity, version)
        out._session, out.session_input = session, session.value
        out.reply_stage = f["reply_stage"]
        return out


def _check_distinct(client_ids: tuple[int, ...]) -> None:
    if len(set(client_ids)) != len(client_ids) or not client_ids:
        raise ConfigError(f"client_ids: expected distinct ids, got {client_ids}")


@dataclass(frozen=True)
class SessionSum:
    """One finished secure-aggregation session of a round: its ``params``, the unmasked ring sum
    ``result``, and who it covers (``survivors``) or lost (``dropped``)."""

    params: SessionParams
    result: np.ndarray
    survivors: tuple[int, ...]
    dropped: tuple[int, ...]


class ServerRound:
    """The server's side of one round (see the module docstring); messages in, messages out.

    ``sessions``: secure mode's session parameters, one per group of clients (their client sets must
    partition ``client_ids``), run side by side in lockstep; ``None`` in plain mode.
    :meth:`Pipeline.server` builds them from the placement; a transport or a test that seats the
    sessions itself may pass its own. Any session's abort aborts the round (as in simulation).
    """

    def __init__(self, pipeline: Pipeline, round_index: int, client_ids: tuple[int, ...],
                 weight_bound: float, public: tuple[float, ...] = (),
                 sessions: Sequence[SessionParams] | None = None, *, planned: int = 0,
                 members: Mapping[int, tuple[int, ...]] | None = None) -> None:
        _check_distinct(client_ids)
        if not (isinstance(weight_bound, int | float) and weight_bound > 0):
            raise ConfigError(f"weight_bound: must be > 0 (the largest example count a client may have), "
                              f"got {weight_bound!r}")
        if (sessions is None) != (pipeline.placement.session is None):
            raise ConfigError(f"sessions: a {pipeline.mode} pipeline "
                              f"{'needs' if sessions is None else 'takes no'} session parameters")
        self.pipeline, self.round, self.client_ids = pipeline, round_index, client_ids
        self.weight_bound, self.public = float(weight_bound), tuple(public)
        #: a two-level round: the client count its grid is planned for, and what each recipient's
        #: first message lists as its members (see :class:`~secagg.transport.envelope.Work`)
        self.planned, self.members = planned, dict(members or {})
        self._updates: dict[int, PlainUpdate] = {}
        self._servers: list[Server] = []
        self._server_of: dict[int, Server] = {}
        self._started = self._closed = False
        self.aborted: str | None = None
        self._released: tuple[ParamLayout | None, UpdateBatch] | None = None
        for params in sessions or ():
            # an honest server with the operator's registry also checks the clients' signatures
            server = Server(params, pipeline.registry if params.malicious else None)
            self._servers.append(server)
            for u in params.client_ids:
                self._server_of[u] = server
        if sessions is not None and (sorted(self._server_of) != sorted(client_ids)
                                     or sum(len(p.client_ids) for p in sessions) != len(client_ids)):
            raise ConfigError("sessions: secure mode needs session parameters whose clients are exactly "
                              "the invited clients, each in one session")

    @property
    def sessions(self) -> tuple[Server, ...]:
        """The secure-aggregation servers of the round (one per group; empty in plain mode)."""
        return tuple(self._servers)

    @property
    def done(self) -> bool:
        """The round is over and produced a result: :meth:`finish` may be called."""
        if self.aborted is not None:
            return False
        if not self._servers:
            return self._closed
        return all(server.result is not None for server in self._servers)

    @property
    def stage(self) -> int | None:
        """The stage being collected now: a protocol :class:`Stage` value (secure mode; the sessions move
        in lockstep), ``UPDATE_STAGE`` (plain mode), ``None`` before start and once over."""
        if not self._started or self._closed or self.aborted is not None:
            return None
        if not self._servers:
            return UPDATE_STAGE
        stage = self._servers[0].stage
        return None if stage is None else int(stage)

    @property
    def stage_complete(self) -> bool:
        """Everyone who could answer the current stage has answered (advance now, no need to wait)."""
        if self.stage is None:
            return False
        if not self._servers:
            return set(self._updates) == set(self.client_ids)
        return all(server.stage_complete() for server in self._servers)

    @property
    def pending(self) -> frozenset[int]:
        """Who may still answer the current stage (empty before start and once over)."""
        if self.stage is None:
            return frozenset()
        if not self._servers:
            return frozenset(self.client_ids) - frozenset(self._updates)
        return frozenset().union(*(server.expected_senders() for server in self._servers))

    @property
    def quorum_reached(self) -> bool:
        """Enough clients answered the current stage to go on: every session's threshold ``t`` (secure
        mode), a majority of the invited (plain mode). A transport may stop waiting for stragglers."""
        if self.stage is None:
            return False
        if not self._servers:
            return len(self._updates) >= len(self.client_ids) // 2 + 1
        return all(server.answered() >= server.params.threshold for server in self._servers)

    def start(self, model: bytes = b"") -> dict[int, bytes]:
        """The first message for every client: a Work envelope (with its session's Setup in secure
        mode). ``model``: the global model's bytes, for a transport that sends it in the same message
        (``secagg serve``); empty when the external system sends the model itself. Equal messages
        are the same ``bytes`` object (a broadcast is encoded once)."""
        if self._started:
            raise ConfigError("start: the round has already started")
        self._started = True
        if not self._servers:
            return dict.fromkeys(self.client_ids, self._task(b"", model))
        out = {}
        for server in self._servers:
            # the full graph's Setup is one object (a broadcast); SecAgg+ sends each client its proof
            encoded: dict[object, bytes] = {}
            for u, setup in server.start():
                key = (id(setup), self.members.get(u, ()))
                if key not in encoded:
                    encoded[key] = self._task(encode(setup), model, key[1])
                out[u] = encoded[key]
        return out

    def _task(self, setup: bytes, model: bytes, members: tuple[int, ...] = ()) -> bytes:
        return encode_work(Work(WorkKind.TASK, self.round, 0, model, setup, self.weight_bound, self.public,
                                self.planned, members))

    def receive(self, client_id: int, data: bytes) -> None:
        """One client's reply, as authenticated by the transport (``client_id`` is who sent it).
        :class:`RemoteProtocolError` (:class:`WireError` for malformed bytes) for a bad one; nothing
        changes then."""
        if not self._started:
            raise ConfigError("receive: start the round first")
        if client_id not in self.client_ids:
            raise RemoteProtocolError(f"client {client_id}: not invited to round {self.round}")
        if self.stage is None:
            raise RemoteProtocolError(f"client {client_id}: round {self.round} is closed")
        if self._servers:
            self._server_of[client_id].receive(decode(data), sender=client_id)
            return
        if client_id in self._updates:
            raise RemoteProtocolError(f"duplicate update from client {client_id}")
        self._updates[client_id] = decode_update(data, self.pipeline.dim)

    def advance(self) -> dict[int, bytes]:
        """Close the current stage; the next stage's messages (a broadcast is one ``bytes`` object), or
        ``{}`` once the round is done. :class:`AbortError` if too few clients answered to go on (in
        any session: the message names its clients); the round is over then."""
        if not self._started:
            raise ConfigError("advance: start the round first")
        if self.aborted is not None:
            raise ConfigError(f"advance: the round aborted ({self.aborted})")
        if not self._servers:
            if self._closed:
                return {}
            self._closed = True
            if not self._updates:
                self.aborted = "no client sent an update"
                raise AbortError(self.aborted)
            return {}
        if self.done:
            return {}
        outgoing = []
        for server in self._servers:  # the sessions move in lockstep: the same stages, closed together
            try:
                outgoing.extend(server.advance())
            except AbortError as exc:
                where = (f" (the session of clients {list(server.params.client_ids)})"
                         if len(self._servers) > 1 else "")
                self.aborted = f"{exc}{where}"
                raise AbortError(self.aborted) from None
        encoded: dict[int, bytes] = {}  # id(message) -> bytes: a broadcast is encoded once, not per client
        out = {}
        for u, m in outgoing:
            if id(m) not in encoded:
                encoded[id(m)] = encode(m)
            out[u] = encoded[id(m)]
        return out

    @property
    def summed(self) -> int:
        """How many clients' updates the aggregate covers."""
        return len(self.survivors)

    @property
    def survivors(self) -> tuple[int, ...]:
        """The clients whose updates the aggregate covers."""
        if not self._servers:
            return tuple(sorted(self._updates))
        return tuple(sorted(u for server in self._servers for u in server.survivors))

    @property
    def dropped(self) -> tuple[int, ...]:
        """Secure mode: the clients a session lost (their inputs are not in its sum)."""
        return tuple(sorted(u for server in self._servers for u in server.dropped))

    @property
    def refused(self) -> dict[int, tuple[int, ...]]:
        """Secure mode: client -> the neighbours whose shares it refused as undecryptable or malformed
        (reported in its masked input): who sent bad shares, or who claims so."""
        return {u: peers for server in self._servers for u, peers in server.refused.items()}

    @property
    def excluded(self) -> tuple[int, ...]:
        """Secure mode: the clients the share check took out (fewer than t holders could open their
        shares): in no sum, named in the log."""
        return tuple(sorted(u for server in self._servers for u in server.excluded))

    @property
    def wrong_shares(self) -> dict[int, list[int]]:
        """Secure mode, once done: responder -> the clients whose secret it sent a wrong share of
        (identified and left out; the sum is exact): a client to look at."""
        return {u: owners for server in self._servers for u, owners in server.wrong_shares.items()}

    @property
    def sums(self) -> list[SessionSum]:
        """Secure mode, once done: every session's unmasked sum, in session order."""
        if not self.done:
            return []
        return [SessionSum(server.params, server.result, server.survivors, server.dropped)  # type: ignore[arg-type]
                for server in self._servers]

    @property
    def updates(self) -> dict[int, PlainUpdate]:
        """Plain mode: the released updates received (client id -> its checked envelope)."""
        return dict(self._updates)

    def released(self, layout: ParamLayout | None = None) -> UpdateBatch:
        """Plain mode, once done: the clients' released rows as the batch the aggregator's server part
        runs on (in ``layout``'s dtype; float32 without), built once: :meth:`finish` runs on this one."""
        if not self.done or self._servers:
            raise ConfigError("released: only a finished plain round has released rows")
        if self._released is None or self._released[0] is not layout:
            batch = released_batch(self._updates, self.round, self.pipeline.round_seed(self.round), layout)
            self._released = (layout, batch)
        return self._released[1]

    def finish(self, state: AggState, layout: ParamLayout | None = None, *,
               reference: torch.Tensor | None = None, global_model: torch.Tensor | None = None) -> Aggregate:
        """The round's aggregate (the server's part of the pipeline, on the sums or the released rows),
        from the aggregator's ``state``; ``layout``: the model's (its dtype, and the layout seeded rules
        see; default float32 rows); ``reference``: the server's own root-data update, for a rule that
        needs one (:meth:`~secagg.aggregation.Aggregator.root_examples`; :class:`ConfigError` when such
        a rule gets none). :class:`ConfigError` before the round is done; :class:`AbortError` when the
        session refuses its sum (distributed DP with fewer survivors than its noise needs)."""
        if not self.done:
            raise ConfigError("finish: the round is not done (advance until it returns {})")
        if reference is None and self.pipeline.aggregator.root_examples() > 0:
            raise ConfigError(f"reference: {self.pipeline.aggregator.kind!r} weighs the clients against "
                              f"the server's own update on its root dataset; pass it to finish()")
        if global_model is None and self.pipeline.aggregator.needs_global_model():
            raise ConfigError(f"global_model: {self.pipeline.aggregator.kind!r} compares the clients' "
                              f"models (global weights + update); pass the flat global weights to finish()")
        placement, pipeline = self.pipeline.placement, self.pipeline
        seed = pipeline.round_seed(self.round)
        if self._servers:
            sums = [(one.result, one.params, len(one.survivors)) for one in self.sums]
            dtype = torch.float32 if layout is None else layout.dtype
            return placement.aggregate_groups(sums, pipeline.dim, self.round, seed, state, dtype, layout)
        # the round's public seed, as in a deployment (seeded rules such as bucketing agree with it)
        batch = self.released(layout)
        if reference is not None:
            batch = batch.replace(reference=reference.to(batch.updates.dtype))
        if global_model is not None:
            batch = batch.replace(global_model=global_model.to(batch.updates.dtype))
        return pipeline.aggregator.aggregate_released(batch, state)


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

    def suspend(self) -> bytes:
        """This round's client side as bytes, for a worker that keeps no process between messages:
        rebuild it with :meth:`Pipeline.resume_client` before the next one. It holds the session's
        secrets (store it as such), not the identity key. :class:`ConfigError` before the round's
        first message opened a session, or in plain mode (one message, nothing to suspend)."""
        if self._session is None:
            raise ConfigError(f"suspend: client {self.id} has no secure session to suspend (the round "
                              f"{'sent its plain update' if self._sent_plain else 'has not started'})")
        assert self.reply_stage is not None  # set by the reply that opened the session
        fields = {"client_id": self.id, "num_examples": self.num_examples, "train_loss": self.train_loss,
                  "reply_stage": self.reply_stage, "model_version": self.model_version,
                  "session": self._session.snapshot()}
        return seal_record(list(fields.values()), what="client round record", magic=_ROUND_MAGIC,
                           version=_ROUND_VERSION, label=_ROUND_LABEL)

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
        two_level = placement.combiners is not None
        if (work.planned > 0 or work.members) and not two_level:
            raise RemoteProtocolError(f"client {self.id}: the server sent a two-level round's plan or "
                                      "members, but this pipeline's secure sum has one level")
        if work.members:
            raise RemoteProtocolError(f"client {self.id}: the server sent a combiner's member list to "
                                      "a client")
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
        # a SecAgg+ client's view carries the member count, not the list (O(log n) Setup): what this
        # pipeline would choose for a session of that many clients is the same for any ids
        members = params.client_ids or tuple(range(params.members))
        placement.check_group(members)
        if two_level and not len(members) <= work.planned <= MAX_PLANNED:
            raise RemoteProtocolError(f"client {self.id}: a two-level round planned for {work.planned} "
                                      f"clients, but this client's session alone has {len(members)}")
        if two_level:
            try:
                session.check_plan(work.planned, placement.sum_dim(self.pipeline.dim))  # type: ignore[attr-defined]
            except ConfigError as exc:
                raise RemoteProtocolError(f"client {self.id}: the round's plan of {work.planned} clients "
                                          f"does not fit this pipeline: {exc}") from None
        if self.model_version is not None and params.model_version != self.model_version:
            raise RemoteProtocolError(
                f"client {self.id}: the session's model version is not the expected one")
        try:
            want = placement.session_params(members, self.pipeline.dim, params.round)
        except (ConfigError, AbortError) as exc:  # the server's session does not fit this pipeline
            raise RemoteProtocolError(
                f"client {self.id}: the session does not fit this pipeline: {exc}") from exc
        if params.vector_length != want.vector_length:
            raise RemoteProtocolError(
                f"client {self.id}: the session sums {params.vector_length} words, this "
                f"pipeline's updates need {want.vector_length}")
        if params.threshold < want.threshold or (want.malicious and not params.malicious):
            # a server may ask for more (a higher threshold), never for less than this pipeline's
            raise RemoteProtocolError(
                f"client {self.id}: the session's threshold {params.threshold}"
                f"{'' if params.malicious or not want.malicious else ' without malicious-server mode'} "
                f"is below this pipeline's ({want.threshold}{', malicious mode' if want.malicious else ''})")
        self.released = placement.release(self._update.clone(), work.public)
        # every secret draw (dither, distributed DP's noise share) from the OS CSPRNG, here
        extra = {"planned": work.planned} if two_level else {}  # only the SecureSum takes one
        value = session.session_input(self.released.to(torch.float64).numpy(), float(self.num_examples),
                                      work.weight_bound, params, self.pipeline.round_seed(params.round),
                                      **extra)
        return self._join(setup, value)

    def _join(self, setup: Setup, value: np.ndarray) -> bytes:
        """Open this party's session of ``setup`` with ``value`` (its ring words) as its input; the reply
        to the round's first message. Malicious mode needs the party's identity and the operator's
        registry (:class:`ConfigError` naming the missing one)."""
        if setup.params.malicious:
            if self.identity is None or self.pipeline.registry is None:
                missing = "identity" if self.identity is None else "registry"
                raise ConfigError(f"{missing}: a malicious-mode session needs {self.id}'s identity and the "
                                  f"registry (from the operator, never from the server)")
            session_client = Client(self.id, value, identity=self.identity, registry=self.pipeline.registry)
        else:
            session_client = Client(self.id, value)
        reply = encode(session_client.handle(setup))
        self._session, self.session_input = session_client, value
        self.reply_stage = int(Stage.ADVERTISE_KEYS)
        return reply


# ClientRound.suspend's record: the round's own fields, then the protocol client's snapshot (which
# has its own caps and checks)
_ROUND_MAGIC = 0x5EC9
_ROUND_VERSION = 1
_ROUND_LABEL = b"secagg/v1/client-round"
_ROUND_FIELDS = ("client_id", "num_examples", "train_loss", "reply_stage", "model_version", "session")
_ROUND_LIMITS = codec.Limits(max_bytes=1 << 31, max_bin=(1 << 31) - 1, max_str=0,
                             max_array=len(_ROUND_FIELDS) + 2)
