"""The FedAvg combine step: the (example-)weighted mean of the client updates."""

from __future__ import annotations

from dataclasses import dataclass

from secagg.aggregation.base import Aggregate, Aggregator, AggState, UpdateBatch
from secagg.errors import ConfigError, UpdateError


@dataclass(frozen=True)
class Mean(Aggregator, kind="mean"):
    """``sum_i w_i u_i / sum_i w_i`` (McMahan et al. 2017), or the plain mean if ``weighted=False``.

    With ``weighted=True`` the weights are the clients' example counts, so a client with twice the
    data counts twice. Accumulates in the updates' dtype with one matrix-vector product.
    """

    weighted: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.weighted, bool):
            raise ConfigError(f"weighted: must be true or false, got {self.weighted!r}")

    def aggregate(self, batch: UpdateBatch, state: AggState) -> Aggregate:
        u = batch.updates
        w = batch.weights.to(u.dtype) if self.weighted else u.new_ones(batch.num_clients)
        total = float(w.sum())
        if total <= 0:
            raise UpdateError("weights: sum must be > 0 for a weighted mean, got 0")
        return Aggregate(update=(w / total) @ u, state=dict(state))
