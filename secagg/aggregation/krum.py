"""Krum and Multi-Krum (Blanchard, El Mhamdi, Guerraoui and Stainer, NeurIPS 2017).

Each update is scored by the sum of its squared distances to its ``neighbours`` closest *other*
updates; an update that sits inside the honest cluster scores low, an outlier scores high. Krum
returns the single lowest-scoring update; Multi-Krum averages the ``m`` lowest-scoring ones.

With ``f`` Byzantine updates among ``n`` and the paper's ``neighbours = n - f - 2``, every honest
update's score involves only other honest updates (it has ``n - f - 1`` of them), while every
attacker's score includes at least ``n - 2f - 1`` distances to honest updates. So once
``n >= 2f + 3`` attackers placed far away can never be chosen. Krum itself only needs
``n >= f + 3`` (so that ``neighbours >= 1``), which is what :class:`Krum` enforces.

Both rules ignore the batch's example weights (the paper's rule is unweighted).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from secagg.aggregation.base import Aggregate, Aggregator, AggState, UpdateBatch
from secagg.aggregation.distances import pairwise_sq_distances
from secagg.errors import UpdateError
from secagg.validation import check_int


def krum_scores(updates: torch.Tensor, neighbours: int) -> torch.Tensor:
    """(n,) float64: for each row, the sum of its ``neighbours`` smallest squared distances to the
    other rows (itself excluded), from one :func:`pairwise_sq_distances` matrix."""
    n = updates.shape[0]
    if not 1 <= neighbours <= n - 1:
        raise UpdateError(f"neighbours: must be in [1, n - 1] = [1, {n - 1}] for n={n}, got {neighbours}")
    d = pairwise_sq_distances(updates)
    d.fill_diagonal_(float("inf"))  # never count a row as its own neighbour
    return d.topk(neighbours, dim=1, largest=False, sorted=True).values.sum(dim=1)


def _resolve_neighbours(f: int, neighbours: int | None, n: int) -> int:
    """Check ``n`` against ``f`` and return the neighbour count to use for ``n`` updates."""
    if n < f + 3:
        raise UpdateError(f"f: Krum needs n >= f + 3, got n={n}, f={f}")
    k = n - f - 2 if neighbours is None else neighbours
    if k > n - 1:
        raise UpdateError(f"neighbours: must be <= n - 1 = {n - 1} for n={n}, got {k}")
    return k


def _ranking(scores: torch.Tensor) -> torch.Tensor:
    """Row indices from lowest to highest score; equal scores keep index order (deterministic)."""
    return torch.sort(scores, stable=True).indices


@dataclass(frozen=True)
class Krum(Aggregator, kind="krum"):
    """Return the single update with the lowest Krum score.

    ``f``: the number of Byzantine updates assumed (``>= 0``); each round needs ``n >= f + 3``.
    ``neighbours``: how many closest other updates each score sums; ``None`` means the paper's
    ``n - f - 2``. Libraries differ here (some use ``n - f - 1``); set it explicitly to match one.
    Must satisfy ``1 <= neighbours <= n - 1``.

    Equal scores go to the lowest row index. The result is a copy of one input row, in the input's
    dtype. Logs ``selected`` (the chosen row index) and ``score`` (its Krum score).
    """

    f: int = 1
    neighbours: int | None = None

    def __post_init__(self) -> None:
        check_int("f", self.f, minimum=0)
        if self.neighbours is not None:
            check_int("neighbours", self.neighbours, minimum=1)

    def aggregate(self, batch: UpdateBatch, state: AggState) -> Aggregate:
        u = batch.updates
        k = _resolve_neighbours(self.f, self.neighbours, batch.num_clients)
        scores = krum_scores(u, k)
        best = int(_ranking(scores)[0])
        return Aggregate(update=u[best].clone(), state=dict(state),
                         metrics={"selected": float(best), "score": float(scores[best])})


@dataclass(frozen=True)
class MultiKrum(Aggregator, kind="multi-krum"):
    """The plain mean of the ``m`` updates with the lowest Krum scores.

    ``f`` and ``neighbours`` as in :class:`Krum`. ``m``: how many updates to average; ``None``
    means ``n - f``; must satisfy ``1 <= m <= n``. ``m = 1`` is Krum and ``m = n`` the plain mean.
    The scores are computed once, from one distance matrix (not re-computed after each pick).
    Equal scores go to the lower row index. Logs ``selected_count`` and ``rejected_count``.
    """

    f: int = 1
    m: int | None = None
    neighbours: int | None = None

    def __post_init__(self) -> None:
        check_int("f", self.f, minimum=0)
        if self.m is not None:
            check_int("m", self.m, minimum=1)
        if self.neighbours is not None:
            check_int("neighbours", self.neighbours, minimum=1)

    def aggregate(self, batch: UpdateBatch, state: AggState) -> Aggregate:
        u = batch.updates
        n = batch.num_clients
        k = _resolve_neighbours(self.f, self.neighbours, n)
        m = n - self.f if self.m is None else self.m
        if m > n:
            raise UpdateError(f"m: must be <= n = {n}, got {m}")
        chosen = _ranking(krum_scores(u, k))[:m].sort().values  # input order: m = n is u.mean(0)
        return Aggregate(update=u[chosen].mean(dim=0), state=dict(state),
                         metrics={"selected_count": float(m), "rejected_count": float(n - m)})
