"""FLAME (Nguyen et al., USENIX Security 2022, "FLAME: Taming Backdoors in Federated Learning").

Three steps against backdoors, each round (the paper's Algorithm 1):

1. *Filter.* Cluster the updates with HDBSCAN on their pairwise cosine distances
   ``1 - cos(u_i, u_j)``, with ``min_cluster_size = n // 2 + 1``, ``min_samples = 1`` and a single
   cluster allowed. No cluster can then hold fewer than a majority, so there is at most one
   cluster: the updates in it are kept, the rest (HDBSCAN's noise) dropped. Backdoored updates
   that point somewhere else than the honest majority are dropped.
2. *Clip.* ``S_t`` = the median of the L2 norms of *all* ``n`` updates (the paper's median of the
   distances ``||W_i - G_{t-1}||``); each kept update is scaled to norm at most ``S_t``.
3. *Average and smooth.* The plain mean of the clipped kept updates, plus Gaussian noise of
   standard deviation ``sigma = lambda * S_t`` per coordinate (the paper: ``lambda = 0.001`` for
   image classification).

The noise is part of the *defence* (it smooths the model so that a backdoor that survived the
filter and the clipping is washed out); it is not differential privacy and claims none.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from secagg.aggregation.base import Aggregate, Aggregator, AggState, UpdateBatch
from secagg.aggregation.columns import centred_gram
from secagg.aggregation.similarity import cosine_from_gram, cosine_similarities
from secagg.crypto.normal import secret_normal
from secagg.errors import ConfigError
from secagg.seeding import torch_generator
from secagg.validation import check_choice, check_real

CLUSTER_ON = ("models", "updates")


def majority_cluster(cosine: torch.Tensor, resolution: float = 0.0) -> torch.Tensor:
    """(n,) bool: the members of the HDBSCAN cluster of the updates whose (n, n) cosine similarity
    matrix is ``cosine`` (distance ``1 - cos``, precomputed; ``min_cluster_size = n // 2 + 1``,
    ``min_samples = 1``, ``allow_single_cluster=True``, as the paper and FLPoison configure it).

    Every cluster then holds a strict majority, so there is at most one. With fewer than 3 updates
    there is no majority to find and every update is kept. Distances at most ``resolution`` (the
    rounding error of the cosines) count as 0: updates that point the same way are then exact
    duplicates to HDBSCAN, instead of being told apart by rounding noise, which depends on the row
    order.
    """
    n = int(cosine.shape[0])
    if n < 3:
        return torch.ones(n, dtype=torch.bool)
    from sklearn.cluster import HDBSCAN  # imported here: scikit-learn is slow to import

    dist = (1.0 - cosine).clamp_(min=0.0)
    dist = torch.where(dist <= resolution, 0.0, dist).numpy().copy()
    np.fill_diagonal(dist, 0.0)
    labels = HDBSCAN(min_cluster_size=n // 2 + 1, min_samples=1, metric="precomputed",
                     allow_single_cluster=True, copy=True).fit(dist).labels_
    return torch.from_numpy(labels >= 0)


@dataclass(frozen=True)
class FLAME(Aggregator, kind="flame"):
    """FLAME: HDBSCAN cosine filtering, clipping to the median norm, mean, Gaussian smoothing.

    Rule, for updates ``u_1..u_n`` from the global model ``G`` (unweighted by example counts, as the
    paper averages models): ``K`` = the HDBSCAN majority cluster on ``1 - cos(W_i, W_j)`` between the
    clients' models ``W_i = G + u_i`` (:func:`majority_cluster`);
    ``S = median_i ||u_i||`` over all ``n`` (the mean of the two middle norms for even ``n``, as
    numpy's median in FLPoison); ``G = mean_{i in K} u_i min(1, S / ||u_i||) + N(0, (lambda S)^2 I)``.
    An empty cluster (HDBSCAN calls every update noise) leaves ``G`` the noise alone: no client
    is trusted. Before the noise no coordinate direction can carry more than ``S``: ``||G - noise||
    <= S``.

    ``noise_lambda`` (>= 0, default 0.001, the paper's value for image classification; 0 turns the
    smoothing off): the noise's standard deviation per coordinate relative to ``S``.

    ``secret_noise`` (default True): draw the noise from the OS CSPRNG
    (:func:`~secagg.crypto.normal.secret_normal`), so that no one, the attacker included, can predict
    the smoothing and pre-compensate it. The noise's purpose is defence, so it must not be
    predictable in a deployment (:meth:`check_deployable` refuses ``False``). ``False`` draws it
    from the batch's public seed (:mod:`secagg.seeding`), for simulations that must
    reproduce to the last digit.

    ``cluster_on``: ``"models"`` (default: the paper's Algorithm 1 and FLPoison cluster the local
    models ``W_i``; the batch must carry :attr:`~secagg.aggregation.UpdateBatch.global_model`, which
    the FedAvg driver, ``secagg serve`` and the Flower strategy pass) or ``"updates"`` (the cosines of
    the updates ``W_i - G``, as some re-implementations do). They differ in what they see:
    ``1 - cos(W_i, W_j)`` is about ``||u_i - u_j||^2 / (2 ||G||^2)`` (less the part along ``G``), so
    the models' clustering separates updates by their size and their direction together, and a
    boosted or simply larger poisoned update stands out; the cosines of updates see directions only,
    and with diverse honest updates (non-IID data) they left the attackers in the majority cluster
    (measured: digits, Dirichlet 0.3, 4 of 20 clients running a scaled backdoor: success 0.66 at
    round 12 clustering updates, 0.0 clustering models). The models' Gram matrix is accumulated in
    float64 (:func:`~secagg.aggregation.columns.centred_gram`): their cosines are all close to 1 and
    float32 products would lose the differences. FLPoison scales its noise by each layer's parameter
    standard deviation (``gamma = 1.2e-5``); the paper and this rule use ``lambda * S`` for every
    coordinate.

    No differential privacy: :meth:`claims_dp` is False and :meth:`epsilon_after` None.
    Logs ``kept_count``, ``dropped_count``, ``clip_norm`` (``S``), ``clipped_count`` (kept updates
    that were scaled down) and ``noise_std``.
    """

    noise_lambda: float = 0.001
    secret_noise: bool = True
    cluster_on: str = "models"

    def __post_init__(self) -> None:
        check_real("noise_lambda", self.noise_lambda, ge=0.0)
        check_choice("cluster_on", self.cluster_on, CLUSTER_ON)
        if not isinstance(self.secret_noise, bool):
            raise ConfigError(f"secret_noise: must be true or false, got {self.secret_noise!r}")

    def needs_global_model(self) -> bool:
        return self.cluster_on == "models"

    def cosines(self, batch: UpdateBatch) -> tuple[torch.Tensor, float]:
        """(n, n) float64 cosines of what is clustered, and the rounding error to treat as 0."""
        u = batch.updates.detach()
        if self.cluster_on == "updates":
            # the cosines are good to a few hundred ulps of the product's dtype (see cosine_similarities)
            ulp = torch.finfo(torch.float64 if u.dtype == torch.float64 else torch.float32).eps
            return cosine_similarities(u), 256 * ulp
        if batch.global_model is None:
            raise ConfigError("global_model: FLAME with cluster_on='models' compares the clients' models "
                              "(global weights + update) and the batch carries no global weights; the "
                              "FedAvg driver passes them (UpdateBatch.global_model), or use "
                              "cluster_on='updates'")
        centre = -batch.global_model.detach().to(device="cpu", dtype=torch.float64).numpy()
        return cosine_from_gram(centred_gram(u, centre)), 256 * torch.finfo(torch.float64).eps

    def check_deployable(self) -> None:
        if not self.secret_noise and self.noise_lambda > 0:
            raise ConfigError("secret_noise: FLAME's smoothing noise drawn from the public round seed "
                              "is predictable, so an attacker could pre-compensate it; a deployment "
                              "needs secret_noise=true")

    def noise(self, batch: UpdateBatch, std: float) -> torch.Tensor:
        """The (d,) smoothing noise of standard deviation ``std``, in the batch's dtype."""
        dtype = batch.updates.dtype
        if std == 0.0:
            return torch.zeros(batch.dim, dtype=dtype)
        if self.secret_noise:
            z = torch.from_numpy(secret_normal(batch.dim))
        else:  # not secret: public simulation randomness (secret_noise=False)
            z = torch.randn(batch.dim, generator=torch_generator(batch.seed, "flame-noise"),
                            dtype=torch.float64)
        return (z * std).to(dtype)

    def aggregate(self, batch: UpdateBatch, state: AggState) -> Aggregate:
        u = batch.updates.detach()
        n = batch.num_clients
        keep = majority_cluster(*self.cosines(batch))
        norms = torch.linalg.vector_norm(u, dim=1).to(torch.float64)
        clip = float(torch.quantile(norms, 0.5))  # the mean of the two middle norms for even n
        scale = torch.clamp(clip / norms.clamp_min(torch.finfo(torch.float64).tiny), max=1.0)
        kept = int(keep.sum())
        coef = torch.where(keep, scale, 0.0) / max(kept, 1)
        # one pass over the stack: clipping and averaging fused into one (n,) x (n, d) product
        update = coef.to(u.dtype) @ u
        std = self.noise_lambda * clip
        update = update + self.noise(batch, std)
        metrics = {"kept_count": float(kept), "dropped_count": float(n - kept), "clip_norm": clip,
                   "clipped_count": float((keep & (norms > clip)).sum()), "noise_std": std}
        return Aggregate(update=update, state=dict(state), metrics=metrics)
