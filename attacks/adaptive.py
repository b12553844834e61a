"""Adaptive attacks: ALIE and IPM whose strength is tuned each round against the defence deployed.

Objective (ByzFL's "optimal" attacks, ``Optimal_ALittleIsEnough`` and
``Optimal_InnerProductManipulation``): the L2 distance between the deployed rule's aggregate
(``ctx.defence`` on the stack honest rows first, then the f identical crafted rows) and the plain mean
of the honest updates; the attackers send the strength that maximizes it among those tried. Without a
known defence (``ctx.defence is None``) they fall back to the fixed-strength attack.

Three ways to choose which strengths to try (``search``):

* ``"grid"`` (default): a fixed log-spaced grid of ``points`` values from the lower to the upper
  bound, every value evaluated (for ALIE each value with both signs, ``+z`` before ``-z``); ties go to
  the first candidate in that order (the smallest strength), so the result is deterministic.
* ``"line"``: the ``line_maximize`` of the ByzFL team's research code (before the package; defaults
  ``evals=16, delta=1, ratio=0.8``), started at the lower bound and with no upper bound: step
  ``delta`` up, doubling it while the distance grows; at the first step that does not improve,
  multiply it by ``ratio`` and probe back and forth around the best point, shrinking the step by
  ``ratio`` after each probe, until ``evals`` evaluations are spent. A probe below the lower bound is
  clamped to it (that code bisects towards 0). ALIE runs it once per sign (``2 * evals``
  evaluations, ``+`` first); ties keep the earlier point.
* ``"byzfl"``: exactly the search of the ByzFL package (0.0.11, ``byzfl.attacks``), for reproducing a
  ByzFL result cell for cell (:func:`byzfl_line_search`): ``evals`` evaluations (ByzFL default 20)
  from ``start`` (default 0.0) with step ``delta`` (default 10.0, any non-zero value: its sign is the
  search direction) and ``ratio`` (default 0.8, in (0.5, 1)). Expansion: ``x = best + delta``; if it
  strictly improves, it becomes the best and ``delta`` doubles, else ``delta *= ratio`` and the
  expansion ends. Contraction, with the evaluations left: always ``x = best + delta`` (one-sided, on
  the far side of the best point; never back towards ``start``), taken if strictly better, then
  ``delta *= ratio``. Ties keep the earlier point. One search, one sign: ByzFL's ALIE sends
  ``mean + tau * std`` (our ``z = -tau``) and its IPM ``-tau * mean`` (``tau = epsilon``, 0 and
  negative values allowed). ByzFL evaluates in float32 for torch input and float64 for numpy input;
  this objective is in float64 (the defence runs in the stack's dtype), which reproduces ByzFL's
  numpy backend. ByzFL's defaults also put its ``Clipping(c=2.0)`` pre-aggregator before the rule; to
  reproduce them deploy ``ClipNorm(max_norm=2.0, inner=...)`` (with ``Mean(weighted=False)`` for
  its ``Average``): here the objective always uses the deployed rule. Where clipping flattens the
  objective into a plateau whose values differ only by rounding, the strict comparisons can go
  differently from ByzFL's (its norms round differently); on the exact plateaus of the median, the
  trimmed mean, Krum (ByzFL's Krum scores ``n - f - 1`` neighbours: ``Krum(neighbours=n - f - 1)``)
  and the average every decision is the same (``tests/test_new_attacks.py`` checks it against the
  package).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from attacks.base import AttackContext, UpdateAttack, repeat
from attacks.model_poisoning import ALIE, IPM
from secagg.errors import ConfigError
from secagg.validation import check_choice, check_int, check_real

SEARCHES = ("grid", "line", "byzfl")
#: (evals, delta) when unset: the research code's line_maximize, and the ByzFL package (0.0.11)
LINE_DEFAULTS = (16, 1.0)
BYZFL_DEFAULTS = (20, 10.0)
BYZFL_START = 0.0


def _grid(low: float, high: float, points: int) -> list[float]:
    ratio = (high / low) ** (1.0 / max(points - 1, 1))
    return [low * ratio**i for i in range(points)]


def gap_of_rows(ctx: AttackContext, rows: torch.Tensor) -> float:
    """The objective for crafted ``rows``: L2 distance between ``ctx.defence``'s aggregate of the honest
    rows then ``rows`` and the honest mean (float64)."""
    assert ctx.defence is not None
    stack = torch.cat([ctx.honest, rows.to(ctx.honest.dtype)])
    return float(torch.linalg.vector_norm(ctx.defence(stack).double() - ctx.honest_mean()))


def gap(ctx: AttackContext, attack: UpdateAttack) -> float:
    """The objective: L2 distance between ``ctx.defence``'s aggregate of the honest rows plus
    ``attack``'s crafted rows (honest first) and the honest mean (float64)."""
    return gap_of_rows(ctx, attack.craft(ctx))


def strongest(ctx: AttackContext, candidates: list[UpdateAttack]) -> tuple[UpdateAttack, float]:
    """The candidate with the largest :func:`gap` (the first one on ties), and that gap."""
    best, best_gap = candidates[0], -math.inf
    for attack in candidates:
        value = gap(ctx, attack)
        if value > best_gap:
            best, best_gap = attack, value
    return best, best_gap


def line_maximize(objective: Callable[[float], float], *, start: float, delta: float, ratio: float,
                  evals: int) -> tuple[float, float]:
    """The research code's ``line_maximize``: best-effort argmax of ``objective`` over
    ``[start, inf)`` with ``evals`` evaluations (``search="line"`` in the module docstring); returns
    (the best point, its value)."""
    best_x, best_y = start, objective(start)
    prop_x, evals = start, evals - 1
    while evals > 0:  # expansion: double the step while the objective grows
        prop_x = best_x + delta
        prop_y = objective(prop_x)
        evals -= 1
        if prop_y > best_y:
            best_x, best_y, delta = prop_x, prop_y, 2.0 * delta
        else:
            delta *= ratio
            break
    while evals > 0:  # contraction: probe on the other side of the best point, smaller each time
        prop_x = prop_x + delta if prop_x < best_x else max(prop_x - delta, start)
        prop_y = objective(prop_x)
        evals -= 1
        if prop_y > best_y:
            best_x, best_y = prop_x, prop_y
        delta *= ratio
    return best_x, best_y


def byzfl_line_search(objective: Callable[[float], float], *, start: float = BYZFL_START,
                      delta: float = BYZFL_DEFAULTS[1], ratio: float = 0.8,
                      evals: int = BYZFL_DEFAULTS[0]) -> tuple[float, float]:
    """The ByzFL package's (0.0.11) expansion then contraction search of ``Optimal_ALittleIsEnough``
    and ``Optimal_InnerProductManipulation`` (``search="byzfl"`` in the module docstring), step for
    step: the same points, in the same order, with the same strict comparisons. Returns (the best
    point, its value)."""
    best_x, best_y = start, objective(start)
    evals -= 1
    while evals > 0:  # expansion
        prop_x = best_x + delta
        prop_y = objective(prop_x)
        evals -= 1
        if prop_y > best_y:
            best_x, best_y, delta = prop_x, prop_y, delta * 2
        else:
            delta *= ratio
            break
    while evals > 0:  # contraction: always beyond the best point
        prop_x = best_x + delta
        prop_y = objective(prop_x)
        evals -= 1
        if prop_y > best_y:
            best_x, best_y = prop_x, prop_y
        delta *= ratio
    return best_x, best_y


@dataclass(frozen=True)
class _Searched(UpdateAttack):
    """The search settings shared by the adaptive attacks (see the module docstring)."""

    search: str = "grid"
    evals: int | None = None
    delta: float | None = None
    ratio: float = 0.8
    start: float | None = None

    def _check_search(self) -> None:
        check_choice("search", self.search, SEARCHES)
        if self.evals is not None:
            check_int("evals", self.evals, minimum=1)
        if self.delta is not None:
            check_real("delta", self.delta)
            if self.search == "byzfl" and self.delta == 0.0:
                raise ConfigError("delta: must be non-zero (ByzFL's bound), got 0.0")
            if self.search != "byzfl" and self.delta <= 0.0:
                raise ConfigError(f"delta: must be > 0 for search {self.search!r}, got {self.delta}")
        check_real("ratio", self.ratio, gt=0.5, lt=1.0)  # ByzFL's bounds: (0.5, 1), both excluded
        if self.start is not None:
            check_real("start", self.start)
            if self.search != "byzfl":
                raise ConfigError(f"start: only search 'byzfl' starts at a given point (search "
                                  f"{self.search!r} starts at its lower bound); got start={self.start}")

    def _settings(self) -> tuple[int, float]:
        evals, delta = BYZFL_DEFAULTS if self.search == "byzfl" else LINE_DEFAULTS
        return (evals if self.evals is None else self.evals), (delta if self.delta is None else self.delta)

    def _byzfl(self, objective: Callable[[float], float]) -> float:
        evals, delta = self._settings()
        start = BYZFL_START if self.start is None else self.start
        return byzfl_line_search(objective, start=start, delta=delta, ratio=self.ratio, evals=evals)[0]

    def _line(self, objective: Callable[[float], float], low: float) -> tuple[float, float]:
        evals, delta = self._settings()
        return line_maximize(objective, start=low, delta=delta, ratio=self.ratio, evals=evals)


@dataclass(frozen=True)
class AdaptiveALIE(_Searched, kind="alie-adaptive"):
    """ALIE (``mean - z * std``) with ``z`` chosen per round to maximize the deployed defence's
    distance to the honest mean. ``search="grid"``: ``points`` log-spaced ``|z|`` in
    ``[z_min, z_max]``, both signs; ``search="line"``: the research code's line search over
    ``|z| >= z_min`` for each sign; ``search="byzfl"``: ByzFL's ``Optimal_ALittleIsEnough`` exactly,
    over ByzFL's ``tau = -z`` from ``start`` (default 0) in the direction of ``delta`` (default +10,
    so ``z <= 0``). ``evals``, ``delta``: ``None`` uses the search's defaults (16, 1.0 for ``line``;
    ByzFL's 20, 10.0 for ``byzfl``). See the module docstring."""

    z_min: float = 0.05
    z_max: float = 20.0
    points: int = 12

    def __post_init__(self) -> None:
        check_real("z_min", self.z_min, gt=0.0)
        check_real("z_max", self.z_max, gt=self.z_min)
        check_int("points", self.points, minimum=1)
        self._check_search()

    def strength(self, ctx: AttackContext) -> float:
        """The ``z`` (``ALIE(z=...)``'s sign convention) the attackers send this round; requires
        ``ctx.defence``."""
        if ctx.defence is None:
            raise ConfigError("defence: the adaptive search needs the deployed defence (ctx.defence)")
        if self.search == "grid":
            zs = _grid(self.z_min, self.z_max, self.points)
            attack, _ = strongest(ctx, [ALIE(z=s * z) for z in zs for s in (1.0, -1.0)])
            return float(attack.z)  # type: ignore[attr-defined]
        if self.search == "byzfl":  # ByzFL's ALIE is mean + tau * std: z = -tau
            return -self._byzfl(lambda tau: gap(ctx, ALIE(z=-tau)))
        best_z, best_gap = self.z_min, -math.inf
        for sign in (1.0, -1.0):
            z, value = self._line(lambda z, s=sign: gap(ctx, ALIE(z=s * z)), self.z_min)
            if value > best_gap:
                best_z, best_gap = sign * z, value
        return best_z

    def craft(self, ctx: AttackContext) -> torch.Tensor:
        if ctx.defence is None:
            return ALIE().craft(ctx)
        return ALIE(z=self.strength(ctx)).craft(ctx)


def _ipm_rows(ctx: AttackContext, epsilon: float) -> torch.Tensor:
    """IPM's rows ``-epsilon * mean`` for any real ``epsilon`` (ByzFL's search may try 0 or less)."""
    return repeat(-epsilon * ctx.honest_mean(), ctx)


@dataclass(frozen=True)
class AdaptiveIPM(_Searched, kind="ipm-adaptive"):
    """IPM (``-epsilon * mean``) with ``epsilon`` chosen per round to maximize the deployed defence's
    distance to the honest mean. ``search="grid"``: ``points`` log-spaced values in
    ``[epsilon_min, epsilon_max]``; ``search="line"``: the research code's line search over
    ``epsilon >= epsilon_min``; ``search="byzfl"``: ByzFL's ``Optimal_InnerProductManipulation``
    exactly (its ``tau`` is ``epsilon``), from ``start`` (default 0) in the direction of ``delta``
    (default +10). ``evals``, ``delta`` as in :class:`AdaptiveALIE`; see the module docstring."""

    epsilon_min: float = 0.05
    epsilon_max: float = 100.0
    points: int = 16

    def __post_init__(self) -> None:
        check_real("epsilon_min", self.epsilon_min, gt=0.0)
        check_real("epsilon_max", self.epsilon_max, gt=self.epsilon_min)
        check_int("points", self.points, minimum=1)
        self._check_search()

    def strength(self, ctx: AttackContext) -> float:
        """The ``epsilon`` the attackers send this round; requires ``ctx.defence``."""
        if ctx.defence is None:
            raise ConfigError("defence: the adaptive search needs the deployed defence (ctx.defence)")
        if self.search == "grid":
            attack, _ = strongest(ctx, [IPM(epsilon=e) for e in
                                        _grid(self.epsilon_min, self.epsilon_max, self.points)])
            return float(attack.epsilon)  # type: ignore[attr-defined]
        if self.search == "byzfl":
            return self._byzfl(lambda e: gap_of_rows(ctx, _ipm_rows(ctx, e)))
        return self._line(lambda e: gap_of_rows(ctx, _ipm_rows(ctx, e)), self.epsilon_min)[0]

    def craft(self, ctx: AttackContext) -> torch.Tensor:
        if ctx.defence is None:
            return IPM().craft(ctx)
        return _ipm_rows(ctx, self.strength(ctx))
