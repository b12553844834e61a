"""Byzantine clients for a FedAvg run: a fraction of the clients, chosen once per run, that poison
their data, craft their updates, or both, during an attack window of rounds."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from attacks.base import AttackContext, UpdateAttack
from attacks.data_poisoning import DataAttack, takes_attacker
from secagg.data.federated import ClientData
from secagg.errors import ConfigError
from secagg.fedavg.adversary import Adversary, Defence, Predict
from secagg.fedavg.trainer import ClientTrainer
from secagg.seeding import numpy_rng
from secagg.validation import check_int, check_real


@dataclass(frozen=True)
class ByzantineClients(Adversary, kind="byzantine"):
    """``round(fraction * N)`` of the N clients, drawn from the run's seed, are Byzantine.

    ``update_attack``: how they craft the updates they send (e.g. ``ALIE()``); ``None`` sends what
    they trained. ``data_attack``: what they train on (e.g. ``Backdoor()``); ``None`` trains on their
    own clean data. At least one of the two must be set. A data attack's metrics (a backdoor's
    success rate on the test set, ``attack_success``) are logged every round, inside the attack
    window or not.

    ``start_round``, ``stop_round``: the attack window, rounds ``start_round..stop_round`` (1-based,
    both included; ``stop_round=None``: to the end of the run). Outside it the Byzantine clients train
    on their clean data and send what they trained, like honest clients: how long a backdoor
    survives after the attackers stop is its durability (Neurotoxin's "lifespan").
    """

    fraction: float = 0.2
    update_attack: UpdateAttack | None = None
    data_attack: DataAttack | None = None
    start_round: int = 1
    stop_round: int | None = None

    def __post_init__(self) -> None:
        check_real("fraction", self.fraction, ge=0.0, lt=1.0)
        if self.update_attack is None and self.data_attack is None:
            raise ConfigError("update_attack, data_attack: set at least one (a Byzantine client must do "
                              "something)")
        for name, value, base in (("update_attack", self.update_attack, UpdateAttack),
                                  ("data_attack", self.data_attack, DataAttack)):
            if value is not None and not isinstance(value, base):
                raise ConfigError(f"{name}: expected a {base.__name__}, got {type(value).__name__}")
        check_int("start_round", self.start_round, minimum=1)
        if self.stop_round is not None:
            check_int("stop_round", self.stop_round, minimum=self.start_round)

    def malicious(self, num_clients: int, seed: int) -> frozenset[int]:
        count = round(self.fraction * num_clients)
        rng = numpy_rng(seed, "byzantine-clients")  # not secret: simulation
        chosen = rng.choice(num_clients, size=count, replace=False)
        return frozenset(int(c) for c in chosen)

    def active(self, round_index: int) -> bool:
        """Whether round ``round_index`` is inside ``start_round..stop_round``."""
        return self.start_round <= round_index and (self.stop_round is None or round_index <= self.stop_round)

    def poison_data(self, data: ClientData, num_classes: int, seed: int, *, attacker: int = 0) -> ClientData:
        if self.data_attack is None:
            return data
        extra = {"attacker": attacker} if takes_attacker(self.data_attack.poison) else {}
        return self.data_attack.poison(data, num_classes, seed, **extra)

    def trainer(self, trainer: ClientTrainer, *, global_update: torch.Tensor | None = None) -> ClientTrainer:
        """The update attack's :meth:`~attacks.base.UpdateAttack.local_trainer` (the run's trainer
        without one)."""
        if self.update_attack is None:
            return trainer
        return self.update_attack.local_trainer(trainer, global_update)

    def craft(self, honest: torch.Tensor, own: torch.Tensor, defence: Defence | None,
              seed: int, weights: torch.Tensor | None = None, *,
              global_update: torch.Tensor | None = None) -> torch.Tensor:
        if self.update_attack is None or own.shape[0] == 0:
            return own
        ctx = AttackContext(honest, own, honest.shape[0] + own.shape[0], defence, seed, weights,
                            global_update)
        return self.update_attack.craft(ctx)

    def metrics(self, predict: Predict, test_x: torch.Tensor, test_y: torch.Tensor) -> dict[str, float]:
        return {} if self.data_attack is None else self.data_attack.metrics(predict, test_x, test_y)
