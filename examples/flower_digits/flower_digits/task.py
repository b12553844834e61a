"""The example's federated task and its three variants, shared by the ServerApp and the ClientApp.

Every variant is an :class:`~secagg.experiment.ExperimentConfig`, the same value ``secagg train``
runs, so a Flower run can be checked against this library's own FedAvg driver (same seed, same
clients, same local training).
"""

from __future__ import annotations

import functools
import json
from typing import Any

import torch

import dp  # noqa: F401  (registers the DP aggregators for from_dict)
from dp.distributed import DistributedDP
from secagg.aggregation import Aggregator, TrimmedMean
from secagg.experiment import ExperimentConfig
from secagg.fedavg.config import ClientConfig, FedAvgConfig
from secagg.fedavg.source import ClientJob, TrainingRefused, train_client
from secagg.layout import ParamLayout
from secagg.seeding import derive_seed
from secagg.task import Task, TaskConfig, build_task

#: ours: a robust rule in plain mode; secure aggregation with distributed DP; and Flower's own SecAgg+
VARIANTS = ("robust", "secure-ddp", "flower-secaggplus")


def aggregator(variant: str, num_clients: int) -> Aggregator:
    """The aggregator of ``variant`` (Flower's own SecAgg+ is driven by ``flower_secaggplus``)."""
    if variant == "robust":
        return TrimmedMean(f=max(1, num_clients // 5))  # trims the f largest and f smallest per coordinate
    if variant == "secure-ddp":
        # client-level DP: each client clips to 1.0 and adds its share of discrete Gaussian noise
        # inside the secure sum; the server sees only the noisy sum (epsilon in the round metrics)
        return DistributedDP(clip=1.0, noise_multiplier=0.5, bits=20, expected_clients=num_clients,
                             min_clients=max(2, num_clients - num_clients // 3))
    raise ValueError(f"variant: expected one of {VARIANTS[:2]} here, got {variant!r}")


def experiment(variant: str, *, num_clients: int = 10, rounds: int = 5, seed: int = 0,
               epochs: int = 2, fraction: float = 1.0, rule: Aggregator | None = None) -> ExperimentConfig:
    """The run ``variant`` stands for, as this library's configuration value (``rule``: another
    aggregator in its place)."""
    agg = rule or aggregator("robust" if variant == "flower-secaggplus" else variant, num_clients)
    return ExperimentConfig(
        task=TaskConfig(num_clients=num_clients, model="mlp"),
        fedavg=FedAvgConfig(rounds=rounds, fraction=fraction, aggregator=agg,
                            client=ClientConfig(epochs=epochs, batch_size=10, lr=0.1)),
        seed=seed)


def from_run_config(run_config: dict[str, Any]) -> tuple[str, ExperimentConfig]:
    """(variant, configuration) from Flower's run config (``pyproject.toml``'s ``[tool.flwr.app.config]``)."""
    variant = str(run_config.get("variant", "robust"))
    if variant not in VARIANTS:
        raise ValueError(f"variant: expected one of {VARIANTS}, got {variant!r}")
    rule = run_config.get("aggregator", "")  # any of secagg's aggregators, as its JSON configuration
    return variant, experiment(variant, num_clients=int(run_config.get("num-clients", 10)),
                               rounds=int(run_config.get("num-server-rounds", 5)),
                               seed=int(run_config.get("seed", 0)), epochs=int(run_config.get("epochs", 2)),
                               fraction=float(run_config.get("fraction", 1.0)),
                               rule=Aggregator.from_dict(json.loads(str(rule))) if rule else None)


@functools.lru_cache(maxsize=4)
def task(num_clients: int, seed: int) -> Task:
    """The digits task (data split and initial model), built once per process."""
    return build_task(TaskConfig(num_clients=num_clients, model="mlp"), seed=seed)


def train(config: ExperimentConfig, partition: int, round_index: int,
          global_state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], int, float]:
    """Client ``partition``'s local training in round ``round_index`` exactly as the FedAvg driver runs
    it (same data, same seed): (trained weights, example count, mean train loss)."""
    t = task(config.task.num_clients, config.seed)
    layout = ParamLayout.from_module(t.model, config.fedavg.buffers)
    seed = derive_seed(config.seed, "client", round_index, partition)
    job = ClientJob(partition, t.data.client(partition), seed)
    out = train_client(config.fedavg.trainer, t.model, global_state, config.fedavg.client, layout, job)
    if isinstance(out, TrainingRefused):
        raise RuntimeError(out.reason)
    trained = layout.unflatten(layout.flatten(global_state) + out.delta)
    return trained, out.num_examples, out.train_loss
