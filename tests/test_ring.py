"""Tests for secagg.protocol.ring: the swap-or-not ring permutation and the SecAgg+ neighbour lists.

The reference below re-derives the permutation from the module's written specification with hashlib
and cryptography directly (no secagg code), one index and one AES block at a time.
"""

from __future__ import annotations

import hashlib
import tracemalloc

import numpy as np
import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from hypothesis import given, settings
from hypothesis import strategies as st

from secagg.errors import ConfigError
from secagg.protocol import ring as ring_module
from secagg.protocol.ring import MAX_N, ROUNDS, Ring, ring_seed

seeds = st.binary(min_size=32, max_size=32)

# Chi-square critical value for 63 degrees of freedom (64 bins) at alpha = 1e-6: scipy.stats.chi2.ppf(
# 1 - 1e-6, 63) = 131.37. The adjacency bound +-40 around 2000 * 2/63 = 63.5 is 5.1 standard deviations
# (binomial tails 3e-9 below, 1.3e-6 above). The seeds are fixed, so either check is deterministic.
CHI2_CRIT_63_DOF = 131.4
STAT_N, STAT_SEEDS, ADJACENT_SLACK = 64, 2000, 40


def _hkdf(seed: bytes, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=b"", info=info).derive(seed)


def reference_pi(seed: bytes, n: int, rounds: int = ROUNDS):
    """pi of the spec, in plain Python: returns a function index -> ring position."""
    pk = _hkdf(seed, b"secagg/v3/ring-pivots")
    keystream = Cipher(algorithms.AES(pk[:16]), modes.CTR(pk[16:])).encryptor().update(bytes(8 * rounds))
    pivots = [int.from_bytes(keystream[8 * r : 8 * r + 8], "little") % n for r in range(rounds)]
    bk = _hkdf(seed, b"secagg/v3/ring-bits")[:16]
    ecb = Cipher(algorithms.AES(bk), modes.ECB()).encryptor()

    def bit(r: int, p: int) -> int:
        block = ecb.update(r.to_bytes(4, "big") + (p >> 7).to_bytes(4, "big") + bytes(8))
        return (block[(p & 127) >> 3] >> (p & 7)) & 1

    def pi(x: int) -> int:
        for r in range(rounds):
            flip = (pivots[r] - x) % n
            if bit(r, max(x, flip)):
                x = flip
        return x

    return pi


def reference_neighbours(seed: bytes, n: int, degree: int) -> list[list[int]]:
    """Each index's sorted neighbour list, by the spec's definition over the whole reference ring."""
    pi = reference_pi(seed, n)
    position = [pi(i) for i in range(n)]
    at = {p: i for i, p in enumerate(position)}
    if degree >= n - 1:
        return [[j for j in range(n) if j != i] for i in range(n)]
    half = degree // 2
    return [sorted(at[(position[i] + j) % n] for j in range(-half, half + 1) if j) for i in range(n)]


@st.composite
def graph_cases(draw: st.DrawFn, max_n: int = 300) -> tuple[bytes, int, int]:
    """A seed, n and a valid degree: even below n - 1, or n - 1 and above (the complete graph)."""
    n = draw(st.integers(1, max_n))
    sparse = list(range(2, n - 1, 2))
    dense = st.integers(max(n - 1, 1), n + 3)
    degree = draw(st.one_of(st.sampled_from(sparse), dense) if sparse else dense)
    return draw(seeds), n, degree


# -- the specification ------------------------------------------------------------------------------


def test_ring_seed_is_the_specified_hash() -> None:
    root = bytes(range(32))
    expected = hashlib.sha256(b"secagg/v3/ring-seed" + (7).to_bytes(4, "big") + (4).to_bytes(4, "big")
                              + (5).to_bytes(4, "big") + root).digest()
    assert ring_seed(7, 4, 5, root) == expected
    assert ring_seed(7, 4, 6, root) != expected


# pi(0..4) for n = 5 under ring_seed(7, 4, 5, bytes(range(32))): produced by reference_pi, pinned so
# that the reference and the module cannot drift together.
KNOWN_N5 = [4, 3, 1, 0, 2]


def test_known_answer_n5() -> None:
    seed = ring_seed(7, 4, 5, bytes(range(32)))
    pi = reference_pi(seed, 5)
    assert [pi(i) for i in range(5)] == KNOWN_N5
    assert Ring(seed, 5).positions(np.arange(5)).tolist() == KNOWN_N5
    assert Ring(seed, 5).indices_at(np.array(KNOWN_N5)).tolist() == list(range(5))


@settings(max_examples=25)
@given(seeds, st.integers(1, MAX_N), st.lists(st.integers(0, MAX_N - 1), min_size=1, max_size=4))
def test_positions_match_the_reference(seed: bytes, n: int, picks: list[int]) -> None:
    """Few indices at large n: the one-block-per-element path, against the plain-Python spec."""
    indices = np.array([i % n for i in picks], dtype=np.int64)
    pi = reference_pi(seed, n)
    ring = Ring(seed, n)
    assert ring.positions(indices).tolist() == [pi(int(i)) for i in indices]
    assert ring._position(int(indices[0])) == pi(int(indices[0]))


@settings(max_examples=30)
@given(graph_cases(max_n=40))
def test_neighbours_match_the_reference(case: tuple[bytes, int, int]) -> None:
    seed, n, degree = case
    expected = reference_neighbours(seed, n, degree)
    ring = Ring(seed, n)
    assert ring.table(degree).tolist() == expected
    assert [ring.neighbours(i, degree).tolist() for i in range(n)] == expected


@settings(max_examples=3)
@given(seeds, st.integers(50_000, 300_000))
def test_batch_paths_agree(seed: bytes, n: int) -> None:
    """A whole-ring batch (every block of a round encrypted once) agrees with small batches (one block
    per element) and with the scalar path."""
    ring = Ring(seed, n)
    everything = ring.positions(np.arange(n))
    sample = np.random.default_rng(int.from_bytes(seed[:8], "little")).integers(0, n, 40)
    assert (ring.positions(sample) == everything[sample]).all()
    assert (ring.indices_at(everything[sample]) == sample).all()
    assert [ring._position(int(i)) for i in sample[:3]] == everything[sample[:3]].tolist()


# -- permutation properties -------------------------------------------------------------------------


@given(seeds, st.integers(1, 2000))
def test_bijection_and_inverse(seed: bytes, n: int) -> None:
    ring = Ring(seed, n)
    x = np.arange(n)
    pos = ring.positions(x)
    assert pos.dtype == np.int64
    assert np.array_equal(np.sort(pos), x)
    assert np.array_equal(ring.indices_at(pos), x)
    assert np.array_equal(ring.positions(ring.indices_at(x)), x)


def test_shapes_and_dtypes_are_kept() -> None:
    ring = Ring(bytes(32), 100)
    grid = np.arange(12, dtype=np.uint16).reshape(3, 4)
    out = ring.positions(grid)
    assert out.shape == (3, 4) and out.dtype == np.int64
    assert np.array_equal(ring.indices_at(out), grid)
    assert ring.positions(np.array([], dtype=np.int64)).shape == (0,)


def test_different_seeds_give_different_permutations_n8() -> None:
    perms = {tuple(Ring(hashlib.sha256(bytes([s])).digest(), 8).positions(np.arange(8)).tolist())
             for s in range(16)}
    assert len(perms) == 16


@given(seeds, seeds, st.integers(16, 2000))
def test_different_seeds_give_different_permutations(a: bytes, b: bytes, n: int) -> None:
    if a == b:
        return
    x = np.arange(n)
    assert not np.array_equal(Ring(a, n).positions(x), Ring(b, n).positions(x))  # equal w.p. 1/16!


def _stats(seed_list: list[bytes]) -> tuple[float, int]:
    """(chi-square of index 0's ring position over 64 bins, how often indices 0 and 1 are adjacent)."""
    pos = np.array([Ring(s, STAT_N).positions(np.array([0, 1])) for s in seed_list])
    counts = np.bincount(pos[:, 0], minlength=STAT_N)
    expected = len(seed_list) / STAT_N
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    adjacent = int(np.isin((pos[:, 1] - pos[:, 0]) % STAT_N, (1, STAT_N - 1)).sum())
    return chi2, adjacent


STAT_SEEDS_LIST = [hashlib.sha256(b"ring-stat" + i.to_bytes(4, "big")).digest() for i in range(STAT_SEEDS)]


def _well_mixed(chi2: float, adjacent: int) -> bool:
    return chi2 < CHI2_CRIT_63_DOF and abs(adjacent - STAT_SEEDS * 2 / (STAT_N - 1)) <= ADJACENT_SLACK


def test_positions_are_well_mixed() -> None:
    chi2, adjacent = _stats(STAT_SEEDS_LIST)
    assert _well_mixed(chi2, adjacent), (chi2, adjacent)


def test_the_mixing_check_rejects_few_rounds(monkeypatch: pytest.MonkeyPatch) -> None:
    """The statistics above have teeth: with 3 rounds instead of 90, neighbours in index order stay
    ring neighbours far too often."""
    monkeypatch.setattr(ring_module, "ROUNDS", 3)
    chi2, adjacent = _stats(STAT_SEEDS_LIST)
    assert not _well_mixed(chi2, adjacent), (chi2, adjacent)


# -- the graph --------------------------------------------------------------------------------------


@settings(max_examples=30)
@given(graph_cases())
def test_neighbours_properties(case: tuple[bytes, int, int]) -> None:
    seed, n, degree = case
    ring = Ring(seed, n)
    table = ring.table(degree)
    size = degree if degree < n - 1 else n - 1
    assert table.shape == (n, size) and table.dtype == np.int64
    assert (np.diff(table, axis=1) > 0).all()  # sorted, distinct
    assert not (table == np.arange(n)[:, None]).any()  # never itself
    adjacency = np.zeros((n, n), dtype=bool)
    adjacency[np.repeat(np.arange(n), size), table.ravel()] = True
    assert (adjacency == adjacency.T).all()  # j in N(i) iff i in N(j)
    for i in {0, n // 2, n - 1}:
        row = ring.neighbours(i, degree)
        assert row.dtype == np.int64 and np.array_equal(row, table[i])


def test_neighbours_memory_does_not_grow_with_n() -> None:
    ring = Ring(bytes(range(32)), MAX_N)  # an O(n) int64 array would be 8 MiB
    tracemalloc.start()
    try:
        out = ring.neighbours(12345, 66)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert out.shape == (66,) and peak < 256 * 1024


# -- configuration errors ---------------------------------------------------------------------------


@pytest.mark.parametrize(("seed", "n", "field"), [
    (bytes(31), 10, "seed"), (bytes(33), 10, "seed"), ("x" * 32, 10, "seed"),
    (bytes(32), 0, "n"), (bytes(32), MAX_N + 1, "n"), (bytes(32), 10.0, "n"), (bytes(32), True, "n"),
])
def test_ring_rejects_bad_arguments(seed: object, n: object, field: str) -> None:
    with pytest.raises(ConfigError, match=f"^{field}:"):
        Ring(seed, n)  # type: ignore[arg-type]


@pytest.mark.parametrize(("n", "degree"), [(10, 0), (10, -2), (10, 3), (10, 7), (10, 2.0), (10, None)])
def test_bad_degrees(n: int, degree: object) -> None:
    ring = Ring(bytes(32), n)
    with pytest.raises(ConfigError, match=r"^degree:"):
        ring.neighbours(0, degree)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"^degree:"):
        ring.table(degree)  # type: ignore[arg-type]


def test_odd_degrees_are_fine_for_the_complete_graph() -> None:
    ring = Ring(bytes(32), 10)
    assert ring.neighbours(3, 9).tolist() == [0, 1, 2, 4, 5, 6, 7, 8, 9]
    assert ring.table(11).shape == (10, 9)
    assert Ring(bytes(32), 1).neighbours(0, 1).size == 0


def test_bad_indices_and_positions() -> None:
    ring = Ring(bytes(32), 10)
    for bad in (-1, 10, 1.0):
        with pytest.raises(ConfigError, match=r"^index:"):
            ring.neighbours(bad, 4)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"^indices:"):
        ring.positions(np.array([0, 10]))
    with pytest.raises(ConfigError, match=r"^positions:"):
        ring.indices_at(np.array([-1]))
    with pytest.raises(ConfigError, match=r"^indices:"):
        ring.positions(np.array([0.0]))


@pytest.mark.parametrize(("args", "field"), [
    ((0, 2, 10, bytes(31)), "members_root"), ((0, 2, 10, "r" * 32), "members_root"),
    ((-1, 2, 10, bytes(32)), "round_index"), ((1 << 32, 2, 10, bytes(32)), "round_index"),
    ((0, -2, 10, bytes(32)), "degree"), ((0, 2, 1 << 32, bytes(32)), "n"),
])
def test_ring_seed_rejects_bad_arguments(args: tuple, field: str) -> None:
    with pytest.raises(ConfigError, match=f"^{field}:"):
        ring_seed(*args)
