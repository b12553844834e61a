"""Compression that composes with a modular sum: rotate, clip, scale, round at random, wrap.

The plain :class:`~secagg.quantize.Quantizer` gives every coordinate the worst case's room (``n``
clients each at ``value_range``), so at 8 or 12 bits its quantum is coarse. Here each client clips
its whole vector to an L2 norm instead and spreads it over all coordinates first, as the distributed
discrete Gaussian does (Kairouz, Liu, Steinke, ICML 2021; Suresh et al., ICML 2017 for the rotation):

Client (:meth:`RotatedQuantizer.encode`)
    clip ``x`` (d,) to L2 norm ``clip_norm`` (C; counted, never silent); rotate with the round's public
    signs (:mod:`secagg.rotation`: zero-padded to ``L = pad_length(d)`` for the Hadamard transform,
    ``L = d`` for the DCT); divide
    by ``gamma``; round each coordinate to floor or ceil at random, up with probability equal to the
    fraction (unbiased: the decoded sum is an unbiased estimate of the clipped sum); reduce mod
    ``2^bits`` (*modular clipping*: a single client's coordinate may wrap, only the sum has to fit).
Server (:meth:`RotatedQuantizer.decode_sum`)
    the centred representative of the modular sum in ``[-2^(bits-1), 2^(bits-1))``, times gamma,
    unrotated, the first ``d`` coordinates.

Choosing gamma so that the sum does not wrap. The survivors' rotated sum is the rotation of a vector
of norm at most ``n C`` (n = ``num_clients``, the planned count), so with random signs each of its
coordinates is sub-Gaussian with variance proxy ``s n^2 C^2 / (L gamma^2)`` in quanta (Hoeffding;
``s`` the transform's :func:`~secagg.rotation.spread`: 1 for Hadamard, 2 for the DCT), and the
rounding adds ``n`` bounded mean-zero terms of proxy 1/4 each. With ``T = 2^(bits-1) - 1`` and
``M^2 = T^2 / (2 ln(2 L / wrap_probability))``, gamma is the smallest value with
``s n^2 C^2 / (L gamma^2) + n / 4 <= M^2``:

    ``gamma = n C sqrt(s) / sqrt(L (M^2 - n / 4))``

so that, by a union bound over the L coordinates, the sum leaves the ring with probability at most
``wrap_probability`` (:meth:`RotatedQuantizer.wrap_probability_bound`). ``bits`` is too small
(:class:`ConfigError`, naming the smallest that works) when ``M^2 <= n / 4``. The bound is over the
public signs, for updates that do not depend on them: a client that knows the round's signs (they
are public) and aims its whole norm at one rotated coordinate can wrap that coordinate, which moves
the decoded sum by a vector of norm ``2^bits gamma``: a poisoning bounded by a small multiple of the
clip, no worse in kind than what its clipped update could do, and no secret is exposed by it.

Error. Each client's rounding moves its rotated vector by less than one quantum per coordinate, so
the decoded sum is off by a vector of L2 norm below ``n gamma sqrt(L)`` (:meth:`error_norm_bound`;
its expected norm is about ``gamma sqrt(n L) / 2``). The dither comes from the CSPRNG
(:func:`secagg.crypto.normal.secret_uniforms`) unless a seeded generator is passed (simulation only):
a predictable dither would tell the server which way each coordinate was rounded.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from secagg.crypto.normal import secret_uniforms
from secagg.errors import ConfigError, UpdateError
from secagg.rotation import check_transform, rotate, rotated_length, spread, unrotate
from secagg.validation import check_int, check_real

__all__ = ["DEFAULT_WRAP_PROBABILITY", "RotatedQuantizer"]

#: the default bound on the probability that a round's sum wraps (per round, over the public signs)
DEFAULT_WRAP_PROBABILITY = 1e-9


@dataclass(frozen=True)
class RotatedQuantizer:
    """Rotation + stochastic rounding + modular clipping into ``Z_(2^bits)`` for sums of ``num_clients``
    vectors of ``dim`` coordinates, each clipped to L2 norm ``clip_norm`` (float units), rotated by
    ``transform`` (:data:`secagg.rotation.TRANSFORMS`)."""

    clip_norm: float
    bits: int
    dim: int
    num_clients: int
    wrap_probability: float = DEFAULT_WRAP_PROBABILITY
    transform: str = "hadamard"

    def __post_init__(self) -> None:
        check_transform(self.transform)
        check_real("clip_norm", self.clip_norm, gt=0.0)
        check_int("bits", self.bits, minimum=2, maximum=32)
        check_int("dim", self.dim, minimum=1)
        check_int("num_clients", self.num_clients, minimum=1)
        check_real("wrap_probability", self.wrap_probability, gt=0.0, lt=1.0)
        spare = self._m2() - self.num_clients / 4.0
        if not spare > 0:
            need = next((b for b in range(self.bits + 1, 33) if _m2(b, self.length, self.wrap_probability)
                         > self.num_clients / 4.0), None)
            raise ConfigError(f"bits: {self.bits} bits cannot hold the rotated sum of {self.num_clients} "
                              f"clients with wrap probability {self.wrap_probability:g} (the rounding alone "
                              f"needs more); " + (f"raise bits to >= {need}" if need else
                                                  "no width up to 32 bits is enough: lower the clients "
                                                  "per session"))

    @property
    def length(self) -> int:
        """``L``: the rotated length (Hadamard: ``dim`` padded to a power of 2; DCT: ``dim``), the words
        one client sends."""
        return rotated_length(self.dim, self.transform)

    @property
    def modulus(self) -> int:
        return 1 << self.bits

    def _m2(self) -> float:
        return _m2(self.bits, self.length, self.wrap_probability)

    @property
    def gamma(self) -> float:
        """One quantum, in float units of the rotated vector (see the module docstring)."""
        n = self.num_clients
        return n * self.clip_norm * math.sqrt(spread(self.transform)) / math.sqrt(
            self.length * (self._m2() - n / 4.0))

    def encode(self, x: np.ndarray, rotation_seed: int, rng: np.random.Generator | None = None  # not secret
               ) -> tuple[np.ndarray, bool]:
        """One client's words (uint32, ``length`` of them, each below ``2^bits``) for ``x`` (d,), and
        whether ``x`` was clipped. ``rng``: a seeded dither for reproducible simulation only; ``None``
        draws it from the CSPRNG. :class:`UpdateError` for a wrong shape or a NaN/Inf."""
        v = np.asarray(x, dtype=np.float64)
        if v.shape != (self.dim,):
            raise UpdateError(f"update: expected shape ({self.dim},), got {v.shape}")
        if not np.isfinite(v).all():
            raise UpdateError("update: must be finite")
        norm = float(np.linalg.norm(v))
        clipped = norm > self.clip_norm
        if clipped:
            v = v * (self.clip_norm / norm)
        y = rotate(v, rotation_seed, self.transform) / self.gamma
        low = np.floor(y)
        u = secret_uniforms(y.size) if rng is None else rng.random(y.size)  # not secret when seeded
        q = (low + (u < (y - low))).astype(np.int64)
        return (q & np.int64(self.modulus - 1)).astype(np.uint32), clipped

    def decode_sum(self, total: np.ndarray, rotation_seed: int) -> np.ndarray:
        """The float sum (``dim``,) from the modular sum (``length`` words) of the survivors' words."""
        t = np.asarray(total)
        if t.shape != (self.length,) or t.dtype not in (np.dtype(np.uint32), np.dtype(np.uint64)):
            raise UpdateError(f"total: expected {self.length} uint32/uint64 words, got {t.dtype} {t.shape}")
        residue = (t.astype(np.uint64) & np.uint64(self.modulus - 1)).astype(np.int64)
        centred = np.where(residue >= self.modulus // 2, residue - self.modulus, residue)
        return unrotate(centred.astype(np.float64) * self.gamma, rotation_seed, self.dim, self.transform)

    def error_norm_bound(self, survivors: int) -> float:
        """Worst-case L2 norm of ``decoded sum - clipped sum`` (float units) for ``survivors`` clients."""
        check_int("survivors", survivors, minimum=0)
        return survivors * self.gamma * math.sqrt(self.length)

    def wrap_probability_bound(self, survivors: int) -> float:
        """The Hoeffding + union bound on any coordinate of the survivors' sum leaving the ring (at most
        ``wrap_probability`` for the planned count or fewer)."""
        check_int("survivors", survivors, minimum=0)
        if survivors == 0:
            return 0.0
        t = (1 << (self.bits - 1)) - 1
        var = spread(self.transform) * (survivors * self.clip_norm / self.gamma) ** 2 / self.length \
            + survivors / 4.0
        return min(1.0, 2.0 * self.length * math.exp(-t * t / (2.0 * var)))


def _m2(bits: int, length: int, wrap_probability: float) -> float:
    t = (1 << (bits - 1)) - 1
    return t * t / (2.0 * math.log(2.0 * length / wrap_probability))
