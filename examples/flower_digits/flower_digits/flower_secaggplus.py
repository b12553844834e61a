"""The example's third variant: Flower 1.42's own SecAgg+ on the same digits task, for comparison.

Flower's legacy secure-aggregation pipeline, nothing of this library's aggregation in it: the
ServerApp runs ``DefaultWorkflow(fit_workflow=SecAggPlusWorkflow(...))`` over a legacy
``flwr.server.strategy.FedAvg`` (all clients each round, central evaluation on the test split); the
ClientApp is ``ClientApp(client_fn, mods=[secaggplus_mod])`` around a ``NumPyClient`` whose ``fit``
runs the same local training as the other two variants (:func:`flower_digits.task.train`: same data,
same seed, same optimizer) and returns the trained weights. Flower's SecAgg+ sums the weights scaled
by ``num_examples / max_weight`` and divides by the summed scale: the example-weighted mean of the
trained models, i.e. FedAvg with server learning rate 1.

The degree and threshold are the ones this library's ``SecureSum(graph="secaggplus",
corrupt_fraction=0.2, dropout_fraction=0.1)`` picks for the round's clients (the full graph below the
sizes where a sparse one meets the finder's bounds): Flower's ``num_shares`` counts the client's own
share, as ours does, so ``num_shares = k + 1`` and ``reconstruction_threshold = t``. Run-config keys
``num-shares`` and ``reconstruction-threshold`` override them. Flower's quantization defaults
(clipping range 8, 2^22 levels); ``max_weight`` is the largest partition's example count (public in
this simulation).

``python examples/flower_digits/run.py --variant flower-secaggplus --rounds 3``
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.client import ClientApp, NumPyClient
from flwr.client.mod import secaggplus_mod
from flwr.common import Context, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.server import LegacyContext, ServerApp, ServerConfig
from flwr.server.strategy import FedAvg
from flwr.server.workflow import DefaultWorkflow, SecAggPlusWorkflow

from flower_digits.task import from_run_config, task, train
from secagg.fedavg.server import evaluate

VARIANT = "flower-secaggplus"


def shares(num_clients: int, run_config: dict[str, Any] | None = None) -> tuple[int, int]:
    """Flower's ``(num_shares, reconstruction_threshold)`` for ``num_clients`` clients: our SecAgg+
    aggregator's degree + 1 (the client's own share) and threshold, unless the run config sets them."""
    from secagg.aggregation import SecureSum

    settings = run_config or {}
    params = SecureSum(graph="secaggplus", corrupt_fraction=0.2, dropout_fraction=0.1,
                       weighted=True).session_params(tuple(range(num_clients)), 1)
    num_shares = int(settings.get("num-shares", params.degree + 1))
    threshold = int(settings.get("reconstruction-threshold", params.threshold))
    return num_shares, threshold


def _settings(context: Context, overrides: dict[str, Any]) -> dict[str, Any]:
    return {**context.run_config, **overrides, "variant": VARIANT}


def _to_state(model: torch.nn.Module, arrays: list[np.ndarray]) -> dict[str, torch.Tensor]:
    """The model's state dict from Flower's arrays, in the model's dtypes: Flower's SecAgg+ hands the
    aggregate back as float64 (its dequantization's dtype), the model and the training want float32."""
    template = model.state_dict()
    return {k: torch.from_numpy(np.array(a, copy=True)).to(template[k].dtype)
            for k, a in zip(template, arrays, strict=True)}


def make_client_app(run_config: dict[str, Any] | None = None) -> ClientApp:
    """The ClientApp; ``run_config`` replaces run-config values (``run_simulation`` takes no run config)."""
    overrides = dict(run_config or {})

    class DigitsClient(NumPyClient):
        def __init__(self, settings: dict[str, Any], partition: int) -> None:
            self.settings, self.partition = settings, partition

        def fit(self, parameters: list[np.ndarray], config: dict[str, Any]):
            _, experiment = from_run_config(self.settings)
            t = task(experiment.task.num_clients, experiment.seed)
            keys = list(t.model.state_dict())
            round_index = int(config.get("server-round", 1))
            trained, examples, loss = train(experiment, self.partition, round_index,
                                            _to_state(t.model, parameters))
            weights = [trained[k].detach().to(torch.float32).numpy() for k in keys]
            return weights, int(examples), {"train_loss": float(loss)}

    def client_fn(context: Context):
        partition = int(context.node_config["partition-id"])
        return DigitsClient(_settings(context, overrides), partition).to_client()

    return ClientApp(client_fn=client_fn, mods=[secaggplus_mod])


def make_server_app(run_config: dict[str, Any] | None = None) -> ServerApp:
    """The ServerApp; ``run_config`` replaces run-config values (``run_simulation`` takes no run config)."""
    overrides = dict(run_config or {})
    app = ServerApp()

    @app.main()
    def main(grid, context: Context) -> None:
        settings = _settings(context, overrides)
        _, experiment = from_run_config(settings)
        n = experiment.task.num_clients
        t = task(n, experiment.seed)
        keys = list(t.model.state_dict())
        accuracy: dict[int, float] = {}
        rounds: list[dict[str, Any]] = []

        def central(server_round: int, parameters: list[np.ndarray], config: dict[str, Any]):
            out = evaluate(t.model, _to_state(t.model, parameters), t.data.test_x, t.data.test_y)
            accuracy[server_round] = float(out["accuracy"])
            return float(out["loss"]), {"accuracy": float(out["accuracy"])}

        class RecordingFedAvg(FedAvg):
            def aggregate_fit(self, server_round, results, failures):
                rounds.append({"round": int(server_round), "results": len(results),
                               "failures": len(failures)})
                return super().aggregate_fit(server_round, results, failures)

        initial = [v.detach().to(torch.float32).numpy() for v in t.model.state_dict().values()]
        min_nodes = int(settings.get("min-nodes", n))
        strategy = RecordingFedAvg(
            fraction_fit=experiment.fedavg.fraction, fraction_evaluate=0.0,
            min_fit_clients=min_nodes, min_available_clients=min_nodes,
            initial_parameters=ndarrays_to_parameters(initial), evaluate_fn=central,
            on_fit_config_fn=lambda server_round: {"server-round": server_round})
        num_shares, threshold = shares(n, settings)
        max_weight = float(max(len(t.data.client(p)) for p in range(n)))
        workflow = SecAggPlusWorkflow(num_shares=num_shares, reconstruction_threshold=threshold,
                                      max_weight=max_weight,
                                      timeout=float(settings.get("stage-timeout", 600.0)))
        legacy = LegacyContext(context=context, config=ServerConfig(num_rounds=experiment.fedavg.rounds),
                               strategy=strategy)
        DefaultWorkflow(fit_workflow=workflow)(grid, legacy)

        out = settings.get("result-path", "")
        if out:  # for tests and benchmarks: what happened, as JSON (the shape of server_app.write_result)
            from flwr.compat.common import recorddict_compat as compat
            from flwr.server.workflow.constant import MAIN_PARAMS_RECORD

            final = parameters_to_ndarrays(
                compat.arrayrecord_to_parameters(legacy.state.array_records[MAIN_PARAMS_RECORD], True))
            for row in rounds:
                row["accuracy"] = accuracy.get(row["round"])
            Path(str(out)).write_text(json.dumps({
                "variant": VARIANT,
                "weights": {k: np.asarray(a, dtype=np.float64).ravel().tolist()
                            for k, a in zip(keys, final, strict=True)},
                "accuracy": {str(r): a for r, a in sorted(accuracy.items())},
                "rounds": rounds,
                "secaggplus": {"num_shares": num_shares, "reconstruction_threshold": threshold,
                               "max_weight": max_weight, "clipping_range": workflow.clipping_range,
                               "quantization_range": workflow.quantization_range},
            }))

    return app


server_app = make_server_app()
client_app = make_client_app()
