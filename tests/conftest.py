"""Shared test settings: hypothesis profiles and small federated fixtures."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, settings

from secagg.data.federated import FederatedDataset

settings.register_profile("default", deadline=None, max_examples=50,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("ci", deadline=None, max_examples=50, derandomize=True,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("ci" if os.environ.get("CI") else "default")


def make_dataset(num_clients: int = 3, per_client: int = 12, num_classes: int = 4,
                 input_shape: tuple[int, ...] = (1, 4, 4), seed: int = 0) -> FederatedDataset:
    """A small synthetic classification task split evenly across clients."""
    g = torch.Generator().manual_seed(seed)
    n = num_clients * per_client
    x = torch.randn(n, *input_shape, generator=g)
    y = torch.randint(0, num_classes, (n,), generator=g)
    tx = torch.randn(20, *input_shape, generator=g)
    ty = torch.randint(0, num_classes, (20,), generator=g)
    partition = tuple(np.arange(i * per_client, (i + 1) * per_client, dtype=np.int64)
                      for i in range(num_clients))
    return FederatedDataset(x, y, tx, ty, partition, num_classes)


@pytest.fixture
def small_dataset() -> FederatedDataset:
    return make_dataset()


@pytest.fixture(scope="session")
def load_benchmark():
    """Import a script of ``benchmarks/`` by name (they are scripts, not a package)."""
    import importlib.util
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "benchmarks"

    def load(name: str):
        spec = importlib.util.spec_from_file_location(name, root / f"{name}.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    return load


@pytest.fixture
def deployment(tmp_path):
    """``deployment(n)``: a loopback deployment of n client identities under ``tmp_path``
    (:class:`deployment.Deployment`); every process it started is SIGKILLed at teardown."""
    from deployment import Deployment

    made: list[Deployment] = []

    def make(clients: int) -> Deployment:
        made.append(Deployment(tmp_path, clients))
        return made[-1]

    yield make
    for d in made:
        d.kill_all()
