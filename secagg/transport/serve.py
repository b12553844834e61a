"""The federated server process: FedAvg rounds over gRPC, checkpointed after every round.

Round ``r`` samples clients exactly as the in-process simulation does (same seed, same ids), sends
them the global weights, and closes each stage at its deadline or when everyone answered. In secure
mode (a ``SecureSum``, optionally under client steps such as local DP) the server only ever holds
the unmasked sum of the survivors' quantized updates; in plain mode it receives the clients'
released updates and runs any configured aggregator (robust rules, server-side DP). Client-placed
steps (:mod:`secagg.placement`) run in the client processes, never here.

A round that aborts (fewer than ``t`` clients left) changes nothing
but the round counter, as in simulation. After each round the checkpoint and results are written
atomically, so a server killed at any moment restarts (``resume=True``) from its last committed
round and loses nothing it had committed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import safetensors.torch
import torch

from secagg.aggregation import Aggregator, UpdateBatch
from secagg.backend import Pipeline
from secagg.errors import AbortError, ConfigError, RemoteProtocolError
from secagg.experiment import CHECKPOINT, ExperimentConfig, ExperimentResult, load_run, run_rounds
from secagg.fedavg import FedAvg
from secagg.fedavg.server import ServerState
from secagg.fedavg.source import Collected, weighted_loss
from secagg.placement import place
from secagg.task import TaskFactory, make_task
from secagg.transport.auth import Authenticator
from secagg.transport.coordinator import Coordinator, RoundOutcome
from secagg.transport.service import AggregationService, message_limit, start_grpc_server
from secagg.transport.tls import TLSFiles
from secagg.two_level import TopRound

log = logging.getLogger("secagg.serve")


@dataclass(frozen=True)
class ServeOptions:
    """Where and how to listen. ``address``: "host:port" (port 0: any free port, see ``on_listen``).
    ``tls``: the server's certificate and key (``None``: plaintext, for loopback and trusted networks).
    ``task_seconds``: deadline of the first stage (local training + key advertisement);
    ``stage_seconds``: of every later stage. ``grace_seconds``: how long a stage waits for stragglers
    once a quorum answered (see :mod:`secagg.transport.coordinator`). ``linger_seconds``: how long
    to keep answering DONE after the last round. ``audit_dir``: write each secure round's unmasked
    sum and survivor set.
    ``wait_clients``: before the first round, wait until this many clients have logged in (default:
    the clients sampled per round), at most ``wait_seconds``. ``task_grace_seconds``: the first
    stage's wait for stragglers once a quorum answered (``None``: ``grace_seconds``; a two-level top
    server needs more, see ``secagg serve --task-grace``). ``liveness_seconds``: a party silent this
    long no longer holds a stage open once a quorum answered (``None``: off; a two-level top server's
    combiners poll it while they work, see :class:`~secagg.transport.coordinator.Coordinator`)."""

    address: str = "127.0.0.1:50051"
    tls: TLSFiles | None = None
    task_seconds: float = 120.0
    stage_seconds: float = 30.0
    grace_seconds: float = 10.0
    linger_seconds: float = 3.0
    audit_dir: Path | None = None
    wait_clients: int | None = None
    wait_seconds: float = 300.0
    task_grace_seconds: float | None = None
    liveness_seconds: float | None = None


def network_mode(aggregator: Aggregator) -> str:
    """``"secure"`` or ``"plain"``: :func:`secagg.placement.place`'s mode (its :class:`ConfigError`
    for an aggregator that cannot be placed)."""
    return place(aggregator).mode


def weight_bound(config: ExperimentConfig, examples: dict[int, int]) -> float:
    """The public bound W on a client's example count: the secure sum's, else the largest partition."""
    session = place(config.fedavg.aggregator).session
    bound = float(getattr(session, "weight_bound", 0.0) or 0.0)
    return bound or float(max(examples.values()))


class NetworkSource:
    """The deployment's update source (:mod:`secagg.fedavg.source`): round ``r`` goes to the sampled
    clients over ``service`` as a :class:`~secagg.backend.ServerRound` of ``pipeline`` (the aggregation
    backend's server side); only what the placement lets cross (the secure sum, or the clients'
    released rows in plain mode) reaches the server, which runs the aggregator's server part on it.
    ``audit_dir``: write what the server held and released each round (see :class:`ServeOptions`)."""

    def __init__(self, pipeline: Pipeline, service: AggregationService, weight_bound: float,
                 audit_dir: Path | None = None) -> None:
        self.pipeline, self.service, self.weight_bound = pipeline, service, weight_bound
        self.audit_dir = audit_dir

    def collect(self, fedavg: FedAvg, state: ServerState, round_index: int, sampled: list[int]) -> Collected:
        r, invited = round_index, tuple(sampled)
        self.service.traffic.reset()
        if self.pipeline.mode == "secure" and len(invited) < 2:
            outcome = RoundOutcome(r, invited, aborted="secure aggregation needs at least 2 clients")
        else:
            try:
                outcome = self._exchange(r, invited, fedavg.broadcast(state), state)
            except AbortError as exc:  # e.g. fewer clients than distributed DP's noise is planned for
                outcome = RoundOutcome(r, invited, aborted=str(exc))
        sent, received = self.service.traffic.reset()
        rejected = sorted({c for c, _ in outcome.rejected})
        net = {"net/client_bytes_max": float(max((sent.get(u, 0) + received.get(u, 0) for u in invited),
                                                 default=0)),
               "net/server_bytes": float(sum(sent.values()) + sum(received.values())),
               "net/rejected": len(outcome.rejected)}
        try:
            collected = self._aggregate(fedavg, outcome, state, rejected, net)
        except (AbortError, RemoteProtocolError) as exc:
            # distributed DP with fewer survivors than its noise needs; combiners misreporting a count
            collected = Collected(None, rejected=rejected, aborted=str(exc), metrics=net)
        if collected.aborted is not None:
            log.warning("round %d aborted: %s", r, collected.aborted)
        return collected

    def _exchange(self, r: int, invited: tuple[int, ...], broadcast: dict[str, torch.Tensor],
                  state: ServerState) -> RoundOutcome:
        """Run round ``r`` with the clients until the coordinator reports an outcome: one secure session,
        or one per bucket (secure bucketing), or plain updates. ``broadcast``: what goes to every
        client (the global model, and SCAFFOLD's server controls beside it). The aggregator's
        ``state`` gives the round's public values (adaptive clipping's clip norm)."""
        model = safetensors.torch.save({k: v.contiguous() for k, v in broadcast.items()})
        try:
            server = self.pipeline.server(r, invited, weight_bound=self.weight_bound,
                                          model_version=hashlib.sha256(model).digest(),
                                          state=state.aggregator_state)
        except ConfigError as exc:  # this round's sample cannot be seated (a combiner below min_clients)
            raise AbortError(f"the round's clients cannot be seated: {exc}") from None
        return self.service.exchange_round(server, model)

    def _aggregate(self, fedavg: FedAvg, outcome: RoundOutcome, state: ServerState, rejected: list[int],
                   net: dict[str, Any]) -> Collected:
        if outcome.aborted is not None or outcome.server is None:
            return Collected(None, rejected=rejected, aborted=outcome.aborted or "the round produced nothing",
                             metrics=net)
        layout = fedavg.update_layout
        if self.pipeline.mode == "secure":
            self._audit_sum(outcome)
            for u, peers in sorted(outcome.server.refused.items()):
                log.warning("round %d: client %d refused the shares of %s (undecryptable or malformed)",
                            outcome.round, u, list(peers))
            if outcome.server.excluded:
                log.warning("round %d: clients %s taken out by the share check (too few holders could open "
                            "their shares)", outcome.round, list(outcome.server.excluded))
            for u, owners in sorted(outcome.server.wrong_shares.items()):
                log.warning("round %d: client %d sent wrong shares of %s (identified and left out)",
                            outcome.round, u, owners)
            # each session's reading of its sum (and the buckets' robust rule), then the server's part of
            # the client steps
            agg = outcome.server.finish(state.aggregator_state, layout)
            self._audit_aggregate(outcome.round, agg.update)
            return Collected(agg, outcome.server.summed, rejected, metrics=net)
        updates = outcome.updates
        batch = outcome.server.released(layout)  # the rows finish() aggregates, stacked once
        self._audit_plain(outcome.round, batch)
        # the clients ran their steps already: the server runs only its part (with its own root-data
        # update, for a rule that trusts one)
        agg = outcome.server.finish(state.aggregator_state, layout,
                                    reference=fedavg.root_update(state, outcome.round),
                                    global_model=fedavg.global_model(state))
        self._audit_aggregate(outcome.round, agg.update)
        loss = weighted_loss([updates[u].train_loss for u in batch.client_ids], batch.weights)
        return Collected(agg, len(batch.client_ids), rejected, loss, metrics=net)

    def _audit_plain(self, round_index: int, batch: UpdateBatch) -> None:
        """With ``audit_dir``: every row the server held in plain round ``round_index`` (as released by
        its client) and whose it was, so that an auditor can check what the server saw."""
        audit = self.audit_dir
        if audit is None:
            return
        audit.mkdir(parents=True, exist_ok=True)
        np.save(audit / f"round-{round_index}-updates.npy", batch.updates.to(torch.float32).numpy(),
                allow_pickle=False)
        (audit / f"round-{round_index}-updates.json").write_text(json.dumps(
            {"clients": list(batch.client_ids), "examples": batch.weights.tolist()}) + "\n")

    def _audit_aggregate(self, round_index: int, update: torch.Tensor) -> None:
        """With ``audit_dir``: the aggregate the server released in round ``round_index``."""
        audit = self.audit_dir
        if audit is not None:
            audit.mkdir(parents=True, exist_ok=True)
            np.save(audit / f"round-{round_index}-aggregate.npy",
                    update.detach().to(torch.float64).numpy(), allow_pickle=False)

    def _audit_sum(self, outcome: RoundOutcome) -> None:
        """With ``audit_dir``: a secure round's unmasked ring sum and who was invited, survived, dropped."""
        audit = self.audit_dir
        if audit is None or not outcome.sums:
            return
        audit.mkdir(parents=True, exist_ok=True)
        # one session: its ring sum; several (secure bucketing): one row per session, in "groups" order
        sums = (outcome.sums[0].result if len(outcome.sums) == 1
                else np.stack([one.result for one in outcome.sums]))
        np.save(audit / f"round-{outcome.round}-sum.npy", sums, allow_pickle=False)
        meta: dict[str, Any] = {"invited": list(outcome.invited), "survivors": list(outcome.survivors),
                                "dropped": list(outcome.dropped)}
        if isinstance(outcome.server, TopRound):  # a two-level round: the top sums the combiners' sums
            top = outcome.server
            meta = {"invited": list(top.invited),
                    "combiners": {str(j): list(m) for j, m in top.groups.items()},
                    "combiners_survived": list(outcome.survivors), "combiners_dropped": list(outcome.dropped),
                    "summed": top.summed, "seated": list(top.seated)}
        refused = outcome.server.refused if outcome.server is not None else {}
        if refused:  # who reported whose shares as undecryptable: the operator's lead on a bad client
            meta["refused"] = {str(u): list(peers) for u, peers in sorted(refused.items())}
        if outcome.server is not None and outcome.server.excluded:
            meta["excluded"] = list(outcome.server.excluded)
        wrong = outcome.server.wrong_shares if outcome.server is not None else {}
        if wrong:  # who sent a share that failed its owner's commitment (left out; the sum is exact)
            meta["wrong_shares"] = {str(u): owners for u, owners in sorted(wrong.items())}
        if len(outcome.sums) > 1:
            meta["groups"] = [list(one.params.client_ids) for one in outcome.sums]
            meta["group_survivors"] = [list(one.survivors) for one in outcome.sums]
        (audit / f"round-{outcome.round}.json").write_text(json.dumps(meta) + "\n")


class NetworkServer:
    """Serves ``config``'s training to remote clients whose Ed25519 keys are in ``registry``: the
    wiring of the gRPC service, the coordinator and :class:`NetworkSource` under the same round
    driver and run loop as the simulation (:meth:`FedAvg.run_round`, :func:`run_rounds`)."""

    def __init__(self, config: ExperimentConfig, registry: dict[int, bytes], options: ServeOptions,
                 out_dir: str | Path, *, resume: bool = False, task_factory: TaskFactory | None = None
                 ) -> None:
        if config.fedavg.adversary is not None:
            raise ConfigError("adversary: attacks run in simulation (secagg train/bench), not in a "
                              "deployment")
        combiners = place(config.fedavg.aggregator).combiners
        #: who logs in here: the clients, or with a two-level sum the combiners (``secagg serve --combiner``)
        self.parties = int(combiners.combiners) if combiners is not None else config.task.num_clients
        missing = sorted(set(range(self.parties)) - set(registry))
        if missing:
            who = "combiners" if combiners is not None else "clients"
            raise ConfigError(f"registry: has no key for {who} {missing[:10]} of the run's {self.parties}"
                              + (" (a two-level sum's top server logs in its combiners: give their "
                                 "registry)" if combiners is not None else ""))
        self.config, self.options, self.out = config, options, Path(out_dir)
        task = make_task(config.task, seed=config.seed, factory=task_factory)
        dim = config.fedavg.update_layout(task.model).dim
        # placed once, here (ConfigError for an aggregator that cannot be deployed)
        self.pipeline = Pipeline(config.fedavg.aggregator, dim, registry, seed=config.seed)
        self.placement = self.pipeline.placement
        self.mode = self.placement.mode
        log.info("placement: %s", self.placement.describe())
        self.lock = threading.Condition()
        self.coordinator = Coordinator(self.mode, options.task_seconds, options.stage_seconds,
                                       options.grace_seconds, options.task_grace_seconds,
                                       options.liveness_seconds)
        self.service = AggregationService(self.coordinator, Authenticator(registry),
                                          json.dumps(config.to_dict()), self.lock)
        examples = {i: len(part) for i, part in enumerate(task.data.partition)}
        self.source = NetworkSource(self.pipeline, self.service, weight_bound(config, examples),
                                    options.audit_dir)
        # a deployment's sample must be secret: the amplified epsilon assumes nobody can predict it
        self.fedavg = FedAvg(config.fedavg, task.model, task.data, seed=config.seed, secret_sampling=True,
                             source=self.source)
        self.state, self.history = self.fedavg.initial_state(), []
        ckpt = self.out / CHECKPOINT
        if resume and ckpt.exists():
            self.state, self.history = load_run(ckpt, config, self.fedavg)
            log.info("resumed from %s at round %d", ckpt, self.state.round)
        elif resume:
            log.info("no checkpoint in %s yet: starting at round 0", self.out)
        self.coordinator.round = self.state.round
        self._grpc = None
        self.port = 0
        self._max_message = message_limit(dim)

    def start(self) -> int:
        """Start listening; return the port."""
        tls = (self.options.tls.server_cert, self.options.tls.server_key) if self.options.tls else None
        self._grpc, self.port = start_grpc_server(self.service, self.options.address, tls=tls,
                                                  max_message_bytes=self._max_message,
                                                  max_workers=self.parties + 16)
        return self.port

    def stop(self) -> None:
        if self._grpc is not None:
            self._grpc.stop(grace=1.0).wait()
            self._grpc = None

    def run(self, on_round: Callable[[dict[str, Any]], None] | None = None) -> ExperimentResult:
        """Train to ``config.fedavg.rounds`` (or a privacy budget), then tell clients to stop."""
        if self._grpc is None:
            self.start()
        stopped = None
        try:
            self._wait_for_clients()
            self.state, stopped = run_rounds(self.fedavg, self.config, self.state, self.history, self.out,
                                             on_round)
            with self.lock:
                self.coordinator.finish()
                self.lock.notify_all()
            time.sleep(self.options.linger_seconds)
        finally:
            self.stop()
        return ExperimentResult(self.config, self.history, self.state, self.fedavg, stopped)

    def _wait_for_clients(self) -> None:
        """Block until ``wait_clients`` clients have logged in (or ``wait_seconds`` passed)."""
        want = self.options.wait_clients
        if want is None and self.placement.combiners is not None:
            want = self.parties
        if want is None:
            want = self.config.fedavg.clients_per_round(self.config.task.num_clients)
        have = self.service.wait_for_logins(want, self.options.wait_seconds)
        log.info("%d of %d wanted clients logged in; starting", have, want)
