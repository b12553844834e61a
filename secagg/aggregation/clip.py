"""Static L2 norm clipping in front of any aggregator."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from secagg.aggregation.base import (
    Aggregate,
    Aggregator,
    AggState,
    UpdateBatch,
    nest_state,
    unnest_state,
)
from secagg.aggregation.mean import Mean
from secagg.validation import check_real


@dataclass(frozen=True)
class ClipNorm(Aggregator, kind="clip-norm"):
    """Scale each update to L2 norm at most ``max_norm``, then aggregate with ``inner``.

    ``u_i <- u_i * min(1, max_norm / ||u_i||_2)``. In a deployment this step runs on the client
    (before masking); here it is applied to each row of the batch. Logs ``clipped_fraction``.
    """

    max_norm: float = 1.0
    inner: Aggregator = field(default_factory=Mean)

    def __post_init__(self) -> None:
        check_real("max_norm", self.max_norm, gt=0.0)
        if not isinstance(self.inner, Aggregator):
            raise TypeError(f"inner: expected an Aggregator, got {type(self.inner).__name__}")

    def init_state(self, dim: int) -> AggState:
        return nest_state("inner", self.inner.init_state(dim))

    def aggregate(self, batch: UpdateBatch, state: AggState) -> Aggregate:
        norms = torch.linalg.vector_norm(batch.updates, dim=1)
        scale = torch.clamp(self.max_norm / norms.clamp_min(torch.finfo(norms.dtype).tiny), max=1.0)
        clipped = batch.updates * scale[:, None]
        inner = self.inner.aggregate(batch.replace(updates=clipped), unnest_state("inner", state))
        metrics = {"clipped_fraction": float((norms > self.max_norm).float().mean()),
                   **{f"inner/{k}": v for k, v in inner.metrics.items()}}
        return Aggregate(inner.update, nest_state("inner", inner.state), metrics)
