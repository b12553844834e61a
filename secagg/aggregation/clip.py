"""Static L2 norm clipping in front of any aggregator."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch

from secagg.aggregation.base import Aggregate, Aggregator, AggState, UpdateBatch, Wrapper
from secagg.aggregation.mean import Mean
from secagg.validation import check_real


@dataclass(frozen=True)
class ClipNorm(Wrapper, kind="clip-norm"):
    """Scale each update to L2 norm at most ``max_norm``, then aggregate with ``inner``.

    ``u_i <- u_i * min(1, max_norm / ||u_i||_2)``. Over a secure sum a deployment runs this step on
    each client (before masking, :meth:`client_step`); otherwise on the server, on each row of the
    batch. Logs ``clipped_fraction`` (where the rows are seen).
    """

    max_norm: float = 1.0
    inner: Aggregator = field(default_factory=Mean)
    keeps_sensitivity: ClassVar[bool] = True  # a per-row map: an inner DP rule's epsilon still holds
    placement: ClassVar[str] = "update"  # on the clients above a secure sum, on the server otherwise

    def __post_init__(self) -> None:
        check_real("max_norm", self.max_norm, gt=0.0)
        super().__post_init__()

    def _scale(self, norms: torch.Tensor) -> torch.Tensor:
        """``min(1, max_norm / norm)`` for each norm (a zero norm keeps its zero row)."""
        return torch.clamp(self.max_norm / norms.clamp_min(torch.finfo(norms.dtype).tiny), max=1.0)

    def client_step(self, update: torch.Tensor, public: tuple[float, ...] = ()) -> torch.Tensor:
        """One update (d,) scaled to L2 norm at most ``max_norm`` (as :meth:`aggregate` scales each row)."""
        return update * self._scale(torch.linalg.vector_norm(update))

    def aggregate(self, batch: UpdateBatch, state: AggState) -> Aggregate:
        norms = torch.linalg.vector_norm(batch.updates, dim=1)
        clipped = batch.updates * self._scale(norms)[:, None]
        return self.run_inner(batch.replace(updates=clipped), state,
                              clipped_fraction=float((norms > self.max_norm).float().mean()))
