"""Tests for secagg.protocol.finder: the SecAgg+ (k, t) finder against the reference table and an oracle.

The oracle below is written from the specification alone (the finder's module docstring and the issue's
rules), in plain Python: hypergeometric log-pmf by ``math.lgamma`` at every point (no recurrence),
probabilities summed with ``math.fsum``, thresholds found by direct search.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from secagg.errors import ConfigError
from secagg.protocol.finder import hypergeom_log_pmf, secaggplus_parameters

# The rows of shared/reference/secaggplus_params.tsv (n corrupt dropout server k t), embedded so the tests
# run where shared/ is absent (CI); test_embedded_rows_match_the_reference_file checks the copy.
REFERENCE_ROWS = """\
100 0.45 0.45 CURIOUS_SERVER 92 46
1000 0.45 0.45 CURIOUS_SERVER 822 417
10000 0.45 0.45 CURIOUS_SERVER 3494 1771
100000 0.45 0.45 CURIOUS_SERVER 5508 2788
1000000 0.45 0.45 CURIOUS_SERVER 6240 3156
10 0.33 0.33 CURIOUS_SERVER 8 4
100 0.33 0.33 CURIOUS_SERVER 68 34
1000 0.33 0.33 CURIOUS_SERVER 286 150
10000 0.33 0.33 CURIOUS_SERVER 422 221
100000 0.33 0.33 CURIOUS_SERVER 480 251
1000000 0.33 0.33 CURIOUS_SERVER 518 270
100 0.3 0.3 SEMI_MALICIOUS_SERVER 92 62
1000 0.3 0.3 SEMI_MALICIOUS_SERVER 872 584
10000 0.3 0.3 SEMI_MALICIOUS_SERVER 4822 3230
100000 0.3 0.3 SEMI_MALICIOUS_SERVER 9388 6286
1000000 0.3 0.3 SEMI_MALICIOUS_SERVER 11136 7454
10 0.05 0.33 CURIOUS_SERVER 4 2
100 0.05 0.33 CURIOUS_SERVER 28 6
1000 0.05 0.33 CURIOUS_SERVER 72 24
10000 0.05 0.33 CURIOUS_SERVER 86 29
100000 0.05 0.33 CURIOUS_SERVER 96 32
1000000 0.05 0.33 CURIOUS_SERVER 102 34
10 0.05 0.33 SEMI_MALICIOUS_SERVER 8 5
100 0.05 0.33 SEMI_MALICIOUS_SERVER 72 39
1000 0.05 0.33 SEMI_MALICIOUS_SERVER 398 223
10000 0.05 0.33 SEMI_MALICIOUS_SERVER 746 420
100000 0.05 0.33 SEMI_MALICIOUS_SERVER 882 496
1000000 0.05 0.33 SEMI_MALICIOUS_SERVER 970 545
"""

SERVERS = {"CURIOUS_SERVER": False, "SEMI_MALICIOUS_SERVER": True}
REFERENCE_FILES = [Path(__file__).resolve().parents[2] / "shared" / "reference" / "secaggplus_params.tsv",
                   Path(__file__).resolve().parents[1] / "shared" / "reference" / "secaggplus_params.tsv"]


def parse_row(fields: list[str]) -> tuple[int, float, float, bool, int, int]:
    n, corrupt, dropout, server, k, t = fields
    return int(n), float(corrupt), float(dropout), SERVERS[server], int(k), int(t)


ROWS = [parse_row(line.split()) for line in REFERENCE_ROWS.splitlines()]


def test_embedded_rows_match_the_reference_file() -> None:
    path = next((p for p in REFERENCE_FILES if p.exists()), None)
    if path is None:
        pytest.skip("shared/reference/secaggplus_params.tsv is not available here")
    body = [line for line in path.read_text().splitlines() if line.strip() and not line.startswith("#")]
    assert body[0].split("\t") == ["n", "corrupt", "dropout", "server", "k", "t"]
    assert [parse_row(line.split("\t")) for line in body[1:]] == ROWS


def test_table_is_complete() -> None:
    assert len(ROWS) == 28
    assert {r[3] for r in ROWS} == {False, True}


@pytest.mark.parametrize(("n", "corrupt", "dropout", "malicious", "k", "t"), ROWS,
                         ids=[f"n{r[0]}-c{r[1]}-d{r[2]}-{'mal' if r[3] else 'cur'}" for r in ROWS])
def test_reference_table_row(n: int, corrupt: float, dropout: float, malicious: bool, k: int, t: int) -> None:
    assert secaggplus_parameters(n, corrupt, dropout, malicious) == (k, t)


# ---------------------------------------------------------------------------------------------------
# Independent oracle
# ---------------------------------------------------------------------------------------------------

LN2 = math.log(2.0)


def ref_log_comb(n: int, k: int) -> float:
    return math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1)


def ref_log_pmf(population: int, marked: int, draws: int, x: int) -> float:
    """log P[X = x], X ~ Hypergeometric(population, marked, draws), straight from the definition."""
    if x < 0 or x > marked or draws - x < 0 or draws - x > population - marked:
        return -math.inf
    return (ref_log_comb(marked, x) + ref_log_comb(population - marked, draws - x)
            - ref_log_comb(population, draws))


def ref_pmf(population: int, marked: int, draws: int) -> list[float]:
    return [math.exp(ref_log_pmf(population, marked, draws, x)) for x in range(draws + 1)]


def smallest(lo: int, hi: int, ok) -> int:
    """Smallest t in [lo, hi] with ok(t), for a predicate that is monotone (False..., True...)."""
    assert ok(hi)
    while lo < hi:
        mid = (lo + hi) // 2
        if ok(mid):
            hi = mid
        else:
            lo = mid + 1
    return lo


def ref_parameters(n: int, corrupt_fraction: float, dropout_fraction: float,
                   malicious: bool) -> tuple[int, int] | None:
    """The spec's (k, t), or None when no even k < n - 1 works."""
    c = math.floor((corrupt_fraction + 1e-14) * n)
    d = math.floor((dropout_fraction + 1e-14) * n)
    bad = c + d
    survivors = math.ceil((1 - dropout_fraction) * n - 1e-14 * n)
    security = 2.0**-41 / n
    correctness = 2.0**-20 / n
    k = 2
    while k < n - 1:
        connected = k > bad or (
            math.log(n) + math.log(n - k - 1) - LN2 + math.lgamma(bad + 1) + math.lgamma(n - k + 1)
            - math.lgamma(n + 1) - math.lgamma(bad - k + 1) < -41 * LN2)
        if connected:
            px = ref_pmf(n, c, k)
            pz = ref_pmf(n, survivors, k)
            # t1: smallest t with P[X > t] < 2^-41 / n; t2: smallest t with P[Z <= t] >= 2^-20 / n.
            t1 = smallest(0, k, lambda t, px=px: math.fsum(px[t + 1:]) < security)
            t2 = smallest(0, k, lambda t, pz=pz: math.fsum(pz[: t + 1]) >= correctness)
            if malicious:
                t1 = math.ceil((t1 + k - 1.25) / 2)
            if t2 > t1:
                return k, max(t1 + 1, 2)
        k += 2
    return None


@pytest.mark.parametrize(("n", "corrupt", "dropout", "malicious", "k", "t"),
                         [r for r in ROWS if r[0] <= 1000])
def test_oracle_reproduces_the_small_table_rows(n: int, corrupt: float, dropout: float, malicious: bool,
                                                k: int, t: int) -> None:
    """The oracle itself is checked against the production table before it judges the finder."""
    assert ref_parameters(n, corrupt, dropout, malicious) == (k, t)


def library_or_none(n: int, corrupt: float, dropout: float, malicious: bool) -> tuple[int, int] | None:
    try:
        return secaggplus_parameters(n, corrupt, dropout, malicious)
    except ConfigError as exc:
        assert "full graph" in str(exc)
        return None


fractions = st.floats(0.0, 0.4, allow_nan=False)


@settings(max_examples=200)
@given(st.integers(5, 400), fractions, fractions, st.booleans())
def test_finder_matches_the_oracle(n: int, corrupt: float, dropout: float, malicious: bool) -> None:
    expected = ref_parameters(n, corrupt, dropout, malicious)
    event("no sparse k (ConfigError)" if expected is None else "sparse k found")
    event(f"n in [{n // 100 * 100}, {n // 100 * 100 + 99}]")
    assert library_or_none(n, corrupt, dropout, malicious) == expected
    if expected is not None:
        k, t = expected
        assert k % 2 == 0 and 2 <= k < n - 1
        assert 2 <= t <= k + 1


@pytest.mark.parametrize(("n", "corrupt", "dropout", "malicious"), [
    (5, 0.0, 0.0, False), (5, 0.0, 0.0, True), (6, 0.2, 0.2, False), (7, 1 / 7, 1 / 7, False),
    (10, 0.1, 0.1, False), (10, 0.3, 0.0, True), (50, 0.2, 0.1, False), (100, 0.0, 0.4, True),
    (100, 0.1, 0.1, False), (150, 0.33, 0.0, False), (200, 0.05, 0.2, True), (400, 0.4, 0.4, False),
    (400, 0.0, 0.0, False), (333, 0.1, 0.3, True), (64, 0.25, 0.125, False),
    # points that separate the spec's fine print: the 1e-14 slack in C (0.29 * 100 = 28.999...) and in
    # the survivor count, and the connectivity bound applying at k == B (skipped only for k > B)
    (100, 0.29, 0.0, False), (150, 0.0, 0.18, True), (30, 0.0, 0.4, False),
])
def test_finder_matches_the_oracle_on_fixed_points(n: int, corrupt: float, dropout: float,
                                                   malicious: bool) -> None:
    assert library_or_none(n, corrupt, dropout, malicious) == ref_parameters(n, corrupt, dropout, malicious)


def test_semi_malicious_needs_at_least_as_much() -> None:
    for n in (50, 100, 300):
        curious = secaggplus_parameters(n, 0.1, 0.1, False)
        malicious = secaggplus_parameters(n, 0.1, 0.1, True)
        assert malicious[0] >= curious[0]


# ---------------------------------------------------------------------------------------------------
# hypergeom_log_pmf
# ---------------------------------------------------------------------------------------------------


@st.composite
def hypergeom_args(draw: st.DrawFn) -> tuple[int, int, int]:
    population = draw(st.integers(1, 3000))
    marked = draw(st.integers(0, population))
    draws = draw(st.integers(0, population))
    return population, marked, draws


@given(hypergeom_args())
def test_hypergeom_log_pmf_is_a_distribution(args: tuple[int, int, int]) -> None:
    population, marked, draws = args
    log_pmf = hypergeom_log_pmf(population, marked, draws)
    assert isinstance(log_pmf, np.ndarray) and log_pmf.shape == (draws + 1,)
    assert not np.any(np.isnan(log_pmf))
    assert np.all(log_pmf <= 1e-9)
    assert abs(math.fsum(np.exp(log_pmf).tolist()) - 1.0) < 1e-9


@given(hypergeom_args())
def test_hypergeom_log_pmf_matches_lgamma_pointwise(args: tuple[int, int, int]) -> None:
    population, marked, draws = args
    log_pmf = hypergeom_log_pmf(population, marked, draws)
    for x in range(draws + 1):
        ref = ref_log_pmf(population, marked, draws, x)
        if ref == -math.inf:
            assert log_pmf[x] == -math.inf, (x, log_pmf[x])
        else:
            assert math.isclose(log_pmf[x], ref, rel_tol=1e-9, abs_tol=1e-8), (x, log_pmf[x], ref)


def test_hypergeom_log_pmf_small_exact_values() -> None:
    # population 5, 2 marked, 2 draws: P = [3/10, 6/10, 1/10]
    assert np.allclose(np.exp(hypergeom_log_pmf(5, 2, 2)), [0.3, 0.6, 0.1], rtol=1e-12, atol=0)
    # support starts above 0: population 5, 4 marked, 3 draws -> x in {2, 3}: P = [0, 0, 6/10, 4/10]
    out = hypergeom_log_pmf(5, 4, 3)
    assert out[0] == -math.inf and out[1] == -math.inf
    assert np.allclose(np.exp(out[2:]), [0.6, 0.4], rtol=1e-12, atol=0)
    assert hypergeom_log_pmf(10, 0, 3).tolist() == [0.0, -math.inf, -math.inf, -math.inf]
    assert hypergeom_log_pmf(10, 10, 3).tolist() == [-math.inf, -math.inf, -math.inf, 0.0]


# ---------------------------------------------------------------------------------------------------
# Validation
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [2, 1, 0, -5, 2.5, 10.0, "10", True, None])
def test_bad_n_is_refused(n) -> None:
    with pytest.raises(ConfigError, match=r"^n:"):
        secaggplus_parameters(n, 0.1, 0.1)


BAD_FRACTIONS = [-0.1, -1e-300, 1.0, 1.5, math.nan, math.inf, -math.inf, "0.1", None]


@pytest.mark.parametrize("value", BAD_FRACTIONS, ids=repr)
def test_bad_corrupt_fraction_is_refused(value) -> None:
    with pytest.raises(ConfigError, match="corrupt_fraction"):
        secaggplus_parameters(100, value, 0.1)


@pytest.mark.parametrize("value", BAD_FRACTIONS, ids=repr)
def test_bad_dropout_fraction_is_refused(value) -> None:
    with pytest.raises(ConfigError, match="dropout_fraction"):
        secaggplus_parameters(100, 0.1, value)


@pytest.mark.parametrize(("corrupt", "dropout"), [(0.5, 0.5), (0.9, 0.1), (0.3, 0.7), (0.6, 0.7)])
def test_fractions_summing_to_one_are_refused(corrupt: float, dropout: float) -> None:
    with pytest.raises(ConfigError, match=r"corrupt_fraction \+ dropout_fraction"):
        secaggplus_parameters(100, corrupt, dropout)


@pytest.mark.parametrize(("n", "corrupt", "dropout", "malicious"), [
    (10, 0.45, 0.45, False), (10, 0.45, 0.45, True), (3, 0.0, 0.0, False), (3, 0.0, 0.0, True),
    (5, 0.2, 0.2, False), (20, 0.4, 0.4, True),
])
def test_impossible_settings_point_to_the_full_graph(n: int, corrupt: float, dropout: float,
                                                     malicious: bool) -> None:
    assert ref_parameters(n, corrupt, dropout, malicious) is None
    with pytest.raises(ConfigError, match="full graph"):
        secaggplus_parameters(n, corrupt, dropout, malicious)


def test_zero_fractions_are_allowed() -> None:
    k, t = secaggplus_parameters(100, 0.0, 0.0)
    assert k >= 2 and t >= 2


@settings(max_examples=150)
@given(st.integers(8, 400), st.floats(0.0, 0.3), st.floats(0.0, 0.3))
def test_malicious_threshold_defeats_the_split_request(n: int, corrupt: float, dropout: float) -> None:
    """With the k neighbours as the only holders (the owner's share does not count in malicious mode),
    a server asking some holders for b_u and others for s_u, helped by up to t1 colluding neighbours
    (t1: the semi-honest security bound on corrupt neighbours at that k), never gets t of both:
    that needs 2t <= k + t1."""
    found = library_or_none(n, corrupt, dropout, True)
    if found is None:
        return
    k, t = found
    c = math.floor((corrupt + 1e-14) * n)
    px = ref_pmf(n, c, k)
    t1 = smallest(0, k, lambda x: math.fsum(px[x + 1:]) < 2.0**-41 / n)
    event(f"t1 + k {'odd' if (t1 + k) % 2 else 'even'}")
    assert 2 * t > k + t1, (k, t, t1)
    assert t <= k, "t shares must exist among the k neighbours alone"
