"""Every attack runs against every aggregator of the library: one FedAvg round per pair.

The outcome of a round is always a finite global model, a clean abort recorded in the round (secure
aggregation), or the typed error a run reports (a non-finite aggregate caught before the server
step); never another exception.
"""

from __future__ import annotations

import pytest
import torch

import attacks
import dp
from attacks import ByzantineClients
from secagg.aggregation import (
    Aggregator,
    Bucketing,
    Bulyan,
    CenteredClipping,
    ClipNorm,
    CoordinateMedian,
    GeometricMedian,
    Krum,
    Mean,
    MultiKrum,
    NearestNeighbourMixing,
    SecureBucketing,
    SecureSum,
    TrimmedMean,
)
from secagg.errors import UpdateError
from secagg.fedavg import ClientConfig, FedAvg, FedAvgConfig
from secagg.task import TaskConfig, build_task

CLIENTS = 8  # 2 Byzantine (25%): Bulyan needs n >= 4f + 3 = 7 with f = 1

AGGREGATORS: dict[str, Aggregator] = {
    "mean": Mean(), "median": CoordinateMedian(), "trimmed-mean": TrimmedMean(f=2), "krum": Krum(f=2),
    "multi-krum": MultiKrum(f=2), "bulyan": Bulyan(f=1), "geometric-median": GeometricMedian(),
    "centered-clipping": CenteredClipping(tau=1.0),
    "nnm": NearestNeighbourMixing(f=2, inner=TrimmedMean(f=2)),
    "bucketing": Bucketing(bucket_size=2, inner=CoordinateMedian()), "clip-norm": ClipNorm(max_norm=0.5),
    "secure-sum": SecureSum(), "secure-bucketing": SecureBucketing(bucket_size=2, inner=CoordinateMedian()),
    "dp-fedavg": dp.DPFedAvg(clip=0.5, noise_multiplier=0.5, expected_clients=CLIENTS, sample_rate=1.0,
                             sampling="none"),
    "dp-fedavg-adaptive": dp.AdaptiveClipDP(initial_clip=0.5, noise_multiplier=0.5, expected_clients=CLIENTS,
                                            sampling="none"),
    "local-dp": dp.LocalDP(clip=0.5, noise_multiplier=0.1),
    "distributed-dp": dp.DistributedDP(clip=0.5, noise_multiplier=0.5, expected_clients=CLIENTS),
}
ATTACKS = {kind: ByzantineClients(0.25, update_attack=attacks.UpdateAttack.from_dict({"kind": kind}))
           for kind in attacks.UpdateAttack.kinds()}
ATTACKS |= {kind: ByzantineClients(0.25, data_attack=attacks.DataAttack.from_dict({"kind": kind}))
            for kind in attacks.DataAttack.kinds()}


def test_the_matrix_covers_every_registered_kind():
    library = {k for k, cls in Aggregator._registry.items()  # other test modules register toy kinds
               if cls.__module__.split(".")[0] in ("secagg", "dp")}
    assert library == set(AGGREGATORS)
    assert len(ATTACKS) == len(attacks.UpdateAttack.kinds()) + len(attacks.DataAttack.kinds())


@pytest.fixture(scope="module")
def task():
    return build_task(TaskConfig(num_clients=CLIENTS), seed=0)


@pytest.mark.parametrize("attack", sorted(ATTACKS))
@pytest.mark.parametrize("defence", sorted(AGGREGATORS))
def test_attack_runs_against_defence(task, attack, defence):
    config = FedAvgConfig(rounds=1, client=ClientConfig(epochs=1, batch_size=64),
                          aggregator=AGGREGATORS[defence], adversary=ATTACKS[attack])
    trainer = FedAvg(config, task.model, task.data, seed=0)
    assert len(trainer.malicious) == 2
    try:
        result = trainer.run_round(trainer.initial_state())
    except UpdateError as exc:  # e.g. the attack's update made the aggregate non-finite
        assert "aggregator" in str(exc) or "rejected" in str(exc)
        return
    record = result.record
    assert record["malicious"] == 2 or "aborted" in record
    if "aborted" not in record:
        flat = trainer.layout.flatten(result.state.weights)
        assert torch.isfinite(flat).all()
    if attack == "backdoor":
        assert 0.0 <= record["attack_success"] <= 1.0
