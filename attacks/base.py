"""The model-poisoning attack interface: what f Byzantine clients send in one round.

An attack is a registered plug-in value (:class:`~secagg.registry.Registered`, family ``"attack"``):
a frozen dataclass whose :meth:`UpdateAttack.craft` maps an :class:`AttackContext` to the ``(f, d)``
updates the attackers send. Omniscient attacks read the honest updates of the round (as in the
papers); adaptive attacks also call the deployed defence to tune their strength. Randomness in an
attack is simulation randomness, seeded from the context (not secret).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch

from secagg.errors import ConfigError
from secagg.fedavg.adversary import Defence
from secagg.fedavg.trainer import ClientTrainer
from secagg.registry import Registered


@dataclass(frozen=True)
class AttackContext:
    """What the attackers know in one round.

    ``honest``: (h, d) the honest clients' updates this round (omniscient knowledge).
    ``own``: (f, d) the updates the attackers would have sent had they been honest (trained on their
    own data); attacks that need no knowledge of others start from these.
    ``num_clients``: n, all updates the server aggregates this round (h + f).
    ``defence``: the deployed aggregation rule as a function of the full (n, d) stack, honest rows
    first, for adaptive attacks; ``None`` when the attackers do not know it.
    ``seed``: for attacks that draw random values (simulation randomness, not secret).
    ``weights``: (n,) the clients' example counts, honest rows first (what FedAvg's example-weighted
    mean weights each update by); ``None`` when unknown, read as all equal.
    ``global_update``: (p,) the previous round's change of the global model over the parameters (the
    first p <= d coordinates of a row; what every client can compute from two consecutive global
    models), for attacks that track the training (Neurotoxin); ``None`` when unknown (round 1).
    """

    honest: torch.Tensor
    own: torch.Tensor
    num_clients: int
    defence: Defence | None = None
    seed: int = 0
    weights: torch.Tensor | None = None
    global_update: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if self.honest.dim() != 2 or self.own.dim() != 2 or self.honest.shape[1] != self.own.shape[1]:
            raise ConfigError(f"honest, own: expected (h, d) and (f, d) tensors with the same d, got "
                              f"{tuple(self.honest.shape)} and {tuple(self.own.shape)}")
        if self.num_clients != self.honest.shape[0] + self.own.shape[0]:
            raise ConfigError(f"num_clients: must be h + f = {self.honest.shape[0] + self.own.shape[0]}, "
                              f"got {self.num_clients}")
        w = self.weights
        if w is not None and (not isinstance(w, torch.Tensor) or tuple(w.shape) != (self.num_clients,)
                              or not bool(torch.isfinite(w).all()) or bool((w < 0).any())):
            shape = tuple(w.shape) if isinstance(w, torch.Tensor) else type(w).__name__
            raise ConfigError(f"weights: expected ({self.num_clients},) finite values >= 0, got {shape}")
        g = self.global_update
        if g is not None and (not isinstance(g, torch.Tensor) or g.dim() != 1 or g.numel() > self.dim):
            shape = tuple(g.shape) if isinstance(g, torch.Tensor) else type(g).__name__
            raise ConfigError(f"global_update: expected a (p,) tensor with p <= d = {self.dim}, got {shape}")

    @property
    def num_attackers(self) -> int:
        return int(self.own.shape[0])

    @property
    def dim(self) -> int:
        return int(self.own.shape[1])

    def honest_mean(self) -> torch.Tensor:
        """The mean of the honest updates, in float64."""
        return self.honest.double().mean(dim=0)

    def honest_std(self) -> torch.Tensor:
        """The per-coordinate standard deviation of the honest updates (unbiased, float64)."""
        if self.honest.shape[0] < 2:
            return torch.zeros(self.dim, dtype=torch.float64)
        return self.honest.double().std(dim=0)


class UpdateAttack(Registered, ABC, family="attack"):
    """Base class of model-poisoning attacks (frozen dataclasses declared with ``kind="..."``)."""

    omniscient: bool = True  # reads ctx.honest

    @abstractmethod
    def craft(self, ctx: AttackContext) -> torch.Tensor:
        """The (f, d) updates the attackers send (same dtype as ``ctx.own``); inputs are not modified."""

    def local_trainer(self, trainer: ClientTrainer, global_update: torch.Tensor | None) -> ClientTrainer:
        """How the attackers train their own updates before :meth:`craft` (default: ``trainer``, the
        run's); ``global_update`` as in :class:`AttackContext`."""
        return trainer


def repeat(row: torch.Tensor, ctx: AttackContext) -> torch.Tensor:
    """``row`` sent by every attacker, in the dtype of ``ctx.own``."""
    return row.to(ctx.own.dtype).expand(ctx.num_attackers, ctx.dim).clone()
