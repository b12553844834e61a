"""HKDF-SHA256 (RFC 5869) key derivation, with the protocol's domain-separation labels."""

from __future__ import annotations

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

MASK_LABEL = b"secagg/v1/pairwise-mask"
SHARE_KEY_LABEL = b"secagg/v1/share-encryption"


def hkdf(secret: bytes, *, salt: bytes, info: bytes, length: int = 32) -> bytes:
    """``length`` bytes of HKDF-SHA256 output over ``secret`` (salt and info as in RFC 5869)."""
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=salt, info=info).derive(secret)


def pair_info(label: bytes, a: int, b: int) -> bytes:
    """``label`` bound to the ordered pair (min id, max id): both ends derive the same key."""
    lo, hi = (a, b) if a < b else (b, a)
    return label + lo.to_bytes(4, "big") + hi.to_bytes(4, "big")
