"""Geometric median by smoothed Weiszfeld iterations: Robust Federated Aggregation (RFA; Pillutla,
Kakade and Harchaoui, IEEE TSP 2022)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from secagg.aggregation.base import Aggregate, Aggregator, AggState, UpdateBatch
from secagg.aggregation.columns import combine_rows, row_distances
from secagg.errors import ConfigError, UpdateError
from secagg.validation import check_int, check_real


@dataclass(frozen=True)
class GeometricMedian(Aggregator, kind="geometric-median"):
    """The (weighted) geometric median ``argmin_z sum_i a_i ||u_i - z||``, by smoothed Weiszfeld.

    Starting from the ``a``-weighted mean, repeat
    ``z <- sum_i b_i u_i / sum_i b_i`` with ``b_i = a_i / max(eps, ||u_i - z||)``
    until ``||z_new - z|| <= tol * ||z||`` (then ``z_new`` is returned) or ``max_iter`` steps.

    ``eps`` (> 0): smoothing; caps each weight so that ``z`` landing on a data point stays defined.
    ``tol`` (> 0): relative-change stopping tolerance. ``max_iter`` (>= 1): the most Weiszfeld steps.
    ``weighted``: use the batch's example weights as the ``a_i`` (RFA's alphas); ``False`` gives every
    client weight 1. Note that a weighted rule trusts the clients' claimed weights.

    Everything is computed in float64 (one (n,) distance vector per step), by column blocks, so the
    stack is never copied whole (:mod:`~secagg.aggregation.columns`); returned in the updates' dtype.
    While the attackers hold less than half of the total weight, the result stays within a bounded
    distance of the honest updates however far the attackers go. Logs ``iterations`` (steps taken)
    and ``converged`` (1 if the tolerance was met, else 0).
    """

    eps: float = 1e-6
    tol: float = 1e-6
    max_iter: int = 100
    weighted: bool = True

    def __post_init__(self) -> None:
        check_real("eps", self.eps, gt=0.0)
        check_real("tol", self.tol, gt=0.0)
        check_int("max_iter", self.max_iter, minimum=1)
        if not isinstance(self.weighted, bool):
            raise ConfigError(f"weighted: must be a bool, got {self.weighted!r}")

    def aggregate(self, batch: UpdateBatch, state: AggState) -> Aggregate:
        u = batch.updates.detach()
        if self.weighted:
            a = batch.weights.detach().to(device="cpu", dtype=torch.float64)
        else:
            a = torch.ones(batch.num_clients, dtype=torch.float64)
        total = float(a.sum())
        if not total > 0.0:
            raise UpdateError("weights: geometric median needs a total weight > 0, got 0")
        a = a / total
        z = combine_rows(a, u)
        converged = False
        steps = 0
        while steps < self.max_iter:
            b = a / row_distances(u, z).clamp(min=self.eps)
            z_new = combine_rows(b, u) / b.sum()
            steps += 1
            done = float(torch.linalg.vector_norm(z_new - z)) <= self.tol * float(torch.linalg.vector_norm(z))
            z = z_new
            if done:
                converged = True
                break
        return Aggregate(update=z.to(device=batch.updates.device, dtype=batch.updates.dtype),
                         state=dict(state),
                         metrics={"iterations": float(steps), "converged": float(converged)})
