"""FedProx (Li et al., MLSys 2020): the proximal term in local training, plain and with DP-SGD."""

from __future__ import annotations

import copy
import itertools

import numpy as np
import pytest
import torch
from conftest import make_dataset
from torch import nn

from dp.dpsgd import DPSGDTrainer
from secagg.data.federated import ClientData
from secagg.errors import ConfigError
from secagg.fedavg import ClientConfig, FedAvgConfig, client_update
from secagg.layout import ParamLayout
from secagg.models import MLP


def _old_client_update(model, global_state, data, config, layout, *, seed):
    """client_update as it was before FedProx (its training loop, copied): the reference for mu = 0."""
    local = copy.deepcopy(model)
    local.load_state_dict(global_state, strict=True)
    local.train()
    opt = torch.optim.SGD(local.parameters(), lr=config.lr, momentum=config.momentum,
                          weight_decay=config.weight_decay)
    order = torch.Generator().manual_seed(seed)
    batch = len(data) if config.batch_size == 0 else config.batch_size
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for _ in range(config.epochs):
            for idx in torch.randperm(len(data), generator=order).split(batch):
                loss = nn.functional.cross_entropy(local(data.x[idx]), data.y[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
    return layout.flatten(local.state_dict()) - layout.flatten(global_state)


def _client(seed: int = 0):
    data = make_dataset(num_clients=1, per_client=40, seed=seed)
    torch.manual_seed(seed)
    model = MLP(data.input_shape, data.num_classes)
    return model, ParamLayout.from_module(model), ClientData(data.train_x, data.train_y)


@pytest.mark.parametrize("config", [ClientConfig(epochs=2, batch_size=8, lr=0.1),
                                    ClientConfig(epochs=1, batch_size=0, lr=0.3, momentum=0.9,
                                                 weight_decay=1e-3)])
def test_mu_zero_is_todays_local_training_bit_for_bit(config):
    model, layout, data = _client()
    state = model.state_dict()
    update = client_update(model, state, data, config, layout, seed=11)
    assert config.proximal_mu == 0.0
    assert torch.equal(update.delta, _old_client_update(model, state, data, config, layout, seed=11))


def test_the_update_shrinks_as_mu_grows():
    model, layout, data = _client(3)
    state = model.state_dict()
    norms = []
    for mu in (0.0, 0.3, 1.0, 3.0, 9.0):  # lr * mu < 1: the pull never overshoots the anchor
        config = ClientConfig(epochs=5, batch_size=8, lr=0.1, proximal_mu=mu)
        norms.append(float(client_update(model, state, data, config, layout, seed=5).delta.norm()))
    assert all(a > b for a, b in itertools.pairwise(norms)), norms
    assert norms[-1] < 0.5 * norms[0], norms


def _softmax_grad(w, b, x, y):
    """Mean cross-entropy gradient of a linear layer (float64 numpy), written out by hand."""
    z = x @ w.T + b
    p = np.exp(z - z.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    p[np.arange(len(y)), y] -= 1.0
    return p.T @ x / len(y), p.mean(axis=0)


@pytest.mark.parametrize("mu", [0.0, 0.5, 2.0])
def test_known_answer_on_a_linear_model(mu):
    """Three full-batch steps of w <- w - lr (grad F(w) + mu (w - w0)), the gradient of FedProx's
    local objective F(w) + mu/2 ||w - w0||^2, computed independently in numpy."""
    g = torch.Generator().manual_seed(0)
    model = nn.Linear(3, 2).double()
    x = torch.randn(6, 3, generator=g, dtype=torch.float64)
    y = torch.tensor([0, 1, 1, 0, 1, 0])
    layout = ParamLayout.from_module(model)
    config = ClientConfig(epochs=3, batch_size=0, lr=0.5, proximal_mu=mu)
    update = client_update(model, model.state_dict(), ClientData(x, y), config, layout, seed=1)
    w0, b0 = model.weight.detach().numpy().copy(), model.bias.detach().numpy().copy()
    w, b = w0.copy(), b0.copy()
    for _ in range(3):
        gw, gb = _softmax_grad(w, b, x.numpy(), y.numpy())
        w, b = w - 0.5 * (gw + mu * (w - w0)), b - 0.5 * (gb + mu * (b - b0))
    np.testing.assert_allclose(update.delta.numpy(), np.concatenate([(w - w0).ravel(), b - b0]),
                               rtol=1e-12, atol=1e-14)
    assert update.train_loss < 1.0  # the data loss alone (mean over the steps), not the proximal term


def test_frozen_coordinates_stay_put_under_the_proximal_term():
    model, layout, data = _client()
    frozen = torch.zeros(layout.num_parameters, dtype=torch.bool)
    frozen[::3] = True
    config = ClientConfig(epochs=2, batch_size=8, lr=0.1, proximal_mu=1.0)
    update = client_update(model, model.state_dict(), data, config, layout, seed=2, frozen=frozen)
    assert bool((update.delta[:layout.num_parameters][frozen] == 0).all())
    assert float(update.delta.abs().sum()) > 0


def test_dpsgd_adds_the_proximal_gradient_after_clipping_and_noise():
    """Two full-batch DP-SGD steps with clipping active. The first step starts at w0, where the proximal
    gradient is 0, so both runs reach the same w1 with the same noise draws; the second adds exactly
    -lr mu (w1 - w0) to the noised step. So u(mu) = u(0) - lr mu u_1, where u_1 is the one-step
    update. Had the term gone through Opacus's per-example clipping (or its noise scale), this would
    not hold. The privacy accounting does not see mu at all."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 4))
    data = make_dataset(num_clients=1, per_client=30, seed=4)
    client = ClientData(data.train_x, data.train_y)
    layout = ParamLayout.from_module(model)

    def update(epochs: int, mu: float) -> torch.Tensor:
        config = ClientConfig(epochs=epochs, batch_size=0, lr=2.0, proximal_mu=mu)
        trainer = DPSGDTrainer(noise_multiplier=0.7, max_grad_norm=0.05, batch_size=0, epochs=epochs)
        return trainer.train(model, model.state_dict(), client, config, layout, seed=9, client_id=0).delta

    one, plain, prox = update(1, 0.0), update(2, 0.0), update(2, 0.4)
    assert float(one.norm()) > 0.01
    torch.testing.assert_close(prox, plain - 2.0 * 0.4 * one, rtol=0, atol=1e-6)
    assert float((prox - plain).norm()) > 0.01
    trainer = DPSGDTrainer(noise_multiplier=0.7, max_grad_norm=0.05, batch_size=0, epochs=2)
    assert trainer.epsilon_after({0: 3}, {0: 30}) > 0  # a function of the schedule alone: no mu in it


def test_validation_round_trip_and_flag():
    for bad, message in [(-0.1, "client.proximal_mu: must be >= 0.0, got -0.1"),
                         (float("inf"), "client.proximal_mu: must be a finite number")]:
        with pytest.raises(ConfigError, match=message):
            ClientConfig(proximal_mu=bad)
    config = FedAvgConfig(client=ClientConfig(proximal_mu=0.01))
    assert FedAvgConfig.from_dict(config.to_dict()) == config
    assert ClientConfig.from_dict({"lr": 0.1}).proximal_mu == 0.0  # older configurations load

    from secagg.cli.compose import config_from_args
    from secagg.cli.options import _build_parser

    args = _build_parser().parse_args(["train", "--proximal-mu", "0.01"])
    assert config_from_args(args).fedavg.client.proximal_mu == 0.01
