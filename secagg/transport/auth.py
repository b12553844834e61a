"""Client authentication bound to the clients' long-term Ed25519 identities.

The same identity keys sign the SecAgg advertisements in malicious-server mode; here they also log
a client in. ``Hello(id)`` gets a fresh 32-byte challenge; ``Login(id, challenge, signature)`` with
a valid signature over ``LABEL || challenge || id`` (checked against the registry) gets a random
bearer token, which later calls carry in their metadata. Challenges are one-time and expire;
tokens live as long as the server process (a restarted server forgets them and clients log in
again). Over TLS the token never travels in the clear.

Files: an identity is a PKCS#8 PEM Ed25519 private key; the registry is JSON
``{"clients": {"<id>": "<hex public key>", ...}}``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from secagg.crypto.keys import PUBLIC_KEY_BYTES, SigningKey, verify_signature
from secagg.errors import ConfigError, ProtocolError
from secagg.transport.envelope import NONCE_BYTES, TOKEN_BYTES

LOGIN_LABEL = b"secagg/v1/login"
CHALLENGE_SECONDS = 30.0
MAX_CHALLENGES = 8


def login_message(nonce: bytes, client_id: int) -> bytes:
    """What a client signs to log in: the label, the server's challenge and its own id."""
    return LOGIN_LABEL + nonce + client_id.to_bytes(4, "big")


class AuthError(ProtocolError):
    """A caller could not be authenticated (unknown id, bad signature, stale challenge or token)."""


@dataclass
class Authenticator:
    """The server's login state: outstanding challenges and issued tokens (sans-I/O; ``now`` in seconds).

    Memory is bounded by the registry: at most ``MAX_CHALLENGES`` outstanding challenges (the newest;
    anyone may ask for one, so a stranger's requests cannot lock a client out by replacing its single
    challenge) and one live token per client.
    """

    registry: Mapping[int, bytes]
    challenge_seconds: float = CHALLENGE_SECONDS
    _challenges: dict[int, dict[bytes, float]] = field(default_factory=dict)
    _tokens: dict[bytes, int] = field(default_factory=dict)
    _token_of: dict[int, bytes] = field(default_factory=dict)

    def challenge(self, client_id: int, now: float) -> bytes:
        """A fresh challenge for ``client_id``; :class:`AuthError` if it is not in the registry."""
        if client_id not in self.registry:
            raise AuthError(f"client {client_id} is not in the registry")
        nonce = os.urandom(NONCE_BYTES)
        pending = self._challenges.setdefault(client_id, {})
        for old in [n for n, expiry in pending.items() if expiry < now]:
            del pending[old]
        if len(pending) >= MAX_CHALLENGES:  # anyone may ask: keep the newest few, not all
            del pending[next(iter(pending))]
        pending[nonce] = now + self.challenge_seconds
        return nonce

    def login(self, client_id: int, nonce: bytes, signature: bytes, now: float) -> bytes:
        """Check the signed challenge and return a new token (the client's previous one is revoked)."""
        expiry = self._challenges.get(client_id, {}).pop(nonce, None)  # each challenge works once
        if expiry is None:
            raise AuthError(f"client {client_id}: no such outstanding challenge (ask again)")
        if now > expiry:
            raise AuthError(f"client {client_id}: the challenge expired (ask again)")
        try:
            verify_signature(self.registry[client_id], signature, login_message(nonce, client_id),
                             signer=client_id)
        except ProtocolError as exc:  # a bad login is an authentication failure, not a protocol one
            raise AuthError(str(exc)) from None
        old = self._token_of.pop(client_id, None)
        if old is not None:
            self._tokens.pop(old, None)
        token = os.urandom(TOKEN_BYTES)
        self._tokens[token] = client_id
        self._token_of[client_id] = token
        return token

    def logged_in(self) -> int:
        """How many clients hold a live token."""
        return len(self._token_of)

    def client_of(self, token: bytes | None) -> int:
        """The client a bearer token belongs to; :class:`AuthError` if none."""
        if token is None or len(token) != TOKEN_BYTES:
            raise AuthError("missing or malformed token: log in first")
        client_id = self._tokens.get(token)
        if client_id is None:
            raise AuthError("unknown token (the server may have restarted): log in again")
        return client_id


# -- files ---------------------------------------------------------------------------------------

def save_identity(path: str | Path, key: SigningKey) -> None:
    """Write ``key`` as an unencrypted PKCS#8 PEM file readable by its owner only."""
    pem = key.private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)  # O_CREAT's mode applies to a new file only: tighten an existing one too
    with os.fdopen(fd, "wb") as f:
        f.write(pem)


def load_identity(path: str | Path) -> SigningKey:
    """Read an Ed25519 identity written by :func:`save_identity`; :class:`ConfigError` if it is not one."""
    try:
        key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"identity: {path} is not an unencrypted PEM private key ({exc})") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigError(f"identity: {path} holds a {type(key).__name__}, expected an Ed25519 key")
    return SigningKey(key, key.public_key().public_bytes_raw())


def save_registry(path: str | Path, registry: Mapping[int, bytes]) -> None:
    data = {"clients": {str(u): pk.hex() for u, pk in sorted(registry.items())}}
    Path(path).write_text(json.dumps(data, indent=2) + "\n")


def load_registry(path: str | Path) -> dict[int, bytes]:
    """Read a registry file; :class:`ConfigError` naming the bad entry."""
    try:
        data = json.loads(Path(path).read_text())
    except json.JSONDecodeError as exc:
        raise ConfigError(f"registry: {path} is not valid JSON ({exc})") from exc
    if not isinstance(data, dict) or not isinstance(data.get("clients"), dict):
        raise ConfigError(f"registry: {path} must hold {{\"clients\": {{id: hex key}}}}")
    out: dict[int, bytes] = {}
    for key, value in data["clients"].items():
        try:
            u, pk = int(key), bytes.fromhex(value)
        except (ValueError, TypeError):
            raise ConfigError(f"registry: entry {key!r} is not an integer id with a hex key") from None
        if u < 0 or len(pk) != PUBLIC_KEY_BYTES:
            raise ConfigError(f"registry: entry {key!r} needs an id >= 0 and a {PUBLIC_KEY_BYTES}-byte key")
        out[u] = pk
    if not out:
        raise ConfigError(f"registry: {path} lists no client")
    return out
