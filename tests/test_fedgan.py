"""Federated GANs (secagg.gan) and GAN-Leaks (attacks.gan_leaks): properties, not restated formulas.

* the trainer is a pure function of its inputs, and with ``generator_target="global"`` the
  generator's half of the update does not depend on the client's data (two clients, different data,
  same seed: identical generator halves), while ``"local"`` makes it depend (the test can fail);
* client-level DP over the whole pair: one client added moves the pre-noise sum by at most the clip,
  measured on real GAN updates from neighbouring client sets, for both generator targets;
* secure aggregation trains the same GAN as the plain mean, to quantization error;
* the metrics on known inputs (one class: 1 mode, KL = ln K; real vs itself: Frechet ~0);
* GAN-Leaks on planted generators (memorising the members: AUC 1; sampling the population: ~0.5);
* ``secagg train --task gan`` writes the grids, the curves and the per-round metrics.
"""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
import torch
from torch import nn

from attacks.gan_leaks import fbb_scores, gan_leaks
from dp.central import DPFedAvg
from dp.noise import SecureRandom
from secagg.aggregation import Mean, SecureSum, UpdateBatch
from secagg.cli import main
from secagg.data.federated import ClientData
from secagg.data.partition import PartitionConfig
from secagg.errors import ConfigError
from secagg.experiment import run_experiment
from secagg.fedavg.config import ClientConfig
from secagg.fedavg.server import evaluate
from secagg.gan import (
    GANPair,
    GANTrainer,
    discriminator_slice,
    frechet_distance,
    gan_experiment,
    gan_task_with_reserve,
    generator_slice,
    mode_coverage,
)
from secagg.layout import ParamLayout
from secagg.seeding import torch_generator
from secagg.task import TaskConfig

CLIENT = ClientConfig(epochs=1, batch_size=16, lr=2e-3)


@pytest.fixture(scope="module")
def small():
    """A 4-client digits GAN task with a narrow pair (fast), 60 examples held out of every client."""
    torch.set_num_threads(1)
    return gan_task_with_reserve(TaskConfig(num_clients=4), 0, reserve=60, hidden=32)


def _train(task, trainer, data, seed, state=None):
    model = task.model
    layout = ParamLayout.from_module(model)
    state = model.state_dict() if state is None else state
    return trainer.train(model, state, data, CLIENT, layout, seed=seed, client_id=0), layout


# ------------------------------------------------------------------------------------------ trainer


def test_trainer_is_deterministic_and_leaves_its_inputs_alone(small):
    task = small.task
    before = {k: v.clone() for k, v in task.model.state_dict().items()}
    data = task.data.client(0)
    a, _ = _train(task, GANTrainer(steps=3), data, seed=11)
    b, _ = _train(task, GANTrainer(steps=3), data, seed=11)
    c, _ = _train(task, GANTrainer(steps=3), data, seed=12)
    assert torch.equal(a.delta, b.delta) and a.train_loss == b.train_loss
    assert not torch.equal(a.delta, c.delta)
    assert a.num_examples == len(data)
    after = task.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    # torch's global RNG is not consumed
    torch.manual_seed(5)
    expected = torch.rand(1)
    torch.manual_seed(5)
    _train(task, GANTrainer(steps=1), data, seed=3)
    assert torch.equal(torch.rand(1), expected)


@pytest.mark.parametrize("target", ["global", "local"])
def test_global_target_makes_the_generator_half_independent_of_the_data(small, target):
    task = small.task
    # two clients with different data (other digits, another size), the same training seed
    d0, d1 = task.data.client(0), task.data.client(1)
    other = ClientData(1.0 - d1.x[:23], d1.y[:23])
    trainer = GANTrainer(steps=4, generator_target=target)
    u0, layout = _train(task, trainer, d0, seed=7)
    u1, _ = _train(task, trainer, other, seed=7)
    g, d = generator_slice(layout), discriminator_slice(layout)
    assert g.stop == d.start and d.stop == layout.num_parameters  # the halves tile the vector
    assert not torch.equal(u0.delta[d], u1.delta[d])  # the discriminator saw the data
    assert u0.delta[g].abs().sum() > 0
    same = torch.equal(u0.delta[g], u1.delta[g])
    assert same == (target == "global")


def test_trainer_refuses_what_it_cannot_train(small):
    task = small.task
    layout = ParamLayout.from_module(task.model)
    data = task.data.client(0)
    with pytest.raises(ConfigError, match=r"trainer: 'gan' trains a secagg\.gan\.GANPair"):
        GANTrainer().train(nn.Linear(64, 2), {}, data, CLIENT, layout, seed=0, client_id=0)
    with pytest.raises(ConfigError, match=r"client\.batch_size: .* >= 1"):
        GANTrainer().train(task.model, task.model.state_dict(), data,
                           dataclasses.replace(CLIENT, batch_size=0), layout, seed=0, client_id=0)
    with pytest.raises(ConfigError, match=r"client\.momentum, client\.weight_decay"):
        GANTrainer().train(task.model, task.model.state_dict(), data,
                           dataclasses.replace(CLIENT, momentum=0.9), layout, seed=0, client_id=0)
    for bad, field in [(dict(steps=0), "trainer.steps"), (dict(generator_target="server"),
                                                           "trainer.generator_target"),
                       (dict(optimizer="rmsprop"), "trainer.optimizer"), (dict(beta2=1.0), "trainer.beta2")]:
        with pytest.raises(ConfigError, match=field):
            GANTrainer(**bad)
    with pytest.raises(ConfigError, match="not a classifier"):
        task.model(task.data.test_x[:2])
    assert GANTrainer.from_dict(GANTrainer(steps=3).to_dict()) == GANTrainer(steps=3)


# ---------------------------------------------------------------------------------------------- DP


@pytest.mark.parametrize("target", ["global", "local"])
@pytest.mark.parametrize("secure", [False, True])
def test_one_client_moves_the_dp_sum_by_at_most_the_clip(small, target, secure):
    """Client-level DP over the whole pair: neighbouring client sets (one client added, with its own,
    very different data), the same noise keystream: the released means differ by at most clip / qN."""
    task = small.task
    trainer = GANTrainer(steps=3, generator_target=target)
    clients = [task.data.client(i) for i in range(4)]
    extra = ClientData(1.0 - clients[3].x, clients[3].y)  # the added client: inverted digits
    rows = [_train(task, trainer, d, seed=100 + i)[0].delta for i, d in enumerate([*clients, extra])]
    clip = 0.2
    assert min(float(r.norm()) for r in rows) > clip  # every row is clipped: the bound is tight
    inner = SecureSum(weighted=False, max_clients=10, value_range=1.0) if secure else Mean(weighted=False)
    agg = DPFedAvg(clip=clip, noise_multiplier=1.0, expected_clients=4, sampling="none", inner=inner)

    def release(k: int) -> torch.Tensor:
        stack = torch.stack(rows[:k]).double()
        batch = UpdateBatch(stack, torch.ones(k, dtype=torch.float64), tuple(range(k)), round=1, seed=3)
        return agg.aggregate_with_noise(batch, agg.init_state(batch.dim), SecureRandom(b"k" * 32)).update

    moved = float(torch.linalg.vector_norm((release(5) - release(4)).double())) * agg.expected_clients
    assert moved <= clip * (1 + 1e-9)
    assert moved >= 0.9 * clip  # the added client's whole clipped vector, both halves


# ------------------------------------------------------------------------------- secure aggregation


def test_secure_aggregation_trains_the_same_gan_as_the_plain_mean(small):
    base = gan_experiment(rounds=2, num_clients=4)
    base = dataclasses.replace(base, fedavg=dataclasses.replace(
        base.fedavg, client=CLIENT, trainer=GANTrainer(steps=2)))
    secure = dataclasses.replace(base, fedavg=dataclasses.replace(
        base.fedavg, aggregator=SecureSum(value_range=1.0)))
    plain = run_experiment(base, task_factory=lambda c, s: small.task)
    masked = run_experiment(secure, task_factory=lambda c, s: small.task)
    for key, value in plain.state.model.items():
        assert torch.allclose(value, masked.state.model[key], atol=1e-5), key
    assert not torch.equal(plain.state.model["generator.net.0.weight"],
                           small.task.model.state_dict()["generator.net.0.weight"])
    row = masked.history[-1]
    assert {"modes_covered", "mode_kl", "frechet", "d_accuracy_real", "d_accuracy_fake",
            "evaluator_train_accuracy"} <= set(row)
    assert abs(row["frechet"] - plain.history[-1]["frechet"]) < 1e-2 * max(1.0, row["frechet"])


# ----------------------------------------------------------------------------------------- metrics


def test_mode_coverage_on_known_labels():
    k = 10
    one = mode_coverage(torch.full((500,), 3), k)
    assert one["modes_covered"] == 1 and one["mode_kl"] == pytest.approx(math.log(k))
    even = mode_coverage(torch.arange(1000) % k, k)
    assert even["modes_covered"] == k and even["mode_kl"] == pytest.approx(0.0, abs=1e-12)
    # the threshold is half the uniform share, 1 / (2K) = 5%: 5 of 100 counts, 4 of 100 does not
    labels = torch.tensor([0] * 5 + [1] * 4 + [2] * 91)
    assert mode_coverage(labels, k)["modes_covered"] == 2
    with pytest.raises(ConfigError, match=r"labels: must be in \[0, 10\)"):
        mode_coverage(torch.tensor([10]), k)


def test_metrics_through_the_evaluator(small):
    task = small.task
    ev = task.model.evaluation
    x, y = task.data.test_x, task.data.test_y
    assert ev.evaluator_train_accuracy > 0.85  # trained on the held-out split, checked on the training split
    # a "generator" that outputs exactly the real images of one class (class 4)
    one_class = x[y == 4]
    cov = mode_coverage(ev.evaluator.predict(one_class), 10)
    assert cov["modes_covered"] == 1 and cov["mode_kl"] > math.log(10) - 0.15
    real = ev.evaluator.features(x)
    assert frechet_distance(real, real) < 1e-6
    noise = ev.evaluator.features(torch.rand(1000, *x.shape[1:], generator=torch_generator(0, "noise")))
    held = ev.evaluator.features(task.data.train_x[:600])  # other real digits
    assert frechet_distance(noise, real) > 10 * frechet_distance(held, real)


def test_the_server_records_the_gan_metrics_and_refuses_an_incomplete_evaluation(small):
    task = small.task
    metrics = evaluate(task.model, task.model.state_dict(), task.data.test_x, task.data.test_y)
    assert {"accuracy", "loss", "modes_covered", "mode_kl", "frechet"} <= set(metrics)
    balanced = 0.5 * (metrics["d_accuracy_real"] + metrics["d_accuracy_fake"])
    assert metrics["accuracy"] == pytest.approx(balanced)

    class Partial(nn.Linear):
        def evaluate_state(self, state_dict, x, y):
            return {"accuracy": 1.0}

    with pytest.raises(ConfigError, match=r"lacks \['loss'\]"):
        evaluate(Partial(2, 2), {}, x=torch.zeros(1, 2), y=torch.zeros(1, dtype=torch.int64))


def test_the_reserve_is_held_by_no_client(small):
    data, reserve = small.task.data, small.reserve
    assert len(reserve) == 60
    flat = {tuple(r.flatten().tolist()) for r in data.train_x}
    held = [tuple(r.flatten().tolist()) for r in reserve.x]
    # digits has a few duplicate images; nearly every reserved one is absent from the clients' rows
    assert sum(h in flat for h in held) <= 2
    assert sum(len(p) for p in data.partition) == data.train_x.shape[0]


# -------------------------------------------------------------------------------------- GAN-Leaks


class _Planted(nn.Module):
    """A "generator" that returns a uniformly chosen row of ``pool`` (the choice read off z)."""

    def __init__(self, pool: torch.Tensor) -> None:
        super().__init__()
        self.pool = pool

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        u = torch.special.ndtr(z[:, 0])  # uniform on (0, 1)
        return self.pool[(u * self.pool.shape[0]).long().clamp(max=self.pool.shape[0] - 1)]


def test_gan_leaks_on_planted_generators(small):
    data, reserve = small.task.data, small.reserve
    members = data.train_x[:60]
    population = data.train_x[300:]  # same distribution, neither members nor non-members
    memorised = gan_leaks(_Planted(members), 4, members, reserve.x, k=3000, seed=1)
    assert memorised.auc == pytest.approx(1.0)
    assert memorised.tpr_at[0.01] == pytest.approx(1.0)
    fresh = gan_leaks(_Planted(population), 4, members, reserve.x, k=3000, seed=1)
    assert 0.38 < fresh.auc < 0.62
    assert (fresh.members, fresh.non_members, fresh.k) == (60, 60, 3000)
    # the score is minus the nearest distance: an exact copy scores 0, the maximum
    scores = fbb_scores(members[:5], torch.cat([members[:1], members[:1] + 0.1]))
    assert scores[0] == 0.0 and scores[1] < 0


# --------------------------------------------------------------------------------------------- CLI


def test_train_task_gan_writes_grids_curves_and_metrics(tmp_path, capsys):
    out = tmp_path / "gan"
    code = main(["train", "--task", "gan", "--rounds", "2", "--clients", "4", "--gan-steps", "2",
                 "--partition", "shards", "--secure", "--out", str(out), "--no-progress"])
    assert code == 0
    for name in ("grid.png", "grid_round_0001.png", "grid_round_0002.png", "gan_metrics.png",
                 "results.json"):
        assert (out / name).stat().st_size > 0, name
    doc = json.loads((out / "results.json").read_text())
    assert doc["config"]["fedavg"]["trainer"]["kind"] == "gan"
    assert doc["config"]["fedavg"]["trainer"]["steps"] == 2
    assert doc["config"]["fedavg"]["aggregator"]["kind"] == "secure-sum"
    for row in doc["rounds"]:
        assert 1 <= row["modes_covered"] <= 10 and 0 <= row["mode_kl"] <= math.log(10) + 1e-9
        assert row["frechet"] > 0
    assert "GAN after round 2" in capsys.readouterr().out


@pytest.mark.parametrize("flags, message", [
    (["--task", "gan", "--dp", "dpsgd", "--noise-multiplier", "1"], "--dp dpsgd: .*'gan' trainer"),
    (["--task", "gan", "--local-epochs", "2"], "--local-epochs: .*--gan-steps"),
    (["--gan-steps", "3"], "--gan-steps: needs --task gan"),
    (["--task", "gan", "--gan-steps", "0"], "--gan-steps: trainer.steps: must be >= 1"),
])
def test_bad_gan_flags_are_usage_errors(tmp_path, capsys, flags, message):
    with pytest.raises(SystemExit) as exc:
        main(["train", *flags, "--out", str(tmp_path), "--no-progress"])
    assert exc.value.code == 2
    assert pytest.importorskip("re").search(message, capsys.readouterr().err)


def test_task_config_model_is_refused(small):
    with pytest.raises(ConfigError, match="model: the gan task builds its own"):
        gan_task_with_reserve(TaskConfig(num_clients=2, model="cnn"), 0)
    with pytest.raises(ConfigError, match="reserve: must be < the"):
        gan_task_with_reserve(TaskConfig(num_clients=2), 0, reserve=10**6)
    assert isinstance(small.task.model, GANPair)
    assert isinstance(np.asarray(small.reserve.y), np.ndarray)
    assert PartitionConfig(kind="shards").shards_per_client == 2


@pytest.mark.slow
def test_a_gan_trains_over_a_real_deployment_and_the_server_writes_its_grids(deployment):
    """``secagg serve --task gan`` with ``secagg client --task gan`` processes over TLS and a secure
    sum: the server evaluates the GAN and writes its grids, and every round's sum is exact."""
    dep = deployment(3)
    dep.serve("--task", "gan", "--gan-steps", "2", "--secure", rounds=2)
    for u in range(3):
        dep.client(u, "--task", "gan")
    rounds = dep.wait_server()["rounds"]
    assert [r["round"] for r in rounds] == [1, 2] and not any(r.get("aborted") for r in rounds)
    for row in rounds:
        assert 1 <= row["modes_covered"] <= 10 and row["frechet"] > 0
    audit = dep.audited_rounds()
    assert sorted(audit) == [1, 2] and all(a["exact"] for a in audit.values())
    assert (dep.out / "grid.png").stat().st_size > 0
