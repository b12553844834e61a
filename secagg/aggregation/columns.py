"""Column-blocked, multi-threaded kernels over an (n, d) update stack.

Coordinate-wise rules (median, trimmed mean, Bulyan) and the Gram matrix behind pairwise distances
all treat the d columns independently, so the stack is cut into contiguous column blocks and the
blocks are processed by a thread pool: numpy's sort and torch's matrix product release the GIL, so
the blocks run in parallel, and each block's temporaries (a sorted copy, a float64 copy) are a small
slice of the stack instead of a second full copy. Results do not depend on the number of threads:
each column is computed by the same code whatever block it falls in, and block results are combined
in block order.

The worker count is ``torch.get_num_threads()`` (so ``torch.set_num_threads`` and
``OMP_NUM_THREADS`` bound it, as for every other kernel of the library).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
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


def _executor(workers: int) -> ThreadPoolExecutor:
    """One long-lived pool per process and worker count: fresh threads on every call would each
    get their own malloc arena, and the freed blocks would stay resident. A forked child gets a
    new pool (the parent's threads do not exist there)."""
    global _pool
    with _pool_lock:
        if _pool is None or _pool[:2] != (os.getpid(), workers):
            if _pool is not None and _pool[0] == os.getpid():
                _pool[2].shutdown(wait=False)
            _pool = (os.getpid(), workers, ThreadPoolExecutor(workers, thread_name_prefix="secagg-columns"))
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


def sorted_column_reduce(u: torch.Tensor, reduce: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """``reduce(np.sort(block, axis=0))`` for each column block of ``u``, concatenated: a (d,) array.

    ``reduce`` maps a column-sorted (n, w) block to w values (an order statistic, a trimmed mean...).
    Sorting makes the result independent of the row order, bit for bit.
    """
    a = work_array(u)
    n, d = a.shape
    out = np.empty(d, dtype=a.dtype)

    def run(b: slice) -> None:
        out[b] = reduce(np.sort(a[:, b], axis=0))  # a copy: a view of the sorted block would keep it alive

    map_column_blocks(run, n, d)
    return out


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
    """(n,) float64 Euclidean distances ``||u_i - z||``, differences formed in float64 by column block.

    The direct form (not ``||u||^2 - 2 u.z + ||z||^2``): near convergence ``z`` sits close to the
    rows, where the expanded form cancels catastrophically. No (n, d) temporary is made.
    """
    a = work_array(u)
    n, d = a.shape
    zz = z.detach().to(device="cpu", dtype=torch.float64)

    def block_sq(b: slice) -> torch.Tensor:
        x = torch.from_numpy(a[:, b]).to(torch.float64, copy=True)
        x -= zz[b]
        return (x * x).sum(dim=1)

    total = torch.zeros(n, dtype=torch.float64)
    for part in map_column_blocks(block_sq, n, d):
        total += part
    return total.sqrt()


def combine_rows(weights: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """(d,) float64 ``sum_i weights_i u_i``, with the rows cast to float64 one column block at a time."""
    a = work_array(u)
    n, d = a.shape
    w = weights.detach().to(device="cpu", dtype=torch.float64)
    out = torch.empty(d, dtype=torch.float64)

    def run(b: slice) -> None:
        out[b] = w @ torch.from_numpy(a[:, b]).to(torch.float64)

    map_column_blocks(run, n, d)
    return out
