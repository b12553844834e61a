"""Mean around the median (Meamed; Xie, Koyejo and Gupta 2018, "Generalized Byzantine-tolerant SGD",
arXiv:1802.10116): a coordinate-wise Byzantine-robust combine rule."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from secagg.aggregation.base import Aggregate, Aggregator, AggState, UpdateBatch
from secagg.aggregation.columns import sorted_row_reduce
from secagg.aggregation.median import to_torch
from secagg.errors import UpdateError
from secagg.validation import check_int


def closest_to_median_rows(rows: np.ndarray, keep: int) -> np.ndarray:
    """Per row of the row-sorted (w, m) array ``rows`` (one coordinate's m values, ascending): the mean
    of the ``keep`` values closest to the row's median (odd m: the middle value; even m: the mean of
    the two middle values, rounded to the dtype); equal distances prefer the smaller value.

    In a sorted row those values are a window ``rows[j, s:s + keep]``; the window start ``s`` counts the
    steps ``i < m - keep`` where swapping ``rows[j, i]`` for ``rows[j, i + keep]`` is a strict improvement,
    ``rows[j, i] + rows[j, i + keep] < 2 med`` (the left side grows with ``i``, so those steps are a
    prefix); the sums are formed in float64, exact for float32 values. Every window contains the core
    ``rows[j, m - keep:keep]`` (when ``2 keep >= m``), so the window sum is the core's sum plus the
    masked edges: no gather. Sums depend only on the row's values, so the result does not depend on the
    clients' order, bit for bit.
    """
    w, m = rows.shape
    span = m - keep
    if not 0 < keep <= m:
        raise ValueError(f"keep: must be in [1, {m}], got {keep}")
    mid = m // 2
    med = rows[:, mid] if m % 2 else (rows[:, mid - 1] + rows[:, mid]) / rows.dtype.type(2)
    med2 = 2.0 * med.astype(np.float64)
    start = np.zeros(w, dtype=np.intp)
    for i in range(span):
        start += (rows[:, i].astype(np.float64) + rows[:, i + keep]) < med2
    # np.einsum("ij->i") sums each row with one fixed SIMD loop: each coordinate's sum depends on its
    # own values only (and is 3x faster than add.reduce on short rows)
    if span == 0:
        total = np.einsum("ij->i", rows)
    elif keep >= span:  # windows overlap in rows[:, span:keep]
        left = np.arange(span)[None, :] >= start[:, None]  # rows[:, i] kept when i >= start
        right = np.arange(span)[None, :] < start[:, None]  # rows[:, keep + i] kept when i < start
        zero = rows.dtype.type(0)
        total = (np.einsum("ij->i", rows[:, span:keep])
                 + np.einsum("ij->i", np.where(left, rows[:, :span], zero))
                 + np.einsum("ij->i", np.where(right, rows[:, keep:], zero)))
    else:
        idx = start[:, None] + np.arange(keep)[None, :]
        total = np.einsum("ij->i", np.take_along_axis(rows, idx, axis=1))
    return total / rows.dtype.type(keep)


@dataclass(frozen=True)
class Meamed(Aggregator, kind="meamed"):
    """Per coordinate, the mean of the ``n - f`` values closest to the coordinate-wise median (Xie et al.
    2018, "Generalized Byzantine-tolerant SGD": "mean around median").

    ``out[j] = mean of the n - f values u[i, j] with the smallest |u[i, j] - med_j|``, ``med_j`` the median
    of coordinate j (even ``n``: the mean of the two middle values, as ByzFL's ``Meamed``, numpy's
    ``median`` and ``torch.quantile``). Equal distances prefer the smaller value, so the result does not
    depend on the clients' order; ByzFL leaves such ties to ``argpartition``/``topk`` (an arbitrary
    pick), so on exact ties the two can keep different values, each a valid reading of the rule.

    ``f`` (>= 0): the number of Byzantine clients assumed; each round needs ``2f < n`` (else
    :class:`~secagg.errors.UpdateError`, as ByzFL). ``f = 0`` is the plain mean. Unweighted, like
    every robust rule here. With at most ``f`` attackers the median lies within the honest values'
    range, so in a coordinate where every attacker is further from it than that range is wide, the
    ``n - f`` kept values are exactly the honest ones (their mean). Attackers close to the honest values
    can move the result slightly outside their range (unlike the median or the trimmed mean).

    Computation: each coordinate's values are sorted (numpy's SIMD sort on transposed column chunks, on
    the column-block thread pool) and the window found by :func:`closest_to_median_rows`; float64 for
    float64 updates, float32 otherwise; returned in the updates' dtype.
    """

    f: int = 1

    def __post_init__(self) -> None:
        check_int("f", self.f, minimum=0)

    def aggregate(self, batch: UpdateBatch, state: AggState) -> Aggregate:
        n, f, u = batch.num_clients, self.f, batch.updates
        if 2 * f >= n:
            raise UpdateError(f"f: Meamed needs 2f < n, got f={f}, n={n}")
        out = sorted_row_reduce(u, lambda rows: closest_to_median_rows(rows, n - f))
        return Aggregate(update=to_torch(out, u), state=dict(state))
