"""The FedAvg server: sample clients, collect their updates, aggregate, step the global model."""

from __future__ import annotations

import copy
import inspect
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from secagg.aggregation import AggState, UpdateBatch
from secagg.data.federated import ClientData, FederatedDataset
from secagg.errors import ConfigError, UpdateError
from secagg.fedavg.client import client_update
from secagg.fedavg.config import FedAvgConfig
from secagg.fedavg.scaffold import control_step, initial_controls
from secagg.fedavg.source import LocalSource, UpdateSource
from secagg.parallel import ClientExecutor, LocalExecutor
from secagg.seeding import derive_seed, numpy_rng


@dataclass
class ServerState:
    """Everything that changes between rounds; a checkpoint saves exactly this.

    ``round`` counts completed rounds; ``model`` is the global model's full state dict (integer buffers
    included); ``optimizer_state`` is the server optimizer's state over the parameter slice (see
    :meth:`~secagg.fedavg.optimizers.ServerOptimizer.state_keys`; empty for plain FedAvg).
    ``participations`` (int64, one entry per client) counts the rounds each client was sampled in, for
    record-level privacy accounting (``None``: all zero). ``control``: SCAFFOLD's server control
    variates (``control/<parameter>`` entries, broadcast with the model; empty without SCAFFOLD).
    ``client_states``: **simulation only**, what each simulated client keeps on its own device between
    rounds (FedBN's BatchNorm entries, SCAFFOLD's ``c_i``), by client id; the server's logic never reads
    it (a deployment's clients keep theirs themselves), it is here so that a checkpoint resumes the
    whole simulation bit for bit. There is no generator state: all randomness
    is derived from the run's seed and the round index (see :mod:`secagg.seeding`).

    Older code passed the server-momentum buffer (a tensor, or ``None``) as the fourth positional
    argument; that still works and means ``{"momentum": tensor}`` (or ``{}``), and :attr:`momentum`
    reads it back.
    """

    round: int
    model: dict[str, torch.Tensor]
    aggregator_state: AggState = field(default_factory=dict)
    optimizer_state: dict[str, torch.Tensor] = field(default_factory=dict)
    participations: torch.Tensor | None = None
    control: dict[str, torch.Tensor] = field(default_factory=dict)
    client_states: dict[int, dict[str, torch.Tensor]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.optimizer_state is None:
            self.optimizer_state = {}
        elif isinstance(self.optimizer_state, torch.Tensor):  # the old positional momentum buffer
            self.optimizer_state = {"momentum": self.optimizer_state}

    @property
    def momentum(self) -> torch.Tensor | None:
        """The ``"sgd"`` server optimizer's momentum buffer (FedAvgM), ``None`` when there is none."""
        return self.optimizer_state.get("momentum")

    @property
    def weights(self) -> dict[str, torch.Tensor]:
        """The old name of :attr:`model` (kept for existing code; ``weights`` now means only the
        clients' aggregation weights, :attr:`UpdateBatch.weights`)."""
        return self.model


@dataclass(frozen=True)
class RoundResult:
    state: ServerState
    record: dict[str, Any]


def evaluate(model: nn.Module, state_dict: Mapping[str, torch.Tensor], x: torch.Tensor,
             y: torch.Tensor, batch_size: int = 2048) -> dict[str, float]:
    """Accuracy (fraction in [0, 1]) and mean cross-entropy loss of ``model`` loaded with ``state_dict``
    on ``(x, y)``.

    A model that is not a classifier brings its own evaluation: if it has a method
    ``evaluate_state(state_dict, x, y) -> dict[str, float]``, its result is returned instead (every
    entry goes into the round record). It must contain ``"accuracy"`` and ``"loss"`` (the figures the
    run's tables and summaries show; e.g. a GAN's discriminator accuracy and loss, see
    :class:`secagg.gan.GANPair`)."""
    custom = getattr(model, "evaluate_state", None)
    if callable(custom):
        metrics = dict(custom(state_dict, x, y))
        missing = {"accuracy", "loss"} - set(metrics)
        if missing:
            raise ConfigError(f"evaluate_state: {type(model).__name__}'s evaluation must report "
                              f"'accuracy' and 'loss', lacks {sorted(missing)}")
        return metrics
    net = copy.deepcopy(model)
    net.load_state_dict(state_dict, strict=True)
    net.train(False)  # evaluation mode (BatchNorm uses running statistics)
    correct, loss_sum = 0, 0.0
    with torch.no_grad():
        for xb, yb in zip(x.split(batch_size), y.split(batch_size), strict=True):
            logits = net(xb)
            loss_sum += float(nn.functional.cross_entropy(logits, yb, reduction="sum"))
            correct += int((logits.argmax(dim=1) == yb).sum())
    n = int(y.shape[0])
    return {"accuracy": correct / n, "loss": loss_sum / n}


def evaluate_sites(model: nn.Module, weights: Mapping[str, torch.Tensor],
                   client_states: Mapping[int, Mapping[str, torch.Tensor]], local: tuple[str, ...],
                   x: torch.Tensor, y: torch.Tensor, num_sites: int,
                   owner: np.ndarray | None = None) -> dict[str, float]:
    """FedBN's evaluation: site ``i``'s model is the shared ``weights`` with its own values of the
    ``local`` entries (from ``client_states[i]``; the global values for a site that has not trained
    yet), evaluated on site ``i``'s test view.

    With ``owner`` (the site of each test example, e.g. :attr:`FederatedDataset.test_site`) each
    example is classified by its own site's model and ``accuracy``/``loss`` are over all examples;
    without it every site's model is evaluated on all of ``(x, y)`` and they are the mean over sites.
    ``site_accuracy_min``/``_max``: the worst and best site."""
    def site_state(i: int) -> dict[str, torch.Tensor]:
        own = client_states.get(i, {})
        return {**weights, **{k: own[k] for k in local if k in own}}

    fresh: dict[str, float] | None = None  # sites without state share the global model's result
    per_site: list[tuple[int, dict[str, float]]] = []
    for i in range(num_sites):
        rows = None if owner is None else torch.from_numpy(np.flatnonzero(owner == i))
        if rows is not None and rows.numel() == 0:
            continue
        xs, ys = (x, y) if rows is None else (x[rows], y[rows])
        if rows is None and i not in client_states:
            fresh = fresh if fresh is not None else evaluate(model, site_state(i), xs, ys)
            per_site.append((int(ys.shape[0]), fresh))
        else:
            per_site.append((int(ys.shape[0]), evaluate(model, site_state(i), xs, ys)))
    accs = [m["accuracy"] for _, m in per_site]
    if owner is None:
        acc, loss = float(np.mean(accs)), float(np.mean([m["loss"] for _, m in per_site]))
    else:
        total = sum(n for n, _ in per_site)
        acc = sum(n * m["accuracy"] for n, m in per_site) / total
        loss = sum(n * m["loss"] for n, m in per_site) / total
    return {"accuracy": acc, "loss": loss, "site_accuracy_min": min(accs), "site_accuracy_max": max(accs)}


def root_data(data: FederatedDataset, count: int, seed: int) -> ClientData | None:
    """The server's clean root dataset: ``count`` training examples drawn without replacement from the
    union of the clients' data (as FLTrust's evaluation draws it; the server collected them itself, so
    they are trusted), from ``seed`` (public: which examples the server holds is not a secret);
    ``None`` for ``count = 0``. :class:`ConfigError` when the training set is smaller than ``count``."""
    if count == 0:
        return None
    n = int(data.train_y.shape[0])
    if count > n:
        raise ConfigError(f"root_examples: the rule asks the server for {count} root examples, the "
                          f"training set has {n}")
    idx = torch.from_numpy(numpy_rng(seed, "root-data").choice(n, size=count, replace=False))
    return ClientData(data.train_x[idx], data.train_y[idx])


class FedAvg:
    """Runs FedAvg rounds for ``model`` over ``data``; every round is a function of ``seed``.

    ``model``'s current weights are the initial global model; the object itself is never trained.
    ``source`` produces each round's aggregate (:mod:`secagg.fedavg.source`): by default the
    simulation's :class:`~secagg.fedavg.source.LocalSource` on ``executor`` (default: one client
    after the other in this process; any executor gives the same numbers, since local training is a
    pure function of its inputs); a deployment passes its network source. Sampling, accounting, the
    server step and the round record are the same for every source.

    ``secret_sampling``: draw each round's clients from the OS CSPRNG instead of the public ``seed``.
    Amplification by subsampling (which a DP aggregator's ``poisson_sample_rate`` claims) holds only
    when the adversary cannot predict the sample, so a deployment (``secagg serve``) must set it; a
    simulation keeps the seeded, reproducible sample, and its round records say so
    (``"sample_secret": false`` whenever an amplified epsilon is reported).
    """

    def __init__(self, config: FedAvgConfig, model: nn.Module, data: FederatedDataset,
                 *, seed: int = 0, executor: ClientExecutor | None = None,
                 secret_sampling: bool = False, source: UpdateSource | None = None) -> None:
        if source is not None and executor is not None:
            raise ConfigError("executor: runs the local source's training; give either a source or an "
                              "executor, not both")
        self.config = config
        self.model = model
        self.data = data
        self.seed = seed
        self.executor = executor if executor is not None else LocalExecutor()
        self.source: UpdateSource = source if source is not None else LocalSource(self.executor)
        #: the vectors the clients send (with SCAFFOLD, model change then control change)
        self.update_layout = config.update_layout(model)
        #: the model's federated entries: the leading model_dim coordinates of an update
        self.layout = self.update_layout.model
        #: the server optimizer stepping the global parameters (FedAvgConfig.resolved_server_optimizer)
        self.server_optimizer = config.resolved_server_optimizer
        self.examples = {i: len(part) for i, part in enumerate(data.partition)}
        self.malicious = (config.adversary.malicious(data.num_clients, derive_seed(seed, "adversary"))
                          if config.adversary is not None else frozenset())
        self.root = root_data(data, config.aggregator.root_examples(), seed)
        # the last global update (flat, over the parameters), as every client can compute it from two
        # consecutive global models: what attackers that track the training (Neurotoxin) read
        self._last_global: tuple[int, torch.Tensor] | None = None
        self.secret_sampling = bool(secret_sampling)
        self._secret_samples: dict[int, list[int]] = {}  # round -> its CSPRNG sample, drawn once
        self._agg_epsilon: dict[int, float | None] = {}
        self._trainer_epsilon: tuple[tuple[int, ...] | None, float | None] = (None, None)

    def initial_state(self) -> ServerState:
        weights = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        optimizer_state = self.server_optimizer.init_state(self.layout.num_parameters, self.layout.dtype)
        return ServerState(0, weights, self.config.aggregator.init_state(self.update_layout.dim),
                           optimizer_state, torch.zeros(self.data.num_clients, dtype=torch.int64),
                           initial_controls(self.update_layout))

    def broadcast(self, state: ServerState) -> dict[str, torch.Tensor]:
        """What the server sends every sampled client: the global model's state dict and, with
        SCAFFOLD, its control variates (``control/...`` entries)."""
        return {**state.model, **state.control} if state.control else state.model

    def evaluate(self, weights: Mapping[str, torch.Tensor],
                 client_states: Mapping[int, Mapping[str, torch.Tensor]]) -> dict[str, float]:
        """The round record's test metrics: the global model on the test set, or with FedBN every
        site's own model on its test view (:func:`evaluate_sites`)."""
        if not self.layout.local:
            return evaluate(self.model, weights, self.data.test_x, self.data.test_y)
        return evaluate_sites(self.model, weights, client_states, self.layout.local, self.data.test_x,
                              self.data.test_y, self.data.num_clients, self.data.test_site)

    def sample_clients(self, round_index: int) -> list[int]:
        """The sorted client ids taking part in round ``round_index`` (1-based).

        ``sampling="fixed"``: ``clients_per_round`` clients without replacement; ``"poisson"``: each
        client independently with probability ``fraction`` (possibly none). Public randomness from
        :mod:`secagg.seeding` (the same seed and round give the same clients), or with
        ``secret_sampling`` the OS CSPRNG, drawn once per round (asking again returns the same sample).
        """
        if self.secret_sampling:
            if round_index not in self._secret_samples:
                self._secret_samples = {round_index: self._secret_sample()}  # only the round at hand
            return list(self._secret_samples[round_index])
        n = self.data.num_clients
        if self.config.sampling == "poisson":
            draws = numpy_rng(self.seed, "sample-poisson", round_index).random(n)  # not secret
            return [int(c) for c in (draws < self.config.fraction).nonzero()[0]]
        m = self.config.clients_per_round(n)
        chosen = numpy_rng(self.seed, "sample", round_index).choice(n, size=m, replace=False)
        return sorted(int(c) for c in chosen)

    def _secret_sample(self) -> list[int]:
        n, draw = self.data.num_clients, secrets.SystemRandom()  # the OS CSPRNG: the sample is secret
        if self.config.sampling == "poisson":
            return [c for c in range(n) if draw.random() < self.config.fraction]
        return sorted(draw.sample(range(n), self.config.clients_per_round(n)))

    def participations_after(self, state: ServerState, clients: list[int]) -> torch.Tensor:
        """Rounds each client was sampled in, after ``state`` plus one round sampling ``clients``."""
        counts = (state.participations.clone() if state.participations is not None
                  else torch.zeros(self.data.num_clients, dtype=torch.int64))
        counts[clients] += 1
        return counts

    def _epsilons(self, round_index: int, participations: torch.Tensor
                  ) -> list[tuple[str, float | None, float | None]]:
        """(who, epsilon after ``round_index`` rounds, budget) for the aggregator and the trainer."""
        agg, trainer = self.config.aggregator, self.config.trainer
        if round_index not in self._agg_epsilon:
            self._agg_epsilon[round_index] = agg.epsilon_after(round_index, self.update_layout.dim)
        key = tuple(participations.tolist())
        if self._trainer_epsilon[0] != key:  # privacy_stop and run_round ask for the same counts
            counts = {i: k for i, k in enumerate(key) if k > 0}
            self._trainer_epsilon = (key, trainer.epsilon_after(counts, self.examples))
        return [(f"aggregator {agg.kind!r}", self._agg_epsilon[round_index], agg.privacy_budget()),
                (f"trainer {trainer.kind!r}", self._trainer_epsilon[1], trainer.privacy_budget())]

    def epsilon_after(self, round_index: int, participations: torch.Tensor) -> float | None:
        """The run's DP epsilon after ``round_index`` rounds with these per-client participation
        counts: the larger of the aggregator's (client-level) and the trainer's (record-level)
        epsilon, each at its own delta; ``None`` when neither makes a DP claim."""
        values = [eps for _, eps, _ in self._epsilons(round_index, participations) if eps is not None]
        return max(values) if values else None

    def sample_note(self, epsilon: float | None) -> dict[str, bool]:
        """``{"sample_secret": ...}`` for a round record whose ``epsilon`` claims amplification by
        sampling (an aggregator with a Poisson rate < 1), else ``{}``: the amplified figure assumes the
        sample is hidden from the adversary, true only with ``secret_sampling``."""
        rate = self.config.aggregator.poisson_sample_rate()
        if epsilon is None or rate is None or rate >= 1.0:
            return {}
        return {"sample_secret": self.secret_sampling}

    def privacy_stop(self, state: ServerState) -> str | None:
        """Why the next round must not run (its epsilon would exceed a privacy budget), or ``None``."""
        r = state.round + 1
        parts = self.participations_after(state, self.sample_clients(r))
        for who, eps, budget in self._epsilons(r, parts):
            if eps is not None and budget is not None and eps > budget:
                return (f"privacy budget: epsilon would reach {eps:.4g} > target {budget:g} in round {r} "
                        f"({who})")
        return None

    def run_round(self, state: ServerState, source: UpdateSource | None = None) -> RoundResult:
        """Run round ``state.round + 1`` and return the new state (``state`` is not modified).

        ``source``: where the round's aggregate comes from (default: this driver's ``source``). The
        record's ``epsilon`` is :meth:`epsilon_after` this round (``None`` without DP). A round that
        samples no client (Poisson sampling) or that the source aborts changes nothing but the round
        counter. Budgets are not enforced here: call :meth:`privacy_stop` first (``run_rounds`` does).
        """
        started = time.perf_counter()
        r = state.round + 1
        sampled = self.sample_clients(r)
        participations = self.participations_after(state, sampled)
        epsilon = self.epsilon_after(r, participations)
        unchanged = ServerState(r, state.model, state.aggregator_state, state.optimizer_state, participations,
                                state.control, state.client_states)
        if not sampled:
            record = {**self.sample_note(epsilon), "round": r, "clients": 0, "rejected": [],
                      "skipped": "no client sampled", "train_loss": None,
                      **self.evaluate(state.model, state.client_states),
                      "update_norm": 0.0, "epsilon": epsilon, "seconds": time.perf_counter() - started}
            return RoundResult(unchanged, record)
        got = (source if source is not None else self.source).collect(self, state, r, sampled)
        if got.aggregate is None:
            record = {**self.sample_note(epsilon), "round": r, "clients": 0, "rejected": got.rejected,
                      "aborted": got.aborted, "train_loss": None,
                      **self.evaluate(state.model, state.client_states),
                      "update_norm": 0.0, **got.metrics, "epsilon": epsilon,
                      "seconds": time.perf_counter() - started}
            return RoundResult(unchanged, record)
        agg = got.aggregate
        dim = self.update_layout.dim
        if tuple(agg.update.shape) != (dim,) or not torch.isfinite(agg.update).all():
            raise UpdateError(f"aggregator {self.config.aggregator.kind!r} returned an update of "
                              f"shape {tuple(agg.update.shape)} (expected ({dim},), finite)")
        weights, optimizer_state, control = self.server_step(state, agg.update.to(self.layout.dtype),
                                                             clients=got.clients)
        client_states = ({**state.client_states, **got.local_states} if got.local_states
                         else state.client_states)
        if self.config.adversary is not None:
            p = self.layout.num_parameters
            self._last_global = (r, (self.layout.flatten(weights)[:p] - self.layout.flatten(state.model)[:p]))
        record: dict[str, Any] = {
            "round": r,
            "clients": got.clients,
            "rejected": got.rejected,
            "train_loss": got.train_loss,
            **self.evaluate(weights, client_states),
            "update_norm": float(torch.linalg.vector_norm(agg.update)),
            **{f"agg/{k}": v for k, v in agg.metrics.items()},
            **got.metrics,
            **(self._adversary_metrics(weights, got.batch) if got.batch is not None else {}),
            "epsilon": epsilon,
            **self.sample_note(epsilon),
            "seconds": time.perf_counter() - started,
        }
        return RoundResult(ServerState(r, weights, agg.state, optimizer_state, participations, control,
                                       client_states), record)

    def root_update(self, state: ServerState, round_index: int) -> torch.Tensor | None:
        """The server's own update for round ``round_index``: plain local SGD (the clients' local
        configuration) from the global model on :attr:`root`, for rules that trust a root dataset
        (:meth:`~secagg.aggregation.Aggregator.root_examples`); ``None`` when the rule needs none."""
        if self.root is None:
            return None
        # the server trains like an honest client (with SCAFFOLD, one whose own control is the server's)
        update = client_update(self.model, self.broadcast(state), self.root, self.config.client,
                               self.update_layout, seed=derive_seed(self.seed, "root", round_index),
                               client_id=-1, local_state=state.control)
        return update.delta

    def global_model(self, state: ServerState) -> torch.Tensor | None:
        """The flat global weights for the batch, when the aggregator compares the clients' models
        (:meth:`~secagg.aggregation.Aggregator.needs_global_model`); ``None`` otherwise (no copy)."""
        if not self.config.aggregator.needs_global_model():
            return None
        return self.update_layout.flatten(self.broadcast(state))

    def attacker_index(self, client_id: int) -> int:
        """The rank of malicious ``client_id`` among the run's malicious clients (0-based, by id): how
        attacks that split a task among the attackers (a distributed backdoor) tell them apart."""
        return sorted(self.malicious).index(client_id)

    def last_global_update(self, round_index: int) -> torch.Tensor | None:
        """The global model's change over the parameters in the round before ``round_index`` (what
        every client can compute from the two global models it received), or ``None`` in the first
        round and after a resume (this is simulation memory, not checkpointed state)."""
        if self._last_global is None or self._last_global[0] != round_index - 1:
            return None
        return self._last_global[1]

    def attack(self, batch: UpdateBatch, state: ServerState) -> UpdateBatch:
        """The batch with the malicious clients' rows replaced by what the adversary crafts from the
        honest rows and their own; the deployed aggregator is offered as the defence to tune against
        (on the round's state, honest rows first). Outside the adversary's attack window
        (:meth:`~secagg.fedavg.adversary.Adversary.active`) the malicious clients behave honestly."""
        adversary = self.config.adversary
        bad = [i for i, c in enumerate(batch.client_ids) if c in self.malicious]
        if adversary is None or not bad or not adversary.active(batch.round):
            return batch
        good = [i for i in range(batch.num_clients) if i not in set(bad)]
        order = good + bad
        weights = batch.weights[order]
        ids = tuple(batch.client_ids[i] for i in order)

        def defence(stack: torch.Tensor) -> torch.Tensor:
            trial = UpdateBatch(stack.to(batch.updates.dtype), weights, ids, batch.round, batch.seed,
                                batch.layout, batch.reference, batch.global_model)
            return self.config.aggregator.aggregate(trial, state.aggregator_state).update

        # adversaries written before global_update existed keep working: it is passed only to those
        # whose craft() takes it
        extra = ({"global_update": self.last_global_update(batch.round)}
                 if "global_update" in inspect.signature(adversary.craft).parameters else {})
        crafted = adversary.craft(batch.updates[good], batch.updates[bad], defence,
                                  derive_seed(self.seed, "craft", batch.round), weights, **extra)
        if tuple(crafted.shape) != (len(bad), batch.dim):
            raise UpdateError(f"adversary {adversary.kind!r}: crafted updates of shape "
                              f"{tuple(crafted.shape)}, expected ({len(bad)}, {batch.dim})")
        updates = batch.updates.clone()
        updates[bad] = crafted.to(updates.dtype)
        return batch.replace(updates=updates)

    def _adversary_metrics(self, weights: Mapping[str, torch.Tensor], batch: UpdateBatch) -> dict[str, Any]:
        adversary = self.config.adversary
        if adversary is None:
            return {}
        net = copy.deepcopy(self.model)
        net.load_state_dict(weights, strict=True)
        net.train(False)

        def predict(x: torch.Tensor) -> torch.Tensor:
            with torch.no_grad():
                return torch.cat([net(xb).argmax(dim=1) for xb in x.split(2048)])

        malicious = sum(1 for c in batch.client_ids if c in self.malicious)
        return {"malicious": malicious, **adversary.metrics(predict, self.data.test_x, self.data.test_y)}

    def server_step(self, state: ServerState, update: torch.Tensor, *, clients: int = 0
                    ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """(new global weights, new server optimizer state, new SCAFFOLD controls) after applying the
        aggregated ``update`` (:attr:`update_layout` order and width) to ``state``: the server
        optimizer (:attr:`server_optimizer`) steps the parameter slice, the buffer slice moves by the
        aggregate, and the control slice by ``clients / num_clients`` of it (``clients``: how many
        clients the aggregate covers; SCAFFOLD's ``|S| / N``)."""
        p, m = self.layout.num_parameters, self.layout.model_dim
        current = self.layout.flatten(state.model)
        params, optimizer_state = self.server_optimizer.step(current[:p], update[:p], state.optimizer_state)
        new = torch.cat([params, current[p:] + update[p:m]])
        weights = {k: v.clone() for k, v in state.model.items()}
        weights.update(self.layout.unflatten(new))
        control = state.control
        if self.update_layout.has_controls:
            control = control_step(self.update_layout, state.control, update[m:], clients,
                                   self.data.num_clients)
        return weights, optimizer_state, control
