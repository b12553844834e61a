"""Adaptive attacks: ALIE and IPM whose strength is tuned against the defence actually deployed.

Each round the attackers try every strength on a log-spaced grid, aggregate the resulting stack with
the deployed rule (``ctx.defence``) and keep the strength that pushes the aggregate farthest from the
honest mean: the strongest attack of that family the defence faces (ByzFL's "optimal" attacks
search the same way). Without a known defence they fall back to the fixed-strength attack.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from attacks.base import AttackContext, UpdateAttack
from attacks.model_poisoning import ALIE, IPM
from secagg.validation import check_int, check_real


def _grid(low: float, high: float, points: int) -> list[float]:
    ratio = (high / low) ** (1.0 / max(points - 1, 1))
    return [low * ratio**i for i in range(points)]


def strongest(ctx: AttackContext, candidates: list[UpdateAttack]) -> tuple[UpdateAttack, float]:
    """The candidate whose crafted updates move ``ctx.defence``'s aggregate farthest (L2) from the
    honest mean, and that distance. Honest rows come first in the stack the defence sees."""
    assert ctx.defence is not None
    mean = ctx.honest_mean()
    best, best_gap = candidates[0], -math.inf
    for attack in candidates:
        stack = torch.cat([ctx.honest, attack.craft(ctx)])
        gap = float(torch.linalg.vector_norm(ctx.defence(stack).double() - mean))
        if gap > best_gap:
            best, best_gap = attack, gap
    return best, best_gap


@dataclass(frozen=True)
class AdaptiveALIE(UpdateAttack, kind="alie_adaptive"):
    """ALIE with ``z`` chosen per round from ``points`` log-spaced values in ``[z_min, z_max]`` (both
    signs) to maximize the deployed defence's error."""

    z_min: float = 0.05
    z_max: float = 20.0
    points: int = 12

    def __post_init__(self) -> None:
        check_real("z_min", self.z_min, gt=0.0)
        check_real("z_max", self.z_max, gt=self.z_min)
        check_int("points", self.points, minimum=1)

    def craft(self, ctx: AttackContext) -> torch.Tensor:
        if ctx.defence is None:
            return ALIE().craft(ctx)
        zs = _grid(self.z_min, self.z_max, self.points)
        attack, _ = strongest(ctx, [ALIE(z=s * z) for z in zs for s in (1.0, -1.0)])
        return attack.craft(ctx)


@dataclass(frozen=True)
class AdaptiveIPM(UpdateAttack, kind="ipm_adaptive"):
    """IPM with ``epsilon`` chosen per round from ``points`` log-spaced values in
    ``[epsilon_min, epsilon_max]`` to maximize the deployed defence's error."""

    epsilon_min: float = 0.05
    epsilon_max: float = 100.0
    points: int = 16

    def __post_init__(self) -> None:
        check_real("epsilon_min", self.epsilon_min, gt=0.0)
        check_real("epsilon_max", self.epsilon_max, gt=self.epsilon_min)
        check_int("points", self.points, minimum=1)

    def craft(self, ctx: AttackContext) -> torch.Tensor:
        if ctx.defence is None:
            return IPM().craft(ctx)
        eps = _grid(self.epsilon_min, self.epsilon_max, self.points)
        attack, _ = strongest(ctx, [IPM(epsilon=e) for e in eps])
        return attack.craft(ctx)
