"""The adversary inside a FedAvg run: which clients are Byzantine and what they do.

The core only defines the interface (a registered plug-in family, ``"adversary"``); the attack suite
(package ``attacks``) implements it. A run with an adversary calls, in each round: ``poison_data`` on
the local data of every sampled malicious client before it trains, ``craft`` on the round's updates
(honest ones and the malicious clients' own) to obtain what the malicious clients actually send, and
``metrics`` after the server step (e.g. a backdoor's success rate on the test set).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable

import torch

from secagg.data.federated import ClientData
from secagg.fedavg.trainer import ClientTrainer
from secagg.registry import Registered

Defence = Callable[[torch.Tensor], torch.Tensor]
Predict = Callable[[torch.Tensor], torch.Tensor]


class Adversary(Registered, ABC, family="adversary"):
    """Base class of adversaries (frozen dataclasses declared with ``kind="..."``)."""

    @abstractmethod
    def malicious(self, num_clients: int, seed: int) -> frozenset[int]:
        """The Byzantine client ids among ``range(num_clients)``, fixed for the whole run."""

    def active(self, round_index: int) -> bool:
        """Whether the malicious clients attack in round ``round_index`` (1-based); outside their
        window they train and send like honest clients. Default: every round."""
        return True

    def poison_data(self, data: ClientData, num_classes: int, seed: int, *, attacker: int = 0) -> ClientData:
        """What a malicious client trains on (default: its own data, unchanged); ``attacker``: its rank
        among the run's malicious clients (attacks that split their work among them use it)."""
        return data

    def trainer(self, trainer: ClientTrainer, *, global_update: torch.Tensor | None = None) -> ClientTrainer:
        """How a malicious client trains in an attacking round (default: ``trainer``, the run's);
        ``global_update`` as in :meth:`craft`. An attacker owns its machine, so it may train any way
        it likes (e.g. Neurotoxin's projected SGD)."""
        return trainer

    def craft(self, honest: torch.Tensor, own: torch.Tensor, defence: Defence | None,
              seed: int, weights: torch.Tensor | None = None, *,
              global_update: torch.Tensor | None = None) -> torch.Tensor:
        """The (f, d) updates the round's f malicious clients send, given the (h, d) honest updates
        and their own trained updates; ``defence`` aggregates a full (h + f, d) stack, honest rows
        first, with the deployed rule; ``weights``: the (h + f,) example counts in that order;
        ``global_update``: the previous round's global model change over the parameters (the first
        ``global_update.numel()`` coordinates of a row), or ``None`` when unknown (default: send the
        trained updates)."""
        return own

    def metrics(self, predict: Predict, test_x: torch.Tensor, test_y: torch.Tensor) -> dict[str, float]:
        """Extra per-round measurements with the new global model (``predict`` maps inputs to
        predicted labels); default none."""
        return {}
