"""Secure aggregation inside FedAvg: same model as the plain mean, within quantization error."""

from __future__ import annotations

import itertools
import json

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from secagg.aggregation import Aggregator, ClipNorm, Mean, SecureSum, UpdateBatch
from secagg.data.partition import PartitionConfig
from secagg.errors import ConfigError, UpdateError
from secagg.experiment import ExperimentConfig, run_experiment
from secagg.fedavg import ClientConfig, FedAvgConfig
from secagg.task import TaskConfig


def _batch(n: int, d: int, seed: int, weights=None) -> UpdateBatch:
    g = torch.Generator().manual_seed(seed)
    w = torch.tensor(weights if weights is not None else [float(10 + 7 * i) for i in range(n)],
                     dtype=torch.float64)
    return UpdateBatch(torch.randn(n, d, generator=g) * 0.1, w, tuple(range(0, 3 * n, 3)), round=1, seed=seed)


@settings(max_examples=20)
@given(n=st.integers(2, 12), d=st.integers(1, 30), seed=st.integers(0, 2**31),
       weighted=st.booleans(), graph=st.sampled_from(["full", "secaggplus"]))
def test_secure_mean_equals_plain_mean_within_quantization_error(n, d, seed, weighted, graph):
    batch = _batch(n, d, seed)
    agg = SecureSum(value_range=1.0, weighted=weighted, graph=graph).aggregate(batch, {})
    plain = Mean(weighted=weighted).aggregate(batch, {}).update
    # error of the weighted sum over the summed weight (both quantized with ~n/2^31 resolution)
    assert torch.allclose(agg.update, plain, atol=1e-6)
    assert agg.metrics["survivors"] == n and agg.metrics["dropped"] == 0
    assert agg.metrics["expansion"] > 1.0


def test_dropped_clients_are_excluded_from_numerator_and_denominator():
    n, d = 6, 5
    batch = _batch(n, d, 3)
    out = SecureSum(dropout=0.34).aggregate(batch, {})
    assert out.metrics["dropped"] == 2 and out.metrics["survivors"] == 4
    candidates = []
    for kept in itertools.combinations(range(n), 4):
        sub = UpdateBatch(batch.updates[list(kept)], batch.weights[list(kept)], tuple(kept))
        candidates.append(Mean().aggregate(sub, {}).update)
    matches = [torch.allclose(out.update, c, atol=1e-6) for c in candidates]
    assert sum(matches) == 1, "the result is the weighted mean of exactly one set of 4 survivors"


def test_clipping_is_counted_not_silent():
    batch = UpdateBatch(torch.tensor([[5.0, 0.1], [0.2, -0.1]]), torch.ones(2, dtype=torch.float64), (0, 1))
    out = SecureSum(value_range=1.0, weighted=False).aggregate(batch, {})
    assert out.metrics["clipped_fraction"] == pytest.approx(0.25)
    assert out.update[0] == pytest.approx((1.0 + 0.2) / 2, abs=1e-6)


def test_secure_sum_serializes_and_validates():
    agg = ClipNorm(max_norm=3.0, inner=SecureSum(value_range=0.5, bits=24, graph="secaggplus", dropout=0.1))
    assert Aggregator.from_dict(json.loads(json.dumps(agg.to_dict()))) == agg
    with pytest.raises(ConfigError, match="graph: must be one of 'full', 'secaggplus'"):
        SecureSum(graph="ring")
    with pytest.raises(ConfigError, match="bits: must be <= 32"):
        SecureSum(bits=64)
    with pytest.raises(ConfigError, match="secure aggregation needs at least 2 clients"):
        SecureSum().aggregate(_batch(1, 3, 0), {})
    with pytest.raises(UpdateError, match="above weight_bound=5"):
        SecureSum(weight_bound=5.0).aggregate(_batch(2, 3, 0, weights=[3.0, 9.0]), {})


def test_secaggplus_parameters_are_used_when_a_sparse_graph_exists():
    from secagg import secaggplus_parameters

    agg = SecureSum(graph="secaggplus", corrupt_fraction=0.05, dropout_fraction=0.1)
    params = agg.session_params(tuple(range(1000)), 10)
    assert (params.degree, params.threshold) == secaggplus_parameters(1000, 0.05, 0.1)
    assert not params.full_graph
    assert agg.session_params(tuple(range(3)), 10).full_graph, "tiny rounds use the full graph"
    # no sparse graph can tolerate 45% corrupt + 45% dropped among 10: fall back to the full graph
    crowded = SecureSum(graph="secaggplus", corrupt_fraction=0.45, dropout_fraction=0.45)
    assert crowded.session_params(tuple(range(10)), 10).full_graph


def _digits(aggregator) -> ExperimentConfig:
    return ExperimentConfig(
        task=TaskConfig(num_clients=6, partition=PartitionConfig(kind="dirichlet", alpha=1.0)),
        fedavg=FedAvgConfig(rounds=3, fraction=1.0, client=ClientConfig(epochs=1, batch_size=16),
                            aggregator=aggregator),
        seed=1)


def test_fedavg_on_digits_with_secure_aggregation_matches_plain_fedavg():
    plain = run_experiment(_digits(Mean()))
    secure = run_experiment(_digits(SecureSum(value_range=1.0)))
    for name, w in plain.state.model.items():
        torch.testing.assert_close(secure.state.model[name], w, atol=1e-4, rtol=0)
    for a, b in zip(plain.history, secure.history, strict=True):
        assert abs(a["accuracy"] - b["accuracy"]) <= 1 / 360 + 1e-12  # at most one test image
    assert all(row["agg/survivors"] == 6 for row in secure.history)


def test_an_aborted_secure_round_leaves_the_model_and_training_goes_on():
    # threshold 4 of 6 with 3 clients dropping: every round aborts, cleanly
    agg = SecureSum(threshold_fraction=0.6, dropout=0.5)
    result = run_experiment(_digits(agg))
    assert [row["round"] for row in result.history] == [1, 2, 3]
    assert all("fewer than the threshold" in row["aborted"] for row in result.history)
    assert len({row["accuracy"] for row in result.history}) == 1, "the model never moved"


def test_weighted_secure_sum_refuses_an_all_zero_weight_batch_by_name():
    batch = UpdateBatch(torch.zeros(3, 4), torch.zeros(3), (0, 1, 2))
    with pytest.raises(UpdateError, match="weights: every client has 0 examples"):
        SecureSum().aggregate(batch, {})
