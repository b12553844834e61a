"""Random rotations: ``y = H D x / sqrt(L)`` (Hadamard) or ``y = C D x`` (DCT), their inverses, lengths.

Hadamard (``transform="hadamard"``, what distributed DP uses): ``x`` is zero-padded to
``L = pad_length(d)`` (the next power of 2), ``D`` is a diagonal of random signs and ``H`` the L x L
Walsh-Hadamard matrix (Sylvester order), applied by the in-place fast transform: log2(L) butterfly
passes over the whole array, O(L log L), no L x L matrix. ``H / sqrt(L)`` is symmetric and orthogonal,
so the rotation preserves L2 norms and ``unrotate`` is ``D H y / sqrt(L)``.

The signs are public: every client and the server must use the same ones (the secure sum of
rotated vectors is the rotation of the sum). They come from the simulation seed tree
(:func:`secagg.seeding.numpy_rng`), never from secret randomness. Spreading a vector over all
coordinates this way makes each coordinate of a norm-``c`` vector sub-Gaussian with variance proxy
``c^2 / L``, which is what lets distributed DP pick a small modulus (Kairouz et al., ICML 2021).

DCT (``transform="dct"``): ``C`` is the orthonormal DCT-II of length ``d`` itself (``scipy.fft``,
O(d log d) for any d), so nothing is padded: a model of 4,810 coordinates sends 4,810 words where the
Hadamard sends 8,192. Its entries are bounded by ``sqrt(2 / d)`` instead of ``1 / sqrt(L)``, so with
the random signs each coordinate is sub-Gaussian with variance proxy at most ``2 c^2 / d``
(Hoeffding over the signs: ``sum_k C_jk^2 x_k^2 <= max C_jk^2 ||x||^2``): twice the spread factor
(:func:`spread`), half a bit, for up to half the words.
"""

from __future__ import annotations

import numpy as np
import scipy.fft

from secagg.errors import ConfigError, UpdateError
from secagg.seeding import numpy_rng
from secagg.validation import check_int

#: the rotations: the padded Walsh-Hadamard transform, or the unpadded orthonormal DCT-II
TRANSFORMS = ("hadamard", "dct")


def check_transform(transform: str) -> str:
    if transform not in TRANSFORMS:
        raise ConfigError(f"transform: must be one of {', '.join(TRANSFORMS)}, got {transform!r}")
    return transform


def rotated_length(d: int, transform: str = "hadamard") -> int:
    """How many coordinates the rotation of a ``d``-vector has: ``pad_length(d)``, or ``d`` (DCT)."""
    return pad_length(d) if check_transform(transform) == "hadamard" else check_int("d", d, minimum=1)


def spread(transform: str = "hadamard") -> float:
    """``L max_jk C_jk^2`` of the rotation matrix: a rotated coordinate of a norm-``c`` vector has
    variance proxy at most ``spread * c^2 / L`` over the random signs (1 for Hadamard, 2 for DCT-II)."""
    return 1.0 if check_transform(transform) == "hadamard" else 2.0


def pad_length(d: int) -> int:
    """The smallest power of 2 that is ``>= d`` (``d >= 1``)."""
    check_int("d", d, minimum=1)
    return 1 << (d - 1).bit_length()


def signs(seed: int, length: int) -> np.ndarray:
    """The public diagonal ``D``: ``length`` float64 values in {-1, +1} derived from ``seed``."""
    rng = numpy_rng(seed, "dp-rotation-signs")  # not secret: public rotation randomness
    bits = rng.integers(0, 2, size=length, dtype=np.int8)  # not secret
    return 1.0 - 2.0 * bits.astype(np.float64)


def fwht(a: np.ndarray) -> np.ndarray:
    """In place: ``a <- a H`` along the last axis (length a power of 2), unnormalized; returns ``a``."""
    n = a.shape[-1]
    if n & (n - 1):
        raise UpdateError(f"fwht: last axis must be a power of 2, got {n}")
    if not a.flags.c_contiguous:
        raise UpdateError("fwht: array must be C-contiguous (it is transformed in place)")
    lead = a.shape[:-1]
    h = 1
    while h < n:
        v = a.reshape(*lead, n // (2 * h), 2, h)
        x, y = v[..., 0, :], v[..., 1, :]
        diff = x - y
        x += y
        y[...] = diff
        h *= 2
    return a


def _as_float_matrix(x: np.ndarray, name: str) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if x.ndim not in (1, 2) or x.shape[-1] < 1:
        raise UpdateError(f"{name}: expected shape (d,) or (n, d) with d >= 1, got {x.shape}")
    return x


def rotate(x: np.ndarray, seed: int, transform: str = "hadamard") -> np.ndarray:
    """``H D pad(x) / sqrt(L)`` for ``x`` of shape (d,) or (n, d): shape (L,) or (n, L), float64; with
    ``transform="dct"``, ``C D x``: shape (d,) or (n, d)."""
    x = _as_float_matrix(x, "x")
    d = x.shape[-1]
    if check_transform(transform) == "dct":
        return scipy.fft.dct(x * signs(seed, d), type=2, norm="ortho", axis=-1)
    length = pad_length(d)
    out = np.zeros((*x.shape[:-1], length), dtype=np.float64)
    out[..., :d] = x
    out *= signs(seed, length)
    fwht(out)
    out *= 1.0 / np.sqrt(length)
    return out


def unrotate(y: np.ndarray, seed: int, d: int, transform: str = "hadamard") -> np.ndarray:
    """The inverse of :func:`rotate`: ``(D H y / sqrt(L))[..., :d]`` for ``y`` of shape (L,) or (n, L);
    with ``transform="dct"``, ``D C^T y`` for ``y`` of shape (d,) or (n, d)."""
    y = _as_float_matrix(y, "y")
    length = y.shape[-1]
    check_int("d", d, minimum=1)
    if check_transform(transform) == "dct":
        if length != d:
            raise ConfigError(f"d: rotated length {length} is not d = {d} (the DCT pads nothing)")
        return scipy.fft.idct(y, type=2, norm="ortho", axis=-1) * signs(seed, d)
    if pad_length(d) != length:
        raise ConfigError(f"d: rotated length {length} is not pad_length(d) = {pad_length(d)}")
    out = fwht(y.copy())
    out *= signs(seed, length) / np.sqrt(length)
    return out[..., :d].copy()
