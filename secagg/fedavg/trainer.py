"""Client trainers: how a sampled client turns the global weights into its update.

A trainer is a registered plug-in value (:class:`~secagg.registry.Registered`): ``SGDTrainer`` is
plain local SGD (:func:`~secagg.fedavg.client.client_update`); packages on top of the core add
others, e.g. record-level DP-SGD in ``dp``, without the core importing them.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import torch
from torch import nn

from secagg.data.federated import ClientData
from secagg.fedavg.client import ClientUpdate, client_update
from secagg.layout import ParamLayout
from secagg.registry import Registered

if TYPE_CHECKING:  # config.py imports this module for FedAvgConfig.trainer
    from secagg.fedavg.config import ClientConfig


class ClientTrainer(Registered, ABC, family="trainer"):
    """Base class of client trainers (frozen dataclasses declared with ``kind="..."``).

    ``keeps_client_state``: whether :meth:`train` takes the keyword ``local_state`` (what the client
    kept from its last round) and runs the algorithms that need it, FedBN and SCAFFOLD (see
    :func:`~secagg.fedavg.client.client_update`); a run configures them only with such a trainer.
    """

    keeps_client_state: ClassVar[bool] = False

    @abstractmethod
    def train(self, model: nn.Module, global_state: Mapping[str, torch.Tensor], data: ClientData,
              config: ClientConfig, layout: ParamLayout, *, seed: int, client_id: int) -> ClientUpdate:
        """The client's update; a pure function of its arguments (see :func:`client_update`)."""

    def epsilon_after(self, participations: Mapping[int, int], examples: Mapping[int, int]) -> float | None:
        """Record-level DP epsilon of the most exposed client, given how many rounds each client took
        part in (``participations``) and its example count; ``None`` if training makes no DP claim."""
        return None

    def privacy_budget(self) -> float | None:
        """The record-level epsilon no client may exceed, or ``None``."""
        return None


@dataclass(frozen=True)
class SGDTrainer(ClientTrainer, kind="sgd"):
    """Plain local SGD: :func:`~secagg.fedavg.client.client_update` (with FedProx, FedBN and SCAFFOLD
    when the run configures them)."""

    keeps_client_state: ClassVar[bool] = True

    def train(self, model: nn.Module, global_state: Mapping[str, torch.Tensor], data: ClientData,
              config: ClientConfig, layout: ParamLayout, *, seed: int, client_id: int,
              local_state: Mapping[str, torch.Tensor] | None = None) -> ClientUpdate:
        return client_update(model, global_state, data, config, layout, seed=seed, client_id=client_id,
                             local_state=local_state)


@dataclass(frozen=True, eq=False)
class FrozenSGDTrainer(ClientTrainer):
    """Local SGD that keeps the ``frozen`` parameter coordinates at their global value through every
    step (:func:`~secagg.fedavg.client.client_update`'s ``frozen``: a (num_parameters,) bool tensor).

    Built at run time, not from configuration (it is not a registered kind): e.g. by an adversary
    whose clients train only outside a mask (Neurotoxin). Compared by identity.
    """

    frozen: torch.Tensor
    keeps_client_state: ClassVar[bool] = True

    def train(self, model: nn.Module, global_state: Mapping[str, torch.Tensor], data: ClientData,
              config: ClientConfig, layout: ParamLayout, *, seed: int, client_id: int,
              local_state: Mapping[str, torch.Tensor] | None = None) -> ClientUpdate:
        return client_update(model, global_state, data, config, layout, seed=seed, client_id=client_id,
                             frozen=self.frozen, local_state=local_state)
