"""GAN-Leaks: membership inference against a released generator (Chen, Yu, Zhang, Fritz, "GAN-Leaks: A
Taxonomy of Membership Inference Attacks against Generative Models", CCS 2020, arXiv:1909.03935).

The *full black-box* attack (their Sec. 5.1 and ``attack_models/fbb.py``): the attacker can only draw
samples from the victim generator ``G``. It draws ``k`` of them, ``S = {G(z_1), ..., G(z_k)}``,
reconstructs a query ``x`` by its nearest generated sample, ``R(x | G) = argmin_{s in S} L(x, s)``, and
scores it by ``P(x in train) ~ exp(-L(x, R(x | G)))`` with ``L`` the Euclidean (L2) distance in pixel
space (the reference code uses scikit-learn's nearest neighbours, Euclidean, on images scaled to
[-1, 1]). A member should be closer to some generated sample than a non-member is. We return the
monotone equivalent ``score(x) = -min_{s in S} ||x - s||_2`` in the data's own [0, 1] scale (rescaling
both to [-1, 1] multiplies every distance by 2): higher = more likely a member, the convention of
:mod:`attacks.membership`, whose :func:`~attacks.membership.auc` and
:func:`~attacks.membership.tpr_at_fpr` measure it. The paper's optional calibration subtracts the
same distance under a reference generator trained on other data (``reference_samples`` here).

Evaluation (:func:`gan_leaks`): members are clients' training examples, non-members are examples
of the same training split that no client held (:func:`secagg.gan.task.gan_task_with_reserve`'s
``reserve``), so both come from one distribution and a score can only separate them by what the
generator learned from the members. ``k`` and the latent draws are seeded (simulation randomness
from :mod:`secagg.seeding`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from attacks.membership import auc, tpr_at_fpr
from secagg.errors import ConfigError
from secagg.seeding import torch_generator
from secagg.validation import check_int

__all__ = ["GANLeaksResult", "fbb_scores", "gan_leaks", "generate_samples"]

#: the false-positive rates the result reports the TPR at (the low-FPR regime of Carlini et al. 2022)
FPRS = (0.01, 0.1)


def generate_samples(generator: nn.Module, latent_dim: int, k: int, *, seed: int,
                     batch_size: int = 4096) -> torch.Tensor:
    """``k`` samples of ``generator`` (latents ~ N(0, I) of ``latent_dim``, seeded by ``seed``), no
    gradient: what a full black-box attacker can get from the released generator."""
    check_int("k", k, minimum=1)
    check_int("latent_dim", latent_dim, minimum=1)
    g = torch_generator(seed, "gan-leaks-latents")
    was = generator.training
    generator.train(False)
    try:
        with torch.no_grad():
            out = [generator(torch.randn(min(batch_size, k - i), latent_dim, generator=g))
                   for i in range(0, k, batch_size)]
    finally:
        generator.train(was)
    return torch.cat(out)


def _nearest(samples: torch.Tensor, queries: torch.Tensor, chunk: int) -> np.ndarray:
    s = samples.reshape(samples.shape[0], -1).to(torch.float64)
    q = queries.reshape(queries.shape[0], -1).to(torch.float64)
    if s.shape[1] != q.shape[1]:
        raise ConfigError(f"queries: must have the samples' shape {tuple(samples.shape[1:])}, got "
                          f"{tuple(queries.shape[1:])}")
    out = np.empty(q.shape[0])
    for i in range(0, q.shape[0], chunk):
        out[i:i + chunk] = torch.cdist(q[i:i + chunk], s).min(dim=1).values.numpy()
    return out


def fbb_scores(samples: torch.Tensor, queries: torch.Tensor, *,
               reference_samples: torch.Tensor | None = None, chunk: int = 256) -> np.ndarray:
    """The full black-box score of each query: ``-min_s ||x - s||_2`` over the generated ``samples``
    ((k, ...) like the queries (n, ...)); with ``reference_samples`` the calibrated score
    ``-(L(x, R(x | G)) - L(x, R(x | G_ref)))``. Higher = more likely a member. (n,) float64."""
    if samples.shape[0] == 0 or queries.shape[0] == 0:
        raise ConfigError("samples, queries: need at least one of each")
    dist = _nearest(samples, queries, chunk)
    if reference_samples is not None:
        dist = dist - _nearest(reference_samples, queries, chunk)
    return -dist


@dataclass(frozen=True)
class GANLeaksResult:
    """One attack run: ROC AUC (0.5 = chance), TPR at each FPR of :data:`FPRS` (``tpr_at``: fpr ->
    tpr), the member and non-member counts and ``k``; ``scores`` and ``is_member`` for ROC curves."""

    auc: float
    tpr_at: dict[float, float]
    members: int
    non_members: int
    k: int
    scores: np.ndarray
    is_member: np.ndarray


def gan_leaks(generator: nn.Module, latent_dim: int, members: torch.Tensor, non_members: torch.Tensor,
              *, k: int = 10_000, seed: int = 0,
              reference: tuple[nn.Module, int] | None = None) -> GANLeaksResult:
    """Run the full black-box attack on ``generator`` with ``k`` samples and measure it on ``members``
    (training examples) against ``non_members`` (same distribution, never trained on).
    ``reference``: (generator, latent_dim) of a reference model for the calibrated variant."""
    if members.shape[0] == 0 or non_members.shape[0] == 0:
        raise ConfigError(f"members, non_members: need at least one of each, got {members.shape[0]} "
                          f"and {non_members.shape[0]}")
    samples = generate_samples(generator, latent_dim, k, seed=seed)
    ref = None if reference is None else generate_samples(reference[0], reference[1], k, seed=seed + 1)
    queries = torch.cat([members, non_members])
    scores = fbb_scores(samples, queries, reference_samples=ref)
    is_member = np.r_[np.ones(members.shape[0], bool), np.zeros(non_members.shape[0], bool)]
    return GANLeaksResult(auc(scores, is_member), {f: tpr_at_fpr(scores, is_member, f) for f in FPRS},
                          int(members.shape[0]), int(non_members.shape[0]), k, scores, is_member)
