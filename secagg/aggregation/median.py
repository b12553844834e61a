"""Coordinate-wise median: a Byzantine-robust combine rule."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from secagg.aggregation.base import Aggregate, Aggregator, AggState, UpdateBatch
from secagg.aggregation.columns import sorted_column_reduce


def to_torch(a: np.ndarray, like: torch.Tensor) -> torch.Tensor:
    """``a`` as a tensor with the dtype and device of ``like``."""
    return torch.from_numpy(np.ascontiguousarray(a)).to(device=like.device, dtype=like.dtype)


def median_of_sorted(s: np.ndarray) -> np.ndarray:
    """The median of each column of a column-sorted (n, w) array; even n: mean of the two middle."""
    n = s.shape[0]
    return s[n // 2] if n % 2 else (s[n // 2 - 1] + s[n // 2]) / 2


@dataclass(frozen=True)
class CoordinateMedian(Aggregator, kind="median"):
    """The median of each coordinate over the clients (Yin et al. 2018, "Byzantine-robust distributed
    learning: towards optimal statistical rates").

    ``out[j] = median_i u[i, j]``; for an even number of clients the mean of the two middle values (not
    ``torch.median``'s lower one). Unweighted: like every robust rule it ignores the example weights,
    which a Byzantine client could inflate. While fewer than half the clients are adversarial, each
    coordinate stays within the honest clients' range. Sorts each coordinate with ``np.sort`` (faster
    on CPU than ``np.median``'s partition), by column blocks on a thread pool (see
    :mod:`~secagg.aggregation.columns`), in float64 for float64 updates and float32 otherwise;
    returned in the updates' dtype.
    """

    def aggregate(self, batch: UpdateBatch, state: AggState) -> Aggregate:
        u = batch.updates
        return Aggregate(update=to_torch(sorted_column_reduce(u, median_of_sorted), u), state=dict(state))
