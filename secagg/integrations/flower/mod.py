"""The client half: a Flower client mod that runs this library's client steps and secure session.

Install it on the ``ClientApp`` (``ClientApp(mods=[secagg_mod(aggregator)])``); the user's
``@app.train()`` function stays a plain Flower training function (arrays in, trained arrays and a
``MetricRecord`` with ``"num-examples"`` out). For a message of :class:`SecAggStrategy` the mod:

1. (``hello``) answers the node's client id (``node_config["partition-id"]`` by default);
2. (``task``) runs the training function, turns its reply into the update (trained minus global
   arrays), applies the configuration's client steps (clipping, local or distributed DP noise,
   quantization) and either sends the released update (plain mode) or joins the round's secure
   session (secure mode: only masked words leave the node; the training reply's arrays and metrics
   are dropped here);
3. (``protocol``) answers the next secure-aggregation message.

The configuration (the aggregator, the run's public seed, the malicious-mode identity and registry)
is the client operator's, never the server's: a server that opens a session this pipeline does not
fit, or asks for both shares of one peer, gets a refusal (an error reply), and the round aborts or
goes on without this client. Flower runs each message in a fresh process, so the session's state
lives between messages in the node's ``Context.state`` as this library's explicit snapshot
(:meth:`~secagg.backend.ClientRound.suspend`; secrets included, so it never leaves the node; no
pickle). A message without the integration's record is passed to the app unchanged only when the
configuration has nothing to hide (plain mode, no client steps); otherwise it is refused.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from typing import Any

import torch

from secagg.aggregation import Aggregator
from secagg.backend import ClientRound, Pipeline
from secagg.crypto.keys import SigningKey
from secagg.errors import ConfigError, ProtocolError, RemoteProtocolError, SecAggError, UpdateError
from secagg.integrations.flower.arrays import ArraysLayout, fingerprint, local_names
from secagg.integrations.flower.compat import flwr_version
from secagg.integrations.flower.records import HELLO, PROTOCOL, RECORD, REFUSED, STATE, TASK, pack, unpack
from secagg.transport.envelope import decode_work
from secagg.validation import check_int

flwr_version()

from flwr.app import ArrayRecord, ConfigRecord, Context, Error, Message, MetricRecord, RecordDict  # noqa: E402

__all__ = ["SecAggMod", "secagg_mod"]

Identity = SigningKey | Callable[[Context], SigningKey] | None


class SecAggMod:
    """The mod (a callable ``(message, context, call_next) -> reply``); build it with :func:`secagg_mod`."""

    def __init__(self, aggregator: Aggregator, *, seed: int = 0, client_id: int | None = None,
                 client_id_key: str = "partition-id", identity: Identity = None,
                 registry: Mapping[int, bytes] | None = None, weighted_by_key: str = "num-examples",
                 arrayrecord_key: str = "arrays", local_arrays: Collection[str] = ()) -> None:
        if not isinstance(aggregator, Aggregator):
            raise ConfigError(f"aggregator: expected one of this library's Aggregators, got "
                              f"{type(aggregator).__name__}")
        self.aggregator = aggregator
        self.seed = check_int("seed", seed, minimum=0)
        self.client_id = None if client_id is None else check_int("client_id", client_id, minimum=0,
                                                                   maximum=2**31 - 1)
        self.client_id_key, self.identity, self.registry = client_id_key, identity, registry
        self.weighted_by_key, self.arrayrecord_key = weighted_by_key, arrayrecord_key
        self.local_arrays = local_names(local_arrays)
        self._probe = Pipeline(aggregator, 1, registry=registry, seed=seed)  # refuses an unplaceable rule
        if self._probe.placement.combiners is not None:
            raise ConfigError(f"aggregator: {aggregator.kind!r} sums in two levels through combiner "
                              "processes ('secagg serve --combiner'); Flower has one server: use SecureSum")
        if identity is not None and registry is None:
            raise ConfigError("registry: a client with an identity key needs the operator's registry of "
                              "every client's public key (malicious-server mode)")

    def pipeline(self, dim: int) -> Pipeline:
        return Pipeline(self.aggregator, dim, registry=self.registry, seed=self.seed)

    def __call__(self, msg: Message, context: Context, call_next: Callable[[Message, Context], Message]
                 ) -> Message:
        if msg.metadata.message_type.split(".")[0] != "train":
            return call_next(msg, context)
        try:
            fields = unpack(msg.content, who="server")
            if fields is None:
                placement = self._probe.placement
                if placement.mode == "plain" and not placement.client_steps:
                    return call_next(msg, context)  # nothing to hide: a plain Flower round
                raise RemoteProtocolError(
                    f"the server sent a plain Flower training message, but this client's configuration "
                    f"({placement.describe()}) must not release its update that way")
            if fields["stage"] == HELLO:
                cid = self._client_id(context)
                return Message(RecordDict({RECORD: pack(HELLO, 0, **{"client-id": cid})}), reply_to=msg)
            if fields["stage"] == TASK:
                return self._task(msg, context, fields, call_next)
            return self._protocol(msg, context, fields)
        except SecAggError as exc:
            context.state.pop(STATE, None)  # a refused session is over for this client: forget it
            kind = "refused" if isinstance(exc, ProtocolError) else "failed"
            return Message(Error(code=REFUSED, reason=f"secagg: client {kind}: {exc}"), reply_to=msg)

    def _client_id(self, context: Context) -> int:
        if self.client_id is not None:
            return self.client_id
        value = context.node_config.get(self.client_id_key)
        if isinstance(value, str) and value.isdigit():
            value = int(value)
        if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 2**31:
            raise ConfigError(f"client_id: give secagg_mod a client_id, or set node_config"
                              f"[{self.client_id_key!r}] to an int in [0, 2^31) (got {value!r})")
        return value

    def _identity(self, context: Context) -> SigningKey | None:
        return self.identity(context) if callable(self.identity) else self.identity

    def _task(self, msg: Message, context: Context, fields: dict[str, Any],
              call_next: Callable[[Message, Context], Message]) -> Message:
        if fields.get("seed") != self.seed:
            raise RemoteProtocolError(f"the server's run seed {fields.get('seed')!r} is not this client's "
                                      f"({self.seed}): the public rotation and groups would differ")
        work = decode_work(fields["data"])
        arrays = msg.content.get(self.arrayrecord_key)
        if not isinstance(arrays, ArrayRecord):
            raise RemoteProtocolError(f"the round's first message carries no ArrayRecord "
                                      f"{self.arrayrecord_key!r}")
        layout = ArraysLayout.of(arrays, self.local_arrays)
        cid = self._client_id(context)
        context.state.pop(STATE, None)  # a new round: whatever the last one left is void
        reply = call_next(msg, context)  # the user's own training
        if reply.has_error():
            return reply
        trained = reply.content.get(self.arrayrecord_key)
        if not isinstance(trained, ArrayRecord):
            raise ConfigError(f"the training function's reply has no ArrayRecord {self.arrayrecord_key!r}")
        metrics = [r for r in reply.content.values() if isinstance(r, MetricRecord)]
        examples = metrics[0].get(self.weighted_by_key) if len(metrics) == 1 else None
        if isinstance(examples, float) and examples.is_integer():
            examples = int(examples)
        if not isinstance(examples, int) or isinstance(examples, bool) or examples < 0:
            raise ConfigError(f"the training function's reply needs one MetricRecord with "
                              f"{self.weighted_by_key!r} (its example count), got {examples!r}")
        loss = metrics[0].get("train_loss", metrics[0].get("train-loss", 0.0))
        delta = layout.flatten(trained, what="trained arrays") - layout.flatten(arrays)
        if not bool(torch.isfinite(delta).all()):
            raise UpdateError("the trained arrays hold NaN/Inf: nothing is sent")
        pipeline = self.pipeline(layout.dim)
        secure = pipeline.mode == "secure"
        round_client = pipeline.client(cid, delta, examples,
                                       train_loss=float(loss) if isinstance(loss, int | float) else 0.0,
                                       identity=self._identity(context),
                                       model_version=fingerprint(arrays) if secure else None)
        out = round_client.start(work)
        content = RecordDict({RECORD: pack(TASK, work.round, out)})
        if secure:
            self._save(context, work.round, layout.dim, round_client)
        else:
            content["metrics"] = metrics[0]  # plain mode: nothing is secret (the update goes in the clear)
        return Message(content, reply_to=msg)

    def _protocol(self, msg: Message, context: Context, fields: dict[str, Any]) -> Message:
        saved = context.state.get(STATE)
        if not isinstance(saved, ConfigRecord) or saved.get("round") != fields["round"]:
            raise RemoteProtocolError(f"a round-{fields['round']} protocol message, but this client holds no "
                                      f"session of that round")
        pipeline = self.pipeline(int(saved["dim"]))
        round_client = pipeline.resume_client(saved["client"], identity=self._identity(context))
        out = round_client.handle(fields["data"])
        self._save(context, fields["round"], pipeline.dim, round_client)
        return Message(RecordDict({RECORD: pack(PROTOCOL, fields["round"], out)}), reply_to=msg)

    def _save(self, context: Context, round_index: int, dim: int, round_client: ClientRound) -> None:
        context.state[STATE] = ConfigRecord({"round": int(round_index), "dim": int(dim),
                                             "client": round_client.suspend()})


def secagg_mod(aggregator: Aggregator, *, seed: int = 0, client_id: int | None = None,
               client_id_key: str = "partition-id", identity: Identity = None,
               registry: Mapping[int, bytes] | None = None, weighted_by_key: str = "num-examples",
               arrayrecord_key: str = "arrays", local_arrays: Collection[str] = ()) -> SecAggMod:
    """A Flower client mod running ``aggregator``'s client side (the same aggregator and ``seed`` as
    the server's :class:`~secagg.integrations.flower.strategy.SecAggStrategy`).

    ``client_id``: this node's id in the federation (default: ``node_config[client_id_key]``, Flower's
    ``partition-id`` in simulation). ``identity``: its Ed25519 key, or a function of the ``Context``
    returning it, and ``registry``: every client's public key, from the operator (malicious-server
    mode). ``weighted_by_key``: the metric holding the example count in the training reply.
    ``local_arrays``: FedBN, the names of the arrays this client keeps (its BatchNorm layers'): they
    are left out of what it sends, and the training function keeps its own values of them (e.g. in
    ``context.state``) instead of loading the server's; the strategy must name the same arrays.
    """
    return SecAggMod(aggregator, seed=seed, client_id=client_id, client_id_key=client_id_key,
                     identity=identity, registry=registry, weighted_by_key=weighted_by_key,
                     arrayrecord_key=arrayrecord_key, local_arrays=local_arrays)

