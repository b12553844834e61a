"""Pairwise distances between client updates, for distance-based robust rules (Krum, Bulyan, NNM, ...).

Two forms. :func:`pairwise_sq_distances` gives every squared distance to float64 accuracy (float64
products). :func:`bounded_sq_distances` gives them from float32 products (about 3x cheaper on a large
stack) together with a rigorous bound on each entry's error, and computes exact rows on demand, so
that a rule can decide from the cheap matrix wherever the bounds leave no doubt and check only the
rows where they do (Krum, Multi-Krum); its result is then the same as from the exact matrix.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from secagg.aggregation.columns import (
    CENTRE_SAMPLE,
    CentredGram,
    centred_gram_rows,
    median_centred_gram,
)

#: stacks with at most this many entries (or float64 ones) are computed exactly: the float32 path
#: saves time only where the products dominate, and small stacks keep exact scores
EXACT_BELOW = 1 << 22


def sq_distances_from_gram(gram: torch.Tensor) -> torch.Tensor:
    """``D_ij = G_ii + G_jj - 2 G_ij`` from an (n, n) float64 Gram matrix: exactly symmetric, zero
    diagonal, clamped at ``>= 0`` (rounding can push a tiny distance below zero)."""
    sq_norms = gram.diagonal()
    d = sq_norms[:, None] + sq_norms[None, :] - 2.0 * gram
    d = 0.5 * (d + d.mT)
    d.fill_diagonal_(0.0)
    return d.clamp_(min=0.0)


def pairwise_sq_distances(updates: torch.Tensor) -> torch.Tensor:
    """The (n, n) float64 matrix of squared Euclidean distances ``||u_i - u_j||^2`` between rows.

    Computed from one Gram matrix, ``D_ij = G_ii + G_jj - 2 G_ij`` with ``G = U U^T``: one (n, d) x
    (d, n) product instead of an (n, n, d) difference tensor, so memory stays O(nd + n^2).

    Why float64: the Gram formula subtracts large, nearly equal numbers. Two updates at distance
    ``r`` from each other but at norm ``R`` from the origin give ``D = 2R^2 - 2R^2 cos(θ) ≈ r^2``,
    and float32 (about 7 digits) loses ``D`` entirely once ``(R / r)^2`` passes ~1e7 - typical for
    model updates that share a large common component. The product therefore accumulates in
    float64, one column chunk at a time (:func:`~secagg.aggregation.columns.median_centred_gram`), so
    no full float64 copy of the stack is ever made: the extra memory is a few chunks, not 2x the input.

    Because distances do not change under translation, the rows are also first re-centred on their
    coordinate-wise lower median, which shrinks ``R`` to the spread of the updates and removes most
    of the cancellation that remains. The median rather than the mean is used so that a few far-away
    rows cannot drag the centre away from the bulk, and because it is itself an input value (per
    coordinate), integer-valued inputs keep exact distances (exact ties stay ties).

    The result has an exact-zero diagonal, is clamped at ``>= 0`` (rounding can push a tiny
    distance below zero) and is exactly symmetric. The input is not modified.
    """
    if not isinstance(updates, torch.Tensor) or updates.dim() != 2:
        raise ValueError("updates: expected a 2-D tensor (clients, dim)")
    n = updates.shape[0]
    return sq_distances_from_gram(median_centred_gram(updates, exact=True).gram[:n, :n])


@dataclass(frozen=True)
class BoundedSqDistances:
    """Squared distances between the n rows of ``updates``: ``approx`` (n, n) float64 (symmetric, zero
    diagonal, ``>= 0``) with ``|approx - exact| <= bound`` entrywise, where ``exact`` is what
    :func:`pairwise_sq_distances` computes (up to float64 rounding). ``bound`` is all zeros when
    ``approx`` is exact. :meth:`exact_rows` computes chosen rows exactly (one float64 pass)."""

    approx: torch.Tensor
    bound: torch.Tensor
    updates: torch.Tensor
    centred: CentredGram

    @property
    def exact(self) -> bool:
        return self.centred.exact

    def exact_rows(self, rows: Sequence[int]) -> torch.Tensor:
        """(len(rows), n) float64: the exact squared distances from each of ``rows`` (distinct) to every
        row, exactly symmetric among ``rows``.

        From float64 products, on the same centring as ``approx`` (so, like
        :func:`pairwise_sq_distances`, exact ties in integer-valued inputs stay exact)."""
        rows = [int(r) for r in rows]
        if self.exact:
            return self.approx[rows].clone()
        g_rows, diag = centred_gram_rows(self.updates, self.centred.centre, rows)
        d = diag[rows][:, None] + diag[None, :] - 2.0 * g_rows
        idx = torch.tensor(rows, dtype=torch.long)
        among = d[:, idx]
        d[:, idx] = 0.5 * (among + among.mT)  # exactly symmetric among the rows (ties stay ties)
        d[torch.arange(len(rows)), idx] = 0.0
        return d.clamp_(min=0.0)


def _bound(cg: CentredGram, n: int) -> torch.Tensor:
    """Entrywise bound on ``|D_approx - D_exact|`` for a float32 :class:`CentredGram` (see there).

    With ``y`` the float32-rounded centred rows, ``r_i >= ||y_i||`` from the diagonal:
    ``|D_approx - ||y_i - y_j||^2| <= (rel_err + 3 * 2^-53) (r_i + r_j)^2 + 4 abs_err`` (the Gram errors of
    ``G_ii``, ``G_jj`` and ``2 G_ij`` plus the float64 formula's rounding), and rounding the centred
    rows moves each distance by at most ``|D(y) - D(x)| <= u (2 + u) (||x_i|| + ||x_j||)^2``
    (``u = 2^-24``; ``||y_i - y_j||`` is within ``u (||x_i|| + ||x_j||)`` of ``||x_i - x_j||``)."""
    u = 2.0**-24
    diag = cg.gram.diagonal()[:n].clamp(min=0.0)
    r = torch.sqrt((diag + cg.abs_err) / (1.0 - cg.rel_err)) / (1.0 - u)
    # the 1e-6: slack for the rounding of this very formula
    kappa = (cg.rel_err + 3 * 2.0**-53 + u * (2.0 + u)) * (1.0 + 1e-6)
    b = kappa * (r[:, None] + r[None, :]) ** 2 + 4.0 * cg.abs_err
    b.fill_diagonal_(0.0)
    return b


def bounded_sq_distances(updates: torch.Tensor) -> BoundedSqDistances:
    """The squared distances between the rows of ``updates`` with an error bound per entry.

    float32 (or narrower) stacks of more than :data:`EXACT_BELOW` entries: from float32 products of the
    re-centred rows (one pass, no float64 copy), with a rigorous bound (see
    :func:`~secagg.aggregation.columns.median_centred_gram` and :func:`_bound`); the bound is about
    6e-5 (r_i + r_j)^2, ``r_i`` the distance from row i to the centre, the coordinate-wise median of
    :data:`~secagg.aggregation.columns.CENTRE_SAMPLE` evenly spaced rows (a cheap robust centre: it
    only sets how tight the bounds are, never what a rule decides). Everything else,
    and whenever ``torch.get_float32_matmul_precision()`` allows reduced-precision float32 products
    (which would void the bound): exact, as :func:`pairwise_sq_distances`, with a zero bound.
    """
    if not isinstance(updates, torch.Tensor) or updates.dim() != 2:
        raise ValueError("updates: expected a 2-D tensor (clients, dim)")
    n, d = updates.shape
    fast = (updates.dtype in (torch.float32, torch.float16, torch.bfloat16) and n * d > EXACT_BELOW
            and torch.get_float32_matmul_precision() == "highest")
    cg = median_centred_gram(updates, exact=not fast, sample=CENTRE_SAMPLE)
    approx = sq_distances_from_gram(cg.gram[:n, :n])
    bound = torch.zeros(n, n, dtype=torch.float64) if cg.exact else _bound(cg, n)
    return BoundedSqDistances(approx, bound, updates, cg)
