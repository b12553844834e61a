"""Centered clipping (Karimireddy, He and Jaggi, ICML 2021, "Learning from History for Byzantine
Robust Optimization").

Starting from the previous round's aggregate ``v`` (kept in the state as ``"center"``), repeat
``iterations`` times::

    v <- v + mean_i( (u_i - v) * min(1, tau / ||u_i - v||_2) )

and return ``v``, which becomes the next round's center. Each client's pull on ``v`` is at most
``tau / n`` per iteration, however far it is. Unweighted.

Computation (CPU stacks). With ``s_i = min(1, tau / ||u_i - v||)`` an iteration is
``v <- v (1 - sum_i s_i / n) + sum_i (s_i / n) u_i``: one pass over the stack for the distances (formed
directly, ``u_i - v`` by column chunk in the work dtype, each chunk's sums accumulated in float64: no
cancellation near convergence), one matrix-vector product for the weighted row sum, both on the
column-block thread pool; no (n, d) difference stack is made. The (d,) update is combined in float64.
Other devices: the batched form (one (n, d) difference stack per iteration).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from secagg.aggregation.base import Aggregate, Aggregator, AggState, UpdateBatch
from secagg.aggregation.columns import _buffer, chunk_width, map_column_blocks, weighted_row_sum, work_array
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
        if u.device.type == "cpu":
            return self._aggregate_cpu(u, center)
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

    def _aggregate_cpu(self, u: torch.Tensor, center: torch.Tensor) -> Aggregate:
        a = work_array(u)  # a view for float32/float64 stacks (one float32 copy for narrower floats)
        ut = torch.from_numpy(a)
        n = a.shape[0]
        v = center.detach().to(device="cpu", dtype=ut.dtype).numpy()
        tiny = float(np.finfo(a.dtype).tiny)
        clipped = 0.0
        for _ in range(self.iterations):
            norms = np.sqrt(_sq_distances(a, v))
            s = np.minimum(1.0, self.tau / np.maximum(norms, tiny))
            keep = float(np.sum(1.0 - s)) / n  # 1 - sum(s) / n, without cancellation
            pulled = weighted_row_sum(torch.from_numpy(s / n), ut)
            v64 = torch.from_numpy(v).to(torch.float64, copy=True).mul_(keep).add_(pulled)
            v = v64.to(ut.dtype).numpy()
            clipped = float(np.mean(norms > self.tau))
        out = torch.from_numpy(v).to(u.dtype)
        return Aggregate(update=out, state={"center": out.clone()},
                         metrics={"clipped_fraction": clipped})


_CHUNK = 16384  # columns per distance chunk (narrowed for many rows by chunk_width): few Python steps


def _sq_distances(a: np.ndarray, v: np.ndarray) -> np.ndarray:
    """(n,) float64 ``||a_i - v||^2``: per column chunk, the differences (into a per-thread buffer) and
    their row norms in ``a``'s dtype (float32 for float32 stacks: about 1e-7 relative per chunk), the
    chunks' squared norms summed in float64; on the column-block thread pool."""
    n, d = a.shape
    step = chunk_width(n, _CHUNK, a.itemsize)
    vt = torch.from_numpy(v)

    def block(b: slice) -> np.ndarray:
        acc = np.zeros(n, dtype=np.float64)
        for j in range(b.start, b.stop, step):
            c = slice(j, min(j + step, b.stop))
            x = torch.from_numpy(_buffer((n, c.stop - c.start), a.dtype))
            torch.sub(torch.from_numpy(a[:, c]), vt[c], out=x)
            acc += torch.linalg.vector_norm(x, dim=1).to(torch.float64).square_().numpy()
        return acc

    total = np.zeros(n, dtype=np.float64)
    for part in map_column_blocks(block, n, d):
        total += part
    return total
