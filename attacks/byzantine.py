"""Byzantine clients for a FedAvg run: a fraction of the clients, chosen once per run, that poison
their data, craft their updates, or both."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from attacks.base import AttackContext, UpdateAttack
from attacks.data_poisoning import Backdoor, DataAttack
from secagg.data.federated import ClientData
from secagg.errors import ConfigError
from secagg.fedavg.adversary import Adversary, Defence, Predict
from secagg.seeding import numpy_rng
from secagg.validation import check_real


@dataclass(frozen=True)
class ByzantineClients(Adversary, kind="byzantine"):
    """``round(fraction * N)`` of the N clients, drawn from the run's seed, are Byzantine.

    ``update_attack``: how they craft the updates they send (e.g. ``ALIE()``); ``None`` sends what
    they trained. ``data_attack``: what they train on (e.g. ``Backdoor()``); ``None`` trains on their
    own clean data. At least one of the two must be set. A backdoor's success rate on the test set is
    logged every round as ``attack_success``.
    """

    fraction: float = 0.2
    update_attack: UpdateAttack | None = None
    data_attack: DataAttack | None = None

    def __post_init__(self) -> None:
        check_real("fraction", self.fraction, ge=0.0, lt=1.0)
        if self.update_attack is None and self.data_attack is None:
            raise ConfigError("update_attack, data_attack: set at least one (a Byzantine client must do "
                              "something)")
        for name, value, base in (("update_attack", self.update_attack, UpdateAttack),
                                  ("data_attack", self.data_attack, DataAttack)):
            if value is not None and not isinstance(value, base):
                raise ConfigError(f"{name}: expected a {base.__name__}, got {type(value).__name__}")

    def malicious(self, num_clients: int, seed: int) -> frozenset[int]:
        count = round(self.fraction * num_clients)
        rng = numpy_rng(seed, "byzantine-clients")  # not secret: simulation
        chosen = rng.choice(num_clients, size=count, replace=False)
        return frozenset(int(c) for c in chosen)

    def poison_data(self, data: ClientData, num_classes: int, seed: int, *, attacker: int = 0) -> ClientData:
        return data if self.data_attack is None else self.data_attack.poison(data, num_classes, seed)

    def craft(self, honest: torch.Tensor, own: torch.Tensor, defence: Defence | None,
              seed: int, weights: torch.Tensor | None = None, *,
              global_update: torch.Tensor | None = None) -> torch.Tensor:
        if self.update_attack is None or own.shape[0] == 0:
            return own
        ctx = AttackContext(honest, own, honest.shape[0] + own.shape[0], defence, seed, weights)
        return self.update_attack.craft(ctx)

    def metrics(self, predict: Predict, test_x: torch.Tensor, test_y: torch.Tensor) -> dict[str, float]:
        if not isinstance(self.data_attack, Backdoor):
            return {}
        triggered = self.data_attack.apply_trigger(test_x)
        return {"attack_success": self.data_attack.success_rate(predict(triggered), test_y)}
