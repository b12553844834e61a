"""Continuous Gaussian noise from the CSPRNG of :mod:`dp.noise` (never ``numpy.random``/``random``).

:func:`secagg.crypto.normal.box_muller` on :meth:`dp.noise.SecureRandom.uniform`'s 53-bit uniforms
(see that module for the transform and its floating-point caveat, Mironov 2012).
"""

from __future__ import annotations

import numpy as np

from dp.noise import SecureRandom
from secagg.crypto.normal import box_muller
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
    return std * box_muller(rng.uniform(2 * ((size + 1) // 2)), size)
