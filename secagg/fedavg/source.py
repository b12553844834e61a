"""Where a round's aggregate comes from: the one seam between the FedAvg round driver and its clients.

:meth:`secagg.fedavg.FedAvg.run_round` samples the round, asks an :class:`UpdateSource` for the
aggregate of the sampled clients, and then steps the global model and writes the round record the
same way whatever the source is. Two sources exist:

* :class:`LocalSource` (simulation): trains every sampled client in this process (or on a
  :class:`~secagg.parallel.ClientExecutor`), lets the configured adversary replace its clients' rows,
  and runs the whole aggregator on the batch (``Aggregator.aggregate``: the client steps, the sum and
  the server's part, composed);
* ``secagg.transport.serve.NetworkSource`` (deployment): sends the round to remote clients over gRPC
  and runs only the server's part of the placed aggregator on what crosses the trust boundary.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import torch
from torch import nn

from secagg.aggregation import Aggregate, UpdateBatch
from secagg.data.federated import ClientData
from secagg.errors import AbortError, UpdateError
from secagg.fedavg.client import ClientUpdate
from secagg.fedavg.config import ClientConfig
from secagg.fedavg.trainer import ClientTrainer
from secagg.layout import ParamLayout
from secagg.parallel import ClientExecutor, LocalExecutor
from secagg.seeding import derive_seed, round_seed

if TYPE_CHECKING:
    from secagg.fedavg.server import FedAvg, ServerState

__all__ = ["ClientJob", "Collected", "LocalSource", "TrainingRefused", "UpdateSource", "train_client"]


@dataclass(frozen=True)
class Collected:
    """What an update source produced for one round.

    ``aggregate``: the aggregator's output (update, new state, metrics), or ``None`` when the round
    produced no update, with the reason in ``aborted`` (a clean protocol abort, too few clients).
    ``local_states``: simulation only, what each client whose update the aggregate covers keeps for
    its next round (FedBN, SCAFFOLD; a deployment's clients keep theirs themselves).
    ``clients``: how many clients the aggregate covers; ``rejected``: ids of sampled clients whose
    update was refused; ``train_loss``: the example-weighted mean local loss when the source saw it
    (``None`` behind a secure sum). ``metrics``: extra record entries of the source (``net/*``
    traffic). ``batch``: the plaintext rows, when the source held them (simulation only), for the
    adversary's metrics.
    """

    aggregate: Aggregate | None
    clients: int = 0
    rejected: list[int] = field(default_factory=list)
    train_loss: float | None = None
    aborted: str | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    batch: UpdateBatch | None = None
    local_states: dict[int, dict[str, torch.Tensor]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if (self.aggregate is None) == (self.aborted is None):
            raise ValueError("Collected: exactly one of aggregate and aborted must be set")


class UpdateSource(Protocol):
    """Produces round ``round_index``'s aggregate over the ``sampled`` clients from ``state``."""

    def collect(self, fedavg: FedAvg, state: ServerState, round_index: int, sampled: list[int]) -> Collected:
        ...


@dataclass(frozen=True)
class ClientJob:
    """One sampled client's share of a round: its id, the (possibly poisoned) data it trains on, its
    training seed, the trainer it uses when not the run's (a malicious client's own), and what it kept
    from its last round (``local_state``: FedBN, SCAFFOLD; ``None`` before its first or without)."""

    client_id: int
    data: ClientData
    seed: int
    trainer: ClientTrainer | None = None
    local_state: Mapping[str, torch.Tensor] | None = None


@dataclass(frozen=True)
class TrainingRefused:
    """The marker :func:`train_client` returns for a client whose own update was refused (not finite,
    too large): a value, not an exception, so that one bad client does not fail a batch of tasks."""

    client_id: int
    reason: str


def train_client(trainer: ClientTrainer, model: nn.Module, global_state: Mapping[str, torch.Tensor],
                 config: ClientConfig, layout: ParamLayout, job: ClientJob) -> ClientUpdate | TrainingRefused:
    """``trainer.train`` for one client, with :class:`UpdateError` turned into :class:`TrainingRefused`.

    Module-level (picklable) so that a :class:`~secagg.parallel.ClientExecutor` can run it in another
    process.
    """
    trainer = trainer if job.trainer is None else job.trainer
    extra = {"local_state": job.local_state} if trainer.keeps_client_state else {}
    try:
        return trainer.train(model, global_state, job.data, config, layout, seed=job.seed,
                             client_id=job.client_id, **extra)
    except UpdateError as exc:
        return TrainingRefused(job.client_id, str(exc))


def weighted_loss(losses: list[float], examples: torch.Tensor) -> float | None:
    """The example-weighted mean of the clients' local losses (``None`` without examples)."""
    total = float(examples.sum())
    if not losses or total <= 0:
        return None
    return float(torch.tensor(losses, dtype=torch.float64) @ examples.to(torch.float64) / total)


@dataclass
class LocalSource:
    """The simulation's source: local training on ``executor`` (default: this process, one client
    after the other; any executor gives the same numbers), the adversary's crafting, then
    ``Aggregator.aggregate`` on the batch (:class:`AbortError` becomes an aborted round)."""

    executor: ClientExecutor = field(default_factory=LocalExecutor)

    def collect(self, fedavg: FedAvg, state: ServerState, round_index: int, sampled: list[int]) -> Collected:
        r = round_index
        jobs: list[ClientJob] = []
        for c in sampled:
            data = fedavg.data.client(c)
            adversary = fedavg.config.adversary
            trainer = None
            if c in fedavg.malicious and adversary is not None and adversary.active(r):
                # poisoned in this process: executors only ever train
                extra = ({"attacker": fedavg.attacker_index(c)}
                         if "attacker" in inspect.signature(adversary.poison_data).parameters else {})
                data = adversary.poison_data(data, fedavg.data.num_classes,
                                             derive_seed(fedavg.seed, "poison", r, c), **extra)
                own = adversary.trainer(fedavg.config.trainer, global_update=fedavg.last_global_update(r))
                trainer = None if own is fedavg.config.trainer else own
            jobs.append(ClientJob(c, data, derive_seed(fedavg.seed, "client", r, c), trainer,
                                  state.client_states.get(c)))
        results = self.executor.map(train_client, jobs, fedavg.config.trainer, fedavg.model,
                                    fedavg.broadcast(state), fedavg.config.client, fedavg.update_layout)
        updates = [u for u in results if isinstance(u, ClientUpdate)]
        rejected = [u.client_id for u in results if isinstance(u, TrainingRefused)]
        if not updates:
            raise UpdateError(f"round {r}: every sampled client's update was rejected "
                              f"(clients {rejected}); training has diverged")
        batch = UpdateBatch(
            updates=torch.stack([u.delta for u in updates]),
            weights=torch.tensor([u.num_examples for u in updates], dtype=torch.float64),
            client_ids=tuple(u.client_id for u in updates),
            round=r, seed=round_seed(fedavg.seed, r), layout=fedavg.update_layout,
            reference=fedavg.root_update(state, r), global_model=fedavg.global_model(state))
        batch = fedavg.attack(batch, state)
        try:
            agg = fedavg.config.aggregator.aggregate(batch, state.aggregator_state)
        except AbortError as exc:
            # a clean abort (e.g. too few clients left in secure aggregation): no update this round
            return Collected(None, rejected=rejected, aborted=str(exc))
        loss = weighted_loss([u.train_loss for u in updates], batch.weights)
        kept = {u.client_id: u.local_state for u in updates if u.local_state}
        return Collected(agg, len(updates), rejected, loss, batch=batch, local_states=kept)
