"""Continuous Gaussian noise from the CSPRNG of :mod:`dp.noise` (never ``numpy.random``/``random``).

Box-Muller on :meth:`dp.noise.SecureRandom.uniform`'s 53-bit uniforms: for ``u1`` in (0, 1] and ``u2`` in
[0, 1), ``sqrt(-2 ln u1) (cos 2 pi u2, sin 2 pi u2)`` are two independent N(0, 1) draws. Floating-point
Gaussian samplers leak through their low-order bits in theory (Mironov 2012); at 53-bit resolution
this is the standard practice of DP libraries (Opacus, TF Privacy) and is documented as such.
"""

from __future__ import annotations

import math

import numpy as np

from dp.noise import SecureRandom
from secagg.validation import check_int, check_real

__all__ = ["gaussian"]


def gaussian(std: float, size: int, rng: SecureRandom | None = None) -> np.ndarray:
    """``size`` independent draws of N(0, std^2) as float64, ``std >= 0`` (0 gives zeros).

    ``rng``: the CSPRNG to draw from; ``None`` (what privacy noise must use) keys a fresh
    :class:`~dp.noise.SecureRandom` from ``os.urandom``. A seeded ``rng`` is for tests only.
    """
    std = check_real("std", std, ge=0.0)
    check_int("size", size, minimum=0)
    if rng is None:
        rng = SecureRandom()
    pairs = (size + 1) // 2
    u = rng.uniform(2 * pairs)
    radius = np.sqrt(-2.0 * np.log1p(-u[:pairs]))  # 1 - u in (0, 1]: log is finite
    angle = 2.0 * math.pi * u[pairs:]
    z = np.concatenate([radius * np.cos(angle), radius * np.sin(angle)])[:size]
    return std * z
