"""Statistical checks for noise samplers (discrete Gaussian, Skellam, the CSPRNG Gaussian, your own).

:func:`check_noise_mechanism` draws many samples of an integer sampler and tests them against the
mechanism's claimed probability mass function: a chi-square goodness-of-fit test (tails pooled so
that every bin expects at least 5 draws) plus z-tests of the sample mean and variance against the
pmf's moments. :func:`check_continuous_noise` does the same for a real-valued sampler against a
claimed CDF, with a Kolmogorov-Smirnov test.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
from scipy.stats import chi2, kstest, norm

__all__ = ["check_continuous_noise", "check_noise_mechanism"]

MIN_EXPECTED = 5.0


def _pool(observed: np.ndarray, expected: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Merge adjacent bins (left to right, remainder into the last bin) until each expects >= 5."""
    obs, exp = [], []
    o_acc = e_acc = 0.0
    for o, e in zip(observed, expected, strict=True):
        o_acc += o
        e_acc += e
        if e_acc >= MIN_EXPECTED:
            obs.append(o_acc)
            exp.append(e_acc)
            o_acc = e_acc = 0.0
    if e_acc > 0 or o_acc > 0:
        if obs:
            obs[-1] += o_acc
            exp[-1] += e_acc
        else:
            obs.append(o_acc)
            exp.append(e_acc)
    return np.array(obs), np.array(exp)


def _wide_support(draws: np.ndarray, pmf: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """Integers around the observed range, widened until the pmf's mass outside is below 1e-12."""
    lo, hi = int(draws.min()), int(draws.max())
    pad = max(10, hi - lo)
    for _ in range(12):
        ks = np.arange(lo - pad, hi + pad + 1)
        if float(np.sum(pmf(ks))) >= 1.0 - 1e-12:
            return ks
        pad *= 2
    return ks


def check_noise_mechanism(sampler: Callable[[int], np.ndarray], pmf: Callable[[np.ndarray], np.ndarray],
                          *, samples: int = 20_000, support: np.ndarray | None = None,
                          alpha: float = 1e-3) -> None:
    """Test that ``sampler(size)`` (an array of ``size`` integer draws) follows ``pmf(ks)`` (P[X = k]
    for an integer array ``ks``).

    Three tests at level ``alpha`` each (so a correct sampler fails with probability at most about
    ``3 alpha``; seed the sampler to make the check deterministic): a chi-square goodness-of-fit test
    over ``support`` (default: the observed range, widened until the pmf's mass outside is below
    1e-12; mass outside ``support`` goes to the two end bins, and the tails are pooled so that each
    bin expects at least 5 draws), and z-tests of the sample mean and the sample variance against the
    pmf's mean and variance. Raises :class:`AssertionError` naming the failed test, its statistic and
    p-value.
    """
    if samples < 100:
        raise ValueError(f"samples: need at least 100 draws for the tests, got {samples}")
    draws = np.asarray(sampler(samples))
    if draws.shape != (samples,):
        raise AssertionError(f"sampler({samples}) returned shape {draws.shape}, expected ({samples},)")
    if not np.issubdtype(draws.dtype, np.integer):
        if not np.all(np.isfinite(draws)) or not np.all(draws == np.round(draws)):
            raise AssertionError("sampler returned non-integer draws")
        draws = draws.astype(np.int64)
    ks = np.asarray(support, dtype=np.int64) if support is not None else _wide_support(draws, pmf)
    p = np.asarray(pmf(ks), dtype=np.float64)
    if np.any(p < 0) or not np.all(np.isfinite(p)):
        raise ValueError("pmf: returned negative or non-finite probabilities")
    outside = np.sum((draws < ks.min()) | (draws > ks.max()))
    if outside:
        raise AssertionError(f"{outside} of {samples} draws fall outside the support "
                             f"[{ks.min()}, {ks.max()}]")

    # chi-square goodness of fit
    observed = np.bincount(draws - ks.min(), minlength=len(ks)).astype(np.float64)
    rest = max(0.0, 1.0 - float(p.sum()))
    probs = p.copy()
    probs[0] += rest / 2
    probs[-1] += rest / 2
    obs, exp = _pool(observed, samples * probs / probs.sum())
    dof = len(obs) - 1
    if dof >= 1:
        stat = float(np.sum((obs - exp) ** 2 / exp))
        pvalue = float(chi2.sf(stat, dof))
        if pvalue < alpha:
            raise AssertionError(f"chi-square goodness-of-fit test rejected the sampler: statistic "
                                 f"{stat:.4g} with {dof} degrees of freedom, p-value {pvalue:.3g} < "
                                 f"alpha={alpha:g} ({samples} draws, {len(obs)} pooled bins)")

    # moments, from the pmf normalized over the support
    q = p / p.sum()
    kf = ks.astype(np.float64)
    mean = float(np.sum(q * kf))
    var = float(np.sum(q * (kf - mean) ** 2))
    mu4 = float(np.sum(q * (kf - mean) ** 4))
    x = draws.astype(np.float64)
    z_crit = float(norm.isf(alpha / 2))
    m = float(x.mean())
    z = (m - mean) / math.sqrt(max(var, 1e-300) / samples)
    if abs(z) > z_crit:
        raise AssertionError(f"mean test rejected the sampler: sample mean {m:.5g}, pmf mean {mean:.5g}, "
                             f"z = {z:.3g}, p-value {2 * norm.sf(abs(z)):.3g} < alpha={alpha:g}")
    v = float(x.var(ddof=1))
    z = (v - var) / math.sqrt(max(mu4 - var**2, 1e-300) / samples)
    if abs(z) > z_crit:
        raise AssertionError(f"variance test rejected the sampler: sample variance {v:.5g}, pmf variance "
                             f"{var:.5g}, z = {z:.3g}, p-value {2 * norm.sf(abs(z)):.3g} < alpha={alpha:g}")


def check_continuous_noise(sampler: Callable[[int], np.ndarray],
                           cdf: Callable[[np.ndarray], np.ndarray], *, mean: float, variance: float,
                           samples: int = 20_000, alpha: float = 1e-3) -> None:
    """Test that ``sampler(size)`` (``size`` real draws) follows the distribution with ``cdf`` and the
    stated ``mean`` and ``variance``: a Kolmogorov-Smirnov test and z-tests of the sample mean and
    variance (the latter assuming a Gaussian fourth moment, 3 variance^2), each at level ``alpha``.
    Raises :class:`AssertionError` naming the failed test, its statistic and p-value."""
    if samples < 100:
        raise ValueError(f"samples: need at least 100 draws for the tests, got {samples}")
    draws = np.asarray(sampler(samples), dtype=np.float64)
    if draws.shape != (samples,):
        raise AssertionError(f"sampler({samples}) returned shape {draws.shape}, expected ({samples},)")
    if not np.all(np.isfinite(draws)):
        raise AssertionError("sampler returned NaN or infinite draws")
    result = kstest(draws, cdf)
    if result.pvalue < alpha:
        raise AssertionError(f"Kolmogorov-Smirnov test rejected the sampler: statistic "
                             f"{result.statistic:.4g}, p-value {result.pvalue:.3g} < alpha={alpha:g} "
                             f"({samples} draws)")
    z_crit = float(norm.isf(alpha / 2))
    m = float(draws.mean())
    z = (m - mean) / math.sqrt(max(variance, 1e-300) / samples)
    if abs(z) > z_crit:
        raise AssertionError(f"mean test rejected the sampler: sample mean {m:.5g}, claimed {mean:.5g}, "
                             f"z = {z:.3g}, p-value {2 * norm.sf(abs(z)):.3g} < alpha={alpha:g}")
    v = float(draws.var(ddof=1))
    z = (v - variance) / math.sqrt(max(2.0 * variance**2, 1e-300) / samples)
    if abs(z) > z_crit:
        raise AssertionError(f"variance test rejected the sampler: sample variance {v:.5g}, claimed "
                             f"{variance:.5g}, z = {z:.3g}, p-value {2 * norm.sf(abs(z)):.3g} "
                             f"< alpha={alpha:g}")
