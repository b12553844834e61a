"""Who masks with whom: the Harary graph of SecAgg+ (Bell et al. 2020), full graph as a special case.

The *invited* clients are placed on a ring in the order of a pseudorandom permutation seeded by
:func:`graph_seed`: the round, the degree and the invited ids, all fixed in Setup before any key is
seen. Each client is joined to the ``k/2`` nearest invited clients on either side: a ``k``-regular
graph. ``k >= m - 1`` for ``m`` clients is the complete graph, i.e. classic SecAgg (Bonawitz et al.
2017): there is one code path for both.

Why the ring is fixed before the keys (and not by the advertised keys, as before): whoever decides
which advertisements enter the directory (the server) could otherwise try directory subsets until the
ring placed its colluders around a victim (at n = 12, k = 4, t = 3 with 3 colluders, tens of tries
did). Now a dropout, real or claimed, only *removes* a node: a client's live neighbours are always a
subset of its Setup-time neighbours, so no choice of advertisements moves a colluder next to a victim.
Security level: the colluders among a client's ``k`` ring neighbours follow the hypergeometric law the
parameter finder bounds (2^-40 per session) for any invited set chosen without looking at the ring.
The seed leaves out the server's free per-session values (the nonce, the model version), so a server
that grinds can only do it over the invited set and the round number it announces, offline; each such
try multiplies its chance by one. Taking that last freedom away needs a sample and a ring the server
cannot choose (an operator-held ring key and verifiable sampling: planned, ``docs/protocol.md``).
"""

from __future__ import annotations

import hashlib
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


_SEED_LABEL = b"secagg/v2/graph-seed"


def graph_seed(round_index: int, degree: int, client_ids: Sequence[int]) -> bytes:
    """The ring's seed material of a session: SHA-256 over a label, the round, the degree and the
    invited ids (big-endian uint32 each): nothing the server picks after Setup, nor per try."""
    ids = np.asarray(sorted(client_ids), dtype=">u4").tobytes()
    return hashlib.sha256(_SEED_LABEL + int(round_index).to_bytes(4, "big") + int(degree).to_bytes(4, "big")
                          + ids).digest()


def check_degree(degree: int, num_clients: int) -> None:
    """A Harary graph needs an even degree below ``n - 1``, or ``n - 1`` itself (complete graph)."""
    if not 1 <= degree <= num_clients - 1:
        raise ConfigError(f"degree: must be in [1, {num_clients - 1}] for {num_clients} clients, "
                          f"got {degree}")
    if degree != num_clients - 1 and degree % 2:
        raise ConfigError(f"degree: must be even (or n - 1 = {num_clients - 1} for the full graph), "
                          f"got {degree}")


def _ring(seed: bytes, members: Sequence[int], degree: int) -> list[int] | None:
    """The ring order of the members, or ``None`` when the graph is complete."""
    ids = sorted(members)
    if degree >= len(ids) - 1:
        return None
    if degree % 2:
        raise ConfigError(f"degree: must be even for a sparse graph, got {degree}")
    return seeded_permutation(hkdf(seed, salt=b"", info=GRAPH_LABEL), ids)


def neighbours_of(seed: bytes, members: Sequence[int], degree: int, member: int) -> frozenset[int]:
    """``member``'s neighbours, the same as ``neighbours(...)[member]`` without building the graph."""
    if member not in members:
        raise ConfigError(f"member: client {member} is not among the graph's members")
    order = _ring(seed, members, degree)
    if order is None:
        return frozenset(members) - {member}
    m, pos = len(order), order.index(member)
    return frozenset(order[(pos + j) % m] for j in range(-(degree // 2), degree // 2 + 1) if j)


def neighbours(seed: bytes, members: Sequence[int], degree: int) -> dict[int, frozenset[int]]:
    """Each member's neighbours in the ``degree``-regular Harary graph over ``members``.

    ``members`` are the invited clients; if ``degree >= len(members) - 1`` every pair is joined. The
    ring order is :func:`seeded_permutation` of the sorted members under ``HKDF(seed, info =
    GRAPH_LABEL)``, ``seed`` being :func:`graph_seed` in a session.
    """
    ring = _ring(seed, members, degree)
    if ring is None:
        everyone = frozenset(members)
        return {u: everyone - {u} for u in everyone}
    order, m = np.array(ring), len(ring)
    half = degree // 2
    offsets = np.concatenate([np.arange(1, half + 1), -np.arange(1, half + 1)])
    ring = (np.arange(m)[:, None] + offsets[None, :]) % m
    return {int(order[i]): frozenset(int(x) for x in order[ring[i]]) for i in range(m)}
