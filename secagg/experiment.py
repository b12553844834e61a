"""A whole training run: configuration, rounds, checkpoint/resume and results on disk.

``run_experiment`` checkpoints after every round (atomically, see :mod:`secagg.checkpoint`) and
rewrites ``results.json``/``results.csv``, so an interrupted run loses at most the round in flight
and ``resume=True`` continues it to the same final model an uninterrupted run reaches. A run with a
privacy budget stops before the first round whose epsilon would exceed it; ``stopped`` says why.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from secagg.checkpoint import load_checkpoint, save_checkpoint
from secagg.config_io import from_plain, to_plain
from secagg.errors import CheckpointError, ConfigError
from secagg.fedavg import FedAvg, FedAvgConfig, ServerSGD, ServerState
from secagg.parallel import ClientExecutor
from secagg.task import TaskConfig, TaskFactory, heterogeneity_report, make_task
from secagg.validation import check_int

CHECKPOINT = "checkpoint.safetensors"


@dataclass(frozen=True)
class ExperimentConfig:
    """Task + FedAvg settings + the root seed: everything that determines a run's numbers."""

    task: TaskConfig = field(default_factory=TaskConfig)
    fedavg: FedAvgConfig = field(default_factory=FedAvgConfig)
    seed: int = 0

    def __post_init__(self) -> None:
        check_int("seed", self.seed, minimum=0)

    def to_dict(self) -> dict[str, Any]:
        return to_plain(self)

    @classmethod
    def from_dict(cls, data: Any) -> ExperimentConfig:
        return from_plain(cls, data, "config")

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ExperimentConfig:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"config: not valid JSON ({exc})") from exc
        return cls.from_dict(data)


@dataclass
class ExperimentResult:
    config: ExperimentConfig
    history: list[dict[str, Any]]
    state: ServerState
    fedavg: FedAvg
    stopped: str | None = None

    @property
    def trainer(self) -> FedAvg:
        """The old name of :attr:`fedavg` (kept for existing code; a trainer is a client's local
        training, :class:`secagg.fedavg.trainer.Trainer`)."""
        return self.fedavg


RoundCallback = Callable[[dict[str, Any]], None]


def run_experiment(config: ExperimentConfig, out_dir: str | Path | None = None, *,
                   resume: bool = False, on_round: RoundCallback | None = None,
                   executor: ClientExecutor | None = None,
                   task_factory: TaskFactory | None = None) -> ExperimentResult:
    """Train ``config.fedavg.rounds`` rounds, checkpointing to ``out_dir`` after each one.

    With ``resume=True`` the run continues from ``out_dir``'s checkpoint, which must have been
    written by the same configuration (only ``fedavg.rounds`` may differ, to extend a run).
    ``on_round`` is called with each new round's record (for progress display). Before each round,
    if the aggregator's or the trainer's privacy budget would be exceeded by it, the run ends there
    and ``ExperimentResult.stopped`` (and ``results.json``'s ``"stopped"``) gives the reason.
    ``executor`` runs each round's client training (default: in this process; see
    :mod:`secagg.parallel`); it does not change the numbers. ``task_factory``: the user's own model
    and data (:func:`secagg.task.load_task_factory`; default: the bundled task).
    """
    if resume and out_dir is None:
        raise ConfigError("resume: needs out_dir, the directory holding the checkpoint")
    task = make_task(config.task, seed=config.seed, factory=task_factory)
    fedavg = FedAvg(config.fedavg, task.model, task.data, seed=config.seed, executor=executor)
    state, history = fedavg.initial_state(), []
    ckpt = Path(out_dir) / CHECKPOINT if out_dir is not None else None
    if resume and ckpt is not None:
        state, history = load_run(ckpt, config, fedavg)
    state, stopped = run_rounds(fedavg, config, state, history, ckpt.parent if ckpt is not None else None,
                                on_round)
    return ExperimentResult(config, history, state, fedavg, stopped)


def run_rounds(fedavg: FedAvg, config: ExperimentConfig, state: ServerState, history: list[dict[str, Any]],
               out_dir: Path | None, on_round: RoundCallback | None = None) -> tuple[ServerState, str | None]:
    """The run loop every driver shares (simulation and ``secagg serve``): rounds from ``state`` to
    ``config.fedavg.rounds``, each through ``fedavg.run_round`` (its source decides where the clients
    are), its record appended to ``history``, checkpoint and results written to ``out_dir`` after it,
    and, for a model with a method ``write_artifacts(state_dict, out_dir, round, history, *, final)``,
    that model's own files (a GAN's image grids: :class:`secagg.gan.GANPair`). Before each round, a
    round that would exceed a privacy budget ends the run; returns the last state and that reason
    (``None`` when every round ran)."""
    from secagg.results import write_results  # matplotlib import stays off the library path

    ckpt = out_dir / CHECKPOINT if out_dir is not None else None
    data = heterogeneity_report(fedavg.data, config.task, config.seed) if out_dir is not None else None
    while state.round < config.fedavg.rounds:
        stopped = fedavg.privacy_stop(state)
        if stopped is not None:
            if out_dir is not None:
                write_results(out_dir, config, history, stopped=stopped, data=data)
            return state, stopped
        result = fedavg.run_round(state)
        state = result.state
        history.append(result.record)
        if ckpt is not None:
            save_run(ckpt, config, state, history)
            write_results(ckpt.parent, config, history, data=data)
            artifacts = getattr(fedavg.model, "write_artifacts", None)
            if callable(artifacts):  # a model's own files for the run folder (a GAN's image grids)
                artifacts(state.model, ckpt.parent, state.round, history,
                          final=state.round >= config.fedavg.rounds)
        if on_round is not None:
            on_round(result.record)
    return state, None


def save_run(path: Path, config: ExperimentConfig, state: ServerState,
             history: list[dict[str, Any]]) -> None:
    """Checkpoint a run (state + configuration + history) atomically at ``path``."""
    tensors = {f"weights/{k}": v for k, v in state.model.items()}
    tensors |= {f"aggregator/{k}": v for k, v in state.aggregator_state.items()}
    # the "sgd" kind's momentum keeps the name it had before other server optimizers existed, so such
    # a run writes the same checkpoint as then
    tensors |= {("server/momentum" if k == "momentum" else f"server/optimizer/{k}"): v
                for k, v in state.optimizer_state.items()}
    if state.participations is not None:
        tensors["server/participations"] = state.participations
    tensors |= {f"server/{k}": v for k, v in state.control.items()}  # server/control/<parameter>
    tensors |= {f"clients/{c}/{k}": v for c, kept in state.client_states.items() for k, v in kept.items()}
    save_checkpoint(path, tensors, {"config": config.to_dict(), "round": state.round,
                                    "history": history})


def _comparable(config_dict: dict[str, Any]) -> dict[str, Any]:
    out = json.loads(json.dumps(config_dict))
    # an older checkpoint lacks fields added since (e.g. server_optimizer): read them as defaults; one
    # that no longer loads is compared as written (it differs from any configuration that loads today)
    with contextlib.suppress(ConfigError):
        out = json.loads(json.dumps(ExperimentConfig.from_dict(out).to_dict()))
    out["fedavg"].pop("rounds", None)
    return out


def load_run(path: Path, config: ExperimentConfig, fedavg: FedAvg
             ) -> tuple[ServerState, list[dict[str, Any]]]:
    """The state and history checkpointed at ``path``; :class:`CheckpointError` unless it was written
    by ``config`` (only ``fedavg.rounds`` may differ) for ``fedavg``'s model."""
    tensors, meta = load_checkpoint(path)
    try:
        saved, round_index, history = meta["config"], int(meta["round"]), list(meta["history"])
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: metadata lacks config/round/history") from exc
    if _comparable(saved) != _comparable(config.to_dict()):
        diff = _first_difference(_comparable(saved), _comparable(config.to_dict()))
        raise CheckpointError(f"{path}: written by a different configuration ({diff}); "
                              f"use another --out directory or the same settings")
    weights = {k.removeprefix("weights/"): v for k, v in tensors.items()
               if k.startswith("weights/")}
    expected = fedavg.model.state_dict()
    if set(weights) != set(expected) or any(
            weights[k].shape != v.shape or weights[k].dtype != v.dtype
            for k, v in expected.items()):
        raise CheckpointError(f"{path}: model weights do not match the configured model")
    agg = {k.removeprefix("aggregator/"): v for k, v in tensors.items()
           if k.startswith("aggregator/")}
    optimizer_state = {k.removeprefix("server/optimizer/"): v for k, v in tensors.items()
                       if k.startswith("server/optimizer/")}
    if "server/momentum" in tensors:
        optimizer_state["momentum"] = tensors["server/momentum"]
    try:
        fedavg.server_optimizer.check_state(optimizer_state, fedavg.layout.num_parameters,
                                            fedavg.layout.dtype, where="server optimizer state")
    except ConfigError as exc:
        raise CheckpointError(f"{path}: inconsistent server state for round {round_index}: {exc}") from None
    participations = tensors.get("server/participations")
    if len(history) != round_index or (
            participations is not None and (participations.dtype != torch.int64
                                            or tuple(participations.shape) != (fedavg.data.num_clients,))):
        raise CheckpointError(f"{path}: inconsistent server state for round {round_index}")
    if participations is None and round_index > 0:
        raise CheckpointError(f"{path}: lacks the per-client participation counts privacy accounting "
                              f"needs (written by an older version); start a new run")
    control = {k.removeprefix("server/"): v for k, v in tensors.items() if k.startswith("server/control/")}
    expected_control = set(fedavg.update_layout.control_names)
    if set(control) != expected_control and not (round_index == 0 and not control):
        raise CheckpointError(f"{path}: its SCAFFOLD control variates do not match the configured model "
                              f"({len(control)} entries, expected {len(expected_control)})")
    if expected_control and not control:
        control = fedavg.initial_state().control
    client_states: dict[int, dict[str, torch.Tensor]] = {}
    for k, v in tensors.items():
        if k.startswith("clients/"):
            client, _, name = k.removeprefix("clients/").partition("/")
            if not client.isdigit() or not 0 <= int(client) < fedavg.data.num_clients or not name:
                raise CheckpointError(f"{path}: malformed client state entry {k!r}")
            client_states.setdefault(int(client), {})[name] = v
    return ServerState(round_index, weights, agg, optimizer_state, participations, control,
                       client_states), history


def _first_difference(a: Any, b: Any, where: str = "config") -> str:
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b)):
            if a.get(key) != b.get(key):
                return _first_difference(a.get(key), b.get(key), f"{where}.{key}")
    return f"{where}: checkpoint has {a!r}, now {b!r}"


def config_summary(config: ExperimentConfig) -> str:
    """One line naming the settings people compare runs by."""
    t, f = config.task, config.fedavg
    part = t.partition.kind + (f"(alpha={t.partition.alpha})" if t.partition.kind == "dirichlet"
                               else f"({t.partition.shards_per_client})"
                               if t.partition.kind == "shards" else "")
    if t.partition.quantity != "equal":
        part += f" + {t.partition.quantity} sizes (a={t.partition.quantity_alpha})"
    if t.shift is not None:
        part += " + feature shift"
    sampling = "Poisson rate" if f.sampling == "poisson" else "fraction"
    trainer = "" if f.trainer.kind == "sgd" else f", trainer {f.trainer}"
    server = f.resolved_server_optimizer
    server_text = "" if server == ServerSGD() else f", server {server.describe()}"
    prox = f" mu={f.client.proximal_mu}" if f.client.proximal_mu > 0 else ""
    local = "".join(text for on, text in ((f.scaffold, ", SCAFFOLD"),
                                          (f.norm_layers == "local", ", FedBN (BatchNorm stays local)"))
                    if on)
    return (f"{t.dataset}/{t.model}, {t.num_clients} clients, {part}, {sampling} {f.fraction}, "
            f"E={f.client.epochs} B={f.client.batch_size} lr={f.client.lr}{prox}, "
            f"{f.rounds} rounds, seed {config.seed}, aggregator {f.aggregator}{trainer}{server_text}{local}")

