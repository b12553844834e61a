"""The FedAvg core: equivalence with centralized GD, purity, buffers, sampling, rejection."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from conftest import make_dataset
from torch import nn

from secagg.data.federated import FederatedDataset
from secagg.errors import UpdateError
from secagg.fedavg import ClientConfig, FedAvg, FedAvgConfig, client_update
from secagg.layout import ParamLayout
from secagg.models import CNN, MLP


def _single_client(data: FederatedDataset) -> FederatedDataset:
    everything = (np.arange(data.train_y.shape[0], dtype=np.int64),)
    return FederatedDataset(data.train_x, data.train_y, data.test_x, data.test_y, everything,
                            data.num_classes)


@pytest.mark.parametrize("server_lr", [1.0, 0.5])
def test_one_client_one_full_batch_step_is_centralized_gradient_descent(small_dataset, server_lr):
    data = _single_client(small_dataset)
    torch.manual_seed(0)
    model = MLP(data.input_shape, data.num_classes)
    lr = 0.3
    config = FedAvgConfig(rounds=1, client=ClientConfig(epochs=1, batch_size=0, lr=lr),
                          server_lr=server_lr)
    trainer = FedAvg(config, model, data, seed=5)
    new = trainer.run_round(trainer.initial_state()).state.model

    reference = copy.deepcopy(model)
    loss = nn.functional.cross_entropy(reference(data.train_x), data.train_y)
    grads = torch.autograd.grad(loss, list(reference.parameters()))
    for (name, p), g in zip(reference.named_parameters(), grads, strict=True):
        torch.testing.assert_close(new[name], p.detach() - server_lr * lr * g, rtol=1e-5, atol=1e-6)


def test_client_update_is_pure_and_seeded(small_dataset):
    torch.manual_seed(1)
    model = MLP(small_dataset.input_shape, small_dataset.num_classes)
    layout = ParamLayout.from_module(model)
    global_state = {k: v.clone() for k, v in model.state_dict().items()}
    snapshot = {k: v.clone() for k, v in global_state.items()}
    rng_before = torch.get_rng_state()
    cfg = ClientConfig(epochs=2, batch_size=4, lr=0.1)
    a = client_update(model, global_state, small_dataset.client(0), cfg, layout, seed=11)
    b = client_update(model, global_state, small_dataset.client(0), cfg, layout, seed=11)
    c = client_update(model, global_state, small_dataset.client(0), cfg, layout, seed=12)
    assert torch.equal(a.delta, b.delta), "same inputs and seed must give the same update"
    assert not torch.equal(a.delta, c.delta), "the seed must drive the data order"
    assert a.num_examples == len(small_dataset.client(0))
    assert torch.equal(torch.get_rng_state(), rng_before), "global RNG must be untouched"
    for k, v in snapshot.items():
        assert torch.equal(global_state[k], v) and torch.equal(model.state_dict()[k], v)


def test_diverging_client_is_rejected_and_reported(small_dataset):
    torch.manual_seed(0)
    model = MLP(small_dataset.input_shape, small_dataset.num_classes)
    layout = ParamLayout.from_module(model)
    with pytest.raises(UpdateError, match="client 3: local training produced NaN/Inf"):
        client_update(model, model.state_dict(), small_dataset.client(0),
                      ClientConfig(lr=1e38, epochs=3), layout, seed=0, client_id=3)
    trainer = FedAvg(FedAvgConfig(client=ClientConfig(lr=1e38, epochs=3)), model, small_dataset)
    with pytest.raises(UpdateError, match="round 1: every sampled client's update was rejected"):
        trainer.run_round(trainer.initial_state())


def test_weighted_mean_round_matches_manual_fedavg():
    data = make_dataset(num_clients=3, per_client=10)
    # give client 2 three times the data of the others by re-partitioning unevenly
    part = (np.arange(0, 5), np.arange(5, 10), np.arange(10, 30))
    data = FederatedDataset(data.train_x, data.train_y, data.test_x, data.test_y,
                            tuple(p.astype(np.int64) for p in part), data.num_classes)
    torch.manual_seed(0)
    model = MLP(data.input_shape, data.num_classes)
    cfg = FedAvgConfig(client=ClientConfig(epochs=1, batch_size=4, lr=0.1))
    trainer = FedAvg(cfg, model, data, seed=3)
    state = trainer.initial_state()
    result = trainer.run_round(state)
    from secagg.seeding import derive_seed
    ups = [client_update(model, state.model, data.client(c), cfg.client, trainer.layout,
                         seed=derive_seed(3, "client", 1, c)) for c in range(3)]
    expected = sum(u.delta * u.num_examples for u in ups) / 30
    got = trainer.layout.flatten(result.state.model) - trainer.layout.flatten(state.model)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("policy", ["aggregate", "frozen"])
def test_batchnorm_buffers_follow_the_documented_policy(policy):
    data = make_dataset(num_clients=2, per_client=8, input_shape=(1, 4, 4))
    torch.manual_seed(0)
    model = CNN(data.input_shape, data.num_classes, batchnorm=True)
    cfg = FedAvgConfig(client=ClientConfig(epochs=1, batch_size=4, lr=0.1), buffers=policy)
    trainer = FedAvg(cfg, model, data, seed=0)
    state = trainer.initial_state()
    new = trainer.run_round(state).state.model
    # the integer counter never leaves the server
    assert torch.equal(new["features.1.num_batches_tracked"], state.model["features.1.num_batches_tracked"])
    moved = not torch.equal(new["features.1.running_mean"], state.model["features.1.running_mean"])
    assert moved == (policy == "aggregate")
    if policy == "aggregate":
        # running stats become the example-weighted mean of the clients' local stats
        from secagg.seeding import derive_seed
        full = ParamLayout.from_module(model, "aggregate")
        locals_ = []
        for c in range(2):
            u = client_update(model, state.model, data.client(c), cfg.client, full,
                              seed=derive_seed(0, "client", 1, c))
            locals_.append(full.unflatten(full.flatten(state.model) + u.delta))
        expected = (locals_[0]["features.1.running_var"] + locals_[1]["features.1.running_var"]) / 2
        torch.testing.assert_close(new["features.1.running_var"], expected)


def test_sampling_is_seeded_sized_and_fresh_each_round():
    data = make_dataset(num_clients=20, per_client=2)
    model = MLP(data.input_shape, data.num_classes)
    trainer = FedAvg(FedAvgConfig(fraction=0.25), model, data, seed=9)
    rounds = [trainer.sample_clients(r) for r in range(1, 6)]
    assert all(len(s) == 5 == len(set(s)) and s == sorted(s) for s in rounds)
    assert rounds == [FedAvg(FedAvgConfig(fraction=0.25), model, data, seed=9).sample_clients(r)
                      for r in range(1, 6)]
    assert len({tuple(s) for s in rounds}) > 1
    assert FedAvgConfig(fraction=0.01).clients_per_round(20) == 1
    assert FedAvgConfig(fraction=1.0).clients_per_round(20) == 20


def test_server_momentum_accumulates(small_dataset):
    torch.manual_seed(0)
    model = MLP(small_dataset.input_shape, small_dataset.num_classes)
    plain = FedAvg(FedAvgConfig(client=ClientConfig(epochs=1)), model, small_dataset, seed=1)
    mom = FedAvg(FedAvgConfig(client=ClientConfig(epochs=1), server_momentum=0.9), model,
                 small_dataset, seed=1)
    s_plain, s_mom = plain.initial_state(), mom.initial_state()
    r1p, r1m = plain.run_round(s_plain), mom.run_round(s_mom)
    # round 1: v = aggregate, so both take the same step
    for k in r1p.state.model:
        torch.testing.assert_close(r1p.state.model[k], r1m.state.model[k])
    assert r1m.state.momentum is not None and r1p.state.momentum is None
    lay = mom.layout
    step1 = lay.flatten(r1m.state.model) - lay.flatten(s_mom.model)
    torch.testing.assert_close(r1m.state.momentum, step1)


class MixedDtypes(nn.Module):
    """float64 and bfloat16 parameters, a float32 BatchNorm with an int64 counter, odd shapes."""

    def __init__(self, input_shape: tuple[int, ...], num_classes: int) -> None:
        super().__init__()
        features = int(np.prod(input_shape))
        self.first = nn.Linear(features, 6).double()
        self.norm = nn.BatchNorm1d(6)
        self.gate = nn.Parameter(torch.ones(1, 6, dtype=torch.bfloat16))
        self.head = nn.Linear(6, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.first(x.flatten(1).double()).float()
        return self.head(torch.relu(self.norm(h)) * self.gate.float())


def test_fedavg_handles_mixed_dtypes_and_shapes(small_dataset):
    torch.manual_seed(0)
    model = MixedDtypes(small_dataset.input_shape, small_dataset.num_classes)
    trainer = FedAvg(FedAvgConfig(client=ClientConfig(epochs=2, batch_size=6)), model, small_dataset)
    assert trainer.layout.dtype == torch.float64
    state = trainer.initial_state()
    new = trainer.run_round(trainer.run_round(state).state).state.model
    for name, before in state.model.items():
        assert new[name].dtype == before.dtype and new[name].shape == before.shape, name
    assert not torch.equal(new["first.weight"], state.model["first.weight"])
    assert not torch.equal(new["gate"], state.model["gate"])
    assert torch.equal(new["norm.num_batches_tracked"], state.model["norm.num_batches_tracked"])


def test_aggregator_receives_the_layout(small_dataset):
    from dataclasses import dataclass

    from secagg.aggregation import Aggregate, Aggregator

    seen = []

    @dataclass(frozen=True)
    class Spy(Aggregator, kind="test-spy"):
        def aggregate(self, batch, state):
            seen.append(batch.layout)
            return Aggregate(batch.updates.mean(0), dict(state))

    model = MLP(small_dataset.input_shape, small_dataset.num_classes)
    trainer = FedAvg(FedAvgConfig(aggregator=Spy(), client=ClientConfig(epochs=1)), model, small_dataset)
    trainer.run_round(trainer.initial_state())
    assert seen == [trainer.layout]
    assert set(seen[0].unflatten(torch.zeros(seen[0].dim))) == set(dict(model.named_parameters()))
