"""Whole runs: determinism, checkpoint/resume, results files, and configuration errors."""

from __future__ import annotations

import csv
import dataclasses
import json

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from secagg.aggregation import ClipNorm, Mean
from secagg.data.partition import PartitionConfig
from secagg.errors import CheckpointError, ConfigError
from secagg.experiment import CHECKPOINT, ExperimentConfig, run_experiment
from secagg.fedavg import ClientConfig, FedAvgConfig
from secagg.task import TaskConfig


def quick(rounds: int = 2, **fedavg) -> ExperimentConfig:
    """A small, fast run on the real digits data."""
    return ExperimentConfig(
        task=TaskConfig(num_clients=5, partition=PartitionConfig(kind="dirichlet", alpha=0.5)),
        fedavg=FedAvgConfig(rounds=rounds, fraction=0.6, client=ClientConfig(epochs=1, batch_size=16),
                            **fedavg),
        seed=3)


def _same_weights(a, b) -> bool:
    return a.keys() == b.keys() and all(a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]) for k in a)


def _metrics(history):
    return [{k: v for k, v in row.items() if k != "seconds"} for row in history]


def test_same_seed_same_numbers_to_the_last_digit():
    a, b = run_experiment(quick()), run_experiment(quick())
    assert _metrics(a.history) == _metrics(b.history)
    assert _same_weights(a.state.model, b.state.model)
    c = run_experiment(dataclasses.replace(quick(), seed=4))
    assert _metrics(c.history) != _metrics(a.history)


@pytest.mark.parametrize("fedavg", [{}, {"server_momentum": 0.5},
                                    {"aggregator": ClipNorm(max_norm=0.5)}])
def test_resume_equals_uninterrupted(tmp_path, fedavg):
    straight = run_experiment(quick(4, **fedavg), tmp_path / "a")
    run_experiment(quick(2, **fedavg), tmp_path / "b")
    resumed = run_experiment(quick(4, **fedavg), tmp_path / "b", resume=True)
    assert _same_weights(straight.state.model, resumed.state.model)
    assert _metrics(straight.history) == _metrics(resumed.history)
    saved = json.loads((tmp_path / "b" / "results.json").read_text())
    assert [r["round"] for r in saved["rounds"]] == [1, 2, 3, 4]


def test_resume_refuses_another_configuration(tmp_path):
    run_experiment(quick(1), tmp_path)
    other = dataclasses.replace(quick(2), seed=99)
    with pytest.raises(CheckpointError, match=r"config.seed: checkpoint has 3, now 99"):
        run_experiment(other, tmp_path, resume=True)
    with pytest.raises(ConfigError, match="resume: needs out_dir"):
        run_experiment(quick(1), None, resume=True)


@pytest.mark.parametrize("damage", ["truncate", "flip", "empty"])
def test_damaged_checkpoint_is_refused(tmp_path, damage):
    run_experiment(quick(1), tmp_path)
    path = tmp_path / CHECKPOINT
    data = bytearray(path.read_bytes())
    if damage == "truncate":
        data = data[: len(data) // 2]
    elif damage == "flip":
        data[-5] ^= 0x10
    else:
        data = bytearray()
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError):
        run_experiment(quick(2), tmp_path, resume=True)


def test_results_files_hold_config_and_rounds(tmp_path):
    run_experiment(quick(3), tmp_path)
    doc = json.loads((tmp_path / "results.json").read_text())
    assert ExperimentConfig.from_dict(doc["config"]) == quick(3)
    assert [r["round"] for r in doc["rounds"]] == [1, 2, 3]
    for row in doc["rounds"]:
        assert 0.0 <= row["accuracy"] <= 1.0 and row["loss"] > 0
    assert doc["summary"]["final_accuracy"] == doc["rounds"][-1]["accuracy"]
    with open(tmp_path / "results.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [int(r["round"]) for r in rows] == [1, 2, 3]
    assert [float(r["accuracy"]) for r in rows] == [r["accuracy"] for r in doc["rounds"]]


@given(rounds=st.integers(1, 100), fraction=st.floats(0.01, 1.0), clients=st.integers(1, 50),
       kind=st.sampled_from(["iid", "dirichlet", "shards"]), alpha=st.floats(0.01, 100),
       lr=st.floats(1e-4, 10), clip=st.one_of(st.none(), st.floats(0.1, 10)),
       model=st.sampled_from(["mlp", "cnn", "cnn-bn"]), seed=st.integers(0, 2**32))
def test_config_round_trips_through_json(rounds, fraction, clients, kind, alpha, lr, clip, model, seed):
    agg = Mean() if clip is None else ClipNorm(max_norm=clip)
    cfg = ExperimentConfig(
        task=TaskConfig(num_clients=clients, model=model,
                        partition=PartitionConfig(kind=kind, alpha=alpha)),
        fedavg=FedAvgConfig(rounds=rounds, fraction=fraction, client=ClientConfig(lr=lr),
                            aggregator=agg),
        seed=seed)
    assert ExperimentConfig.from_json(cfg.to_json()) == cfg


@pytest.mark.parametrize(("build", "message"), [
    (lambda: TaskConfig(num_clients=0), "num_clients: must be >= 1, got 0"),
    (lambda: FedAvgConfig(fraction=0.0), "fraction: must be > 0.0, got 0.0"),
    (lambda: FedAvgConfig(fraction=1.5), "fraction: must be <= 1.0, got 1.5"),
    (lambda: ClientConfig(lr=-0.1), "client.lr: must be > 0.0, got -0.1"),
    (lambda: ClientConfig(lr=float("nan")), "client.lr: must be a finite number"),
    (lambda: TaskConfig(model="resnet"), "model: must be one of .*, got 'resnet'"),
    (lambda: FedAvgConfig(rounds=0), "rounds: must be >= 1, got 0"),
    (lambda: FedAvgConfig(server_lr=0), "server_lr: must be > 0.0, got 0"),
    (lambda: ExperimentConfig(seed=-1), "seed: must be >= 0, got -1"),
    (lambda: FedAvgConfig(buffers="local"), "buffers: must be one of 'aggregate', 'frozen'"),
    (lambda: ExperimentConfig.from_dict({"task": {"clients": 3}}), "task: unknown field\\(s\\) clients"),
    (lambda: ExperimentConfig.from_json("{"), "config: not valid JSON"),
])
def test_bad_configuration_is_a_clear_error(build, message):
    with pytest.raises(ConfigError, match=message):
        build()


def test_too_many_clients_for_the_data_is_a_data_error():
    from secagg.errors import DataError
    cfg = ExperimentConfig(task=TaskConfig(num_clients=5000))
    with pytest.raises(DataError, match="num_clients: 5000 clients need at least 5000 samples"):
        run_experiment(cfg)
