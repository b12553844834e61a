"""A federated client process: logs in, trains on its own shard, and runs the SecAgg client over gRPC.

The loop is: log in (Ed25519 challenge, see :mod:`secagg.transport.auth`), then long-poll for work.
A TASK carries the global weights: the client trains exactly as the in-process simulation would
(same trainer, same seed ``derive_seed(seed, "client", round, id)``), then either quantizes its update
and answers the session's Setup (secure mode) or sends the update itself (plain mode). Each later
PROTOCOL item goes through the unchanged :class:`secagg.protocol.Client` state machine.

Resilience: an unreachable server (restart, network loss) is retried with backoff for up to
``give_up_seconds``; a forgotten token (the server restarted) means logging in again; a refused
message is logged and the client waits for the next round. In secure mode the client checks that the
session's model version is the SHA-256 of the weights it was sent, so a server cannot show different
models to different clients within one session.

``fault`` injects a failure for tests and drills: ``kill`` (SIGKILL itself just before sending its
reply for a stage), ``hang`` (stop answering, stay connected), ``reconnect`` (drop the connection,
come back a second later, without sending that reply).
"""

from __future__ import annotations

import hashlib
import logging
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import safetensors.torch
import torch

from secagg.backend import ClientRound, Pipeline
from secagg.checkpoint import load_checkpoint, save_checkpoint
from secagg.crypto.keys import SigningKey
from secagg.errors import ConfigError, ProtocolError, RemoteProtocolError, UpdateError, WireError
from secagg.experiment import ExperimentConfig
from secagg.fedavg.client import ClientUpdate
from secagg.placement import Placement, place
from secagg.protocol.messages import Stage
from secagg.seeding import derive_seed
from secagg.task import TaskFactory, make_task
from secagg.transport.auth import login_message
from secagg.transport.envelope import (
    UPDATE_STAGE,
    Hello,
    Login,
    Poll,
    Submit,
    Work,
    WorkKind,
    decode_challenge,
    decode_welcome,
    decode_work,
    encode_hello,
    encode_login,
    encode_poll,
    encode_submit,
)
from secagg.transport.service import ENVELOPE_SLACK, SERVICE, TOKEN_METADATA, message_limit

FAULT_KINDS = ("kill", "hang", "reconnect")
_RETRY = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)

log = logging.getLogger("secagg.client")


@dataclass(frozen=True)
class ClientFault:
    """Fail in round ``round`` just before sending the reply for ``stage`` (a Stage value, or 100 for a
    plain update). Parsed from ``KIND@ROUND:STAGE``, e.g. ``kill@2:MASKED_INPUT``."""

    kind: str
    round: int
    stage: int

    @classmethod
    def parse(cls, text: str) -> ClientFault:
        try:
            kind, rest = text.split("@", 1)
            round_text, stage_text = rest.split(":", 1)
            stage = UPDATE_STAGE if stage_text.upper() == "UPDATE" else int(Stage[stage_text.upper()])
            fault = cls(kind, int(round_text), stage)
        except (ValueError, KeyError):
            raise ConfigError(f"fault: expected KIND@ROUND:STAGE (e.g. kill@2:MASKED_INPUT), got {text!r}; "
                              f"stages: {', '.join(s.name for s in Stage)}, UPDATE") from None
        if fault.kind not in FAULT_KINDS:
            raise ConfigError(f"fault: kind must be one of {', '.join(FAULT_KINDS)}, got {kind!r}")
        return fault


class ServerGone(ConnectionError):
    """The server stayed unreachable for longer than the client's patience."""


def check_local_noise(config: ExperimentConfig, minimum: float | None) -> None:
    """A client's own floor on local DP: :class:`ConfigError` unless one of ``config``'s client steps
    adds noise with ``noise_multiplier >= minimum`` (nothing to check for ``None``). Local DP's epsilon
    per round depends on the noise multiplier only, so the floor holds whatever clip the server sets."""
    if minimum is None:
        return
    steps = place(config.fedavg.aggregator).client_steps
    zs = [float(getattr(step, "noise_multiplier", 0.0)) for step in steps]
    if not zs or max(zs) < minimum:
        raise ConfigError(f"--min-local-noise: this client requires local DP noise with noise multiplier >= "
                          f"{minimum:g} on the client, but the server's configuration adds "
                          + (f"at most {max(zs):g}" if zs else "none") + ": not taking part")


class NetworkClient:
    """Client ``client_id`` of a deployment at ``address`` ("host:port").

    ``identity``: its Ed25519 key (the server's registry holds the public half). ``ca_cert``: PEM of
    the CA that signed the server certificate (``None``: plaintext, loopback/trusted networks only).
    ``registry``: every client's public key, needed to take part in malicious-mode sessions (a client
    must not take these from the server). ``shard``: which data partition to train on (default: its
    id). ``audit_dir``: write each round's quantized session input there (``client-ID-round-R.npy``),
    so an operator can check the server's sums, and each round's update before and after the client
    steps (``client-ID-round-R-update.npy``, ``-released.npy``). ``min_local_noise``: this client's
    own privacy floor: refuse any run whose configuration does not add local DP noise with noise
    multiplier >= this on the client (``None``: take the server's configuration as it is).
    ``task_factory``: this client's own model and data (:mod:`secagg.task`; default: the bundled task).
    ``state_file``: where this client keeps what it carries between rounds when the run needs it
    (FedBN's BatchNorm layers, SCAFFOLD's control variate ``c_i``), as a checkpoint file written
    after each round it completes and read back when it starts, so that a restarted client goes on
    from its own state (``None``: in memory only, lost when the process ends). Nothing of it is ever
    sent: only its change to ``c_i`` goes into the secure sum, masked like the update.

    The client derives what it sends from the configuration (:func:`secagg.placement.place`), not
    from what the server says: a server announcing plain mode for a configuration that places a
    secure sum is refused (:class:`ProtocolError`), so it cannot obtain updates meant to be masked.
    """

    def __init__(self, address: str, client_id: int, identity: SigningKey, *, ca_cert: bytes | None = None,
                 registry: dict[int, bytes] | None = None, shard: int | None = None,
                 audit_dir: str | Path | None = None, fault: ClientFault | None = None,
                 give_up_seconds: float = 300.0, poll_seconds: float = 5.0,
                 server_name: str | None = None, min_local_noise: float | None = None,
                 task_factory: TaskFactory | None = None, state_file: str | Path | None = None) -> None:
        self.address, self.id, self.identity = address, client_id, identity
        self.ca_cert, self.registry = ca_cert, registry
        self.shard = client_id if shard is None else shard
        self.audit_dir = Path(audit_dir) if audit_dir is not None else None
        self.fault = fault
        self.give_up_seconds, self.poll_seconds = give_up_seconds, poll_seconds
        self.server_name = server_name
        self.min_local_noise = min_local_noise
        self.task_factory = task_factory
        self.state_file = Path(state_file) if state_file is not None else None
        self.local_state: dict[str, torch.Tensor] = {}  # kept between rounds (FedBN, SCAFFOLD)
        self._pending_state: dict[str, torch.Tensor] | None = None  # this round's, kept once it completes
        self.rounds_done = 0
        self.role = "client"  # in log lines (a combiner is the top server's client)
        self._channel: grpc.Channel | None = None
        self._limit = 2 * ENVELOPE_SLACK
        self._token = b""
        self._config: ExperimentConfig | None = None
        self._ready = False  # _setup ran (after the first login)
        self._mode = ""
        self._placement: Placement | None = None  # from the configuration, once (see _setup)
        self._pipeline: Pipeline | None = None  # the placed pipeline's client side (see _setup)
        self._round: ClientRound | None = None  # the open round's
        self._session_round = -1
        self._last_stage = -1

    # -- connection -------------------------------------------------------------------------------

    def _connect(self) -> None:
        if self._channel is not None:
            self._channel.close()
        options = [("grpc.max_receive_message_length", self._limit),
                   ("grpc.max_send_message_length", self._limit)]
        if self.server_name is not None:
            options.append(("grpc.ssl_target_name_override", self.server_name))
        if self.ca_cert is not None:
            creds = grpc.ssl_channel_credentials(root_certificates=self.ca_cert)
            self._channel = grpc.secure_channel(self.address, creds, options=options)
        else:
            self._channel = grpc.insecure_channel(self.address, options=options)

    def close(self) -> None:
        if self._channel is not None:
            self._channel.close()
            self._channel = None

    def _call(self, method: str, request: bytes, *, auth: bool = True, timeout: float = 30.0) -> bytes:
        """One RPC, retried while the server is unreachable (up to ``give_up_seconds``)."""
        started, delay = time.monotonic(), 0.2
        while True:
            if self._channel is None:
                self._connect()
            assert self._channel is not None
            stub = self._channel.unary_unary(f"/{SERVICE}/{method}")
            metadata = ((TOKEN_METADATA, self._token),) if auth else None
            try:
                return stub(request, timeout=timeout, metadata=metadata)
            except grpc.RpcError as exc:
                if exc.code() not in _RETRY:
                    raise
                if time.monotonic() - started > self.give_up_seconds:
                    raise ServerGone(f"client {self.id}: server {self.address} unreachable for "
                                     f"{self.give_up_seconds:g} s") from None
                time.sleep(delay)
                delay = min(2 * delay, 2.0)

    def _login(self) -> None:
        challenge = decode_challenge(self._call("Hello", encode_hello(Hello(self.id)), auth=False))
        signature = self.identity.sign(login_message(challenge.nonce, self.id))
        welcome = decode_welcome(self._call("Login", encode_login(Login(self.id, challenge.nonce, signature)),
                                            auth=False))
        if not self._ready:
            self._setup(welcome.config)
            self._ready = True
        # (no placement: a synthetic benchmark client that sends no updates)
        placed = welcome.mode if self._placement is None else self._placement.mode
        if welcome.mode != placed:
            raise RemoteProtocolError(f"the server announced {welcome.mode!r} mode, but its configuration "
                                      f"places {placed!r}: refusing to send updates under the wrong mode")
        self._token, self._mode = welcome.token, welcome.mode
        log.info("%s %d: logged in (%s mode)", self.role, self.id, self._mode)

    def _setup(self, config_json: str) -> None:
        """Build the task, model and data shard from the server's run configuration (JSON)."""
        config = ExperimentConfig.from_json(config_json)
        check_local_noise(config, self.min_local_noise)
        task = make_task(config.task, seed=config.seed, factory=self.task_factory)
        if not 0 <= self.shard < task.data.num_clients:
            raise ConfigError(f"shard: {self.shard} is not a partition of this task "
                              f"(0..{task.data.num_clients - 1})")
        self._config, self._model = config, task.model
        self._data = task.data.client(self.shard)
        self._layout = config.fedavg.update_layout(task.model)
        self.local_state = self._load_state()
        self._pipeline = Pipeline(config.fedavg.aggregator, self._layout.dim, registry=self.registry,
                                  seed=config.seed)
        self._placement = self._pipeline.placement  # placed once, shared with the round objects
        self._limit = message_limit(self._layout.dim)
        self._connect()  # again, with the size limit this model needs

    # -- the loop ---------------------------------------------------------------------------------

    def run(self) -> int:
        """Take part until the server says training is over; return the rounds this client completed."""
        self._login()
        position = (0, 0)
        while True:
            try:
                poll = encode_poll(Poll(*position, int(self.poll_seconds * 1000)))
                work = decode_work(self._call("Poll", poll, timeout=self.poll_seconds + 30.0))
            except grpc.RpcError as exc:
                if exc.code() != grpc.StatusCode.UNAUTHENTICATED:
                    raise
                log.info("%s %d: %s; logging in again", self.role, self.id, exc.details())
                self._login()
                position = (0, 0)  # a restarted server replays its current round from the start
                continue
            if work.kind is WorkKind.DONE:
                log.info("%s %d: training finished after %d rounds", self.role, self.id, self.rounds_done)
                self.close()
                return self.rounds_done
            if work.kind is WorkKind.WAIT:
                continue
            position = (work.round, work.step)
            try:
                if work.kind is WorkKind.TASK:
                    self._start_round(work)
                else:
                    self._continue_round(work)
            except (ProtocolError, UpdateError, WireError, ConfigError) as exc:
                log.warning("%s %d: round %d: %s; sitting this round out", self.role, self.id, work.round,
                            exc)
                self._round = None

    def _start_round(self, work: Work) -> None:
        """A TASK: train on its global model, then answer it through this round's
        :class:`~secagg.backend.ClientRound` (the placed pipeline's client side, as any other FL
        system drives it): the released update in plain mode, the session's first message in secure
        mode (after checking that the session's model version is the hash of the model sent)."""
        self._round, self._session_round = None, work.round
        assert self._pipeline is not None
        update = self.train(work)
        round_ = self._pipeline.client(self.id, update.delta, update.num_examples,
                                       train_loss=update.train_loss, identity=self.identity,
                                       model_version=hashlib.sha256(work.model).digest())
        try:  # (malicious mode without --registry: a ConfigError naming the registry)
            reply = round_.start(work)
        finally:
            self._audit(work.round, update.delta, round_)
        assert round_.reply_stage is not None
        self._pending_state = update.local_state
        if round_.reply_stage == UPDATE_STAGE:
            self._send(work.round, UPDATE_STAGE, reply)
            self._completed(work.round)
            return
        self._round = round_
        self._send(work.round, round_.reply_stage, reply)

    def train(self, work: Work) -> ClientUpdate:
        """Local training on the TASK's global model, as the in-process simulation would do it; a model
        that is not the configured one is the server's fault (:class:`RemoteProtocolError`)."""
        config = self._config
        assert config is not None
        try:
            model = safetensors.torch.load(work.model)
        except safetensors.SafetensorError as exc:
            raise RemoteProtocolError(f"Work.model: not a safetensors state dict ({exc})") from None
        expected = self._model.state_dict()
        controls = set(self._layout.control_names)  # SCAFFOLD's server controls come with the model
        if set(model) != set(expected) | controls or any(
                model[k].shape != v.shape or model[k].dtype != v.dtype for k, v in expected.items()):
            raise RemoteProtocolError("Work.model: the server sent a model that does not fit the configured "
                                      "model (other tensor names, shapes or dtypes)")
        trainer = config.fedavg.trainer
        extra = {"local_state": self.local_state} if trainer.keeps_client_state else {}
        return trainer.train(self._model, model, self._data, config.fedavg.client, self._layout,
                             seed=derive_seed(config.seed, "client", work.round, self.shard),
                             client_id=self.id, **extra)

    def _audit(self, round_index: int, delta: torch.Tensor, round_: ClientRound) -> None:
        """With ``audit_dir``, on this client's own disk: its update before and after its client steps
        (``client-U-round-R-update.npy``, ``-released.npy``) and its secure-sum input
        (``client-U-round-R.npy``), as far as the round got."""
        if self.audit_dir is None:
            return
        self.audit_dir.mkdir(parents=True, exist_ok=True)
        stem = self.audit_dir / f"client-{self.id}-round-{round_index}"
        if round_.released is not None:
            np.save(f"{stem}-update.npy", delta.to(torch.float32).numpy(), allow_pickle=False)
            np.save(f"{stem}-released.npy", round_.released.to(torch.float32).numpy(), allow_pickle=False)
        if round_.session_input is not None:
            np.save(f"{stem}.npy", round_.session_input, allow_pickle=False)

    def _continue_round(self, work: Work) -> None:
        if self._round is None or work.round != self._session_round:
            return  # a round this client is not (or no longer) part of
        reply = self._round.handle(work.message)
        stage = self._round.reply_stage
        assert stage is not None
        self._send(work.round, stage, reply)
        if stage == int(Stage.UNMASKING):
            self._completed(work.round)

    def _completed(self, round_index: int) -> None:
        """This client's part of round ``round_index`` is done: count it, and keep the state it
        trained (FedBN, SCAFFOLD) from now on, on disk too with ``state_file``. A round left before
        its end keeps the previous state, as the server's controls never saw this one's change."""
        self.rounds_done += 1
        if self._pending_state:
            self.local_state, self._pending_state = self._pending_state, None
            if self.state_file is not None:
                save_checkpoint(self.state_file, self.local_state,
                                {"client": self.id, "round": round_index, "layout": self._layout.to_dict()})

    def _load_state(self) -> dict[str, torch.Tensor]:
        """The state ``state_file`` holds (``{}`` without one, or before this client's first round);
        :class:`ConfigError` when it was written by another client or for another layout."""
        if self.state_file is None or not self.state_file.exists():
            return {}
        tensors, meta = load_checkpoint(self.state_file)
        if meta.get("client") != self.id or meta.get("layout") != self._layout.to_dict():
            raise ConfigError(f"state_file: {self.state_file} was written by client {meta.get('client')} "
                              f"for another model or algorithm, not by client {self.id} for this run")
        return tensors

    def _send(self, round_index: int, stage: int, payload: bytes) -> None:
        fault = self.fault
        if fault is not None and (fault.round, fault.stage) == (round_index, stage):
            log.warning("%s %d: injected fault %s in round %d", self.role, self.id, fault.kind, round_index)
            if fault.kind == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            if fault.kind == "hang":
                while True:
                    time.sleep(3600)
            self.close()  # reconnect: drop the connection, skip this reply, come back
            time.sleep(1.0)
            self._connect()
            return
        try:
            self._call("Submit", encode_submit(Submit(round_index, stage, payload)))
        except grpc.RpcError as exc:
            log.warning("%s %d: round %d stage %d refused: %s", self.role, self.id, round_index, stage,
                        exc.details())
            self._round = None
