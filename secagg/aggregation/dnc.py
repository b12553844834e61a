"""Divide-and-Conquer, DnC (Shejwalkar and Houmansadr, NDSS 2021, "Manipulating the Byzantine:
Optimizing Model Poisoning Attacks and Defenses for Federated Learning"), Algorithm 2.

Model-poisoning updates that do damage must move the aggregate along some direction far more than
the honest spread does; that direction then dominates the top singular vector of the centred
updates. DnC repeats ``niters`` times:

1. pick ``b`` coordinates at random and take the (n, b) sub-stack ``S`` (dimension reduction: the
   SVD of the full stack would be too costly);
2. centre it, ``C = S - mean_i S_i``, and take its top right singular vector ``v``;
3. score each update by its squared projection ``s_i = <C_i, v>^2`` and keep the ``n - c f``
   lowest-scoring updates,

and returns the plain mean of the updates kept in *every* iteration (the intersection).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from secagg.aggregation.base import Aggregate, Aggregator, AggState, UpdateBatch
from secagg.errors import UpdateError
from secagg.seeding import torch_generator
from secagg.validation import check_int, check_real

CHUNK = 1 << 15  # columns per float64 block: a 100-client block is 26 MB


def outlier_scores(sub: torch.Tensor) -> torch.Tensor:
    """(n,) float64 DnC scores of an (n, b) sub-stack: ``<C_i, v>^2`` for the centred rows ``C`` and
    their top right singular vector ``v``.

    Computed from the (n, n) Gram matrix ``C C^T = U diag(sigma^2) U^T``: ``C v = sigma_1 U_1``, so
    ``s_i = sigma_1^2 U_{i1}^2`` (the top eigenpair of the Gram matrix), which is exact and cheaper
    than an SVD of the (n, b) matrix. Accumulated in float64 one column block at a time (centring
    is per column, so blocks centre exactly), so no float64 copy of ``sub`` is made.
    """
    n, b = sub.shape
    gram = torch.zeros(n, n, dtype=torch.float64)
    for start in range(0, b, CHUNK):  # column blocks, not clients
        x = sub[:, start:start + CHUNK].to(torch.float64, copy=True)
        x -= x.mean(dim=0, keepdim=True)
        gram += x @ x.mT
    values, vectors = torch.linalg.eigh(0.5 * (gram + gram.mT))
    top = float(values[-1].clamp_min(0.0))
    return top * vectors[:, -1] ** 2


@dataclass(frozen=True)
class DnC(Aggregator, kind="dnc"):
    """Divide-and-Conquer: remove ``ceil(c f)`` outliers along the top singular direction of random
    coordinate subsets, ``niters`` times; average the updates that survive every time.

    ``f`` (>= 0): the number of attackers assumed. ``c`` (> 0, default 1.0): the filtering fraction:
    each iteration keeps the ``n - ceil(c f)`` lowest scores (the authors' ``int(n - c f)``); a round
    needs ``n - ceil(c f) >= 1``. ``niters`` (>= 1, default 1). ``b`` (>= 1, default 10000): the
    coordinates sampled per iteration (without replacement; all ``d`` when ``b >= d``).
    ``b_fraction`` (in (0, 1] or None): sample ``ceil(b_fraction d)`` coordinates instead of ``b``.

    Defaults and references: ``b = 10000``, ``niters = 1``, ``c = 1`` as in the Blades
    re-implementation of the authors' rule; FLPoison samples ``b_fraction = 0.2`` with ``niters = 5``;
    the SignGuard authors' copy uses ``b = 1000`` and ``c = (n - 1) / n``.

    The coordinates are drawn from the batch's public seed (:mod:`secagg.seeding`; the rule is not
    secret), fresh each round and iteration. Equal scores keep the lower row index. Unweighted by
    example counts. An empty intersection (possible with ``niters > 1``) gives a zero update.
    Logs ``kept_count`` and ``removed_count``.
    """

    f: int = 1
    niters: int = 1
    b: int = 10000
    c: float = 1.0
    b_fraction: float | None = None

    def __post_init__(self) -> None:
        check_int("f", self.f, minimum=0)
        check_int("niters", self.niters, minimum=1)
        check_int("b", self.b, minimum=1)
        check_real("c", self.c, gt=0.0)
        if self.b_fraction is not None:
            check_real("b_fraction", self.b_fraction, gt=0.0, le=1.0)

    def subsample_size(self, dim: int) -> int:
        """How many coordinates one iteration samples for updates of ``dim`` coordinates."""
        b = self.b if self.b_fraction is None else math.ceil(self.b_fraction * dim)
        return min(b, dim)

    def kept(self, batch: UpdateBatch) -> torch.Tensor:
        """(n,) bool: the updates kept in every iteration."""
        u = batch.updates.detach()
        n, d = batch.num_clients, batch.dim
        keep_per_iter = n - math.ceil(self.c * self.f)
        if keep_per_iter < 1:
            raise UpdateError(f"f: DnC keeps n - ceil(c f) updates per iteration, which must be >= 1; "
                              f"got n={n}, f={self.f}, c={self.c}")
        b = self.subsample_size(d)
        good = torch.ones(n, dtype=torch.bool)
        for it in range(self.niters):  # a handful of iterations; each one is batched over clients
            if b == d:
                sub = u
            else:
                gen = torch_generator(batch.seed, "dnc", it)  # not secret: public round seed
                cols = torch.randperm(d, generator=gen)[:b].sort().values
                sub = u.index_select(1, cols)
            scores = outlier_scores(sub)
            lowest = torch.sort(scores, stable=True).indices[:keep_per_iter]
            chosen = torch.zeros(n, dtype=torch.bool)
            chosen[lowest] = True
            good &= chosen
        return good

    def aggregate(self, batch: UpdateBatch, state: AggState) -> Aggregate:
        u = batch.updates.detach()
        good = self.kept(batch)
        count = int(good.sum())
        coef = good.to(u.dtype) / max(count, 1)
        return Aggregate(update=coef @ u, state=dict(state),
                         metrics={"kept_count": float(count),
                                  "removed_count": float(batch.num_clients - count)})
