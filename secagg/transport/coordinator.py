"""The server's side of one networked training round, as a sans-I/O state machine.

The round itself is a :class:`secagg.backend.ServerRound`, the same server side an external FL system
drives (messages in, messages out); the coordinator wraps it with what a polling transport needs. The
gRPC layer calls :meth:`Coordinator.poll` and :meth:`Coordinator.submit` for client calls and
:meth:`Coordinator.due` / :meth:`Coordinator.advance` from its round driver; time comes in as an
argument (``now``, seconds on any monotonic clock), so deadlines are testable without sleeping.

Each client sees a sequence of work items per round at positions ``(round, step)``: step 0 is the
TASK (the global model, plus the session's Setup in secure mode); steps 1, 2, ... are the following
secure-aggregation messages. A client polls for the first item after the last position it handled.

Deadlines: the TASK stage closes ``task_seconds`` after the round starts (local training happens
inside it), every later stage ``stage_seconds`` after it opened, or as soon as every client that
could still answer has. Stragglers: once a quorum has answered (the session threshold ``t`` in
secure mode, a majority of the invited in plain mode), the stage waits at most ``grace_seconds``
(the first stage: ``task_grace_seconds`` when set)
more, so a dead client costs a round seconds, not the whole deadline (as in production FL systems,
which proceed when enough devices report). A client that misses a deadline is a dropout for the round and the
protocol's recovery takes over. Messages for another round, another stage, from a client not in
the round, or that the state machine refuses are rejected with :class:`Rejected` and change nothing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from secagg.backend import ServerRound, SessionSum
from secagg.errors import (
    AbortError,
    ConfigError,
    LocalProtocolError,
    RemoteProtocolError,
    SecAggError,
    WireError,
)
from secagg.protocol.messages import Stage
from secagg.transport.envelope import UPDATE_STAGE, PlainUpdate, Work, WorkKind, encode_work

MODES = ("secure", "plain")
MAX_REJECTIONS_KEPT = 1000  # per round

__all__ = ["Coordinator", "Item", "Rejected", "RoundOutcome", "SessionSum"]


class Rejected(SecAggError):
    """A client call the server refuses. ``code``: "invalid" (malformed), "precondition" (wrong round,
    stage or sender for the current state), "denied" (not allowed at all), "busy" (too many calls)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class Item:
    """One work item for a client at position ``(round, step)``: ``data``, a Work envelope's bytes
    (shared by every client that gets the same item: encoded once)."""

    round: int
    step: int
    data: bytes


@dataclass
class RoundOutcome:
    """How a round ended. ``server``: the round's :class:`~secagg.backend.ServerRound` when it produced a
    result (its ``finish`` is the server's part of the pipeline); ``aborted``: why the round produced
    no update (any session's abort aborts the round, as in simulation); ``rejected``: the refused
    client calls (client, why)."""

    round: int
    invited: tuple[int, ...]
    server: ServerRound | None = None
    aborted: str | None = None
    rejected: list[tuple[int, str]] = field(default_factory=list)

    @property
    def sums(self) -> list[SessionSum]:
        """Secure mode: one unmasked sum per session (one, or one per bucket with secure bucketing)."""
        return self.server.sums if self.server is not None else []

    @property
    def updates(self) -> dict[int, PlainUpdate]:
        """Plain mode: client id -> its released update."""
        return self.server.updates if self.server is not None else {}

    @property
    def result(self) -> np.ndarray | None:
        """The unmasked sum of a one-session round (``None`` otherwise)."""
        sums = self.sums
        return sums[0].result if len(sums) == 1 else None

    @property
    def survivors(self) -> tuple[int, ...]:
        return self.server.survivors if self.server is not None else ()

    @property
    def dropped(self) -> tuple[int, ...]:
        return self.server.dropped if self.server is not None else ()


@dataclass
class Coordinator:
    """Runs the rounds of one server process, one at a time, each a :class:`~secagg.backend.ServerRound`
    (the aggregation backend's server side: the protocol itself); this object adds what a networked
    transport needs around it: positions, deadlines, stragglers and the refusal log.
    ``mode``: the deployment's ("secure" or "plain"); every round must be of it."""

    mode: str
    task_seconds: float = 120.0
    stage_seconds: float = 30.0
    grace_seconds: float = 10.0
    #: the grace of the first stage (``None``: ``grace_seconds``): a two-level top server's first stage
    #: spans its combiners' whole sessions, whose lengths vary by more than one stage's
    task_grace_seconds: float | None = None
    #: a party that has made no call (poll or submit) for this long is taken as gone: once a quorum
    #: answered, a stage whose every missing party is gone closes without waiting out the grace
    #: (``None``: off; for parties that call while they work, such as combiners, which poll the top
    #: while their own session runs, never for clients that go quiet while they train)
    liveness_seconds: float | None = None
    round: int = 0
    finished: bool = False
    deadline: float = 0.0
    _server: ServerRound | None = None
    _outbox: dict[int, list[Item]] = field(default_factory=dict)
    _open: bool = False
    _rejected: list[tuple[int, str]] = field(default_factory=list)
    _quorum_at: float | None = None
    _first_stage: bool = False
    _seen: dict[int, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ConfigError(f"mode: must be one of {', '.join(MODES)}, got {self.mode!r}")
        for name in ("task_seconds", "stage_seconds", "grace_seconds", "task_grace_seconds",
                     "liveness_seconds"):
            if name in ("task_grace_seconds", "liveness_seconds") and getattr(self, name) is None:
                continue
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name}: must be > 0 seconds, got {getattr(self, name)!r}")

    # -- the round driver's side -----------------------------------------------------------------

    @property
    def server_round(self) -> ServerRound | None:
        """The current (or last) round's server side."""
        return self._server

    def begin_round(self, server: ServerRound, model: bytes, now: float) -> None:
        """Open ``server``'s round (built by :meth:`secagg.backend.Pipeline.server`, not started) for its
        clients, sending them the global ``model`` (bytes) with the first message."""
        if self._open:
            raise LocalProtocolError(f"coordinator: round {self.round} is still open")
        if server.round <= self.round:
            raise LocalProtocolError(f"coordinator: round {server.round} does not follow round {self.round}")
        if server.pipeline.mode != self.mode:
            raise ConfigError(f"server: a {server.pipeline.mode} round on a {self.mode} deployment")
        first = server.start(model)
        self.round, self._server = server.round, server
        # one Item per distinct first message (in practice one for everybody), so the model is
        # held and encoded once per round, not once per client
        items: dict[int, Item] = {}
        self._outbox = {u: [items.setdefault(id(data), Item(server.round, 0, data))]
                        for u, data in first.items()}
        self._rejected = []
        self._open = True
        self._quorum_at = None
        self._first_stage = True
        self.deadline = now + self.task_seconds

    def due(self, now: float) -> bool:
        """True when the open stage should be closed: its deadline passed or nobody is left to answer."""
        if not self._open:
            return False
        if now >= self.deadline:
            return True
        if self._quorum_at is not None and now >= self._stragglers_until(self._quorum_at):
            return True
        assert self._server is not None
        return self._server.stage_complete

    def wake_at(self) -> float:
        """When :meth:`due` can next turn true without a new message: the deadline, or the end of the
        stragglers' grace period once a quorum answered."""
        if self._quorum_at is None:
            return self.deadline
        return min(self.deadline, self._stragglers_until(self._quorum_at))

    def _stragglers_until(self, quorum_at: float) -> float:
        """How long the open stage waits for the rest once a quorum answered at ``quorum_at``: its
        grace, or less once every party still missing has gone silent (``liveness_seconds``)."""
        return min(quorum_at + self._grace(), max(quorum_at, self._all_gone_at()))

    def seen(self, client: int, now: float) -> None:
        """``client`` made an authenticated call at ``now`` (for ``liveness_seconds``)."""
        self._seen[client] = now

    def _all_gone_at(self) -> float:
        """When every party still missing from the open stage will have been silent for
        ``liveness_seconds`` (infinity without liveness, or with nobody missing)."""
        if self.liveness_seconds is None or self._server is None:
            return math.inf
        pending = self._server.pending
        if not pending:
            return math.inf
        return max(self._seen.get(u, -math.inf) for u in pending) + self.liveness_seconds

    def _grace(self) -> float:
        """The open stage's wait for stragglers once a quorum answered."""
        if self._first_stage and self.task_grace_seconds is not None:
            return self.task_grace_seconds
        return self.grace_seconds

    def advance(self, now: float) -> RoundOutcome | None:
        """Close the open stage. ``None`` while the round goes on (the next stage's messages are queued);
        the :class:`RoundOutcome` when it is over (a protocol abort gives an outcome with ``aborted``)."""
        if not self._open:
            raise LocalProtocolError("coordinator: no round is open")
        server = self._server
        assert server is not None
        try:
            outgoing = server.advance()
        except AbortError as exc:
            self._open = False
            return RoundOutcome(self.round, server.client_ids, aborted=str(exc),
                                rejected=list(self._rejected))
        if server.done:
            self._open = False
            return RoundOutcome(self.round, server.client_ids, server, rejected=list(self._rejected))
        # one envelope and one item per distinct (message, step): broadcasts are shared
        items: dict[tuple[int, int], Item] = {}
        for u, message in outgoing.items():
            step = len(self._outbox[u])
            key = (id(message), step)
            if key not in items:
                items[key] = Item(self.round, step,
                                  encode_work(Work(WorkKind.PROTOCOL, self.round, step, b"", message)))
            self._outbox[u].append(items[key])
        self.deadline = now + self.stage_seconds
        self._quorum_at = None
        self._first_stage = False
        return None

    def stage_name(self) -> str:
        """The open stage, for logs: a protocol stage / UPDATES / none."""
        stage = self._server.stage if self._open and self._server is not None else None
        if stage is None:
            return "none"
        return "UPDATES" if stage == UPDATE_STAGE else Stage(stage).name

    def finish(self) -> None:
        """Training is over: every poll now answers DONE."""
        self.finished = True
        self._open = False

    # -- the clients' side -----------------------------------------------------------------------

    def poll(self, client: int, after_round: int, after_step: int) -> Item | None:
        """The first work item for ``client`` after ``(after_round, after_step)``, or ``None`` (wait)."""
        if self.finished:
            return Item(self.round, 0, encode_work(Work(WorkKind.DONE, self.round)))
        for item in self._outbox.get(client, ()):
            if (item.round, item.step) > (after_round, after_step):
                return item
        return None

    def submit(self, client: int, round_index: int, stage: int, payload: bytes, now: float) -> None:
        """Record ``client``'s reply for ``stage`` of round ``round_index``; :class:`Rejected` if refused."""
        try:
            self._submit(client, round_index, stage, payload)
        except Rejected as exc:
            if len(self._rejected) < MAX_REJECTIONS_KEPT:  # a flooding client cannot grow memory
                self._rejected.append((client, str(exc)))
            raise
        assert self._server is not None
        if self._quorum_at is None and self._server.quorum_reached:
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
        assert self._server is not None
        current = self._server.stage
        if self.mode == "plain" and stage != UPDATE_STAGE:
            raise Rejected("precondition", f"stage {stage}: this server runs plain rounds and expects "
                                           f"an update (stage {UPDATE_STAGE})")
        if stage != current:
            name = Stage(stage).name if stage in Stage._value2member_map_ else str(stage)
            now = "none" if current is None else Stage(current).name
            raise Rejected("precondition", f"a {name} message during stage {now}: refused")
        try:
            self._server.receive(client, payload)
        except WireError as exc:
            raise Rejected("invalid", str(exc)) from None
        except RemoteProtocolError as exc:  # the peer's fault; a LocalProtocolError is ours and escapes
            raise Rejected("precondition", str(exc)) from None
