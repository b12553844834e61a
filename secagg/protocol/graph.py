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
    """Fisher-Yates shuffle of ``items`` driven by ``PRG(seed)``, with rejection sampling (unbiased)."""
    out = list(items)
    m = len(out)
    if m < 2:
        return out
    words = expand(seed, 4 * m + 64)  # rejection needs < 2 words per draw on average; refill below
    pos = 0
    counter = 1
    for i in range(m - 1, 0, -1):
        bound = i + 1
        limit = (1 << 32) - ((1 << 32) % bound)  # reject the biased top range
        while True:
            if pos == words.size:
                words = expand(hkdf(seed, salt=b"", info=b"refill" + counter.to_bytes(4, "big")),
                               4 * m + 64)
                pos, counter = 0, counter + 1
            w = int(words[pos])
            pos += 1
            if w < limit:
                break
        j = w % bound
        out[i], out[j] = out[j], out[i]
    return out


def check_degree(degree: int, num_clients: int) -> None:
    """A Harary graph needs an even degree below ``n - 1``, or ``n - 1`` itself (complete graph)."""
    if not 1 <= degree <= num_clients - 1:
        raise ConfigError(f"degree: must be in [1, {num_clients - 1}] for {num_clients} clients, "
                          f"got {degree}")
    if degree != num_clients - 1 and degree % 2:
        raise ConfigError(f"degree: must be even (or n - 1 = {num_clients - 1} for the full graph), "
                          f"got {degree}")


def neighbours(session_id: bytes, members: Sequence[int], degree: int) -> dict[int, frozenset[int]]:
    """Each member's neighbours in the ``degree``-regular Harary graph over ``members``.

    ``members`` are the clients that advertised keys; if ``degree >= len(members) - 1`` every pair
    is joined. The ring order is :func:`seeded_permutation` of the sorted members under a seed
    derived from ``session_id``.
    """
    ids = sorted(members)
    m = len(ids)
    if degree >= m - 1:
        everyone = frozenset(ids)
        return {u: everyone - {u} for u in ids}
    if degree % 2:
        raise ConfigError(f"degree: must be even for a sparse graph, got {degree}")
    order = np.array(seeded_permutation(hkdf(session_id, salt=b"", info=GRAPH_LABEL), ids))
    half = degree // 2
    offsets = np.concatenate([np.arange(1, half + 1), -np.arange(1, half + 1)])
    ring = (np.arange(m)[:, None] + offsets[None, :]) % m
    return {int(order[i]): frozenset(int(x) for x in order[ring[i]]) for i in range(m)}
