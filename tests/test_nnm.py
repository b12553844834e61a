"""Nearest-neighbour mixing: the mixing matrix, the mixed stack, and composition."""

from __future__ import annotations

import json

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from secagg.aggregation import Aggregator, Mean, UpdateBatch
from secagg.aggregation.nnm import NearestNeighbourMixing, mixing_matrix
from secagg.errors import ConfigError, UpdateError


def _stack(n: int, d: int, seed: int) -> torch.Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@given(st.integers(1, 20), st.integers(1, 6), st.integers(0, 2**31), st.data())
def test_each_row_is_the_mean_of_its_nearest_neighbours(n, d, seed, data):
    u = _stack(n, d, seed)
    f = data.draw(st.integers(0, n - 1))
    mixed = NearestNeighbourMixing(f=f).mix(u)
    dist = torch.cdist(u, u) ** 2
    for i in range(n):
        nearest = torch.sort(dist[i], stable=True).indices[: n - f]
        assert i in nearest.tolist() or dist[i, i] == dist[i, nearest].max(), "itself is among the nearest"
        torch.testing.assert_close(mixed[i], u[nearest].mean(dim=0))


@given(st.integers(1, 15), st.integers(0, 2**31))
def test_mixing_matrix_is_row_stochastic(n, seed):
    keep = max(1, n // 2)
    w = mixing_matrix(torch.cdist(_stack(n, 3, seed), _stack(n, 3, seed)) ** 2, keep)
    torch.testing.assert_close(w.sum(dim=1), torch.ones(n, dtype=torch.float64))
    assert torch.all((w == 0) | (w == 1.0 / keep))


def test_f_zero_mixes_everything_into_the_mean():
    u = _stack(6, 4, 0)
    torch.testing.assert_close(NearestNeighbourMixing(f=0).mix(u), u.mean(dim=0).expand(6, 4))


def test_known_answer_pulls_the_outlier_in_and_leaves_the_cluster():
    u = torch.tensor([[0.0], [1.0], [2.0], [100.0]])
    mixed = NearestNeighbourMixing(f=1).mix(u)
    # nearest 3 of 0 -> {0,1,2}; of 1 -> {0,1,2}; of 2 -> {0,1,2}; of 100 -> {100, 2, 1}
    torch.testing.assert_close(mixed.flatten(), torch.tensor([1.0, 1.0, 1.0, 103.0 / 3]))


def test_composition_input_not_mutated_and_serialization():
    u = _stack(8, 5, 3)
    batch = UpdateBatch(u.clone(), torch.ones(8, dtype=torch.float64), tuple(range(8)))
    out = NearestNeighbourMixing(f=2, inner=Mean(weighted=False)).aggregate(batch, {})
    torch.testing.assert_close(out.update, NearestNeighbourMixing(f=2).mix(u).mean(dim=0))
    assert torch.equal(batch.updates, u)
    rule = NearestNeighbourMixing(f=2, inner=Mean(weighted=False))
    assert Aggregator.from_dict(json.loads(json.dumps(rule.to_dict()))) == rule


def test_errors_name_the_bound():
    with pytest.raises(ConfigError, match="f: must be >= 0"):
        NearestNeighbourMixing(f=-1)
    with pytest.raises(UpdateError, match="f: nearest-neighbour mixing needs f < n, got f=3, n=3"):
        NearestNeighbourMixing(f=3).mix(_stack(3, 2, 0))
