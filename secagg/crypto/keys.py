"""X25519 key agreement and Ed25519 signatures, from ``cryptography``.

Every session uses fresh X25519 key pairs: one to derive the keys that encrypt Shamir shares, a
separate one to derive pairwise mask seeds (so revealing a dropped client's mask key never exposes
the share-encryption key). Peer public keys of small order are refused: the shared secret would be
all zeros, independent of our private key (RFC 7748, section 6.1).
"""

from __future__ import annotations

from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from secagg.errors import ProtocolError

PUBLIC_KEY_BYTES = 32
PRIVATE_KEY_BYTES = 32
SIGNATURE_BYTES = 64


@dataclass(frozen=True, repr=False)
class DHKeyPair:
    """A fresh X25519 key pair; ``repr`` never shows the private key."""

    private: X25519PrivateKey
    public: bytes

    @classmethod
    def generate(cls) -> DHKeyPair:
        sk = X25519PrivateKey.generate()
        return cls(sk, sk.public_key().public_bytes_raw())

    @classmethod
    def from_private_bytes(cls, raw: bytes) -> DHKeyPair:
        """Rebuild a key pair from its 32 private bytes (the server does this for dropped clients)."""
        if len(raw) != PRIVATE_KEY_BYTES:
            raise ProtocolError(f"private key: expected {PRIVATE_KEY_BYTES} bytes, got {len(raw)}")
        sk = X25519PrivateKey.from_private_bytes(raw)
        return cls(sk, sk.public_key().public_bytes_raw())

    def private_bytes(self) -> bytes:
        return self.private.private_bytes_raw()

    def agree(self, peer_public: bytes, *, peer: int | str = "peer") -> bytes:
        """The X25519 shared secret with ``peer_public``; :class:`ProtocolError` for a bad key."""
        if not isinstance(peer_public, bytes) or len(peer_public) != PUBLIC_KEY_BYTES:
            raise ProtocolError(f"public key of client {peer}: expected {PUBLIC_KEY_BYTES} bytes")
        try:
            return self.private.exchange(X25519PublicKey.from_public_bytes(peer_public))
        except ValueError as exc:  # OpenSSL refuses an all-zero shared secret
            raise ProtocolError(f"public key of client {peer} has small order (rejected)") from exc

    def __repr__(self) -> str:
        return f"DHKeyPair(public={self.public.hex()[:16]}...)"


_PROBE = DHKeyPair.generate()


def is_low_order(public: bytes) -> bool:
    """True if an X25519 public key would give an all-zero shared secret with any private key."""
    try:
        _PROBE.agree(public)
    except ProtocolError:
        return True
    return False


@dataclass(frozen=True, repr=False)
class SigningKey:
    """An Ed25519 identity key (long-term, per client; used by the malicious-server mode)."""

    private: Ed25519PrivateKey
    public: bytes

    @classmethod
    def generate(cls) -> SigningKey:
        sk = Ed25519PrivateKey.generate()
        return cls(sk, sk.public_key().public_bytes_raw())

    def sign(self, message: bytes) -> bytes:
        return self.private.sign(message)

    def __repr__(self) -> str:
        return f"SigningKey(public={self.public.hex()[:16]}...)"


def verify_signature(public: bytes, signature: bytes, message: bytes, *, signer: int | str) -> None:
    """Raise :class:`ProtocolError` unless ``signature`` is ``signer``'s Ed25519 signature."""
    try:
        Ed25519PublicKey.from_public_bytes(public).verify(signature, message)
    except (InvalidSignature, ValueError) as exc:
        raise ProtocolError(f"signature of client {signer} does not verify") from exc
