"""Run a benchmark grid: one FedAvg training run per cell, resumable, optionally in parallel processes
or as Ray tasks.

A cell is (attack, defence, attacker fraction, partition, seed). Each finished cell is appended to
``results.json`` at once, so an interrupted grid resumes where it stopped; every cell is a pure
function of its configuration and seed, so a resumed grid gives the same table as an uninterrupted
one (except the ``seconds`` column). The same holds across backends: ``jobs=1``, ``jobs>1`` and
``backend="ray"`` give the same rows (see :func:`run_grid` for the exceptions).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Any

from attacks.bench.config import BenchConfig, partition_spec
from attacks.bench.privacy import run_privacy_cell
from attacks.byzantine import ByzantineClients
from dp.audit import CanaryAudit
from secagg.data.federated import ClientData
from secagg.errors import ConfigError, UpdateError
from secagg.experiment import ExperimentConfig, run_experiment
from secagg.fedavg import ClientConfig, FedAvgConfig
from secagg.fedavg.client import client_update
from secagg.fedavg.server import evaluate
from secagg.layout import ParamLayout
from secagg.parallel import RAY_MISSING, RayExecutor, ray_available
from secagg.results import audit_entry
from secagg.seeding import derive_seed
from secagg.task import TaskConfig, make_task

RESULTS = "results.json"
BACKENDS = ("local", "ray")


@dataclass(frozen=True)
class Cell:
    attack: str
    defence: str
    attackers: float
    partition: str
    seed: int

    @property
    def key(self) -> str:
        return f"{self.attack}|{self.defence}|{self.attackers:g}|{self.partition}|{self.seed}"


@dataclass(frozen=True)
class Audit:
    """A canary audit of every cell whose defence claims DP (``secagg bench --audit-canaries``):
    ``canaries`` and ``inclusion`` of :class:`dp.audit.CanaryAudit`, seeded by the cell's seed."""

    canaries: int
    inclusion: str = "half"


#: the audit's metrics a cell's row carries, as ``audit_<name>``
AUDIT_FIELDS = ("empirical_epsilon", "ci_low", "ci_high", "lower_bound_95", "canaries", "inserted")


def cells(config: BenchConfig) -> list[Cell]:
    """Every cell of the grid, in a fixed order; the no-attack baseline once per defence/partition/seed."""
    out = []
    for partition in config.partitions:
        for seed in config.seeds:
            for defence, _ in config.defences:
                for attack in config.attacks:
                    for fraction in ((0.0,) if attack.is_none else config.attackers):
                        out.append(Cell(attack.name, defence, fraction, partition, seed))
    return out


def experiment_config(config: BenchConfig, cell: Cell, audit: Audit | None = None) -> ExperimentConfig:
    """The FedAvg run of one cell. Robust rules with ``f = "auto"`` assume the cell's attacker count
    (the no-attack baseline assumes the largest count of the grid: the defence does not know). With
    ``audit``, a defence that claims DP runs inside a :class:`~dp.audit.CanaryAudit`."""
    spec = next(a for a in config.attacks if a.name == cell.attack)
    assumed = cell.attackers if not spec.is_none else max(config.attackers)
    aggregator = config.defence(cell.defence, config.attacker_count(assumed))
    if audit is not None and aggregator.claims_dp():
        aggregator = CanaryAudit(canaries=audit.canaries, seed=cell.seed, inclusion=audit.inclusion,
                                 inner=aggregator)
    adversary = None
    if not spec.is_none:
        update, data = spec.build()
        adversary = ByzantineClients(cell.attackers, update, data, start_round=spec.start_round,
                                     stop_round=spec.stop_round)
    partition, shift = partition_spec(cell.partition)
    task = TaskConfig(num_clients=config.clients, partition=partition, shift=shift,
                      model=config.model, dataset=config.dataset, data=config.data,
                      train_size=config.train_size, test_size=config.test_size)
    fedavg = FedAvgConfig(rounds=config.rounds, fraction=1.0,
                          client=ClientConfig(epochs=config.local_epochs, batch_size=config.batch_size,
                                              lr=config.lr),
                          aggregator=aggregator, adversary=adversary)
    return ExperimentConfig(task=task, fedavg=fedavg, seed=cell.seed)


def run_cell(config: BenchConfig, cell: Cell,
             on_round: Callable[[dict[str, Any]], None] | None = None,
             audit: Audit | None = None) -> dict[str, Any]:
    """Train one cell and return its results row (with the per-round curves). A run the attack
    drives to NaN/Inf ends there: its row keeps the accuracy of the last finite model and says in
    ``stopped`` that it diverged. An audited cell's row adds ``audit_<name>`` (:data:`AUDIT_FIELDS`)
    from its last audited round."""
    started = time.perf_counter()
    history: list[dict[str, Any]] = []

    def record(row: dict[str, Any]) -> None:
        history.append(row)
        if on_round is not None:
            on_round(row)

    try:
        stopped = run_experiment(experiment_config(config, cell, audit), None, on_round=record).stopped
    except UpdateError as exc:
        # the attack drove training to NaN/Inf: a result (the worst one), not a crash of the grid
        stopped = f"diverged in round {len(history) + 1}: {exc}"
    last = history[-1] if history else {}
    accuracies = [r["accuracy"] for r in history]
    audited = [audit_entry(r) for r in history if audit_entry(r)]
    audit_row = {f"audit_{k}": audited[-1].get(k) for k in AUDIT_FIELDS} if audited else {}
    return {
        **asdict(cell),
        "accuracy": last.get("accuracy"),
        "best_accuracy": max(accuracies) if accuracies else None,
        "attack_success": last.get("attack_success"),
        "epsilon": last.get("epsilon"),
        "rounds": len(history),
        "stopped": stopped,
        "seconds": time.perf_counter() - started,
        "curve": accuracies,
        "attack_success_curve": [r.get("attack_success") for r in history],
        **durability(
            [r.get("attack_success") for r in history],
            next(a for a in config.attacks if a.name == cell.attack).stop_round),
        **audit_row,
    }


def durability(curve: list[float | None], stop_round: int | None) -> dict[str, Any]:
    """A backdoor's durability figures from its per-round ``attack_success`` curve (round 1 first) and
    the attack window's ``stop_round`` (``None``: the attackers never stop).

    ``attack_success_at_stop``: the success after the last attacked round (``stop_round``, or the last
    round run when the run ends first or the attack never stops); ``attack_success_final``: after the
    last round that measured it; ``durability``: the backdoor's lifespan after the stop, the number of
    consecutive rounds after ``stop_round`` whose success stays >= half its value at the stop (0 when
    it was 0 at the stop), ``None`` when no round ran after the stop. All ``None`` without a success
    curve (no backdoor)."""
    measured = [v for v in curve if v is not None]
    if not measured:
        return {"attack_success_at_stop": None, "attack_success_final": None, "durability": None}
    last = len(curve) if stop_round is None else min(stop_round, len(curve))
    at_stop, lifespan = curve[last - 1], None
    if at_stop is not None and last < len(curve):
        lifespan = 0
        for value in curve[last:]:
            if at_stop <= 0.0 or value is None or value < 0.5 * at_stop:
                break
            lifespan += 1
    return {"attack_success_at_stop": at_stop, "attack_success_final": measured[-1], "durability": lifespan}


def run_centralized(config: BenchConfig, seed: int) -> dict[str, Any]:
    """The fidelity baseline of seed ``seed``: the grid's model trained centrally on the union of the
    clients' training data (the same examples FedAvg sees, pooled), with the clients' learning rate and
    batch size for ``rounds x local_epochs`` epochs (FedAvg's budget of passes over the data), then
    evaluated on the same test set. Its row (``"section": "baseline"``) says how far the clean FedAvg
    cells are from what the model and data allow, so an attack's damage is not read against an
    undertrained baseline."""
    started = time.perf_counter()
    exp = experiment_config(config, Cell("none", config.defences[0][0], 0.0, config.partitions[0], seed))
    task = make_task(exp.task, seed=seed)
    data = task.data
    pooled = ClientData(data.train_x, data.train_y)
    layout = ParamLayout.from_module(task.model)
    initial = task.model.state_dict()
    epochs = config.rounds * config.local_epochs
    update = client_update(task.model, initial, pooled,
                           ClientConfig(epochs=epochs, batch_size=config.batch_size, lr=config.lr), layout,
                           seed=derive_seed(seed, "centralized"))
    weights = {k: v.clone() for k, v in initial.items()}
    weights.update(layout.unflatten(layout.flatten(initial) + update.delta))
    return {"section": "baseline", "seed": seed, "epochs": epochs, "examples": len(pooled),
            **evaluate(task.model, weights, data.test_x, data.test_y),
            "seconds": time.perf_counter() - started}


def available_cores() -> int:
    """The CPU cores this process may run on (its affinity set where the OS has one)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # no affinity sets (macOS, Windows)
        return max(1, os.cpu_count() or 1)


def cell_line(done: int, total: int, row: dict[str, Any]) -> str:
    """One log line for a finished cell (``secagg bench`` prints these when stdout is not a terminal)."""
    if row.get("section") == "baseline":
        return (f"[{done}/{total}] centralized baseline (seed {row['seed']}): accuracy "
                f"{row['accuracy']:.3f} after {row['epochs']} epochs, {row['seconds']:.1f} s")
    if row.get("section") == "privacy":
        metrics = [f"{k} {row[k]:.3g}" for k in ("psnr", "auc", "tpr_at_1pct_fpr") if row.get(k) is not None]
        return (f"[{done}/{total}] privacy {row['attack']} vs {row['defence']} (seed {row['seed']}): "
                + (", ".join(metrics) or "done"))
    acc = row.get("accuracy")
    line = (f"[{done}/{total}] {row['attack']} vs {row['defence']} ({row['attackers']:g} attackers, "
            f"{row['partition']}, seed {row['seed']}): accuracy {'n/a' if acc is None else f'{acc:.3f}'}")
    if row.get("attack_success") is not None:
        line += f", attack success {row['attack_success']:.3f}"
    if row.get("stopped"):
        line += f" (stopped: {row['stopped']})"
    return line + f", {row.get('seconds', 0.0):.1f} s"


def _run_audited_cell(config: BenchConfig, audit: Audit | None, cell: Cell) -> dict[str, Any]:
    """:func:`run_cell` with ``audit``, arguments in the order executors pass them (shared first)."""
    return run_cell(config, cell, audit=audit)


def _run_cell_in_worker(config: BenchConfig, cell: Cell, audit: Audit | None = None) -> dict[str, Any]:
    """One cell in a pool process: module-level, so it pickles."""
    import torch

    torch.set_num_threads(1)  # the processes already use every core
    return run_cell(config, cell, audit=audit)


def _load_done(path: Path, config: BenchConfig, audit: Audit | None = None) -> dict[str, dict[str, Any]]:
    if not path.exists():
        return {}
    try:
        saved = json.loads(path.read_text())
        # an audited grid's cells differ from a plain one's (canaries take part): never mix them
        same = saved["config"] == config_dict(config) and saved.get("audit") == _audit_dict(audit)
        rows = saved["cells"]
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise ConfigError(f"{path}: not a benchmark results file ({exc}); use another --out") from exc
    if not same:
        raise ConfigError(f"{path}: written by another benchmark configuration; use another --out (or "
                          f"delete it) to start a new grid")
    done = {Cell(r["attack"], r["defence"], r["attackers"], r["partition"], r["seed"]).key: r for r in rows}
    for r in saved.get("privacy", []):
        done[_privacy_key(r["attack"], r["defence"], r["seed"])] = r
    for r in saved.get("baseline", []):
        done[_baseline_key(r["seed"])] = r
    return done


def _baseline_key(seed: int) -> str:
    return f"baseline|{seed}"


def _privacy_key(attack: str, defence: str, seed: int) -> str:
    return f"privacy|{attack}|{defence}|{seed}"


def config_dict(config: BenchConfig) -> dict[str, Any]:
    return json.loads(json.dumps(asdict(config)))


def _audit_dict(audit: Audit | None) -> dict[str, Any] | None:
    return None if audit is None else asdict(audit)


def _save(path: Path, config: BenchConfig, rows: list[dict[str, Any]], audit: Audit | None = None) -> None:
    tmp = path.with_suffix(".tmp")
    cells_ = [r for r in rows if r.get("section") not in ("privacy", "baseline")]
    privacy = [r for r in rows if r.get("section") == "privacy"]
    baseline = [r for r in rows if r.get("section") == "baseline"]
    doc = {"config": config_dict(config), "cells": cells_, "privacy": privacy, "baseline": baseline,
           **({"audit": _audit_dict(audit)} if audit is not None else {})}
    tmp.write_text(json.dumps(doc, indent=1))
    tmp.replace(path)


def run_grid(config: BenchConfig, out_dir: str | Path, *, jobs: int | None = None, progress: bool = True,
             limit: int | None = None, backend: str = "local", ray_address: str | None = None,
             ray_threads: int | None = None, audit: Audit | None = None) -> list[dict[str, Any]]:
    """Run every cell not already in ``out_dir/results.json`` and return all rows in grid order
    (poisoning cells, then the privacy cells, whose rows carry ``"section": "privacy"``, then one
    centralized baseline per seed, ``"section": "baseline"``: :func:`run_centralized`).

    ``backend="local"``: cells run in ``jobs`` processes (default: one per available core; ``jobs=1``
    runs them one after the other in this process). ``backend="ray"``: every poisoning cell is one Ray
    task on the cluster at ``ray_address`` (``None``: the Ray this process already started, else a new
    local one using every core, shut down at the end); the cluster's CPUs set the parallelism, so
    ``jobs`` must be left unset (or 1). Each task uses ``ray_threads`` torch threads and reserves as
    many CPUs (default: this process's thread count, which makes every row bit-identical to ``jobs=1``;
    ``1`` runs more cells at once but, like ``jobs > 1``, computes with one thread, which can change
    the last bits of the floats behind a row). Either way the privacy cells and the baselines run in
    this process. Rows never depend on the backend except ``seconds`` and the cells of defences that
    add DP noise: that noise comes from ``os.urandom`` (it must stay secret), so those cells differ
    between any two runs. ``limit`` stops after that many new cells (for tests of resumption).
    ``audit``: run every DP defence inside a canary audit (:class:`Audit`; the grid's results file
    records it and resumes only the same audit).

    ``progress``: a progress bar when stdout is a terminal, else one line per finished cell on stdout
    (a log of a long grid shows where it is). The caller writes the reports
    (:func:`attacks.bench.report.write_reports`).
    """
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    if backend not in BACKENDS:
        raise ConfigError(f"backend: {backend!r} is not one of {', '.join(BACKENDS)}")
    if jobs is not None and (not isinstance(jobs, int) or isinstance(jobs, bool) or jobs < 1):
        raise ConfigError(f"jobs: must be an integer >= 1 (or unset: one per core), got {jobs!r}")
    if backend == "ray" and not ray_available():
        raise ConfigError(RAY_MISSING)
    if backend == "ray" and jobs not in (None, 1):
        raise ConfigError(f"jobs: the ray backend schedules one cell per free CPU of the cluster; "
                          f"leave jobs unset (got {jobs})")
    if backend == "local" and (ray_address is not None or ray_threads is not None):
        raise ConfigError("ray_address, ray_threads: only used with backend 'ray'")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / RESULTS
    done = _load_done(path, config, audit)
    grid = cells(config)
    todo = [c for c in grid if c.key not in done][:limit]
    privacy = [(p, s) for s in config.seeds for p in config.privacy]
    privacy_todo = [(p, s) for p, s in privacy if _privacy_key(p.attack, p.defence_name, s) not in done]
    baselines_todo = [s for s in config.seeds if _baseline_key(s) not in done]
    if limit is not None:
        privacy_todo = privacy_todo[:max(0, limit - len(todo))]
        baselines_todo = baselines_todo[:max(0, limit - len(todo) - len(privacy_todo))]
    workers = 1 if backend == "ray" else (jobs if jobs is not None
                                          else min(available_cores(), max(len(todo), 1)))
    total = len(grid) + len(privacy) + len(config.seeds)
    finished = total - len(todo) - len(privacy_todo) - len(baselines_todo)

    def ordered() -> list[dict[str, Any]]:
        keys = ([c.key for c in grid] + [_privacy_key(p.attack, p.defence_name, s) for p, s in privacy]
                + [_baseline_key(s) for s in config.seeds])
        return [done[k] for k in keys if k in done]

    terminal = Console().is_terminal
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  disable=not (progress and terminal)) as bar:
        cells_task = bar.add_task("cells", total=total, completed=finished)
        serial = backend == "local" and workers == 1
        rounds_task = bar.add_task("rounds", total=config.rounds, visible=serial)

        def record(key: str, row: dict[str, Any]) -> None:
            nonlocal finished
            done[key] = row
            _save(path, config, ordered(), audit)
            finished += 1
            bar.advance(cells_task)
            if progress and not terminal:
                print(cell_line(finished, total, row), flush=True)

        if progress and not terminal and (todo or privacy_todo or baselines_todo):
            where = f"{workers} process(es)" if backend == "local" else "ray"
            print(f"bench {config.name}: {total - finished} of {total} cells to run on {where}, results in "
                  f"{path}", flush=True)
        if backend == "ray" and todo:
            with RayExecutor(ray_address, threads=ray_threads) as executor:
                # results as they complete, each saved at once: an interrupted grid resumes as usual
                # run_cell, not _run_cell_in_worker: RayExecutor sets each task's torch thread count
                for i, row in executor.as_completed(_run_audited_cell, todo, config, audit):
                    record(todo[i].key, row)
        elif serial:
            for cell in todo:
                bar.update(rounds_task, completed=0, description=f"{cell.attack} vs {cell.defence}")
                row = run_cell(config, cell, on_round=lambda _: bar.advance(rounds_task), audit=audit)
                record(cell.key, row)
        elif todo:
            with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
                futures = {pool.submit(_run_cell_in_worker, config, c, audit): c for c in todo}
                for future in as_completed(futures):
                    record(futures[future].key, future.result())
        bar.update(rounds_task, visible=False)
        for cell, seed in privacy_todo:  # in this process: each cell is a few seconds
            record(_privacy_key(cell.attack, cell.defence_name, seed), run_privacy_cell(cell, seed, out))
        for seed in baselines_todo:
            record(_baseline_key(seed), run_centralized(config, seed))
    return ordered()
