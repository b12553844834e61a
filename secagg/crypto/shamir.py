"""t-out-of-n Shamir secret sharing of 32-byte secrets over a 257-bit prime field.

Scheme. A secret ``s`` (32 bytes, read as a big-endian integer) becomes the constant term of a random
polynomial ``f(z) = s + a_1 z + ... + a_{t-1} z^{t-1}`` over GF(P); the share for point ``x`` is
``(x, f(x))``. Any ``t`` shares determine ``f`` and hence ``s = f(0)`` (Lagrange interpolation at 0); any
``t - 1`` shares are uniformly distributed and independent of ``s``, so they reveal nothing about it.

Field. ``P = 2**256 + 297``, the smallest prime above ``2**256`` (checked by Miller-Rabin in the tests).
P must exceed ``2**256`` so that every one of the ``2**256`` possible secrets is a distinct field element;
with a prime below ``2**256`` some secrets would wrap around and collide. Field elements are encoded as
``SHARE_BYTES = 33`` big-endian bytes.

Randomness. The coefficients ``a_1 .. a_{t-1}`` come from :func:`secrets.randbelow` (the operating
system's CSPRNG), fresh for every split; no simulation generator (Python's or NumPy's) is used.

Reconstruction uses exactly the first ``t`` shares it is given. Integrity: ``t`` points always fit some
polynomial of degree ``t - 1``, so a wrong or tampered share among exactly ``t`` cannot be detected from
the shares alone; it yields a different field element. :func:`reconstruct` rejects results outside
``[0, 2**256)``, but a wrong share set lands there only with probability ``297 / P`` (about
``2**-248``). Tampering must be caught by the protocol: authenticated share transport, checking a
reconstructed key against its public key, or checking extra shares against the interpolated polynomial.
"""

from __future__ import annotations

import functools
import math
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import islice
from operator import mul

import numpy as np

from secagg.errors import ConfigError, ProtocolError
from secagg.validation import check_int

__all__ = [
    "SECRET_BYTES",
    "SHARE_BYTES",
    "X_MAX",
    "P",
    "Share",
    "lagrange_at_zero",
    "reconstruct",
    "split",
    "split_many",
]

P: int = 2**256 + 297
"""The field modulus: the smallest prime above ``2**256``."""

SECRET_BYTES = 32
"""Length of a secret in bytes."""

SHARE_BYTES = 33
"""Length of an encoded share value (a field element, big-endian) in bytes."""

X_MAX = 2**32 - 1
"""Largest allowed evaluation point; points lie in ``[1, X_MAX]``."""

_SECRET_BOUND = 2 ** (8 * SECRET_BYTES)
_HORNER_LAZY = 8          # Horner steps between reductions mod P (each step adds <= 32 bits)
_PRODUCT_LAZY = 8         # 64-bit words multiplied in between reductions mod P
_ROW_BLOCK = 256          # rows of the pairwise-difference matrix handled at once (bounds memory)


@dataclass(frozen=True, slots=True)
class Share:
    """One share: the value ``y = f(x)`` of the sharing polynomial at point ``x``.

    ``x`` is an int in ``[1, 2**32)`` (by convention ``client_id + 1``); ``y`` is an int in ``[0, P)``.
    Construction validates both and raises :class:`ProtocolError` naming the field. ``y`` is secret
    material and is left out of ``repr``.
    """

    x: int
    y: int = field(repr=False)

    def __post_init__(self) -> None:
        if type(self.x) is int and type(self.y) is int and 1 <= self.x <= X_MAX and 0 <= self.y < P:
            return  # the common case in one line: a round builds and checks millions of shares
        check_int("Share.x", self.x, minimum=1, maximum=X_MAX, error=ProtocolError)
        if not isinstance(self.y, int) or isinstance(self.y, bool):
            raise ProtocolError(f"Share.y: must be an integer, got {type(self.y).__name__}")
        if not 0 <= self.y < P:  # the value is secret material: keep it out of the message
            raise ProtocolError("Share.y: must be in [0, P) with P = 2**256 + 297")

    def to_bytes(self) -> bytes:
        """Return ``y`` as ``SHARE_BYTES`` (33) big-endian bytes; ``x`` travels separately (holder's id)."""
        return self.y.to_bytes(SHARE_BYTES, "big")

    @classmethod
    def from_bytes(cls, x: int, data: bytes) -> Share:
        """Decode a share received for point ``x``; raise :class:`ProtocolError` if it is malformed.

        ``data`` must be exactly 33 bytes encoding ``y < P`` big-endian; ``x`` must lie in ``[1, 2**32)``.
        """
        if not isinstance(data, bytes | bytearray | memoryview):
            raise ProtocolError(f"Share.data: must be bytes, got {type(data).__name__}")
        if len(data) != SHARE_BYTES:
            raise ProtocolError(f"Share.data: must be exactly {SHARE_BYTES} bytes, got {len(data)}")
        return cls(x, int.from_bytes(data, "big"))


def _check_points(xs: Sequence[int]) -> tuple[int, ...]:
    """Return ``xs`` as a tuple after checking every point is an int in ``[1, 2**32)`` and distinct."""
    points = tuple(xs)
    if not (points and all(type(x) is int for x in points) and min(points) >= 1 and max(points) <= X_MAX):
        for i, x in enumerate(points):  # slow path: find the offending point and name it
            check_int(f"xs[{i}]", x, minimum=1, maximum=X_MAX)
    dup = _first_duplicate(points)
    if dup is not None:
        raise ConfigError(f"xs: points must be distinct, x={dup} appears more than once")
    return points


def _first_duplicate(points: tuple[int, ...]) -> int | None:
    if len(set(points)) == len(points):
        return None
    seen: set[int] = set()
    for x in points:
        if x in seen:
            return x
        seen.add(x)
    return None  # unreachable


def _check_threshold(threshold: int, n: int) -> int:
    check_int("threshold", threshold, minimum=1)
    if threshold > n:
        raise ConfigError(f"threshold: must be <= len(xs) = {n}, got {threshold}")
    return threshold


def _secret_to_int(secret: bytes, field_name: str = "secret") -> int:
    if not isinstance(secret, bytes | bytearray):
        raise ConfigError(f"{field_name}: must be bytes, got {type(secret).__name__}")
    if len(secret) != SECRET_BYTES:
        raise ConfigError(f"{field_name}: must be exactly {SECRET_BYTES} bytes, got {len(secret)}")
    return int.from_bytes(secret, "big")


def _split_int(value: int, threshold: int, xs: tuple[int, ...]) -> list[Share]:
    # Coefficients highest degree first, for Horner; the constant term is the secret.
    coeffs = [secrets.randbelow(P) for _ in range(threshold - 1)]
    coeffs.append(value)
    chunks = [coeffs[i:i + _HORNER_LAZY] for i in range(0, threshold, _HORNER_LAZY)]
    shares = []
    for x in xs:
        acc = 0
        for chunk in chunks:  # exact integer Horner steps, reduced once per chunk
            for c in chunk:
                acc = acc * x + c
            acc %= P
        shares.append(Share(x, acc))
    return shares


def split(secret: bytes, threshold: int, xs: Sequence[int]) -> list[Share]:
    """Split a 32-byte ``secret`` into shares at the points ``xs``, returned in the order of ``xs``.

    Any ``threshold`` of the shares reconstruct the secret; fewer reveal nothing (``threshold == 1``
    makes every share equal to the secret). Points must be distinct ints in ``[1, 2**32)`` and
    ``1 <= threshold <= len(xs)``; otherwise :class:`ConfigError` names the field and bound.
    """
    value = _secret_to_int(secret)
    points = _check_points(xs)
    return _split_int(value, _check_threshold(threshold, len(points)), points)


def split_many(secrets_: Sequence[bytes], threshold: int, xs: Sequence[int]) -> list[list[Share]]:
    """Split each 32-byte secret at the same points ``xs``, each with its own random polynomial.

    Returns one list of shares per secret, in input order; parameters as for :func:`split`.
    """
    values = [_secret_to_int(s, f"secrets[{i}]") for i, s in enumerate(secrets_)]
    points = _check_points(xs)
    t = _check_threshold(threshold, len(points))
    return [_split_int(v, t, points) for v in values]


def _weights(xs: tuple[int, ...]) -> list[int]:
    """Return ``w_i = x_i * prod_{j != i} (x_j - x_i) mod P`` for every i.

    The O(t^2) products use small-int arithmetic: every factor satisfies ``|x_j - x_i| <= span``, so
    ``64 // span.bit_length()`` factors multiply exactly inside one uint64 word (vectorised in numpy);
    the words are then multiplied as Python ints, reducing mod P every ``_PRODUCT_LAZY`` words.
    """
    t = len(xs)
    arr = np.array(xs, dtype=np.int64)
    per_word = 64 // max(1, (max(xs) - min(xs)).bit_length())
    width = -(-t // per_word) * per_word
    out: list[int] = []
    for start in range(0, t, _ROW_BLOCK):
        rows = arr[start:start + _ROW_BLOCK]
        m = len(rows)
        diff = arr[None, :] - rows[:, None]                     # diff[r, j] = x_j - x_{start+r}
        odd = np.count_nonzero(diff < 0, axis=1) % 2 == 1       # sign of the product
        mag = np.ones((m, width), dtype=np.uint64)              # padding factors are 1
        mag[:, :t] = np.abs(diff)
        mag[np.arange(m), np.arange(start, start + m)] = 1      # drop the j == i factor
        words = mag[:, 0::per_word].copy()
        for r in range(1, per_word):
            words *= mag[:, r::per_word]                        # exact: per_word * span_bits <= 64
        cols = words.T.astype(object)                           # Python ints from here on
        acc = np.where(odd, -rows, rows).astype(object)         # start from the signed x_i
        for c in range(cols.shape[0]):
            acc *= cols[c]
            if c % _PRODUCT_LAZY == _PRODUCT_LAZY - 1:
                acc %= P
        acc %= P
        out.extend(acc.tolist())
    return out


@functools.lru_cache(maxsize=4096)
def lagrange_at_zero(xs: tuple[int, ...]) -> tuple[int, ...]:
    """Return the Lagrange coefficients ``lambda_i`` (ints in ``[0, P)``) for interpolating at 0.

    For any polynomial ``f`` of degree ``< len(xs)``: ``sum(lambda_i * f(xs[i])) % P == f(0)``.
    ``xs`` is a tuple of distinct ints in ``[1, 2**32)`` (else :class:`ConfigError`). Results are cached
    per tuple (LRU, 4096 entries); the tuple returned is shared between callers and immutable.
    ``lambda_i = prod_j x_j / (x_i * prod_{j != i}(x_j - x_i))``: one modular inverse per x-set,
    using Montgomery's batch inversion.
    """
    if not isinstance(xs, tuple) or not xs:
        raise ConfigError("xs: must be a non-empty tuple of ints")
    _check_points(xs)
    t = len(xs)
    if t == 1:
        return (1,)
    w = _weights(xs)
    prefix = [1] * t                       # prefix[i] = w_0 * ... * w_{i-1} mod P
    acc = 1
    for i, v in enumerate(w):
        prefix[i] = acc
        acc = acc * v % P
    # N / (w_0 * ... * w_{t-1}) with N = prod x_j; every w_i is nonzero since the x's are distinct and
    # nonzero and |x_j - x_i| < P, so the inverse exists.
    inv = pow(acc, -1, P) * (math.prod(xs) % P) % P
    lam = [0] * t
    for i in range(t - 1, -1, -1):
        lam[i] = inv * prefix[i] % P
        inv = inv * w[i] % P
    if sum(lam) % P != 1:  # interpolating the constant 1 must give 1; guards the arithmetic above
        raise RuntimeError("lagrange_at_zero: internal consistency check failed")
    return tuple(lam)


def reconstruct(shares: Sequence[Share], threshold: int) -> bytes:
    """Recover the 32-byte secret from the first ``threshold`` of ``shares`` (in the order given).

    ``threshold`` must be an int >= 1 (else :class:`ConfigError`). Raises :class:`ProtocolError` if
    fewer than ``threshold`` shares are given, if the shares used repeat a point, or if the
    interpolated value is not below ``2**256`` ("shares inconsistent"). With exactly ``threshold``
    shares a wrong share goes undetected with probability about ``1 - 2**-248``: it just gives a wrong
    secret (see the module docstring).
    """
    t = check_int("threshold", threshold, minimum=1)
    if len(shares) < t:
        raise ProtocolError(f"shares: need at least threshold = {t} shares, got {len(shares)}")
    used = list(islice(shares, t))
    for i, share in enumerate(used):
        if not isinstance(share, Share):
            raise ProtocolError(f"shares[{i}]: must be a Share, got {type(share).__name__}")
    xs = tuple(share.x for share in used)
    dup = _first_duplicate(xs)
    if dup is not None:
        raise ProtocolError(f"shares: duplicate x={dup} among the first {t} shares")
    value = sum(map(mul, lagrange_at_zero(xs), (share.y for share in used))) % P
    if value >= _SECRET_BOUND:
        raise ProtocolError("shares inconsistent: interpolated secret is >= 2**256, "
                            "so at least one share is wrong or tampered")
    return value.to_bytes(SECRET_BYTES, "big")
