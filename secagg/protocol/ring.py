"""The SecAgg+ ring as a keyed permutation: each client finds its own ring neighbours in O(k) work.

In SecAgg+ (Bell et al. 2020) the ``n`` clients of a session sit on a ring in a pseudorandom order and
each masks with the ``k/2`` nearest clients on either side. :class:`Ring` gives that order as a
permutation ``pi`` of the *indices* ``[0, n)`` (a client's index is its place in the sorted list of
member ids) that can be evaluated at one point, so a client computes its ``k`` neighbours in
``O(k * ROUNDS)`` time and memory, never materializing the ring; the server builds every client's
neighbour list at once with :meth:`Ring.table`.

The permutation is the swap-or-not shuffle (Hoang, Morris and Rogaway, CRYPTO 2012), in the shape of
Ethereum's consensus-spec ``compute_shuffled_index`` but with AES-128 instead of SHA-256 for the round
bits, so that one cipher call serves a whole batch. Specification (``be32`` = 4-byte big-endian):

* ``ROUNDS = 90``.
* Seed of a session: ``ring_seed = SHA-256(b"secagg/v3/ring-seed" || be32(round_index) ||
  be32(degree) || be32(n) || members_root)``, ``members_root`` being 32 bytes.
* Pivots: ``pk = HKDF-SHA256(seed, salt = b"", info = b"secagg/v3/ring-pivots")`` (32 bytes);
  ``words`` = the first ``2 * ROUNDS`` uint32 words of ``PRG(pk)`` (:func:`secagg.crypto.prg.expand`:
  the AES-128-CTR keystream under key ``pk[:16]`` and initial counter block ``pk[16:]``, read as
  little-endian words); ``pivot_r = (words[2r] + 2^32 * words[2r + 1]) mod n``, i.e. keystream bytes
  ``8r .. 8r + 7`` as a little-endian uint64, mod ``n``.
* Round bits: ``bk = HKDF-SHA256(seed, salt = b"", info = b"secagg/v3/ring-bits")[:16]``. For round
  ``r`` and position ``p``, ``C = AES-128-ECB_bk(be32(r) || be32(p >> 7) || 8 zero bytes)`` and
  ``bit(r, p) = (C[(p & 127) >> 3] >> (p & 7)) & 1``: bit ``p mod 128`` of the block, little-endian.
* Round ``r`` on ``x`` in ``[0, n)``: ``flip = (pivot_r - x) mod n``; ``position = max(x, flip)``;
  ``x <- flip`` if ``bit(r, position) == 1``. ``x`` and ``flip`` share ``position``, so each round is
  an involution of ``[0, n)``. ``pi`` (index -> ring position) applies rounds ``0, 1, ..., ROUNDS - 1``;
  ``pi^-1`` (ring position -> index) applies them in reverse order.
* Neighbours of index ``i`` for an even degree ``k < n - 1``: the indices at ring positions
  ``(pi(i) + j) mod n`` for ``j`` in ``1..k/2`` and ``-k/2..-1``. For ``k >= n - 1`` (the complete
  graph, classic SecAgg) every other index.

``ROUNDS = 90`` is the round count of Ethereum's shuffle; the statistical tests check that the ring
is well mixed at 90 and that the same checks catch a shuffle of only a few rounds.

Speed: a batch goes through each round as a fixed handful of numpy calls and one ECB call
(``update_into`` of one encryptor, reused: ECB on whole blocks keeps no state). When the batch is large
next to ``ceil(n / 128)``, the blocks a round has, the call encrypts every block of the round once and
position ``p`` reads bit ``p`` of the concatenated ciphertext (bit ``p & 7`` of byte ``p >> 3``: the
same bit as above); otherwise it encrypts one block per element. One index's ``pi`` is a scalar loop.
On one core of a small development VM, at ``n = 100,000`` and ``k = 66``: :meth:`Ring.neighbours`
about 0.7 ms, :meth:`Ring.table` about 0.13 s.
"""

from __future__ import annotations

import hashlib
import struct

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from secagg.crypto.kdf import hkdf
from secagg.crypto.prg import expand
from secagg.errors import ConfigError

ROUNDS = 90
MAX_N = 1 << 20
SEED_BYTES = 32
SEED_LABEL = b"secagg/v3/ring-seed"
PIVOTS_LABEL = b"secagg/v3/ring-pivots"
BITS_LABEL = b"secagg/v3/ring-bits"

_U32 = 1 << 32
_BLOCK_POSITIONS = 128  # positions whose bits one AES block gives
# A round encrypts all its ceil(n / 128) blocks when there are at most this many per batch element:
# still O(batch) work, and then cheaper than building one counter block per element.
_TABLE_BLOCKS_PER_ELEMENT = 4
_PACK_BLOCK = struct.Struct(">II8x").pack


def _is_int(value: object) -> bool:
    return isinstance(value, int | np.integer) and not isinstance(value, bool | np.bool_)


def ring_seed(round_index: int, degree: int, n: int, members_root: bytes) -> bytes:
    """The ring's 32-byte seed for a session: SHA-256 over :data:`SEED_LABEL`, ``be32`` of the round,
    the degree and ``n``, then ``members_root`` (the session's 32-byte commitment to its members).

    Raises :class:`ConfigError` when an integer is outside ``[0, 2^32)`` or ``members_root`` is not
    32 bytes.
    """
    fields = {"round_index": round_index, "degree": degree, "n": n}
    for name, value in fields.items():
        if not _is_int(value) or not 0 <= value < _U32:
            raise ConfigError(f"{name}: must be an integer in [0, 2^32), got {value!r}")
    if not isinstance(members_root, bytes | bytearray) or len(members_root) != SEED_BYTES:
        raise ConfigError(f"members_root: must be {SEED_BYTES} bytes")
    header = b"".join(int(v).to_bytes(4, "big") for v in fields.values())
    return hashlib.sha256(SEED_LABEL + header + bytes(members_root)).digest()


class Ring:
    """The ring order of ``n`` clients under a 32-byte ``seed`` (see the module docstring).

    Construction is ``O(ROUNDS)``: two HKDF calls, the pivots, one AES key schedule; nothing is
    ``O(n)``. A ``Ring`` reuses one cipher context, so give each thread its own.
    """

    def __init__(self, seed: bytes, n: int) -> None:
        """Raises :class:`ConfigError` unless ``seed`` is 32 bytes and ``n`` an integer in
        ``[1, 2^20]``."""
        if not isinstance(seed, bytes | bytearray) or len(seed) != SEED_BYTES:
            raise ConfigError(f"seed: must be {SEED_BYTES} bytes")
        if not _is_int(n) or not 1 <= n <= MAX_N:
            raise ConfigError(f"n: must be an integer in [1, {MAX_N}], got {n!r}")
        seed, n = bytes(seed), int(n)
        self._n = n
        words = expand(hkdf(seed, salt=b"", info=PIVOTS_LABEL), 2 * ROUNDS).tolist()
        self._pivots: tuple[int, ...] = tuple(
            (words[2 * r] | words[2 * r + 1] << 32) % n for r in range(ROUNDS))
        self._pivot_arrays = [np.array(p, dtype=np.int64) for p in self._pivots]
        key = hkdf(seed, salt=b"", info=BITS_LABEL)[:16]
        self._encryptor = Cipher(algorithms.AES(key), modes.ECB()).encryptor()
        self._blocks = -(-n // _BLOCK_POSITIONS)

    @property
    def n(self) -> int:
        """The number of clients (indices and positions are in ``[0, n)``)."""
        return self._n

    # -- the permutation ---------------------------------------------------------------------------

    def positions(self, indices: np.ndarray) -> np.ndarray:
        """``pi`` elementwise: the ring position of each index. Returns a new int64 array of the
        input's shape. Raises :class:`ConfigError` unless ``indices`` is an integer array in
        ``[0, n)``. Work: ``O(ROUNDS * size)``."""
        return self._apply(indices, "indices", range(ROUNDS))

    def indices_at(self, positions: np.ndarray) -> np.ndarray:
        """``pi^-1`` elementwise: the index at each ring position, with the contract of
        :meth:`positions`."""
        return self._apply(positions, "positions", range(ROUNDS - 1, -1, -1))

    def _apply(self, values: np.ndarray, name: str, rounds: range) -> np.ndarray:
        arr = np.asarray(values)
        if arr.dtype.kind not in "iu":
            raise ConfigError(f"{name}: must be an integer array, got dtype {arr.dtype}")
        if arr.size and (int(arr.min()) < 0 or int(arr.max()) >= self._n):
            raise ConfigError(f"{name}: must lie in [0, {self._n})")
        x = arr.astype(np.int64).ravel()  # always a copy: the rounds work in place
        if x.size:
            self._rounds(x, rounds)
        return x.reshape(arr.shape)

    def _rounds(self, x: np.ndarray, rounds: range) -> None:
        """Applies ``rounds`` in order to the contiguous int64 array ``x``, in place.

        Each round is a fixed handful of numpy calls writing into buffers allocated once, with 0-d
        array operands (numpy converts those faster than Python ints), and one ``update_into``.
        """
        m, pivots = x.size, self._pivot_arrays
        n = np.array(self._n, dtype=np.int64)
        whole = self._blocks <= _TABLE_BLOCKS_PER_ELEMENT * m
        # The round's counter blocks be32(r) || be32(b) || 0^8: every block b of the round once (then
        # the bit of position p is bit p of the little-endian bit string of the whole ciphertext), or
        # b = pos >> 7 per element (then it is bit 128 * element + (pos & 127)).
        counters = np.zeros((self._blocks if whole else m, 4), dtype=">u4")
        round_column, block_column = counters[:, 0], counters[:, 1]
        plain = counters.view(np.uint8).reshape(-1)
        cipher = bytearray(plain.size + 15)  # update_into wants block_size - 1 bytes of slack
        stream = np.frombuffer(cipher, dtype=np.uint8, count=plain.size)
        encrypt_into = self._encryptor.update_into
        flip, pos, block, bit = np.empty_like(x), np.empty_like(x), np.empty_like(x), np.empty(m, np.uint8)
        if whole:
            block_column[:] = np.arange(self._blocks)
        else:
            row = np.arange(0, _BLOCK_POSITIONS * m, _BLOCK_POSITIONS, dtype=np.int64)
            seven, low_mask = np.array(7, dtype=np.int64), np.array(_BLOCK_POSITIONS - 1, dtype=np.int64)
        for r in rounds:
            np.subtract(pivots[r], x, out=flip)
            np.remainder(flip, n, out=flip)
            np.maximum(x, flip, out=pos)
            round_column.fill(r)
            if not whole:
                np.right_shift(pos, seven, out=block)
                np.copyto(block_column, block, casting="unsafe")
                np.bitwise_and(pos, low_mask, out=pos)
                np.add(pos, row, out=pos)
            encrypt_into(plain, cipher)
            np.take(np.unpackbits(stream, bitorder="little"), pos, out=bit)
            np.copyto(x, flip, where=bit.view(np.bool_))

    def _position(self, index: int) -> int:
        """``pi(index)`` for one index, in scalar Python: 90 single-block AES calls."""
        n, x, encrypt = self._n, index, self._encryptor.update
        for r, pivot in enumerate(self._pivots):
            flip = (pivot - x) % n
            pos = x if x > flip else flip
            if encrypt(_PACK_BLOCK(r, pos >> 7))[(pos & 127) >> 3] >> (pos & 7) & 1:
                x = flip
        return x

    # -- the graph ---------------------------------------------------------------------------------

    def check_degree(self, degree: int) -> None:
        """Raises :class:`ConfigError` unless ``degree >= 1`` and either ``degree >= n - 1`` (the
        complete graph) or ``degree`` is even."""
        if not _is_int(degree) or degree < 1:
            raise ConfigError(f"degree: must be an integer >= 1, got {degree!r}")
        if degree < self._n - 1 and degree % 2:
            raise ConfigError(f"degree: must be even below n - 1 = {self._n - 1} (or >= n - 1 for the "
                              f"complete graph), got {degree}")

    def _offsets(self, degree: int) -> np.ndarray:
        half = degree // 2
        return np.concatenate((np.arange(-half, 0), np.arange(1, half + 1)))

    def neighbours(self, index: int, degree: int) -> np.ndarray:
        """The sorted int64 indices of ``index``'s neighbours in the ``degree``-regular ring graph:
        ``degree`` of them for ``degree < n - 1``, else all ``n - 1`` others. Never contains ``index``.

        Work and memory ``O(degree * ROUNDS)``, independent of ``n`` (except that the complete graph's
        answer has ``n - 1`` entries). Raises :class:`ConfigError` for a bad ``index`` or ``degree``
        (:meth:`check_degree`).
        """
        self.check_degree(degree)
        if not _is_int(index) or not 0 <= index < self._n:
            raise ConfigError(f"index: must be an integer in [0, {self._n}), got {index!r}")
        n, index = self._n, int(index)
        if degree >= n - 1:
            return np.concatenate((np.arange(index, dtype=np.int64), np.arange(index + 1, n, dtype=np.int64)))
        ring = self._offsets(degree) + self._position(index)
        ring %= n
        self._rounds(ring, range(ROUNDS - 1, -1, -1))
        ring.sort()
        return ring

    def table(self, degree: int) -> np.ndarray:
        """Every client's neighbours at once (the server's view): an int64 array of shape ``(n, degree)``
        (``(n, n - 1)`` for the complete graph) whose row ``i`` is ``neighbours(i, degree)``.

        Work ``O(n * (ROUNDS + degree log degree))``, memory ``O(n * degree)``. Raises
        :class:`ConfigError` for a bad ``degree``.
        """
        self.check_degree(degree)
        n = self._n
        if degree >= n - 1:
            # Row i is 0..n-1 without i: column j holds j, or j + 1 from column i on.
            cols = np.arange(n - 1, dtype=np.int64)
            return cols[None, :] + (cols[None, :] >= np.arange(n, dtype=np.int64)[:, None])
        half = degree // 2
        pos = np.arange(n, dtype=np.int64)
        self._rounds(pos, range(ROUNDS))
        at = np.empty(n + 2 * half, dtype=np.int64)  # at[half + p] = pi^-1(p), wrapped at both ends
        at[half + pos] = np.arange(n, dtype=np.int64)
        at[:half], at[n + half:] = at[n : n + half], at[half : 2 * half]
        out = at[pos[:, None] + (self._offsets(degree) + half)[None, :]]
        out.sort(axis=1)
        return out
