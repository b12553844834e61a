"""What a lying server shows one client: a ConsistencyRequest for any survivor/dropped view.

A real server shows every client the statuses under one root; a test playing a lying server builds
the root of *its* view (any sets it likes) and the honest proof for that view, exactly as a malicious
server would, so the lie is only caught where the protocol catches it.
"""

from __future__ import annotations

from collections.abc import Collection

from secagg.protocol.messages import ConsistencyRequest
from secagg.protocol.server import Server
from secagg.protocol.session import status_tree


def local_view(server: Server, u: int, survivors: Collection[int],
               dropped: Collection[int]) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """What client ``u`` is shown of a global view: on the full graph the sets as given (lies
    included), on a SecAgg+ graph their part in its ring neighbourhood (holes included: a lie about
    a client that never advertised reaches its ring neighbours)."""
    if server.params.full_graph:
        return tuple(sorted(survivors)), tuple(sorted(dropped))
    near = server.ring(u) | {u}
    return tuple(sorted(near & set(survivors))), tuple(sorted(near & set(dropped)))


def status_root(server: Server, survivors: Collection[int], dropped: Collection[int]) -> bytes:
    """The status root of a global view: what every client shown that view signs."""
    return status_tree(server.params.client_ids, set(survivors), set(dropped)).root


def consistency_request(server: Server, u: int, survivors: Collection[int],
                        dropped: Collection[int]) -> ConsistencyRequest:
    """Client ``u``'s request showing the global view (``survivors``, ``dropped``), with the valid
    proof of that view's statuses of ``u``'s directory entries."""
    ids = server.params.client_ids
    tree = status_tree(ids, set(survivors), set(dropped))
    proof = tree.multiproof([ids.index(v) for v in server.neighbours(u) | {u}])
    return ConsistencyRequest(server.session, *local_view(server, u, survivors, dropped), tree.root, proof)
