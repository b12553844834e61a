"""Record-level DP-SGD in local training: purity, clipping, accounting against Opacus, a FedAvg run."""

from __future__ import annotations

import copy
import dataclasses
import warnings
from collections import Counter

import pytest
import torch
from opacus import PrivacyEngine
from opacus.accountants import PRVAccountant, RDPAccountant
from opacus.data_loader import DPDataLoader
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from dp.dpsgd import DPSGDTrainer, dpsgd_epsilon, poisson_schedule
from secagg.data.digits import load_digits_split
from secagg.data.federated import ClientData
from secagg.data.partition import PartitionConfig
from secagg.errors import ConfigError
from secagg.experiment import ExperimentConfig, run_experiment
from secagg.fedavg import ClientConfig, ClientTrainer, FedAvgConfig
from secagg.fedavg.client import client_update
from secagg.layout import ParamLayout
from secagg.models import build_model
from secagg.task import TaskConfig


def _setup(model: str = "mlp", n: int = 120):
    torch.manual_seed(0)
    net = build_model(model, (1, 8, 8), 10)
    x, y, _, _ = load_digits_split(0.2, seed=0)
    return net, ParamLayout.from_module(net), ClientData(x[:n], y[:n])


def _trainer(config: ClientConfig, **kw) -> DPSGDTrainer:
    kw = {"noise_multiplier": 1.0, "max_grad_norm": 1.0} | kw
    return DPSGDTrainer(batch_size=config.batch_size, epochs=config.epochs, **kw)


def test_delta_is_finite_in_layout_and_inputs_untouched():
    net, layout, data = _setup()
    state = {k: v.clone() for k, v in net.state_dict().items()}
    before_model = copy.deepcopy(net.state_dict())
    x0, y0 = data.x.clone(), data.y.clone()
    config = ClientConfig(epochs=1, batch_size=16, lr=0.5)
    rng = torch.get_rng_state()
    update = _trainer(config).train(net, state, data, config, layout, seed=7, client_id=3)
    assert torch.equal(torch.get_rng_state(), rng)  # global RNG untouched
    assert update.delta.shape == (layout.dim,) and torch.isfinite(update.delta).all()
    assert update.delta.abs().sum() > 0 and update.client_id == 3 and update.num_examples == len(data)
    for k in before_model:
        assert torch.equal(net.state_dict()[k], before_model[k]) and torch.equal(state[k], before_model[k])
    assert torch.equal(data.x, x0) and torch.equal(data.y, y0)


def test_same_seed_same_delta_other_seed_other_delta():
    net, layout, data = _setup()
    config = ClientConfig(epochs=1, batch_size=16)
    trainer = _trainer(config)

    def run(seed: int) -> torch.Tensor:
        return trainer.train(net, net.state_dict(), data, config, layout, seed=seed, client_id=0).delta

    a = run(1)
    assert torch.equal(a, run(1))
    assert not torch.equal(a, run(2))


def test_tiny_client_with_empty_poisson_batches_still_trains(monkeypatch):
    # 3 examples at rate 1/3: a batch is empty with probability (2/3)^3, so some of 15 steps are
    sizes: list[int] = []
    iterate = DPDataLoader.__iter__

    def spy(self):
        for batch in iterate(self):
            sizes.append(len(batch[1]))
            yield batch

    monkeypatch.setattr(DPDataLoader, "__iter__", spy)
    net, layout, data = _setup(n=3)
    config = ClientConfig(epochs=5, batch_size=1, lr=0.1)
    update = _trainer(config).train(net, net.state_dict(), data, config, layout, seed=0, client_id=0)
    assert len(sizes) == 15 and 0 in sizes
    assert torch.isfinite(update.delta).all() and update.delta.abs().sum() > 0


def test_per_example_clipping_bounds_the_update_plain_sgd_does_not():
    net, layout, data = _setup()
    # full batch (rate 1: every example in every step), so each step moves at most lr * max_grad_norm
    config = ClientConfig(epochs=3, batch_size=0, lr=0.5)
    clip = 1e-3
    trainer = _trainer(config, noise_multiplier=1e-6, max_grad_norm=clip)
    dp = trainer.train(net, net.state_dict(), data, config, layout, seed=0, client_id=0).delta
    bound = config.lr * config.epochs * clip
    assert 0 < float(torch.linalg.vector_norm(dp)) <= bound * 1.001
    sgd = client_update(net, net.state_dict(), data, config, layout, seed=0).delta
    assert float(torch.linalg.vector_norm(sgd)) > 100 * bound


def test_one_step_is_minus_lr_times_the_mean_clipped_per_example_gradient():
    net, layout, data = _setup(n=40)
    config = ClientConfig(epochs=1, batch_size=0, lr=0.5)
    clip = 0.05
    trainer = _trainer(config, noise_multiplier=1e-6, max_grad_norm=clip)
    dp = trainer.train(net, net.state_dict(), data, config, layout, seed=0, client_id=0).delta
    clipped = torch.zeros(layout.dim)
    for i in range(len(data)):
        net.zero_grad()
        nn.functional.cross_entropy(net(data.x[i:i + 1]), data.y[i:i + 1]).backward()
        g = torch.cat([p.grad.reshape(-1) for p in net.parameters()])
        clipped += g * min(1.0, clip / float(torch.linalg.vector_norm(g)))
    net.zero_grad(set_to_none=True)
    expected = -config.lr * clipped / len(data)
    torch.testing.assert_close(dp, expected, rtol=1e-4, atol=1e-8)


def test_poisson_schedule_is_what_opacus_samples_and_charges():
    for n, b in [(120, 16), (93, 1), (186, 2), (50, 0), (10, 64), (1000, 7)]:
        loader = DPDataLoader.from_data_loader(
            DataLoader(TensorDataset(torch.zeros(n, 1)), batch_size=n if b == 0 else b))
        rate, steps, charged = poisson_schedule(n, b)
        assert (rate, steps, charged) == (loader.sample_rate, len(loader), 1 / len(loader))
        assert charged >= rate
    assert poisson_schedule(186, 2) == (1 / 93, 92, 1 / 92)  # Opacus's int(1 / rate) quirk, reproduced


def test_epsilon_grows_with_participation_and_shrinks_with_noise():
    sizes = {0: 200, 1: 400}
    base = DPSGDTrainer(noise_multiplier=1.0, max_grad_norm=1.0, batch_size=20, epochs=1)
    eps = [base.epsilon_after({0: r, 1: r}, sizes) for r in (1, 5, 20)]
    assert 0 < eps[0] < eps[1] < eps[2]
    noisier = dataclasses.replace(base, noise_multiplier=2.0)
    assert noisier.epsilon_after({0: 5, 1: 5}, sizes) < eps[1]
    # the most exposed client decides: client 0 has fewer examples (larger sample rate)
    assert base.epsilon_after({0: 5}, sizes) == eps[1] > base.epsilon_after({1: 5}, sizes)
    assert base.epsilon_after({0: 0}, sizes) == 0.0


@pytest.mark.parametrize("accountant", ["rdp", "prv"])
def test_epsilon_matches_opacus_privacy_engine(accountant):
    # train for real with Opacus's own engine on 186 examples, batch 2 (93 batches -> 92 steps/epoch)
    torch.manual_seed(0)
    n, batch, epochs = 186, 2, 2
    model = nn.Linear(4, 2)
    loader = DataLoader(TensorDataset(torch.randn(n, 4), torch.randint(0, 2, (n,))), batch_size=batch)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        engine = PrivacyEngine(accountant=accountant)
        model, opt, loader = engine.make_private(
            module=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1), data_loader=loader,
            noise_multiplier=0.9, max_grad_norm=1.0)
        for _ in range(epochs):
            for xb, yb in loader:
                opt.zero_grad()
                nn.functional.cross_entropy(model(xb), yb).backward()
                opt.step()
    trainer = DPSGDTrainer(noise_multiplier=0.9, max_grad_norm=1.0, accountant=accountant,
                           batch_size=batch, epochs=epochs)
    ours = trainer.epsilon_after({5: 1}, {5: n})
    assert ours == pytest.approx(engine.get_epsilon(1e-5), rel=1e-6)
    assert ours == dpsgd_epsilon(trainer, batch, epochs, {5: n}, {5: 1})
    # three rounds compose like 3x the steps, as a directly stepped accountant counts them
    direct = RDPAccountant() if accountant == "rdp" else PRVAccountant()
    for _ in range(3 * epochs * 92):  # Opacus's engine charges 1 / len(loader) = 1 / 92 per step
        direct.step(noise_multiplier=0.9, sample_rate=1 / 92)
    assert trainer.epsilon_after({5: 3}, {5: n}) == pytest.approx(direct.get_epsilon(1e-5), rel=1e-6)


def test_prv_is_not_looser_than_rdp():
    rdp = DPSGDTrainer(noise_multiplier=1.0, max_grad_norm=1.0, batch_size=32, epochs=1)
    prv = dataclasses.replace(rdp, accountant="prv")
    sizes = {0: 300}
    assert prv.epsilon_after({0: 10}, sizes) <= rdp.epsilon_after({0: 10}, sizes)


def test_batchnorm_model_is_refused_with_a_clear_error():
    net, layout, data = _setup("cnn-bn")
    config = ClientConfig(epochs=1, batch_size=16)
    with pytest.raises(ConfigError, match=r"without BatchNorm.*'cnn' instead of 'cnn-bn'"):
        _trainer(config).train(net, net.state_dict(), data, config, layout, seed=0, client_id=0)
    net, layout, data = _setup("cnn", n=40)  # the BatchNorm-free CNN trains
    update = _trainer(config).train(net, net.state_dict(), data, config, layout, seed=0, client_id=0)
    assert torch.isfinite(update.delta).all()


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"noise_multiplier": 0.0}, r"trainer.noise_multiplier: must be > 0"),
    ({"noise_multiplier": float("nan")}, r"trainer.noise_multiplier: must be a finite number"),
    ({"max_grad_norm": -1.0}, r"trainer.max_grad_norm: must be > 0"),
    ({"delta": 0.0}, r"trainer.delta: must be > 0"),
    ({"delta": 1.0}, r"trainer.delta: must be < 1"),
    ({"accountant": "gdp"}, r"trainer.accountant: must be one of 'rdp', 'prv'"),
    ({"target_epsilon": 0}, r"trainer.target_epsilon: must be > 0"),
    ({"batch_size": -1}, r"trainer.batch_size: must be >= 0"),
    ({"epochs": 0}, r"trainer.epochs: must be >= 1"),
    ({"secure_mode": True}, r"secure_mode: not available.*torchcsprng.*Python 3.11"),
])
def test_bad_settings_name_the_field(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        DPSGDTrainer(**({"noise_multiplier": 1.0, "max_grad_norm": 1.0} | kwargs))


def test_schedule_must_match_the_client_config():
    net, layout, data = _setup(n=20)
    config = ClientConfig(epochs=1, batch_size=16)
    unset = DPSGDTrainer(noise_multiplier=1.0, max_grad_norm=1.0)
    with pytest.raises(ConfigError, match=r"trainer.batch_size: must be set"):
        unset.train(net, net.state_dict(), data, config, layout, seed=0, client_id=0)
    with pytest.raises(ConfigError, match=r"trainer.batch_size: must be set"):
        unset.epsilon_after({0: 1}, {0: 20})
    other = dataclasses.replace(unset, batch_size=8, epochs=1)
    with pytest.raises(ConfigError, match=r"must equal client.batch_size/epochs \(16/1\), got 8/1"):
        other.train(net, net.state_dict(), data, config, layout, seed=0, client_id=0)
    with pytest.raises(ConfigError, match=r"examples: no example count for client 4"):
        other.epsilon_after({4: 1}, {0: 20})


def test_round_trips_through_the_trainer_registry():
    trainer = DPSGDTrainer(noise_multiplier=1.1, max_grad_norm=0.5, accountant="prv", target_epsilon=8.0,
                           batch_size=32, epochs=1)
    assert ClientTrainer.from_dict(trainer.to_dict()) == trainer
    assert trainer.privacy_budget() == 8.0
    config = FedAvgConfig(trainer=trainer)
    assert FedAvgConfig.from_dict(config.to_dict()) == config


def test_fedavg_with_dpsgd_learns_digits_at_epsilon_about_8():
    # 5 iid clients of ~287 examples, all in every round; batch 64 -> rate 1/5, 5 steps per round
    client = ClientConfig(epochs=1, batch_size=64, lr=1.0)
    trainer = DPSGDTrainer(noise_multiplier=1.0, max_grad_norm=1.0, delta=1e-5, target_epsilon=9.0,
                           batch_size=64, epochs=1)
    rounds = 5
    config = ExperimentConfig(
        task=TaskConfig(num_clients=5, partition=PartitionConfig(kind="iid"), model="mlp"),
        fedavg=FedAvgConfig(rounds=rounds, fraction=1.0, client=client, trainer=trainer), seed=0)
    result = run_experiment(config)
    fedavg = result.trainer
    participations = Counter(c for r in range(1, rounds + 1) for c in fedavg.sample_clients(r))
    sizes = dict(enumerate(fedavg.data.client_sizes()))
    epsilon = trainer.epsilon_after(participations, sizes)
    assert 6.0 < epsilon < trainer.privacy_budget()
    assert epsilon == dpsgd_epsilon(trainer, 64, 1, sizes, participations)
    accuracy = result.history[-1]["accuracy"]
    assert accuracy > 0.5, f"test accuracy {accuracy:.3f} at epsilon {epsilon:.2f}"
