"""Amplification by sampling needs a secret sample: deployments draw it from the CSPRNG.

The amplified epsilon of a Poisson-sampled DP rule assumes the adversary cannot tell who took part.
A sample drawn from the run's public seed is predictable, so ``secagg serve`` samples with the OS
CSPRNG, and simulations (seeded, reproducible) mark their records ``"sample_secret": false``.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from dp.central import DPFedAvg
from secagg.aggregation import Mean
from secagg.experiment import ExperimentConfig
from secagg.fedavg import FedAvg
from secagg.fedavg.config import ClientConfig, FedAvgConfig
from secagg.task import TaskConfig, build_task
from secagg.transport.serve import NetworkServer, ServeOptions

CLIENTS = 64


def _config(aggregator=None, rounds: int = 3) -> ExperimentConfig:
    aggregator = aggregator or DPFedAvg(clip=1.0, noise_multiplier=1.0, expected_clients=CLIENTS / 2,
                                        sample_rate=0.5)
    return ExperimentConfig(
        task=TaskConfig(num_clients=CLIENTS),
        fedavg=FedAvgConfig(rounds=rounds, fraction=0.5, sampling="poisson", aggregator=aggregator,
                            client=ClientConfig(epochs=1, batch_size=0)),
        seed=4)


def _fedavg(config: ExperimentConfig, **kw) -> FedAvg:
    task = build_task(config.task, seed=config.seed)
    return FedAvg(config.fedavg, task.model, task.data, seed=config.seed, **kw)


def test_seeded_sample_is_predictable_and_secret_sample_is_not():
    config = _config()
    seeded = [_fedavg(config).sample_clients(r) for _ in range(2) for r in (1, 2, 3)]
    assert seeded[:3] == seeded[3:]  # anyone with the seed predicts the sample
    a, b = _fedavg(config, secret_sampling=True), _fedavg(config, secret_sampling=True)
    draws_a = [a.sample_clients(r) for r in (1, 2, 3)]
    draws_b = [b.sample_clients(r) for r in (1, 2, 3)]
    # 64 independent coin flips per round: equal samples in all three rounds has probability 2^-192
    assert draws_a != draws_b
    assert draws_a != seeded[:3]


def test_secret_sample_is_drawn_once_per_round():
    """``privacy_stop`` and ``run_round`` must see the same clients, or the budget check is void."""
    fedavg = _fedavg(_config(), secret_sampling=True)
    first = fedavg.sample_clients(1)
    assert fedavg.sample_clients(1) == first
    second = fedavg.sample_clients(2)
    assert fedavg.sample_clients(2) == second


@pytest.mark.parametrize("sampling", ["poisson", "fixed"])
def test_secret_sample_keeps_the_sampler_law(sampling):
    config = _config(aggregator=Mean()) if sampling == "fixed" else _config()
    if sampling == "fixed":
        config = ExperimentConfig(task=config.task, fedavg=FedAvgConfig(
            rounds=3, fraction=0.25, aggregator=Mean(), client=config.fedavg.client), seed=4)
    fedavg = _fedavg(config, secret_sampling=True)
    sizes = [len(fedavg.sample_clients(r)) for r in range(1, 201)]
    if sampling == "fixed":
        assert set(sizes) == {16}
    else:
        mean = sum(sizes) / len(sizes)  # Binomial(64, 1/2): mean 32, std of the mean 0.28
        assert abs(mean - 32) < 1.5


def test_simulation_records_say_the_amplified_epsilon_assumes_a_secret_sample():
    config = _config(rounds=1)
    fedavg = _fedavg(config)
    record = fedavg.run_round(fedavg.initial_state()).record
    assert record["epsilon"] is not None and record["sample_secret"] is False
    secret = _fedavg(config, secret_sampling=True)
    assert secret.run_round(secret.initial_state()).record["sample_secret"] is True
    plain = _fedavg(_config(aggregator=Mean(), rounds=1))
    assert "sample_secret" not in plain.run_round(plain.initial_state()).record  # no claim, no note


def test_network_server_samples_secretly(tmp_path: Path):
    registry = {u: Ed25519PrivateKey.generate().public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
                for u in range(CLIENTS)}
    server = NetworkServer(_config(), registry, ServeOptions(), tmp_path)
    assert server.fedavg.secret_sampling
