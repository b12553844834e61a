"""Membership inference against a trained (global) model, and the DP bound on its success.

Attacks (every score: higher = more likely a training member):

- :func:`loss_threshold_scores`: ``-loss`` of each example (Yeom et al. 2018, "Privacy Risk in Machine
  Learning: Analyzing the Connection to Overfitting").
- LiRA, the Likelihood Ratio Attack (Carlini et al. 2022, "Membership Inference Attacks From First
  Principles", IEEE S&P): :func:`logit_scaled_confidence` of the target and of K shadow models
  (:func:`train_shadow_models`), then per-example Gaussian fits (:func:`lira_scores`).

Metrics (:func:`roc_curve`, :func:`auc`, :func:`tpr_at_fpr`) are numpy re-implementations that match
``sklearn.metrics``; :func:`dp_tpr_bound` is the largest TPR any test can reach at a given FPR against
an (epsilon, delta)-DP mechanism (Kairouz, Oh, Viswanath 2015), and :func:`dp_bound_excess` and
:func:`empirical_epsilon` check a measured ROC against it at a stated confidence: by default the
threshold is chosen on one half of the examples and bounded once, with Clopper-Pearson intervals, on
the other (the auditing recipe of Jagielski et al. 2020; the maximum over thresholds of per-threshold
intervals on the same data is not a confidence bound).

Models are trained centrally by :func:`train_model`: one round of FedAvg with a single client holding
the whole training set, through the library's client trainers (plain SGD, or
:class:`~dp.dpsgd.DPSGDTrainer` for DP-SGD, whose record-level epsilon is reported), so the attacked
model is exactly the global model of that run.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from scipy import special, stats
from torch import nn

from secagg.data.federated import ClientData
from secagg.errors import ConfigError
from secagg.fedavg.config import ClientConfig
from secagg.fedavg.trainer import ClientTrainer, SGDTrainer
from secagg.layout import ParamLayout
from secagg.models import build_model
from secagg.seeding import derive_seed, numpy_rng
from secagg.validation import check_choice, check_int, check_real

__all__ = [
    "CORRECTIONS",
    "ShadowModels",
    "TrainedModel",
    "auc",
    "balanced_in_mask",
    "dp_bound_excess",
    "dp_tpr_bound",
    "empirical_epsilon",
    "holdout_split",
    "lira_scores",
    "logit_scaled_confidence",
    "loss_threshold_scores",
    "model_confidences",
    "plot_roc",
    "roc_curve",
    "tpr_at_fpr",
    "train_model",
    "train_shadow_models",
]

#: Below this many shadow models LiRA defaults to one global variance (Carlini et al. 2022, Sec. VI-A).
GLOBAL_VARIANCE_BELOW = 64


# ----------------------------------------------------------------------------------------- inputs


def _as_1d(field: str, values: np.ndarray | torch.Tensor | Sequence[float]) -> np.ndarray:
    arr = values.detach().cpu().numpy() if isinstance(values, torch.Tensor) else np.asarray(values)
    if arr.ndim != 1:
        raise ConfigError(f"{field}: must be one-dimensional, got shape {arr.shape}")
    return arr


def _scores_and_labels(scores: np.ndarray | Sequence[float],
                       is_member: np.ndarray | Sequence[bool]) -> tuple[np.ndarray, np.ndarray]:
    s = _as_1d("scores", scores).astype(np.float64)
    m = _as_1d("is_member", is_member)
    if s.shape != m.shape:
        raise ConfigError(f"is_member: must have the shape of scores {s.shape}, got {m.shape}")
    if not np.all(np.isfinite(s)):
        raise ConfigError("scores: must be finite")
    if m.dtype != bool:
        if not np.all((m == 0) | (m == 1)):
            raise ConfigError("is_member: must be booleans or 0/1")
        m = m.astype(bool)
    if m.all() or not m.any():
        raise ConfigError(f"is_member: needs >= 1 member and >= 1 non-member, got {int(m.sum())} of {m.size}")
    return s, m


# ----------------------------------------------------------------------------------------- scores


@torch.no_grad()
def _logits(model: nn.Module, x: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
    was_training = model.training
    model.eval()
    try:
        return torch.cat([model(x[i:i + batch_size]) for i in range(0, len(x), batch_size)])
    finally:
        model.train(was_training)


def _check_xy(x: torch.Tensor, y: torch.Tensor) -> None:
    if len(x) != len(y) or len(x) == 0:
        raise ConfigError(f"y: must have one label per example of x (>= 1), got {len(y)} for {len(x)}")


def loss_threshold_scores(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> np.ndarray:
    """Yeom et al. 2018: score = ``-cross_entropy(model(x), y)`` per example (nats), float64 shape (n,).

    Thresholding the score at ``-mean training loss`` is the paper's attack; the ROC sweeps all thresholds.
    The model is evaluated in eval mode, without gradients.
    """
    _check_xy(x, y)
    loss = nn.functional.cross_entropy(_logits(model, x).double(), y, reduction="none")
    return -loss.numpy()


def logit_scaled_confidence(logits: torch.Tensor | np.ndarray, y: torch.Tensor | np.ndarray) -> np.ndarray:
    """LiRA's statistic ``log p_y - log sum_{y' != y} p_y'`` of softmax(logits), float64 shape (n,).

    Computed stably as ``z_y - logsumexp_{y' != y} z_y'`` (the softmax normaliser cancels), so it stays
    finite when ``p_y`` rounds to 0 or 1 (Carlini et al. 2022, Sec. IV-B: the logit of the confidence
    is approximately Gaussian across training runs). ``logits`` (n, classes >= 2), ``y`` (n,) ints.
    """
    z = torch.as_tensor(logits).detach().cpu().double()
    labels = torch.as_tensor(y).detach().cpu().long()
    if z.ndim != 2 or z.shape[1] < 2:
        raise ConfigError(f"logits: must have shape (n, classes >= 2), got {tuple(z.shape)}")
    if labels.shape != (z.shape[0],):
        raise ConfigError(f"y: must have shape ({z.shape[0]},), got {tuple(labels.shape)}")
    if labels.numel() and (labels.min() < 0 or labels.max() >= z.shape[1]):
        raise ConfigError(f"y: labels must be in [0, {z.shape[1] - 1}]")
    if not torch.isfinite(z).all():
        raise ConfigError("logits: must be finite")
    idx = labels.unsqueeze(1)
    correct = z.gather(1, idx).squeeze(1)
    others = torch.logsumexp(z.scatter(1, idx, -math.inf), dim=1)
    return (correct - others).numpy()


def model_confidences(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> np.ndarray:
    """:func:`logit_scaled_confidence` of ``model`` (eval mode, no gradients) on ``(x, y)``."""
    _check_xy(x, y)
    return logit_scaled_confidence(_logits(model, x), y)


# --------------------------------------------------------------------------------------- training


@dataclass(frozen=True)
class TrainedModel:
    """A trained model and its record-level DP epsilon at ``delta`` (``math.inf`` without DP)."""

    model: nn.Module
    epsilon: float
    delta: float | None


def train_model(model_name: str, x: torch.Tensor, y: torch.Tensor, *, num_classes: int,
                config: ClientConfig, trainer: ClientTrainer | None = None, seed: int) -> TrainedModel:
    """Train a fresh ``model_name`` on ``(x, y)``: one FedAvg round with one client holding all the data.

    ``trainer`` defaults to plain SGD (:class:`~secagg.fedavg.trainer.SGDTrainer`); pass a
    :class:`~dp.dpsgd.DPSGDTrainer` (with ``batch_size``/``epochs`` equal to ``config``'s) for DP-SGD,
    whose epsilon (one participation over ``len(x)`` examples) is returned. Initialisation and training
    randomness derive from ``seed``; the result is the global model after that round (server_lr 1).
    """
    _check_xy(x, y)
    check_int("num_classes", num_classes, minimum=2)
    trainer = SGDTrainer() if trainer is None else trainer
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(seed, "membership", "init"))
        model = build_model(model_name, tuple(x.shape[1:]), num_classes)
    layout = ParamLayout.from_module(model)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    update = trainer.train(model, state, ClientData(x, y), config, layout,
                           seed=derive_seed(seed, "membership", "train"), client_id=0)
    new = layout.unflatten(layout.flatten(state) + update.delta)
    state.update(new)
    model.load_state_dict(state)
    model.eval()
    eps = trainer.epsilon_after({0: 1}, {0: len(x)})
    delta = getattr(trainer, "delta", None) if eps is not None else None
    return TrainedModel(model, math.inf if eps is None else float(eps), delta)


@dataclass(frozen=True)
class ShadowModels:
    """K shadow models and the pool they were trained on: ``in_mask[k, i]`` is True iff example ``i``
    of the pool was in shadow ``k``'s training set; ``confidences[k, i]`` is shadow ``k``'s
    :func:`logit_scaled_confidence` on pool example ``i``."""

    models: tuple[nn.Module, ...]
    in_mask: np.ndarray
    confidences: np.ndarray


def balanced_in_mask(num_shadows: int, num_examples: int, *, seed: int) -> np.ndarray:
    """(K, N) bool mask in which every example is IN for exactly ``floor(K / 2)`` shadows, chosen at
    random per example (as in Carlini et al.'s code), so each shadow sees about half the pool."""
    k = check_int("num_shadows", num_shadows, minimum=2)
    n = check_int("num_examples", num_examples, minimum=2)
    rng = numpy_rng(seed, "membership", "shadow-mask")  # not secret: simulation
    order = rng.uniform(size=(k, n)).argsort(axis=0)
    return order < k // 2


def train_shadow_models(pool_x: torch.Tensor, pool_y: torch.Tensor,
                        train_fn: Callable[[torch.Tensor, torch.Tensor, int], nn.Module], *,
                        num_shadows: int, seed: int) -> ShadowModels:
    """Train ``num_shadows`` (>= 2) shadow models, each on about half of the pool (LiRA's shadow step).

    ``train_fn(x, y, seed)`` must train like the target (same architecture and procedure). The
    in/out assignment is :func:`balanced_in_mask` (each example IN for exactly half of the shadows,
    rounded down), so the online attack has IN and OUT fits for every example.
    """
    _check_xy(pool_x, pool_y)
    mask = balanced_in_mask(num_shadows, len(pool_x), seed=seed)
    models, confs = [], []
    for k in range(num_shadows):
        idx = torch.from_numpy(np.flatnonzero(mask[k]))
        model = train_fn(pool_x[idx], pool_y[idx], derive_seed(seed, "membership", "shadow", k))
        models.append(model)
        confs.append(model_confidences(model, pool_x, pool_y))
    return ShadowModels(tuple(models), mask, np.stack(confs))


# ------------------------------------------------------------------------------------------- LiRA


def _fit(conf: np.ndarray, mask: np.ndarray, which: str,
         global_variance: bool) -> tuple[np.ndarray, np.ndarray]:
    """Per-example mean and std of ``conf[k, i]`` over the shadows ``k`` with ``mask[k, i]``."""
    counts = mask.sum(axis=0)
    need = 1 if global_variance else 2
    if counts.min() < need:
        raise ConfigError(f"in_mask: every example needs >= {need} {which} shadow model(s) "
                          f"({'global' if global_variance else 'per-example'} variance), "
                          f"got {int(counts.min())}")
    mean = np.where(mask, conf, 0.0).sum(axis=0) / counts
    resid = np.where(mask, conf - mean, 0.0) ** 2
    if global_variance:  # pooled within-example variance: one sigma for every example
        dof = max(int(counts.sum() - counts.size), 1)
        std = np.full(conf.shape[1], math.sqrt(resid.sum() / dof))
    else:
        std = np.sqrt(resid.sum(axis=0) / (counts - 1))
    return mean, np.maximum(std, 1e-12)


def lira_scores(target_conf: np.ndarray, shadow_confs: np.ndarray, in_mask: np.ndarray, *,
                online: bool = True, global_variance: bool | None = None) -> np.ndarray:
    """LiRA membership scores (Carlini et al. 2022, Algorithm 1), float64 shape (N,), higher = member.

    ``target_conf`` (N,) and ``shadow_confs`` (K, N) are :func:`logit_scaled_confidence` values;
    ``in_mask`` (K, N) says which shadows trained on which example. Per example, Gaussians are fitted
    to the OUT confidences (and, online, to the IN ones). Online: score = ``log N(c; mu_in, s_in^2) -
    log N(c; mu_out, s_out^2)`` (the likelihood ratio). Offline: score = ``log Pr[Z < c]``, ``Z ~
    N(mu_out, s_out^2)`` (the one-sided test against OUT only). ``global_variance`` (one std per
    side, pooled over examples: the paper's choice for few shadows) defaults to ``K < 64``.

    The target's membership must be independent of ``in_mask``. Leave-one-out evaluation over a
    :func:`balanced_in_mask` breaks this (the other models then have one IN fewer exactly where the
    target is IN, which biases the online ratio against members): train targets separately.
    """
    t = _as_1d("target_conf", target_conf).astype(np.float64)
    conf = np.asarray(shadow_confs, dtype=np.float64)
    mask = np.asarray(in_mask)
    if conf.ndim != 2 or conf.shape[1] != t.size:
        raise ConfigError(f"shadow_confs: must have shape (K, {t.size}), got {conf.shape}")
    if mask.shape != conf.shape or mask.dtype != bool:
        raise ConfigError(f"in_mask: must be a bool array of shape {conf.shape}, "
                          f"got {mask.dtype} {mask.shape}")
    if not (np.all(np.isfinite(conf)) and np.all(np.isfinite(t))):
        raise ConfigError("shadow_confs/target_conf: must be finite")
    if global_variance is None:
        global_variance = conf.shape[0] < GLOBAL_VARIANCE_BELOW
    mu_out, s_out = _fit(conf, ~mask, "OUT", global_variance)
    if not online:
        return special.log_ndtr((t - mu_out) / s_out)
    mu_in, s_in = _fit(conf, mask, "IN", global_variance)
    return stats.norm.logpdf(t, mu_in, s_in) - stats.norm.logpdf(t, mu_out, s_out)


# ---------------------------------------------------------------------------------------- metrics


def roc_curve(scores: np.ndarray | Sequence[float],
              is_member: np.ndarray | Sequence[bool]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(fpr, tpr, thresholds)``: one point per distinct score, predicting member iff ``score >=
    threshold``, from ``(0, 0)`` at threshold ``+inf`` to ``(1, 1)``. Equals
    ``sklearn.metrics.roc_curve(is_member, scores, drop_intermediate=False)``.
    """
    s, m = _scores_and_labels(scores, is_member)
    order = np.argsort(-s, kind="mergesort")
    s, m = s[order], m[order]
    last = np.r_[np.flatnonzero(np.diff(s)), s.size - 1]  # last index of each distinct score
    tps = np.cumsum(m)[last]
    fps = (last + 1) - tps
    tpr = np.r_[0.0, tps / m.sum()]
    fpr = np.r_[0.0, fps / (~m).sum()]
    return fpr, tpr, np.r_[np.inf, s[last]]


def auc(scores: np.ndarray | Sequence[float], is_member: np.ndarray | Sequence[bool]) -> float:
    """Area under :func:`roc_curve` (trapezoids, so tied scores count 1/2): ``roc_auc_score``."""
    fpr, tpr, _ = roc_curve(scores, is_member)
    return float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2))


def tpr_at_fpr(scores: np.ndarray | Sequence[float], is_member: np.ndarray | Sequence[bool],
               fpr: float) -> float:
    """Largest TPR of any threshold whose FPR is <= ``fpr`` in [0, 1] (the LiRA paper's low-FPR metric).

    With ``n`` non-members the smallest non-zero FPR is ``1 / n``: below it this is the TPR at FPR 0.
    """
    target = check_real("fpr", fpr, ge=0.0, le=1.0)
    f, t, _ = roc_curve(scores, is_member)
    return float(t[f <= target + 1e-12].max())


# ------------------------------------------------------------------------------------------ DP bound


def dp_tpr_bound(fpr: float, epsilon: float, delta: float) -> float:
    """Largest TPR at ``fpr`` of any membership test against an (epsilon, delta)-DP mechanism.

    ``min(1, e^eps * fpr + delta, 1 - e^-eps * (1 - delta - fpr))``: the two inequalities of the
    hypothesis-testing characterisation of DP (Kairouz, Oh, Viswanath 2015, "The Composition Theorem
    for Differential Privacy", Thm 2.1: ``P_FA + e^eps P_MD >= 1 - delta`` and ``e^eps P_FA + P_MD >=
    1 - delta``, with ``P_FA = fpr`` and ``P_MD = 1 - tpr``). ``fpr``, ``delta`` in [0, 1]; ``epsilon``
    >= 0 in nats (``math.inf`` gives 1).
    """
    f = check_real("fpr", fpr, ge=0.0, le=1.0)
    d = check_real("delta", delta, ge=0.0, le=1.0)
    if not (isinstance(epsilon, int | float) and not isinstance(epsilon, bool) and epsilon == math.inf):
        check_real("epsilon", epsilon, ge=0.0)
    if epsilon == math.inf:
        return 1.0
    e = float(epsilon)
    return float(min(1.0, math.exp(e) * f + d, 1.0 - math.exp(-e) * (1.0 - d - f)))


#: How :func:`dp_bound_excess` and :func:`empirical_epsilon` turn per-threshold intervals into one bound.
CORRECTIONS = ("holdout", "uniform")


def _clopper_pearson(tp: np.ndarray, fp: np.ndarray, n_pos: int, n_neg: int,
                     alpha: float) -> tuple[np.ndarray, np.ndarray]:
    """One-sided Clopper-Pearson bounds, each failing with probability <= ``alpha``: (tpr_lo, fpr_hi)."""
    tpr_lo = np.where(tp > 0, stats.beta.ppf(alpha, tp, n_pos - tp + 1), 0.0)
    fpr_hi = np.where(fp < n_neg, stats.beta.ppf(1 - alpha, fp + 1, n_neg - fp), 1.0)
    return tpr_lo, fpr_hi


def _epsilon_forbidden(tpr_lo: np.ndarray, fpr_hi: np.ndarray, delta: float) -> np.ndarray:
    """The largest epsilon :func:`dp_tpr_bound` forbids at each (tpr_lo, fpr_hi); may be <= 0 or -inf."""
    with np.errstate(divide="ignore"):
        first = np.log(np.maximum(tpr_lo - delta, 0.0) / fpr_hi)  # fpr_hi > 0 always
        second = np.log(np.maximum(1.0 - delta - fpr_hi, 0.0) / (1.0 - tpr_lo))  # tpr_lo < 1 always
    return np.maximum(first, second)


def _counts(scores: np.ndarray, is_member: np.ndarray,
            thresholds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(true positives, false positives) of ``score >= t`` for each ``t`` in ``thresholds``."""
    pos, neg = np.sort(scores[is_member]), np.sort(scores[~is_member])
    tp = pos.size - np.searchsorted(pos, thresholds, side="left")
    fp = neg.size - np.searchsorted(neg, thresholds, side="left")
    return tp.astype(np.float64), fp.astype(np.float64)


def holdout_split(is_member: np.ndarray | Sequence[bool]) -> np.ndarray:
    """The selection half of :func:`empirical_epsilon`'s held-out split: bool mask, True = selection.

    Deterministic and data-blind: within members and within non-members separately, in index order,
    the 1st, 3rd, 5th, ... example selects and the 2nd, 4th, ... evaluates, so both halves keep the
    class balance. It looks only at ``is_member``, never at scores, so a threshold chosen on one half
    is independent of the other half's outcomes (the trials being independent).
    """
    m = _as_1d("is_member", is_member).astype(bool)
    sel = np.zeros(m.shape, dtype=bool)
    for cls in (m, ~m):
        where = np.flatnonzero(cls)
        sel[where[0::2]] = True
    return sel


def _audit_bounds(scores: np.ndarray | Sequence[float], is_member: np.ndarray | Sequence[bool], delta: float,
                  confidence: float, correction: str) -> tuple[np.ndarray, np.ndarray]:
    """(tpr_lo, fpr_hi) over the audited threshold(s), all holding together with prob. >= ``confidence``."""
    conf = check_real("confidence", confidence, gt=0.0, lt=1.0)
    check_choice("correction", correction, CORRECTIONS)
    s, m = _scores_and_labels(scores, is_member)
    # Each threshold needs a lower bound on TPR and an upper bound on FPR at once: alpha/2 each (union bound).
    half_alpha = (1.0 - conf) / 2
    if correction == "uniform":
        # One-sided DKW with Massart's constant, P(sup_t (F_n - F) > e) <= exp(-2 n e^2) for exp(..) <= 1/2:
        # bands that hold for every threshold at once, so the maximum over thresholds is a valid bound.
        fpr, tpr, _ = roc_curve(s, m)
        n_pos, n_neg = int(m.sum()), int((~m).sum())
        log_term = math.log(1.0 / half_alpha)  # half_alpha < 1/2: Massart's condition holds
        tpr_lo = np.maximum(tpr - math.sqrt(log_term / (2 * n_pos)), 0.0)
        fpr_hi = np.minimum(fpr + math.sqrt(log_term / (2 * n_neg)), 1.0)  # > 0: the band is positive
        return tpr_lo, fpr_hi
    sel = holdout_split(m)
    if min(int((sel & m).sum()), int((~sel & m).sum()), int((sel & ~m).sum()), int((~sel & ~m).sum())) < 1:
        raise ConfigError(f"is_member: the held-out split needs >= 2 members and >= 2 non-members, got "
                          f"{int(m.sum())} and {int((~m).sum())}")
    s_sel, m_sel, s_ev, m_ev = s[sel], m[sel], s[~sel], m[~sel]
    # Selection half: the threshold whose own (equally conservative) bound is largest; ties -> the highest.
    thresholds = roc_curve(s_sel, m_sel)[2]
    tp, fp = _counts(s_sel, m_sel, thresholds)
    lo, hi = _clopper_pearson(tp, fp, int(m_sel.sum()), int((~m_sel).sum()), half_alpha)
    best = thresholds[int(np.argmax(_epsilon_forbidden(lo, hi, delta)))]
    # Evaluation half: one Clopper-Pearson pair at that fixed threshold, hence a plain (1 - alpha) bound.
    tp, fp = _counts(s_ev, m_ev, np.array([best]))
    return _clopper_pearson(tp, fp, int(m_ev.sum()), int((~m_ev).sum()), half_alpha)


def dp_bound_excess(scores: np.ndarray | Sequence[float], is_member: np.ndarray | Sequence[bool],
                    epsilon: float, delta: float, *, confidence: float = 0.95,
                    correction: str = "holdout") -> float:
    """How far a measured ROC provably exceeds :func:`dp_tpr_bound`; > 0 refutes (epsilon, delta)-DP.

    ``tpr_lo - dp_tpr_bound(fpr_hi, epsilon, delta)`` at the threshold(s) of :func:`empirical_epsilon`
    (same ``confidence``, ``correction``; the maximum over thresholds for ``"uniform"``), so a value > 0
    happens with probability <= ``1 - confidence`` when the mechanism is (epsilon, delta)-DP, and
    ``dp_bound_excess(..., e, delta) > 0`` iff ``empirical_epsilon(..., delta) > e``. A value <= 0 means
    no proven violation; its size is not a margin (the audited threshold need not be the tightest).
    """
    d = check_real("delta", delta, ge=0.0, le=1.0)
    tpr_lo, fpr_hi = _audit_bounds(scores, is_member, d, confidence, correction)
    bound = np.array([dp_tpr_bound(float(f), epsilon, d) for f in fpr_hi])
    return float((tpr_lo - bound).max())


def empirical_epsilon(scores: np.ndarray | Sequence[float], is_member: np.ndarray | Sequence[bool],
                      delta: float, *, confidence: float = 0.95, correction: str = "holdout") -> float:
    """A ``confidence`` lower bound (nats, >= 0) on the mechanism's epsilon at ``delta``, from this attack.

    At a threshold with one-sided bounds ``tpr_lo <= TPR`` and ``fpr_hi >= FPR`` the mechanism's epsilon
    is at least ``max(log((tpr_lo - delta) / fpr_hi), log((1 - delta - fpr_hi) / (1 - tpr_lo)))`` (the
    inequalities of :func:`dp_tpr_bound`). Taking the largest such value over all thresholds of the same
    data, each at ``confidence``, is NOT a ``confidence`` bound (multiple comparisons: on scores
    independent of membership, 1000 examples, it is > 0 in 16-21% of trials at 95%). So:

    - ``correction="holdout"`` (default; the auditing practice of Jagielski, Ullman, Oprea 2020,
      "Auditing Differentially Private Machine Learning: How Private is Private SGD?", and Nasr et al.
      2021, "Adversary Instantiation: Lower Bounds for Differentially Private Machine Learning": choose
      the test on data disjoint from the data that bounds it). :func:`holdout_split` splits the examples
      in two; the threshold maximizing this bound on the selection half is fixed, then bounded once on
      the evaluation half with Clopper-Pearson intervals, ``alpha / 2`` each (union bound), ``alpha = 1 -
      confidence``. Needs >= 2 members and >= 2 non-members.
    - ``correction="uniform"``: all examples, every threshold, with one-sided Dvoretzky-Kiefer-Wolfowitz
      bands (Massart 1990 constant) at ``alpha / 2`` per class, which hold for all thresholds at once.
      Weaker at low FPR (the band is additive, ~``sqrt(log(2 / alpha) / 2n)``).

    A value above the claimed epsilon refutes the claim (equivalently :func:`dp_bound_excess` > 0).
    """
    d = check_real("delta", delta, ge=0.0, le=1.0)
    tpr_lo, fpr_hi = _audit_bounds(scores, is_member, d, confidence, correction)
    return float(max(_epsilon_forbidden(tpr_lo, fpr_hi, d).max(), 0.0))


# -------------------------------------------------------------------------------------------- plot


def plot_roc(curves: Mapping[str, tuple[np.ndarray, np.ndarray]], path: str | Path, *,
             bounds: Mapping[str, tuple[float, float]] | None = None, title: str | None = None,
             min_fpr: float = 1e-3, colors: Mapping[str, str] | None = None) -> Path:
    """Save ROC curves on log-log axes (as the LiRA paper draws them) to ``path`` (PNG).

    ``curves`` maps a label to ``(fpr, tpr)`` (e.g. from :func:`roc_curve`); ``bounds`` maps a label to
    ``(epsilon, delta)``, drawn dashed as :func:`dp_tpr_bound`. Axes span ``[min_fpr, 1]``; the
    diagonal is chance; ``colors`` optionally maps curve or bound labels to matplotlib colors (to pair
    a DP model's curve with its bound). Returns the path written.
    """
    check_real("min_fpr", min_fpr, gt=0.0, lt=1.0)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(path)
    fig, ax = plt.subplots(figsize=(5.5, 5.0))
    grid = np.logspace(math.log10(min_fpr), 0, 200)
    ax.plot(grid, grid, color="0.6", lw=1, ls=":", label="chance")
    for label, (eps, delta) in (bounds or {}).items():
        ax.plot(grid, [dp_tpr_bound(float(g), eps, delta) for g in grid], ls="--", lw=1.2, label=label,
                color=(colors or {}).get(label))
    for label, (fpr, tpr) in curves.items():
        f, t = np.asarray(fpr), np.asarray(tpr)
        ax.plot(np.maximum(f, min_fpr / 2), np.maximum(t, min_fpr / 2), lw=1.5, label=label,
                color=(colors or {}).get(label))
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(min_fpr, 1)
    ax.set_ylim(min_fpr, 1)
    ax.set_xlabel("False positive rate")
    ax.set_ylabel("True positive rate")
    if title:
        ax.set_title(title)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out
