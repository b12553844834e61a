"""SecAgg+ parameters: the Harary-graph degree ``k`` and Shamir threshold ``t`` (Bell et al. 2020).

For ``n`` clients of which a fraction may be corrupt (colluding with the server) and a fraction may
drop out, the finder returns the smallest even degree ``k`` for which (i) the communication graph
stays connected after removing every corrupt and dropped client, except with probability 2^-41, and
(ii) a threshold ``t`` exists that the corrupt neighbours of a client reach with probability below
2^-41 / n (security) while its surviving neighbours fall short of it with probability at most
2^-20 / n (correctness). Together: statistical security 2^-40 and failure probability 2^-20.
These are the bounds, and the arithmetic, of the production parameter finder whose choices are
listed in ``shared/reference/secaggplus_params.tsv``; the tests reproduce that table row for row.

The full graph (classic SecAgg, Bonawitz et al. 2017) is the ``k = n - 1`` case.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np

from secagg.errors import ConfigError
from secagg.validation import check_int, check_real

_LOG2 = math.log(2.0)
_SECURITY_BITS = 40
_CORRECTNESS_BITS = 20


def _log_comb(n: int, k: int) -> float:
    return math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1)


def hypergeom_log_pmf(population: int, marked: int, draws: int) -> np.ndarray:
    """log P[X = x] for x = 0..draws, X ~ Hypergeometric(population, marked, draws); -inf off support.

    One lgamma evaluation at the bottom of the support, then the ratio recurrence
    P(x+1)/P(x) = (marked-x)(draws-x) / ((x+1)(population-marked-draws+x+1)), summed in log space.
    """
    out = np.full(draws + 1, -np.inf)
    lo, hi = max(0, draws - (population - marked)), min(draws, marked)
    if lo > hi:
        return out
    x = np.arange(lo, hi, dtype=np.float64)
    steps = (np.log(marked - x) + np.log(draws - x) - np.log(x + 1)
             - np.log(population - marked - draws + x + 1))
    first = _log_comb(marked, lo) + _log_comb(population - marked, draws - lo) - _log_comb(population, draws)
    out[lo:hi + 1] = first + np.concatenate(([0.0], np.cumsum(steps)))
    return out


def _connectivity_ok(n: int, k: int, bad: int) -> bool:
    """Bell et al.'s bound on the graph disconnecting when ``bad`` nodes are removed."""
    if k > bad:
        return True
    log_p = (math.log(n) + math.log(n - k - 1) - _LOG2 + math.lgamma(bad + 1)
             + math.lgamma(n - k + 1) - math.lgamma(n + 1) - math.lgamma(bad - k + 1))
    return log_p < -(_SECURITY_BITS + 1) * _LOG2


@lru_cache(maxsize=1024)
def _corrupt_bound(n: int, k: int, corrupt: int, malicious: bool) -> int:
    """t1: the corrupt neighbours a client of a degree-``k`` graph may have, except with probability
    2^-41 / n (``malicious``: raised so that ``2 t > k + t1``, Bell et al.'s semi-malicious bound)."""
    log_sec = -(_SECURITY_BITS + 1) * _LOG2 - math.log(n)
    # t1: smallest t with P[X > t] < 2^-41 / n, X = corrupt neighbours. tail[t] = log P[X > t].
    pmf_x = hypergeom_log_pmf(n, corrupt, k)
    tail = np.append(np.logaddexp.accumulate(pmf_x[::-1])[::-1][1:], -np.inf)
    t1 = int(np.argmax(tail < log_sec))  # tail is non-increasing and tail[k] = -inf
    if malicious:
        t1 = math.ceil((t1 + k - 1.25) / 2)
    return t1


def secure_threshold(n: int, degree: int, corrupt: int, malicious: bool = False) -> int:
    """The smallest Shamir threshold at which ``corrupt`` of ``n`` clients colluding with the server
    reach a client's secrets on a ``degree``-regular SecAgg+ graph with probability below the finder's
    2^-40 over the whole session (and, ``malicious``, cannot complete both kinds of a client's shares
    through a split request). On the full graph: ``corrupt + 1``, and in malicious mode
    ``floor((n + corrupt) / 2) + 1``."""
    n = check_int("n", n, minimum=2)
    degree = check_int("degree", degree, minimum=1, maximum=n - 1)
    corrupt = check_int("corrupt", corrupt, minimum=0, maximum=n - 1)
    if degree == n - 1:
        return (n + corrupt) // 2 + 1 if malicious else corrupt + 1
    return max(_corrupt_bound(n, degree, corrupt, bool(malicious)) + 1, 2)


def _threshold(n: int, k: int, corrupt: int, survivors: int, malicious: bool) -> int | None:
    """The threshold for degree ``k``, or ``None`` if no threshold meets both bounds."""
    log_cor = -_CORRECTNESS_BITS * _LOG2 - math.log(n)
    t1 = _corrupt_bound(n, k, corrupt, malicious)
    # t2: smallest t with P[Z <= t] >= 2^-20 / n, Z = surviving neighbours
    cdf = np.logaddexp.accumulate(hypergeom_log_pmf(n, survivors, k))
    reached = np.flatnonzero(cdf >= log_cor)
    if reached.size == 0 or int(reached[0]) <= t1:
        return None
    return max(t1 + 1, 2)


@lru_cache(maxsize=256)
def secaggplus_parameters(n: int, corrupt_fraction: float, dropout_fraction: float,
                          malicious: bool = False) -> tuple[int, int]:
    """``(k, t)`` for SecAgg+ with ``n`` clients: smallest even degree ``k < n - 1`` and its threshold.

    ``corrupt_fraction``: fraction of clients that may collude with the server, in [0, 1).
    ``dropout_fraction``: fraction that may drop out during the round, in [0, 1).
    ``malicious=True`` selects the semi-malicious-server threshold. Raises :class:`ConfigError`
    when no even ``k < n - 1`` meets the bounds (use the full graph, ``k = n - 1``, then).
    """
    check_int("n", n, minimum=3)
    check_real("corrupt_fraction", corrupt_fraction, ge=0.0, lt=1.0)
    check_real("dropout_fraction", dropout_fraction, ge=0.0, lt=1.0)
    if corrupt_fraction + dropout_fraction >= 1.0:
        raise ConfigError(f"corrupt_fraction + dropout_fraction: must be < 1, got "
                          f"{corrupt_fraction + dropout_fraction}")
    corrupt = math.floor((corrupt_fraction + 1e-14) * n)
    dropped = math.floor((dropout_fraction + 1e-14) * n)
    survivors = math.ceil((1.0 - dropout_fraction) * n - 1e-14 * n)
    for k in range(2, n - 1, 2):
        if not _connectivity_ok(n, k, corrupt + dropped):
            continue
        t = _threshold(n, k, corrupt, survivors, malicious)
        if t is not None:
            return k, t
    raise ConfigError(f"no SecAgg+ degree k < n - 1 = {n - 1} meets 2^-{_SECURITY_BITS} security and "
                      f"2^-{_CORRECTNESS_BITS} failure for n={n}, corrupt_fraction={corrupt_fraction}, "
                      f"dropout_fraction={dropout_fraction}; use the full graph (k = n - 1) or more clients")
