"""Geometric median by smoothed Weiszfeld iterations: Robust Federated Aggregation (RFA; Pillutla,
Kakade and Harchaoui, IEEE TSP 2022)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from secagg.aggregation.base import Aggregate, Aggregator, AggState, UpdateBatch
from secagg.aggregation.columns import combine_and_measure, combine_rows, median_centred_gram
from secagg.aggregation.distances import EXACT_BELOW, sq_distances_from_gram
from secagg.errors import ConfigError, UpdateError
from secagg.validation import check_choice, check_int, check_real

INITS = ("mean", "zero")
#: up to this many steps, each step is one pass over the stack (cheaper than the Gram matrix's flat
#: cost, about eight passes); above it, one Gram matrix and the steps on n coefficients
DIRECT_MAX_ITER = 8


@dataclass(frozen=True)
class GeometricMedian(Aggregator, kind="geometric-median"):
    """The (weighted) geometric median ``argmin_z sum_i a_i ||u_i - z||``, by smoothed Weiszfeld.

    Starting from ``z_0`` (``init="mean"``: the ``a``-weighted mean, RFA's choice; ``init="zero"``: the
    zero vector, ByzFL's ``GeometricMedian``), repeat
    ``z <- sum_i b_i u_i / sum_i b_i`` with ``b_i = a_i / max(eps, ||u_i - z||)``
    until ``||z_new - z|| <= tol * ||z||`` (then ``z_new`` is returned) or ``max_iter`` steps.

    ``eps`` (> 0): smoothing; caps each weight so that ``z`` landing on a data point stays defined
    (ByzFL's ``nu``, default 0.1 there). ``tol`` (> 0): relative-change stopping tolerance (ByzFL never
    stops early: a tiny ``tol`` such as 1e-300 matches it). ``max_iter`` (>= 1): the most Weiszfeld
    steps (ByzFL's ``T``, default 3 there). ``weighted``: use the batch's example weights as the
    ``a_i`` (RFA's alphas); ``False`` gives every client weight 1 (ByzFL's rule). Note that a weighted
    rule trusts the clients' claimed weights.

    Computation. ``max_iter <= DIRECT_MAX_ITER`` (ByzFL's 3 steps): one pass over the stack per step,
    which forms the iterate ``z`` chunk by chunk and, from the same read, each row's distance to it in
    the direct form ``sum_k (u_ik - z_k)^2``, plus ``||z - z_prev||`` for the stopping test
    (:func:`~secagg.aggregation.columns.combine_and_measure`); arithmetic in the updates' working
    dtype (float32 for float32 stacks, as ByzFL; row sums accumulated in float64). Larger
    ``max_iter``: every iterate after the first is a convex combination ``z = U^T c`` of the rows, so
    the steps run on the n coefficients: ``||u_i - z||^2`` and ``||z_new - z||`` come from the pairwise
    squared distances ``D`` (one Gram matrix of the rows re-centred on their coordinate-wise median,
    :func:`~secagg.aggregation.columns.median_centred_gram`), and the stack is read once more, at the
    end, for ``U^T c`` in float64 (:func:`~secagg.aggregation.columns.combine_rows`). Each such step
    measures from the row with the largest coefficient, ``p``: with ``v_j = u_j - u_p``,
    ``||u_i - z||^2 = ||v_i - V^T c||^2`` expands over ``H_jk = v_j . v_k = (D_jp + D_kp - D_jk) / 2``,
    whose terms are as small as the distances themselves, so a distance to an iterate sitting next to
    a row keeps its relative precision (expanding around the centre instead would lose it). The Gram
    matrix is float64-exact for float64 and small stacks and from float32 products otherwise (each
    distance then within about 6e-5 of the squared spread around the median; see
    :func:`~secagg.aggregation.distances.bounded_sq_distances`). ``||z||`` (only the tolerance's scale)
    comes from the same Gram matrix through the centre row. Either way no (n, d) temporary is made.
    While the attackers hold less than half of the total weight, the result stays within a bounded
    distance of the honest updates however far the attackers go. Returned in the updates' dtype. Logs
    ``iterations`` (steps taken) and ``converged`` (1 if the tolerance was met, else 0).
    """

    eps: float = 1e-6
    tol: float = 1e-6
    max_iter: int = 100
    weighted: bool = True
    init: str = "mean"

    def __post_init__(self) -> None:
        check_real("eps", self.eps, gt=0.0)
        check_real("tol", self.tol, gt=0.0)
        check_int("max_iter", self.max_iter, minimum=1)
        if not isinstance(self.weighted, bool):
            raise ConfigError(f"weighted: must be a bool, got {self.weighted!r}")
        check_choice("init", self.init, INITS)

    def aggregate(self, batch: UpdateBatch, state: AggState) -> Aggregate:
        u = batch.updates.detach()
        n = batch.num_clients
        if self.weighted:
            a = batch.weights.detach().to(device="cpu", dtype=torch.float64)
        else:
            a = torch.ones(n, dtype=torch.float64)
        total = float(a.sum())
        if not total > 0.0:
            raise UpdateError("weights: geometric median needs a total weight > 0, got 0")
        a = a / total
        if self.max_iter <= DIRECT_MAX_ITER:
            z, steps, converged = self._direct(u, a)
        else:
            z, steps, converged = self._on_gram(u, a)
        return Aggregate(update=z.to(device=batch.updates.device, dtype=batch.updates.dtype),
                         state=dict(state),
                         metrics={"iterations": float(steps), "converged": float(converged)})

    def _direct(self, u: torch.Tensor, a: torch.Tensor) -> tuple[torch.Tensor, int, bool]:
        """Weiszfeld with one pass over the stack per step; returns (z, steps, converged)."""
        # pass 0: z_0 (the weighted mean, or the origin) and every row's distance to it
        z, sq, _, _ = combine_and_measure(u, None if self.init == "zero" else a, None, distances=True)
        steps = 0
        while True:
            b = a / torch.from_numpy(sq).sqrt().clamp(min=self.eps)
            steps += 1
            last = steps >= self.max_iter
            z_new, sq, moved_sq, prev_sq = combine_and_measure(u, b / b.sum(), z, distances=not last)
            converged = moved_sq**0.5 <= self.tol * prev_sq**0.5
            z = z_new
            if converged or last:
                return torch.from_numpy(z), steps, converged

    def _on_gram(self, u: torch.Tensor, a: torch.Tensor) -> tuple[torch.Tensor, int, bool]:
        """Weiszfeld on n coefficients over one Gram matrix; returns (z, steps, converged)."""
        n, d = u.shape
        exact = u.dtype not in (torch.float32, torch.float16, torch.bfloat16) or n * d <= EXACT_BELOW
        exact = exact or torch.get_float32_matmul_precision() != "highest"
        cg = median_centred_gram(u, exact=exact)
        gram = cg.gram
        dist = sq_distances_from_gram(gram[:n, :n])
        cx, cc = gram[:n, n], gram[n, n]  # c . (u_j - c) and ||c||^2: the origin, for ||z||

        def norm_of(coef: torch.Tensor) -> float:
            """||U^T coef|| for coefficients summing to s: ||s c + X^T coef||^2 expanded on the Gram."""
            s = coef.sum()
            sq = coef @ gram[:n, :n] @ coef + 2.0 * s * (coef @ cx) + s * s * cc
            return float(sq.clamp(min=0.0).sqrt())

        steps = 0
        converged = False
        if self.init == "zero":  # the first step measures from the origin
            sq = gram.diagonal()[:n] + 2.0 * cx + cc
            b = a / sq.clamp(min=0.0).sqrt().clamp(min=self.eps)
            coef = b / b.sum()
            steps = 1
            converged = norm_of(coef) <= 0.0  # ||z_1 - 0|| <= tol * ||0|| only if z_1 = 0
        else:
            coef = a
        while steps < self.max_iter and not converged:
            p = int(torch.argmax(coef))
            h = 0.5 * (dist[:, p, None] + dist[None, p, :] - dist)  # (u_j - u_p) . (u_k - u_p)
            hc = h @ coef
            sq = dist[:, p] - 2.0 * hc + coef @ hc
            b = a / sq.clamp(min=0.0).sqrt().clamp(min=self.eps)
            new = b / b.sum()
            step = new - coef  # sums to 0, so z_new - z = sum_j step_j (u_j - u_p)
            moved = float((step @ h @ step).clamp(min=0.0).sqrt())
            converged = moved <= self.tol * norm_of(coef)
            coef = new
            steps += 1
        return combine_rows(coef, u), steps, converged
