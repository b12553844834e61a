"""Coordinate-wise trimmed mean: a Byzantine-robust combine rule."""

from __future__ import annotations

from dataclasses import dataclass

from secagg.aggregation.base import Aggregate, Aggregator, AggState, UpdateBatch
from secagg.aggregation.columns import row_mean, sorted_column_reduce
from secagg.aggregation.median import to_torch
from secagg.errors import UpdateError
from secagg.validation import check_int


@dataclass(frozen=True)
class TrimmedMean(Aggregator, kind="trimmed-mean"):
    """Per coordinate, drop the ``f`` largest and ``f`` smallest values and average the other ``n - 2f``
    (Yin et al. 2018, "Byzantine-robust distributed learning: towards optimal statistical rates").

    Needs ``2f < n`` clients (else :class:`~secagg.errors.UpdateError`); ``f=0`` is the plain mean.
    Unweighted: like every robust rule it ignores the example weights. With at most ``f`` adversarial
    clients each coordinate stays within the honest clients' range. Sorts each coordinate with
    ``np.sort`` (so the result does not depend on the clients' order, bit for bit), by column blocks on
    a thread pool, and averages the kept rows, in float64 for float64 updates and float32 otherwise;
    returned in the updates' dtype.
    """

    f: int = 1

    def __post_init__(self) -> None:
        check_int("f", self.f, minimum=0)

    def aggregate(self, batch: UpdateBatch, state: AggState) -> Aggregate:
        n, f = batch.num_clients, self.f
        if 2 * f >= n:
            raise UpdateError(f"f: trimmed mean needs 2f < n, got f={f}, n={n}")
        u = batch.updates
        mean = sorted_column_reduce(u, lambda s: row_mean(s[f:n - f]))
        return Aggregate(update=to_torch(mean, u), state=dict(state))
