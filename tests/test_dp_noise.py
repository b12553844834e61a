"""dp.noise: the CSPRNG source and the discrete Gaussian / Skellam samplers against their exact pmfs."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from scipy import stats

from dp.noise import (
    SecureRandom,
    discrete_gaussian,
    discrete_gaussian_pmf,
    discrete_gaussian_variance,
    rational_variance,
    skellam,
    skellam_pmf,
)
from secagg.errors import ConfigError

N = 100_000


def _seed(tag: int) -> bytes:
    return bytes([tag]) * 32  # fixed keys: reproducible tests only


def _chi_square_p(samples: np.ndarray, pmf) -> float:
    """Chi-square p-value of integer samples against ``pmf(ks)``; tails lumped until expected >= 5."""
    lo, hi = int(samples.min()) - 1, int(samples.max()) + 1
    ks = np.arange(lo, hi + 1)
    expected = pmf(ks) * samples.size
    inside = np.flatnonzero(expected >= 5)
    a, b = ks[inside[0]], ks[inside[-1]]
    counts = np.bincount(samples - lo, minlength=ks.size).astype(np.float64)
    obs = [counts[ks < a].sum() + 0.0, *counts[(ks >= a) & (ks <= b)], counts[ks > b].sum()]
    mid = pmf(np.arange(a, b + 1)) * samples.size
    exp = [samples.size * float(pmf(np.arange(lo - 2000, a)).sum()), *mid,
           samples.size * float(pmf(np.arange(b + 1, hi + 2000)).sum())]
    obs, exp = np.array(obs), np.array(exp)
    keep = exp > 0
    exp = exp[keep] * obs[keep].sum() / exp[keep].sum()  # renormalize the far tails' rounding
    return float(stats.chisquare(obs[keep], exp).pvalue)


@pytest.mark.parametrize("sigma", [0.5, 1.0, 3.0, 20.0])
def test_discrete_gaussian_matches_exact_pmf(sigma):
    x = discrete_gaussian(sigma, N, SecureRandom(_seed(int(sigma * 2))))
    assert x.dtype == np.int64 and x.shape == (N,)
    assert _chi_square_p(x, lambda ks: discrete_gaussian_pmf(sigma, ks)) > 1e-4
    var = discrete_gaussian_variance(sigma)
    assert abs(x.mean()) < 5 * math.sqrt(var / N)
    # sample variance within 5 standard errors (Var of s^2 ~ 2 var^2 / N for near-Gaussian tails)
    assert abs(x.var() - var) < 5 * var * math.sqrt(3.0 / N)
    # symmetric: the counts at +k and -k agree
    pos, neg = np.count_nonzero(x > 0), np.count_nonzero(x < 0)
    assert abs(pos - neg) < 5 * math.sqrt(pos + neg)


@pytest.mark.parametrize("sigma", [Fraction(7, 3), 4096.0])
def test_discrete_gaussian_binned_for_fraction_and_large_sigma(sigma):
    """A Fraction sigma (exact s2 = 49/9) and the largest sigma distributed DP plans for."""
    x = discrete_gaussian(sigma, N, SecureRandom(_seed(11)))
    s = float(sigma)
    width = max(1, round(s / 8))
    edges = np.arange(-6 * s - width, 6 * s + 2 * width, width).astype(np.int64)
    ks = np.arange(edges[0], edges[-1])
    probs = np.add.reduceat(discrete_gaussian_pmf(sigma, ks), edges[:-1] - edges[0])
    idx = np.clip(np.searchsorted(edges, x, side="right") - 1, 0, probs.size - 1)  # +-6 sigma: never clipped
    counts = np.bincount(idx, minlength=probs.size)
    keep = probs * N >= 5
    obs, exp = counts[keep], probs[keep] * N
    exp *= obs.sum() / exp.sum()
    assert stats.chisquare(obs, exp).pvalue > 1e-4
    var = discrete_gaussian_variance(sigma)
    assert abs(x.var() - var) < 5 * var * math.sqrt(3.0 / N)


def test_discrete_gaussian_variance_is_below_sigma_squared_for_small_sigma():
    assert discrete_gaussian_variance(0.5) < 0.25 * 0.9
    assert discrete_gaussian_variance(3.0) == pytest.approx(9.0, rel=1e-9)


@pytest.mark.parametrize("mu", [0.5, 2.0, 50.0, 1e4])
def test_skellam_matches_exact_pmf(mu):
    x = skellam(mu, N, SecureRandom(_seed(7 + int(math.log10(mu * 10)))))
    assert x.dtype == np.int64 and x.shape == (N,)
    assert _chi_square_p(x, lambda ks: skellam_pmf(mu, ks)) > 1e-4
    assert abs(x.mean()) < 5 * math.sqrt(2 * mu / N)
    kurt = 1.0 / (2 * mu)  # excess kurtosis of Sk(mu, mu)
    assert abs(x.var() - 2 * mu) < 5 * 2 * mu * math.sqrt((2.0 + kurt) / N)
    pos, neg = np.count_nonzero(x > 0), np.count_nonzero(x < 0)
    assert abs(pos - neg) < 5 * math.sqrt(pos + neg)


def test_pmfs_are_normalized():
    for sigma in (0.5, 20.0):
        ks = np.arange(-2000, 2001)
        assert discrete_gaussian_pmf(sigma, ks).sum() == pytest.approx(1.0, abs=1e-12)
    for mu in (0.5, 1e4):
        ks = np.arange(-5000, 5001)
        assert skellam_pmf(mu, ks).sum() == pytest.approx(1.0, abs=1e-9)


def test_fresh_sources_differ_and_a_fixed_seed_reproduces():
    a, b = SecureRandom(), SecureRandom()
    assert not np.array_equal(a.uniform_bits(8), b.uniform_bits(8))
    assert not np.array_equal(discrete_gaussian(5.0, 64, a), discrete_gaussian(5.0, 64, b))
    assert not np.array_equal(skellam(5.0, 64, a), skellam(5.0, 64, b))
    for sampler in (discrete_gaussian, skellam):
        x = sampler(3.0, 1000, SecureRandom(_seed(1)))
        y = sampler(3.0, 1000, SecureRandom(_seed(1)))
        assert np.array_equal(x, y)


def test_keystream_is_aes_ctr_of_the_seed():
    from secagg.crypto.prg import expand

    seed = bytes(range(32))
    words = SecureRandom(seed).uniform_bits(4)
    assert np.array_equal(words.view(np.uint32), expand(seed, 8))


@given(high=st.integers(1, 2**63), size=st.integers(0, 200))
def test_below_stays_in_range(high, size):
    x = SecureRandom().below(high, size)
    assert x.shape == (size,) and x.dtype == np.uint64
    assert (x < np.uint64(high)).all()


@given(low=st.integers(-(2**40), 2**40), span=st.integers(1, 2**40))
def test_integers_stay_in_range(low, span):
    x = SecureRandom().integers(low, low + span, 50)
    assert x.dtype == np.int64 and (x >= low).all() and (x < low + span).all()


def test_integers_are_unbiased_for_a_range_that_does_not_divide_2_64():
    x = SecureRandom(_seed(3)).integers(0, 3, 60_000)
    counts = np.bincount(x, minlength=3)
    assert stats.chisquare(counts).pvalue > 1e-4


def test_below_is_unbiased_on_the_64_bit_path():
    # high = 3 * 2^61 > 2^32 uses 64-bit words with rejection: the top "thirds" must be equally likely
    x = SecureRandom(_seed(8)).below(3 * 2**61, 60_000)
    counts = np.bincount((x >> np.uint64(61)).astype(np.int64), minlength=3)
    assert counts.size == 3 and stats.chisquare(counts).pvalue > 1e-4
    # per-element highs mixing both sizes stay in range
    highs = np.array([1, 2, 3, 2**32 + 5, 2**40], dtype=np.uint64)
    assert (SecureRandom().below(np.tile(highs, 100)) < np.tile(highs, 100)).all()


def test_uniform_is_in_unit_interval_with_53_bits():
    u = SecureRandom(_seed(4)).uniform(100_000)
    assert (u >= 0).all() and (u < 1).all()
    assert np.all((u * 2.0**53) == np.floor(u * 2.0**53))
    assert stats.kstest(u, "uniform").pvalue > 1e-4


@pytest.mark.parametrize(("num", "den"), [(0, 1), (1, 3), (1, 1), (5, 2), (7, 3)])
def test_bernoulli_exp_frequency(num, den):
    k = 40_000
    hits = SecureRandom(_seed(5)).bernoulli_exp(np.full(k, num), den).sum()
    p = math.exp(-num / den)
    assert abs(hits - k * p) <= 5 * math.sqrt(k * p * (1 - p)) + 1e-9


def test_bernoulli_exp_big_numerators_use_exact_integers():
    from dp.noise import _bernoulli_exp_big

    rng = SecureRandom(_seed(6))
    assert not any(_bernoulli_exp_big(3 * 2**64, 2**52, rng) for _ in range(20))  # exp(-12288)
    hits = sum(_bernoulli_exp_big(2**52 + 2**51, 2**52, rng) for _ in range(2000))  # exp(-1.5)
    p = math.exp(-1.5)
    assert abs(hits - 2000 * p) < 5 * math.sqrt(2000 * p * (1 - p))


def test_rational_variance():
    assert rational_variance(3.0) == 9
    assert rational_variance(Fraction(3, 2)) == Fraction(9, 4)
    s2 = rational_variance(1.3)
    assert abs(float(s2) - 1.69) < 1e-12
    assert rational_variance(4096.0) == 4096**2


def test_bad_input_raises_config_error_naming_the_field():
    rng = SecureRandom()
    with pytest.raises(ConfigError, match="sigma"):
        discrete_gaussian(0.0, 3, rng)
    with pytest.raises(ConfigError, match="sigma"):
        discrete_gaussian(1e6, 3, rng)
    with pytest.raises(ConfigError, match="mu"):
        skellam(-1.0, 3, rng)
    with pytest.raises(ConfigError, match="size"):
        skellam(1.0, -1, rng)
    with pytest.raises(ConfigError, match="seed"):
        SecureRandom(b"short")
