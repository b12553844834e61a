"""Coordinate-wise trimmed mean: a Byzantine-robust combine rule."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from secagg.aggregation.base import Aggregate, Aggregator, AggState, UpdateBatch
from secagg.aggregation.columns import sorted_row_reduce
from secagg.aggregation.median import to_torch
from secagg.errors import UpdateError
from secagg.validation import check_int


@dataclass(frozen=True)
class TrimmedMean(Aggregator, kind="trimmed-mean"):
    """Per coordinate, drop the ``f`` largest and ``f`` smallest values and average the other ``n - 2f``
    (Yin et al. 2018, "Byzantine-robust distributed learning: towards optimal statistical rates").

    Needs ``2f < n`` clients (else :class:`~secagg.errors.UpdateError`); ``f=0`` is the plain mean.
    Unweighted: like every robust rule it ignores the example weights. With at most ``f`` adversarial
    clients each coordinate stays within the honest clients' range.

    Computation: each coordinate's n values are sorted (numpy's SIMD sort on transposed chunks of
    columns, on the column-block thread pool: :func:`~secagg.aggregation.columns.sorted_row_reduce`),
    and the ``n - 2f`` middle ones summed in sorted order (``np.einsum``, within each coordinate) and
    divided by ``n - 2f``. Sorting first makes the result independent of the clients' order, bit for bit. In
    float64 for float64 updates and float32 otherwise; returned in the updates' dtype.
    """

    f: int = 1

    def __post_init__(self) -> None:
        check_int("f", self.f, minimum=0)

    def aggregate(self, batch: UpdateBatch, state: AggState) -> Aggregate:
        n, f = batch.num_clients, self.f
        if 2 * f >= n:
            raise UpdateError(f"f: trimmed mean needs 2f < n, got f={f}, n={n}")
        u = batch.updates
        kept = n - 2 * f

        def trimmed(rows: np.ndarray) -> np.ndarray:  # rows: (w, n), each sorted
            # einsum sums each row with one fixed SIMD loop (3x faster than add.reduce's per-row
            # pairwise setup on 80-wide rows); each coordinate's sum depends on its own values only
            return np.einsum("ij->i", rows[:, f:n - f]) / rows.dtype.type(kept)

        mean = sorted_row_reduce(u, trimmed)
        return Aggregate(update=to_torch(mean, u), state=dict(state))
