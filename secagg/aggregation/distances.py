"""Pairwise distances between client updates, for distance-based robust rules (Krum, Bulyan, NNM)."""

from __future__ import annotations

import torch

from secagg.aggregation.columns import centred_gram, sorted_column_reduce


def pairwise_sq_distances(updates: torch.Tensor) -> torch.Tensor:
    """The (n, n) float64 matrix of squared Euclidean distances ``||u_i - u_j||^2`` between rows.

    Computed from one Gram matrix, ``D_ij = G_ii + G_jj - 2 G_ij`` with ``G = U U^T``: one (n, d) x
    (d, n) product instead of an (n, n, d) difference tensor, so memory stays O(nd + n^2).

    Why float64: the Gram formula subtracts large, nearly equal numbers. Two updates at distance
    ``r`` from each other but at norm ``R`` from the origin give ``D = 2R^2 - 2R^2 cos(θ) ≈ r^2``,
    and float32 (about 7 digits) loses ``D`` entirely once ``(R / r)^2`` passes ~1e7 - typical for
    model updates that share a large common component. The product therefore accumulates in
    float64, one column block at a time (:func:`~secagg.aggregation.columns.centred_gram`), so no
    full float64 copy of the stack is ever made: the extra memory is a few blocks, not 2x the input.

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
    centre = sorted_column_reduce(updates, lambda s: s[(n - 1) // 2])
    gram = centred_gram(updates, centre)
    sq_norms = gram.diagonal()
    d = sq_norms[:, None] + sq_norms[None, :] - 2.0 * gram
    d = 0.5 * (d + d.mT)  # exactly symmetric, whatever rounding the product did
    d.fill_diagonal_(0.0)
    return d.clamp_(min=0.0)


