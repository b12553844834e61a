"""A combiner process of a two-level deployment: a client of the top server, a server for its own clients.

``secagg serve --combiner J --top HOST:PORT`` logs in to the top server with combiner ``J``'s Ed25519
identity (the top's registry holds the combiners' keys) and takes the run's configuration from it,
then listens for its own clients (``c mod m == J``, from its own registry) and serves them the same
configuration; they run the ordinary ``secagg client``. Each round the top samples it in:

1. the top's first message names the round's clients under this combiner and the round's client
   count (checked: :meth:`secagg.two_level.CombinerRound.open`);
2. the combiner runs one secure-aggregation session over those clients with the same gRPC
   coordinator as a one-level server (deadlines, stragglers, dropouts; the global model passed on
   as the top sent it, its hash as the session's model version), and learns only their sum;
3. it joins the top session with ``[sum, survivors]`` as its input and answers the top's later
   messages like any client. A session of its own that aborts (below its threshold) means this
   combiner sits the top session out; the top's protocol handles that as a dropout.

When the top says training is over, the combiner tells its clients so and exits. With
``audit_dir`` it writes, each round, its session's unmasked sum and who it covers
(``combiner-J-round-R-sum.npy``, ``combiner-J-round-R.json``: invited, survivors, dropped, bytes and
seconds), so an auditor can check the chain client inputs -> combiner sums -> top sum.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from secagg.backend import Pipeline
from secagg.crypto.keys import SigningKey
from secagg.errors import ConfigError, RemoteProtocolError
from secagg.experiment import ExperimentConfig
from secagg.placement import place
from secagg.task import TaskFactory, make_task
from secagg.transport.auth import Authenticator
from secagg.transport.coordinator import Coordinator, RoundOutcome
from secagg.transport.envelope import Poll, Work, encode_poll
from secagg.transport.node import ClientFault, NetworkClient
from secagg.transport.serve import ServeOptions
from secagg.transport.service import (
    SERVICE,
    TOKEN_METADATA,
    AggregationService,
    message_limit,
    start_grpc_server,
)

log = logging.getLogger("secagg.combiner")

#: how often a combiner polls the top while its own session runs (the top's --liveness is several times it)
HEARTBEAT_SECONDS = 5.0

__all__ = ["NetworkCombiner"]


class NetworkCombiner(NetworkClient):
    """Combiner ``combiner_id`` under the top server at ``top_address`` (see the module docstring).

    ``identity``: the combiner's Ed25519 key (the top's registry holds its public half);
    ``clients``: its clients' public keys (the deployment's client registry: the entries of other
    combiners are ignored); ``options``: where and how it serves them (as ``secagg serve``'s);
    ``registry``: the combiners' public keys, for a malicious-mode top session; ``ca_cert``,
    ``server_name``: the top's TLS, as a client's; ``fault``: inject a failure towards the top (a
    killed combiner, for drills and tests); ``on_listen``: called with the port once it serves.
    """

    def __init__(self, top_address: str, combiner_id: int, identity: SigningKey, clients: dict[int, bytes],
                 options: ServeOptions, *, ca_cert: bytes | None = None,
                 registry: dict[int, bytes] | None = None, server_name: str | None = None,
                 fault: ClientFault | None = None, give_up_seconds: float = 300.0,
                 task_factory: TaskFactory | None = None,
                 on_listen: Callable[[int], None] | None = None) -> None:
        super().__init__(top_address, combiner_id, identity, ca_cert=ca_cert, registry=registry, fault=fault,
                         give_up_seconds=give_up_seconds, server_name=server_name, task_factory=task_factory)
        self.clients, self.options, self.on_listen = dict(clients), options, on_listen
        self.role = "combiner"
        self.port = 0
        self.lock = threading.Condition()
        self.coordinator = Coordinator("secure", options.task_seconds, options.stage_seconds,
                                       options.grace_seconds, options.task_grace_seconds)
        self.service: AggregationService | None = None
        self._grpc: Any = None
        self._level1: Pipeline | None = None  # its clients' side: the clients' registry

    def _setup(self, config_json: str) -> None:
        """The top's run configuration: build both pipelines and start serving this combiner's clients."""
        config = ExperimentConfig.from_json(config_json)
        placement = place(config.fedavg.aggregator)
        hier = placement.combiners
        if hier is None:
            raise RemoteProtocolError("the top server's configuration has no two-level secure sum "
                                      "(--combiners): it has no place for a combiner")
        m = int(hier.combiners)
        if not 0 <= self.id < m:
            raise ConfigError(f"--combiner: {self.id} is not one of the run's {m} combiners (0..{m - 1})")
        own = {u: key for u, key in self.clients.items() if hier.combiner_of(u) == self.id}
        if not own:
            raise ConfigError(f"registry: holds none of combiner {self.id}'s clients (client c belongs to "
                              f"combiner c mod {m})")
        task = make_task(config.task, seed=config.seed, factory=self.task_factory)  # the model's size
        self._config, self._layout = config, config.fedavg.update_layout(task.model)
        dim = self._layout.dim
        self._pipeline = Pipeline(config.fedavg.aggregator, dim, registry=self.registry, seed=config.seed)
        self._placement = self._pipeline.placement
        self._level1 = Pipeline(config.fedavg.aggregator, dim, registry=own, seed=config.seed)
        self._limit = message_limit(dim)
        self._connect()
        self.service = AggregationService(self.coordinator, Authenticator(own), config_json, self.lock)
        tls = (self.options.tls.server_cert, self.options.tls.server_key) if self.options.tls else None
        self._grpc, self.port = start_grpc_server(self.service, self.options.address, tls=tls,
                                                  max_message_bytes=self._limit, max_workers=len(own) + 16)
        log.info("combiner %d: serving its %d clients on port %d", self.id, len(own), self.port)
        if self.on_listen is not None:
            self.on_listen(self.port)

    def run(self) -> int:
        """Take part until the top says training is over (then tell this combiner's clients); return the
        rounds this combiner completed."""
        try:
            return super().run()
        finally:
            self._shutdown()

    def _shutdown(self) -> None:
        if self._grpc is None:
            return
        with self.lock:
            self.coordinator.finish()
            self.lock.notify_all()
        time.sleep(self.options.linger_seconds)
        self._grpc.stop(grace=1.0).wait()
        self._grpc = None

    def _start_round(self, work: Work) -> None:
        """The top's first message: this combiner's session over its clients, then its answer to the top."""
        self._round, self._session_round = None, work.round
        assert self._pipeline is not None and self._level1 is not None and self.service is not None
        if work.round <= self.coordinator.round:
            # a restarted top replays a round this combiner's clients already took part in: their
            # positions are past it, so it cannot be run again; the top's protocol counts a dropout
            log.warning("combiner %d: the top replays round %d, which this combiner already ran; sitting "
                        "it out", self.id, work.round)
            return
        version = hashlib.sha256(work.model).digest()
        top = self._pipeline.combiner(self.id, identity=self.identity, model_version=version)
        members, planned = top.open(work)
        level1 = self._level1.combiner_server(work.round, members, planned=planned,
                                              weight_bound=work.weight_bound, public=work.public,
                                              model_version=version)
        started = time.monotonic()
        self.service.traffic.reset()
        stop = threading.Event()
        beat = threading.Thread(target=self._heartbeat, args=(work.round, stop), daemon=True)
        beat.start()
        try:
            outcome = self.service.exchange_round(level1, work.model)
        finally:
            stop.set()
            beat.join()
        sent, received = self.service.traffic.reset()
        self._audit_round(outcome, sent, received, time.monotonic() - started)
        if outcome.aborted is not None:
            log.warning("combiner %d: round %d: its clients' session aborted (%s); sitting the top "
                        "session out", self.id, work.round, outcome.aborted)
            return
        (summed,) = outcome.sums
        log.info("combiner %d: round %d: summed %d of %d clients", self.id, work.round,
                 len(summed.survivors), len(members))
        reply = top.answer(summed.result, len(summed.survivors))
        self._round = top
        assert top.reply_stage is not None
        self._send(work.round, top.reply_stage, reply)

    def _heartbeat(self, round_index: int, stop: threading.Event) -> None:
        """While this combiner's own session runs: poll the top every ``HEARTBEAT_SECONDS`` (answered at
        once, whatever it holds), so that its liveness check knows this combiner is at work."""
        poll = encode_poll(Poll(round_index, 0, 0))
        while not stop.wait(HEARTBEAT_SECONDS):
            channel = self._channel
            if channel is None:
                continue
            try:  # one try, no retries: a missed beat is the top's to judge, the main loop reconnects
                channel.unary_unary(f"/{SERVICE}/Poll")(poll, timeout=HEARTBEAT_SECONDS,
                                                        metadata=((TOKEN_METADATA, self._token),))
            except grpc.RpcError:
                continue

    def _audit_round(self, outcome: RoundOutcome, sent: dict[int, int], received: dict[int, int],
                     seconds: float) -> None:
        """With ``audit_dir``: this combiner's session sum of the round and who and what it covers."""
        audit = self.options.audit_dir
        if audit is None:
            return
        audit.mkdir(parents=True, exist_ok=True)
        stem = Path(audit) / f"combiner-{self.id}-round-{outcome.round}"
        traffic = {u: sent.get(u, 0) + received.get(u, 0) for u in outcome.invited}
        meta = {"invited": list(outcome.invited), "survivors": list(outcome.survivors),
                "dropped": list(outcome.dropped), "aborted": outcome.aborted, "seconds": seconds,
                "client_bytes": {str(u): b for u, b in traffic.items()},
                "server_bytes": sum(sent.values()) + sum(received.values())}
        if outcome.sums:
            np.save(f"{stem}-sum.npy", outcome.sums[0].result, allow_pickle=False)
        Path(f"{stem}.json").write_text(json.dumps(meta) + "\n")
