"""Who masks with whom: the Harary graph of SecAgg+ (Bell et al. 2020), full graph as a special case.

The ``n`` invited clients, sorted by id, are the leaves of a Merkle tree whose root is in Setup
(:mod:`secagg.protocol.merkle`). Client ``i`` of that list sits at ring position ``pi(i)``, ``pi`` the
swap-or-not permutation of :mod:`secagg.protocol.ring` seeded by the round, the degree, ``n`` and the
root; it is joined to the ``k/2`` clients at the ring positions on either side: a ``k``-regular
graph. ``k = n - 1`` is the complete graph, i.e. classic SecAgg (Bonawitz et al. 2017): there is
one code path for both. A client computes its own ``k`` neighbours' list indices in O(k) work; the
server checks and proves that the ids it seats there are the members at those indices.

**Why the graph cannot be ground.** The placement is a function of Setup data alone (round, degree,
n and the members' root), fixed before any key is seen and the same for every client (a client checks
its own membership proof against the root, and in malicious mode every neighbour's). Nothing the
server decides later moves it:

* *Advertisements, dropouts, refusals.* A client that does not advertise keys (or is left out of a
  directory, or drops) is a **hole**: its ring neighbours lose it and gain nobody. A client's live
  neighbours are always a subset of its Setup-time ring neighbours, so the colluders among them are
  at most the colluders among those ``k`` ring neighbours. The effect of ``m`` dropouts on a client's
  neighbourhood is bounded by removal: no one new ever enters it.
* *Directory contents.* In malicious mode each directory comes with a Merkle multiproof that its ids
  are the members at the computed indices, and every entry is signed by its owner over P(params):
  the server cannot seat a colluder at an honest member's place.
* *The invited set and the round* are the only inputs the server chooses, and it must choose them
  before the seed exists (the seed hashes the root of the set). Each choice gives a fresh, uniformly
  random placement (swap-or-not over a SHA-256-derived seed); a server that grinds over invited sets
  offline gets one independent try per set, each costing a Merkle root and ``k`` permutation
  evaluations, and succeeds per try with at most the finder's bound, 2^-40 per client and session.

Security level: 2^-40 per client and session for an invited set fixed without looking at the
placement, times the number of invited sets a grinding server evaluates offline (each one a fresh
placement: there is no shortcut from one set's placement to another's).
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from secagg.errors import ConfigError
from secagg.protocol.ring import Ring, ring_seed


class _Members(Protocol):
    round: int
    degree: int
    members: int
    members_root: bytes
    full_graph: bool


def check_degree(degree: int, num_clients: int) -> None:
    """A Harary graph needs an even degree below ``n - 1``, or ``n - 1`` itself (complete graph)."""
    if not 1 <= degree <= num_clients - 1:
        raise ConfigError(f"degree: must be in [1, {num_clients - 1}] for {num_clients} clients, "
                          f"got {degree}")
    if degree != num_clients - 1 and degree % 2:
        raise ConfigError(f"degree: must be even (or n - 1 = {num_clients - 1} for the full graph), "
                          f"got {degree}")


def session_ring(params: _Members) -> Ring:
    """The session's ring: fixed by Setup data alone (round, degree, n, the members' Merkle root)."""
    return Ring(ring_seed(params.round, params.degree, params.members, params.members_root), params.members)


def ring_neighbours(params: _Members, index: int) -> frozenset[int]:
    """The list indices of member ``index``'s ring neighbours: O(k) work, no ring built."""
    if params.full_graph:
        return frozenset(range(params.members)) - {index}
    return frozenset(session_ring(params).neighbours(index, params.degree).tolist())


def neighbour_table(params: _Members) -> np.ndarray:
    """Every member's ring neighbours' indices, shape ``(n, k)`` (the server's view; SecAgg+ only)."""
    if params.full_graph:
        raise ConfigError("degree: the full graph has no neighbour table (every member is a neighbour)")
    return session_ring(params).table(params.degree)
