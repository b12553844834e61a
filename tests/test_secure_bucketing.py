"""Robust + secure: secure aggregation inside buckets, a robust rule across the bucket means."""

from __future__ import annotations

import json

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from secagg.aggregation import Aggregator, CoordinateMedian, Mean, SecureSum, UpdateBatch
from secagg.aggregation.secure_bucketing import SecureBucketing
from secagg.errors import ConfigError, UpdateError


def _batch(n: int, d: int, seed: int) -> UpdateBatch:
    g = torch.Generator().manual_seed(seed)
    weights = torch.tensor([float(5 + (7 * i) % 13) for i in range(n)], dtype=torch.float64)
    return UpdateBatch(torch.randn(n, d, generator=g) * 0.1, weights, tuple(range(100, 100 + n)),
                       round=1, seed=seed)


@settings(max_examples=15)
@given(st.integers(2, 14), st.integers(2, 5), st.integers(1, 6), st.integers(0, 2**31))
def test_without_attackers_it_is_the_weighted_mean_within_quantization_error(n, size, d, seed):
    batch = _batch(n, d, seed)
    out = SecureBucketing(bucket_size=size, inner=Mean()).aggregate(batch, {})
    torch.testing.assert_close(out.update, Mean().aggregate(batch, {}).update, atol=1e-6, rtol=0)


@given(st.integers(2, 40), st.integers(2, 7), st.integers(0, 2**31))
def test_buckets_partition_the_clients_and_never_hold_one_client(n, size, seed):
    groups = SecureBucketing(bucket_size=size).buckets(_batch(n, 2, seed))
    assert torch.equal(torch.cat(groups).sort().values, torch.arange(n))
    assert all(len(g) >= 2 for g in groups)


def test_a_far_attacker_is_filtered_by_the_median_of_bucket_means():
    n, d = 15, 4
    batch = _batch(n, d, 3)
    poisoned = batch.updates.clone()
    poisoned[7] = 1e3  # one attacker, far away (clipped to the quantizer's range, still far)
    attacked = batch.replace(updates=poisoned)
    out = SecureBucketing(bucket_size=3, inner=CoordinateMedian(),
                          secure=SecureSum(clip=1e4)).aggregate(attacked, {})
    honest = torch.cat([batch.updates[:7], batch.updates[8:]])
    assert torch.all(out.update <= honest.max(dim=0).values + 1e-4)
    assert torch.all(out.update >= honest.min(dim=0).values - 1e-4)
    plain = SecureBucketing(bucket_size=3, inner=Mean(), secure=SecureSum(clip=1e4)).aggregate(attacked, {})
    assert plain.update.abs().max() > 10, "without a robust rule the attacker drags the mean away"


def test_serialization_validation_and_metrics():
    rule = SecureBucketing(bucket_size=4, inner=CoordinateMedian(), secure=SecureSum(clip=0.5, bits=24))
    assert Aggregator.from_dict(json.loads(json.dumps(rule.to_dict()))) == rule
    with pytest.raises(ConfigError, match="bucket_size: must be >= 2"):
        SecureBucketing(bucket_size=1)
    with pytest.raises(UpdateError, match="at least 2 clients"):
        rule.aggregate(_batch(1, 2, 0), {})
    out = rule.aggregate(_batch(9, 3, 1), {})
    assert out.metrics["buckets"] == 2 and out.metrics["client_bytes_mean"] > 0
