"""SignGuard (Xu, Huang, Song and Lan, ICDCS 2022, "Byzantine-robust Federated Learning through
Collaborative Malicious Gradient Filtering").

Two filters run side by side on the round's updates, and only updates that pass both are used:

1. *Norm filter.* With ``M`` the median of the updates' L2 norms, keep ``u_i`` when
   ``L M < ||u_i|| < R M`` (the paper: ``L = 0.1``, ``R = 3.0``): drops scaled-up updates and
   near-zero ones (free riders, or attacks that hide in a tiny norm).
2. *Sign clustering.* On a random subset of the coordinates (10%), each update's fractions of
   positive, zero and negative entries, each divided by its maximum over the clients, form a
   3-feature point; the points are clustered (MeanShift in the paper) and the largest cluster kept.
   Sign-flipping, and most crafted attacks, shift these fractions.

The kept updates are clipped to norm ``M`` and averaged (plain mean).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from secagg.aggregation.base import Aggregate, Aggregator, AggState, UpdateBatch
from secagg.seeding import derive_seed, torch_generator
from secagg.validation import check_choice, check_real

CLUSTERINGS = ("meanshift", "dbscan", "kmeans")
SUBSETS = ("block", "random")


def sign_features(sub: torch.Tensor) -> np.ndarray:
    """(n, 3) float64: per row of the (n, m) ``sub``, the fractions of positive, zero and negative
    entries, each column divided by (its maximum + 1e-8) as both reference implementations do."""
    m = sub.shape[1]
    counts = torch.stack([(sub > 0).sum(dim=1), (sub == 0).sum(dim=1), (sub < 0).sum(dim=1)], dim=1)
    frac = counts.to(torch.float64) / m
    return (frac / (frac.max(dim=0).values + 1e-8)).numpy()


def largest_cluster(features: np.ndarray, method: str, seed: int) -> np.ndarray:
    """(n,) bool: the members of the largest cluster of ``features`` (ties: the lowest label).

    ``"meanshift"``: the authors' MeanShift (bandwidth from ``estimate_bandwidth`` with
    ``quantile=0.5, n_samples=50``; ``bin_seeding=True``, ``cluster_all=False``, so points far from
    every mode are noise). ``"dbscan"``: DBSCAN with ``eps=0.05, min_samples=2`` (the authors'
    alternative; FLPoison's default uses ``min_samples=3``). ``"kmeans"``: 2-means (FLPoison's third
    option). ``seed``: scikit-learn's ``random_state`` (public simulation randomness). Fewer than 3
    points: all kept (no majority to find). No cluster at all (every point noise): none kept.
    """
    n = features.shape[0]
    if n < 3:
        return np.ones(n, dtype=bool)
    from sklearn.cluster import DBSCAN, KMeans, MeanShift, estimate_bandwidth  # slow to import

    if method == "meanshift":
        bandwidth = estimate_bandwidth(features, quantile=0.5, n_samples=50, random_state=seed)
        # a zero bandwidth (over half the points coincide) is not accepted by MeanShift; a tiny one
        # clusters the coinciding points together, as the zero bandwidth means
        model = MeanShift(bandwidth=max(float(bandwidth), 1e-6), bin_seeding=True, cluster_all=False)
    elif method == "dbscan":
        model = DBSCAN(eps=0.05, min_samples=2)
    else:
        model = KMeans(n_clusters=2, random_state=seed, n_init=10)
    labels = model.fit(features).labels_
    valid = labels[labels >= 0]
    if valid.size == 0:
        return np.zeros(n, dtype=bool)
    counts = np.bincount(valid)
    return labels == int(np.argmax(counts))


@dataclass(frozen=True)
class SignGuard(Aggregator, kind="signguard"):
    """SignGuard: keep the updates that pass the norm filter *and* fall in the largest sign cluster;
    clip them to the median norm and average.

    Rule: ``M = median_i ||u_i||`` (the mean of the two middle norms for even ``n``, numpy's median
    as in both references' filter); ``S1 = {i: lower M < ||u_i|| < upper M}`` (strict, as both
    references); ``S2`` = the largest cluster of the sign features (:func:`sign_features`,
    :func:`largest_cluster`); output ``mean_{i in S1 & S2} u_i min(1, M / ||u_i||)``, or a zero
    update when no update passes both (logged, ``kept_count = 0``). Unweighted by example counts.

    ``lower`` (>= 0, default 0.1) and ``upper`` (> lower, default 3.0): the paper's ``L`` and ``R``.
    ``fraction`` (in (0, 1], default 0.1): the share of coordinates the sign statistics read,
    ``max(1, floor(fraction d))`` of them. ``subset``: ``"block"`` (default) a contiguous block at a
    random offset, as both the authors' code and FLPoison select it; ``"random"`` a uniform random
    subset, as the paper words it. ``clustering``: ``"meanshift"`` (default: the paper and the
    authors' code), ``"dbscan"`` (FLPoison's default) or ``"kmeans"``. Randomness (the coordinates,
    scikit-learn's ``random_state``) comes from the batch's public seed: the rule is not secret.

    Logs ``kept_count``, ``norm_rejected``, ``sign_rejected`` and ``clip_norm`` (``M``).
    """

    lower: float = 0.1
    upper: float = 3.0
    fraction: float = 0.1
    subset: str = "block"
    clustering: str = "meanshift"

    def __post_init__(self) -> None:
        check_real("lower", self.lower, ge=0.0)
        check_real("upper", self.upper, gt=self.lower)
        check_real("fraction", self.fraction, gt=0.0, le=1.0)
        check_choice("subset", self.subset, SUBSETS)
        check_choice("clustering", self.clustering, CLUSTERINGS)

    def coordinates(self, batch: UpdateBatch) -> torch.Tensor | slice:
        """The coordinates the sign statistics read this round (a slice for ``"block"``)."""
        d = batch.dim
        m = min(d, max(1, int(self.fraction * d)))
        gen = torch_generator(batch.seed, "signguard", "coordinates")  # not secret: public round seed
        if self.subset == "block":
            start = int(torch.randint(0, d - m + 1, (1,), generator=gen))
            return slice(start, start + m)
        return torch.randperm(d, generator=gen)[:m].sort().values

    def aggregate(self, batch: UpdateBatch, state: AggState) -> Aggregate:
        u = batch.updates.detach()
        n = batch.num_clients
        norms = torch.linalg.vector_norm(u, dim=1).to(torch.float64)
        med = float(torch.quantile(norms, 0.5))
        by_norm = (norms > self.lower * med) & (norms < self.upper * med)
        cols = self.coordinates(batch)
        feats = sign_features(u[:, cols] if isinstance(cols, slice) else u.index_select(1, cols))
        seed = derive_seed(batch.seed, "signguard", "cluster") % (1 << 32)
        by_sign = torch.from_numpy(largest_cluster(feats, self.clustering, seed))
        keep = by_norm & by_sign
        kept = int(keep.sum())
        scale = torch.clamp(med / norms.clamp_min(torch.finfo(torch.float64).tiny), max=1.0)
        coef = torch.where(keep, scale, 0.0) / max(kept, 1)
        # clipping and averaging fused into one (n,) x (n, d) product
        update = coef.to(u.dtype) @ u
        metrics = {"kept_count": float(kept), "norm_rejected": float(n - int(by_norm.sum())),
                   "sign_rejected": float(n - int(by_sign.sum())), "clip_norm": med}
        return Aggregate(update=update, state=dict(state), metrics=metrics)
