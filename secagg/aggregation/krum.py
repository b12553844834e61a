"""Krum and Multi-Krum (Blanchard, El Mhamdi, Guerraoui and Stainer, NeurIPS 2017).

Each update is scored by the sum of its squared distances to its ``neighbours`` closest *other*
updates; an update that sits inside the honest cluster scores low, an outlier scores high. Krum
returns the single lowest-scoring update; Multi-Krum averages the ``m`` lowest-scoring ones.

With ``f`` Byzantine updates among ``n`` and the paper's ``neighbours = n - f - 2``, every honest
update's score involves only other honest updates (it has ``n - f - 1`` of them), while every
attacker's score includes at least ``n - 2f - 1`` distances to honest updates. So once
``n >= 2f + 3`` attackers placed far away can never be chosen. Krum itself only needs
``n >= f + 3`` (so that ``neighbours >= 1``), which is what :class:`Krum` enforces for the paper's
neighbour count.

Both rules ignore the batch's example weights (the paper's rule is unweighted).

Computation. On a large float32 stack the distances come from one float32 Gram matrix of the
median-centred rows, with a rigorous error bound per entry
(:func:`~secagg.aggregation.distances.bounded_sq_distances`). That gives each score an interval; a
row whose interval decides its fate (certainly among the ``m`` lowest, or certainly not) is settled,
and only the rows left in doubt are re-scored from exact float64 distance rows (one more pass over
the stack, and only when some row is in doubt). The selection is therefore the one exact float64
distances give; small and float64 stacks use exact distances throughout.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from secagg.aggregation.base import Aggregate, Aggregator, AggState, UpdateBatch
from secagg.aggregation.distances import BoundedSqDistances, bounded_sq_distances, pairwise_sq_distances
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


def _k_smallest_sums(d: torch.Tensor, k: int) -> torch.Tensor:
    """Per row of an (r, n) distance block whose own entries are ``inf``: the sum of the ``k`` smallest."""
    return d.topk(k, dim=1, largest=False, sorted=True).values.sum(dim=1)


def lowest_scores(dist: BoundedSqDistances, neighbours: int, m: int
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The ``m`` rows with the lowest Krum scores under ``neighbours`` (equal scores: the lower index
    first), as exact distances would rank them.

    Returns ``(chosen, scores, exact)``: ``chosen`` (m,) row indices, the certain ones first (in the
    order of their estimates), then the re-scored ones in exact (score, index) order; ``scores`` (n,)
    float64, each row's score (exact where ``exact`` (n,) bool says so, else the float32-Gram
    estimate, within its bound). Each score's interval is ``approx +- sum of the row's neighbours
    largest bounds``. A row is certainly in when fewer than ``m`` other rows could score at most its
    upper end, certainly out when ``m`` rows score strictly below its lower end; the rest are
    re-scored exactly and fill the remaining places in (score, index) order. (For ``m = 1`` a row in
    doubt means no row is certainly in, so Krum's winner is then always re-scored exactly.)
    """
    n = dist.approx.shape[0]
    d = dist.approx.clone()
    d.fill_diagonal_(float("inf"))
    scores = _k_smallest_sums(d, neighbours)
    if dist.exact:
        return _ranking(scores)[:m], scores, torch.ones(n, dtype=torch.bool)
    slack = dist.bound.topk(neighbours, dim=1, largest=True).values.sum(dim=1)
    lo, hi = scores - slack, scores + slack
    others_at_most = (lo[None, :] <= hi[:, None]).sum(dim=1) - 1  # j != i with lo_j <= hi_i
    strictly_below = (hi[None, :] < lo[:, None]).sum(dim=1)  # j with hi_j < lo_i
    sure_in = others_at_most < m
    sure_out = strictly_below >= m
    doubt = ~(sure_in | sure_out)
    exact = torch.zeros(n, dtype=torch.bool)
    if bool(doubt.any()):
        rows = doubt.nonzero().flatten()
        ex = dist.exact_rows(rows.tolist())
        ex[torch.arange(len(rows)), rows] = float("inf")
        scores = scores.clone()
        scores[rows] = _k_smallest_sums(ex, neighbours)
        exact[rows] = True
    # sure rows first (their order among themselves by estimate), then the doubtful by exact score
    inside = sure_in.nonzero().flatten()
    inside = inside[_ranking(scores[inside])]
    undecided = doubt.nonzero().flatten()
    undecided = undecided[_ranking(scores[undecided])]
    chosen = torch.cat([inside, undecided])[:m]
    return chosen, scores, exact


def _resolve_neighbours(f: int, neighbours: int | None, n: int) -> int:
    """Check ``n`` against ``f`` and return the neighbour count to use for ``n`` updates.

    The paper's count ``n - f - 2`` needs ``n >= f + 3``; an explicit ``neighbours`` only needs
    ``1 <= neighbours <= n - 1`` (so ByzFL's ``n - f - 1`` convention runs wherever ByzFL's does)."""
    if neighbours is None:
        if n < f + 3:
            raise UpdateError(f"f: Krum needs n >= f + 3, got n={n}, f={f}")
        return n - f - 2
    if neighbours > n - 1:
        raise UpdateError(f"neighbours: must be <= n - 1 = {n - 1} for n={n}, got {neighbours}")
    return neighbours


def _ranking(scores: torch.Tensor) -> torch.Tensor:
    """Row indices from lowest to highest score; equal scores keep index order (deterministic)."""
    return torch.sort(scores, stable=True).indices


@dataclass(frozen=True)
class Krum(Aggregator, kind="krum"):
    """Return the single update with the lowest Krum score.

    ``f``: the number of Byzantine updates assumed (``>= 0``); each round needs ``n >= f + 3`` for the
    default ``neighbours``. ``neighbours``: how many closest other updates each score sums; ``None``
    means the paper's ``n - f - 2``. Libraries differ here (ByzFL 0.0.11 uses ``n - f - 1``); set it
    explicitly to match one. Must satisfy ``1 <= neighbours <= n - 1`` (then any ``n >= 2`` runs).

    Equal scores go to the lowest row index. The result is a copy of one input row, in the input's
    dtype. Logs ``selected`` (the chosen row index) and ``score`` (its Krum score: exact for small
    and float64 stacks and whenever it had to be re-scored, else the float32-Gram estimate, within
    its rigorous bound: about 1e-4 relative when the rows are about as far from each other as from
    their coordinate-wise median).
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
        chosen, scores, _ = lowest_scores(bounded_sq_distances(u), k, 1)
        best = int(chosen[0])
        return Aggregate(update=u[best].clone(), state=dict(state),
                         metrics={"selected": float(best), "score": float(scores[best])})


@dataclass(frozen=True)
class MultiKrum(Aggregator, kind="multi-krum"):
    """The plain mean of the ``m`` updates with the lowest Krum scores.

    ``f`` and ``neighbours`` as in :class:`Krum`. ``m``: how many updates to average; ``None``
    means ``n - f``; must satisfy ``1 <= m <= n``. ``m = 1`` is Krum and ``m = n`` the plain mean.
    The scores are computed once, from one distance matrix (not re-computed after each pick).
    Equal scores go to the lower row index. The mean is one (1, n) x (n, d) product in the updates'
    dtype (``m = n``: ``u.mean(0)``). Logs ``selected_count`` and ``rejected_count``.
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
        if m < 1:
            raise UpdateError(f"m: the default n - f must be >= 1, got n={n}, f={self.f}")
        if m > n:
            raise UpdateError(f"m: must be <= n = {n}, got {m}")
        if m == n:  # everything: the plain mean, bit for bit
            mean = u.mean(dim=0)
        else:
            chosen, _, _ = lowest_scores(bounded_sq_distances(u), k, m)
            # a (1, n) x (n, d) product: no (m, d) copy of the chosen rows
            w = torch.zeros(n, dtype=u.dtype, device=u.device)
            w[chosen.to(u.device)] = 1.0 / m
            mean = w @ u
        return Aggregate(update=mean, state=dict(state),
                         metrics={"selected_count": float(m), "rejected_count": float(n - m)})
