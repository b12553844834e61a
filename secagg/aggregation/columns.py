"""Column-blocked, multi-threaded kernels over an (n, d) update stack.

Coordinate-wise rules (median, trimmed mean, Meamed, Bulyan), the Gram matrix behind pairwise
distances and the one-pass distance and combination kernels all treat the d columns independently, so
the stack is cut into contiguous column blocks and the blocks are processed by a thread pool: numpy's
sort and torch's matrix products release the GIL, so the blocks run in parallel. Inside a block the
work goes chunk by chunk through per-thread scratch buffers, so the temporaries (a transposed sorted
chunk, a centred float32 or float64 chunk) stay in cache and are never a second copy of the stack.
Results do not depend on the number of threads: each column is computed by the same code whatever
block it falls in, and block results are combined in block order.

The worker count is ``torch.get_num_threads()`` (so ``torch.set_num_threads`` and
``OMP_NUM_THREADS`` bound it, as for every other kernel of the library). The workers themselves run
torch single-threaded (see :func:`_single_threaded_worker`).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
import torch

T = TypeVar("T")

MIN_BLOCK = 4096  # columns; below this the per-block overhead dominates
BLOCKS_PER_WORKER = 4  # some slack so that an uneven block does not idle the other workers
MAX_BLOCK_BYTES = 64 << 20  # cap on one block's float64 temporaries


def column_blocks(n: int, d: int, workers: int) -> list[slice]:
    """Contiguous column slices covering ``range(d)``, sized for ``workers`` threads."""
    width = max(MIN_BLOCK, -(-d // (workers * BLOCKS_PER_WORKER)))
    width = min(width, max(1, MAX_BLOCK_BYTES // (8 * max(n, 1))))
    return [slice(j, min(j + width, d)) for j in range(0, d, width)]


_pool: tuple[int, int, ThreadPoolExecutor] | None = None  # (pid, workers, pool)
_pool_lock = threading.Lock()


def _single_threaded_worker() -> None:
    """Pool-thread initializer: torch (and MKL) kernels called from this thread run on it alone.

    The pool already keeps every core busy; an intra-op parallel region started from each worker
    would oversubscribe the cores, and a small matrix product split over threads waits at a barrier
    for whichever thread the OS descheduled (tens of times slower on a loaded machine). torch keeps
    the intra-op thread count per thread, so this leaves the caller's setting alone."""
    torch.set_num_threads(1)


def _executor(workers: int) -> ThreadPoolExecutor:
    """One long-lived pool per process and worker count: fresh threads on every call would each
    get their own malloc arena, and the freed blocks would stay resident. A forked child gets a
    new pool (the parent's threads do not exist there)."""
    global _pool
    with _pool_lock:
        if _pool is None or _pool[:2] != (os.getpid(), workers):
            if _pool is not None and _pool[0] == os.getpid():
                _pool[2].shutdown(wait=False)
            pool = ThreadPoolExecutor(workers, thread_name_prefix="secagg-columns",
                                      initializer=_single_threaded_worker)
            # Start every worker now (one barrier task each), then restore torch's process-wide
            # default thread count, which the initializers also set: threads created later by
            # anyone else must not start single-threaded.
            barrier = threading.Barrier(workers)
            for f in [pool.submit(barrier.wait) for _ in range(workers)]:
                f.result()
            torch.set_num_threads(torch.get_num_threads())
            _pool = (os.getpid(), workers, pool)
        return _pool[2]


def map_column_blocks(fn: Callable[[slice], T], n: int, d: int) -> list[T]:
    """``[fn(block) for block in column_blocks(...)]``, run on a thread pool, in block order.

    ``fn`` must not itself call :func:`map_column_blocks` (the pool is shared, not re-entrant).
    """
    workers = max(1, torch.get_num_threads())
    blocks = column_blocks(n, d, workers)
    if workers == 1 or len(blocks) == 1:
        return [fn(b) for b in blocks]
    return list(_executor(workers).map(fn, blocks))


def work_array(u: torch.Tensor) -> np.ndarray:
    """``u`` as a numpy array in the working dtype: float32 for float32 and narrower floats (exact),
    float64 for everything else.

    A view when ``u`` already is a CPU float32/float64 tensor; ``u`` itself is never written.
    """
    work = torch.float32 if u.dtype in (torch.float32, torch.float16, torch.bfloat16) else torch.float64
    return u.detach().to(device="cpu", dtype=work).numpy()


def row_mean(rows: np.ndarray) -> np.ndarray:
    """The mean of the rows of an (m, w) array, summed strictly in row order.

    numpy picks its summation order by the array's shape and strides (pairwise for one column,
    row by row for many), so ``rows.mean(axis=0)`` could differ in the last bit between a block
    and the whole stack; this loop (vectorised across columns) does not.
    """
    acc = rows[0].copy()
    for r in rows[1:]:
        acc += r
    acc /= rows.shape[0]
    return acc


SORT_CHUNK = 2048  # columns per transposed sort: the (w, n) copy and its sort stay in L2
SCRATCH_BYTES = 8 << 20  # cap on one chunk buffer: with many clients, chunks get narrower


def chunk_width(rows: int, step: int, itemsize: int) -> int:
    """Columns per chunk: ``step``, narrowed so that a (rows, width) buffer stays under
    :data:`SCRATCH_BYTES` (at least 64 columns)."""
    return max(1, min(step, max(64, SCRATCH_BYTES // (itemsize * max(rows, 1)))))


def sorted_rows(block: np.ndarray) -> np.ndarray:
    """A (w, n) copy of the (n, w) ``block`` with each row (one coordinate's n values) sorted ascending.

    Why transpose: ``np.sort(block, axis=0)`` gathers every column element by element through a
    buffer, while numpy's SIMD sort (x86-simd-sort) runs on contiguous rows, and the chunk's transpose
    (numpy's single-threaded copy: torch's would start nested worker threads inside the pool's) costs
    less than that gather. ``block`` itself is not written.
    """
    t = np.array(block.T, order="C")  # always a copy (a 1-wide block's transpose is contiguous already)
    t.sort(axis=1)
    return t


def _sorted_rows_scratch(block: np.ndarray) -> np.ndarray:
    """:func:`sorted_rows` into the calling thread's scratch buffer (no allocation, so no page faults
    per chunk): valid only until this thread's next call."""
    n, w = block.shape
    key = ("T", n, block.dtype.str)
    bufs = getattr(_scratch, "bufs", None)
    if bufs is None:
        bufs = _scratch.bufs = {}
    buf = bufs.get(key)
    if buf is None or buf.shape[0] < w:
        buf = bufs[key] = np.empty((w, n), dtype=block.dtype)
    t = buf[:w]
    np.copyto(t, block.T)
    t.sort(axis=1)
    return t


def sorted_row_reduce(u: torch.Tensor, reduce: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """``reduce(rows)`` for each chunk of coordinates of ``u``, concatenated: a (d,) array.

    ``rows`` is a (w, n) array whose row ``j`` holds the n clients' values of one coordinate, sorted
    ascending (:func:`sorted_rows`); ``reduce`` maps it to w values, one per coordinate, each from its
    own row only (so the result does not depend on the chunking, bit for bit, nor on the clients'
    order). Chunks of :data:`SORT_CHUNK` columns (fewer with many clients: :func:`chunk_width`) run on
    the column-block thread pool.
    """
    a = work_array(u)
    n, d = a.shape
    step = chunk_width(n, SORT_CHUNK, 8)
    out = np.empty(d, dtype=a.dtype)

    def run(b: slice) -> None:
        for j in range(b.start, b.stop, step):
            c = slice(j, min(j + step, b.stop))
            out[c] = reduce(_sorted_rows_scratch(a[:, c]))  # copied out before the next chunk

    map_column_blocks(run, n, d)
    return out


def sorted_column_reduce(u: torch.Tensor, reduce: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """``reduce(np.sort(block, axis=0))`` for each column block of ``u``, concatenated: a (d,) array.

    ``reduce`` maps a column-sorted (n, w) block to w values (an order statistic, a trimmed mean...).
    Sorting makes the result independent of the row order, bit for bit. The sort runs on transposed
    chunks (:func:`sorted_rows`); ``reduce`` sees a transposed view of it. Rules that reduce along the
    client axis are faster on :func:`sorted_row_reduce`, which hands over the contiguous rows.
    """
    return sorted_row_reduce(u, lambda rows: reduce(rows.T))


def centred_gram(u: torch.Tensor, centre: np.ndarray) -> torch.Tensor:
    """The (n, n) float64 Gram matrix of ``u - centre`` (rows), accumulated in float64 by column block.

    Each block is cast to float64 and centred on its slice of ``centre`` before its product, so no
    full float64 copy of the stack exists at any time. Block products are summed in block order.
    """
    a = work_array(u)
    n, d = a.shape

    def block_gram(b: slice) -> torch.Tensor:
        x = torch.from_numpy(a[:, b]).to(torch.float64, copy=True)  # a copy even for float64: u stays
        x -= torch.from_numpy(centre[b]).to(torch.float64)
        return x @ x.mT

    gram = torch.zeros(n, n, dtype=torch.float64)
    for part in map_column_blocks(block_gram, n, d):
        gram += part
    return gram


def row_distances(u: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """(n,) float64 Euclidean distances ``||u_i - z||``, differences formed in float64 by column chunk.

    The direct form (not ``||u||^2 - 2 u.z + ||z||^2``): near convergence ``z`` sits close to the
    rows, where the expanded form cancels catastrophically. No (n, d) temporary is made: each chunk
    goes through a per-thread float64 buffer.
    """
    a = work_array(u)
    n, d = a.shape
    step = chunk_width(n, SORT_CHUNK, 8)
    zz = z.detach().to(device="cpu", dtype=torch.float64).numpy()

    def block(b: slice) -> np.ndarray:
        acc = np.zeros(n, dtype=np.float64)
        for j in range(b.start, b.stop, step):
            c = slice(j, min(j + step, b.stop))
            x = _buffer((n, c.stop - c.start), np.float64)
            np.subtract(a[:, c], zz[c], out=x, dtype=np.float64)
            np.multiply(x, x, out=x)
            acc += np.add.reduce(x, axis=1)
        return acc

    total = np.zeros(n, dtype=np.float64)
    for part in map_column_blocks(block, n, d):
        total += part
    return torch.from_numpy(np.sqrt(total))


def combine_rows(weights: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """(d,) float64 ``sum_i weights_i u_i``, the rows cast to float64 one column chunk at a time (into a
    per-thread buffer: no float64 copy of the stack, no page faults per chunk)."""
    a = work_array(u)
    n, d = a.shape
    step = chunk_width(n, SORT_CHUNK, 8)
    w = weights.detach().to(device="cpu", dtype=torch.float64)
    out = torch.empty(d, dtype=torch.float64)

    def run(b: slice) -> None:
        for j in range(b.start, b.stop, step):
            c = slice(j, min(j + step, b.stop))
            x = _buffer((n, c.stop - c.start), np.float64)
            np.copyto(x, a[:, c])
            torch.mv(torch.from_numpy(x).mT, w, out=out[c])

    map_column_blocks(run, n, d)
    return out


GRAM_PIECE = 256  # float32 products are summed over at most this many coordinates before float64
GRAM_CHUNK = 8192  # columns centred per step of the float32 Gram pass (a few pieces each)
CENTRE_SAMPLE = 5  # rows (evenly spaced) whose coordinate-wise median centres the float32 Gram
_UNIT32 = 2.0**-24  # float32 unit roundoff (round to nearest)
_UNIT64 = 2.0**-53
_scratch = threading.local()  # per-thread reusable chunk buffers (no page faults per chunk)


def _buffer(shape: tuple[int, int], dtype: type) -> np.ndarray:
    """A scratch array of ``shape`` owned by the calling thread (reused across chunks and calls)."""
    key = (shape[0], np.dtype(dtype).str)
    bufs = getattr(_scratch, "bufs", None)
    if bufs is None:
        bufs = _scratch.bufs = {}
    buf = bufs.get(key)
    if buf is None or buf.shape[1] < shape[1]:
        buf = bufs[key] = np.empty(shape, dtype=dtype)
    return buf[:, :shape[1]]


def _median5(r: list[np.ndarray]) -> np.ndarray:
    """The coordinate-wise median of five equally long rows, by a min/max network (no sort, no
    transpose): the two middle values of the first four are ``max(min(a, b), min(c, d))`` and
    ``min(max(a, b), max(c, d))`` (in some order), and the median of five is the median of those two
    and ``e``. An input value per coordinate."""
    a, b, c, d, e = r
    x = np.maximum(np.minimum(a, b), np.minimum(c, d))
    y = np.minimum(np.maximum(a, b), np.maximum(c, d))
    lo = np.minimum(x, y)
    np.maximum(x, y, out=x)
    np.minimum(x, e, out=x)
    return np.maximum(lo, x, out=x)


def centre_rows(n: int, sample: int | None) -> np.ndarray:
    """Indices of the rows whose coordinate-wise lower median is the centre: all ``n`` rows
    (``sample=None`` or ``n <= sample``), else ``sample`` (odd) rows evenly spaced over the stack, so
    that a contiguous run of attackers (say the first f clients) contributes to the sample in
    proportion to its share of the stack."""
    if sample is None or n <= sample:
        return np.arange(n, dtype=np.intp)
    return np.unique(np.linspace(0, n - 1, sample).round().astype(np.intp))


@dataclass(frozen=True)
class CentredGram:
    """The Gram matrix of an (n, d) stack re-centred on a coordinate-wise lower median, with the centre
    itself as an extra row: ``gram`` is (n + 1, n + 1) float64 with ``gram[i, j] = x_i . x_j`` for
    ``x_i = u_i - c`` (``i < n``) and ``x_n = c``. The centre ``c`` (d,) is, per coordinate, the lower
    median of the values of the rows :func:`centre_rows` picks (an input value), in the working dtype.

    ``exact``: computed from float64 products (each a float32 or float64 input's exact product, summed
    in float64). Otherwise computed in float32 and the error is bounded:
    ``|gram[i, j] - y_i . y_j| <= rel_err * ||y_i|| ||y_j|| + abs_err`` where ``y_i`` is ``x_i`` as rounded to
    float32 (``|y_ik - x_ik| <= 2^-24 |x_ik|``); see :func:`median_centred_gram`.
    """

    gram: torch.Tensor
    centre: np.ndarray
    exact: bool
    rel_err: float
    abs_err: float


def median_centred_gram(u: torch.Tensor, *, exact: bool, sample: int | None = None) -> CentredGram:
    """One pass over ``u`` by column chunks on the thread pool: each chunk's centre (the lower median
    of the :func:`centre_rows` ``(n, sample)`` rows, by :func:`sorted_rows`), the chunk re-centred on it,
    and its contribution to the Gram matrix of the re-centred rows plus the centre row (see
    :class:`CentredGram`).

    ``exact=False`` (float32 work arrays only): the chunk is centred in float32 and its products are
    float32 matrix products over pieces of at most :data:`GRAM_PIECE` coordinates, accumulated in
    float64: about 3x cheaper than float64 products, and no float64 copy of anything but the (n, n)
    result. Error bound (any summation order the BLAS picks, FMA or not, no underflow): a dot product
    of L float32 terms is within ``gamma_L = L u / (1 - L u)`` (``u = 2^-24``) of the sum of
    ``|terms|``, which Cauchy-Schwarz bounds by the product of the pieces' norms; summing pieces in
    float64 adds at most ``2^-53`` per piece. Products that underflow (magnitudes below ``2^-126``)
    are covered by ``abs_err = d 2^-148``. A non-finite float32 result (an overflow) falls back to the
    exact computation.

    ``exact=True``: float64 products of the (exactly) float64-converted, float64-centred chunk.
    """
    a = work_array(u)
    n, d = a.shape
    if not exact and a.dtype != np.float32:
        raise ValueError("median_centred_gram: exact=False needs a float32 work array")
    centre = np.empty(d, dtype=a.dtype)
    sampled = centre_rows(n, sample)
    mid = (len(sampled) - 1) // 2
    all_rows = len(sampled) == n

    def chunk_gram(c: slice) -> torch.Tensor:
        blk = a[:, c]
        if all_rows:
            med = _sorted_rows_scratch(blk)[:, mid].copy()
        elif len(sampled) == 5:
            med = _median5([a[i, c] for i in sampled])
        else:
            med = _sorted_rows_scratch(a[sampled, c])[:, mid].copy()
        centre[c] = med
        w = c.stop - c.start
        if exact:
            x = _buffer((n + 1, w), np.float64)
            np.subtract(blk, med, out=x[:n], dtype=np.float64)  # exact for float32 inputs
            x[n] = med
            xt = torch.from_numpy(x)
            return xt @ xt.mT
        x = _buffer((n + 1, w), np.float32)
        np.subtract(blk, med, out=x[:n])
        x[n] = med
        xt = torch.from_numpy(x)
        acc = torch.zeros(n + 1, n + 1, dtype=torch.float64)
        for p in range(0, w, GRAM_PIECE):
            y = xt[:, p:p + GRAM_PIECE]
            acc += y @ y.mT
        return acc

    # chunks: L2-sized where a full sort finds the centre; larger (fewer, longer products) otherwise
    step = chunk_width(n + 1, SORT_CHUNK if all_rows or len(sampled) != 5 else GRAM_CHUNK,
                       8 if exact else 4)

    def block(b: slice) -> torch.Tensor:
        acc = torch.zeros(n + 1, n + 1, dtype=torch.float64)
        for j in range(b.start, b.stop, step):
            acc += chunk_gram(slice(j, min(j + step, b.stop)))
        return acc

    gram = torch.zeros(n + 1, n + 1, dtype=torch.float64)
    for part in map_column_blocks(block, n + 1, d):
        gram += part
    gram = 0.5 * (gram + gram.mT)  # exactly symmetric, whatever rounding the products did
    if exact:
        return CentredGram(gram, centre, True, 0.0, 0.0)
    if not bool(torch.isfinite(gram).all()):
        return median_centred_gram(u, exact=True, sample=sample)
    piece = min(GRAM_PIECE, max(d, 1))
    gamma = piece * _UNIT32 / (1.0 - piece * _UNIT32)
    pieces = -(-d // GRAM_PIECE) + 2 * -(-d // step) + 2
    return CentredGram(gram, centre, False, gamma + pieces * _UNIT64, d * 2.0**-148)


def centred_gram_rows(u: torch.Tensor, centre: np.ndarray, rows: list[int]
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact-product parts of the Gram matrix of ``u - centre``: ``(G[rows, :], diag(G))``, (r, n) and
    (n,) float64, from float64 products (the rows converted and centred in float64, by column block),
    for checking a few rows of a :class:`CentredGram` computed in float32."""
    a = work_array(u)
    n, d = a.shape
    step = chunk_width(n, SORT_CHUNK, 8)
    idx = np.asarray(rows, dtype=np.intp)
    c64 = centre.astype(np.float64)

    def block(b: slice) -> tuple[torch.Tensor, torch.Tensor]:
        rows_acc = torch.zeros(len(idx), n, dtype=torch.float64)
        diag_acc = np.zeros(n, dtype=np.float64)
        for j in range(b.start, b.stop, step):
            c = slice(j, min(j + step, b.stop))
            xt = torch.from_numpy(_buffer((n, c.stop - c.start), np.float64))
            xt.copy_(torch.from_numpy(a[:, c]))  # exact widening (torch's cast beats numpy's)
            xt.sub_(torch.from_numpy(c64[c]))
            diag_acc += np.einsum("ij,ij->i", xt.numpy(), xt.numpy())
            rows_acc += xt[idx] @ xt.mT
        return rows_acc, torch.from_numpy(diag_acc)

    g_rows = torch.zeros(len(idx), n, dtype=torch.float64)
    diag = torch.zeros(n, dtype=torch.float64)
    for part_rows, part_diag in map_column_blocks(block, n, d):
        g_rows += part_rows
        diag += part_diag
    return g_rows, diag


def combine_and_measure(u: torch.Tensor, coef: torch.Tensor | None, prev: np.ndarray | None, *,
                        distances: bool) -> tuple[np.ndarray | None, np.ndarray, float, float]:
    """One pass of a Weiszfeld step over ``u`` (n, d), by column chunk on the thread pool.

    ``z = sum_j coef_j u_j`` (``coef=None``: ``z = 0``, not materialised), and per row the squared
    distance ``||u_i - z||^2`` (when ``distances``), in the direct form (no cancellation), and
    ``||z - prev||^2`` and ``||prev||^2`` (``prev=None``: the zero vector). Each chunk of ``z`` is made
    just before its distances, so one read of the stack serves both. Arithmetic in the work dtype
    (float32 for float32 stacks: about 1e-7 relative per distance, summed over chunks in float64).
    Returns ``(z or None, sq (n,) float64, moved_sq, prev_sq)``.
    """
    a = work_array(u)
    n, d = a.shape
    step = chunk_width(n, SORT_CHUNK, 8)
    z = None if coef is None else np.empty(d, dtype=a.dtype)
    work = torch.float32 if a.dtype == np.float32 else torch.float64
    c_t = None if coef is None else coef.detach().to(device="cpu", dtype=work)

    def block(b: slice) -> np.ndarray:
        acc = np.zeros(n + 2, dtype=np.float64)  # n distances, moved, prev
        for j in range(b.start, b.stop, step):
            c = slice(j, min(j + step, b.stop))
            blk = a[:, c]
            zc = None
            if z is not None:
                zc = z[c]
                torch.mv(torch.from_numpy(blk).mT, c_t, out=torch.from_numpy(zc))
            if distances:
                x = _buffer((n, c.stop - c.start), a.dtype)
                if zc is None:
                    np.copyto(x, blk)
                else:
                    np.subtract(blk, zc, out=x)
                np.multiply(x, x, out=x)
                acc[:n] += np.add.reduce(x, axis=1)
            p = None if prev is None else prev[c]
            if zc is not None:
                dz = zc if p is None else zc - p
                acc[n] += float(np.dot(dz, dz))
            if p is not None:
                acc[n + 1] += float(np.dot(p, p))
        return acc

    total = np.zeros(n + 2, dtype=np.float64)
    for part in map_column_blocks(block, n, d):
        total += part
    return z, total[:n], float(total[n]), float(total[n + 1])


def weighted_row_sum(weights: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """(d,) ``sum_i weights_i u_i`` in the work dtype (float32 for float32 stacks), one matrix-vector
    product per column block on the thread pool: no float64 copy, one read of the stack."""
    a = work_array(u)
    n, d = a.shape
    work = torch.float32 if a.dtype == np.float32 else torch.float64
    w = weights.detach().to(device="cpu", dtype=work)
    out = torch.empty(d, dtype=work)

    def run(b: slice) -> None:
        torch.mv(torch.from_numpy(a[:, b]).mT, w, out=out[b])

    map_column_blocks(run, n, d)
    return out


def sq_distances_to(u: torch.Tensor, z: np.ndarray) -> np.ndarray:
    """(n,) float64 squared distances ``||u_i - z||^2`` in the direct form (no cancellation), the
    differences and squares in the work dtype (float32 for float32 stacks: about 1e-7 relative per
    distance, like ByzFL's), each chunk's row sums accumulated in float64; one read of the stack, by
    column chunk on the thread pool."""
    a = work_array(u)
    n, d = a.shape
    step = chunk_width(n, SORT_CHUNK, 8)
    zz = np.asarray(z, dtype=a.dtype)

    def block(b: slice) -> np.ndarray:
        acc = np.zeros(n, dtype=np.float64)
        for j in range(b.start, b.stop, step):
            c = slice(j, min(j + step, b.stop))
            x = _buffer((n, c.stop - c.start), a.dtype)
            np.subtract(a[:, c], zz[c], out=x)
            acc += np.einsum("ij,ij->i", x, x)
        return acc

    total = np.zeros(n, dtype=np.float64)
    for part in map_column_blocks(block, n, d):
        total += part
    return total
