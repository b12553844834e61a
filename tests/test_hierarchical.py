"""Two-level secure aggregation (combiners under a top server): exact sums of the survivors at both
levels, clean aborts, the weighted mean, and the refusals that keep a combiner's sum a real shield."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from secagg.aggregation import HierarchicalSecureSum, SecureSum, UpdateBatch
from secagg.errors import AbortError, ConfigError
from secagg.placement import place


def _inputs(ids, words: int, bits: int, seed: int) -> dict[int, np.ndarray]:
    rng = np.random.default_rng(seed)  # test data only
    return {u: rng.integers(0, 2**bits, words, dtype=np.uint64).astype(np.uint32) for u in ids}


@settings(max_examples=15, deadline=None)
@given(clients=st.integers(12, 40), combiners=st.integers(2, 4), bits=st.sampled_from([12, 32]),
       client_drop=st.sampled_from([0.0, 0.2]), combiner_drop=st.sampled_from([0.0, 0.3]),
       seed=st.integers(0, 2**31), graph=st.sampled_from(["full", "secaggplus"]))
def test_both_levels_sum_exactly_their_survivors(clients, combiners, bits, client_drop, combiner_drop, seed,
                                                 graph):
    agg = HierarchicalSecureSum(combiners=combiners, combiner_dropout=combiner_drop,
                                secure=SecureSum(bits=bits, dropout=client_drop, graph=graph))
    ids = tuple(range(5, 5 + clients))  # ids need not start at 0
    inputs = _inputs(ids, 7, bits, seed)
    try:
        report = agg.run(inputs, 7, round_index=3, seed=seed)
    except AbortError:
        return  # too many combiners gone for the top threshold: a clean abort is the other outcome
    modulus = np.uint64(1 << bits)
    for j, total in report.combiner_sums.items():  # what each combiner learns: its survivors' sum
        members = [u for u in ids if agg.combiner_of(u) == j]
        assert len(members) >= agg.min_clients
        if j in report.combiners:  # (who survived under a combiner lost at the top is not reported)
            mine = [u for u in report.survivors if agg.combiner_of(u) == j]
            assert np.array_equal(sum(inputs[u].astype(np.uint64) for u in mine) % modulus,
                                  total.astype(np.uint64))
    want = sum(inputs[u].astype(np.uint64) for u in report.survivors) % modulus
    assert np.array_equal(report.total.astype(np.uint64) % modulus, want)
    assert set(report.combiners) <= set(report.combiner_sums)
    assert set(report.survivors) <= {u for u in ids if agg.combiner_of(u) in report.combiners}
    if client_drop == 0 and combiner_drop == 0:
        assert report.survivors == ids


def test_a_dropped_combiner_takes_its_clients_out_and_too_few_combiners_abort():
    ids = tuple(range(30))
    inputs = _inputs(ids, 5, 32, 1)
    agg = HierarchicalSecureSum(combiners=5, combiner_dropout=0.2)  # one of 5 vanishes at the top
    report = agg.run(inputs, 5, round_index=1, seed=4)
    assert len(report.combiners) == 4 and len(report.survivors) == 24
    gone = set(report.combiner_sums) - set(report.combiners)
    assert not any(agg.combiner_of(u) in gone for u in report.survivors)
    with pytest.raises(AbortError):  # 3 of 5 gone: below the top threshold floor(5 / 2) + 1 = 3
        HierarchicalSecureSum(combiners=5, combiner_dropout=0.6).run(inputs, 5, round_index=1, seed=4)


def test_the_two_level_mean_is_the_flat_secure_mean():
    g = torch.Generator().manual_seed(0)
    batch = UpdateBatch(torch.randn(24, 50, generator=g, dtype=torch.float64) * 0.1,
                        torch.arange(1, 25, dtype=torch.float64), tuple(range(24)), round=2, seed=9)
    flat = SecureSum().aggregate(batch, {})
    two = HierarchicalSecureSum(combiners=4).aggregate(batch, {})
    w = batch.weights / batch.weights.sum()
    exact = (w[:, None] * batch.updates).sum(0)
    # the same grid (planned for all 24 clients) and the same dither: the same words, the same sum
    assert torch.equal(two.update, flat.update)
    assert float((two.update - exact).abs().max()) <= two.metrics["quantization_error_bound"]
    assert two.metrics["combiners"] == 4 and two.metrics["survivors"] == 24
    assert two.metrics["client_bytes_mean"] < flat.metrics["client_bytes_mean"]  # 6-client sessions, not 24
    rotated = HierarchicalSecureSum(combiners=4, secure=SecureSum(bits=12, rotation=True, clip_norm=2.0))
    out = rotated.aggregate(batch, {})
    assert float(torch.linalg.vector_norm(out.update - exact)) <= out.metrics["quantization_error_norm_bound"]


def test_refusals_name_the_field():
    with pytest.raises(ConfigError, match=r"min_clients: combiners \[1\] would sum \[2\]"):
        HierarchicalSecureSum(combiners=2).groups((0, 1, 2, 3, 4))
    with pytest.raises(ConfigError, match="fewer than 2 combiners"):
        HierarchicalSecureSum(combiners=4).groups((0, 4, 8, 12))
    with pytest.raises(ConfigError, match="combiners: must be >= 2"):
        HierarchicalSecureSum(combiners=1)
    placement = place(HierarchicalSecureSum())  # deployed: combiner processes under the top server
    assert placement.mode == "secure" and placement.combiners == HierarchicalSecureSum()


def test_a_fedavg_run_over_two_levels_learns_like_the_flat_secure_sum():
    from secagg.experiment import ExperimentConfig, run_experiment
    from secagg.fedavg import FedAvgConfig
    from secagg.task import TaskConfig

    task = TaskConfig(num_clients=12)
    flat = run_experiment(ExperimentConfig(task, FedAvgConfig(rounds=2, aggregator=SecureSum())))
    two = run_experiment(ExperimentConfig(task, FedAvgConfig(rounds=2, aggregator=HierarchicalSecureSum(
        combiners=3))))
    assert [h["accuracy"] for h in two.history] == [h["accuracy"] for h in flat.history]
    assert two.history[-1]["agg/combiners"] == 3


def test_the_scale_benchmark_checks_both_sums_and_writes_its_figures(tmp_path, load_benchmark, capsys):
    bench = load_benchmark("hierarchical_scale")
    result = bench.main(["--clients", "60", "--combiners", "3", "--dim", "20", "--out", str(tmp_path)])
    assert (tmp_path / "hierarchical.json").exists()
    flat, two = result["flat"], result["two_level"]
    assert two["client_bytes"] < flat["client_bytes"] and two["combiner_bytes_max"] < flat["server_bytes"]
    assert 0 < two["survivors"] <= 60 and 0 < flat["survivors"] <= 60
    assert "| KiB per client |" in capsys.readouterr().out
