"""Pseudorandom generator for masks: AES-128-CTR keystream read as little-endian uint32 words.

``PRG(seed)`` for a 32-byte seed is the AES-128-CTR keystream under key ``seed[:16]`` with initial
counter block ``seed[16:]`` (SP 800-38A counter mode; the tests check NIST's F.5.1 vector). Word ``i``
of the mask is keystream bytes ``4i .. 4i+3``. Uniform bytes make uniform words in Z_(2^32), hence in
any Z_(2^b) after reduction.

Speed: :func:`accumulate_masks` expands every seed chunk by chunk into one preallocated buffer with
``update_into`` and adds (or subtracts) it into the output while it is still in cache. That is the
memory-bound floor's pattern: no per-seed full-length temporary.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from secagg.errors import ConfigError

SEED_BYTES = 32
_BLOCK = 16
CHUNK_WORDS = 32768  # 128 KiB of keystream per step: stays in L2 with the output slice


def _encryptor(seed: bytes):
    if not isinstance(seed, bytes | bytearray) or len(seed) != SEED_BYTES:
        raise ConfigError(f"seed: must be {SEED_BYTES} bytes")
    return Cipher(algorithms.AES(bytes(seed[:16])), modes.CTR(bytes(seed[16:]))).encryptor()


def expand(seed: bytes, length: int) -> np.ndarray:
    """``length`` uint32 words of ``PRG(seed)`` (a new array)."""
    out = np.zeros(length, dtype=np.uint32)
    accumulate_masks(out, [(seed, 1)])
    return out


def accumulate_masks(out: np.ndarray, masks: Sequence[tuple[bytes, int]],
                     chunk_words: int = CHUNK_WORDS) -> None:
    """In place: ``out += sum(sign * PRG(seed))`` mod 2^32 for each ``(seed, sign)``, sign = +1 or -1.

    ``out`` must be a C-contiguous 1-D uint32 array. Work is fused per chunk: one keystream buffer,
    reused for every seed and every chunk.
    """
    if out.dtype != np.uint32 or out.ndim != 1 or not out.flags.c_contiguous:
        raise ConfigError("out: must be a contiguous 1-D uint32 array")
    if any(sign not in (1, -1) for _, sign in masks):
        raise ConfigError("sign: must be +1 or -1")
    if not masks or out.size == 0:
        return
    contexts = [(_encryptor(seed), sign) for seed, sign in masks]
    zeros = bytes(chunk_words * 4)
    buf = bytearray(chunk_words * 4 + _BLOCK)
    words = np.frombuffer(buf, dtype=np.uint32, count=chunk_words)
    zview = memoryview(zeros)
    for start in range(0, out.size, chunk_words):
        m = min(chunk_words, out.size - start)
        dst = out[start : start + m]
        src = zview[: m * 4]
        ks = words[:m]
        for ctx, sign in contexts:
            ctx.update_into(src, buf)
            if sign > 0:
                np.add(dst, ks, out=dst)
            else:
                np.subtract(dst, ks, out=dst)
