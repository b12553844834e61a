"""Who masks with whom: the Harary graph of SecAgg+ (Bell et al. 2020), full graph as a special case.

The clients are placed on a ring in the order of a pseudorandom permutation derived from the
session id (so the server, which does not control everyone's fresh keys, cannot place clients where
it likes), and each client is joined to the ``k/2`` nearest clients on either side: a ``k``-regular
graph. ``k >= m - 1`` for ``m`` clients is the complete graph, i.e. classic SecAgg (Bonawitz et al.
2017): there is one code path for both.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from secagg.crypto.kdf import GRAPH_LABEL, hkdf
from secagg.crypto.prg import expand
from secagg.errors import ConfigError


def seeded_permutation(seed: bytes, items: Sequence[int]) -> list[int]:
    """A uniformly random ordering of ``items`` determined by ``seed``: sort by 64-bit ``PRG(seed)`` keys.

    Two items share a key with probability below m^2 / 2^65 (about 2^-45 for a thousand items), the
    only departure from uniform; ties keep the input order, so the result is still deterministic.
    """
    m = len(items)
    if m < 2:
        return list(items)
    keys = expand(seed, 2 * m).view(np.uint64)
    return [items[i] for i in np.argsort(keys, kind="stable").tolist()]


def check_degree(degree: int, num_clients: int) -> None:
    """A Harary graph needs an even degree below ``n - 1``, or ``n - 1`` itself (complete graph)."""
    if not 1 <= degree <= num_clients - 1:
        raise ConfigError(f"degree: must be in [1, {num_clients - 1}] for {num_clients} clients, "
                          f"got {degree}")
    if degree != num_clients - 1 and degree % 2:
        raise ConfigError(f"degree: must be even (or n - 1 = {num_clients - 1} for the full graph), "
                          f"got {degree}")


def _ring(session_id: bytes, members: Sequence[int], degree: int) -> list[int] | None:
    """The ring order of the members, or ``None`` when the graph is complete."""
    ids = sorted(members)
    if degree >= len(ids) - 1:
        return None
    if degree % 2:
        raise ConfigError(f"degree: must be even for a sparse graph, got {degree}")
    return seeded_permutation(hkdf(session_id, salt=b"", info=GRAPH_LABEL), ids)


def neighbours_of(session_id: bytes, members: Sequence[int], degree: int, member: int) -> frozenset[int]:
    """``member``'s neighbours, the same as ``neighbours(...)[member]`` without building the graph."""
    if member not in members:
        raise ConfigError(f"member: client {member} is not among the graph's members")
    order = _ring(session_id, members, degree)
    if order is None:
        return frozenset(members) - {member}
    m, pos = len(order), order.index(member)
    return frozenset(order[(pos + j) % m] for j in range(-(degree // 2), degree // 2 + 1) if j)


def neighbours(session_id: bytes, members: Sequence[int], degree: int) -> dict[int, frozenset[int]]:
    """Each member's neighbours in the ``degree``-regular Harary graph over ``members``.

    ``members`` are the clients that advertised keys; if ``degree >= len(members) - 1`` every pair
    is joined. The ring order is :func:`seeded_permutation` of the sorted members under a seed
    derived from ``session_id``.
    """
    ring = _ring(session_id, members, degree)
    if ring is None:
        everyone = frozenset(members)
        return {u: everyone - {u} for u in everyone}
    order, m = np.array(ring), len(ring)
    half = degree // 2
    offsets = np.concatenate([np.arange(1, half + 1), -np.arange(1, half + 1)])
    ring = (np.arange(m)[:, None] + offsets[None, :]) % m
    return {int(order[i]): frozenset(int(x) for x in order[ring[i]]) for i in range(m)}
