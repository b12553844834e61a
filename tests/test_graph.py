"""Tests for secagg.protocol.graph: the session's SecAgg+ graph from Setup data, degree checks.

The graph is a function of Setup data alone (round, degree, n, the members' Merkle root): the
server's, each client's own O(k) view and the written construction must agree, and nothing decided
after Setup (which advertisements, which dropouts) may move a client's neighbourhood: a client's
neighbours in a session are always a subset of its Setup-time ring neighbours.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from secagg.errors import ConfigError
from secagg.protocol.graph import check_degree, neighbour_table, ring_neighbours, session_ring
from secagg.protocol.messages import MAX_ID, SessionParams
from secagg.protocol.ring import Ring, ring_seed
from secagg.protocol.server import Server

NONCE = bytes(range(32))


@st.composite
def sessions(draw: st.DrawFn) -> SessionParams:
    """Distinct member ids, a valid degree (even < n - 1, or n - 1), any round."""
    ids = tuple(sorted(draw(st.lists(st.integers(0, MAX_ID), min_size=3, max_size=60, unique=True))))
    n = len(ids)
    sparse = list(range(2, n - 1, 2))
    degree = draw(st.sampled_from([*sparse, n - 1]))
    return SessionParams(draw(st.integers(0, 2**32 - 1)), b"m", ids, 1, degree, 4, nonce=NONCE)


def as_ids(params: SessionParams, indices) -> frozenset[int]:
    return frozenset(params.client_ids[i] for i in indices)


@given(sessions())
def test_the_graph_is_regular_symmetric_and_loop_free(params: SessionParams) -> None:
    n, k = params.members, params.degree
    graph = {u: as_ids(params, ring_neighbours(params, i)) for i, u in enumerate(params.client_ids)}
    for u, near in graph.items():
        assert u not in near and len(near) == (n - 1 if params.full_graph else k)
        assert all(u in graph[v] for v in near)


@given(sessions())
def test_each_clients_own_view_is_the_servers_table_and_the_written_ring(params: SessionParams) -> None:
    """A client computes its row alone (O(k)); the server builds the table; the spec says: the indices
    at ring positions pi(i) +- 1..k/2 under the swap-or-not ring seeded by the Setup data."""
    if params.full_graph:
        with pytest.raises(ConfigError, match="degree"):
            neighbour_table(params)
        return
    table = neighbour_table(params)
    ring = Ring(ring_seed(params.round, params.degree, params.members, params.members_root), params.members)
    position = ring.positions(np.arange(params.members))
    at = {int(p): i for i, p in enumerate(position)}
    half = params.degree // 2
    for i in range(params.members):
        spec = {at[(int(position[i]) + j) % params.members] for j in range(-half, half + 1) if j}
        assert ring_neighbours(params, i) == spec == set(table[i].tolist())


def test_the_ring_depends_on_every_setup_input_and_on_nothing_else() -> None:
    base = SessionParams(5, b"model", tuple(range(0, 200, 7)), 3, 4, 16, nonce=NONCE)

    def rows(p: SessionParams) -> np.ndarray:
        return neighbour_table(p)

    same = [dataclasses.replace(base, model_version=b"other"), dataclasses.replace(base, nonce=bytes(32)),
            dataclasses.replace(base, vector_length=17), dataclasses.replace(base, threshold=4)]
    assert all(np.array_equal(rows(p), rows(base)) for p in same), "server-chosen values do not move it"
    # the round, the member set (through its root) and the degree each reseed the whole ring
    other_set = (*base.client_ids[:-1], 999)
    for p in (dataclasses.replace(base, round=6), dataclasses.replace(base, client_ids=other_set),
              dataclasses.replace(base, degree=6)):
        assert not np.array_equal(rows(p)[:, :1], rows(base)[:, :1])


@settings(max_examples=25, deadline=None)
@given(st.integers(8, 60), st.data())
def test_no_dropout_or_directory_choice_moves_a_neighbourhood_beyond_removal(n: int, data) -> None:
    """The bound of graph.py's argument, on the server itself: whichever clients advertise (the server's
    only choice after Setup, and every real or claimed dropout), a client's session neighbours are its
    Setup-time ring neighbours minus the absent ones: no one is ever added or moved in."""
    k = data.draw(st.sampled_from([k for k in (2, 4, 6) if k < n - 1]), label="degree")
    params = SessionParams(1, b"m", tuple(range(3, 3 + 2 * n, 2)), 1, k, 4, nonce=NONCE)
    setup_ring = {u: as_ids(params, ring_neighbours(params, i)) for i, u in enumerate(params.client_ids)}
    server = Server(params)
    advertised = data.draw(st.sets(st.sampled_from(params.client_ids), min_size=1), label="advertisers")
    server.keys = dict.fromkeys(advertised)  # type: ignore[assignment]  (only who, not what, matters here)
    for u in advertised:
        assert server.ring(u) == setup_ring[u]
        assert server.neighbours(u) == setup_ring[u] & advertised


def test_a_client_computes_its_neighbourhood_without_the_ring() -> None:
    """O(k) per client: at n = 2^20 one client's view costs no n-sized array (a few hundred KiB at most)."""
    import tracemalloc

    params = dataclasses.replace(SessionParams(1, b"m", (1, 2, 3), 1, 2, 4, nonce=NONCE), client_ids=(),
                                 members=1 << 20, members_root=bytes(32), degree=66)
    tracemalloc.start()
    near = ring_neighbours(params, 12345)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert len(near) == 66 and peak < 1 << 20
    assert near == set(session_ring(params).neighbours(12345, 66).tolist())


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
