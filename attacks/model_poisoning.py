"""Model-poisoning attacks: the f Byzantine clients craft the updates they send.

Each class cites its paper and states the exact rule. Statistics of the honest updates (mean, std)
are per coordinate and in float64; the crafted updates come back in the dtype of the attackers' own
updates. Names (``kind``) are the ones benchmark config files use.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass

import torch

from attacks.base import AttackContext, UpdateAttack, repeat
from secagg.aggregation.distances import pairwise_sq_distances
from secagg.errors import ConfigError
from secagg.seeding import torch_generator
from secagg.validation import check_choice, check_int, check_real


@dataclass(frozen=True)
class SignFlip(UpdateAttack, kind="sign-flip"):
    """Each attacker sends ``-scale`` times its own honest update (gradient sign flipping; Allen-Zhu
    et al. 2020, as in ByzFL with ``scale = 1``). Not omniscient."""

    scale: float = 1.0
    omniscient = False

    def __post_init__(self) -> None:
        check_real("scale", self.scale, gt=0.0)

    def craft(self, ctx: AttackContext) -> torch.Tensor:
        return -self.scale * ctx.own


@dataclass(frozen=True)
class GaussianNoise(UpdateAttack, kind="gaussian"):
    """Each attacker sends ``N(mean, std^2)`` per coordinate, independent of any update (the random
    noise attack of Blanchard et al. 2017). Simulation randomness from ``ctx.seed``."""

    mean: float = 0.0
    std: float = 200.0
    omniscient = False

    def __post_init__(self) -> None:
        check_real("mean", self.mean)
        check_real("std", self.std, gt=0.0)

    def craft(self, ctx: AttackContext) -> torch.Tensor:
        g = torch_generator(ctx.seed, "gaussian-attack")
        noise = torch.randn(ctx.num_attackers, ctx.dim, generator=g, dtype=torch.float64)
        return (self.mean + self.std * noise).to(ctx.own.dtype)


@dataclass(frozen=True)
class Scaling(UpdateAttack, kind="scaling"):
    """Each attacker boosts its own update by ``factor`` (Bhagoji et al. 2019's explicit boosting)."""

    factor: float = 10.0
    omniscient = False

    def __post_init__(self) -> None:
        check_real("factor", self.factor, gt=0.0)

    def craft(self, ctx: AttackContext) -> torch.Tensor:
        return self.factor * ctx.own


def alie_z(n: int, f: int) -> float:
    """Baruch et al.'s ``z_max``: ``s = floor(n/2 + 1) - f`` supporters are needed, and ``z`` is the
    standard-normal quantile ``Phi^-1((n - s) / n)``. Requires ``1 <= f < n``."""
    check_int("n", n, minimum=2)
    check_int("f", f, minimum=1, maximum=n - 1)
    s = n // 2 + 1 - f
    p = (n - s) / n
    if not 0.0 < p < 1.0:
        raise ConfigError(f"f: ALIE's z_max is undefined for n={n}, f={f} ((n - s) / n = {p:g} is not in "
                          f"(0, 1)); pass z explicitly")
    return statistics.NormalDist().inv_cdf(p)


@dataclass(frozen=True)
class ALIE(UpdateAttack, kind="alie"):
    """A Little Is Enough (Baruch, Baruch and Goldberg, NeurIPS 2019): every attacker sends
    ``mean - z * std`` of the honest updates, per coordinate.

    ``z=None`` uses the paper's ``z_max`` (:func:`alie_z`) for the round's n and f; ByzFL instead fixes
    ``z = 1.5`` by default: pass ``z=1.5`` to match it. The sign follows the paper's implementation
    (``mu - z sigma``); ``z < 0`` shifts the other way.
    """

    z: float | None = None

    def __post_init__(self) -> None:
        if self.z is not None:
            check_real("z", self.z)

    def strength(self, ctx: AttackContext) -> float:
        return alie_z(ctx.num_clients, ctx.num_attackers) if self.z is None else float(self.z)

    def craft(self, ctx: AttackContext) -> torch.Tensor:
        return repeat(ctx.honest_mean() - self.strength(ctx) * ctx.honest_std(), ctx)


@dataclass(frozen=True)
class IPM(UpdateAttack, kind="ipm"):
    """Inner Product Manipulation (Xie, Koyejo and Gupta, UAI 2020): every attacker sends
    ``-epsilon * mean`` of the honest updates. Small epsilon (0.1) hides in the crowd; large
    epsilon (e.g. 100) makes the mean point backwards."""

    epsilon: float = 0.1

    def __post_init__(self) -> None:
        check_real("epsilon", self.epsilon, gt=0.0)

    def craft(self, ctx: AttackContext) -> torch.Tensor:
        return repeat(-self.epsilon * ctx.honest_mean(), ctx)


PERTURBATIONS = ("unit_vec", "std", "sign")


def _perturbation(kind: str, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """Shejwalkar and Houmansadr's perturbation directions (all point away from the honest mean)."""
    if kind == "unit_vec":
        norm = torch.linalg.vector_norm(mean)
        return -mean / norm if norm > 0 else torch.zeros_like(mean)
    if kind == "std":
        return -std
    return -torch.sign(mean)


@dataclass(frozen=True)
class _OptimizedShift(UpdateAttack):
    """``mean + gamma * p`` with the largest gamma (found by halving search) that keeps the crafted
    update inside the honest updates' spread by the subclass's criterion."""

    perturbation: str = "std"
    gamma_init: float = 10.0
    tolerance: float = 1e-5

    def __post_init__(self) -> None:
        check_choice("perturbation", self.perturbation, PERTURBATIONS)
        check_real("gamma_init", self.gamma_init, gt=0.0)
        check_real("tolerance", self.tolerance, gt=0.0)

    def _fits(self, sq_to_honest: torch.Tensor, honest_sq: torch.Tensor) -> bool:
        raise NotImplementedError

    def craft(self, ctx: AttackContext) -> torch.Tensor:
        honest = ctx.honest.double()
        mean = honest.mean(dim=0)
        p = _perturbation(self.perturbation, mean, ctx.honest_std())
        honest_sq = pairwise_sq_distances(honest)

        def fits(gamma: float) -> bool:
            m = mean + gamma * p
            return self._fits(((honest - m) ** 2).sum(dim=1), honest_sq)

        # the paper's search: move gamma up by the step on success, down on failure, halve the step
        gamma, step, best = self.gamma_init, self.gamma_init / 2, 0.0
        while step > self.tolerance:
            if fits(gamma):
                best = gamma
                gamma += step
            else:
                gamma -= step
            step /= 2
        if fits(gamma):
            best = max(best, gamma)
        return repeat(mean + best * p, ctx)


@dataclass(frozen=True)
class MinMax(_OptimizedShift, kind="min-max"):
    """Min-Max (Shejwalkar and Houmansadr, NDSS 2021): the malicious update's largest distance to an
    honest update stays within the largest distance between two honest updates:
    ``max_i ||m - h_i|| <= max_{i,j} ||h_i - h_j||``. ``perturbation``: ``unit_vec`` (-mean/||mean||),
    ``std`` (-std) or ``sign`` (-sign(mean))."""

    def _fits(self, sq_to_honest: torch.Tensor, honest_sq: torch.Tensor) -> bool:
        return bool(sq_to_honest.max() <= honest_sq.max())


@dataclass(frozen=True)
class MinSum(_OptimizedShift, kind="min-sum"):
    """Min-Sum (Shejwalkar and Houmansadr, NDSS 2021): the malicious update's sum of squared distances
    to the honest updates stays within the largest such sum of an honest update:
    ``sum_i ||m - h_i||^2 <= max_i sum_j ||h_i - h_j||^2``."""

    def _fits(self, sq_to_honest: torch.Tensor, honest_sq: torch.Tensor) -> bool:
        return bool(sq_to_honest.sum() <= honest_sq.sum(dim=1).max())


@dataclass(frozen=True)
class Mimic(UpdateAttack, kind="mimic"):
    """Mimic (Karimireddy, He and Jaggi, ICLR 2022): every attacker copies one honest update, the one
    that most over-represents the honest updates' main direction of heterogeneity: ``i* = argmax_i
    |z . (h_i - mean)|`` with ``z`` the top principal direction of the honest updates (the paper
    estimates ``z`` over a warm-up phase; here from the current round, by power iteration)."""

    iterations: int = 20

    def __post_init__(self) -> None:
        check_int("iterations", self.iterations, minimum=1)

    def craft(self, ctx: AttackContext) -> torch.Tensor:
        centred = ctx.honest.double() - ctx.honest_mean()
        z = centred.abs().sum(dim=0) + 1.0  # a deterministic start with a component along any spread
        for _ in range(self.iterations):
            z = centred.mT @ (centred @ z)
            norm = torch.linalg.vector_norm(z)
            if norm == 0:
                break
            z = z / norm
        target = int(torch.argmax((centred @ z).abs()))
        return repeat(ctx.honest[target], ctx)
