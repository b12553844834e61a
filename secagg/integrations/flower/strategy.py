"""A Flower strategy whose aggregation is this library's placed pipeline (plain or secure mode).

:class:`SecAggStrategy` is a ``flwr.serverapp.strategy`` strategy (Flower's Message API): give it any
of this library's aggregators and call ``strategy.start(grid=..., initial_arrays=..., num_rounds=...)``
in a ServerApp, as with Flower's own ``FedAvg``. Each round is one
:class:`~secagg.backend.ServerRound` of a :class:`~secagg.backend.Pipeline`, moved over Flower's
``Grid``:

* **plain mode** (robust rules, bucketing, NNM, central DP-FedAvg, adaptive clipping: any aggregator
  without a secure sum): one exchange. Clients may be plain Flower clients (their reply's arrays are
  the trained model; the update is the difference to the global model) or run
  :func:`~secagg.integrations.flower.mod.secagg_mod`, which applies the configuration's client steps
  (local DP's noise) before anything leaves them. Every reply is checked (arrays, dtypes, shapes,
  finite values, example count); a bad one is rejected and counted, never fatal.
* **secure mode** (a ``SecureSum``, distributed DP, secure bucketing below any client steps): the
  first exchange carries the model and the session's Setup; the mod trains, runs the client steps and
  joins this library's SecAgg/SecAgg+ session; the remaining stages run inside
  :meth:`aggregate_train` over the same grid. The server only ever holds the unmasked sum of the
  survivors. A node whose reply is an error, or none before ``stage_timeout``, has dropped: the sum
  covers the survivors exactly, or the round aborts cleanly and the global model stays as it was.

State that lives across rounds stays here: the aggregator's state (adaptive clip norm, centered
clipping's centre), the server optimizer's state (FedAvgM's momentum, FedAdam's moments), the client
roster. Round metrics follow
Flower's conventions (a ``MetricRecord`` per round; hyphenated keys) and include ``epsilon`` when the
aggregator makes a DP claim, from this library's accountant.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from logging import INFO, WARNING
from typing import Any

import numpy as np
import torch

from secagg.aggregation import Aggregator, AggState
from secagg.backend import Pipeline, ServerRound
from secagg.errors import AbortError, ConfigError, ProtocolError, RemoteProtocolError, UpdateError
from secagg.fedavg.optimizers import ServerOptimizer, resolve_server_optimizer
from secagg.integrations.flower.arrays import ArraysLayout, fingerprint, local_names
from secagg.integrations.flower.compat import flwr_version
from secagg.integrations.flower.records import HELLO, PROTOCOL, RECORD, TASK, pack, unpack
from secagg.protocol.messages import Stage
from secagg.seeding import numpy_rng
from secagg.transport.envelope import UPDATE_STAGE, PlainUpdate, encode_update
from secagg.validation import check_choice, check_int, check_real

flwr_version()  # a clear error, naming the supported release, before Flower's own imports fail

from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict  # noqa: E402
from flwr.common.logger import log  # noqa: E402
from flwr.serverapp import Grid  # noqa: E402
from flwr.serverapp.strategy import FedAvg  # noqa: E402

__all__ = ["RoundReport", "SecAggStrategy"]


HELLO_ATTEMPTS = 3  # asks of a silent node before it is left out of the roster (for now)


@dataclass
class RoundReport:
    """What happened in one training round (``strategy.history``, one per round), for logs and tests.

    ``sampled``: the client ids invited; ``survivors``: those the aggregate covers; ``dropped``: lost by
    the secure session; ``failed``: client -> the error its node replied; ``rejected``: client -> why
    its reply was refused; ``aborted``: why the round produced no update (``None`` if it did);
    ``sums``: secure mode, each session's unmasked ring sum (for audits); ``stage_seconds``: wall time
    of each exchange; ``timings``: per exchange, the stage it collected (a protocol stage name, or
    ``"update"``), its wall time through Flower (``exchange_s``: sending, the clients' work, replies)
    and the server's own work on the replies (``server_s``: checks, closing the stage; for the last
    stage the unmasking and the aggregator's server part); ``bytes_to``/``bytes_from``: per client,
    the payload bytes (arrays and this library's records) sent to it and received from it."""

    round: int
    mode: str
    sampled: tuple[int, ...] = ()
    survivors: tuple[int, ...] = ()
    dropped: tuple[int, ...] = ()
    excluded: tuple[int, ...] = ()
    failed: dict[int, str] = field(default_factory=dict)
    rejected: dict[int, str] = field(default_factory=dict)
    aborted: str | None = None
    epsilon: float | None = None
    sums: list[np.ndarray] = field(default_factory=list)
    stage_seconds: list[float] = field(default_factory=list)
    timings: list[dict[str, Any]] = field(default_factory=list)
    bytes_to: dict[int, int] = field(default_factory=dict)
    bytes_from: dict[int, int] = field(default_factory=dict)
    update: torch.Tensor | None = None


@dataclass
class _Pending:
    """A round between :meth:`SecAggStrategy.configure_train` and its ``aggregate_train``."""

    server: ServerRound
    arrays: ArrayRecord
    layout: ArraysLayout
    node_of: dict[int, int]
    report: RoundReport
    started: float
    sent: dict[int, Message] = field(default_factory=dict)  # the stage's messages, by client id


class SecAggStrategy(FedAvg):
    """Flower strategy running ``aggregator`` (any of this library's) as a placed pipeline.

    Sampling (``fraction_train``, ``sampling``): as this library's FedAvg driver, over the client ids
    of the connected nodes: ``"fixed"`` samples ``max(min_train_nodes, round(fraction_train * n))``
    clients from the run's public ``seed`` (reproducible, the same ids as ``secagg train``), or from
    the OS CSPRNG with ``secret_sampling`` (required for amplification-by-sampling claims to hold);
    ``"poisson"`` takes each client with probability ``fraction_train``. A node's client id is the one
    its :func:`~secagg.integrations.flower.mod.secagg_mod` announces (its ``partition-id`` by default);
    plain Flower clients without the mod are numbered by their node ids' order.

    ``server_optimizer``: a :class:`~secagg.fedavg.optimizers.ServerOptimizer` (``"sgd"``, ``"adam"``,
    ``"yogi"``, ``"adagrad"``), stepping every floating-point array of the model with the aggregate as
    its pseudo-gradient; its state (:attr:`optimizer_state`) lives here across rounds. Without it,
    ``server_lr`` and ``server_momentum`` are the ``"sgd"`` kind's shorthands (the global model moves
    by ``server_lr`` times the aggregate, or its momentum), as in
    :class:`~secagg.fedavg.config.FedAvgConfig`; given with it, they must agree. ``weight_bound``: the
    public bound W on a client's example count for a weighted secure sum (default: the secure sum's
    own, else required). ``registry``: client id -> Ed25519 public key (malicious-server mode: the
    server checks the clients' signatures too). ``stage_timeout``: seconds each secure stage after the
    first waits for replies (the first uses ``start``'s ``timeout``). ``local_arrays``: FedBN, the
    arrays each client keeps (its BatchNorm layers'): not in what crosses, never changed here; the
    clients' :func:`~secagg.integrations.flower.secagg_mod` must name the same ones. The evaluation
    half and the record keys are Flower's ``FedAvg``'s.
    """

    def __init__(self, aggregator: Aggregator, *, fraction_train: float = 1.0, fraction_evaluate: float = 1.0,
                 min_train_nodes: int = 2, min_evaluate_nodes: int = 2, min_available_nodes: int = 2,
                 sampling: str = "fixed", seed: int = 0, secret_sampling: bool = False,
                 server_lr: float = 1.0, server_momentum: float = 0.0,
                 server_optimizer: ServerOptimizer | None = None, weight_bound: float | None = None,
                 registry: Mapping[int, bytes] | None = None, stage_timeout: float = 60.0,
                 weighted_by_key: str = "num-examples", arrayrecord_key: str = "arrays",
                 configrecord_key: str = "config", local_arrays: Collection[str] = (),
                 **flower: Any) -> None:
        super().__init__(fraction_train=fraction_train, fraction_evaluate=fraction_evaluate,
                         min_train_nodes=min_train_nodes, min_evaluate_nodes=min_evaluate_nodes,
                         min_available_nodes=min_available_nodes, weighted_by_key=weighted_by_key,
                         arrayrecord_key=arrayrecord_key, configrecord_key=configrecord_key, **flower)
        if not isinstance(aggregator, Aggregator):
            raise ConfigError(f"aggregator: expected one of this library's Aggregators, got "
                              f"{type(aggregator).__name__}")
        if aggregator.root_examples() > 0:
            raise ConfigError(f"aggregator: {aggregator.kind!r} needs the server's own update on a root "
                              f"dataset each round, which this strategy does not train (the ServerApp "
                              f"holds no data); use another rule, or secagg train / secagg serve")
        check_real("fraction_train", fraction_train, gt=0.0, le=1.0)
        self.sampling = check_choice("sampling", sampling, ("fixed", "poisson"))
        self.seed = check_int("seed", seed, minimum=0)
        self.secret_sampling = bool(secret_sampling)
        self.server_lr = check_real("server_lr", server_lr, gt=0.0)
        self.server_momentum = check_real("server_momentum", server_momentum, ge=0.0, lt=1.0)
        self.server_optimizer = resolve_server_optimizer(server_lr, server_momentum, server_optimizer)
        self.stage_timeout = check_real("stage_timeout", stage_timeout, gt=0.0)
        if weight_bound is not None:
            check_real("weight_bound", weight_bound, gt=0.0)
        self.aggregator, self.registry = aggregator, registry
        #: FedBN: the arrays each client keeps (never in the vector; the global copy never changes)
        self.local_arrays = local_names(local_arrays)
        probe = Pipeline(aggregator, 1, registry=registry, seed=seed)  # refuses an unplaceable rule now
        if probe.placement.combiners is not None:
            raise ConfigError(f"aggregator: {aggregator.kind!r} sums in two levels through combiner "
                              "processes ('secagg serve --combiner'); Flower has one server: use SecureSum")
        self.mode = probe.mode
        session = probe.placement.session
        own = float(getattr(session, "weight_bound", 0.0) or 0.0)
        bound = weight_bound if weight_bound is not None else own
        if self.mode == "secure" and getattr(session, "weighted", False) and not bound:
            raise ConfigError("weight_bound: a weighted secure sum needs the public bound W on a client's "
                              "example count (pass weight_bound=, or set the SecureSum's)")
        self.weight_bound = float(bound or 1.0)
        #: the aggregator's state across rounds (adaptive clip norm, centered clipping's centre)
        self.state: AggState | None = None
        #: the server optimizer's state across rounds (``None`` before the first step)
        self.optimizer_state: dict[str, torch.Tensor] | None = None
        self.layout: ArraysLayout | None = None
        #: client id -> node id of every node that announced itself
        self.roster: dict[int, int] = {}
        self.history: list[RoundReport] = []
        self._asked: set[int] = set()
        self._grid: Grid | None = None
        self._pending: _Pending | None = None

    # -- Flower's Strategy interface --------------------------------------------------------------

    def summary(self) -> None:
        log(INFO, "\t├──> secagg: %s", self.pipeline(1).placement.describe())
        log(INFO, "\t├──> Aggregator: %s (%s mode)", self.aggregator.kind, self.mode)
        log(INFO, "\t├──> Sampling: %s, fraction %.2f, %s", self.sampling, self.fraction_train,
            "secret (OS CSPRNG)" if self.secret_sampling else f"public seed {self.seed}")
        log(INFO, "\t├──> Server optimizer: %s", self.server_optimizer.describe())
        super().summary()

    def pipeline(self, dim: int) -> Pipeline:
        """The pipeline of this strategy for a ``dim``-coordinate model (the clients build the same)."""
        return Pipeline(self.aggregator, dim, registry=self.registry, seed=self.seed)

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        """Sample the round's clients and open its :class:`~secagg.backend.ServerRound`: the first
        message (global model, ``config``, and this library's Work envelope) for each."""
        self._grid, self._pending = grid, None
        layout = ArraysLayout.of(arrays, self.local_arrays)
        if self.layout is None:
            self.layout = layout
            self.state = self.aggregator.init_state(layout.dim)
        elif layout.layout != self.layout.layout:
            raise ConfigError("arrays: the global model's arrays changed shape between rounds")
        report = RoundReport(server_round, self.mode)
        self.history.append(report)
        report.epsilon = self.aggregator.epsilon_after(server_round, layout.dim)
        budget = self.aggregator.privacy_budget()
        if report.epsilon is not None and budget is not None and report.epsilon > budget:
            report.aborted = (f"privacy budget: epsilon would reach {report.epsilon:.4g} > target {budget:g} "
                              f"in round {server_round}")
            log(WARNING, "secagg: round %d not run: %s", server_round, report.aborted)
            return []
        roster = self._update_roster(grid)
        sampled = self._sample(server_round, sorted(roster))
        report.sampled = tuple(sampled)
        if not sampled:
            report.aborted = "no client sampled"
            return []
        pipeline = self.pipeline(layout.dim)
        try:
            server = pipeline.server(server_round, sampled, weight_bound=self.weight_bound,
                                     model_version=fingerprint(arrays) if self.mode == "secure" else None,
                                     state=self.state)
        except (ConfigError, AbortError) as exc:  # e.g. too few clients for a session
            report.aborted = str(exc)
            log(WARNING, "secagg: round %d not run: %s", server_round, exc)
            return []
        node_of = {c: roster[c] for c in sampled}
        pending = self._pending = _Pending(server, arrays, layout, node_of, report, time.perf_counter())
        config["server-round"] = server_round
        log(INFO, "configure_train: sampled %d clients (of %d), %s mode", len(sampled), len(roster),
            self.mode)
        outgoing = server.start()
        arrays_bytes = sum(len(a.data) for a in arrays.values())
        messages = []
        for c, data in outgoing.items():
            content = RecordDict({self.arrayrecord_key: arrays, self.configrecord_key: config,
                                  RECORD: pack(TASK, server_round, data, seed=self.seed)})
            messages.append(Message(content=content, message_type=MessageType.TRAIN, dst_node_id=node_of[c]))
            pending.sent[c] = messages[-1]
            report.bytes_to[c] = arrays_bytes + len(data)
        return messages

    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Take the first stage's replies, run the remaining secure stages over the grid, and return the
        new global model (``None``: the round produced no update, the model stays) and the round's
        metrics."""
        pending, self._pending = self._pending, None
        if pending is None or pending.report.round != server_round:
            report = self.history[-1] if self.history and self.history[-1].round == server_round else None
            return None, self._metrics(report) if report is not None else None
        report, server = pending.report, pending.server
        stage, exchange_s = _stage_name(server.stage), time.perf_counter() - pending.started
        report.stage_seconds.append(exchange_s)
        try:
            while True:
                started = time.perf_counter()
                self._receive(pending, replies)
                outgoing = server.advance()
                if not outgoing:
                    try:
                        model = (pending.layout.flatten(pending.arrays)
                                 if self.aggregator.needs_global_model() else None)
                        aggregate = server.finish(self.state or {}, pending.layout.layout,
                                                  global_model=model)
                    except UpdateError as exc:  # e.g. a robust rule left with too few rows by rejections
                        raise AbortError(f"the aggregator refused the round's updates: {exc}") from None
                report.timings.append({"stage": stage, "exchange_s": exchange_s,
                                       "server_s": time.perf_counter() - started})
                if not outgoing:
                    break
                assert self._grid is not None
                messages = self.protocol_messages(server_round, outgoing, pending.node_of)
                client_of = {n: c for c, n in pending.node_of.items()}
                pending.sent = {client_of[m.metadata.dst_node_id]: m for m in messages
                                if m.metadata.dst_node_id in client_of}
                for c, data in outgoing.items():
                    report.bytes_to[c] = report.bytes_to.get(c, 0) + len(data)
                stage, started = _stage_name(server.stage), time.perf_counter()
                replies = list(self._grid.send_and_receive(messages, timeout=self.stage_timeout))
                exchange_s = time.perf_counter() - started
                report.stage_seconds.append(exchange_s)
        except AbortError as exc:
            report.timings.append({"stage": stage, "exchange_s": exchange_s,
                                   "server_s": time.perf_counter() - started})
            return self._abort(report, server, str(exc))
        update = aggregate.update
        if tuple(update.shape) != (pending.layout.dim,) or not bool(torch.isfinite(update).all()):
            return self._abort(report, server, f"the aggregator returned an update of shape "
                                                f"{tuple(update.shape)} or with non-finite values")
        report.survivors, report.dropped, report.excluded = server.survivors, server.dropped, server.excluded
        report.sums = [s.result for s in server.sums]
        report.update = update
        self.state = aggregate.state
        new = self._server_step(pending, update)
        metrics = self._metrics(report, aggregate.metrics, server)
        log(INFO, "secagg: round %d aggregated %d clients (%d dropped, %d rejected)", server_round,
            len(report.survivors), len(report.dropped) + len(report.failed), len(report.rejected))
        return new, metrics

    def protocol_messages(self, server_round: int, outgoing: Mapping[int, bytes],
                          node_of: Mapping[int, int]) -> list[Message]:
        """The Flower messages carrying a secure stage's ``outgoing`` bytes (client id -> bytes) to
        their nodes. (A subclass may wrap this, e.g. a test playing a hostile server.)"""
        return [Message(content=RecordDict({RECORD: pack(PROTOCOL, server_round, data)}),
                        message_type=MessageType.TRAIN, dst_node_id=node_of[c])
                for c, data in outgoing.items()]

    # -- the round's parts ---------------------------------------------------------------------

    def _update_roster(self, grid: Grid) -> dict[int, int]:
        """Ask every node not asked before for its client id (one exchange, only when new nodes are
        connected); nodes that do not answer (no mod) get ids after the announced ones, in node id
        order. Two nodes announcing one id are both left out (logged)."""
        nodes = sorted(int(n) for n in grid.get_node_ids())
        while len(nodes) < self.min_available_nodes:
            log(INFO, "Waiting for nodes to connect: %d connected (minimum required: %d).", len(nodes),
                self.min_available_nodes)
            time.sleep(1.0)
            nodes = sorted(int(n) for n in grid.get_node_ids())
        live = set(nodes)
        self.roster = {c: n for c, n in self.roster.items() if n in live}
        fresh = [n for n in nodes if n not in self._asked]
        if not fresh:
            return dict(self.roster)
        claims: dict[int, list[int]] = {}
        unnamed = []
        for reply in self._hello(grid, fresh):
            node = int(reply.metadata.src_node_id)
            if reply.has_error() and self.mode == "secure":
                # asked again next round: a node that failed now may join later (it needs the mod)
                log(WARNING, "secagg: node %d did not say who it is: %s", node, reply.error.reason)
                continue
            self._asked.add(node)
            try:
                # plain mode: a plain Flower client's train function fails on (or ignores) the question
                fields = None if reply.has_error() else unpack(reply.content, who=f"node {node}")
                cid = None if fields is None else fields.get("client-id")
                if cid is not None and (not isinstance(cid, int) or isinstance(cid, bool) or cid < 0
                                        or cid >= 2**31):
                    raise RemoteProtocolError(f"node {node}: client-id must be an int in [0, 2^31), "
                                              f"got {cid!r}")
            except RemoteProtocolError as exc:
                log(WARNING, "secagg: %s", exc)
                continue
            if cid is None:
                unnamed.append(node)
            else:
                claims.setdefault(cid, []).append(node)
        for cid, claimants in claims.items():
            if len(claimants) > 1 or cid in self.roster:
                log(WARNING, "secagg: client id %d claimed by several nodes %s: none of them takes part", cid,
                    claimants)
                self.roster.pop(cid, None)
                continue
            self.roster[cid] = claimants[0]
        if unnamed and self.mode == "secure":
            log(WARNING, "secagg: nodes %s run no secagg_mod: they cannot join a secure round", unnamed)
        elif unnamed:
            start = max([*self.roster, -1]) + 1
            for i, node in enumerate(sorted(unnamed)):
                self.roster[start + i] = node
        return dict(self.roster)

    def _hello(self, grid: Grid, nodes: list[int]) -> list[Message]:
        """The replies of ``nodes`` to the hello question. A node that sends nothing back within
        ``stage_timeout`` (one still starting: its first message loads the app) is asked again, up to
        :data:`HELLO_ATTEMPTS` times in all, so that a slow start does not leave round 1 without
        clients; a node that answered, or whose loss the SuperLink reported, is not asked again."""
        replies: list[Message] = []
        silent = list(nodes)
        for attempt in range(1, HELLO_ATTEMPTS + 1):
            messages = [Message(content=RecordDict({RECORD: pack(HELLO, 0)}), message_type=MessageType.TRAIN,
                                dst_node_id=n) for n in silent]
            got = self._send(grid, messages)
            replies += got
            asked = {}
            for node, m in zip(silent, messages, strict=True):
                try:
                    if m.metadata.message_id:  # empty until the grid pushes it
                        asked[m.metadata.message_id] = node
                except KeyError:  # never pushed
                    continue
            heard = {int(r.metadata.src_node_id) for r in got}
            heard |= {asked[r.metadata.reply_to_message_id] for r in got
                      if r.metadata.reply_to_message_id in asked}
            silent = [n for n in silent if n not in heard]
            if not silent or attempt == HELLO_ATTEMPTS:
                break
            log(INFO, "secagg: nodes %s did not answer the hello within %gs; asking again", silent,
                self.stage_timeout)
        return replies

    def _send(self, grid: Grid, messages: list[Message]) -> list[Message]:
        return list(grid.send_and_receive(messages, timeout=self.stage_timeout)) if messages else []

    def _sample(self, round_index: int, ids: list[int]) -> list[int]:
        """The round's client ids (sorted), as this library's FedAvg driver samples them."""
        n = len(ids)
        if n == 0:
            return []
        if self.sampling == "poisson":
            if self.secret_sampling:
                draw = secrets.SystemRandom()  # the sample must be secret for amplification to hold
                return [c for c in ids if draw.random() < self.fraction_train]
            draws = numpy_rng(self.seed, "sample-poisson", round_index).random(n)  # public, reproducible
            return [ids[i] for i in (draws < self.fraction_train).nonzero()[0]]
        m = max(1, min(n, int(self.fraction_train * n + 0.5)))
        m = min(n, max(m, self.min_train_nodes))
        if self.secret_sampling:
            return sorted(secrets.SystemRandom().sample(ids, m))
        chosen = numpy_rng(self.seed, "sample", round_index).choice(n, size=m, replace=False)
        return sorted(ids[int(i)] for i in chosen)

    def _receive(self, pending: _Pending, replies: Iterable[Message]) -> None:
        """Feed each reply to the round; errors and refusals are counted, never raised."""
        report, server = pending.report, pending.server
        client_of = {n: c for c, n in pending.node_of.items()}
        # a lost node's error comes from the SuperLink (src_node_id 1): map it by the message it answers
        asked = {}
        for c, m in pending.sent.items():
            try:
                asked[m.metadata.message_id] = c
            except KeyError:  # never pushed
                continue
        for reply in replies:
            node = int(reply.metadata.src_node_id)
            c = client_of.get(node)
            if c is None and reply.has_error():
                c = asked.get(reply.metadata.reply_to_message_id)
            if c is None:
                continue  # not this round's
            if reply.has_error():
                report.failed[c] = str(reply.error.reason)
                log(INFO, "\t> client %d (node %d) failed: %s", c, node, reply.error.reason)
                continue
            try:
                data = self._reply_bytes(pending, c, reply)
                server.receive(c, data)
            except (ProtocolError, UpdateError) as exc:
                report.rejected[c] = str(exc)
                log(WARNING, "secagg: reply of client %d (node %d) rejected: %s", c, node, exc)
                continue
            report.bytes_from[c] = report.bytes_from.get(c, 0) + len(data)

    def _reply_bytes(self, pending: _Pending, c: int, reply: Message) -> bytes:
        """This library's bytes in a reply: the mod's record, or (plain mode, first stage) a plain
        Flower client's trained arrays turned into a plain update envelope here."""
        who = f"client {c}"
        fields = unpack(reply.content, who=who)
        if fields is not None:
            return fields["data"]
        if pending.server.stage != UPDATE_STAGE:
            raise RemoteProtocolError(f"{who}: the reply carries no {RECORD!r} record (is secagg_mod "
                                      f"installed on the client?)")
        if pending.server.pipeline.placement.client_steps:
            raise RemoteProtocolError(f"{who}: this configuration has client steps "
                                      f"({pending.server.pipeline.placement.describe_steps()}); a reply "
                                      f"without secagg_mod skipped them")
        arrays = reply.content.get(self.arrayrecord_key)
        if not isinstance(arrays, ArrayRecord):
            raise RemoteProtocolError(f"{who}: the reply has no ArrayRecord {self.arrayrecord_key!r}")
        examples, loss = _reply_metrics(reply.content, self.weighted_by_key, who)
        layout = pending.layout
        delta = layout.flatten(arrays, what=f"{who}'s arrays") - layout.flatten(pending.arrays)
        row = delta.to(torch.float32).numpy().astype("<f4").tobytes()
        return encode_update(PlainUpdate(examples, loss, row))

    @property
    def momentum(self) -> torch.Tensor | None:
        """The ``"sgd"`` server optimizer's momentum buffer (FedAvgM), ``None`` when there is none."""
        return (self.optimizer_state or {}).get("momentum")

    def _server_step(self, pending: _Pending, update: torch.Tensor) -> ArrayRecord:
        layout = pending.layout
        step = update.to(layout.layout.dtype)
        current = layout.flatten(pending.arrays)
        if self.optimizer_state is None:
            self.optimizer_state = self.server_optimizer.init_state(layout.dim, current.dtype)
        new, self.optimizer_state = self.server_optimizer.step(current, step, self.optimizer_state)
        return layout.unflatten(new, pending.arrays)

    def _abort(self, report: RoundReport, server: ServerRound, reason: str
               ) -> tuple[None, MetricRecord]:
        report.aborted = reason
        report.survivors, report.dropped = (), server.dropped
        log(WARNING, "secagg: round %d aborted, the global model is unchanged: %s", report.round, reason)
        return None, self._metrics(report)

    def _metrics(self, report: RoundReport, agg_metrics: Mapping[str, Any] | None = None,
                 server: ServerRound | None = None) -> MetricRecord:
        values: dict[str, Any] = {
            "clients": len(report.survivors), "sampled": len(report.sampled),
            "dropped": len(report.dropped) + len(report.failed), "rejected": len(report.rejected),
            "aborted": int(report.aborted is not None),
        }
        if report.epsilon is not None:
            values["epsilon"] = float(report.epsilon)
            if self.sampling == "poisson" and self.fraction_train < 1.0:
                values["sample-secret"] = int(self.secret_sampling)
        if report.update is not None:
            values["update-norm"] = float(torch.linalg.vector_norm(report.update.double()))
        if server is not None and self.mode == "plain":
            updates = server.updates
            total = sum(u.num_examples for u in updates.values())
            if total > 0:
                values["train-loss"] = sum(u.train_loss * u.num_examples for u in updates.values()) / total
        for key, value in (agg_metrics or {}).items():
            if isinstance(value, bool):
                value = int(value)
            if isinstance(value, int | float) and np.isfinite(value):
                values[f"agg-{key}".replace("_", "-")] = value
        return MetricRecord(values)


def _stage_name(stage: int | None) -> str:
    if stage == UPDATE_STAGE:
        return "update"
    return "none" if stage is None else Stage(stage).name.lower()


def _reply_metrics(content, key: str, who: str) -> tuple[int, float]:
    """(example count, train loss) from a plain Flower reply's MetricRecord."""
    records = [r for r in content.values() if isinstance(r, MetricRecord)]
    if len(records) != 1:
        raise RemoteProtocolError(f"{who}: expected one MetricRecord with {key!r}, got {len(records)}")
    metrics = records[0]
    examples = metrics.get(key)
    if isinstance(examples, float) and examples.is_integer():
        examples = int(examples)
    if not isinstance(examples, int) or isinstance(examples, bool) or not 0 <= examples < 2**31:
        raise RemoteProtocolError(f"{who}: {key!r} must be an example count in [0, 2^31), got {examples!r}")
    loss = metrics.get("train_loss", metrics.get("train-loss", 0.0))
    loss = float(loss) if isinstance(loss, int | float) and np.isfinite(loss) else 0.0
    return examples, loss
