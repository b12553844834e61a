"""Renyi-DP curves of the distributed discrete mechanisms and of Poisson subsampling.

All sensitivities and noise scales are in *integer units* (after the client has scaled by 1/granularity
and rounded), as the theorems state them. An RDP curve maps an order alpha > 1 to epsilon(alpha) in nats.

References (arXiv numbering):

* Kairouz, Liu, Steinke. "The Distributed Discrete Gaussian Mechanism for Federated Learning with Secure
  Aggregation", ICML 2021, arXiv:2102.06387 -- Theorem 1 (eq. 4) / Proposition 14.
* Agarwal, Kairouz, Liu. "The Skellam Mechanism for Differentially Private Federated Learning",
  NeurIPS 2021, arXiv:2110.04995 -- the multi-dimensional Renyi bound (Corollary 3.6 in v2).
* Zhu, Wang. "Poisson Subsampled Renyi Differential Privacy", ICML 2019 -- Theorem 6 (general upper bound).
"""

from __future__ import annotations

import math
from collections.abc import Callable

from secagg.validation import check_int, check_real

__all__ = [
    "ddg_tau",
    "rdp_distributed_discrete_gaussian",
    "rdp_poisson_subsampled",
    "rdp_skellam",
]


def _check_order(alpha: float) -> float:
    return check_real("alpha", alpha, gt=1.0)


def _check_int_order(alpha: int) -> int:
    return check_int("alpha", alpha, minimum=2)


def ddg_tau(sigma: float, num_clients: int) -> float:
    """tau = 10 * sum_{k=1}^{n-1} exp(-2 pi^2 sigma^2 k / (k+1)) of Kairouz et al. (0 for one client).

    It bounds how far a sum of n discrete Gaussians N_Z(0, sigma^2) is from a discrete Gaussian of
    variance n sigma^2; ``sigma`` is each client's scale in integer units.
    """
    sigma = check_real("sigma", sigma, ge=0.5)
    n = check_int("num_clients", num_clients, minimum=1)
    return 10.0 * math.fsum(math.exp(-2.0 * math.pi ** 2 * sigma ** 2 * k / (k + 1)) for k in range(1, n))


def rdp_distributed_discrete_gaussian(alpha: float, l2_sensitivity: float, sigma: float, num_clients: int,
                                      dim: int, l1_sensitivity: float | None = None) -> float:
    """RDP at order ``alpha`` > 1 of the sum of ``num_clients`` independent N_Z(0, sigma^2)^dim vectors.

    Kairouz, Liu, Steinke 2021, Proposition 14 (used in Theorem 1, eq. 4): for sigma >= 1/2, every *real*
    order alpha >= 1 (Theorem 1 states the result as concentrated DP, a bound at every real alpha > 1, and
    Google's reference accountant asserts only alpha >= 1) and any integer shift with ||D||_1 <= D1,
    ||D||_2 <= D2, with tau = :func:`ddg_tau` and n sigma^2 = N,

        eps(alpha) = min( alpha D2^2/(2N) + tau d,
                          alpha/2 (D2^2/N + 2 D1 tau/sqrt(N) + tau^2 d),
                          alpha/2 (D2/sqrt(N) + tau sqrt(d))^2 ).

    ``l1_sensitivity`` defaults to min(sqrt(d) D2, D2^2), valid for any integer vector of L2 norm <= D2
    (Cauchy-Schwarz, and |x| <= x^2 on integers). Units: integer units throughout.
    """
    alpha = _check_order(alpha)
    d2 = check_real("l2_sensitivity", l2_sensitivity, gt=0.0)
    sigma = check_real("sigma", sigma, ge=0.5)
    n = check_int("num_clients", num_clients, minimum=1)
    d = check_int("dim", dim, minimum=1)
    if l1_sensitivity is None:
        d1 = min(math.sqrt(d) * d2, d2 * d2)
    else:
        d1 = check_real("l1_sensitivity", l1_sensitivity, gt=0.0)
    tau = ddg_tau(sigma, n)
    var = n * sigma ** 2
    term1 = alpha * d2 ** 2 / (2.0 * var) + tau * d
    term2 = 0.5 * alpha * (d2 ** 2 / var + 2.0 * d1 * tau / math.sqrt(var) + tau ** 2 * d)
    term3 = 0.5 * alpha * (d2 / math.sqrt(var) + tau * math.sqrt(d)) ** 2
    return min(term1, term2, term3)


def rdp_skellam(alpha: int, l1_sensitivity: float, l2_sensitivity: float, mu: float) -> float:
    """RDP at integer order ``alpha`` >= 2 of the multi-dimensional Skellam mechanism.

    The theorem is stated for integer orders only, so fractional orders are refused (unlike the discrete
    Gaussian's); an accountant wanting a real order below 2 gets no bound from it.

    The noise is i.i.d. per coordinate Sk(mu) = Poisson(mu/2) - Poisson(mu/2), i.e. **variance mu** per
    coordinate of the aggregate (n clients adding variance mu/n each sum to exactly Sk(mu)). Agarwal,
    Kairouz, Liu 2021 (Corollary 3.6 of arXiv:2110.04995v2), for integer shifts with ||D||_1 <= D1,
    ||D||_2 <= D2:

        eps(alpha) <= alpha D2^2/(2 mu) + min( ((2 alpha - 1) D2^2 + 6 D1) / (4 mu^2), 3 D1/(2 mu) ).

    The first term is the continuous Gaussian of variance mu; the second vanishes as mu grows.
    """
    a = _check_int_order(alpha)
    d1 = check_real("l1_sensitivity", l1_sensitivity, gt=0.0)
    d2 = check_real("l2_sensitivity", l2_sensitivity, gt=0.0)
    mu = check_real("mu", mu, gt=0.0)
    return a * d2 ** 2 / (2.0 * mu) + min(((2 * a - 1) * d2 ** 2 + 6.0 * d1) / (4.0 * mu ** 2),
                                          3.0 * d1 / (2.0 * mu))


def _logsumexp(terms: list[float]) -> float:
    top = max(terms)
    if top == -math.inf:
        return -math.inf
    if top == math.inf:
        return math.inf
    return top + math.log(math.fsum(math.exp(t - top) for t in terms))


def _log_comb(n: int, k: int) -> float:
    return math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1)


def rdp_poisson_subsampled(rdp_fn: Callable[[int], float], q: float, alpha: int) -> float:
    """Zhu & Wang 2019 (Theorem 6) upper bound on the RDP at integer ``alpha`` >= 2 of a mechanism run on a
    Poisson subsample with rate ``q`` in (0, 1], given the base mechanism's RDP curve ``rdp_fn``
    (evaluated at the integer orders 2..alpha):

        1/(alpha-1) log[ (1-q)^(alpha-1) (alpha q - q + 1) + C(alpha,2) q^2 (1-q)^(alpha-2) e^{eps(2)}
                         + 3 sum_{l=3}^{alpha} C(alpha,l) q^l (1-q)^(alpha-l) e^{(l-1) eps(l)} ].

    Computed in log space. It is an upper bound, not a min with ``rdp_fn(alpha)``: at q = 1 it can exceed
    the unsubsampled RDP (callers that want the better of the two take the min).
    """
    a = _check_int_order(alpha)
    q = check_real("q", q, gt=0.0, le=1.0)
    log_q = math.log(q)
    log_1mq = math.log1p(-q) if q < 1.0 else -math.inf

    def log_pow_1mq(k: int) -> float:  # log((1-q)^k) with 0^0 = 1
        return 0.0 if k == 0 else k * log_1mq

    terms = [log_pow_1mq(a - 1) + math.log(a * q - q + 1.0),
             _log_comb(a, 2) + 2 * log_q + log_pow_1mq(a - 2) + float(rdp_fn(2))]
    log3 = math.log(3.0)
    for lv in range(3, a + 1):
        log_binom_q = _log_comb(a, lv) + lv * log_q + log_pow_1mq(a - lv)
        terms.append(log3 + log_binom_q + (lv - 1) * float(rdp_fn(lv)))
    return max(_logsumexp(terms) / (a - 1), 0.0)
