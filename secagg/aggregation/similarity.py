"""Cosine similarities between client updates, for the similarity-based defences (FLAME, FoolsGold).

One (n, d) x (d, n) Gram product (in float32 for float32 and narrower rows, float64 for float64
rows), then everything else in float64 on the (n, n) matrix. Unlike squared distances
(:mod:`secagg.aggregation.distances`), a cosine is a ratio ``G_ij / sqrt(G_ii G_jj)`` with no
subtraction of nearly equal numbers, so a float32 product is accurate to about 1e-6 of
``||u_i|| ||u_j||`` (measured: 2.5e-6 at n = 100, d = 10^6), and it costs a fifth of a
float64-accumulated one. No copy of a float32 or float64 stack is made.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def cosine_from_gram(gram: torch.Tensor) -> torch.Tensor:
    """(n, n) float64 cosine similarities from a Gram matrix ``G_ij = <r_i, r_j>`` (any float dtype);
    see :func:`cosine_similarities` for the conventions."""
    gram = gram.to(torch.float64)
    gram = 0.5 * (gram + gram.mT)  # exactly symmetric, whatever order the product summed in
    norms = gram.diagonal().clamp_min(0.0).sqrt()
    nonzero = norms > 0
    inv = torch.where(nonzero, 1.0 / norms.clamp_min(torch.finfo(torch.float64).tiny), 0.0)
    cos = (gram * inv[:, None] * inv[None, :]).clamp_(-1.0, 1.0)
    cos.diagonal().copy_(nonzero.to(torch.float64))
    return cos


def cosine_similarities(rows: torch.Tensor) -> torch.Tensor:
    """(n, n) float64 matrix of ``cos(r_i, r_j) = <r_i, r_j> / (||r_i|| ||r_j||)`` for an (n, d) stack.

    Values are clamped to [-1, 1]; the diagonal is exactly 1, except for an all-zero row, whose
    similarity to every row (itself included) is 0: a zero vector points nowhere. Exactly symmetric.
    The product runs in float32 for float32 and narrower rows, float64 for float64 rows: accurate to
    a few hundred ulps of that dtype. The input is not modified.
    """
    if not isinstance(rows, torch.Tensor) or rows.dim() != 2:
        raise ValueError("rows: expected a 2-D tensor (clients, dim)")
    r = rows.detach()
    if r.dtype not in (torch.float32, torch.float64):
        r = r.float()  # half-precision products would lose the cosines (inputs this narrow are rare)
    return cosine_from_gram(r @ r.mT)


def stack_rows(rows: Sequence[torch.Tensor]) -> torch.Tensor:
    """The (n, d) stack of ``n`` separate (d,) tensors of one dtype, a new tensor. Row by row into one
    preallocated output: ``torch.stack`` is several times slower at this on CPU (measured 0.26 s
    against 0.013 s for 100 rows of 65536 float32)."""
    out = torch.empty(len(rows), int(rows[0].shape[0]), dtype=rows[0].dtype)
    for i, r in enumerate(rows):  # one contiguous copy per row
        out[i].copy_(r)
    return out
