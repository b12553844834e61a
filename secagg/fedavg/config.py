"""Configuration of local training and of the FedAvg server."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import nn

from secagg.aggregation import Aggregator, Mean
from secagg.config_io import from_plain, to_plain
from secagg.errors import ConfigError
from secagg.fedavg.adversary import Adversary
from secagg.fedavg.optimizers import ServerOptimizer, resolve_server_optimizer
from secagg.fedavg.trainer import ClientTrainer, SGDTrainer
from secagg.layout import BUFFER_POLICIES, NORM_POLICIES, ParamLayout
from secagg.validation import check_bool, check_choice, check_int, check_real

SAMPLING = ("fixed", "poisson")


@dataclass(frozen=True)
class ClientConfig:
    """Local training: ``epochs`` passes of SGD over the client's data in batches of ``batch_size``.

    ``batch_size=0`` means full batch (one step per epoch). ``lr`` is the client learning rate.

    ``proximal_mu`` (mu >= 0, per unit of squared L2 distance in parameter space): FedProx (Li et al.,
    MLSys 2020). Each client minimizes its loss plus ``(mu / 2) ||w - w_global||^2`` over the model's
    parameters, where ``w_global`` is the round's global model; every local step adds that term's
    gradient ``mu (w - w_global)`` to the data gradient. It pulls the local model towards the global
    one (a smaller update under heterogeneous data). ``0`` (default) is plain FedAvg, bit for bit.
    """

    epochs: int = 5
    batch_size: int = 10
    lr: float = 0.1
    momentum: float = 0.0
    weight_decay: float = 0.0
    proximal_mu: float = 0.0

    def __post_init__(self) -> None:
        check_int("client.epochs", self.epochs, minimum=1)
        check_int("client.batch_size", self.batch_size, minimum=0)
        check_real("client.lr", self.lr, gt=0.0)
        check_real("client.momentum", self.momentum, ge=0.0, lt=1.0)
        check_real("client.weight_decay", self.weight_decay, ge=0.0)
        check_real("client.proximal_mu", self.proximal_mu, ge=0.0)

    def to_dict(self) -> dict[str, Any]:
        return to_plain(self)

    @classmethod
    def from_dict(cls, data: Any) -> ClientConfig:
        return from_plain(cls, data, "client")


@dataclass(frozen=True)
class FedAvgConfig:
    """One FedAvg run (McMahan et al. 2017), with an optional server optimizer step.

    Each round samples clients by ``sampling``: ``"fixed"`` takes ``max(1, round(fraction * num_clients))``
    clients without replacement; ``"poisson"`` takes each client independently with probability
    ``fraction`` (so a round may have no client: it is then skipped and recorded with ``clients: 0``),
    the sampling that privacy amplification by subsampling assumes. It then trains
    them from the global weights with ``trainer`` (plain local SGD by default), combines their deltas
    with ``aggregator`` and moves the global parameters by the server optimizer
    (:mod:`secagg.fedavg.optimizers`), which treats the aggregate as a pseudo-gradient.

    ``server_optimizer``: a :class:`~secagg.fedavg.optimizers.ServerOptimizer` (``"sgd"``, ``"adam"``,
    ``"yogi"``, ``"adagrad"``: FedAvg/FedAvgM and Reddi et al.'s FedAdam/FedYogi/FedAdagrad), or
    ``None`` (default) for the ``"sgd"`` kind given by the shorthands ``server_lr`` and
    ``server_momentum``: ``global += server_lr * step`` where ``step`` is the aggregate, or its
    momentum ``v = server_momentum * v + aggregate`` (FedAvgM, Hsu et al. 2019) when momentum > 0.
    Plain FedAvg is ``server_lr=1, server_momentum=0``. With ``server_optimizer`` set, the shorthands
    stay at their defaults or agree with it (else :class:`ConfigError` naming both);
    :attr:`resolved_server_optimizer` is the optimizer either way. Every kind reads only the aggregate
    (what a secure sum releases) and is post-processing of it: privacy accounting does not depend on
    the choice. Aggregated buffers (see
    :mod:`secagg.layout`) are always applied with step 1 and no optimizer state, so they become the
    aggregate of the clients' statistics.

    ``norm_layers="local"``: FedBN (Li et al., ICLR 2021): each client keeps its BatchNorm layers'
    parameters and statistics; they never leave it, the others are federated as usual
    (:func:`~secagg.layout.local_entries`). The run's accuracy is then each site's model (shared
    weights, its own BatchNorm) on its own test view (:func:`~secagg.fedavg.server.evaluate_sites`).
    ``scaffold=True``: SCAFFOLD (Karimireddy et al., ICML 2020) with control variates summed like the
    update (:mod:`secagg.fedavg.scaffold`). Both keep per-client state between rounds, so they need a
    trainer that takes it (:attr:`~secagg.fedavg.trainer.ClientTrainer.keeps_client_state`).
    """

    rounds: int = 30
    fraction: float = 1.0
    client: ClientConfig = field(default_factory=ClientConfig)
    server_lr: float = 1.0
    server_momentum: float = 0.0
    aggregator: Aggregator = field(default_factory=Mean)
    buffers: str = "aggregate"
    trainer: ClientTrainer = field(default_factory=SGDTrainer)
    adversary: Adversary | None = None
    sampling: str = "fixed"
    server_optimizer: ServerOptimizer | None = None
    norm_layers: str = "federated"
    scaffold: bool = False

    def __post_init__(self) -> None:
        check_int("rounds", self.rounds, minimum=1)
        check_real("fraction", self.fraction, gt=0.0, le=1.0)
        check_real("server_lr", self.server_lr, gt=0.0)
        check_real("server_momentum", self.server_momentum, ge=0.0, lt=1.0)
        resolve_server_optimizer(self.server_lr, self.server_momentum, self.server_optimizer)
        check_choice("buffers", self.buffers, BUFFER_POLICIES)
        if not isinstance(self.client, ClientConfig):
            raise ConfigError(f"client: expected a ClientConfig, got {type(self.client).__name__}")
        if not isinstance(self.aggregator, Aggregator):
            raise ConfigError(f"aggregator: expected an Aggregator, got "
                              f"{type(self.aggregator).__name__}")
        if self.adversary is not None and not isinstance(self.adversary, Adversary):
            raise ConfigError(f"adversary: expected an Adversary or None, got "
                              f"{type(self.adversary).__name__}")
        if not isinstance(self.trainer, ClientTrainer):
            raise ConfigError(f"trainer: expected a ClientTrainer, got {type(self.trainer).__name__}")
        check_choice("norm_layers", self.norm_layers, NORM_POLICIES)
        check_bool("scaffold", self.scaffold)
        stateful = [what for what, on in (("scaffold (SCAFFOLD)", self.scaffold),
                                          ("norm_layers='local' (FedBN)", self.norm_layers == "local"))
                    if on]
        if stateful and not self.trainer.keeps_client_state:
            raise ConfigError(f"trainer: {' and '.join(stateful)} keep per-client state between rounds, "
                              f"which the {self.trainer.kind!r} trainer does not take; use the 'sgd' "
                              f"trainer")
        check_choice("sampling", self.sampling, SAMPLING)
        rate = self.aggregator.poisson_sample_rate()
        if rate is not None:
            if self.sampling != "poisson" and not rate == self.fraction == 1.0:  # q = 1: everyone
                raise ConfigError(
                    f"sampling: the aggregator's privacy accounting assumes Poisson client sampling "
                    f"(sample rate {rate:g}) but sampling is {self.sampling!r}; use sampling='poisson' "
                    f"with fraction={rate:g}, or account with sampling='none' (no amplification)")
            if abs(rate - self.fraction) > 1e-12 * max(1.0, rate):
                raise ConfigError(f"fraction: must equal the sample rate {rate:g} the aggregator's "
                                  f"privacy accounting assumes, got {self.fraction:g}")

    @property
    def resolved_server_optimizer(self) -> ServerOptimizer:
        """The server optimizer this configuration runs: ``server_optimizer``, or the ``"sgd"`` kind
        with ``server_lr`` and ``server_momentum`` when it is ``None``."""
        return resolve_server_optimizer(self.server_lr, self.server_momentum, self.server_optimizer)

    def update_layout(self, model: nn.Module) -> ParamLayout:
        """The layout of the vectors this run's clients send for ``model``: its federated entries
        (``buffers``, ``norm_layers``), widened by the control variates under ``scaffold``."""
        layout = ParamLayout.from_module(model, self.buffers, self.norm_layers)
        return layout.with_controls() if self.scaffold else layout

    def clients_per_round(self, num_clients: int) -> int:
        """How many of ``num_clients`` take part in each round."""
        return max(1, min(num_clients, int(self.fraction * num_clients + 0.5)))

    def to_dict(self) -> dict[str, Any]:
        return to_plain(self)

    @classmethod
    def from_dict(cls, data: Any) -> FedAvgConfig:
        return from_plain(cls, data, "fedavg")
