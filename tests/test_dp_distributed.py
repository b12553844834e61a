"""dp.rotation and dp.distributed: the Hadamard rotation, and DDG/Skellam inside secure aggregation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from dp.distributed import DistributedDP
from dp.noise import SecureRandom, discrete_gaussian_variance
from dp.rotation import pad_length, rotate, signs, unrotate
from secagg.aggregation.base import Aggregator, UpdateBatch
from secagg.errors import AbortError, ConfigError

finite = st.floats(-1e3, 1e3, allow_nan=False, allow_infinity=False)


def _vectors(max_d: int = 70):
    return st.integers(1, max_d).flatmap(lambda d: arrays(np.float64, (d,), elements=finite))


# ------------------------------------------------------------------------------------ rotation


def test_pad_length():
    assert [pad_length(d) for d in (1, 2, 3, 4, 5, 1000, 1024, 1025)] == [1, 2, 4, 4, 8, 1024, 1024, 2048]
    with pytest.raises(ConfigError, match="d"):
        pad_length(0)


def test_rotation_is_the_hadamard_matrix_times_signs():
    from scipy.linalg import hadamard

    for length in (1, 2, 8, 32):
        explicit = hadamard(length) @ np.diag(signs(5, length)) / math.sqrt(length)
        assert np.allclose(rotate(np.eye(length), 5), explicit.T, atol=1e-12)


@given(x=_vectors(), seed=st.integers(0, 2**32))
def test_rotation_preserves_norm_and_inverts(x, seed):
    y = rotate(x, seed)
    assert y.shape == (pad_length(x.size),)
    assert np.linalg.norm(y) == pytest.approx(np.linalg.norm(x), rel=1e-12, abs=1e-9)
    assert np.allclose(unrotate(y, seed, x.size), x, rtol=0, atol=1e-9)


@given(d=st.integers(1, 40), a=finite, b=finite, seed=st.integers(0, 100), data=st.data())
def test_rotation_is_linear_and_batched(d, a, b, seed, data):
    x = data.draw(arrays(np.float64, (d,), elements=finite))
    z = data.draw(arrays(np.float64, (d,), elements=finite))
    lhs = rotate(a * x + b * z, seed)
    assert np.allclose(lhs, a * rotate(x, seed) + b * rotate(z, seed), rtol=1e-9, atol=1e-6)
    both = rotate(np.stack([x, z]), seed)
    assert np.allclose(both, np.stack([rotate(x, seed), rotate(z, seed)]), atol=1e-12)
    assert np.allclose(unrotate(both, seed, d), np.stack([x, z]), atol=1e-9)


def test_rotation_spreads_a_spike_over_all_coordinates():
    y = rotate(np.eye(1, 64)[0], 1)
    assert np.allclose(np.abs(y), 1 / 8)
    assert not np.array_equal(signs(1, 64), signs(2, 64))


# ------------------------------------------------------------------------------------ config


@pytest.mark.parametrize(("kwargs", "field"), [
    ({"clip": 0.0}, "clip"), ({"clip": -1.0}, "clip"), ({"noise_multiplier": -0.1}, "noise_multiplier"),
    ({"mechanism": "laplace"}, "mechanism"), ({"bits": 7}, "bits"), ({"bits": 33}, "bits"),
    ({"beta": 1.0}, "beta"), ({"expected_clients": 1}, "expected_clients"),
    ({"min_clients": 11}, "min_clients"), ({"normalize": "weighted"}, "normalize"),
    ({"bits": 8, "expected_clients": 5000, "k_stddevs": 4.0}, "bits"),
])
def test_bad_settings_raise_config_error_naming_the_field(kwargs, field):
    with pytest.raises(ConfigError, match=field):
        DistributedDP(**kwargs)


def test_too_small_a_ring_for_the_dimension_names_bits():
    agg = DistributedDP(bits=8, expected_clients=10, noise_multiplier=1.0)
    agg.plan(4)  # fine for a tiny vector
    with pytest.raises(ConfigError, match="bits"):
        agg.plan(10**5)  # rounding would swamp the signal: sensitivity inflated far above 1.5x


def test_round_trips_through_dict():
    agg = DistributedDP(mechanism="skellam", clip=0.5, noise_multiplier=1.1, expected_clients=8,
                        min_clients=6, graph="secaggplus")
    assert Aggregator.from_dict(agg.to_dict()) == agg


def test_plan_meets_its_stated_budget():
    agg = DistributedDP(clip=2.0, noise_multiplier=0.8, bits=16, expected_clients=20, min_clients=15)
    p = agg.plan(1000)
    n, n_min, m = 20, 15, 2.0**15 / agg.k_stddevs
    total_var = n**2 * 4.0 / (p.length * p.gamma**2) + n / 4 + n * p.sigma_l**2
    assert total_var <= m**2 * (1 + 1e-9)  # k std devs of the sum fit in half the ring
    assert math.sqrt(n_min) * p.sigma_l * p.gamma == pytest.approx(0.8 * 2.0)  # target noise z c
    params = agg.privacy_parameters(1000)
    assert params["n"] == n_min and params["l2_sensitivity"] >= 2.0 / p.gamma
    assert 0.66 < params["effective_noise_multiplier"] <= 0.8


# ------------------------------------------------------------------------------------ exactness


def _batch(n: int, d: int, seed: int = 0, scale: float = 1.0) -> UpdateBatch:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=torch.float64) * scale
    return UpdateBatch(x, torch.ones(n, dtype=torch.float64), tuple(range(10, 10 + n)), round=3, seed=seed)


def test_noise_off_secure_sum_equals_independent_rounding():
    agg = DistributedDP(noise_multiplier=0.0, clip=1.0, bits=16, expected_clients=5, min_clients=5)
    batch = _batch(5, 37, scale=0.5)  # some rows clipped (norm ~ 3), all rounded
    keys = {u: bytes([u]) * 32 for u in batch.client_ids}
    out = agg.aggregate_with_noise(batch, {}, rngs={u: SecureRandom(k) for u, k in keys.items()})
    assert out.metrics["rounding_redraws"] == 0
    # independent plain computation: rotate, clip, scale, round with the first uniforms of each key
    p = agg.plan(37)
    seed = agg.rotation_seed(batch)
    x = batch.updates.numpy()
    total = np.zeros(p.length, dtype=np.int64)
    for row, u in enumerate(batch.client_ids):
        y = rotate(x[row], seed)
        y *= min(1.0, 1.0 / np.linalg.norm(y)) / p.gamma
        up = SecureRandom(keys[u]).uniform(p.length) < y - np.floor(y)
        q = np.floor(y).astype(np.int64) + up
        assert np.linalg.norm(q) <= p.l2_sensitivity
        total += q
    expected = unrotate(total * p.gamma, seed, 37) / 5
    assert np.array_equal(out.update.numpy(), expected)
    # and within the rounding bound of the true mean of the clipped updates
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    clipped_mean = (x * np.minimum(1.0, 1.0 / norms)).mean(axis=0)
    assert np.linalg.norm(out.update.numpy() - clipped_mean) <= p.gamma * math.sqrt(p.length)
    assert out.metrics["survivors"] == 5


def test_rounding_is_within_one_unit_and_norm_bounded():
    agg = DistributedDP(noise_multiplier=0.0, bits=12, expected_clients=4)
    rng = SecureRandom(bytes(32))
    v = rotate(np.random.default_rng(0).normal(size=(200, 50)), 1)  # not secret: test data
    v *= (1.0 / np.linalg.norm(v, axis=1, keepdims=True)) / agg.plan(50).gamma
    q, _ = agg.round_scaled(v, rng)
    assert np.all(np.abs(q - v) < 1)
    assert np.all(np.linalg.norm(q, axis=1) <= agg.plan(50).l2_sensitivity)


# ------------------------------------------------------------------------------------ statistics


@pytest.mark.parametrize("mechanism", ["ddg", "skellam"])
def test_noise_variance_and_unbiased_mean(mechanism):
    n, d, rounds = 3, 6, 20_000
    agg = DistributedDP(mechanism=mechanism, noise_multiplier=0.05, clip=1.0, bits=10, expected_clients=n,
                        min_clients=n)
    p = agg.plan(d)
    x = np.random.default_rng(1).normal(size=(n, d)) * 0.3  # not secret: test data
    seed = 11
    ints, _ = agg.encode_integers(np.tile(x, (rounds, 1)), seed, SecureRandom(bytes([9]) * 32))
    sums = ints.reshape(rounds, n, p.length).sum(axis=1)
    # the scaled, rotated, clipped inputs and their rounding variance f (1 - f)
    v = rotate(x, seed)
    v *= np.minimum(1.0, 1.0 / np.linalg.norm(v, axis=1, keepdims=True)) / p.gamma
    f = v - np.floor(v)
    noise_var = discrete_gaussian_variance(p.sigma_l) if mechanism == "ddg" else 2 * p.mu_l
    expected_var = n * noise_var + (f * (1 - f)).sum(axis=0)
    assert p.sigma_l == pytest.approx(0.05 / (p.gamma * math.sqrt(n)))
    emp_var = sums.var(axis=0)
    se = expected_var * math.sqrt(2.0 / rounds)
    assert np.all(np.abs(emp_var - expected_var) < 5 * se)
    pooled = emp_var.sum() / expected_var.sum()
    assert abs(pooled - 1) < 5 * math.sqrt(2.0 / rounds / p.length)
    # the integer sum is unbiased for the sum of the scaled inputs
    assert np.all(np.abs(sums.mean(axis=0) - v.sum(axis=0)) < 5 * np.sqrt(expected_var / rounds))
    # and so is the decoded float mean, through the modular reduction and unrotation
    decoded = np.stack([agg.decode_sum(agg.centered(s), d, seed) for s in sums[:2000]]) / n
    clipped_mean = (x * np.minimum(1.0, 1.0 / np.linalg.norm(x, axis=1, keepdims=True))).mean(axis=0)
    err = decoded.mean(axis=0) - clipped_mean
    std = p.gamma * np.sqrt(expected_var.max() / 2000) / n
    assert np.all(np.abs(err) < 5 * std)


def test_wrap_rate_is_below_the_stated_bound():
    n, d, rounds = 3, 4, 4000
    agg = DistributedDP(noise_multiplier=10.0, clip=1.0, bits=8, k_stddevs=3.0, expected_clients=n,
                        min_clients=n)
    p = agg.plan(d)
    bound = agg.wrap_probability_bound(d)
    assert 0 < bound < 0.5
    x = np.tile(np.eye(1, d), (n, 1))  # aligned clients: the signal's worst case
    ints, _ = agg.encode_integers(np.tile(x, (rounds, 1)), 5, SecureRandom(bytes([3]) * 32))
    true_sum = ints.reshape(rounds, n, p.length).sum(axis=1)
    residues = (ints % (1 << agg.bits)).reshape(rounds, n, p.length).sum(axis=1)
    wrapped = np.any(agg.centered(residues) != true_sum, axis=1)
    rate = wrapped.mean()
    assert rate > 0  # the simulation does reach the edge of the ring
    assert rate <= bound + 5 * math.sqrt(bound / rounds)


def test_skellam_wrap_bound_is_a_valid_chernoff_bound():
    agg = DistributedDP(mechanism="skellam", noise_multiplier=10.0, bits=8, k_stddevs=3.0,
                        expected_clients=3, min_clients=3)
    ddg = DistributedDP(noise_multiplier=10.0, bits=8, k_stddevs=3.0, expected_clients=3, min_clients=3)
    # Skellam's log-MGF 2 mu (cosh t - 1) >= mu t^2: its bound is never below the Gaussian one
    assert 0 < ddg.wrap_probability_bound(4) <= agg.wrap_probability_bound(4) * (1 + 1e-6) < 1
    # and its tail: the bound at the ring edge holds for the exact Skellam pmf of the noise alone
    from dp.noise import skellam_pmf

    p = agg.plan(4)
    ks = np.arange(128, 4000)
    tail = 2 * skellam_pmf(3 * p.mu_l, ks).sum()  # sum of 3 Sk(mu_l) is Sk(3 mu_l)
    assert 4 * tail <= agg.wrap_probability_bound(4)


# ------------------------------------------------------------------------------------ protocol


@pytest.mark.parametrize("mechanism", ["ddg", "skellam"])
def test_noisy_round_through_secure_aggregation(mechanism):
    agg = DistributedDP(mechanism=mechanism, noise_multiplier=1.0, clip=1.0, expected_clients=6,
                        min_clients=4, dropout=0.3, normalize="survivors")
    batch = _batch(6, 20)
    out = agg.aggregate(batch, {})
    m = out.metrics
    assert m["survivors"] == 4 and m["dropped"] == 2
    assert out.update.shape == (20,) and out.update.dtype == batch.updates.dtype
    assert 0 <= m["wrap_probability_bound"] <= 1
    assert m["effective_noise_multiplier"] == pytest.approx(agg.privacy_parameters(20, 4)
                                                           ["effective_noise_multiplier"])
    assert m["effective_noise_multiplier"] > 0.66
    # the noise on the sum has std z c = 1 per coordinate, on the mean of 4 survivors 1/4: over 20
    # coordinates its norm is about sqrt(20) / 4; two means of clipped updates differ by at most 2
    x = batch.updates.numpy()
    clipped_mean = (x * np.minimum(1.0, 1.0 / np.linalg.norm(x, axis=1, keepdims=True))).mean(axis=0)
    assert np.linalg.norm(out.update.numpy() - clipped_mean) < 2 + 3 * math.sqrt(20) / 4


def test_too_many_dropouts_abort():
    agg = DistributedDP(noise_multiplier=1.0, expected_clients=5, min_clients=5, dropout=0.2)
    with pytest.raises(AbortError, match="min_clients"):
        agg.aggregate(_batch(5, 8), {})
    with pytest.raises(AbortError, match="min_clients"):
        DistributedDP(expected_clients=5, min_clients=4).aggregate(_batch(3, 8), {})
    with pytest.raises(ConfigError, match="expected_clients"):
        DistributedDP(expected_clients=3).aggregate(_batch(4, 8), {})


def test_privacy_parameters_for_accounting():
    ddg = DistributedDP(noise_multiplier=1.2, expected_clients=10, min_clients=8).privacy_parameters(100)
    assert ddg["mechanism"] == "ddg" and ddg["n"] == 8
    assert {"l2_sensitivity", "sigma_l", "sigma_l_squared"} <= set(ddg)
    sk = DistributedDP(mechanism="skellam", noise_multiplier=1.2, expected_clients=10).privacy_parameters(100)
    assert sk["mechanism"] == "skellam" and sk["n"] == 10
    l2 = sk["l2_sensitivity"]
    assert sk["l1_sensitivity"] <= min(l2**2, math.sqrt(128) * l2) + 1e-9
    assert sk["mu_l"] == pytest.approx(sk["sigma_l"] ** 2 / 2)
    assert DistributedDP(noise_multiplier=0.0).privacy_parameters(100)["mechanism"] == "none"


@pytest.mark.parametrize("mechanism", ["ddg", "skellam"])
def test_accountant_kwargs_feed_the_discrete_accountant(mechanism):
    accounting = pytest.importorskip("dp.accounting")
    agg = DistributedDP(mechanism=mechanism, noise_multiplier=1.0, expected_clients=10, min_clients=8)
    kw = agg.accountant_kwargs(100)
    acc = accounting.DiscreteMechanismAccountant(**kw, sample_rate=0.1)
    assert math.isfinite(acc.epsilon(10, 1e-5)) and acc.epsilon(10, 1e-5) > 0
    if mechanism == "skellam":
        assert kw["mu"] == pytest.approx(8 * agg.plan(100).sigma_l ** 2)  # 8 clients' variances
    with pytest.raises(ConfigError, match="noise_multiplier"):
        DistributedDP(noise_multiplier=0.0).accountant_kwargs(100)


def test_epsilon_after_composes_the_mechanisms_rdp_over_rounds():
    from dp.accounting import DiscreteMechanismAccountant

    for mechanism in ("ddg", "skellam"):
        agg = DistributedDP(mechanism=mechanism, clip=1.0, noise_multiplier=1.0, expected_clients=10,
                            delta=1e-5, target_epsilon=5.0)
        direct = DiscreteMechanismAccountant(**agg.accountant_kwargs(100), sample_rate=1.0, sampling="none")
        eps = [agg.epsilon_after(r, 100) for r in (1, 2, 4)]
        assert eps == [direct.epsilon(r, 1e-5) for r in (1, 2, 4)]
        assert eps[0] < eps[1] < eps[2]
        assert agg.privacy_budget() == 5.0
    assert DistributedDP(noise_multiplier=0.0).epsilon_after(3, 100) is None
    with pytest.raises(ConfigError, match="dim: distributed DP's sensitivity depends on the update length"):
        DistributedDP().epsilon_after(3)
    with pytest.raises(ConfigError, match="delta: must be < 1"):
        DistributedDP(delta=1.0)
