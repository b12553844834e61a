"""Bulyan (El Mhamdi, Guerraoui and Rouault, ICML 2018, "The hidden vulnerability of distributed
learning in Byzantium").

Two stages. *Selection*: pick ``theta = n - 2f`` updates by iterated Krum - score the remaining
updates with Krum's rule (see :mod:`secagg.aggregation.krum`), move the winner to the selected set,
repeat. *Aggregation*: per coordinate, keep the ``beta = theta - 2f`` selected values closest to the
coordinate-wise median of the selected set and average them. Needs ``n >= 4f + 3``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from secagg.aggregation.base import Aggregate, Aggregator, AggState, UpdateBatch
from secagg.aggregation.columns import row_mean, sorted_column_reduce
from secagg.aggregation.distances import pairwise_sq_distances
from secagg.aggregation.median import median_of_sorted, to_torch
from secagg.errors import UpdateError
from secagg.validation import check_int


def _scores_from_distances(d: torch.Tensor, neighbours: int) -> torch.Tensor:
    """Krum scores (as :func:`~secagg.aggregation.krum.krum_scores`) from a precomputed (m, m)
    squared-distance matrix, so the iterated selection computes the distances only once."""
    d = d.clone()
    d.fill_diagonal_(float("inf"))
    return d.topk(neighbours, dim=1, largest=False, sorted=True).values.sum(dim=1)


def iterated_krum(updates: torch.Tensor, f: int, count: int) -> list[int]:
    """Row indices of ``count`` updates chosen one at a time by Krum on the rows not yet chosen.

    On ``m`` remaining rows Krum uses ``max(m - f - 2, 1)`` neighbours: the paper's ``m - f - 2``,
    floored at 1 because the remaining set shrinks below ``f + 3`` in Bulyan's last picks. Equal
    scores go to the lexicographically smallest row, not the lowest index as in
    :class:`~secagg.aggregation.krum.Krum`: with 1 neighbour the two rows of the closest pair always
    tie, and an index rule would make the result depend on the clients' order. The squared
    distances are computed once and each round scores the submatrix of the remaining rows.
    """
    dist = pairwise_sq_distances(updates)
    remaining = list(range(updates.shape[0]))
    chosen: list[int] = []
    for _ in range(count):
        m = len(remaining)
        if m == 1:
            chosen.append(remaining.pop())
            continue
        idx = torch.tensor(remaining)
        scores = _scores_from_distances(dist[idx][:, idx], min(max(m - f - 2, 1), m - 1))
        tied = (scores == scores.min()).nonzero().flatten().tolist()
        best = tied[0]
        for j in tied[1:]:  # lexicographic minimum: order-free
            if _lex_less(updates[remaining[j]], updates[remaining[best]]):
                best = j
        chosen.append(remaining.pop(best))
    return chosen


def _lex_less(a: torch.Tensor, b: torch.Tensor) -> bool:
    """``a < b`` lexicographically, comparing only up to the first coordinate where they differ."""
    differ = (a != b).nonzero()
    return bool(differ.numel()) and bool(a[differ[0, 0]] < b[differ[0, 0]])


@dataclass(frozen=True)
class Bulyan(Aggregator, kind="bulyan"):
    """Iterated-Krum selection of ``theta = n - 2f`` updates, then a per-coordinate trimmed average.

    ``f``: the number of Byzantine updates assumed (``>= 0``); each round needs ``n >= 4f + 3``
    (else :class:`~secagg.errors.UpdateError`).

    Coordinate rule (the paper's): per coordinate, sort the ``theta`` selected values, take their
    median (mean of the two middle values when ``theta`` is even, as :class:`CoordinateMedian`), and
    average the ``beta = theta - 2f`` values with the smallest ``|x - median|``; equal distances
    prefer the smaller value, so the result does not depend on the row order (a sliding window over
    the sorted column, :func:`closest_to_median_mean`). Note this is not in
    general the same as dropping the ``f`` largest and ``f`` smallest values (the kept window can sit
    off-centre). Since at most ``f`` of the ``theta`` selected rows are Byzantine, at least ``beta``
    honest values remain, so each coordinate stays within the honest clients' range when the
    attackers lie outside it.

    Unweighted (ignores the example weights). Computes in float64 for float64 updates, float32
    otherwise; returned in the updates' dtype. Logs ``selected_count`` (``theta``) and ``kept_count``
    (``beta``, per coordinate).
    """

    f: int = 1

    def __post_init__(self) -> None:
        check_int("f", self.f, minimum=0)

    def aggregate(self, batch: UpdateBatch, state: AggState) -> Aggregate:
        n, f, u = batch.num_clients, self.f, batch.updates
        if n < 4 * f + 3:
            raise UpdateError(f"f: Bulyan needs n >= 4f + 3, got n={n}, f={f}")
        theta = n - 2 * f
        beta = theta - 2 * f
        chosen = sorted(iterated_krum(u, f, theta))
        kept_mean = sorted_column_reduce(u[chosen], lambda s: closest_to_median_mean(s, beta))
        return Aggregate(update=to_torch(kept_mean, u), state=dict(state),
                         metrics={"selected_count": float(theta), "kept_count": float(beta)})


def closest_to_median_mean(s: np.ndarray, beta: int) -> np.ndarray:
    """Per column of the column-sorted (m, w) array ``s``: the mean of the ``beta`` values closest to
    the column's median ``med``; equal distances prefer the smaller value.

    In a sorted column those values are a contiguous window ``s[i:i + beta]``. Sliding the window
    one step right swaps ``s[i]`` for ``s[i + beta]``, which is a strict improvement exactly when
    ``s[i + beta] - med < med - s[i]``, i.e. ``s[i] + s[i + beta] < 2 med`` (when both lie below the
    median the swap keeps or improves the window, so it is taken). The left side is non-decreasing
    in ``i``, so the test holds for a prefix of starts and the optimal start is their count:
    ``m - beta`` comparisons and one gather of ``beta`` rows per column instead of sorting
    ``|s - med|``. The sums are formed in float64, where the sum of two float32 values is exact
    (for float64 input, exact unless the two values differ by more than ~2^53 in scale). Comparing
    rounded ``|x - med|`` instead would let float32 rounding create ties that real distances do not
    have.
    """
    m, w = s.shape
    med2 = 2.0 * median_of_sorted(s).astype(np.float64)
    start = np.zeros(w, dtype=np.intp)
    for i in range(m - beta):
        start += (s[i].astype(np.float64) + s[i + beta]) < med2
    rows = start[None, :] + np.arange(beta)[:, None]
    return row_mean(np.take_along_axis(s, rows, axis=0))
