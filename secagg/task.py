"""The federated task: which dataset, how it is split across clients, and which model learns it."""

from __future__ import annotations

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
