"""MoNNA: the mean of the nearest neighbours of a pivot update (Allouah, Guerraoui, Gupta, Pinot and
Stephan, "On the privacy-robustness-utility trilemma in distributed learning", ICML 2023)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from secagg.aggregation.base import Aggregate, Aggregator, AggState, UpdateBatch
from secagg.aggregation.columns import sq_distances_to, weighted_row_sum, work_array
from secagg.errors import UpdateError
from secagg.validation import check_int


@dataclass(frozen=True)
class MoNNA(Aggregator, kind="monna"):
    """The mean of the ``n - f`` updates nearest (Euclidean) to the pivot row, the pivot included.

    ``out = mean_{i in N} u_i`` with ``N`` the ``n - f`` rows with the smallest ``||u_i - u_pivot||``; equal
    distances go to the lower row index (ByzFL's ``argpartition``/``topk`` pick an arbitrary one).

    ``pivot`` (>= 0): the row index of the pivot, ByzFL's ``idx`` (default 0 there too). The paper's
    pivot is an update the server trusts (its own, or an honest client's): MoNNA is robust only when
    the pivot row is honest, so put the trusted update at that row. Each round needs ``pivot < n`` and
    ``2f < n`` (else :class:`~secagg.errors.UpdateError`, as ByzFL). ``f`` (>= 0): the number of Byzantine
    clients assumed; ``f = 0`` is the plain mean. Unweighted. With an honest pivot and the ``f``
    attackers further from it than every honest update, the result is the honest updates' mean.

    Computation: one pass over the stack for the n squared distances to the pivot, in the direct form
    ``sum_k (u_ik - u_pk)^2`` (no cancellation), in the updates' working dtype with float64 row sums
    (:func:`~secagg.aggregation.columns.sq_distances_to`: float32 for float32 stacks, as ByzFL), then one
    weighted sum of the rows for the mean (no copy of the chosen rows). Logs ``radius`` (the distance
    to the furthest kept row).
    """

    f: int = 1
    pivot: int = 0

    def __post_init__(self) -> None:
        check_int("f", self.f, minimum=0)
        check_int("pivot", self.pivot, minimum=0)

    def aggregate(self, batch: UpdateBatch, state: AggState) -> Aggregate:
        n, f, u = batch.num_clients, self.f, batch.updates
        if 2 * f >= n:
            raise UpdateError(f"f: MoNNA needs 2f < n, got f={f}, n={n}")
        if self.pivot >= n:
            raise UpdateError(f"pivot: must be < n = {n}, got {self.pivot}")
        sq = torch.from_numpy(sq_distances_to(u, work_array(u)[self.pivot].copy()))
        keep = n - f
        nearest = torch.sort(sq, stable=True).indices[:keep]
        w = torch.zeros(n, dtype=torch.float64)
        w[nearest] = 1.0 / keep
        mean = weighted_row_sum(w, u).to(device=u.device, dtype=u.dtype)
        return Aggregate(update=mean, state=dict(state), metrics={"radius": float(sq[nearest[-1]]) ** 0.5})
