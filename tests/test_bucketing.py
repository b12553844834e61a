"""Bucketing: a seeded partition into buckets, bucket means, then any inner rule."""

from __future__ import annotations

import json

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from secagg.aggregation import Aggregator, Mean, UpdateBatch
from secagg.aggregation.bucketing import Bucketing
from secagg.errors import ConfigError


def _batch(n: int, d: int, seed: int, round_: int = 1) -> UpdateBatch:
    g = torch.Generator().manual_seed(seed)
    return UpdateBatch(torch.randn(n, d, generator=g, dtype=torch.float64),
                       torch.ones(n, dtype=torch.float64), tuple(range(n)), round=round_, seed=seed)


@given(st.integers(1, 30), st.integers(1, 8), st.integers(1, 12), st.integers(0, 2**31))
def test_buckets_partition_the_clients(n, d, size, seed):
    batch = _batch(n, d, seed)
    groups = Bucketing(bucket_size=size).buckets(batch)
    flat = torch.cat(groups).sort().values
    assert torch.equal(flat, torch.arange(n)), "every client in exactly one bucket"
    assert all(len(g) == size for g in groups[:-1]) and 1 <= len(groups[-1]) <= size


@given(st.integers(1, 6), st.integers(1, 6), st.integers(1, 8), st.integers(0, 2**31))
def test_with_equal_buckets_the_mean_of_bucket_means_is_the_mean(buckets, size, d, seed):
    batch = _batch(buckets * size, d, seed)
    out = Bucketing(bucket_size=size, inner=Mean(weighted=False)).aggregate(batch, {})
    torch.testing.assert_close(out.update, batch.updates.mean(dim=0))
    assert out.metrics["buckets"] == buckets


def test_known_answer_and_inner_sees_bucket_means():
    seen = []

    class Spy(Mean):
        def aggregate(self, batch, state):
            seen.append(batch.updates.clone())
            return super().aggregate(batch, state)

    batch = UpdateBatch(torch.tensor([[0.0], [2.0], [10.0], [20.0]]), torch.ones(4, dtype=torch.float64),
                        (0, 1, 2, 3), seed=5)
    bucketing = Bucketing(bucket_size=2, inner=Spy(weighted=False))
    bucketing.aggregate(batch, {})
    expected = torch.stack([batch.updates[idx].mean(dim=0) for idx in bucketing.buckets(batch)])
    assert torch.equal(seen[0], expected)
    assert sorted(seen[0].flatten().tolist()) != [0.0, 2.0, 10.0, 20.0], "rows were averaged"


def test_shuffle_is_seeded_and_fresh_each_round():
    a, b = _batch(12, 2, seed=1), _batch(12, 2, seed=2)
    rule = Bucketing(bucket_size=3)
    same = [torch.equal(x, y) for x, y in zip(rule.buckets(a), rule.buckets(_batch(12, 2, seed=1)),
                                                strict=True)]
    assert all(same), "same seed, same buckets"
    assert any(not torch.equal(x, y) for x, y in zip(rule.buckets(a), rule.buckets(b), strict=True))


def test_bucket_size_one_is_the_inner_rule_and_input_is_not_mutated():
    batch = _batch(7, 3, 0)
    before = batch.updates.clone()
    out = Bucketing(bucket_size=1, inner=Mean()).aggregate(batch, {})
    torch.testing.assert_close(out.update, Mean().aggregate(batch, {}).update)
    assert torch.equal(batch.updates, before)


def test_bucketing_validates_and_serializes():
    with pytest.raises(ConfigError, match="bucket_size: must be >= 1, got 0"):
        Bucketing(bucket_size=0)
    rule = Bucketing(bucket_size=4, inner=Mean(weighted=False))
    assert Aggregator.from_dict(json.loads(json.dumps(rule.to_dict()))) == rule
