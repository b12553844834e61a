"""Integer noise for differential privacy, drawn from a CSPRNG: discrete Gaussian and Skellam.

Every draw here comes from :class:`SecureRandom`, an AES-128-CTR keystream (the ``cryptography``
package) under a key from ``os.urandom``: never from ``numpy.random``/``random``.

* :func:`discrete_gaussian` is the *exact* sampler of Canonne, Kamath and Steinke (NeurIPS 2020,
  "The Discrete Gaussian for Differential Privacy", Algorithms 1-3): discrete-Laplace proposals and
  Bernoulli(exp(-gamma)) acceptance, with every probability a rational number compared against
  uniform integers (no floating point). It samples N_Z(0, s2) for the *rational* variance parameter
  ``s2 = rational_variance(sigma)`` (a close rational approximation of ``sigma**2``; exact when
  ``sigma**2`` is an integer or a :class:`~fractions.Fraction` is passed). The rejection loops run
  on whole arrays.
* :func:`skellam` draws Sk(mu, mu) = Poisson(mu) - Poisson(mu) (mean 0, variance 2 mu). Its Poisson
  sampler uses the CSPRNG's float64 uniforms (53 random bits): table inversion for small ``mu``,
  Hoermann's PTRS transformed rejection (1993) for ``mu >= 10``. Unlike the discrete Gaussian it
  is not bit-exact (it rounds as any floating-point sampler does).
* :func:`discrete_gaussian_pmf` and :func:`skellam_pmf` are the reference pmfs for tests and
  accounting.
"""

from __future__ import annotations

import math
import os
from fractions import Fraction

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from scipy.special import gammaln, ive

from secagg.errors import ConfigError
from secagg.validation import check_int, check_real

SEED_BYTES = 32
# The exact sampler compares uniform integers below this bound with exact rationals in int64.
_MAX_DENOMINATOR = 1 << 52
_SQRT_INT64 = 3_037_000_499  # isqrt(2**63 - 1): |a| above this makes a*a overflow int64
_TABLE_MU = 10.0  # Poisson: table inversion below, PTRS at and above


class SecureRandom:
    """A cryptographically secure random source: the AES-128-CTR keystream under a secret key.

    ``SecureRandom()`` keys itself from ``os.urandom(32)`` (key = first 16 bytes, initial counter
    block = last 16). ``SecureRandom(seed)`` with a 32-byte ``seed`` replays that keystream: for
    TESTS ONLY; privacy noise must use a fresh, secret key.
    """

    def __init__(self, seed: bytes | None = None) -> None:
        if seed is None:
            seed = os.urandom(SEED_BYTES)
        if not isinstance(seed, bytes | bytearray) or len(seed) != SEED_BYTES:
            raise ConfigError(f"seed: must be {SEED_BYTES} bytes or None")
        cipher = Cipher(algorithms.AES(bytes(seed[:16])), modes.CTR(bytes(seed[16:])))
        self._encryptor = cipher.encryptor()

    def uniform_bits(self, n: int) -> np.ndarray:
        """``n`` uniform 64-bit words (uint64), the next ``8 n`` bytes of the keystream."""
        check_int("n", n, minimum=0)
        data = self._encryptor.update(bytes(8 * n))
        return np.frombuffer(data, dtype="<u8").astype(np.uint64)

    def words32(self, n: int) -> np.ndarray:
        """``n`` uniform 32-bit words (as uint64), the next ``4 n`` bytes of the keystream."""
        return np.frombuffer(self._encryptor.update(bytes(4 * n)), dtype="<u4").astype(np.uint64)

    def below(self, high: np.ndarray | int, size: int | None = None) -> np.ndarray:
        """Uniform integers in ``[0, high)`` (uint64), ``high`` an array (per element) or a scalar >= 1.

        Unbiased, by rejection. ``high < 2^32``: Lemire's multiply-shift on 32-bit words,
        ``(x high) >> 32``, rejecting ``x`` when ``(x high) mod 2^32 < 2^32 mod high``. Larger: a
        64-bit word ``x`` is rejected when ``x < 2^64 mod high`` (the values left are a whole number
        of periods of ``x mod high``) and ``x mod high`` is returned.
        """
        scalar = np.ndim(high) == 0
        m = np.asarray(high, dtype=np.uint64)
        if size is not None:
            m = np.broadcast_to(m, (size,))
        m = m.reshape(-1)
        if m.size == 0:
            return np.zeros(0, dtype=np.uint64)
        top = int(m[0]) if scalar else int(m.max())
        if (int(m[0]) if scalar else int(m.min())) < 1:
            raise ConfigError("high: must be >= 1")
        if top < 1 << 32:
            cut = np.uint64((1 << 32) % top) if scalar else np.uint64(1 << 32) % m
            prod = self.words32(m.size) * (np.uint64(top) if scalar else m)
            bad = np.flatnonzero((prod & np.uint64(0xFFFFFFFF)) < cut)
            while bad.size:
                fresh = self.words32(bad.size) * (np.uint64(top) if scalar else m[bad])
                prod[bad] = fresh
                bad = bad[(fresh & np.uint64(0xFFFFFFFF)) < (cut if scalar else cut[bad])]
            return prod >> np.uint64(32)
        cut = np.uint64((1 << 64) % top) if scalar else (np.uint64(0) - m) % m  # 2^64 mod m
        x = self.uniform_bits(m.size)
        bad = np.flatnonzero(x < cut)
        while bad.size:
            fresh = self.uniform_bits(bad.size)
            x[bad] = fresh
            bad = bad[fresh < (cut if scalar else cut[bad])]
        return x % (np.uint64(top) if scalar else m)

    def integers(self, low: int, high: int, size: int) -> np.ndarray:
        """``size`` uniform integers in ``[low, high)`` (int64), unbiased (rejection sampling)."""
        check_int("size", size, minimum=0)
        if not high > low:
            raise ConfigError(f"high: must be > low={low}, got {high}")
        return (self.below(high - low, size).astype(np.int64) + np.int64(low)).astype(np.int64)

    def uniform(self, size: int) -> np.ndarray:
        """``size`` float64 uniforms in [0, 1): 53 random bits each, ``k / 2^53``."""
        return (self.uniform_bits(size) >> np.uint64(11)).astype(np.float64) * 2.0**-53

    def bernoulli(self, num: np.ndarray | int, den: np.ndarray | int, size: int | None = None
                  ) -> np.ndarray:
        """Exact Bernoulli(num / den) per element (``0 <= num <= den``, ``den >= 1``): ``U < num``
        for ``U`` uniform in ``[0, den)``."""
        num_a = np.asarray(num, dtype=np.uint64)
        if size is None:
            size = int(np.broadcast(num_a, np.asarray(den)).size)
        return self.below(int(den) if np.ndim(den) == 0 else den, size) < num_a

    def bernoulli_exp1(self, size: int) -> np.ndarray:
        """Exact Bernoulli(exp(-1)) (CKS20 Algorithm 1 with gamma = 1): ``size`` booleans."""
        k = np.full(size, 2, dtype=np.uint64)  # the first trial, Bernoulli(1 / 1), always succeeds
        live = np.arange(size)
        while live.size:
            a = self.bernoulli(1, k[live])  # Bernoulli(1 / K)
            k[live[a]] += np.uint64(1)
            live = live[a]
        return (k & np.uint64(1)).astype(bool)

    def bernoulli_exp(self, num: np.ndarray, den: int) -> np.ndarray:
        """Exact Bernoulli(exp(-num / den)) per element, ``num >= 0`` integers, ``1 <= den <= 2^52``.

        CKS20 Algorithm 2: ``floor(gamma)`` Bernoulli(exp(-1)) trials that must all succeed, then
        Algorithm 1 on the fraction ``r / den``: Bernoulli(r / (den K)) is drawn as the product of
        Bernoulli(1 / K) and Bernoulli(r / den), so every comparison stays within 64 bits.
        """
        num = np.asarray(num, dtype=np.int64).reshape(-1)
        if not 1 <= den <= _MAX_DENOMINATOR:
            raise ConfigError(f"den: must be in [1, 2^52], got {den}")
        whole, frac = np.divmod(num, np.int64(den))
        out = np.ones(num.size, dtype=bool)
        live = np.flatnonzero(whole > 0)
        level = 0
        while live.size:
            ok = self.bernoulli_exp1(live.size)
            out[live[~ok]] = False
            level += 1
            live = live[ok & (whole[live] > level)]
        # Algorithm 1 on gamma = frac / den in [0, 1): K odd at the first failure -> 1
        k = np.ones(num.size, dtype=np.uint64)
        live = np.flatnonzero(out)
        first = True
        while live.size:
            a = self.bernoulli(frac[live], den)
            if not first:  # Bernoulli(1 / K) with K = 1 is always 1
                a &= self.bernoulli(1, k[live])
            first = False
            k[live[a]] += np.uint64(1)
            live = live[a]
        return out & (k & np.uint64(1)).astype(bool)


def rational_variance(sigma: float | Fraction) -> Fraction:
    """The rational ``s2`` that :func:`discrete_gaussian` uses for ``sigma``: ``sigma**2`` itself for a
    Fraction, else the closest fraction to ``sigma**2`` whose sampler arithmetic fits in 2^52."""
    if isinstance(sigma, Fraction):
        if sigma <= 0:
            raise ConfigError(f"sigma: must be > 0, got {sigma}")
        return sigma * sigma
    s = check_real("sigma", sigma, gt=0.0)
    s2 = Fraction(s * s)
    t = math.floor(s) + 1
    # denominator 2 p q t^2 ~ 2 s2 q^2 t^2 must stay below 2^52
    q_max = math.isqrt(int(_MAX_DENOMINATOR // (2 * math.ceil(s * s) * t * t + 1)))
    if q_max < 1:
        raise ConfigError(f"sigma: must be <= about 4000 for the exact sampler, got {s:g}")
    return s2.limit_denominator(min(q_max, 10**9))


def discrete_gaussian(sigma: float | Fraction, size: int, rng: SecureRandom) -> np.ndarray:
    """``size`` exact draws of the discrete Gaussian N_Z(0, s2), ``s2 = rational_variance(sigma)``
    (int64), P[k] proportional to exp(-k^2 / (2 s2)). CKS20 Algorithm 3 with t = floor(sigma) + 1.

    ``sigma`` is a float (its square is replaced by the rational ``s2``) or a Fraction (exact);
    it must make ``2 s2 t^2`` times the denominator of ``s2`` at most 2^52 (about sigma <= 4000).
    """
    check_int("size", size, minimum=0)
    s2 = rational_variance(sigma)
    p, q = s2.numerator, s2.denominator
    t = math.floor(math.sqrt(s2)) + 1
    while (t - 1) ** 2 > s2:  # floor(sqrt) exactly, for rationals near a square
        t -= 1
    while t**2 <= s2:
        t += 1
    den_c = 2 * p * q * t * t
    if den_c > _MAX_DENOMINATOR:
        raise ConfigError(f"sigma: 2 s2 t^2 q = {den_c} exceeds 2^52; use a smaller sigma or a "
                          f"Fraction with a smaller denominator")
    out = np.empty(size, dtype=np.int64)
    filled = 0
    while filled < size:
        # acceptance is about 1 / (1 + 2 / t) >= 1/3 overall: draw a batch with some margin
        m = int((size - filled) * 1.5) + 64
        u = rng.below(t, m).astype(np.int64)
        u = u[rng.bernoulli_exp(u, t)]  # Bernoulli(exp(-U / t))
        v = np.zeros(u.size, dtype=np.int64)  # V ~ Geometric(1 - exp(-1)) on {0, 1, ...}
        live = np.arange(u.size)
        while live.size:
            a = rng.bernoulli_exp1(live.size)
            v[live[a]] += 1
            live = live[a]
        b = rng.below(2, u.size).astype(bool)
        keep = ~(b & (u == 0) & (v == 0))
        x = (u + np.int64(t) * v)[keep]  # |Z|, Z discrete Laplace with scale t
        neg = b[keep]
        # accept with Bernoulli(exp(-(|Z| - s2/t)^2 / (2 s2))) = exp(-(|Z| q t - p)^2 / (2 p q t^2))
        a_ = x * np.int64(q * t) - np.int64(p)
        ok = np.zeros(x.size, dtype=bool)
        small = np.abs(a_) <= _SQRT_INT64
        idx = np.flatnonzero(small)
        ok[idx] = rng.bernoulli_exp(a_[idx] * a_[idx], den_c)
        for i in np.flatnonzero(~small):  # gamma > 2^10: Python integers, never seen in practice
            ok[i] = _bernoulli_exp_big(int(a_[i]) ** 2, den_c, rng)
        z = np.where(neg, -x, x)[ok]
        take = min(z.size, size - filled)
        out[filled:filled + take] = z[:take]
        filled += take
    return out


def _bernoulli_exp_big(num: int, den: int, rng: SecureRandom) -> bool:
    """Bernoulli(exp(-num / den)) for a ``num`` too large for int64 (exact, one element)."""
    whole, frac = divmod(num, den)
    if whole and not rng.bernoulli_exp1(whole).all():
        return False
    return bool(rng.bernoulli_exp(np.array([frac], dtype=np.int64), den)[0])


def discrete_gaussian_pmf(sigma: float | Fraction, ks: np.ndarray) -> np.ndarray:
    """P[X = k] for X ~ N_Z(0, s2), ``s2 = rational_variance(sigma)``, at integer ``ks`` (float64)."""
    s2 = float(rational_variance(sigma))
    ks = np.asarray(ks, dtype=np.float64)
    span = math.ceil(40.0 * math.sqrt(s2)) + 10
    support = np.arange(-span, span + 1, dtype=np.float64)
    log_norm = np.log(np.sum(np.exp(-support**2 / (2.0 * s2))))
    return np.exp(-ks**2 / (2.0 * s2) - log_norm)


def discrete_gaussian_variance(sigma: float | Fraction) -> float:
    """Var[X] for X ~ N_Z(0, s2): below ``s2`` for small sigma, equal to it within 1e-12 above ~1.5."""
    span = math.ceil(40.0 * math.sqrt(float(rational_variance(sigma)))) + 10
    ks = np.arange(-span, span + 1)
    return float(np.sum(discrete_gaussian_pmf(sigma, ks) * ks.astype(np.float64) ** 2))


def _poisson(mu: float, size: int, rng: SecureRandom) -> np.ndarray:
    """``size`` Poisson(mu) draws (int64) from the CSPRNG's uniforms."""
    if size == 0:
        return np.zeros(0, dtype=np.int64)
    if mu < _TABLE_MU:
        kmax = int(mu + 40.0 * math.sqrt(mu) + 60)
        ks = np.arange(kmax + 1, dtype=np.float64)
        cdf = np.cumsum(np.exp(ks * math.log(mu) - mu - gammaln(ks + 1.0)))
        out = np.empty(size, dtype=np.int64)
        todo = np.arange(size)
        while todo.size:  # a uniform beyond the table's float sum (< 1e-15) is redrawn
            u = rng.uniform(todo.size)
            k = np.searchsorted(cdf, u, side="right")
            good = k <= kmax
            out[todo[good]] = k[good]
            todo = todo[~good]
        return out
    # PTRS (Hoermann 1993), as in numpy's random_poisson_ptrs, on CSPRNG uniforms
    slam, loglam = math.sqrt(mu), math.log(mu)
    b = 0.931 + 2.53 * slam
    a = -0.059 + 0.02483 * b
    invalpha = 1.1239 + 1.1328 / (b - 3.4)
    vr = 0.9277 - 3.6224 / (b - 2.0)
    out = np.empty(size, dtype=np.int64)
    todo = np.arange(size)
    while todo.size:
        u = rng.uniform(todo.size) - 0.5
        v = rng.uniform(todo.size)
        us = 0.5 - np.abs(u)
        k = np.floor((2.0 * a / np.maximum(us, 1e-300) + b) * u + mu + 0.43)
        fast = (us >= 0.07) & (v <= vr)
        valid = (k >= 0) & ~((us < 0.013) & (v > us))
        with np.errstate(divide="ignore"):
            lhs = np.log(v) + math.log(invalpha) - np.log(a / np.maximum(us * us, 1e-300) + b)
        rhs = -mu + k * loglam - gammaln(np.maximum(k, 0.0) + 1.0)
        accept = fast | (valid & (lhs <= rhs))
        out[todo[accept]] = k[accept].astype(np.int64)
        todo = todo[~accept]
    return out


def skellam(mu: float, size: int, rng: SecureRandom) -> np.ndarray:
    """``size`` draws of Sk(mu, mu) = Poisson(mu) - Poisson(mu) (int64): mean 0, variance ``2 mu``."""
    check_real("mu", mu, gt=0.0)
    check_int("size", size, minimum=0)
    return _poisson(mu, size, rng) - _poisson(mu, size, rng)


def skellam_pmf(mu: float, ks: np.ndarray) -> np.ndarray:
    """P[X = k] for X ~ Sk(mu, mu): ``exp(-2 mu) I_|k|(2 mu)`` = ``ive(|k|, 2 mu)`` (float64)."""
    check_real("mu", mu, gt=0.0)
    return ive(np.abs(np.asarray(ks, dtype=np.float64)), 2.0 * mu)
