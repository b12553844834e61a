"""Adaptive robust clipping (ARC) in front of any rule (Allouah, Guerraoui, Gupta, Jellouli, Rizk and
Stephan, "Boosting robustness by clipping gradients in distributed learning", 2024, arXiv:2405.14432)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch

from secagg.aggregation.base import Aggregate, Aggregator, AggState, UpdateBatch, Wrapper
from secagg.aggregation.columns import weighted_row_sum
from secagg.aggregation.mean import Mean
from secagg.errors import UpdateError
from secagg.validation import check_choice, check_int

ROUNDINGS = ("float", "exact")


def arc_clip_count(n: int, f: int, rounding: str = "float") -> int:
    """How many of ``n`` updates ARC clips for ``f`` assumed Byzantine: ``k = floor(2 (f / n) (n - f))``.

    ``rounding="float"`` evaluates it as ByzFL 0.0.11 does, ``int((2 * f / n) * (n - f))`` in IEEE
    double precision, which falls one short of the exact value for a few ``(n, f)`` (e.g. n = 121,
    f = 66: 59, not 60; 120 pairs up to n = 3000); ``"exact"`` is the integer ``2 f (n - f) // n``.
    """
    check_choice("rounding", rounding, ROUNDINGS)
    if rounding == "float":
        return int((2 * f / n) * (n - f))
    return (2 * f * (n - f)) // n


@dataclass(frozen=True)
class AdaptiveRobustClipping(Wrapper, kind="arc"):
    """Clip the ``k`` largest updates to the norm of the next largest, then aggregate with ``inner``.

    With ``k = floor(2 (f / n) (n - f))`` (:func:`arc_clip_count`) and ``tau`` the ``(k + 1)``-th largest
    L2 norm among the ``n`` updates, every update becomes ``u_i * min(1, tau / ||u_i||)``: the ``k`` largest
    are scaled down to norm ``tau`` (those whose norm equals ``tau`` are unchanged), the others are
    untouched. ``k = 0`` clips nothing. This is ByzFL's ``ARC`` pre-aggregator followed by ``inner``.

    ``f`` (>= 0): the number of Byzantine clients assumed; each round needs ``f < n`` (else
    :class:`~secagg.errors.UpdateError`; ByzFL also accepts ``f = n``, which clips nothing).
    ``rounding``: ``"float"`` (ByzFL's evaluation of ``k``, the default) or ``"exact"``; see
    :func:`arc_clip_count`. ``inner``: the rule that aggregates the clipped updates (default: the
    weighted :class:`Mean`; ByzFL's ``Average`` is the unweighted one).

    Privacy: ``keeps_sensitivity`` is False. The threshold ``tau`` is an order statistic of all the
    clients' norms, so adding or removing one client can move ``tau`` and change up to ``k + 1`` other
    rows: each clipped row depends on the other clients too, and an inner DP rule's per-row
    sensitivity would not hold. A DP rule inside is refused at construction.

    Computation: the n norms (``torch.linalg.vector_norm``, which accumulates in double on the CPU),
    then for a :class:`Mean` inside one weighted sum of the rows with the scales folded into the
    weights (:func:`~secagg.aggregation.columns.weighted_row_sum`: no clipped copy); any other
    inner rule gets the clipped stack. Both passes are memory-bound: reading the stack twice is the
    floor for this rule, as for ByzFL's (norms, then the mean). Logs ``clipped_count`` (rows whose
    norm exceeded ``tau``), ``clip_threshold`` (``tau``) and the inner rule's metrics under ``inner/``.
    """

    f: int = 1
    inner: Aggregator = field(default_factory=Mean)
    rounding: str = "float"
    keeps_sensitivity: ClassVar[bool] = False  # tau depends on every client's norm (see above)

    def __post_init__(self) -> None:
        check_int("f", self.f, minimum=0)
        check_choice("rounding", self.rounding, ROUNDINGS)
        super().__post_init__()

    def scales(self, updates: torch.Tensor) -> tuple[torch.Tensor, float]:
        """(n,) float64 scale factors ``min(1, tau / ||u_i||)`` and ``tau``, for an (n, d) stack."""
        n = updates.shape[0]
        if self.f >= n:
            raise UpdateError(f"f: ARC needs f < n, got f={self.f}, n={n}")
        # torch accumulates a float32 norm in double on the CPU; one memory-bound pass
        norms = torch.linalg.vector_norm(updates.detach(), dim=1).to(device="cpu", dtype=torch.float64)
        k = arc_clip_count(n, self.f, self.rounding)
        tau = torch.sort(norms).values[n - k - 1]
        over = norms > tau
        scale = torch.ones(n, dtype=torch.float64)
        scale[over] = tau / norms[over]
        return scale, float(tau)

    def clip(self, updates: torch.Tensor) -> torch.Tensor:
        """The clipped (n, d) stack (a new tensor; ``updates`` is not modified)."""
        scale, _ = self.scales(updates)
        return updates * scale.to(device=updates.device, dtype=updates.dtype)[:, None]

    def aggregate(self, batch: UpdateBatch, state: AggState) -> Aggregate:
        u = batch.updates
        scale, tau = self.scales(u)
        metrics = {"clipped_count": float((scale < 1.0).sum()), "clip_threshold": tau}
        if type(self.inner) is Mean:  # a linear rule: fold the scales into its weights
            w = batch.weights.to(torch.float64) if self.inner.weighted else torch.ones_like(scale)
            total = float(w.sum())
            if total <= 0:
                raise UpdateError("weights: sum must be > 0 for a weighted mean, got 0")
            out = weighted_row_sum(w * scale / total, u).to(device=u.device, dtype=u.dtype)
            return Aggregate(out, dict(state), metrics)  # Mean: no state, no metrics
        clipped = u * scale.to(device=u.device, dtype=u.dtype)[:, None]
        return self.run_inner(batch.replace(updates=clipped), state, **metrics)
