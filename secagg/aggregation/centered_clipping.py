"""Centered clipping (Karimireddy, He and Jaggi, ICML 2021, "Learning from History for Byzantine
Robust Optimization").

Starting from the previous round's aggregate ``v`` (kept in the state as ``"center"``), repeat
``iterations`` times::

    v <- v + mean_i( (u_i - v) * min(1, tau / ||u_i - v||_2) )

and return ``v``, which becomes the next round's center. Each client's pull on ``v`` is at most
``tau / n`` per iteration, however far it is. Unweighted. Each iteration is batched: one (n,) norm
vector and one (n, d) difference stack.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from secagg.aggregation.base import Aggregate, Aggregator, AggState, UpdateBatch
from secagg.errors import UpdateError
from secagg.validation import check_int, check_real


@dataclass(frozen=True)
class CenteredClipping(Aggregator, kind="centered-clipping"):
    """Centered clipping around the previous aggregate: ``tau`` (> 0) the clipping radius,
    ``iterations`` (>= 1) the number of clipping steps per round.

    State: ``{"center": (d,) tensor}``, the previous round's output (zeros before the first round).
    Logs ``clipped_fraction`` (of the last iteration's rows whose distance exceeded ``tau``).
    """

    tau: float = 1.0
    iterations: int = 1

    def __post_init__(self) -> None:
        check_real("tau", self.tau, gt=0.0)
        check_int("iterations", self.iterations, minimum=1)

    def init_state(self, dim: int) -> AggState:
        check_int("dim", dim, minimum=1)
        return {"center": torch.zeros(dim, dtype=torch.float32)}

    def aggregate(self, batch: UpdateBatch, state: AggState) -> Aggregate:
        u = batch.updates.detach()
        center = state.get("center")
        if center is None:
            raise UpdateError("state: centered clipping needs a 'center' (use init_state(dim))")
        if not isinstance(center, torch.Tensor) or tuple(center.shape) != (batch.dim,):
            shape = tuple(center.shape) if isinstance(center, torch.Tensor) else type(center).__name__
            raise UpdateError(f"state.center: expected shape ({batch.dim},), got {shape}")
        v = center.detach().to(device=u.device, dtype=u.dtype).clone()
        n = batch.num_clients
        tiny = torch.finfo(u.dtype).tiny
        clipped = 0.0
        for _ in range(self.iterations):
            diff = u - v  # new (n, d) tensor; u is untouched
            norms = torch.linalg.vector_norm(diff, dim=1)
            scale = torch.clamp(self.tau / norms.clamp_min(tiny), max=1.0)
            v = v + (scale / n) @ diff
            clipped = float((norms > self.tau).to(torch.float64).mean())
            del diff
        return Aggregate(update=v, state={"center": v.clone()},
                         metrics={"clipped_fraction": clipped})
