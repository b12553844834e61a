"""Adaptive attacks: ALIE and IPM whose strength is tuned each round against the defence deployed.

Objective (shared with ByzFL's "optimal" attacks): the L2 distance between the deployed rule's
aggregate (``ctx.defence`` on the stack honest rows first, then the f identical crafted rows) and the
plain mean of the honest updates; the attackers send the strength that maximizes it among those tried.
Without a known defence (``ctx.defence is None``) they fall back to the fixed-strength attack.

Two ways to choose which strengths to try (``search``):

* ``"grid"`` (default): a fixed log-spaced grid of ``points`` values from the lower to the upper
  bound, every value evaluated (for ALIE each value with both signs, ``+z`` before ``-z``); ties go to
  the first candidate in that order (the smallest strength), so the result is deterministic.
* ``"line"``: ByzFL's ``LineMaximize`` (expanding, then contracting line search; ByzFL defaults
  ``evals=16, delta=1, ratio=0.8``), started at the lower bound and with no upper bound: step
  ``delta`` up, doubling it while the distance grows; at the first step that does not improve,
  multiply it by ``ratio`` and probe back and forth around the best point, shrinking the step by
  ``ratio`` after each probe, until ``evals`` evaluations are spent. A probe below the lower bound is
  clamped to it (ByzFL bisects towards 0). ALIE runs it once per sign (``2 * evals`` evaluations,
  ``+`` first); ties keep the earlier point. Cheaper than the grid for the same reach, but it can stop
  at a local maximum the grid would pass.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from attacks.base import AttackContext, UpdateAttack
from attacks.model_poisoning import ALIE, IPM
from secagg.validation import check_choice, check_int, check_real

SEARCHES = ("grid", "line")


def _grid(low: float, high: float, points: int) -> list[float]:
    ratio = (high / low) ** (1.0 / max(points - 1, 1))
    return [low * ratio**i for i in range(points)]


def gap(ctx: AttackContext, attack: UpdateAttack) -> float:
    """The objective: L2 distance between ``ctx.defence``'s aggregate of the honest rows plus
    ``attack``'s crafted rows (honest first) and the honest mean (float64)."""
    assert ctx.defence is not None
    stack = torch.cat([ctx.honest, attack.craft(ctx)])
    return float(torch.linalg.vector_norm(ctx.defence(stack).double() - ctx.honest_mean()))


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
    """ByzFL's ``LineMaximize``: best-effort argmax of ``objective`` over ``[start, inf)`` with
    ``evals`` evaluations (see the module docstring); returns (the best point, its value)."""
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


def _check_search(search: str, evals: int, delta: float, ratio: float) -> None:
    check_choice("search", search, SEARCHES)
    check_int("evals", evals, minimum=1)
    check_real("delta", delta, gt=0.0)
    check_real("ratio", ratio, gt=0.5, lt=1.0)  # ByzFL's bounds: (0.5, 1), both excluded


@dataclass(frozen=True)
class AdaptiveALIE(UpdateAttack, kind="alie-adaptive"):
    """ALIE (``mean - z * std``) with ``z`` chosen per round to maximize the deployed defence's
    distance to the honest mean. ``search="grid"``: ``points`` log-spaced ``|z|`` in
    ``[z_min, z_max]``, both signs; ``search="line"``: ByzFL's line search over ``|z| >= z_min`` for
    each sign, with ``evals``, ``delta``, ``ratio`` (see the module docstring)."""

    z_min: float = 0.05
    z_max: float = 20.0
    points: int = 12
    search: str = "grid"
    evals: int = 16
    delta: float = 1.0
    ratio: float = 0.8

    def __post_init__(self) -> None:
        check_real("z_min", self.z_min, gt=0.0)
        check_real("z_max", self.z_max, gt=self.z_min)
        check_int("points", self.points, minimum=1)
        _check_search(self.search, self.evals, self.delta, self.ratio)

    def craft(self, ctx: AttackContext) -> torch.Tensor:
        if ctx.defence is None:
            return ALIE().craft(ctx)
        if self.search == "grid":
            zs = _grid(self.z_min, self.z_max, self.points)
            attack, _ = strongest(ctx, [ALIE(z=s * z) for z in zs for s in (1.0, -1.0)])
            return attack.craft(ctx)
        best_z, best_gap = self.z_min, -math.inf
        for sign in (1.0, -1.0):
            z, value = line_maximize(lambda z, s=sign: gap(ctx, ALIE(z=s * z)), start=self.z_min,
                                     delta=self.delta, ratio=self.ratio, evals=self.evals)
            if value > best_gap:
                best_z, best_gap = sign * z, value
        return ALIE(z=best_z).craft(ctx)


@dataclass(frozen=True)
class AdaptiveIPM(UpdateAttack, kind="ipm-adaptive"):
    """IPM (``-epsilon * mean``) with ``epsilon`` chosen per round to maximize the deployed defence's
    distance to the honest mean. ``search="grid"``: ``points`` log-spaced values in
    ``[epsilon_min, epsilon_max]``; ``search="line"``: ByzFL's line search over
    ``epsilon >= epsilon_min`` with ``evals``, ``delta``, ``ratio`` (see the module docstring)."""

    epsilon_min: float = 0.05
    epsilon_max: float = 100.0
    points: int = 16
    search: str = "grid"
    evals: int = 16
    delta: float = 1.0
    ratio: float = 0.8

    def __post_init__(self) -> None:
        check_real("epsilon_min", self.epsilon_min, gt=0.0)
        check_real("epsilon_max", self.epsilon_max, gt=self.epsilon_min)
        check_int("points", self.points, minimum=1)
        _check_search(self.search, self.evals, self.delta, self.ratio)

    def craft(self, ctx: AttackContext) -> torch.Tensor:
        if ctx.defence is None:
            return IPM().craft(ctx)
        if self.search == "grid":
            attack, _ = strongest(ctx, [IPM(epsilon=e) for e in
                                        _grid(self.epsilon_min, self.epsilon_max, self.points)])
            return attack.craft(ctx)
        epsilon, _ = line_maximize(lambda e: gap(ctx, IPM(epsilon=e)), start=self.epsilon_min,
                                   delta=self.delta, ratio=self.ratio, evals=self.evals)
        return IPM(epsilon=epsilon).craft(ctx)
