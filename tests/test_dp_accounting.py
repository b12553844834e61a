"""Tests for dp.accounting: Gaussian (RDP/PRV) client-level accounting, local DP, discrete mechanisms."""

from __future__ import annotations

import itertools
import math
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from opacus.accountants.analysis.rdp import compute_rdp, get_privacy_spent
from scipy import special
from scipy.special import logsumexp

import dp.accounting as accounting
from dp.accounting import (
    ACCOUNTANTS,
    DISCRETE_ORDERS,
    RDP_ORDERS,
    SAMPLING,
    DiscreteMechanismAccountant,
    GaussianAccountant,
    local_gaussian_epsilon,
    noise_multiplier_for,
)
from dp.rdp import ddg_tau, rdp_distributed_discrete_gaussian, rdp_poisson_subsampled, rdp_skellam
from secagg.errors import ConfigError

# --------------------------------------------------------------------------- Gaussian accountant


def test_acceptance_values_rdp() -> None:
    # Abadi et al. / Opacus reference points (values computed here by Opacus's RDP analysis).
    assert GaussianAccountant(1.1, 0.01).epsilon(1000, 1e-5) == pytest.approx(1.71, abs=0.01)
    eps = GaussianAccountant(1.0, 100 / 10000).epsilon(1000, 10000 ** -1.1)
    assert eps == pytest.approx(1.90, abs=0.02)


def test_defaults_are_explicit() -> None:
    acc = GaussianAccountant(1.0, 0.1)
    assert acc.accountant == "rdp" and acc.sampling == "poisson"
    assert ACCOUNTANTS == ("rdp", "prv") and SAMPLING == ("poisson", "none")


@pytest.mark.parametrize("accountant", ACCOUNTANTS)
def test_zero_rounds_is_zero(accountant: str) -> None:
    assert GaussianAccountant(1.0, 0.1, accountant).epsilon(0, 1e-5) == 0.0


@settings(max_examples=10)
@given(z=st.floats(0.5, 5.0), q=st.floats(0.001, 0.2) | st.just(1.0), t=st.integers(1, 2000),
       dt=st.integers(1, 500), dz=st.floats(0.05, 2.0))
def test_rdp_epsilon_monotone(z: float, q: float, t: int, dt: int, dz: float) -> None:
    acc = GaussianAccountant(z, q)
    eps = acc.epsilon(t, 1e-5)
    assert eps > 0.0
    assert acc.epsilon(t + dt, 1e-5) >= eps  # more rounds never cost less
    assert GaussianAccountant(z + dz, q).epsilon(t, 1e-5) <= eps  # more noise never costs more
    assert acc.epsilon(t, 1e-3) <= eps  # a larger delta buys a smaller epsilon


@settings(max_examples=8)
@given(z=st.floats(0.6, 3.0), q=st.floats(0.001, 0.5), t=st.integers(1, 1000))
def test_no_amplification_is_worse(z: float, q: float, t: int) -> None:
    amplified = GaussianAccountant(z, q).epsilon(t, 1e-5)
    plain = GaussianAccountant(z, q, sampling="none").epsilon(t, 1e-5)
    assert plain >= amplified
    assert plain == GaussianAccountant(z, 1.0).epsilon(t, 1e-5)  # "none" counts every round as q = 1


@pytest.mark.parametrize(("z", "q", "t"), [(1.1, 0.01, 1000), (1.0, 0.01, 1000), (0.8, 0.05, 200),
                                          (2.0, 1.0, 50)])
def test_prv_tighter_than_rdp(z: float, q: float, t: int) -> None:
    rdp = GaussianAccountant(z, q).epsilon(t, 1e-5)
    prv = GaussianAccountant(z, q, "prv").epsilon(t, 1e-5)
    assert 0.0 < prv <= rdp + 0.02  # PRV's upper bound is (numerically) tight; RDP is not
    assert prv >= 0.7 * rdp  # ...but the two analyse the same mechanism and stay close


@pytest.mark.parametrize(("accountant", "sampling", "target", "q", "t"),
                         [("rdp", "poisson", 2.0, 0.01, 1000), ("rdp", "poisson", 0.5, 0.1, 100),
                          ("prv", "poisson", 2.0, 0.05, 100), ("rdp", "none", 8.0, 0.3, 20)])
def test_noise_multiplier_round_trip(accountant: str, sampling: str, target: float, q: float,
                                     t: int) -> None:
    z = noise_multiplier_for(target, 1e-5, q, t, accountant, sampling)
    eps = GaussianAccountant(z, q, accountant, sampling).epsilon(t, 1e-5)
    assert eps <= target
    assert eps >= 0.97 * target  # z is (nearly) the smallest: a slightly smaller z breaks the target
    assert GaussianAccountant(0.99 * z, q, accountant, sampling).epsilon(t, 1e-5) > eps


@pytest.mark.parametrize(("kwargs", "field"), [
    ({"noise_multiplier": 0.0, "sample_rate": 0.1}, "noise_multiplier"),
    ({"noise_multiplier": -1.0, "sample_rate": 0.1}, "noise_multiplier"),
    ({"noise_multiplier": float("nan"), "sample_rate": 0.1}, "noise_multiplier"),
    ({"noise_multiplier": 1.0, "sample_rate": 0.0}, "sample_rate"),
    ({"noise_multiplier": 1.0, "sample_rate": 1.5}, "sample_rate"),
    ({"noise_multiplier": 1.0, "sample_rate": 0.1, "accountant": "gdp"}, "accountant"),
    ({"noise_multiplier": 1.0, "sample_rate": 0.1, "sampling": "uniform"}, "sampling"),
])
def test_accountant_rejects_bad_config(kwargs: dict, field: str) -> None:
    with pytest.raises(ConfigError, match=field):
        GaussianAccountant(**kwargs)


@pytest.mark.parametrize(("rounds", "delta", "field"), [
    (-1, 1e-5, "rounds"), (1.5, 1e-5, "rounds"), (10, 0.0, "delta"), (10, 1.0, "delta"),
])
def test_epsilon_rejects_bad_arguments(rounds: int, delta: float, field: str) -> None:
    with pytest.raises(ConfigError, match=field):
        GaussianAccountant(1.0, 0.1).epsilon(rounds, delta)


@pytest.mark.parametrize(("args", "field"), [
    ((0.0, 1e-5, 0.1, 10), "target_epsilon"), ((1.0, 0.0, 0.1, 10), "delta"),
    ((1.0, 1e-5, 0.0, 10), "sample_rate"), ((1.0, 1e-5, 0.1, 0), "rounds"),
    ((1.0, 1e-5, 0.1, 10, "moments"), "accountant"), ((1.0, 1e-5, 0.1, 10, "rdp", "x"), "sampling"),
    ((1e-9, 1e-5, 1.0, 10), "target_epsilon"),
])
def test_noise_multiplier_for_rejects(args: tuple, field: str) -> None:
    with pytest.raises(ConfigError, match=field):
        noise_multiplier_for(*args)


# --------------------------------------------------------------------------- local DP


def test_local_epsilon_is_central_gaussian_at_half_multiplier() -> None:
    # Sensitivity 2C under replace-one: identical to the unamplified Gaussian at z / 2.
    for z, k in [(4.0, 1), (10.0, 20), (2.0, 5)]:
        assert local_gaussian_epsilon(z, k, 1e-5) == GaussianAccountant(z / 2, 1.0).epsilon(k, 1e-5)
    assert local_gaussian_epsilon(3.0, 0, 1e-5) == 0.0


@settings(max_examples=20)
@given(z=st.floats(1.0, 50.0), k=st.integers(1, 100))
def test_local_epsilon_exceeds_central(z: float, k: int) -> None:
    local = local_gaussian_epsilon(z, k, 1e-5)
    assert local >= GaussianAccountant(z, 1.0).epsilon(k, 1e-5)  # sensitivity 2C >= C
    assert local_gaussian_epsilon(z, k + 1, 1e-5) >= local
    assert local_gaussian_epsilon(2 * z, k, 1e-5) <= local


@pytest.mark.parametrize(("args", "field"), [((0.0, 1, 1e-5), "noise_multiplier"),
                                             ((1.0, -1, 1e-5), "participations"),
                                             ((1.0, 1, 1.0), "delta")])
def test_local_epsilon_rejects(args: tuple, field: str) -> None:
    with pytest.raises(ConfigError, match=field):
        local_gaussian_epsilon(*args)


# --------------------------------------------------------------------------- discrete mechanisms (dp.rdp)


def _log_dgauss(sigma: float, support: np.ndarray) -> np.ndarray:
    logits = -support.astype(float) ** 2 / (2 * sigma ** 2)
    return logits - logsumexp(logits)


def _log_sum_of_dgauss(sigma: float, n: int, half_width: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact log-pmf (on a wide support) of the sum of n independent N_Z(0, sigma^2), by log-convolution."""
    support = np.arange(-half_width, half_width + 1)
    one = _log_dgauss(sigma, support)
    total = one
    for _ in range(n - 1):
        # log(p * q)[k] = logsumexp_j (p[j] + q[k - j]) restricted to the support
        grid = total[:, None] + one[None, :]
        out = np.full(2 * len(support) - 1, -np.inf)
        for j in range(len(support)):
            out[j:j + len(support)] = np.logaddexp(out[j:j + len(support)], grid[j])
        total = out[half_width:half_width + len(support)]
        total = total - logsumexp(total)
    return support, total


def _renyi(logp: np.ndarray, shift: int, alpha: float) -> float:
    """D_alpha(P + shift || P) for a log-pmf on a centred integer support."""
    shifted = np.roll(logp, shift)
    shifted[:shift] = -np.inf
    ok = np.isfinite(shifted) & np.isfinite(logp)
    return float(logsumexp(alpha * shifted[ok] + (1 - alpha) * logp[ok]) / (alpha - 1))


@settings(max_examples=12)
@given(sigma=st.floats(0.5, 2.0), n=st.integers(1, 3), shift=st.integers(1, 3), alpha=st.integers(2, 6))
def test_ddg_bound_dominates_exact_divergence(sigma: float, n: int, shift: int, alpha: int) -> None:
    # The theorem bounds the true divergence of the (non-Gaussian) sum of n discrete Gaussians.
    _, logp = _log_sum_of_dgauss(sigma, n, half_width=int(60 * sigma * math.sqrt(n)) + 10 * alpha * shift)
    exact = _renyi(logp, shift, alpha)
    bound = rdp_distributed_discrete_gaussian(alpha, float(shift), sigma, n, dim=1)
    assert exact <= bound * (1 + 1e-9) + 1e-12
    # ...and is nearly tight once tau is negligible (continuous-Gaussian limit).
    if sigma >= 1.5:
        assert bound <= exact * 1.02 + 1e-9


@settings(max_examples=12)
@given(sigma=st.floats(0.5, 2.0), n=st.integers(1, 3), shift=st.integers(1, 3), alpha=st.floats(1.05, 6.0))
def test_ddg_bound_dominates_exact_divergence_at_fractional_orders(sigma: float, n: int, shift: int,
                                                                   alpha: float) -> None:
    # Proposition 14 holds at real orders; the accountant relies on it between the integers and below 2.
    _, logp = _log_sum_of_dgauss(sigma, n, half_width=int(60 * sigma * math.sqrt(n)) + 10 * math.ceil(alpha)
                                 * shift)
    bound = rdp_distributed_discrete_gaussian(alpha, float(shift), sigma, n, dim=1)
    assert _renyi(logp, shift, alpha) <= bound * (1 + 1e-9) + 1e-12


@settings(max_examples=20)
@given(alpha=st.floats(1.01, 200.0), d2=st.floats(0.5, 50.0), n=st.integers(1, 100),
       dim=st.integers(1, 10 ** 6))
def test_ddg_approaches_gaussian_for_large_sigma(alpha: float, d2: float, n: int, dim: int) -> None:
    gauss = lambda s: alpha * d2 ** 2 / (2 * n * s ** 2)  # noqa: E731
    for sigma in (0.5, 1.0, 3.0):
        assert rdp_distributed_discrete_gaussian(alpha, d2, sigma, n, dim) >= gauss(sigma) * (1 - 1e-12)
    assert rdp_distributed_discrete_gaussian(alpha, d2, 3.0, n, dim) == pytest.approx(gauss(3.0), rel=1e-9)
    if n == 1:  # a single discrete Gaussian: tau = 0 and the bound is exactly the Gaussian's
        assert ddg_tau(0.5, 1) == 0.0
        assert rdp_distributed_discrete_gaussian(alpha, d2, 0.5, 1, dim) == pytest.approx(gauss(0.5))


def test_ddg_tau_decreases_in_sigma_and_grows_in_n() -> None:
    taus = [ddg_tau(s, 50) for s in (0.5, 0.75, 1.0, 1.5)]
    assert all(a > b for a, b in itertools.pairwise(taus))
    assert ddg_tau(0.5, 10) < ddg_tau(0.5, 100)
    assert ddg_tau(0.5, 2) == pytest.approx(10 * math.exp(-math.pi ** 2 * 0.25))


def _log_skellam(mu: float, support: np.ndarray) -> np.ndarray:
    # Poisson(mu/2) - Poisson(mu/2): P(k) = exp(-mu) I_|k|(mu) = ive(|k|, mu).
    with np.errstate(divide="ignore"):
        return np.log(special.ive(np.abs(support), mu))


@settings(max_examples=15)
@given(mu=st.floats(1.0, 400.0), shift=st.integers(1, 4), alpha=st.integers(2, 8))
def test_skellam_bound_dominates_exact_divergence(mu: float, shift: int, alpha: int) -> None:
    half = int(40 * math.sqrt(mu)) + 20 * alpha * shift
    support = np.arange(-half, half + 1)
    logp = _log_skellam(mu, support)
    exact = _renyi(logp, shift, alpha)
    assert exact <= rdp_skellam(alpha, float(shift), float(shift), mu) * (1 + 1e-9)


def test_skellam_mu_is_the_variance() -> None:
    # For large mu the bound is sharp against the exact divergence of Poisson(mu/2) - Poisson(mu/2);
    # were mu half the variance, the bound would be twice the truth.
    mu, shift, alpha = 2000.0, 2, 4
    support = np.arange(-2000, 2001)
    exact = _renyi(_log_skellam(mu, support), shift, alpha)
    assert rdp_skellam(alpha, shift, shift, mu) == pytest.approx(exact, rel=0.01)


@settings(max_examples=20)
@given(alpha=st.integers(2, 256), d1=st.floats(1.0, 1e4), d2=st.floats(1.0, 100.0))
def test_skellam_approaches_gaussian_and_is_monotone(alpha: int, d1: float, d2: float) -> None:
    ratios = [rdp_skellam(alpha, d1, d2, mu) / (alpha * d2 ** 2 / (2 * mu)) for mu in (1e2, 1e4, 1e6, 1e8)]
    assert all(r >= 1.0 for r in ratios)
    assert all(a >= b * (1 - 1e-12) for a, b in itertools.pairwise(ratios))
    assert ratios[-1] == pytest.approx(1.0, rel=1e-3)
    assert rdp_skellam(alpha + 1, d1, d2, 50.0) >= rdp_skellam(alpha, d1, d2, 50.0)
    assert rdp_distributed_discrete_gaussian(alpha + 1, d2, 0.7, 5, 100) >= \
        rdp_distributed_discrete_gaussian(alpha, d2, 0.7, 5, 100)


# --------------------------------------------------------------------------- Poisson subsampling


def _gauss(z: float):
    return lambda a: a / (2 * z ** 2)


@settings(max_examples=20)
@given(z=st.floats(0.7, 5.0), q=st.floats(1e-4, 0.05), alpha=st.integers(2, 64))
def test_subsampled_bound_between_exact_and_unsubsampled(z: float, q: float, alpha: int) -> None:
    bound = rdp_poisson_subsampled(_gauss(z), q, alpha)
    exact = float(compute_rdp(q=q, noise_multiplier=z, steps=1, orders=[alpha])[0])  # Mironov et al. 2019
    assert bound >= exact * (1 - 1e-6) - 1e-14  # an upper bound on the true subsampled-Gaussian RDP
    assert bound <= _gauss(z)(alpha) or bound <= exact * 5  # amplifies (or stays within small constant)


@pytest.mark.parametrize("alpha", [2, 3, 8, 32])
def test_subsampled_bound_vanishes_and_q1_is_upper_bound(alpha: int) -> None:
    base = _gauss(2.0)
    values = [rdp_poisson_subsampled(base, q, alpha) for q in (1e-6, 1e-4, 1e-2)]
    assert values[0] < 1e-6 and values[0] <= values[1] <= values[2]
    assert all(v <= base(alpha) for v in values[:2])
    skel = lambda a: rdp_skellam(a, 10.0, 3.0, 100.0)  # noqa: E731
    assert rdp_poisson_subsampled(base, 1.0, alpha) >= base(alpha) * (1 - 1e-12)
    assert rdp_poisson_subsampled(skel, 1.0, alpha) >= skel(alpha) * (1 - 1e-12)
    assert rdp_poisson_subsampled(skel, 1e-3, alpha) <= skel(alpha)


def test_subsampled_bound_handles_huge_rdp_in_log_space() -> None:
    value = rdp_poisson_subsampled(lambda a: 1e3 * a, 1e-3, 256)
    assert math.isfinite(value) and value <= 1e3 * 256
    assert rdp_poisson_subsampled(lambda a: math.inf, 0.5, 4) == math.inf


# --------------------------------------------------------------------------- discrete accountant


def _skellam_acc(mu: float, q: float = 0.01, sampling: str = "poisson") -> DiscreteMechanismAccountant:
    return DiscreteMechanismAccountant("skellam", 3.0, q, sampling, mu=mu, l1_sensitivity=30.0)


def _ddg_acc(sigma: float, q: float = 0.01, n: int = 10) -> DiscreteMechanismAccountant:
    return DiscreteMechanismAccountant("ddg", 3.0, q, sigma=sigma, num_clients=n, dim=1000)


def test_discrete_accountant_composes_and_amplifies() -> None:
    for acc in (_skellam_acc(20.0), _ddg_acc(1.5)):
        e1, e2 = acc.epsilon(100, 1e-5), acc.epsilon(200, 1e-5)
        assert 0.0 < e1 < e2
        assert acc.epsilon(0, 1e-5) == 0.0
        curve = acc.rdp_curve()
        assert acc.rdp(7) == curve[acc.orders.index(7)]
        assert all(c <= acc.base_rdp(a) for a, c in zip(acc.orders, curve, strict=True))
    amp, plain = _skellam_acc(20.0), _skellam_acc(20.0, sampling="none")
    assert amp.epsilon(100, 1e-5) < plain.epsilon(100, 1e-5)
    assert plain.rdp(5) == plain.base_rdp(5)
    assert _skellam_acc(40.0).epsilon(100, 1e-5) < _skellam_acc(20.0).epsilon(100, 1e-5)


def test_discrete_accountant_matches_gaussian_without_sampling_at_large_noise() -> None:
    # q = 1, huge variance: both discrete curves are the Gaussian's, so epsilons agree (integer orders only
    # make the discrete ones slightly larger).
    z, t, delta = 3.0, 10, 1e-5
    gauss = GaussianAccountant(z, 1.0).epsilon(t, delta)
    skel = DiscreteMechanismAccountant("skellam", 300.0, 1.0, mu=(z * 300.0) ** 2,
                                       l1_sensitivity=3000.0).epsilon(t, delta)
    ddg = DiscreteMechanismAccountant("ddg", 300.0, 1.0, sigma=z * 300.0 / math.sqrt(10), num_clients=10,
                                      dim=1000).epsilon(t, delta)
    for eps in (skel, ddg):
        assert gauss * (1 - 1e-6) <= eps <= gauss * 1.03


def _gauss_eps_on(orders: tuple[float, ...], z: float, q: float, t: int, delta: float) -> float:
    """The (subsampled) Gaussian's epsilon, by Opacus, searched on exactly ``orders``."""
    rdp = compute_rdp(q=q, noise_multiplier=z, steps=t, orders=list(orders))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return float(get_privacy_spent(orders=list(orders), rdp=rdp, delta=delta)[0])


def test_discrete_order_grids_follow_their_theorems() -> None:
    ddg, skel = _ddg_acc(1.5), _skellam_acc(20.0)
    assert skel.orders == DISCRETE_ORDERS and all(isinstance(a, int) for a in skel.orders)
    assert ddg.orders == accounting.DDG_ORDERS
    assert set(RDP_ORDERS) <= set(ddg.orders) and set(DISCRETE_ORDERS) <= set(ddg.orders)
    assert list(ddg.orders) == sorted(set(ddg.orders)) and min(ddg.orders) == 1.1
    assert all(isinstance(a, int) for a in ddg.orders if float(a).is_integer())  # Zhu-Wang sees ints
    assert ddg.rdp(1.5) == ddg.base_rdp(1.5) > 0.0  # fractional: no amplification claimed
    assert ddg.rdp(3.0) == ddg.rdp(3) < ddg.base_rdp(3)  # integral floats are integer orders
    with pytest.raises(ConfigError, match="alpha"):
        skel.rdp(2.5)  # Skellam's bound is stated for integer orders only
    with pytest.raises(ConfigError, match="alpha"):
        ddg.rdp(1.0)


@pytest.mark.filterwarnings("ignore:Optimal order is the smallest alpha")
@pytest.mark.parametrize(("z", "t", "delta"), [(1.0, 100, 1e-5), (0.7, 1000, 1e-5), (2.0, 50, 1e-5),
                                               (3.0, 10, 1e-5), (1.0, 100, 1e-8), (5.0, 1, 1e-5)])
def test_ddg_without_sampling_matches_gaussian_on_fractional_orders(z: float, t: int, delta: float) -> None:
    # Large sigma (tau ~ 0): the DDG bound is the Gaussian's at every order, so on the same fractional grid
    # the epsilons agree. Integer orders alone gave 110.1 vs 96.1 at z = 1, T = 100 (+15%).
    d2, n = 300.0, 10
    for sampling, q in (("none", 0.3), ("poisson", 1.0)):
        acc = DiscreteMechanismAccountant("ddg", d2, q, sampling, sigma=z * d2 / math.sqrt(n), num_clients=n,
                                          dim=1000)
        eps, gauss = acc.epsilon(t, delta), GaussianAccountant(z, 1.0).epsilon(t, delta)
        assert eps <= 1.02 * gauss  # within 2% of the continuous Gaussian on Opacus's fractional grid
        assert eps >= _gauss_eps_on(acc.orders, z, 1.0, t, delta) * (1 - 1e-9)  # and never below it


@pytest.mark.parametrize(("z", "t"), [(3.0, 10), (2.0, 50), (5.0, 1)])
def test_skellam_without_sampling_stays_on_integer_orders(z: float, t: int) -> None:
    # Skellam keeps integer orders: close to the Gaussian when the best order is >= 2 (small epsilon) ...
    acc = DiscreteMechanismAccountant("skellam", 300.0, 1.0, "none", mu=(z * 300.0) ** 2,
                                      l1_sensitivity=3000.0)
    eps, gauss = acc.epsilon(t, 1e-5), GaussianAccountant(z, 1.0).epsilon(t, 1e-5)
    assert _gauss_eps_on(DISCRETE_ORDERS, z, 1.0, t, 1e-5) * (1 - 1e-9) <= eps <= 1.03 * gauss
    # ... and no fractional order sneaks in where its theorem covers none (best order ~1.5 at z = 1,
    # T = 100: it stays at 110.1 where the Gaussian gets 96.1).
    big = DiscreteMechanismAccountant("skellam", 300.0, 1.0, "none", mu=300.0 ** 2, l1_sensitivity=3000.0)
    assert big.epsilon(100, 1e-5) > 1.1 * GaussianAccountant(1.0, 1.0).epsilon(100, 1e-5)


@settings(max_examples=25, deadline=None)
@given(mechanism=st.sampled_from(["ddg", "skellam"]), z=st.floats(0.5, 5.0), d2=st.floats(1.0, 300.0),
       n=st.integers(1, 50), dim=st.integers(1, 10 ** 4), q=st.just(1.0) | st.floats(1e-3, 0.3),
       t=st.integers(1, 2000), delta=st.sampled_from([1e-5, 1e-8]), l1_factor=st.floats(1.0, 10.0))
def test_discrete_epsilon_never_below_gaussian_equivalent(mechanism: str, z: float, d2: float, n: int,
                                                          dim: int, q: float, t: int, delta: float,
                                                          l1_factor: float) -> None:
    # Every discrete bound is the Gaussian RDP of the same variance plus a non-negative surcharge, and
    # Zhu-Wang bounds the subsampled Gaussian from above, so at each searched order the discrete curve is
    # >= the (subsampled) Gaussian's: on the same grid its epsilon is never smaller.
    if mechanism == "ddg":
        sigma = max(0.5, z * d2 / math.sqrt(n))
        acc = DiscreteMechanismAccountant("ddg", d2, q, sigma=sigma, num_clients=n, dim=dim)
        z_eff = math.sqrt(n) * sigma / d2
    else:
        acc = DiscreteMechanismAccountant("skellam", d2, q, mu=(z * d2) ** 2, l1_sensitivity=l1_factor * d2)
        z_eff = z
    eps = acc.epsilon(t, delta)
    assert eps >= _gauss_eps_on(acc.orders, z_eff, q, t, delta) * (1 - 1e-9) - 1e-9


@pytest.mark.parametrize(("kwargs", "field"), [
    ({"mechanism": "laplace", "l2_sensitivity": 1.0}, "mechanism"),
    ({"mechanism": "ddg", "l2_sensitivity": 1.0, "num_clients": 3, "dim": 4}, "sigma"),
    ({"mechanism": "ddg", "l2_sensitivity": 1.0, "sigma": 0.4, "num_clients": 3, "dim": 4}, "sigma"),
    ({"mechanism": "ddg", "l2_sensitivity": 1.0, "sigma": 1.0, "num_clients": 0, "dim": 4}, "num_clients"),
    ({"mechanism": "ddg", "l2_sensitivity": 1.0, "sigma": 1.0, "num_clients": 3, "dim": 0}, "dim"),
    ({"mechanism": "ddg", "l2_sensitivity": 0.0, "sigma": 1.0, "num_clients": 3, "dim": 4}, "l2_sensitivity"),
    ({"mechanism": "ddg", "l2_sensitivity": 1.0, "sigma": 1.0, "num_clients": 3, "dim": 4, "mu": 2.0}, "mu"),
    ({"mechanism": "skellam", "l2_sensitivity": 1.0, "mu": 5.0}, "l1_sensitivity"),
    ({"mechanism": "skellam", "l2_sensitivity": 1.0, "l1_sensitivity": 1.0}, "mu"),
    ({"mechanism": "skellam", "l2_sensitivity": 1.0, "l1_sensitivity": 1.0, "mu": -1.0}, "mu"),
    ({"mechanism": "skellam", "l2_sensitivity": 1.0, "l1_sensitivity": 1.0, "mu": 1.0, "dim": 3}, "dim"),
    ({"mechanism": "skellam", "l2_sensitivity": 1.0, "l1_sensitivity": 1.0, "mu": 1.0,
      "sample_rate": 0.0}, "sample_rate"),
    ({"mechanism": "skellam", "l2_sensitivity": 1.0, "l1_sensitivity": 1.0, "mu": 1.0,
      "sampling": "fixed"}, "sampling"),
])
def test_discrete_accountant_rejects_bad_config(kwargs: dict, field: str) -> None:
    with pytest.raises(ConfigError, match=field):
        DiscreteMechanismAccountant(**kwargs)


def test_rdp_functions_reject_bad_orders() -> None:
    with pytest.raises(ConfigError, match="alpha"):
        rdp_skellam(1, 1.0, 1.0, 1.0)
    with pytest.raises(ConfigError, match="alpha"):
        rdp_distributed_discrete_gaussian(1.0, 1.0, 1.0, 2, 3)
    with pytest.raises(ConfigError, match="alpha"):
        rdp_poisson_subsampled(_gauss(1.0), 0.1, 2.5)
    with pytest.raises(ConfigError, match="q"):
        rdp_poisson_subsampled(_gauss(1.0), 0.0, 3)
    with pytest.raises(ConfigError, match="rounds"):
        _skellam_acc(5.0).epsilon(-1, 1e-5)
