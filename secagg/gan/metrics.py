"""How good (and how collapsed) a generator is: mode coverage and a Frechet distance.

Both are measured through an *evaluator*: a small classifier trained once per task on the held-out
split (:func:`train_evaluator`; never on the clients' training data), as Inception is for FID.

* Mode coverage (:func:`mode_coverage`): label the N generated samples with the evaluator; ``p`` is
  the histogram of those labels over the K classes. ``modes_covered`` counts the classes whose share
  ``p_c`` is at least half the uniform share, ``p_c >= 1 / (2K)`` (a class the generator draws at
  least half as often as the data does); ``mode_kl`` is ``KL(p || uniform) = sum_c p_c ln(K p_c)`` in
  nats (``0 ln 0 = 0``): 0 for a perfectly balanced generator, ``ln K`` for one that draws a single
  class. A generator collapsed onto a few digits covers few modes and has a large KL.
* Frechet distance (:func:`frechet_distance`): fit a Gaussian (mean, covariance) to the evaluator's
  penultimate-layer features of the generated samples and one to the features of the held-out real
  samples; ``||mu_1 - mu_2||^2 + tr(S_1 + S_2 - 2 (S_1 S_2)^(1/2))``, the matrix square root by
  ``scipy.linalg.sqrtm`` keeping its real part, as FID does (Heusel et al., NeurIPS 2017). Squared
  feature units; 0 only when both fits coincide.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import scipy.linalg
import torch
from torch import nn

from secagg.errors import ConfigError
from secagg.validation import check_int

__all__ = ["Evaluator", "frechet_distance", "gaussian_fit", "mode_coverage", "train_evaluator"]


class Evaluator(nn.Module):
    """Flatten -> 128 -> ReLU -> ``feature_dim`` -> ReLU (the features) -> K logits."""

    def __init__(self, input_shape: tuple[int, ...], num_classes: int, feature_dim: int = 32) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(int(math.prod(input_shape)), 128), nn.ReLU(),
                                  nn.Linear(128, feature_dim), nn.ReLU())
        self.head = nn.Linear(feature_dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The penultimate-layer activations (n, feature_dim), no gradient."""
        with torch.no_grad():
            return self.body(x)

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """The predicted labels (n,), no gradient."""
        with torch.no_grad():
            return self(x).argmax(dim=1)


def train_evaluator(x: torch.Tensor, y: torch.Tensor, num_classes: int, *, seed: int,
                    steps: int = 400, lr: float = 3e-3, weight_decay: float = 1e-4) -> Evaluator:
    """The evaluator classifier, trained on ``(x, y)`` (the held-out split) from ``seed``.

    Full-batch Adam for ``steps`` steps; a function of its inputs only (torch's global RNG is forked
    around the initialisation), so every process of a run gets the same evaluator. Returned in
    evaluation mode.
    """
    check_int("steps", steps, minimum=1)
    if x.shape[0] != y.shape[0] or x.shape[0] == 0:
        raise ConfigError(f"evaluator: needs as many labels as examples (> 0), got {x.shape[0]} "
                          f"examples and {y.shape[0]} labels")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = Evaluator(tuple(x.shape[1:]), num_classes)
        opt = torch.optim.Adam(net.parameters(), lr=lr, weight_decay=weight_decay)
        for _ in range(steps):
            loss = nn.functional.cross_entropy(net(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    net.train(False)
    for p in net.parameters():
        p.requires_grad_(False)
    return net


def mode_coverage(labels: torch.Tensor | np.ndarray, num_classes: int) -> dict[str, float]:
    """``{"modes_covered", "mode_kl"}`` of generated samples labelled ``labels`` (ints in [0, K)).

    ``modes_covered``: the number of classes with share ``>= 1 / (2K)``; ``mode_kl``: KL(label
    histogram || uniform) in nats, in [0, ln K] (see the module docstring).
    """
    check_int("num_classes", num_classes, minimum=1)
    lab = np.asarray(labels.cpu() if isinstance(labels, torch.Tensor) else labels).astype(np.int64).ravel()
    if lab.size == 0:
        raise ConfigError("labels: need at least one generated sample")
    if lab.min() < 0 or lab.max() >= num_classes:
        raise ConfigError(f"labels: must be in [0, {num_classes}), got [{lab.min()}, {lab.max()}]")
    p = np.bincount(lab, minlength=num_classes) / lab.size
    nz = p > 0
    kl = float(np.sum(p[nz] * np.log(num_classes * p[nz])))
    # a tiny slack so a share of exactly 1 / (2K) (e.g. 5 of 100 with K = 10) counts
    covered = int(np.sum(p >= 1.0 / (2 * num_classes) - 1e-12))
    return {"modes_covered": float(covered), "mode_kl": max(kl, 0.0)}


def gaussian_fit(features: torch.Tensor | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(mean, covariance)`` of ``features`` (n, d) in float64 (covariance with n - 1; n >= 2)."""
    f = np.asarray(features, dtype=np.float64)
    if f.ndim != 2 or f.shape[0] < 2:
        raise ConfigError(f"features: need an (n, d) array with n >= 2, got shape {f.shape}")
    return f.mean(axis=0), np.cov(f, rowvar=False).reshape(f.shape[1], f.shape[1])


def frechet_distance(a: torch.Tensor | np.ndarray, b: torch.Tensor | np.ndarray) -> float:
    """The Frechet distance between Gaussian fits of feature sets ``a`` and ``b`` ((n, d), (m, d)).

    ``||mu_a - mu_b||^2 + tr(S_a + S_b - 2 sqrtm(S_a S_b))`` with the real part of ``sqrtm`` (its
    imaginary part is numerical noise for PSD products); clamped at 0 against rounding.
    """
    mu_a, s_a = gaussian_fit(a)
    mu_b, s_b = gaussian_fit(b)
    if mu_a.shape != mu_b.shape:
        raise ConfigError(f"features: both sets need the same width, got {mu_a.size} and {mu_b.size}")
    with warnings.catch_warnings():
        # a collapsed generator has a singular covariance: sqrtm warns, and its result is still usable
        warnings.simplefilter("ignore", scipy.linalg.LinAlgWarning)
        covmean = scipy.linalg.sqrtm(s_a @ s_b)
        if not np.all(np.isfinite(covmean)):
            # FID's remedy for a product sqrtm cannot take: offset both covariances slightly
            eps = 1e-6 * np.eye(s_a.shape[0])
            covmean = scipy.linalg.sqrtm((s_a + eps) @ (s_b + eps))
    covmean = np.real(covmean)
    value = float(np.sum((mu_a - mu_b) ** 2) + np.trace(s_a) + np.trace(s_b) - 2.0 * np.trace(covmean))
    return max(value, 0.0)
