"""Authenticated encryption of Shamir shares between two clients (AES-256-GCM).

The key is derived from the clients' X25519 secret with HKDF, bound to the session id and the
ordered pair of ids. The associated data binds each ciphertext to (session, sender, recipient), so a
share cannot be replayed into another session or forwarded to another client: decryption fails.
A fresh random 96-bit nonce is prepended to every ciphertext.
"""

from __future__ import annotations

import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from secagg.errors import ProtocolError

NONCE_BYTES = 12
TAG_BYTES = 16
OVERHEAD = NONCE_BYTES + TAG_BYTES


def associated_data(session_id: bytes, sender: int, recipient: int) -> bytes:
    return b"secagg/v1/share" + session_id + sender.to_bytes(4, "big") + recipient.to_bytes(4, "big")


def seal(key: bytes, plaintext: bytes, ad: bytes) -> bytes:
    """``nonce || AES-GCM(key, nonce, plaintext, ad)``."""
    nonce = os.urandom(NONCE_BYTES)
    return nonce + AESGCM(key).encrypt(nonce, plaintext, ad)


def open_sealed(key: bytes, ciphertext: bytes, ad: bytes, *, sender: int) -> bytes:
    """Decrypt :func:`seal` output; :class:`ProtocolError` if it was tampered with or misrouted."""
    if len(ciphertext) < OVERHEAD:
        raise ProtocolError(f"share ciphertext from client {sender}: too short")
    try:
        return AESGCM(key).decrypt(ciphertext[:NONCE_BYTES], ciphertext[NONCE_BYTES:], ad)
    except InvalidTag as exc:
        raise ProtocolError(f"share ciphertext from client {sender} fails authentication "
                            f"(tampered, misrouted or from another session)") from exc
