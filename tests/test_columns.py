"""Column-blocked kernels: exact agreement with the unblocked computation, any block size or thread count."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from fractions import Fraction

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from secagg.aggregation import columns
from secagg.aggregation.bulyan import closest_to_median_mean
from secagg.aggregation.columns import centred_gram, column_blocks, row_mean, sorted_column_reduce
from secagg.aggregation.median import median_of_sorted


@contextlib.contextmanager
def tiny_blocks() -> Iterator[None]:
    """Blocks of a few columns, so small test stacks are split across many blocks and threads."""
    saved = columns.MIN_BLOCK, columns.BLOCKS_PER_WORKER, torch.get_num_threads()
    columns.MIN_BLOCK, columns.BLOCKS_PER_WORKER = 1, 3
    torch.set_num_threads(3)
    try:
        yield
    finally:
        columns.MIN_BLOCK, columns.BLOCKS_PER_WORKER = saved[:2]
        torch.set_num_threads(saved[2])


@given(st.integers(1, 500), st.integers(0, 10**7), st.integers(1, 64))
def test_blocks_tile_the_columns(n, d, workers):
    blocks = column_blocks(n, d, workers)
    assert [j for b in blocks for j in range(b.start, b.stop)] == list(range(d))
    assert all(b.stop > b.start for b in blocks)
    assert all((b.stop - b.start) * 8 * n <= max(columns.MAX_BLOCK_BYTES, 8 * n) for b in blocks)


stacks = st.tuples(st.integers(1, 9), st.integers(1, 40)).flatmap(
    lambda s: arrays(np.float32, s, elements=st.integers(-4, 4).map(float) | st.floats(-1e3, 1e3, width=32)))


@settings(max_examples=60, deadline=None)
@given(stacks)
def test_sorted_column_reduce_matches_one_full_sort(a):
    u = torch.from_numpy(a.copy())
    full = np.sort(a, axis=0)
    with tiny_blocks():
        first = sorted_column_reduce(u, lambda s: s[0])
        rest = sorted_column_reduce(u, lambda s: row_mean(s[1:]) if len(s) > 1 else s[0])
    np.testing.assert_array_equal(first, full[0])
    np.testing.assert_array_equal(rest, row_mean(full[1:]) if len(a) > 1 else full[0])
    with tiny_blocks():
        assert np.array_equal(sorted_column_reduce(u, lambda s: s[-1]), full[-1])
    assert torch.equal(u, torch.from_numpy(a)), "input untouched"


@settings(max_examples=60, deadline=None)
@given(stacks, st.sampled_from([torch.float32, torch.float64]))
def test_centred_gram_matches_the_direct_product(a, dtype):
    u = torch.from_numpy(a.copy()).to(dtype)
    centre = np.median(a, axis=0).astype(np.float64)
    x = u.double() - torch.from_numpy(centre)
    expected = x @ x.mT
    with tiny_blocks():
        gram = centred_gram(u, centre)
    torch.testing.assert_close(gram, expected, rtol=1e-12, atol=1e-9)
    assert torch.equal(u, torch.from_numpy(a).to(dtype)), "input untouched (float64 is not copied by .to)"


def exact_reference(s: np.ndarray, beta: int) -> np.ndarray:
    """The rule as stated, in exact rational arithmetic: per column the beta values with the smallest
    |x - med| (med: the column's median as computed in the array's dtype), ties to the smaller value;
    returned sorted so that their row_mean sums in the same order as the window's."""
    med = median_of_sorted(s)
    out = np.empty((beta, s.shape[1]), s.dtype)
    for j in range(s.shape[1]):
        m = Fraction(float(med[j]))
        ranked = sorted(range(s.shape[0]), key=lambda i: (abs(Fraction(float(s[i, j])) - m), i))
        out[:, j] = np.sort(s[ranked[:beta], j])
    return out


# values spanning ~20 binary orders of magnitude, so that float64 sums of two of them are exact
window_stacks = st.tuples(st.integers(1, 9), st.integers(1, 12)).flatmap(
    lambda s: arrays(np.float32, s, elements=st.integers(-3, 3).map(float)
                     | st.floats(2.0**-10, 2.0**10, width=32) | st.floats(-(2.0**10), -(2.0**-10), width=32)))


@settings(max_examples=200, deadline=None)
@given(window_stacks, st.data())
def test_sliding_window_keeps_the_values_closest_to_the_median(a, data):
    m = a.shape[0]
    beta = data.draw(st.integers(1, m))
    s = np.sort(a, axis=0)
    np.testing.assert_array_equal(closest_to_median_mean(s, beta), row_mean(exact_reference(s, beta)))


def test_sliding_window_uses_real_distances_not_rounded_ones():
    # median 0.5: in float32 |-2^-52 - 0.5| rounds to 0.5 = |0 - 0.5| = |1 - 0.5|; really 0 is closer
    s = np.array([[-(2.0**-52)], [0.0], [1.0], [1.0]], dtype=np.float32)
    assert closest_to_median_mean(s, 1)[0] == 0.0


def test_sliding_window_tie_prefers_the_smaller_value():
    s = np.array([[0.0], [1.0], [2.0]], dtype=np.float32)  # median 1; 0 and 2 tie at distance 1
    assert closest_to_median_mean(s, 2)[0] == 0.5


def _median_in_child(queue) -> None:  # runs in a forked child
    u = torch.arange(40.0).reshape(4, 10)
    with tiny_blocks():
        queue.put(sorted_column_reduce(u, lambda s: s[1]).tolist())


def test_a_forked_child_gets_its_own_pool():
    import multiprocessing as mp

    with tiny_blocks():
        sorted_column_reduce(torch.ones(3, 8), lambda s: s[0])  # the parent's pool exists now
    ctx = mp.get_context("fork")
    queue = ctx.Queue()
    child = ctx.Process(target=_median_in_child, args=(queue,))
    child.start()
    child.join(timeout=60)
    assert child.exitcode == 0, "the child hung or failed using the parent's (threadless) pool"
    assert queue.get(timeout=5) == list(range(10, 20))
