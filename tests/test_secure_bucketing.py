"""Robust + secure: secure aggregation inside buckets, a robust rule across the bucket means."""

from __future__ import annotations

import json
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from secagg.aggregation import Aggregator, CoordinateMedian, Mean, SecureSum, UpdateBatch
from secagg.aggregation.secure_bucketing import SecureBucketing
from secagg.errors import ConfigError, UpdateError

HONEST_SERVER = "honest-but-curious-server"


def _batch(n: int, d: int, seed: int) -> UpdateBatch:
    g = torch.Generator().manual_seed(seed)
    weights = torch.tensor([float(5 + (7 * i) % 13) for i in range(n)], dtype=torch.float64)
    return UpdateBatch(torch.randn(n, d, generator=g) * 0.1, weights, tuple(range(100, 100 + n)),
                       round=1, seed=seed)


@settings(max_examples=15)
@given(st.integers(2, 14), st.integers(2, 5), st.integers(1, 6), st.integers(0, 2**31))
def test_without_attackers_it_is_the_weighted_mean_within_quantization_error(n, size, d, seed):
    batch = _batch(n, d, seed)
    out = SecureBucketing(bucket_size=size, inner=Mean(), threat_model=HONEST_SERVER).aggregate(batch, {})
    torch.testing.assert_close(out.update, Mean().aggregate(batch, {}).update, atol=1e-6, rtol=0)


@given(st.integers(2, 40), st.integers(2, 7), st.integers(0, 2**31))
def test_buckets_partition_the_clients_and_never_hold_fewer_than_bucket_size(n, size, seed):
    groups = SecureBucketing(bucket_size=size, threat_model=HONEST_SERVER).buckets(_batch(n, 2, seed))
    assert torch.equal(torch.cat(groups).sort().values, torch.arange(n))
    assert all(len(g) >= min(size, n) for g in groups)
    assert len(groups) == 1 or max(map(len, groups)) < 2 * size


def test_a_far_attacker_is_filtered_by_the_median_of_bucket_means():
    n, d = 15, 4
    batch = _batch(n, d, 3)
    poisoned = batch.updates.clone()
    poisoned[7] = 1e3  # one attacker, far away (clipped to the quantizer's range, still far)
    attacked = batch.replace(updates=poisoned)
    out = SecureBucketing(bucket_size=3, inner=CoordinateMedian(),
                          secure=SecureSum(value_range=1e4)).aggregate(attacked, {})
    honest = torch.cat([batch.updates[:7], batch.updates[8:]])
    assert torch.all(out.update <= honest.max(dim=0).values + 1e-4)
    assert torch.all(out.update >= honest.min(dim=0).values - 1e-4)
    plain = SecureBucketing(bucket_size=3, inner=Mean(),
                            secure=SecureSum(value_range=1e4)).aggregate(attacked, {})
    assert plain.update.abs().max() > 10, "without a robust rule the attacker drags the mean away"


def test_serialization_validation_and_metrics():
    rule = SecureBucketing(bucket_size=4, inner=CoordinateMedian(),
                           secure=SecureSum(value_range=0.5, bits=24))
    assert rule.threat_model == "colluding-clients"  # the safe default
    assert Aggregator.from_dict(json.loads(json.dumps(rule.to_dict()))) == rule
    with pytest.raises(ConfigError, match="bucket_size: must be >= 2"):
        SecureBucketing(bucket_size=1, threat_model=HONEST_SERVER)
    with pytest.raises(ConfigError, match="threat_model: must be one of"):
        SecureBucketing(threat_model="trusted")
    with pytest.raises(UpdateError, match="at least 2 clients"):
        rule.aggregate(_batch(1, 2, 0), {})
    out = rule.aggregate(_batch(9, 3, 1), {})
    assert out.metrics["buckets"] == 2 and out.metrics["client_bytes_mean"] > 0
    assert out.metrics["bucket_collusion_tolerance"] == 2 and out.metrics["assumed_colluders"] == 0


# --------------------------------------------------------------------------- collusion (threat model)


def test_in_a_bucket_of_two_one_colluder_and_the_server_recover_the_other_update_exactly():
    # The property behind the rule: the server sees each bucket's mean and total weight; a colluding
    # client knows its own update and weight, so it subtracts them and gets its bucket-mate's update.
    n, d = 6, 5
    batch = _batch(n, d, 11)
    rule = SecureBucketing(bucket_size=2, inner=CoordinateMedian(), threat_model=HONEST_SERVER)
    view = rule.server_view(batch)
    assert view.summed == (2, 2, 2)
    for b, idx in enumerate(rule.buckets(batch)):
        colluder, victim = idx.tolist()
        w_c = batch.weights[colluder]
        w_v = view.totals[b] - w_c
        recovered = (view.means[b].double() * view.totals[b] - w_c * batch.updates[colluder].double()) / w_v
        assert w_v == batch.weights[victim]
        # exact up to the session's quantization (32-bit ring: ~1e-9 here), far below the update's scale
        torch.testing.assert_close(recovered.float(), batch.updates[victim], atol=1e-6, rtol=0)
        assert batch.updates[victim].abs().max() > 1e-2
    # in a bucket of 3 the same subtraction leaves the sum of two honest updates, neither of them
    rule3 = SecureBucketing(bucket_size=3, inner=CoordinateMedian(), threat_model=HONEST_SERVER)
    view3 = rule3.server_view(batch)
    idx = rule3.buckets(batch)[0].tolist()
    rest = view3.means[0].double() * view3.totals[0] - batch.weights[idx[0]] * batch.updates[idx[0]].double()
    pair = batch.weights[idx[1]] * batch.updates[idx[1]].double() + batch.weights[idx[2]] * batch.updates[
        idx[2]].double()
    torch.testing.assert_close(rest, pair, atol=1e-4, rtol=0)
    for honest in idx[1:]:
        guess = rest / (view3.totals[0] - batch.weights[idx[0]])
        assert (guess.float() - batch.updates[honest]).abs().max() > 1e-2


def test_a_bucket_of_two_is_refused_unless_the_threat_model_says_no_client_colludes():
    refusal = r"bucket_size: must be >= 3 under threat_model='colluding-clients', got 2: a bucket of s "
    with pytest.raises(ConfigError, match=refusal + "clients tolerates s - 2 colluders") as info:
        SecureBucketing(bucket_size=2, inner=CoordinateMedian())
    assert "threat_model='honest-but-curious-server'" in str(info.value)  # names the opt-in
    with pytest.raises(ConfigError, match=r"threat_model: 'colluding-clients' with secure\.corrupt_fraction "
                                          r"= 0 assumes no client colludes"):
        SecureBucketing(bucket_size=3, secure=SecureSum(corrupt_fraction=0.0))
    # the explicit opt-in runs, and reports that its buckets tolerate no colluder
    rule = SecureBucketing(bucket_size=2, inner=CoordinateMedian(), threat_model=HONEST_SERVER,
                           secure=SecureSum(corrupt_fraction=0.3))
    out = rule.aggregate(_batch(8, 3, 2), {})
    assert out.metrics["bucket_collusion_tolerance"] == 0 and out.metrics["assumed_colluders"] == 0
    assert rule.assumed_colluders(8) == 0 and rule.check_collusion(100) == 0


def test_each_round_needs_buckets_that_tolerate_the_assumed_colluders():
    rule = SecureBucketing(bucket_size=3, inner=CoordinateMedian(), secure=SecureSum(corrupt_fraction=0.1))
    assert rule.assumed_colluders(19) == 1 and rule.check_collusion(19) == 1
    out = rule.aggregate(_batch(19, 2, 4), {})
    assert out.metrics["bucket_collusion_tolerance"] == 1 and out.metrics["assumed_colluders"] == 1
    # 20 clients: floor(0.1 * 20) = 2 colluders, all of which the server may seat in one bucket of 3
    with pytest.raises(ConfigError, match=r"bucket_size: must be >= 4 for a round of 20 clients under "
                                          r"threat_model='colluding-clients', got 3"):
        rule.aggregate(_batch(20, 2, 4), {})
    with pytest.raises(ConfigError, match=r"bucket_size: must be >= 5 for a round of 4 clients .* "
                                          r"\(4 clients make one bucket\)"):
        SecureBucketing(bucket_size=6, secure=SecureSum(corrupt_fraction=0.75)).check_collusion(4)
    # 5 clients in buckets of 3 make one bucket of 5: it tolerates 3
    assert SecureBucketing(bucket_size=3, secure=SecureSum(corrupt_fraction=0.6)).check_collusion(5) == 3


@settings(max_examples=60)
@given(n=st.integers(2, 200), size=st.integers(3, 12), c=st.floats(0.01, 0.5), seed=st.integers(0, 2**31))
def test_a_round_passes_iff_no_seating_of_the_colluders_isolates_an_honest_client(n, size, c, seed):
    rule = SecureBucketing(bucket_size=size, secure=SecureSum(corrupt_fraction=c))
    colluders = math.floor(c * n + 1e-9)
    assert rule.assumed_colluders(n) == colluders
    # the server seats the colluders where it likes: the best it can do is fill the smallest bucket
    smallest = min(len(g) for g in rule.buckets(_batch(n, 1, seed)))
    isolated = smallest - min(colluders, smallest) < 2  # some bucket left with at most one honest client
    if not isolated:
        assert rule.check_collusion(n) == smallest - 2
    else:
        with pytest.raises(ConfigError, match=rf"bucket_size: must be >= {colluders + 2} for a round of {n}"):
            rule.check_collusion(n)


@settings(max_examples=10)
@given(st.integers(3, 12), st.integers(3, 5), st.integers(0, 2**31))
def test_the_reported_tolerance_is_the_smallest_bucket_minus_two(n, size, seed):
    rule = SecureBucketing(bucket_size=size, inner=Mean(), threat_model=HONEST_SERVER)
    batch = _batch(n, 2, seed)
    out = rule.aggregate(batch, {})
    assert out.metrics["bucket_collusion_tolerance"] == min(len(g) for g in rule.buckets(batch)) - 2
