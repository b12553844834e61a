"""The federated task: which dataset, how it is split across clients, and which model learns it.

The bundled task is digits (:func:`build_task`). A user's own model and data come from a *task
factory*, named ``"module:function"`` (``secagg train/serve/client --task``): ``function(config,
seed)`` gets the run's :class:`TaskConfig` (``num_clients``...) and root seed and returns a
:class:`Task` (a :class:`~secagg.data.federated.FederatedDataset` partitioned into
``config.num_clients`` clients, and the initial model). Every process of a deployment must name the
same factory and reach the same model: clients check the server's weights against their model. The
factory is named on each machine's command line, never taken from the server's configuration (a
server must not make a client import code).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from secagg.config_io import from_plain, to_plain
from secagg.data.digits import load_digits_split
from secagg.data.federated import FederatedDataset
from secagg.data.partition import PartitionConfig
from secagg.errors import ConfigError
from secagg.models import build_model, model_names
from secagg.seeding import derive_seed
from secagg.validation import check_choice, check_int, check_real

DATASETS = ("digits",)


@dataclass(frozen=True)
class TaskConfig:
    """Dataset, client count, partition scheme and model of a federated task."""

    dataset: str = "digits"
    num_clients: int = 20
    partition: PartitionConfig = field(default_factory=PartitionConfig)
    model: str = "mlp"
    test_fraction: float = 0.2

    def __post_init__(self) -> None:
        check_choice("dataset", self.dataset, DATASETS)
        check_int("num_clients", self.num_clients, minimum=1)
        check_choice("model", self.model, model_names())
        check_real("test_fraction", self.test_fraction, gt=0.0, lt=1.0)
        if not isinstance(self.partition, PartitionConfig):
            raise ConfigError(f"partition: expected a PartitionConfig, got "
                              f"{type(self.partition).__name__}")

    def to_dict(self) -> dict[str, Any]:
        return to_plain(self)

    @classmethod
    def from_dict(cls, data: Any) -> TaskConfig:
        return from_plain(cls, data, "task")


@dataclass(frozen=True)
class Task:
    data: FederatedDataset
    model: nn.Module


TaskFactory = Callable[[TaskConfig, int], Task]
BUNDLED = "digits"


def load_task_factory(spec: str) -> TaskFactory | None:
    """The task factory named ``spec`` (``"module:function"``), or ``None`` for the bundled ``"digits"``.
    :class:`ConfigError` naming ``--task`` when the module or function cannot be found."""
    if spec == BUNDLED:
        return None
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ConfigError(f"--task: expected 'digits' or 'module:function', got {spec!r}")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"--task: cannot import module {module_name!r}: {exc}") from exc
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise ConfigError(f"--task: {module_name!r} has no function {attr!r}")
    return factory  # type: ignore[no-any-return]


def make_task(config: TaskConfig, *, seed: int, factory: TaskFactory | None = None) -> Task:
    """:func:`build_task`, or ``factory(config, seed)`` checked: a :class:`Task` whose data has
    ``config.num_clients`` clients (:class:`ConfigError` naming ``--task`` otherwise)."""
    if factory is None:
        return build_task(config, seed=seed)
    task = factory(config, seed)
    if not isinstance(task, Task) or not isinstance(task.model, nn.Module) or \
            not isinstance(task.data, FederatedDataset):
        raise ConfigError(f"--task: the factory must return secagg.task.Task(data=FederatedDataset, "
                          f"model=torch.nn.Module), got {type(task).__name__}")
    if task.data.num_clients != config.num_clients:
        raise ConfigError(f"--task: the factory split the data into {task.data.num_clients} clients, the run "
                          f"has num_clients={config.num_clients}")
    return task


def build_task(config: TaskConfig, *, seed: int) -> Task:
    """Load and split the data, partition it, and build the initial model, all from ``seed``."""
    train_x, train_y, test_x, test_y = load_digits_split(config.test_fraction,
                                                         seed=derive_seed(seed, "split") % 2**32)
    partition = config.partition.split(train_y.numpy(), config.num_clients,
                                       seed=derive_seed(seed, "partition"))
    num_classes = int(torch.cat([train_y, test_y]).max()) + 1
    data = FederatedDataset(train_x, train_y, test_x, test_y, partition, num_classes)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(seed, "init"))
        model = build_model(config.model, data.input_shape, num_classes)
    return Task(data, model)
