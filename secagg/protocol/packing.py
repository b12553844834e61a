"""Masked words on the wire at the ring's width: ``bits`` bits a word, not 32.

A session sums words of ``Z_(2^bits)``; sending each in a uint32 wastes ``32 - bits`` bits of every
coordinate, which is most of a client's upload at small ``bits``. The packed form is the words'
little-endian bit stream: word ``i`` occupies bits ``i * bits .. (i + 1) * bits - 1`` (bit ``j`` of
the stream is bit ``j mod 8`` of byte ``j // 8``), ``ceil(count * bits / 8)`` bytes in all, and the
unused high bits of the last byte are 0. With ``bits = 32`` (or 16, or 8) that is exactly the
little-endian uint32 (uint16, uint8) array, so 32-bit sessions keep their old bytes.

Decoding is strict, since the bytes come from a peer: a length other than ``packed_length(count,
bits)`` or a set padding bit is a :class:`~secagg.errors.RemoteProtocolError` (a canonical encoding:
one byte string per word vector), and every decoded word is below ``2^bits`` by construction.

Speed: 8, 16 and 32 bits are plain array views; any other width packs 8 words into exactly ``bits``
bytes, OR-ing each word's 8-byte window (the word shifted to its bit offset) into place: 8 vector
passes over the vector, whatever the width.
"""

from __future__ import annotations

import numpy as np

from secagg.errors import ConfigError, RemoteProtocolError

__all__ = ["pack_words", "packed_length", "unpack_words"]

MIN_BITS, MAX_BITS = 1, 32


def _check_bits(bits: int) -> int:
    if not isinstance(bits, int) or isinstance(bits, bool) or not MIN_BITS <= bits <= MAX_BITS:
        raise ConfigError(f"bits: must be an int in [{MIN_BITS}, {MAX_BITS}], got {bits!r}")
    return bits


def packed_length(count: int, bits: int) -> int:
    """Bytes of ``count`` words of ``bits`` bits packed: ``ceil(count * bits / 8)``."""
    return (count * _check_bits(bits) + 7) // 8


def pack_words(words: np.ndarray, bits: int) -> bytes:
    """The packed bytes of ``words`` (1-D, unsigned, every value below ``2^bits``; the caller reduced
    them: a larger value is a :class:`ConfigError`, not silently cut)."""
    _check_bits(bits)
    w = np.ascontiguousarray(words)
    if w.ndim != 1 or w.dtype.kind != "u":
        raise ConfigError(f"words: expected a 1-D unsigned array, got {w.dtype} of shape {w.shape}")
    if bits < 64 and w.size and int(w.max()) >> bits:
        raise ConfigError(f"words: a value is >= 2^{bits}; reduce mod 2^{bits} before packing")
    n = w.size
    if bits in (8, 16, 32):
        return w.astype(f"<u{bits // 8}", copy=False).tobytes()
    groups = -(-n // 8)  # 8 words are exactly `bits` bytes
    grid = np.zeros((groups, 8), dtype=np.uint64)
    grid.reshape(-1)[:n] = w
    out = np.zeros((groups, bits + 8), dtype=np.uint8)  # 8 spare bytes: each word's 8-byte window fits
    for k in range(8):
        start, shift = divmod(k * bits, 8)
        window = (grid[:, k] << np.uint64(shift)).astype("<u8", copy=False).view(np.uint8).reshape(groups, 8)
        out[:, start:start + 8] |= window
    return out[:, :bits].tobytes()[:packed_length(n, bits)]


def unpack_words(data: bytes, bits: int, count: int, *, what: str = "vector") -> np.ndarray:
    """The ``count`` words (uint32, a new writable array) packed in ``data``; a wrong length or a set
    padding bit is a :class:`RemoteProtocolError` naming ``what``."""
    _check_bits(bits)
    expected = packed_length(count, bits)
    if len(data) != expected:
        raise RemoteProtocolError(f"{what}: {len(data)} bytes, expected {expected} ({count} words of "
                                  f"{bits} bits)")
    if count * bits % 8 and data[-1] >> (count * bits % 8):
        raise RemoteProtocolError(f"{what}: padding bits after the last word are not zero")
    raw = np.frombuffer(data, dtype=np.uint8)
    if bits in (8, 16, 32):
        return raw.view(f"<u{bits // 8}").astype(np.uint32)
    groups = -(-count // 8)
    padded = np.zeros((groups, bits + 8), dtype=np.uint8)  # 8 spare bytes, as in pack_words
    flat = np.zeros(groups * bits, dtype=np.uint8)
    flat[:len(raw)] = raw
    padded[:, :bits] = flat.reshape(groups, bits)
    mask = np.uint64((1 << bits) - 1)
    out = np.empty((groups, 8), dtype=np.uint32)
    for k in range(8):
        start, shift = divmod(k * bits, 8)
        window = np.ascontiguousarray(padded[:, start:start + 8]).view("<u8").reshape(groups)
        out[:, k] = (window >> np.uint64(shift)) & mask
    return out.reshape(-1)[:count].copy()
