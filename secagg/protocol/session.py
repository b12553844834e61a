"""What both ends of a session derive identically: the session id, pairwise seeds and keys, signs."""

from __future__ import annotations

import hashlib
from collections.abc import Collection, Sequence

from secagg.crypto.kdf import MASK_LABEL, SHARE_KEY_LABEL, hkdf, pair_info
from secagg.protocol.merkle import MerkleTree
from secagg.protocol.messages import SessionParams, status_leaf, status_of
from secagg.protocol.wire import encode_params

_SESSION_LABEL = b"secagg/v3/session-id"


def session_id(params: SessionParams) -> bytes:
    """SHA-256 over a label and P(params): every parameter, the members' Merkle root and count, and
    the server's fresh nonce.

    Constant size for every client, whatever n: a SecAgg+ client never sees the whole directory, so
    the id cannot hash it. The keys are bound where they are used instead: each pairwise seed and
    share key comes from the pair's own Diffie-Hellman secret, and in malicious mode every key is
    signed together with P(params); a client given another model, round or member set derives other
    seeds and keys and cannot be combined with the rest.
    """
    return hashlib.sha256(_SESSION_LABEL + encode_params(params)).digest()


def mask_seed(shared_secret: bytes, sid: bytes, u: int, v: int) -> bytes:
    """The 32-byte seed of the pairwise mask between ``u`` and ``v`` (same for both)."""
    return hkdf(shared_secret, salt=sid, info=pair_info(MASK_LABEL, u, v))


def share_key(shared_secret: bytes, sid: bytes, u: int, v: int) -> bytes:
    """The AES-256-GCM key under which ``u`` and ``v`` send each other Shamir shares."""
    return hkdf(shared_secret, salt=sid, info=pair_info(SHARE_KEY_LABEL, u, v))


def mask_sign(owner: int, peer: int) -> int:
    """``owner`` adds +PRG(s_uv) if its id is the smaller of the pair, -PRG(s_uv) otherwise."""
    return 1 if owner < peer else -1


def share_point(client_id: int) -> int:
    """The Shamir evaluation point of the share a client holds: distinct and non-zero."""
    return client_id + 1


_ADVERTISE_LABEL = b"secagg/v2/advertise"
_CONSISTENCY_LABEL = b"secagg/v3/consistency"
_COMMITMENT_LABEL = b"secagg/v2/self-mask-seed-commitment"


def seed_commitment(params: SessionParams, client_id: int, seed: bytes) -> bytes:
    """A client's commitment to its self-mask seed b_u: SHA-256 over a label, the session parameters
    (nonce included), its id and b_u. Binding (collision resistance), and hiding because b_u is 32
    fresh random bytes; the server checks the b_u it rebuilds from shares against it, so a wrong
    share can never turn into a wrong sum."""
    return hashlib.sha256(_COMMITMENT_LABEL + encode_params(params) + client_id.to_bytes(4, "big")
                          + seed).digest()


def advertisement_message(params: SessionParams, client_id: int, enc_key: bytes, mask_key: bytes,
                          commitment: bytes = b"") -> bytes:
    """What a client signs in malicious mode: its keys and seed commitment bound to this session's
    parameters.

    The parameters include the round, the model version and the server's fresh nonce, so an
    advertisement replayed from another session, or made for another model (Pasquini et al. 2022),
    fails verification everywhere.
    """
    return (_ADVERTISE_LABEL + encode_params(params) + client_id.to_bytes(4, "big") + enc_key + mask_key
            + commitment)


def status_tree(client_ids: Sequence[int], survivors: Collection[int], dropped: Collection[int],
                excluded: Collection[int] = ()) -> MerkleTree:
    """The Merkle tree over every member's :func:`~secagg.protocol.messages.status_leaf`, in member
    order: survived (in ``survivors``), dropped (in ``dropped``), excluded by the share check (in
    ``excluded``), or none of these."""
    return MerkleTree([status_leaf(u, status_of(u, survivors, dropped, excluded)) for u in client_ids])


def consistency_message(sid: bytes, status_root: bytes) -> bytes:
    """What a survivor signs in the ConsistencyCheck round: the Merkle root over every member's
    status (survived, dropped, neither), which fixes one status per client for the whole session."""
    return _CONSISTENCY_LABEL + sid + status_root
