"""scikit-learn's breast-cancer table (Wisconsin diagnostic): a real medical data set that ships offline.

569 tumours (fine-needle aspirates of breast masses, Wolberg, Street and Mangasarian, UCI 1995), each
described by 30 real-valued features: the mean, standard error and worst value of ten nucleus
measurements (radius in mm, texture, perimeter, area, smoothness, compactness, concavity, concave
points, symmetry, fractal dimension). Two classes, scikit-learn's coding: ``0`` = malignant (212),
``1`` = benign (357). Nothing is downloaded: the table lives inside scikit-learn.

**Split and scaling** (:func:`load_breast_cancer_split`). A seeded stratified train/test split, as for
digits (``test_fraction``). Every feature is then standardized, ``(x - mean) / std``, with the mean and
the (population) standard deviation of the *training* split only; the test split is scaled with those
same numbers, so its mean is close to 0 but not 0, and nothing about it leaks into training.

*What this means for a federation.* The per-feature mean and standard deviation are sum-type
statistics: a federation computes them in one secure-sum pre-round (each site sends ``n_i``,
``sum x`` and ``sum x^2`` per feature inside a secure sum; the server learns only the totals). In the
simulation they are computed from the pooled training split, which gives exactly the numbers that
pre-round would give. That pre-round is not differentially private: it releases 60 aggregate numbers
over the whole federation (no site's own statistics), and the DP accounting of training does not
cover it. Per-site standardization was rejected: it would map the same tumour to different inputs at
different sites, the pooled test set belongs to no site, and under the site split below (sites differ
by tumour size) scaling each site by its own statistics would erase the most predictive signal,
the absolute size, from every site's inputs.

**The site split** (:func:`site_partition`, the task's ``"natural"`` partition). Sites differ in case
mix: a screening centre sees small, mostly benign masses; a referral centre sees large, mostly
malignant ones. The split sorts the training tumours by their *mean radius* (mm) plus Gaussian noise
of ``noise`` times the radius' standard deviation (seeded), and cuts that order into ``num_clients``
contiguous chunks whose sizes differ by at most one: client 0 is the site with the smallest tumours,
the last client the one with the largest. The noise blurs the boundaries, so neighbouring sites' size
ranges overlap (as real catchment areas do) while every tumour is held by exactly one site. Because
size predicts malignancy, the split is label-skewed as well as feature-shifted, without a label ever
being used to make it. (It is a data-set-specific scheme: a general "sort by a covariate" partition
kind would belong in :mod:`secagg.data.partition`.)
"""

from __future__ import annotations

import numpy as np
import torch
from sklearn.datasets import load_breast_cancer
from sklearn.model_selection import train_test_split

from secagg.data.partition import Partition
from secagg.errors import DataError
from secagg.seeding import numpy_rng
from secagg.validation import check_int, check_real

FEATURES = 30
CLASSES = 2
#: the column the site split sorts by (feature 0 of scikit-learn's table, in mm)
SITE_FEATURE = "mean radius"
#: the default noise of the site split, in units of the mean radius' standard deviation
SITE_NOISE = 0.5

__all__ = ["CLASSES", "FEATURES", "SITE_FEATURE", "SITE_NOISE", "feature_names",
           "load_breast_cancer_split", "site_partition", "standardize"]


def feature_names() -> tuple[str, ...]:
    """The 30 feature names, in column order (``"mean radius"`` first)."""
    return tuple(str(n) for n in load_breast_cancer().feature_names)


def standardize(train: np.ndarray, test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(train, test)`` scaled per column by the *training* mean and population standard deviation
    (a constant training column is only centred). float32 out; the test split never enters the
    statistics."""
    train64 = np.asarray(train, dtype=np.float64)
    mean = train64.mean(axis=0)
    std = train64.std(axis=0)
    std = np.where(std > 0, std, 1.0)
    scale = lambda x: ((np.asarray(x, dtype=np.float64) - mean) / std).astype(np.float32)  # noqa: E731
    return scale(train), scale(test)


def load_breast_cancer_split(test_fraction: float = 0.2, *, seed: int = 0
                             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, np.ndarray]:
    """Stratified, seeded train/test split, standardized with training statistics only:
    ``(train_x, train_y, test_x, test_y, train_radius)``.

    ``x`` is float32 (n, 30) (features in scikit-learn's column order, each standardized by the
    training split's mean and standard deviation); ``y`` int64 (n,) in {0 = malignant, 1 = benign};
    ``train_radius`` float64 (n_train,) is each training tumour's raw mean radius in mm, the key of
    :func:`site_partition`. With the default ``test_fraction=0.2``: 455 train and 114 test rows.
    :class:`ConfigError` for ``test_fraction`` outside (0, 1).
    """
    check_real("test_fraction", test_fraction, gt=0.0, lt=1.0)
    bunch = load_breast_cancer()
    x = np.asarray(bunch.data, dtype=np.float64)
    y = np.asarray(bunch.target, dtype=np.int64)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=test_fraction, random_state=seed, stratify=y)
    radius = x_tr[:, list(bunch.feature_names).index(SITE_FEATURE)].copy()
    s_tr, s_te = standardize(x_tr, x_te)
    return (torch.from_numpy(s_tr), torch.from_numpy(y_tr), torch.from_numpy(s_te), torch.from_numpy(y_te),
            radius)


def site_partition(key: np.ndarray, num_clients: int, *, seed: int, noise: float = SITE_NOISE) -> Partition:
    """The site split: sites differ in case mix, ordered by ``key`` (the tumours' mean radius).

    Each example's score is ``key + noise * std(key) * N(0, 1)`` (seeded by ``seed``); examples are
    stable-sorted by score and the order is cut into ``num_clients`` contiguous chunks with
    :func:`numpy.array_split` (sizes differ by at most one). Client ``j`` gets the ``j``-th chunk, as a
    sorted index array: client 0 holds the smallest tumours. Every index in ``0 .. len(key) - 1`` is
    used exactly once. ``noise = 0`` sorts by ``key`` alone (ties in index order); larger values blur
    neighbouring sites into each other (``inf`` is not allowed; large values approach IID).

    :class:`DataError` if ``key`` is not a non-empty finite 1-D array or has fewer rows than
    ``num_clients``; :class:`ConfigError` for ``num_clients < 1`` or ``noise`` not a finite number >= 0.
    """
    key = np.asarray(key, dtype=np.float64)
    if key.ndim != 1 or key.size == 0 or not np.all(np.isfinite(key)):
        raise DataError(f"key: must be a non-empty finite 1-D array, got shape {key.shape}")
    check_int("num_clients", num_clients, minimum=1)
    check_real("noise", noise, ge=0.0)
    if key.size < num_clients:
        raise DataError(f"num_clients: {num_clients} sites need at least {num_clients} examples, "
                        f"got {key.size}")
    std = float(key.std())
    score = key + noise * (std if std > 0 else 1.0) * numpy_rng(seed, "breast-cancer-sites").standard_normal(
        key.size)
    order = np.argsort(score, kind="stable").astype(np.int64)
    return tuple(np.sort(part) for part in np.array_split(order, num_clients))

