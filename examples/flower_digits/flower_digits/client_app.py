"""The ClientApp: ordinary Flower training, with secagg's mod doing the aggregation side."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from flower_digits.task import from_run_config, task, train
from secagg.backend import Pipeline
from secagg.fedavg.server import evaluate
from secagg.integrations.flower import secagg_mod
from secagg.integrations.flower.records import RECORD, STATE


def make_app(overrides: dict[str, Any] | None = None) -> ClientApp:
    """The ClientApp; ``overrides`` replace run-config values (``run_simulation`` takes no run config)."""
    extra = dict(overrides or {})

    def settings(context: Context) -> dict[str, Any]:
        return {**context.run_config, **extra}

    def variant_mod(msg: Message, context: Context, call_next):
        # A node operator pins the variant (and so the client steps and DP it promises) with
        # --node-config variant=...; the run config, which whoever submits the run sets, is a default.
        pinned = {k: v for k, v in context.node_config.items() if k == "variant"}
        _, config = from_run_config({**settings(context), **pinned})
        reply = secagg_mod(config.fedavg.aggregator, seed=config.seed)(msg, context, call_next)
        audit = context.node_config.get("audit-dir")
        if audit:  # the node operator's own record of what this node put into each secure sum
            _audit(Path(str(audit)), context, config, msg, reply)
        return reply

    app = ClientApp(mods=[variant_mod])

    @app.train()
    def train_fn(msg: Message, context: Context) -> Message:
        _, config = from_run_config(settings(context))
        partition = int(context.node_config["partition-id"])
        round_index = int(msg.content["config"]["server-round"])
        global_state = msg.content["arrays"].to_torch_state_dict()
        trained, examples, loss = train(config, partition, round_index, global_state)
        content = RecordDict({"arrays": ArrayRecord(trained),
                              "metrics": MetricRecord({"num-examples": examples, "train_loss": loss})})
        return Message(content, reply_to=msg)

    @app.evaluate()
    def evaluate_fn(msg: Message, context: Context) -> Message:
        _, config = from_run_config(settings(context))
        t = task(config.task.num_clients, config.seed)
        part = t.data.client(int(context.node_config["partition-id"]))
        with torch.no_grad():
            out = evaluate(t.model, msg.content["arrays"].to_torch_state_dict(), part.x, part.y)
        metrics = MetricRecord({"accuracy": out["accuracy"], "loss": out["loss"], "num-examples": len(part)})
        return Message(RecordDict({"metrics": metrics}), reply_to=msg)

    return app


def _audit(folder: Path, context: Context, config, msg: Message, reply: Message) -> None:
    """Write this node's session input (ring words) of the round it just joined to ``folder``."""
    saved = context.state.get(STATE)
    record = msg.content.get(RECORD)
    if saved is None or record is None or record["stage"] != "task" or reply.has_error():
        return
    pipeline = Pipeline(config.fedavg.aggregator, int(saved["dim"]), seed=config.seed)
    words = pipeline.resume_client(saved["client"]).session_input
    partition = int(context.node_config["partition-id"])
    folder.mkdir(parents=True, exist_ok=True)
    np.save(folder / f"input-r{int(record['round'])}-c{partition}.npy", words)


app = make_app()
