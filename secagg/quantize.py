"""Fixed-point quantization of float updates into the secure-aggregation ring Z_(2^b).

Secure aggregation adds client vectors modulo ``2**bits`` (``bits <= 32``, stored as ``uint32``).
A :class:`Quantizer` maps a float update into that ring and maps the unmasked modular sum back.

Fixed point in Z_(2^b)
    A coordinate ``x`` is clipped to ``[-value_range, value_range]``, scaled to ``v = x * scale`` (so
    one unit of the ring, one *quantum*, is ``1 / scale`` in float units), rounded to an integer ``q``
    and stored in two's complement: ``q mod 2**bits``. Addition in the ring is then addition of the
    integers ``q``, modulo ``2**bits``.

Centred decoding
    The server reduces the sum mod ``2**bits`` and reads residues ``>= 2**(bits-1)`` as negative
    (``r - 2**bits``), i.e. it picks the representative in ``[-2**(bits-1), 2**(bits-1) - 1]``, and
    divides by ``scale``. This recovers the true integer sum exactly as long as its magnitude is at
    most ``2**(bits-1) - 1``; beyond that it silently wraps to a wrong value with the wrong sign.

Stochastic rounding is unbiased
    ``q = floor(v) + [U < v - floor(v)]`` with ``U ~ Uniform[0, 1)`` has ``E[q] = v`` exactly, so the
    decoded sum is an unbiased estimate of the float sum of the clipped inputs, with an error below
    one quantum per client: ``|decoded - sum| < num_clients / scale`` (:meth:`Quantizer.error_bound`).
    The dither is not a key, but it must not be predictable to the server (a known ``U`` would leak
    bits of ``v`` through the rounding direction), so by default it comes from ``os.urandom``.

Capacity rule
    One client contributes at most ``|q| <= max_abs_quantized = ceil(value_range * scale)``. The centred
    decoding of a sum of ``num_clients`` such vectors plus ``headroom`` quanta declared by the
    caller (e.g. for DP noise added in the ring) is unambiguous iff
    ``num_clients * max_abs_quantized + headroom <= 2**(bits-1) - 1``. :meth:`Quantizer.check_capacity`
    enforces it and says which of ``bits``, ``scale`` or ``value_range`` to change and to what;
    :meth:`Quantizer.for_sum` picks the largest (finest) ``scale`` that satisfies it.

Why clipping is explicit and counted
    Without the clip, one large (or malicious) coordinate could exceed the capacity and wrap the whole
    sum around the ring, corrupting every client's contribution to that coordinate without any error.
    Clipping bounds each contribution, which is what makes the capacity rule a guarantee; it also
    changes the update, so :meth:`Quantizer.encode` reports how many coordinates it clipped instead of
    doing it silently, letting callers log it or tune ``value_range``.
"""

from __future__ import annotations

import decimal
import math
import os
import sys
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from secagg.errors import ConfigError, UpdateError
from secagg.validation import check_int, check_keys, check_real

MIN_BITS = 2
MAX_BITS = 32


def _largest_factor(a: float, target: int) -> float:
    """Largest finite float ``s >= 0`` with ``fl(a * s) <= target`` (``a > 0``, ``target >= 0``).

    Float multiplication is monotone in ``s``, so this is the exact threshold of the capacity rule
    ``ceil(fl(value_range * scale)) <= target`` solved for ``scale`` (or for ``value_range``, with
    ``a = scale``).
    """
    s = target / a
    if not math.isfinite(s):
        s = sys.float_info.max
    while s > 0.0 and a * s > target:
        s = math.nextafter(s, 0.0)
    while True:
        up = math.nextafter(s, math.inf)
        if not math.isfinite(up) or a * up > target:
            return s
        s = up


def _round_down_str(value: float, passes: Any) -> str:
    """``value`` rounded down to 6 significant digits, for a message; exact repr if that fails."""
    with decimal.localcontext(decimal.Context(prec=6, rounding=decimal.ROUND_FLOOR)) as ctx:
        short = float(ctx.plus(decimal.Decimal(value)))
    if short > 0.0 and passes(short):
        return f"{short:.6g}"
    return repr(value)


@dataclass(frozen=True)
class Quantizer:
    """Fixed-point codec between float vectors and the ring Z_(2^bits) (see the module docstring).

    ``value_range``: inputs are clipped to ``[-value_range, value_range]`` (float units, > 0).
    ``scale``: quanta per float unit, ``q = x * scale`` (> 0). ``bits``: the ring is Z_(2^bits),
    ``2 <= bits <= 32``.
    """

    value_range: float
    scale: float
    bits: int = 32

    def __post_init__(self) -> None:
        object.__setattr__(self, "value_range", check_real("value_range", self.value_range, gt=0.0))
        object.__setattr__(self, "scale", check_real("scale", self.scale, gt=0.0))
        check_int("bits", self.bits, minimum=MIN_BITS, maximum=MAX_BITS)
        product = self.value_range * self.scale
        if not math.isfinite(product) or product == 0.0:
            raise ConfigError(f"value_range * scale: must be a finite number > 0, got "
                              f"{self.value_range!r} * {self.scale!r} = {product!r}")

    @property
    def modulus(self) -> int:
        """Size of the ring, ``2**bits``."""
        return 1 << self.bits

    @property
    def max_abs_quantized(self) -> int:
        """``ceil(value_range * scale)``: the largest ``|q|`` one client can contribute, in quanta."""
        return math.ceil(self.value_range * self.scale)

    def error_bound(self, num_clients: int) -> float:
        """Worst-case ``|decoded sum - float sum of the clipped inputs|`` in float units.

        Each client's stochastic rounding is off by less than one quantum, so this is
        ``num_clients / scale`` (in exact arithmetic; float64 adds relative errors near 1e-16).
        """
        check_int("num_clients", num_clients, minimum=1)
        return num_clients / self.scale

    def check_capacity(self, num_clients: int, headroom: int = 0) -> None:
        """Raise :class:`ConfigError` unless the centred decoding of the sum is unambiguous.

        The rule is ``num_clients * max_abs_quantized + headroom <= 2**(bits-1) - 1``; ``headroom``
        is extra magnitude (in quanta) the caller adds to the sum, e.g. DP noise. The error names the
        concrete ``bits``, ``scale`` and ``value_range`` (and ``headroom``/``num_clients``) that would pass.
        """
        check_int("num_clients", num_clients, minimum=1)
        check_int("headroom", headroom, minimum=0)
        limit = (1 << (self.bits - 1)) - 1
        need = num_clients * self.max_abs_quantized + headroom
        if need <= limit:
            return
        fixes: list[str] = []
        notes: list[str] = []
        min_bits = max(MIN_BITS, 1 + need.bit_length())  # smallest b with need <= 2**(b-1) - 1
        if min_bits <= MAX_BITS:
            fixes.append(f"raise bits to >= {min_bits}")
        else:
            notes.append(f"no bits <= {MAX_BITS} is enough (it would take {min_bits})")
        per_client = (limit - headroom) // num_clients  # largest admissible max_abs_quantized
        if per_client >= 1:
            scale = _largest_factor(self.value_range, per_client)
            value_range = _largest_factor(self.scale, per_client)
            fixes.append("lower scale to <= " + _round_down_str(
                scale, lambda s: self.value_range * s <= per_client))
            fixes.append("lower value_range to <= " + _round_down_str(
                value_range, lambda c: c * self.scale <= per_client))
        else:
            notes.append(f"no scale or value_range is enough ({num_clients} clients * 1 quantum + "
                         f"headroom {headroom} > {limit})")
        spare = limit - num_clients * self.max_abs_quantized
        if headroom > 0 and spare >= 0:
            fixes.append(f"lower headroom to <= {spare}")
        max_clients = (limit - headroom) // self.max_abs_quantized
        if max_clients >= 1:
            fixes.append(f"lower num_clients to <= {max_clients}")
        raise ConfigError(
            f"bits={self.bits} cannot hold the sum of {num_clients} clients at "
            f"value_range={self.value_range!r}, "
            f"scale={self.scale!r}: {num_clients} * {self.max_abs_quantized} + {headroom} > {limit} "
            f"(= 2**{self.bits - 1} - 1); " + ", or ".join(fixes) + "".join(f"; {n}" for n in notes))

    @classmethod
    def for_sum(cls, value_range: float, num_clients: int, bits: int = 32, headroom: int = 0) -> Quantizer:
        """The quantizer with the largest ``scale`` (finest resolution) whose sum of ``num_clients``
        vectors plus ``headroom`` quanta passes :meth:`check_capacity`; :class:`ConfigError` if none.
        """
        value_range = check_real("value_range", value_range, gt=0.0)
        check_int("num_clients", num_clients, minimum=1)
        check_int("bits", bits, minimum=MIN_BITS, maximum=MAX_BITS)
        check_int("headroom", headroom, minimum=0)
        limit = (1 << (bits - 1)) - 1
        per_client = (limit - headroom) // num_clients
        if per_client < 1:
            min_bits = max(MIN_BITS, 1 + (num_clients + headroom).bit_length())
            raise ConfigError(
                f"bits={bits} cannot hold the sum of {num_clients} clients at any scale: even one "
                f"quantum per client gives {num_clients} * 1 + {headroom} > {limit} "
                f"(= 2**{bits - 1} - 1); raise bits to >= {min_bits}, or lower num_clients or headroom")
        scale = _largest_factor(value_range, per_client)
        if not scale > 0.0:
            raise ConfigError(f"scale: no scale > 0 fits value_range={value_range!r} into "
                              f"{per_client} quanta")
        return cls(value_range=value_range, scale=scale, bits=bits)

    def encode(self, x: np.ndarray | torch.Tensor, *,
               rng: np.random.Generator | None = None) -> tuple[np.ndarray, int]:  # not secret: dither
        """Quantize a 1-D float vector into the ring; return ``(q, num_clipped)``.

        ``q`` is ``uint32`` with entries in ``[0, 2**bits)`` (two's complement of the rounded
        ``clip(x) * scale``); ``num_clipped`` counts coordinates with ``|x| > value_range``. Computes in
        float64. ``rng`` supplies the rounding dither (pass one for reproducibility; by default a fresh
        generator seeded from ``os.urandom``). Raises :class:`UpdateError` for a non-1-D or non-real
        input or a NaN/Inf (naming the first bad index), :class:`ConfigError` if one client alone
        exceeds the capacity of the ring.
        """
        self.check_capacity(1)
        values = _as_float64_vector(x)
        bad = np.flatnonzero(~np.isfinite(values))
        if bad.size:
            i = int(bad[0])
            raise UpdateError(f"x[{i}]: must be finite, got {float(values[i])!r} at index {i} "
                              f"({bad.size} non-finite value(s) in total)")
        if rng is None:
            seed = int.from_bytes(os.urandom(16), "little")  # not secret: unbiased-rounding dither
            rng = np.random.default_rng(seed)  # not secret: unbiased-rounding dither
        elif not isinstance(rng, np.random.Generator):  # not secret: dither
            raise ConfigError(f"rng: expected a numpy Generator or None, got {type(rng).__name__}")
        num_clipped = int(np.count_nonzero(np.abs(values) > self.value_range))
        v = np.clip(values, -self.value_range, self.value_range) * self.scale
        low = np.floor(v)
        q = low + (rng.random(v.shape) < (v - low))
        mask = np.int64(self.modulus - 1)
        return (q.astype(np.int64) & mask).astype(np.uint32), num_clipped

    def decode_sum(self, total: np.ndarray, num_clients: int) -> np.ndarray:
        """Decode the modular sum of ``num_clients`` encoded vectors into a float64 vector.

        ``total`` is a 1-D ``uint32`` (or ``uint64``) array; it is reduced mod ``2**bits``, centred
        (residues ``>= 2**(bits-1)`` become negative) and divided by ``scale``. ``num_clients`` is
        only used to :meth:`check_capacity` (:class:`ConfigError` if the sum could have wrapped).
        """
        self.check_capacity(num_clients)
        if not isinstance(total, np.ndarray):
            raise UpdateError(f"total: expected a numpy array, got {type(total).__name__}")
        if total.dtype not in (np.dtype(np.uint32), np.dtype(np.uint64)):
            raise UpdateError(f"total: dtype must be uint32 or uint64, got {total.dtype}")
        if total.ndim != 1:
            raise UpdateError(f"total: must be 1-D, got shape {tuple(total.shape)}")
        residue = (total.astype(np.uint64) & np.uint64(self.modulus - 1)).astype(np.int64)
        centred = np.where(residue >= (1 << (self.bits - 1)), residue - self.modulus, residue)
        return centred.astype(np.float64) / self.scale

    def decode(self, q: np.ndarray) -> np.ndarray:
        """Decode one encoded vector (``decode_sum`` with one client)."""
        return self.decode_sum(q, 1)

    def to_dict(self) -> dict[str, Any]:
        return {"value_range": self.value_range, "scale": self.scale, "bits": self.bits}

    @classmethod
    def from_dict(cls, data: Any) -> Quantizer:
        """Rebuild from :meth:`to_dict` output (the old key ``clip`` still reads as ``value_range``);
        unknown, missing or doubled keys raise :class:`ConfigError`."""
        check_keys("quantizer", data, ("value_range", "clip", "scale", "bits"))
        data = dict(data)
        if "clip" in data:
            if "value_range" in data:
                raise ConfigError("quantizer: 'clip' is the old name of 'value_range': give one of them")
            data["value_range"] = data.pop("clip")
        missing = [k for k in ("value_range", "scale") if k not in data]
        if missing:
            raise ConfigError(f"quantizer: missing field(s) {', '.join(missing)}")
        return cls(**data)

    @property
    def clip(self) -> float:
        """The old name of :attr:`value_range` (a per-coordinate range, not an L2 clip norm)."""
        return self.value_range


def _as_float64_vector(x: Any) -> np.ndarray:
    """``x`` (numpy array or torch tensor of real numbers, 1-D) as a float64 numpy array."""
    if isinstance(x, torch.Tensor):
        if x.is_complex() or x.dtype == torch.bool:
            raise UpdateError(f"x: dtype must be real floating or integer, got {x.dtype}")
        arr = x.detach().to(device="cpu", dtype=torch.float64).numpy()
    elif isinstance(x, np.ndarray):
        if x.dtype.kind not in "fiu":
            raise UpdateError(f"x: dtype must be real floating or integer, got {x.dtype}")
        arr = x.astype(np.float64, copy=False)
    else:
        raise UpdateError(f"x: expected a numpy array or torch tensor, got {type(x).__name__}")
    if arr.ndim != 1:
        raise UpdateError(f"x: must be 1-D, got shape {tuple(arr.shape)}")
    return arr
