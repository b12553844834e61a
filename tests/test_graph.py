"""Tests for secagg.protocol.graph: the Harary graph of SecAgg+, its seeded permutation, degree checks."""

from __future__ import annotations

import os
from collections import Counter

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from secagg.crypto.kdf import GRAPH_LABEL, hkdf
from secagg.errors import ConfigError
from secagg.protocol import graph
from secagg.protocol.graph import check_degree, neighbours, seeded_permutation
from secagg.protocol.messages import MAX_ID

# Chi-square critical value for 7 degrees of freedom (8 bins) at alpha = 1e-4: the exact quantile is
# 29.8775 (scipy.stats.chi2.ppf(1 - 1e-4, 7)); we use 29.9, whose false-alarm rate is 9.9e-5 per statistic.
CHI2_CRIT_7_DOF = 29.9
CHI2_TRIALS = 4000  # 500 expected hits per bin

session_ids = st.binary(min_size=32, max_size=32)


@st.composite
def graph_cases(draw: st.DrawFn) -> tuple[list[int], int, bytes]:
    """Arbitrary distinct member ids (any order), a valid degree (even < m - 1, or >= m - 1), a session id."""
    members = draw(st.lists(st.integers(0, MAX_ID), min_size=2, max_size=60, unique=True))
    m = len(members)
    sparse = [k for k in range(2, m - 1, 2)]
    dense = st.integers(m - 1, m + 5)
    degree = draw(st.one_of(st.sampled_from(sparse), dense) if sparse else dense)
    return members, degree, draw(session_ids)


def edge_set(g: dict[int, frozenset[int]]) -> frozenset[frozenset[int]]:
    return frozenset(frozenset((u, v)) for u, vs in g.items() for v in vs)


@given(graph_cases())
def test_graph_is_regular_symmetric_loop_free_and_closed(case: tuple[list[int], int, bytes]) -> None:
    members, degree, sid = case
    m = len(members)
    g = neighbours(sid, members, degree)
    assert set(g) == set(members)
    for u, vs in g.items():
        assert isinstance(vs, frozenset)
        assert u not in vs  # no self loop
        assert vs <= set(members)  # only members
        assert len(vs) == (m - 1 if degree >= m - 1 else degree)  # k-regular / complete
        for v in vs:
            assert u in g[v]  # symmetric
    if degree >= m - 1:
        assert all(g[u] == set(members) - {u} for u in members)


@given(graph_cases())
def test_graph_is_the_documented_ring(case: tuple[list[int], int, bytes]) -> None:
    """Ring order = seeded_permutation(HKDF(session id, info=GRAPH_LABEL), sorted members); each member
    is joined to the degree/2 nearest members on either side (what client and server must both compute)."""
    members, degree, sid = case
    m = len(members)
    if degree >= m - 1:
        return
    order = seeded_permutation(hkdf(sid, salt=b"", info=GRAPH_LABEL), sorted(members))
    expected = {order[i]: frozenset(order[(i + d) % m] for d in range(-(degree // 2), degree // 2 + 1) if d)
                for i in range(m)}
    assert neighbours(sid, members, degree) == expected


@given(graph_cases(), st.randoms(use_true_random=False))
def test_graph_does_not_depend_on_member_order(case: tuple[list[int], int, bytes], rnd) -> None:
    members, degree, sid = case
    shuffled = list(members)
    rnd.shuffle(shuffled)
    assert neighbours(sid, shuffled, degree) == neighbours(sid, sorted(members), degree)
    assert neighbours(sid, tuple(members), degree) == neighbours(sid, members, degree)


@given(graph_cases())
def test_graph_is_deterministic(case: tuple[list[int], int, bytes]) -> None:
    members, degree, sid = case
    assert neighbours(bytes(sid), list(members), degree) == neighbours(sid, members, degree)


# A handful of fixed random session ids (os.urandom(32), recorded once).
FIXED_SESSION_IDS = [bytes.fromhex(h) for h in (
    "49694e1ae434597d6ee42d99f768ccce782ff502e08735c20bafe45241891c12",
    "7021d45e50ffe371744bdc01696e7a720f1fadd6cd9f7d232b668efb684e392c",
    "7c15a213cf1015929804747ae12054d7accc49a94cc9f019937f705866ba4172",
    "e09937210ac4011af04740aa165e1209734073a74c32514cc438dda264698b75",
    "c0aaaf226c943e08781c6530ebfa9ecae96efa245a5db7ecd55c368656be6f10",
)]


@pytest.mark.parametrize("m", [8, 9, 20])
def test_different_session_ids_give_different_graphs(m: int) -> None:
    members = [7 * i + 3 for i in range(m)]
    graphs = [edge_set(neighbours(sid, members, 2)) for sid in FIXED_SESSION_IDS]
    assert len(set(graphs)) > 1
    # and a one-bit change of the session id changes the graph (over a handful of bits)
    base = FIXED_SESSION_IDS[1]
    changed = [edge_set(neighbours(base[:i] + bytes([base[i] ^ 1]) + base[i + 1:], members, 2))
               for i in range(4)]
    assert any(g != edge_set(neighbours(base, members, 2)) for g in changed)


@given(graph_cases())
def test_neighbours_of_one_member_matches_the_whole_graph(case: tuple[list[int], int, bytes]) -> None:
    """Clients compute only their own neighbourhood; it must be exactly their row of the server's graph."""
    neighbours_of = getattr(graph, "neighbours_of", None)
    if neighbours_of is None:
        pytest.skip("graph.neighbours_of is not part of this version")
    members, degree, sid = case
    g = neighbours(sid, members, degree)
    for u in members:
        assert neighbours_of(sid, members, degree, u) == g[u]


def test_complete_graph_for_degree_at_least_m_minus_1() -> None:
    members = [10, 4, 99]
    for degree in (2, 3, 50):
        assert neighbours(b"\x01" * 32, members, degree) == {4: {10, 99}, 10: {4, 99}, 99: {4, 10}}
    assert neighbours(b"\x01" * 32, [5, 6], 1) == {5: {6}, 6: {5}}


def test_odd_sparse_degree_is_refused() -> None:
    with pytest.raises(ConfigError, match="degree"):
        neighbours(b"\x00" * 32, list(range(10)), 3)


# ---------------------------------------------------------------------------------------------------
# seeded_permutation
# ---------------------------------------------------------------------------------------------------


@given(session_ids, st.lists(st.integers(-(2**40), 2**40), max_size=80))
def test_seeded_permutation_is_a_deterministic_permutation(seed: bytes, items: list[int]) -> None:
    before = list(items)
    out = seeded_permutation(seed, items)
    assert items == before  # input untouched
    assert isinstance(out, list)
    assert sorted(out) == sorted(items)
    assert Counter(out) == Counter(items)
    assert seeded_permutation(seed, tuple(items)) == out
    assert seeded_permutation(bytes(seed), items) == out


def test_seeded_permutation_depends_on_the_seed() -> None:
    items = list(range(20))
    outs = {tuple(seeded_permutation(bytes([b]) * 32, items)) for b in range(6)}
    assert len(outs) == 6  # 20! permutations: a collision among 6 seeds would be a bug


def test_seeded_permutation_of_tiny_inputs() -> None:
    assert seeded_permutation(b"\x00" * 32, []) == []
    assert seeded_permutation(b"\x00" * 32, [42]) == [42]
    assert sorted(seeded_permutation(b"\x00" * 32, [2, 1])) == [1, 2]


def chi_square(counts: Counter, bins: int, trials: int) -> float:
    expected = trials / bins
    return sum((counts.get(b, 0) - expected) ** 2 / expected for b in range(bins))


def test_seeded_permutation_is_unbiased() -> None:
    """Over 4000 fresh random seeds, item 0 lands in each of 8 positions, and each of the 8 items lands
    first, equally often (chi-square, 7 dof, critical value 29.9 at alpha ~1e-4 each)."""
    items = list(range(8))
    position_of_0: Counter = Counter()
    first: Counter = Counter()
    for _ in range(CHI2_TRIALS):
        out = seeded_permutation(os.urandom(32), items)
        position_of_0[out.index(0)] += 1
        first[out[0]] += 1
    assert chi_square(position_of_0, 8, CHI2_TRIALS) < CHI2_CRIT_7_DOF, position_of_0
    assert chi_square(first, 8, CHI2_TRIALS) < CHI2_CRIT_7_DOF, first


def test_seeded_permutation_sorts_by_full_64_bit_prg_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    """The documented construction: items ordered by 64-bit keys drawn from PRG(seed), ties kept in input
    order. Keys whose low 32 bits rise while the high 32 bits fall must order by the high bits."""
    m = 6
    keys = np.array([((m - i) << 32) | i for i in range(m)], dtype=np.uint64)
    requested: list[int] = []

    def fake_expand(seed: bytes, length: int) -> np.ndarray:
        requested.append(length)
        words = keys.view(np.uint32)
        return np.resize(words, length).astype(np.uint32)

    monkeypatch.setattr(graph, "expand", fake_expand)
    items = [10, 20, 30, 40, 50, 60]
    assert seeded_permutation(b"\x07" * 32, items) == items[::-1]
    assert requested and requested[0] >= 2 * m  # at least 64 bits of PRG output per item

    monkeypatch.setattr(graph, "expand", lambda seed, length: np.zeros(length, dtype=np.uint32))
    assert seeded_permutation(b"\x07" * 32, items) == items  # all keys tie: input order, deterministic


# ---------------------------------------------------------------------------------------------------
# check_degree
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("degree", "n"), [
    (3, 10), (5, 10), (1, 4), (1, 3),  # odd, below n - 1
    (0, 10), (0, 2), (-2, 10),  # not positive
    (10, 10), (11, 10), (2, 2), (4, 3),  # >= n
])
def test_check_degree_refuses(degree: int, n: int) -> None:
    with pytest.raises(ConfigError, match="degree"):
        check_degree(degree, n)


@pytest.mark.parametrize(("degree", "n"), [(2, 10), (8, 10), (9, 10), (1, 2), (2, 3), (4, 5), (2, 1000)])
def test_check_degree_accepts(degree: int, n: int) -> None:
    check_degree(degree, n)


@given(st.integers(-3, 70), st.integers(2, 64))
def test_check_degree_matches_the_rule(degree: int, n: int) -> None:
    valid = 1 <= degree <= n - 1 and (degree == n - 1 or degree % 2 == 0)
    if valid:
        check_degree(degree, n)
    else:
        with pytest.raises(ConfigError, match="degree"):
            check_degree(degree, n)
