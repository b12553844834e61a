"""Normal draws from a cryptographically secure keystream (never from a simulation generator).

Box-Muller on 53-bit uniforms: for ``u1`` in [0, 1) and ``u2`` in [0, 1),
``sqrt(-2 ln(1 - u1)) (cos 2 pi u2, sin 2 pi u2)`` are two independent N(0, 1) draws (``1 - u1`` is in
(0, 1], so the log is finite). Floating-point Gaussian samplers leak through their low-order bits in
theory (Mironov 2012); at 53-bit resolution this is the standard practice of DP libraries (Opacus,
TF Privacy). :mod:`dp.gaussian` draws its privacy noise through :func:`box_muller`.
"""

from __future__ import annotations

import math
import os

import numpy as np

from secagg.crypto.prg import SEED_BYTES, expand
from secagg.validation import check_int

__all__ = ["box_muller", "secret_normal", "secret_uniforms"]


def box_muller(uniforms: np.ndarray, size: int) -> np.ndarray:
    """``size`` independent N(0, 1) draws (float64) from ``2 ceil(size / 2)`` uniforms in [0, 1)."""
    check_int("size", size, minimum=0)
    pairs = (size + 1) // 2
    u = np.asarray(uniforms, dtype=np.float64)
    if u.shape != (2 * pairs,):
        raise ValueError(f"uniforms: expected {2 * pairs} values for {size} normals, got shape {u.shape}")
    radius = np.sqrt(-2.0 * np.log1p(-u[:pairs]))
    angle = 2.0 * math.pi * u[pairs:]
    return np.concatenate([radius * np.cos(angle), radius * np.sin(angle)])[:size]


def secret_uniforms(size: int) -> np.ndarray:
    """``size`` float64 uniforms in [0, 1), 53 random bits each (``k / 2^53``), from the AES-128-CTR
    keystream of :mod:`secagg.crypto.prg` under a fresh key from ``os.urandom``."""
    check_int("size", size, minimum=0)
    words = expand(os.urandom(SEED_BYTES), 2 * size).view("<u8")
    return (words >> np.uint64(11)).astype(np.float64) * 2.0**-53


def secret_normal(size: int) -> np.ndarray:
    """``size`` independent N(0, 1) draws (float64) that no one can predict: :func:`box_muller` on
    :func:`secret_uniforms`."""
    check_int("size", size, minimum=0)
    return box_muller(secret_uniforms(2 * ((size + 1) // 2)), size)
