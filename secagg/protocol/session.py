"""What both ends of a session derive identically: the session id, pairwise seeds and keys, signs."""

from __future__ import annotations

import hashlib

import numpy as np

from secagg.crypto.kdf import MASK_LABEL, SHARE_KEY_LABEL, hkdf, pair_info
from secagg.protocol.messages import KeyEntry, SessionParams
from secagg.protocol.wire import encode_params

_SESSION_LABEL = b"secagg/v1/session-id"


def session_id(params: SessionParams, directory: tuple[KeyEntry, ...]) -> bytes:
    """SHA-256 over every parameter (round, model version, ids, t, k, d, bits, malicious, corrupt,
    nonce) and every advertised key and seed commitment.

    Any difference in what two clients were told (another model, another key set) gives another id,
    hence other seeds and keys: such clients cannot be combined, and the round fails loudly.
    """
    h = hashlib.sha256(_SESSION_LABEL)
    h.update(encode_params(params))
    # three fixed-width columns (ids, encryption keys, mask keys): an unambiguous encoding
    h.update(np.asarray([e.client_id for e in directory], dtype=">u4").tobytes())
    h.update(b"".join([e.enc_key for e in directory]))
    h.update(b"".join([e.mask_key for e in directory]))
    h.update(b"".join([e.commitment for e in directory]))
    return h.digest()


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
_CONSISTENCY_LABEL = b"secagg/v1/consistency"
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


def consistency_message(sid: bytes, survivors: tuple[int, ...], dropped: tuple[int, ...]) -> bytes:
    """What a survivor signs in the ConsistencyCheck round: the exact sets it was shown."""
    s = np.asarray(survivors, dtype=">u4").tobytes()
    d = np.asarray(dropped, dtype=">u4").tobytes()
    return _CONSISTENCY_LABEL + sid + len(s).to_bytes(4, "big") + s + d
