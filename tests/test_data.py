"""The bundled digits task and the model registry."""

from __future__ import annotations

import pytest
import torch

from secagg.data.digits import load_digits_split
from secagg.data.partition import PartitionConfig
from secagg.errors import ConfigError, DataError
from secagg.models import build_model, model_names, register_model
from secagg.task import TaskConfig, build_task


def test_digits_split_is_stratified_scaled_and_seeded():
    tr_x, tr_y, te_x, te_y = load_digits_split(0.2, seed=0)
    assert tr_x.shape[1:] == (1, 8, 8) and tr_x.dtype == torch.float32
    assert tr_x.shape[0] + te_x.shape[0] == 1797
    assert float(tr_x.min()) >= 0.0 and float(tr_x.max()) <= 1.0
    train_freq = torch.bincount(tr_y, minlength=10).double() / tr_y.numel()
    test_freq = torch.bincount(te_y, minlength=10).double() / te_y.numel()
    assert float((train_freq - test_freq).abs().max()) < 0.01
    again = load_digits_split(0.2, seed=0)
    assert torch.equal(again[1], tr_y) and not torch.equal(load_digits_split(0.2, seed=1)[1], tr_y)


def test_task_partitions_every_training_example_once():
    task = build_task(TaskConfig(num_clients=7, partition=PartitionConfig(kind="shards")), seed=1)
    idx = torch.cat([torch.from_numpy(p) for p in task.data.partition]).sort().values
    assert torch.equal(idx, torch.arange(task.data.train_y.shape[0]))
    with pytest.raises(DataError, match="client: must be in \\[0, 7\\)"):
        task.data.client(7)


@pytest.mark.parametrize("name", model_names())
def test_models_map_digits_to_ten_logits(name):
    model = build_model(name, (1, 8, 8), 10)
    assert model(torch.zeros(3, 1, 8, 8)).shape == (3, 10)


def test_model_registry_errors():
    with pytest.raises(ConfigError, match="model: must be one of"):
        build_model("vgg", (1, 8, 8), 10)
    with pytest.raises(ConfigError, match="'mlp' is already registered"):
        register_model("mlp", lambda s, k: torch.nn.Linear(1, 1))
