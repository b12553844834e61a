"""The server's side of one networked training round, as a sans-I/O state machine.

The gRPC layer calls :meth:`Coordinator.poll` and :meth:`Coordinator.submit` for client calls and
:meth:`Coordinator.due` / :meth:`Coordinator.advance` from its round driver; time comes in as an
argument (``now``, seconds on any monotonic clock), so deadlines are testable without sleeping.

Each client sees a sequence of work items per round at positions ``(round, step)``: step 0 is the
TASK (global weights, plus the session's Setup in secure mode); steps 1, 2, ... are the following
secure-aggregation messages. A client polls for the first item after the last position it handled.

Deadlines: the TASK stage closes ``task_seconds`` after the round starts (local training happens
inside it), every later stage ``stage_seconds`` after it opened, or as soon as every client that
could still answer has. Stragglers: once a quorum has answered (the session threshold ``t`` in
secure mode, a majority of the invited in plain mode), the stage waits at most ``grace_seconds``
more, so a dead client costs a round seconds, not the whole deadline (as in production FL systems,
which proceed when enough devices report). A client that misses a deadline is a dropout for the round and the
protocol's recovery takes over. Messages for another round, another stage, from a client not in
the round, or that the state machine refuses are rejected with :class:`Rejected` and change nothing.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from secagg.errors import (
    AbortError,
    ConfigError,
    LocalProtocolError,
    RemoteProtocolError,
    SecAggError,
    WireError,
)
from secagg.protocol.messages import SessionParams, Stage
from secagg.protocol.server import Server, ServerPhase
from secagg.protocol.wire import decode, encode
from secagg.transport.envelope import UPDATE_STAGE, PlainUpdate, Work, WorkKind, decode_update, encode_work

MODES = ("secure", "plain")
MAX_REJECTIONS_KEPT = 1000  # per round


class Rejected(SecAggError):
    """A client call the server refuses. ``code``: "invalid" (malformed), "precondition" (wrong round,
    stage or sender for the current state), "denied" (not allowed at all), "busy" (too many calls)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass
class SessionSum:
    """One finished secure-aggregation session of a round: its ``params``, the unmasked ring sum
    ``result``, and who it covers (``survivors``) or lost (``dropped``)."""

    params: SessionParams
    result: np.ndarray
    survivors: tuple[int, ...]
    dropped: tuple[int, ...]


@dataclass
class RoundOutcome:
    """How a round ended. Secure: ``sums``, one per session (one, or one per bucket with secure
    bucketing). Plain: ``updates`` (client id -> its update). ``aborted``: why the round produced no
    update (any session's abort aborts the round, as in simulation)."""

    round: int
    invited: tuple[int, ...]
    sums: list[SessionSum] = field(default_factory=list)
    updates: dict[int, PlainUpdate] = field(default_factory=dict)
    aborted: str | None = None
    rejected: list[tuple[int, str]] = field(default_factory=list)

    @property
    def result(self) -> np.ndarray | None:
        """The unmasked sum of a one-session round (``None`` otherwise)."""
        return self.sums[0].result if len(self.sums) == 1 else None

    @property
    def survivors(self) -> tuple[int, ...]:
        return tuple(sorted(u for one in self.sums for u in one.survivors))

    @property
    def dropped(self) -> tuple[int, ...]:
        return tuple(sorted(u for one in self.sums for u in one.dropped))


@dataclass
class Coordinator:
    """Runs the rounds of one server process, one at a time. ``dim``: the update length (coordinates).

    ``registry``: the clients' Ed25519 keys, given to the SecAgg server in malicious mode.
    """

    mode: str
    dim: int
    task_seconds: float = 120.0
    stage_seconds: float = 30.0
    grace_seconds: float = 10.0
    registry: Mapping[int, bytes] | None = None
    round: int = 0
    finished: bool = False
    deadline: float = 0.0
    _invited: tuple[int, ...] = ()
    _outbox: dict[int, list[Work]] = field(default_factory=dict)
    _sessions: list[Server] = field(default_factory=list)  # one per group of clients (secure mode)
    _session_of: dict[int, Server] = field(default_factory=dict)
    _updates: dict[int, PlainUpdate] = field(default_factory=dict)
    _open: bool = False
    _rejected: list[tuple[int, str]] = field(default_factory=list)
    _quorum_at: float | None = None
    _wire: dict[int, bytes] = field(default_factory=dict)  # id(work item in an outbox) -> its bytes

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ConfigError(f"mode: must be one of {', '.join(MODES)}, got {self.mode!r}")
        for name in ("task_seconds", "stage_seconds", "grace_seconds"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name}: must be > 0 seconds, got {getattr(self, name)!r}")

    # -- the round driver's side -----------------------------------------------------------------

    def begin_round(self, round_index: int, invited: tuple[int, ...], weights: bytes, now: float, *,
                    params: SessionParams | list[SessionParams] | None = None, weight_bound: float = 0.0,
                    public: tuple[float, ...] = ()) -> None:
        """Open round ``round_index`` for ``invited`` clients with the global ``weights`` (bytes) and
        the round's ``public`` values for the client steps.

        Secure mode needs the session ``params``: one session whose ``client_ids`` are ``invited``, or a
        list of sessions whose client sets partition ``invited`` (secure bucketing), run side by side.
        """
        if self._open:
            raise LocalProtocolError(f"coordinator: round {self.round} is still open")
        if round_index <= self.round:
            raise LocalProtocolError(f"coordinator: round {round_index} does not follow round {self.round}")
        groups = [params] if isinstance(params, SessionParams) else list(params or [])
        if self.mode == "secure":
            members = sorted(u for p in groups for u in p.client_ids)
            if not groups or members != sorted(invited):
                raise ConfigError("params: secure mode needs session parameters whose clients are exactly "
                                  "the invited clients, each in one session")
        self.round, self._invited = round_index, tuple(invited)
        self._outbox = {u: [] for u in invited}
        self._updates, self._rejected, self._sessions, self._session_of = {}, [], [], {}
        self._wire = {}
        # one TASK object per distinct Setup (in practice one for everybody), so the weights are
        # encoded once per round, not once per client
        tasks: dict[bytes, Work] = {}
        if self.mode == "secure":
            for group in groups:
                session = Server(group, self.registry if group.malicious else None)
                self._sessions.append(session)
                for u in group.client_ids:
                    self._session_of[u] = session
                for u, setup in session.start():
                    data = encode(setup)
                    if data not in tasks:
                        tasks[data] = Work(WorkKind.TASK, round_index, 0, weights, data, weight_bound, public)
                    self._outbox[u].append(tasks[data])
        else:
            task = Work(WorkKind.TASK, round_index, 0, weights, b"", weight_bound, public)
            for u in invited:
                self._outbox[u].append(task)
        self._open = True
        self._quorum_at = None
        self.deadline = now + self.task_seconds

    def due(self, now: float) -> bool:
        """True when the open stage should be closed: its deadline passed or nobody is left to answer."""
        if not self._open:
            return False
        if now >= self.deadline:
            return True
        if self._quorum_at is not None and now >= self._quorum_at + self.grace_seconds:
            return True
        if self._sessions:
            return all(session.stage_complete() for session in self._sessions)
        return set(self._updates) == set(self._invited)

    def wake_at(self) -> float:
        """When :meth:`due` can next turn true without a new message: the deadline, or the end of the
        stragglers' grace period once a quorum answered."""
        if self._quorum_at is None:
            return self.deadline
        return min(self.deadline, self._quorum_at + self.grace_seconds)

    def _quorum_reached(self) -> bool:
        """Whether the open stage has its quorum, after which stragglers get only the grace period: a
        majority of the invited (plain), each session's threshold ``t`` (secure)."""
        if not self._sessions:
            return len(self._updates) >= len(self._invited) // 2 + 1
        for session in self._sessions:
            counts = {Stage.ADVERTISE_KEYS: session.keys, Stage.SHARE_KEYS: session.shares,
                      Stage.MASKED_INPUT: session.masked, Stage.CONSISTENCY_CHECK: session.consistency,
                      Stage.UNMASKING: session.responses}
            stage = session.stage
            if (len(counts[stage]) if stage is not None else 0) < session.params.threshold:
                return False
        return True

    def advance(self, now: float) -> RoundOutcome | None:
        """Close the open stage. ``None`` while the round goes on (the next stage's messages are queued);
        the :class:`RoundOutcome` when it is over (a protocol abort gives an outcome with ``aborted``)."""
        if not self._open:
            raise LocalProtocolError("coordinator: no round is open")
        if not self._sessions:
            self._open = False
            return RoundOutcome(self.round, self._invited, updates=dict(self._updates),
                                rejected=list(self._rejected))
        outgoing = []
        try:  # the sessions move in lockstep: the same stages, closed at the same time
            for session in self._sessions:
                outgoing.extend(session.advance())
        except AbortError as exc:
            self._open = False
            where = (f" (the session of clients {list(session.params.client_ids)})"
                     if len(self._sessions) > 1 else "")
            return RoundOutcome(self.round, self._invited, aborted=f"{exc}{where}",
                                rejected=list(self._rejected))
        if all(session.phase is ServerPhase.DONE for session in self._sessions):
            self._open = False
            sums = [SessionSum(session.params, session.result, session.survivors, session.dropped)
                    for session in self._sessions]
            return RoundOutcome(self.round, self._invited, sums, rejected=list(self._rejected))
        # one encoding and one work item per distinct (message, step): broadcasts are shared
        items: dict[tuple[int, int], Work] = {}
        for u, message in outgoing:
            step = len(self._outbox[u])
            key = (id(message), step)
            if key not in items:
                items[key] = Work(WorkKind.PROTOCOL, self.round, step, b"", encode(message))
            self._outbox[u].append(items[key])
        self.deadline = now + self.stage_seconds
        self._quorum_at = None
        return None

    def stage_name(self) -> str:
        """The open stage, for logs: TASK_AND_KEYS / a protocol stage / UPDATES / none."""
        if not self._open:
            return "none"
        if not self._sessions:
            return "UPDATES"
        stage = self._sessions[0].stage
        return stage.name if stage is not None else "none"

    def finish(self) -> None:
        """Training is over: every poll now answers DONE."""
        self.finished = True
        self._open = False

    # -- the clients' side -----------------------------------------------------------------------

    def poll(self, client: int, after_round: int, after_step: int) -> Work | None:
        """The first work item for ``client`` after ``(after_round, after_step)``, or ``None`` (wait)."""
        if self.finished:
            return Work(WorkKind.DONE, self.round)
        for item in self._outbox.get(client, ()):
            if (item.round, item.step) > (after_round, after_step):
                return item
        return None

    def encoded(self, item: Work) -> bytes:
        """``item`` as envelope bytes, encoded once per round however many clients poll it."""
        data = self._wire.get(id(item))
        if data is None:
            data = encode_work(item)
            if item.kind is not WorkKind.DONE:  # DONE items are built per call: not kept
                self._wire[id(item)] = data
        return data

    def submit(self, client: int, round_index: int, stage: int, payload: bytes, now: float) -> None:
        """Record ``client``'s reply for ``stage`` of round ``round_index``; :class:`Rejected` if refused."""
        try:
            self._submit(client, round_index, stage, payload)
        except Rejected as exc:
            if len(self._rejected) < MAX_REJECTIONS_KEPT:  # a flooding client cannot grow memory
                self._rejected.append((client, str(exc)))
            raise
        if self._quorum_at is None and self._quorum_reached():
            self._quorum_at = now

    def _submit(self, client: int, round_index: int, stage: int, payload: bytes) -> None:
        if self.finished:
            raise Rejected("precondition", "training is over")
        if round_index != self.round or not self._open:
            state = "open" if self._open else "closed"
            raise Rejected("precondition", f"message for round {round_index}, but round {self.round} is "
                                           f"{state}: late or early, refused")
        if client not in self._outbox:
            raise Rejected("precondition", f"client {client} is not taking part in round {self.round}")
        session = self._session_of.get(client)
        if session is None:
            if stage != UPDATE_STAGE:
                raise Rejected("precondition", f"stage {stage}: this server runs plain rounds and expects "
                                               f"an update (stage {UPDATE_STAGE})")
            if client in self._updates:
                raise Rejected("precondition", f"duplicate update from client {client}")
            try:
                update = decode_update(payload, self.dim)
            except WireError as exc:
                raise Rejected("invalid", str(exc)) from None
            if not np.isfinite(np.frombuffer(update.delta, dtype="<f4")).all():
                raise Rejected("invalid", f"the update of client {client} has NaN or infinite coordinates")
            self._updates[client] = update
            return
        current = session.stage
        if current is None or stage != int(current):
            name = Stage(stage).name if stage in Stage._value2member_map_ else str(stage)
            raise Rejected("precondition", f"a {name} message during stage "
                                           f"{current.name if current is not None else 'none'}: refused")
        try:
            message = decode(payload)
        except WireError as exc:
            raise Rejected("invalid", str(exc)) from None
        try:
            session.receive(message, sender=client)
        except RemoteProtocolError as exc:  # the peer's fault; a LocalProtocolError is ours and escapes
            raise Rejected("precondition", str(exc)) from None
