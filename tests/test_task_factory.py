"""A user's own model and data: ``--task module:function`` in simulation and in a real deployment.

The factory below writes nothing to disk and downloads nothing: two Gaussian blobs, a linear model.
The deployment test runs ``secagg serve``/``secagg client`` processes that import it from their
working directory, and checks that the deployment trains exactly what the simulation trains.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from secagg.errors import ConfigError
from secagg.task import Task, TaskConfig, load_task_factory, make_task

FACTORY = textwrap.dedent('''
    """Two Gaussian blobs in 5 dimensions, split evenly across the run's clients; a linear model."""
    import numpy as np
    import torch

    from secagg.data.federated import FederatedDataset
    from secagg.task import Task


    def blobs(config, seed):
        g = torch.Generator().manual_seed(seed)
        y = torch.arange(400) % 2
        x = torch.randn(400, 5, generator=g) + 2.0 * y[:, None].float()
        parts = tuple(np.arange(300)[i::config.num_clients] for i in range(config.num_clients))
        torch.manual_seed(seed)
        model = torch.nn.Linear(5, 2)
        return Task(FederatedDataset(x[:300], y[:300], x[300:], y[300:], parts, 2), model)


    def not_a_task(config, seed):
        return 42
''')


@pytest.fixture
def factory_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    (tmp_path / "usertask.py").write_text(FACTORY)
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


def test_a_factory_builds_the_users_task(factory_module):
    factory = load_task_factory("usertask:blobs")
    task = make_task(TaskConfig(num_clients=3), seed=0, factory=factory)
    assert isinstance(task, Task) and task.data.num_clients == 3 and task.data.input_shape == (5,)
    assert load_task_factory("digits") is None


@pytest.mark.parametrize("spec, message", [
    ("usertask", "expected 'digits' or 'module:function'"),
    ("no_such_module_here:f", "cannot import module 'no_such_module_here'"),
    ("usertask:missing", "has no function 'missing'"),
])
def test_bad_specs_name_the_flag(factory_module, spec, message):
    with pytest.raises(ConfigError, match=f"--task: .*{message}"):
        load_task_factory(spec)


def test_a_factory_must_return_a_task_of_the_runs_clients(factory_module):
    with pytest.raises(ConfigError, match=r"--task: the factory must return secagg\.task\.Task"):
        make_task(TaskConfig(num_clients=2), seed=0, factory=load_task_factory("usertask:not_a_task"))
    factory = load_task_factory("usertask:blobs")
    with pytest.raises(ConfigError, match="split the data into 3 clients, the run has num_clients=2"):
        make_task(TaskConfig(num_clients=2), seed=0, factory=lambda config, seed: factory(
            TaskConfig(num_clients=3), seed))


@pytest.mark.slow
def test_a_deployment_trains_the_users_task_exactly_as_the_simulation(tmp_path: Path, deployment):
    from secagg.cli import main

    dep = deployment(3)
    (tmp_path / "usertask.py").write_text(FACTORY)  # the processes run in tmp_path: importable there
    dep.serve("--task", "usertask:blobs", rounds=2)
    for u in range(3):
        dep.client(u, "--task", "usertask:blobs")
    deployed = dep.wait_server()["rounds"]
    import sys
    sys.path.insert(0, str(tmp_path))
    try:
        out = tmp_path / "sim"
        assert main(["train", "--task", "usertask:blobs", "--clients", "3", "--fraction", "1",
                     "--rounds", "2", "--out", str(out), "--no-progress"]) == 0
    finally:
        sys.path.remove(str(tmp_path))
    simulated = json.loads((out / "results.json").read_text())["rounds"]
    assert [r["accuracy"] for r in deployed] == [r["accuracy"] for r in simulated]
    assert deployed[-1]["accuracy"] > 0.9  # two blobs two standard deviations apart
    for d, s in zip(deployed, simulated, strict=True):
        assert d["update_norm"] == pytest.approx(s["update_norm"], rel=1e-6)
