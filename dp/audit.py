"""An empirical privacy audit in the same training run: random-direction canary clients.

:class:`CanaryAudit` wraps any aggregator (normally a DP rule) and, every round, appends rows for
*canary clients* to the batch before the inner rule aggregates it. Canary ``j``'s update is a fixed
pseudorandom unit direction ``c_j`` (from the audit ``seed``) scaled far above the clip, so that the
mechanism's own clipping makes it exactly clip-norm: the worst case a real client can be. After the
run, the cosine of each canary direction with the *final model delta* (the sum of the released
updates, a post-processing of the releases) is the attack score:

* **Gaussian fit** (Andrew, Kairouz, Oh, Oprea, McMahan, Suriyakumar, "One-shot Empirical Privacy
  Estimation for Federated Learning", ICLR 2024): the cosines of inserted canaries and of directions
  that were never inserted (the null; in high dimension about N(0, 1/d)) are each fitted by a
  Gaussian, and the epsilon at ``delta`` of telling the two Gaussians apart is the estimate
  (:func:`gaussian_fit_epsilon`; exact privacy profile of two Gaussians, unequal variances included,
  as the paper's reference code does). It is an *estimate* for the threat model "the adversary sees
  the final model", with a bootstrap confidence interval, not a bound.
* **One-run lower bound** (Steinke, Nasr, Jagielski, "Privacy Auditing with One (1) Training Run",
  NeurIPS 2023), with ``inclusion="half"``: each canary is inserted with probability 1/2; guessing
  the top-k scores as inserted and the bottom-k as not, the number of correct guesses gives an
  epsilon the mechanism provably does not satisfy at ``delta``, with 95% confidence
  (:func:`one_run_epsilon_lower_bound`, their Corollary 5.4 and Appendix D). A lower bound above the
  accountant's epsilon means the mechanism or its accounting is broken.

Privacy of the real clients. A canary row depends on no real client, so each real client still
reaches the inner rule as one row of its own: the inner DP rule's epsilon holds for the real clients
(``keeps_sensitivity``), and canaries never count as clients in the accounting or the sampling. They
do take part in the aggregate (that is the point), so with few real clients they move the model.
The canary seed is the auditor's randomness, not a privacy secret: the directions are drawn with a
seeded numpy generator (:func:`secagg.seeding.numpy_rng`, not secret). Knowing them tells nothing
about real clients; a mechanism that knew them could cheat the audit, which checks implementations
for bugs, not adversarial ones. Canaries are fake clients, for simulation only: ``secagg serve``
refuses this wrapper (:attr:`CanaryAudit.simulation_only`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import scipy.special
import scipy.stats
import torch

from secagg.aggregation import Aggregate, Aggregator, AggState, Mean, UpdateBatch, Wrapper
from secagg.aggregation.base import nest_state, unnest_state
from secagg.errors import ConfigError, UpdateError
from secagg.seeding import numpy_rng
from secagg.validation import check_choice, check_int, check_real

__all__ = ["CANARY_ID_BASE", "CanaryAudit", "GaussianFit", "OneRunBound", "canary_directions",
           "gaussian_epsilon", "gaussian_fit_epsilon", "one_run_epsilon_lower_bound", "one_run_p_value"]

INCLUSION = ("all", "half")
#: Canary ``j`` joins the batch as client ``CANARY_ID_BASE + j``: above any real id (the protocol's
#: ids stop at 2^32 - 2), so canary and real ids never collide.
CANARY_ID_BASE = 1 << 31
MAX_CANARIES = 1 << 20
#: Canary rows are this many clips long: the inner mechanism clips them to exactly its clip norm.
CANARY_OVERSHOOT = 10.0
DEFAULT_DELTA = 1e-5
#: Confidence of the reported interval and lower bound; bootstrap resamples of the interval.
CONFIDENCE = 0.95
BOOTSTRAP = 200
#: Epsilons above this (nats) are reported as infinite: the fit cannot resolve them.
EPSILON_CAP = 200.0
_BLOCK = 64  # directions are drawn in blocks of this many rows (one generator per block)

_binom = scipy.stats.binom


# ----------------------------------------------------------------------------------- estimators


def _checked_sample(name: str, values: Any, minimum: int = 2) -> np.ndarray:
    x = np.asarray(values, dtype=np.float64)
    if x.ndim != 1 or x.size < minimum:
        raise ConfigError(f"{name}: expected a 1-D array of at least {minimum} values, got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ConfigError(f"{name}: must be finite (no NaN/Inf)")
    return x


def _mass(lo: np.ndarray, hi: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """P(lo < Y < hi) for Y ~ N(mean, std^2), taken on the tail away from the bulk (precision)."""
    a, b = (lo - mean) / std, (hi - mean) / std
    ndtr = scipy.special.ndtr  # the standard normal cdf as a bare ufunc (scipy.stats adds ~50 us a call)
    return np.where(a > 0, ndtr(-a) - ndtr(-b), ndtr(b) - ndtr(a))


def _hockey_stick(eps: np.ndarray, mp: np.ndarray, sp: np.ndarray, mq: np.ndarray, sq: np.ndarray
                  ) -> np.ndarray:
    """sup_S P(S) - e^eps Q(S) for P = N(mp, sp^2), Q = N(mq, sq^2) (elementwise arrays).

    The supremum is over S = {log p/q > eps}; log p/q = a y^2 + b y + c is quadratic in y, so S is a
    half-line (equal variances), the outside of two roots (a > 0) or the inside (a < 0).
    """
    inf = np.full_like(mp, np.inf)
    a = 0.5 / sq**2 - 0.5 / sp**2
    b = mp / sp**2 - mq / sq**2
    c = np.log(sq / sp) - 0.5 * mp**2 / sp**2 + 0.5 * mq**2 / sq**2
    k = c - eps
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        linear = np.abs(a) <= 1e-12 * (sp**-2 + sq**-2)
        t = -k / b  # linear case: b y + k > 0
        lin_p = np.where(b > 0, _mass(t, inf, mp, sp), np.where(b < 0, _mass(-inf, t, mp, sp), 0.0))
        lin_q = np.where(b > 0, _mass(t, inf, mq, sq), np.where(b < 0, _mass(-inf, t, mq, sq), 0.0))
        lin_all = (b == 0) & (k > 0)
        lin_p, lin_q = np.where(lin_all, 1.0, lin_p), np.where(lin_all, 1.0, lin_q)
        disc = b * b - 4.0 * a * k
        s = np.sqrt(np.maximum(disc, 0.0))
        qq = -0.5 * (b + np.copysign(s, b))  # stable roots: qq / a and k / qq
        r_a, r_b = qq / a, np.where(qq != 0, k / qq, qq / a)
        r1, r2 = np.minimum(r_a, r_b), np.maximum(r_a, r_b)
        out_p = _mass(-inf, r1, mp, sp) + _mass(r2, inf, mp, sp)
        out_q = _mass(-inf, r1, mq, sq) + _mass(r2, inf, mq, sq)
        in_p, in_q = _mass(r1, r2, mp, sp), _mass(r1, r2, mq, sq)
        quad_p = np.where(a > 0, np.where(disc > 0, out_p, 1.0), np.where(disc > 0, in_p, 0.0))
        quad_q = np.where(a > 0, np.where(disc > 0, out_q, 1.0), np.where(disc > 0, in_q, 0.0))
        p_mass = np.where(linear, lin_p, quad_p)
        q_mass = np.where(linear, lin_q, quad_q)
        return np.maximum(p_mass - np.exp(eps) * q_mass, 0.0)


def gaussian_epsilon(mean0: Any, std0: Any, mean1: Any, std1: Any, delta: float) -> np.ndarray | float:
    """The smallest epsilon (nats) for which N(mean0, std0^2) and N(mean1, std1^2) are (epsilon, delta)
    indistinguishable both ways; arrays broadcast elementwise (a float for scalar inputs).

    Equal standard deviations give the mu-GDP curve with mu = |mean1 - mean0| / std; unequal ones
    have an unbounded likelihood ratio in the tails, which this exact privacy profile accounts for
    (so it is larger than the equal-variance value at small delta). Values above ``EPSILON_CAP``
    are ``inf``. Found by bisection on the (non-increasing) privacy profile, to 1e-12 relative.
    """
    check_real("delta", delta, gt=0.0, lt=1.0)
    m0, s0, m1, s1 = (np.asarray(v, dtype=np.float64) for v in (mean0, std0, mean1, std1))
    scalar = all(v.ndim == 0 for v in (m0, s0, m1, s1))
    m0, s0, m1, s1 = (np.atleast_1d(v) for v in np.broadcast_arrays(m0, s0, m1, s1))
    if not (np.isfinite(m0).all() and np.isfinite(m1).all()):
        raise ConfigError("mean0, mean1: must be finite")
    if not (np.isfinite(s0).all() and np.isfinite(s1).all() and (s0 > 0).all() and (s1 > 0).all()):
        raise ConfigError("std0, std1: must be finite and > 0")

    def profile(e: np.ndarray) -> np.ndarray:
        return np.maximum(_hockey_stick(e, m1, s1, m0, s0), _hockey_stick(e, m0, s0, m1, s1))

    zero = profile(np.zeros_like(m0)) <= delta
    lo, hi = np.zeros_like(m0), np.ones_like(m0)
    while True:  # bracket: profile(hi) <= delta, or hi past the cap
        grow = (profile(hi) > delta) & (hi < EPSILON_CAP)
        if not grow.any():
            break
        lo, hi = np.where(grow, hi, lo), np.where(grow, 2.0 * hi, hi)
    capped = profile(np.minimum(hi, EPSILON_CAP)) > delta
    for _ in range(64):
        mid = 0.5 * (lo + hi)
        above = profile(mid) > delta
        lo, hi = np.where(above, mid, lo), np.where(above, hi, mid)
    eps = np.where(zero, 0.0, np.where(capped, np.inf, hi))
    return float(eps[0]) if scalar else eps


VARIANCES = ("fitted", "equal", "auto")
#: ``variance="auto"`` keeps equal variances unless a two-sided test of equal variances rejects at this level.
EQUAL_VARIANCE_LEVEL = 0.01


@dataclass(frozen=True)
class GaussianFit:
    """The Gaussian-fit estimate: ``epsilon`` (nats, at ``delta``) with its bootstrap interval
    [``ci_low``, ``ci_high``] at ``confidence``; the fitted mean/std of the observed statistics and
    the null's (fitted, or exact from ``dim``); ``mu``: |mean - null_mean| / null_std (the mu-GDP
    parameter when the stds agree); ``variance``: "fitted" or "equal" (see
    :func:`gaussian_fit_epsilon`)."""

    epsilon: float
    ci_low: float
    ci_high: float
    mean: float
    std: float
    null_mean: float
    null_std: float
    mu: float
    delta: float
    confidence: float
    variance: str


def gaussian_fit_epsilon(observed_cos: Any, null_cos: Any | None, delta: float, *, dim: int | None = None,
                         variance: str = "fitted", confidence: float = CONFIDENCE,
                         resamples: int = BOOTSTRAP, seed: int = 0) -> GaussianFit:
    """Andrew et al.'s estimate: fit N(mean, std^2) to ``observed_cos`` (statistics of inserted canaries)
    and to the null (statistics of directions never inserted), and return the epsilon at ``delta`` of
    distinguishing the two Gaussians (:func:`gaussian_epsilon`).

    The null is either fitted to the sample ``null_cos``, or, with ``null_cos=None`` and ``dim`` d,
    exact: the cosine of a uniformly random unit vector with any vector independent of it has mean 0
    and variance exactly 1/d (Gaussian for d >= ~1000), which is what Andrew et al.'s reference code
    uses in high dimension; it removes the null's sampling error. ``variance="fitted"`` (the paper)
    keeps both fitted stds and the exact two-Gaussian privacy profile: unequal stds make the tails'
    likelihood ratio unbounded, so sampling error in the stds biases the estimate *up* at small
    delta (conservative). ``"equal"`` assumes the observed std equals the null's, as it does
    asymptotically for the Gaussian mechanism, and reads off mu-GDP with mu = |mean - null_mean| /
    null_std (the null std, or the pooled std when the null is fitted): less variance, no tail term.
    ``"auto"`` uses "equal" unless the data reject equal variances (two-sided chi-square test against
    the exact null, F test against a fitted one, at level ``EQUAL_VARIANCE_LEVEL``), then "fitted":
    the Gaussian mechanism's prediction unless the observed spread contradicts it (for example the
    mixture that Poisson participation makes).

    The interval is the percentile bootstrap over canaries (``resamples`` resamples with replacement
    from a generator seeded by ``seed``: not secret, reproducible): the estimate's sampling error, not
    a bound on the true epsilon. Samples need >= 2 finite values and a positive spread, ``dim`` >= 2
    (:class:`ConfigError` otherwise).
    """
    obs = _checked_sample("observed_cos", observed_cos)
    if (null_cos is None) == (dim is None):
        raise ConfigError("null_cos, dim: give exactly one (a null sample, or the dimension for the "
                          "exact cosine null)")
    null = _checked_sample("null_cos", null_cos) if null_cos is not None else None
    if dim is not None:
        check_int("dim", dim, minimum=2)
    check_real("delta", delta, gt=0.0, lt=1.0)
    check_choice("variance", variance, VARIANCES)
    check_real("confidence", confidence, gt=0.0, lt=1.0)
    check_int("resamples", resamples, minimum=0)
    check_int("seed", seed, minimum=0)

    def fit(o: np.ndarray, n: np.ndarray | None) -> tuple[np.ndarray, ...]:
        """(mean, std, null mean, null std, std used for the observed) per row of the 2-D samples."""
        m1, s1 = o.mean(axis=-1), o.std(axis=-1, ddof=1)
        if n is None:
            m0, s0 = np.zeros_like(m1), np.full_like(m1, float(dim) ** -0.5)
            pooled = s0
        else:
            m0, s0 = n.mean(axis=-1), n.std(axis=-1, ddof=1)
            ko, kn = o.shape[-1] - 1, n.shape[-1] - 1
            pooled = np.sqrt((ko * s1**2 + kn * s0**2) / (ko + kn))
        if variance == "equal":
            return m1, s1, m0, s0, pooled, pooled
        if variance == "fitted":
            return m1, s1, m0, s0, s1, s0
        k = o.shape[-1] - 1
        with np.errstate(divide="ignore", invalid="ignore"):
            if n is None:
                left = scipy.stats.chi2.cdf(k * s1**2 / s0**2, k)
            else:
                left = scipy.stats.f.cdf(s1**2 / s0**2, k, n.shape[-1] - 1)
        unequal = 2.0 * np.minimum(left, 1.0 - left) < EQUAL_VARIANCE_LEVEL
        return m1, s1, m0, s0, np.where(unequal, s1, pooled), np.where(unequal, s0, pooled)

    m1, s1, m0, s0, a1, a0 = (float(v[0]) for v in fit(obs[None], None if null is None else null[None]))
    if not (s1 > 0 and s0 > 0):
        raise ConfigError("observed_cos, null_cos: each needs two distinct values (a positive spread)")
    eps = float(gaussian_epsilon(m0, a0, m1, a1, delta))
    lo = hi = eps
    if resamples:
        rng = numpy_rng(seed, "canary-audit-bootstrap")  # not secret: the interval's resampling
        bo = obs[rng.integers(0, obs.size, (resamples, obs.size))]
        bn = None if null is None else null[rng.integers(0, null.size, (resamples, null.size))]
        _, bs1, _, bs0, b1, b0 = fit(bo, bn)
        bm1, bm0 = bo.mean(axis=1), (np.zeros(resamples) if bn is None else bn.mean(axis=1))
        ok = (bs1 > 0) & (bs0 > 0)  # a resample of identical values has no spread: drop it
        if ok.any():
            values = gaussian_epsilon(bm0[ok], b0[ok], bm1[ok], b1[ok], delta)
            tail = 0.5 * (1.0 - confidence)
            # order statistics, not interpolation: some resamples may be inf (inf - inf is nan)
            lo = float(np.quantile(values, tail, method="lower"))
            hi = float(np.quantile(values, 1.0 - tail, method="higher"))
    return GaussianFit(epsilon=eps, ci_low=lo, ci_high=hi, mean=m1, std=s1, null_mean=m0, null_std=s0,
                       mu=abs(m1 - m0) / a0, delta=float(delta), confidence=float(confidence),
                       variance=variance)


def one_run_p_value(m: int, r: int, v: int, eps: float, delta: float) -> float:
    """Steinke et al.'s tail bound (Corollary 5.4; Appendix D's ``p_value_DP_audit``): the largest
    probability, under an (eps, delta)-DP mechanism, of ``>= v`` correct guesses out of ``r`` among
    ``m`` canaries each included independently with probability 1/2.

    ``P[Binomial(r, q) >= v] + 2 m delta max_{1<=i<=v} P[v > Binomial(r, q) >= v - i] / i`` with
    ``q = e^eps / (1 + e^eps)``, capped at 1.
    """
    check_int("m", m, minimum=1)
    check_int("r", r, minimum=0, maximum=m)
    check_int("v", v, minimum=0, maximum=r)
    check_real("eps", eps, ge=0.0)
    check_real("delta", delta, ge=0.0, le=1.0)
    q = float(scipy.special.expit(eps))
    beta = float(_binom.sf(v - 1, r, q))
    if delta == 0.0 or v == 0:
        return min(beta, 1.0)
    i = np.arange(1, v + 1)
    alpha = float(np.max((_binom.sf(v - i - 1, r, q) - beta) / i))
    return min(beta + alpha * delta * 2.0 * m, 1.0)


def _largest_rejected(m: int, r: int, v: int, delta: float, significance: float) -> float:
    """The largest eps with p-value <= ``significance`` (0 if none): the (eps, delta)-DP claims that
    ``v`` correct of ``r`` refutes. Bisection (the p-value grows with eps); returns the low end."""
    if one_run_p_value(m, r, v, 0.0, delta) > significance:
        return 0.0
    lo, hi = 0.0, 1.0
    while one_run_p_value(m, r, v, hi, delta) <= significance:
        lo, hi = hi, 2.0 * hi
        if hi > EPSILON_CAP:
            return lo
    for _ in range(50):
        mid = 0.5 * (lo + hi)
        if one_run_p_value(m, r, v, mid, delta) <= significance:
            lo = mid
        else:
            hi = mid
    return lo


@dataclass(frozen=True)
class OneRunBound:
    """Steinke et al.'s lower bound: the mechanism is not (``epsilon``, ``delta``)-DP, with probability
    >= ``confidence``. ``guesses`` per side (k: top k guessed in, bottom k out) and ``correct`` of the
    2k guesses, at the chosen k; ``candidates``: how many k were tried (Bonferroni-corrected)."""

    epsilon: float
    guesses: int
    correct: int
    canaries: int
    candidates: int
    delta: float
    confidence: float


def _default_guesses(m: int) -> tuple[int, ...]:
    ks = {max(1, round(f * m)) for f in (0.01, 0.02, 0.05, 0.1, 0.25, 0.5)}
    return tuple(sorted(k for k in ks if 2 * k <= m))


def one_run_epsilon_lower_bound(scores: Any, included: Any, delta: float, confidence: float = CONFIDENCE,
                                guesses: int | Sequence[int] | None = None) -> OneRunBound:
    """Steinke et al.'s one-run epsilon lower bound from canary ``scores`` (higher: more likely
    inserted) and ``included`` (which canaries were inserted, each independently with probability
    1/2: the bound is only valid for such a draw).

    For each k in ``guesses`` (one k, a sequence of candidates, or ``None``: about 1%, 2%, 5%, 10%,
    25% and 50% of the canaries), the top-k scores are guessed inserted and the bottom-k not; the
    count of correct guesses v of r = 2k gives the largest epsilon whose p-value
    (:func:`one_run_p_value`) is at most ``(1 - confidence) / len(guesses)`` (Bonferroni over the
    candidates, so picking the best k keeps the confidence). Returns the best. Ties in the scores are
    broken by canary index.
    """
    s = _checked_sample("scores", scores, minimum=2)
    inc = np.asarray(included)
    if inc.shape != s.shape or inc.dtype != np.bool_:
        raise ConfigError(f"included: expected a boolean array of shape {s.shape}, got "
                          f"{inc.dtype} {inc.shape}")
    check_real("delta", delta, ge=0.0, lt=1.0)
    check_real("confidence", confidence, gt=0.0, lt=1.0)
    m = int(s.size)
    if guesses is None:
        ks = _default_guesses(m)
    else:
        ks = (guesses,) if isinstance(guesses, int) else tuple(guesses)
        if not ks:
            raise ConfigError("guesses: give at least one k")
        for k in ks:
            check_int("guesses", k, minimum=1, maximum=m // 2)
    significance = (1.0 - confidence) / len(ks)
    order = np.argsort(-s, kind="stable")  # descending score, ties by index
    best = OneRunBound(0.0, ks[0], 0, m, len(ks), float(delta), float(confidence))
    for k in ks:
        v = int(inc[order[:k]].sum() + (~inc[order[m - k:]]).sum())
        eps = _largest_rejected(m, 2 * k, v, delta, significance)
        if eps > best.epsilon or (eps == best.epsilon and best.correct == 0):
            best = OneRunBound(eps, k, v, m, len(ks), float(delta), float(confidence))
    return best


# ----------------------------------------------------------------------------------- canaries


def canary_directions(seed: int, rows: Sequence[int] | np.ndarray, dim: int) -> np.ndarray:
    """Unit directions (len(rows), dim) float64 of canaries ``rows``, uniform on the sphere.

    Direction j depends only on (seed, j, dim): rows are drawn in blocks of 64 from seeded numpy
    generators (the auditor's randomness, not secret), so any subset is reproduced exactly.
    """
    idx = np.asarray(rows, dtype=np.int64).reshape(-1)
    out = np.empty((idx.size, dim), dtype=np.float64)
    for block in np.unique(idx // _BLOCK):
        rng = numpy_rng(seed, "canary-audit-directions", dim, int(block))  # not secret: audit canaries
        g = rng.standard_normal((_BLOCK, dim))
        g /= np.linalg.norm(g, axis=1, keepdims=True)
        where = np.flatnonzero(idx // _BLOCK == block)
        out[where] = g[idx[where] - block * _BLOCK]
    return out


def _dots_with_all(seed: int, total: int, vector: np.ndarray) -> np.ndarray:
    """<c_j, vector> for j < total, block by block (never all directions in memory at once)."""
    out = np.empty(total, dtype=np.float64)
    for start in range(0, total, _BLOCK):
        rows = np.arange(start, min(total, start + _BLOCK))
        out[rows] = canary_directions(seed, rows, vector.size) @ vector
    return out


def _chain(agg: Aggregator) -> list[tuple[str, Aggregator]]:
    """(state prefix, aggregator) for ``agg`` and every aggregator nested under it through ``inner``."""
    out, prefix, node = [], "", agg
    while isinstance(node, Aggregator):
        out.append((prefix, node))
        prefix, node = prefix + "inner/", getattr(node, "inner", None)
    return out


def _clip_of(agg: Aggregator, state: AggState) -> float | None:
    """The L2 clip the first clipping rule in ``agg``'s chain applies now (adaptive: from its state)."""
    for prefix, node in _chain(agg):
        if hasattr(node, "initial_clip"):  # adaptive clipping: the current clip lives in the state
            value = state.get(f"{prefix}clip")
            return float(value.reshape(-1)[0]) if value is not None else float(node.initial_clip)
        if node.claims_dp() and isinstance(getattr(node, "clip", None), float | int):
            return float(node.clip)  # type: ignore[attr-defined]
        if isinstance(getattr(node, "max_norm", None), float | int):
            return float(node.max_norm)  # type: ignore[attr-defined]
    return None


@dataclass(frozen=True)
class CanaryAudit(Wrapper, kind="canary-audit"):
    """Insert ``canaries`` random-direction canary clients into every round of ``inner`` and audit
    the released updates (see the module docstring).

    ``canaries``: K >= 4 canaries. ``null_canaries``: directions never inserted, for the null
    distribution (``None``: K). ``seed``: the auditor's canary seed (not a privacy secret).
    ``inclusion``: "all" (Andrew et al.: every canary inserted) or "half" (Steinke et al.: each
    inserted with probability 1/2, the others join the null; enables the 95% lower bound).
    ``canary_norm``: L2 norm of a canary row (``None``: ``CANARY_OVERSHOOT`` x the clip of the
    first clipping rule in ``inner``, so that the mechanism clips it to exactly its clip; required
    when ``inner`` does not clip). ``delta``: delta of the reported epsilons (``None``: the inner
    DP rule's ``delta``, else 1e-5).

    Each round every inserted canary takes part with the inner rule's Poisson rate (1 without one),
    drawn from the seed and the round, as client ``CANARY_ID_BASE + j`` with the batch's median
    weight. The state keeps, in float64, the sum of the released updates (``sum``, d), each
    direction's dot product with it (``dots``), each direction's largest cosine with a single round's
    update (``max_cos``, for the all-iterates estimate) and the canaries' participation counts.
    Every round logs :meth:`report` as ``audit/<name>`` metrics.
    """

    canaries: int = 100
    null_canaries: int | None = None
    seed: int = 0
    inclusion: str = "half"
    canary_norm: float | None = None
    delta: float | None = None
    inner: Aggregator = field(default_factory=Mean)
    keeps_sensitivity: ClassVar[bool] = True  # canary rows depend on no real client
    simulation_only: ClassVar[bool] = True  # fake clients: never in a deployment (serve refuses)

    def __post_init__(self) -> None:
        check_int("canaries", self.canaries, minimum=4, maximum=MAX_CANARIES)
        if self.null_canaries is not None:
            check_int("null_canaries", self.null_canaries, minimum=0, maximum=MAX_CANARIES)
        check_int("seed", self.seed, minimum=0)
        check_choice("inclusion", self.inclusion, INCLUSION)
        if self.inclusion == "all" and self.num_null < 2:
            raise ConfigError(f"null_canaries: inclusion 'all' needs >= 2 null directions for the null "
                              f"distribution, got {self.num_null}")
        if self.canary_norm is not None:
            check_real("canary_norm", self.canary_norm, gt=0.0)
        if self.delta is not None:
            check_real("delta", self.delta, gt=0.0, lt=1.0)
        super().__post_init__()
        if any(isinstance(node, CanaryAudit) for _, node in _chain(self.inner)):
            raise ConfigError("inner: a CanaryAudit inside another would reuse its canary client ids")
        if self.canary_norm is None and _clip_of(self.inner, {}) is None:
            raise ConfigError(f"canary_norm: inner {type(self.inner).__name__} ({self.inner.kind!r}) has "
                              f"no L2 clip to scale the canaries to; give canary_norm")

    @property
    def num_null(self) -> int:
        """Null directions beyond the K canaries."""
        return self.canaries if self.null_canaries is None else self.null_canaries

    @property
    def total(self) -> int:
        return self.canaries + self.num_null

    def included(self) -> np.ndarray:
        """(K,) bool: which canaries are inserted (all, or a fair coin each from the seed)."""
        if self.inclusion == "all":
            return np.ones(self.canaries, dtype=bool)
        return numpy_rng(self.seed, "canary-audit-inclusion").random(self.canaries) < 0.5  # not secret

    def participants(self, round_index: int) -> np.ndarray:
        """Indices of the canaries in round ``round_index``: inserted ones, each with the inner rule's
        Poisson rate (all of them without one), from the seed and the round (not secret)."""
        rate = self.inner.poisson_sample_rate()
        chosen = self.included()
        if rate is not None and rate < 1.0:
            chosen &= numpy_rng(self.seed, "canary-audit-participation", round_index).random(  # not secret
                self.canaries) < rate
        return np.flatnonzero(chosen)

    def report_delta(self) -> float:
        if self.delta is not None:
            return self.delta
        for _, node in _chain(self.inner):
            d = getattr(node, "delta", None)
            if isinstance(d, float) and node.claims_dp():
                return d
        return DEFAULT_DELTA

    def init_state(self, dim: int) -> AggState:
        zeros = torch.zeros(self.total, dtype=torch.float64)
        return {"sum": torch.zeros(dim, dtype=torch.float64), "dots": zeros.clone(),
                "max_cos": torch.full((self.total,), -1.0, dtype=torch.float64),
                "participations": torch.zeros(self.canaries, dtype=torch.float64),
                **nest_state("inner", self.inner.init_state(dim))}

    def aggregate(self, batch: UpdateBatch, state: AggState) -> Aggregate:
        if any(c >= CANARY_ID_BASE for c in batch.client_ids):
            raise UpdateError(f"client_ids: ids from {CANARY_ID_BASE} on are the audit's canaries")
        d = batch.dim
        part = self.participants(batch.round)
        norm = self.canary_norm
        if norm is None:
            clip = _clip_of(self.inner, unnest_state("inner", state))
            assert clip is not None  # checked at construction
            norm = CANARY_OVERSHOOT * clip
        rows = torch.from_numpy(canary_directions(self.seed, part, d) * norm).to(batch.updates.dtype)
        median = float(batch.weights.median())
        weight = median if median > 0 else 1.0
        audited = batch.replace(
            updates=torch.cat([batch.updates, rows]),
            weights=torch.cat([batch.weights, torch.full((part.size,), weight, dtype=batch.weights.dtype)]),
            client_ids=batch.client_ids + tuple(CANARY_ID_BASE + int(j) for j in part))
        out = self.run_inner(audited, state)
        u = out.update.detach().to(torch.float64).numpy()
        step = _dots_with_all(self.seed, self.total, u)
        prev = self._own(state, d)
        unorm = float(np.linalg.norm(u))
        cos = step / unorm if unorm > 0 else np.zeros_like(step)
        counts = prev["participations"].clone()
        counts[torch.from_numpy(part)] += 1.0
        own = {"sum": prev["sum"] + torch.from_numpy(u), "dots": prev["dots"] + torch.from_numpy(step),
               "max_cos": torch.maximum(prev["max_cos"], torch.from_numpy(cos)), "participations": counts}
        # records are strict JSON: an epsilon past the cap is logged as the cap
        metrics = {f"audit/{k}": float(v) if math.isfinite(v) else EPSILON_CAP
                   for k, v in self.report(own).items() if isinstance(v, int | float)}
        return Aggregate(out.update, {**own, **out.state}, {**metrics, **out.metrics})

    def _own(self, state: AggState, dim: int) -> AggState:
        fresh = self.init_state(dim)
        own = {k: state.get(k, fresh[k]) for k in ("sum", "dots", "max_cos", "participations")}
        if tuple(own["sum"].shape) != (dim,) or tuple(own["dots"].shape) != (self.total,):
            raise UpdateError(f"state: audit state is for {tuple(own['sum'].shape)} coordinates and "
                              f"{tuple(own['dots'].shape)} directions, not ({dim},) and ({self.total},)")
        return own

    def report(self, state: AggState, delta: float | None = None) -> dict[str, Any]:
        """The audit of the releases so far, from this wrapper's ``state``, at ``delta`` (default
        :meth:`report_delta`):

        ``empirical_epsilon``, ``ci_low``, ``ci_high``: Andrew et al.'s estimate for an adversary who
        sees the final model: the Gaussian fit of the inserted canaries' cosines with the final model
        delta against the exact null N(0, 1/d) (``variance="auto"``: mu-GDP with ``mu`` unless the
        spreads differ significantly), with its 95% bootstrap interval; ``epsilon_fitted_variance``:
        the paper's unequal-variance reading (``variance="fitted"``; biased up at small delta);
        ``lower_bound_95``: Steinke et al.'s bound, ``inclusion="half"`` only (with ``guesses`` and
        ``correct``); ``epsilon_all_iterates``: the fit of each direction's largest single-round cosine
        against the never-inserted directions' (an adversary who sees every update); ``canaries``,
        ``inserted``, ``null``, ``mean_participations``, ``dim``, ``cos_mean``/``cos_std``,
        ``null_mean``/``null_std`` (the fit of the never-inserted directions' cosines: a check that
        they are about N(0, 1/d)), ``delta``. Estimates are ``None`` before anything was released.
        """
        delta = self.report_delta() if delta is None else check_real("delta", delta, gt=0.0, lt=1.0)
        inc = self.included()
        total = state["sum"]
        dim = int(total.numel())
        norm = float(torch.linalg.vector_norm(total))
        cos = (state["dots"] / norm).numpy() if norm > 0 else np.zeros(self.total)
        observed = np.flatnonzero(inc)
        null = np.concatenate([np.flatnonzero(~inc), np.arange(self.canaries, self.total)])
        parts = state["participations"].numpy()
        out: dict[str, Any] = {
            "canaries": self.canaries, "inserted": int(observed.size), "null": int(null.size), "dim": dim,
            "mean_participations": float(parts[observed].mean()) if observed.size else 0.0,
            "delta": delta, "empirical_epsilon": None, "ci_low": None, "ci_high": None,
            "epsilon_fitted_variance": None, "lower_bound_95": None, "epsilon_all_iterates": None}

        def spread(x: np.ndarray) -> bool:
            return x.size >= 2 and float(np.ptp(x)) > 0

        if norm == 0 or not spread(cos[observed]) or dim < 2:
            return out
        fit = gaussian_fit_epsilon(cos[observed], None, delta, dim=dim, variance="auto", seed=self.seed)
        fitted = gaussian_fit_epsilon(cos[observed], None, delta, dim=dim, variance="fitted", resamples=0)
        out.update(empirical_epsilon=fit.epsilon, ci_low=fit.ci_low, ci_high=fit.ci_high,
                   epsilon_fitted_variance=fitted.epsilon, mu=fit.mu, cos_mean=fit.mean, cos_std=fit.std)
        if spread(cos[null]):
            out.update(null_mean=float(cos[null].mean()), null_std=float(cos[null].std(ddof=1)))
            top = state["max_cos"].numpy()
            if spread(top[observed]) and spread(top[null]):
                out["epsilon_all_iterates"] = gaussian_fit_epsilon(top[observed], top[null], delta,
                                                                   resamples=0).epsilon
        if self.inclusion == "half":
            bound = one_run_epsilon_lower_bound(cos[: self.canaries], inc, delta, CONFIDENCE)
            out.update(lower_bound_95=bound.epsilon, guesses=bound.guesses, correct=bound.correct)
        return out
