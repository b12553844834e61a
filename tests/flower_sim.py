"""Flower apps for the integration tests, run on Flower's own simulation engine (real flwr, Ray).

Clients send fixed, known updates (no training) so every round's secure sum can be checked exactly;
mods outside secagg's record each client's quantized session input and make chosen clients drop at a
chosen stage (an error reply, as Flower reports a failed ClientApp).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
from flwr.app import Array, ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from flwr.simulation import run_simulation

from secagg.aggregation import Aggregator
from secagg.backend import Pipeline
from secagg.integrations.flower import SecAggStrategy, secagg_mod
from secagg.integrations.flower.records import RECORD, STATE
from secagg.protocol.wire import decode
from secagg.transport.auth import load_identity

DIM = 7

#: the stage a dropping client leaves at, by the message it receives there
STAGES = {"task": "Setup", "share-keys": "KeyDirectory", "share-check": "ForwardedShares",
          "masked-input": "MaskRequest", "consistency": "ConsistencyRequest", "unmask": "UnmaskRequest"}


def client_update(partition: int, round_index: int) -> np.ndarray:
    """Client ``partition``'s update in round ``round_index``: small, distinct, known to the test."""
    base = np.linspace(-0.5, 0.5, DIM, dtype=np.float32)
    return (base * (partition + 1) / 7.0 + 0.01 * round_index).astype(np.float32)


def examples(partition: int) -> int:
    return 5 + partition


def stage_of(msg: Message) -> str | None:
    """Which stage an integration message opens for the client (``None``: not the integration's)."""
    record = msg.content.get(RECORD)
    if record is None:
        return None
    if record["stage"] == "task":
        return "task"
    if record["stage"] != "protocol":
        return str(record["stage"])
    name = type(decode(record["data"])).__name__
    return next((stage for stage, message in STAGES.items() if message == name), name)


def make_client_app(aggregator: Aggregator, inputs: Path, drops: Mapping[int, Mapping[str, set[int]]], *,
                    registry: Mapping[int, bytes] | None = None,
                    identities: Mapping[int, Path] | None = None, bad: Mapping[int, str] | None = None,
                    mod: bool = True) -> ClientApp:
    """Clients with :func:`client_update`; ``drops[round][stage]``: the partitions failing there;
    ``bad[partition]``: a malformed training reply (plain mode: "nan", "shape", "pickle", "no-count");
    every client's session input words are saved under ``inputs``; ``mod=False``: plain Flower clients
    (no secagg mod, nothing recorded); ``identities[partition]``: the
    PEM file of its Ed25519 key (malicious mode; keys are loaded on the node, never shipped)."""

    def identity_of(context: Context):
        return load_identity(identities[int(context.node_config["partition-id"])]) if identities else None

    def dropper(msg: Message, context: Context, call_next):
        partition = int(context.node_config["partition-id"])
        record = msg.content.get(RECORD)
        stage = stage_of(msg)
        round_index = int(record["round"]) if record is not None else 0
        if stage is not None and partition in drops.get(round_index, {}).get(stage, set()):
            raise RuntimeError(f"client {partition} dropped at {stage} of round {round_index}")
        reply = call_next(msg, context)
        saved = context.state.get(STATE)
        if stage == "task" and saved is not None and not reply.has_error():
            pipeline = Pipeline(aggregator, int(saved["dim"]), registry=registry)
            words = pipeline.resume_client(saved["client"], identity=identity_of(context)).session_input
            np.save(inputs / f"r{round_index}-c{partition}.npy", words)
        return reply

    mods = [dropper, secagg_mod(aggregator, identity=identity_of if identities else None, registry=registry)]
    app = ClientApp(mods=mods if mod else [])

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        partition = int(context.node_config["partition-id"])
        round_index = int(msg.content["config"]["server-round"])  # (a KeyError for secagg's hello)
        w = msg.content["arrays"]["w"].numpy()
        trained = Array(w + client_update(partition, round_index))
        kind = (bad or {}).get(partition)
        if kind == "nan":
            trained = Array(np.full(DIM, np.nan, dtype=np.float32))
        elif kind == "shape":
            trained = Array(np.zeros(DIM + 1, dtype=np.float32))
        elif kind == "pickle":  # claims float32 (7,), holds a pickled object array
            import io
            buffer = io.BytesIO()
            np.save(buffer, np.array([object()] * DIM, dtype=object), allow_pickle=True)
            trained = Array(dtype="float32", shape=(DIM,), stype="numpy.ndarray", data=buffer.getvalue())
        metrics = MetricRecord({} if kind == "no-count" else {"num-examples": examples(partition)})
        content = RecordDict({"arrays": ArrayRecord({"w": trained, "step": msg.content["arrays"]["step"]}),
                              "metrics": metrics})
        return Message(content, reply_to=msg)

    return app


def make_server_app(strategy: SecAggStrategy, rounds: int, result: dict) -> ServerApp:
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        initial = ArrayRecord({"w": Array(np.zeros(DIM, dtype=np.float32)),
                               "step": Array(np.array([3], dtype=np.int64))})
        out = strategy.start(grid=grid, initial_arrays=initial, num_rounds=rounds)
        result["w"] = out.arrays["w"].numpy().copy()
        result["step"] = out.arrays["step"].numpy().copy()
        result["history"] = [dataclasses.replace(h) for h in strategy.history]

    return app


def simulate(server_app: ServerApp, client_app: ClientApp, num_nodes: int) -> None:
    run_simulation(server_app=server_app, client_app=client_app, num_supernodes=num_nodes,
                   backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0},
                                   "init_args": {"logging_level": "ERROR", "log_to_driver": False}})


def load_inputs(inputs: Path, round_index: int, clients: tuple[int, ...]) -> list[np.ndarray]:
    return [np.load(inputs / f"r{round_index}-c{c}.npy", allow_pickle=False) for c in clients]


TamperFn = Callable[[int, Mapping[int, bytes]], Mapping[int, bytes]]
