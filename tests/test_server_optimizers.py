"""Server optimizers (FedAvg/FedAvgM, FedAdam, FedYogi, FedAdagrad): the paper's formulas, the old
server step bit for bit, state across checkpoints and Flower rounds, configuration and flags."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from conftest import make_dataset
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from secagg.aggregation import Mean, SecureSum
from secagg.checkpoint import load_checkpoint, save_checkpoint
from secagg.data.partition import PartitionConfig
from secagg.errors import CheckpointError, ConfigError
from secagg.experiment import CHECKPOINT, ExperimentConfig, run_experiment
from secagg.fedavg import (
    ClientConfig,
    FedAvg,
    FedAvgConfig,
    ServerAdagrad,
    ServerAdam,
    ServerOptimizer,
    ServerSGD,
    ServerState,
    ServerYogi,
)
from secagg.task import TaskConfig

KINDS = {"adam": ServerAdam, "yogi": ServerYogi, "adagrad": ServerAdagrad}


def reference(kind: str, x0, deltas, *, lr, beta1, beta2=0.0, tau, v0, bias_correction=False):
    """Reddi et al. 2021, Algorithm 2, in float64 numpy, written out independently of the library:
    the iterates x_1, x_2, ... and the final (m, v)."""
    x, m, v = np.asarray(x0, np.float64), np.zeros(len(x0)), np.full(len(x0), float(v0))
    xs = []
    for t, d in enumerate(deltas, start=1):
        d = np.asarray(d, np.float64)
        m = beta1 * m + (1 - beta1) * d
        if kind == "adagrad":
            v = v + d ** 2
        elif kind == "yogi":
            v = v - (1 - beta2) * d ** 2 * np.sign(v - d ** 2)
        else:
            v = beta2 * v + (1 - beta2) * d ** 2
        eta = lr * math.sqrt(1 - beta2 ** t) / (1 - beta1 ** t) if bias_correction else lr
        x = x + eta * m / (np.sqrt(v) + tau)
        xs.append(x)
    return xs, m, v


def run(opt: ServerOptimizer, x0, deltas, dtype=torch.float64):
    x = torch.tensor(x0, dtype=dtype)
    state = opt.init_state(x.numel(), dtype)
    xs = []
    for d in deltas:
        x, state = opt.step(x, torch.tensor(d, dtype=dtype), state)
        xs.append(x)
    return xs, state


# -- known answers --------------------------------------------------------------------------------


def test_one_and_two_adagrad_steps_by_hand():
    # v_{-1} = tau^2 = 0.01; v_0 = 0.01 + 0.04 = 0.05; v_1 = 0.09 (sqrt 0.3)
    xs, state = run(ServerAdagrad(lr=0.1, tau=0.1), [0.0], [[0.2], [0.2]])
    x1 = 0.1 * 0.2 / (math.sqrt(0.05) + 0.1)
    assert xs[0].item() == pytest.approx(x1, rel=1e-14) and x1 == pytest.approx(0.0618034, abs=1e-7)
    assert xs[1].item() == pytest.approx(x1 + 0.1 * 0.2 / (0.3 + 0.1), rel=1e-14)
    assert state["v"].item() == pytest.approx(0.09, rel=1e-14)


def test_one_and_two_adam_steps_by_hand():
    # Delta = 0.1 with v_{-1} = tau^2 = 0.01 = Delta^2: v stays 0.01, sqrt(v) + tau = 0.2
    xs, state = run(ServerAdam(lr=0.1, beta1=0.9, beta2=0.99, tau=0.1), [1.0], [[0.1], [0.1]])
    assert xs[0].item() == pytest.approx(1.0 + 0.1 * 0.01 / 0.2, rel=1e-14)  # m_0 = 0.01
    assert xs[1].item() == pytest.approx(1.005 + 0.1 * 0.019 / 0.2, rel=1e-14)  # m_1 = 0.019
    assert state["m"].item() == pytest.approx(0.019, rel=1e-14)


def test_one_and_two_yogi_steps_by_hand():
    # v_{-1} = 0.01 < Delta^2 = 0.09: v grows by (1 - 0.99) * 0.09; then again (0.0109 < 0.09)
    xs, state = run(ServerYogi(lr=0.01, beta1=0.9, beta2=0.99, tau=0.1), [0.0], [[0.3], [0.3]])
    x1 = 0.01 * 0.03 / (math.sqrt(0.0109) + 0.1)
    assert xs[0].item() == pytest.approx(x1, rel=1e-14)
    assert xs[1].item() == pytest.approx(x1 + 0.01 * 0.057 / (math.sqrt(0.0118) + 0.1), rel=1e-14)
    # and v shrinks towards a smaller Delta^2: 0.0118 - 0.01 * 0.0001
    _, state = ServerYogi(beta2=0.99, tau=0.1).step(torch.zeros(1, dtype=torch.float64),
                                                    torch.tensor([0.01], dtype=torch.float64), state)
    assert state["v"].item() == pytest.approx(0.0118 - 0.01 * 0.0001, rel=1e-14)


def test_bias_correction_scales_the_first_step_like_tff_and_flower():
    opt = ServerAdam(lr=0.1, beta1=0.9, beta2=0.99, tau=1e-3, initial_v=0.0, bias_correction=True)
    xs, state = run(opt, [0.0, 0.0], [[0.5, -0.25]])
    # t = 1: eta sqrt(1 - beta2) / (1 - beta1) * (0.1 * d) / (0.1 * |d| + tau)
    want = [0.1 * math.sqrt(0.01) / 0.1 * 0.1 * d / (0.1 * abs(d) + 1e-3) for d in (0.5, -0.25)]
    assert xs[0].tolist() == pytest.approx(want, rel=1e-13)
    assert int(state["step"]) == 1 and state["step"].dtype == torch.int64


@settings(max_examples=40)
@given(kind=st.sampled_from(sorted(KINDS)), d=st.integers(1, 12), steps=st.integers(1, 4),
       seed=st.integers(0, 2**31), beta1=st.sampled_from([0.0, 0.5, 0.9]),
       beta2=st.sampled_from([0.0, 0.9, 0.99]), tau=st.sampled_from([1e-3, 0.1, 1.0]),
       initial_v=st.sampled_from([None, 0.0, 1e-6, 0.1]), bias=st.booleans())
def test_every_kind_follows_the_papers_algorithm_2(kind, d, steps, seed, beta1, beta2, tau, initial_v, bias):
    rng = np.random.default_rng(seed)
    x0, deltas = rng.normal(size=d), rng.normal(scale=0.3, size=(steps, d))
    fields = {"lr": 0.05, "beta1": beta1, "tau": tau, "initial_v": initial_v}
    if kind != "adagrad":
        fields |= {"beta2": beta2, "bias_correction": bias}
    opt = KINDS[kind](**fields)
    xs, state = run(opt, x0.tolist(), deltas.tolist())
    want, m, v = reference(kind, x0, deltas, lr=0.05, beta1=beta1, beta2=beta2 if kind != "adagrad" else 0.0,
                           tau=tau, v0=tau ** 2 if initial_v is None else initial_v,
                           bias_correction=bias and kind != "adagrad")
    for got, exp in zip(xs, want, strict=True):
        np.testing.assert_allclose(got.numpy(), exp, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(state["m"].numpy(), m, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(state["v"].numpy(), v, rtol=1e-12, atol=1e-15)
    # float32, the dtype of real models: the same numbers to float32 rounding
    xs32, _ = run(opt, x0.tolist(), deltas.tolist(), torch.float32)
    np.testing.assert_allclose(xs32[-1].double().numpy(), want[-1], rtol=1e-4, atol=1e-5)


# -- invariants -----------------------------------------------------------------------------------


def _legacy_server_step(current, update, p, lr, momentum_factor, momentum):
    """FedAvg.server_step as it was before server optimizers were pluggable (copied from that code)."""
    step = update[:p]
    if momentum is not None:
        momentum = momentum_factor * momentum + step
        step = momentum
    return torch.cat([current[:p] + lr * step, current[p:] + update[p:]]), momentum


class WithBuffers(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.first, self.norm, self.head = nn.Linear(16, 5), nn.BatchNorm1d(5), nn.Linear(5, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.norm(self.first(x.flatten(1))))


@settings(max_examples=25)
@given(lr=st.floats(0.01, 3.0), momentum=st.sampled_from([0.0, 0.5, 0.9, 0.99]), seed=st.integers(0, 2**31),
       scale=st.sampled_from([1e-6, 1e-2, 1.0, 1e3]))
def test_the_sgd_kind_is_the_old_server_step_bit_for_bit(lr, momentum, seed, scale):
    torch.manual_seed(seed % 1000)
    fedavg = FedAvg(FedAvgConfig(server_lr=lr, server_momentum=momentum), WithBuffers(), make_dataset())
    assert fedavg.server_optimizer == ServerSGD(lr=lr, momentum=momentum)
    layout, p = fedavg.layout, fedavg.layout.num_parameters
    assert layout.dim > p, "the model has aggregated buffers"
    state = fedavg.initial_state()
    old_momentum = torch.zeros(p, dtype=layout.dtype) if momentum > 0 else None
    g = torch.Generator().manual_seed(seed)
    for r in range(3):
        update = torch.randn(layout.dim, generator=g, dtype=layout.dtype) * scale
        current = layout.flatten(state.model)
        old_flat, old_momentum = _legacy_server_step(current, update, p, lr, momentum, old_momentum)
        weights, optimizer_state, _ = fedavg.server_step(state, update)
        assert torch.equal(layout.flatten(weights), old_flat)
        if momentum > 0:
            assert torch.equal(optimizer_state["momentum"], old_momentum)
        else:
            assert optimizer_state == {}
        state = ServerState(r + 1, weights, state.aggregator_state, optimizer_state, state.participations)


@settings(max_examples=40)
@given(kind=st.sampled_from(sorted(KINDS)), d=st.integers(1, 20), steps=st.integers(1, 6),
       seed=st.integers(0, 2**31), beta2=st.sampled_from([0.0, 0.5, 0.9, 0.999]),
       scale=st.sampled_from([1e-4, 1e-1, 10.0]), dtype=st.sampled_from([torch.float32, torch.float64]))
def test_second_moment_invariants_and_purity(kind, d, steps, seed, beta2, scale, dtype):
    """Adagrad's v never decreases; Yogi's moves towards Delta^2 by at most (1 - beta2) Delta^2 and stays
    >= 0; Adam's lies between v_{t-1} and Delta^2. The inputs are never modified."""
    opt = KINDS[kind](**({} if kind == "adagrad" else {"beta2": beta2}))
    g = torch.Generator().manual_seed(seed)
    x, state = torch.randn(d, generator=g, dtype=dtype), opt.init_state(d, dtype)
    for _ in range(steps):
        delta = torch.randn(d, generator=g, dtype=dtype) * scale
        before = {k: v.clone() for k, v in state.items()}
        x_before = x.clone()
        x_new, new = opt.step(x, delta, state)
        assert torch.equal(x, x_before) and all(torch.equal(state[k], before[k]) for k in state)
        v0, v1, sq = before["v"], new["v"], delta * delta
        slack = 4 * torch.finfo(dtype).eps * torch.maximum(v0.abs(), sq)
        if kind == "adagrad":
            assert bool((v1 >= v0).all())
        elif kind == "yogi":
            assert bool(((v1 - v0).abs() <= (1 - beta2) * sq + slack).all())
            assert bool((v1 >= 0).all())
            assert bool(((v1 - v0) * (sq - v0) >= 0).all()), "towards Delta^2 (or not at all)"
        else:
            assert bool((v1 >= torch.minimum(v0, sq) - slack).all())
            assert bool((v1 <= torch.maximum(v0, sq) + slack).all())
        assert bool(torch.isfinite(x_new).all())
        x, state = x_new, new


def test_state_and_inputs_are_checked_naming_the_field():
    opt = ServerAdam()
    state = opt.init_state(3)
    assert set(state) == {"m", "v"} and torch.equal(state["v"], torch.full((3,), 1e-6))
    with pytest.raises(ConfigError,
                       match=r"optimizer_state: server optimizer adam\(.*\) keeps \['m', 'v'\], got \['m'\]"):
        opt.step(torch.zeros(3), torch.zeros(3), {"m": state["m"]})
    with pytest.raises(ConfigError,
                       match=r"optimizer_state\['v'\]: expected a finite torch.float32 tensor of "
                             r"shape \(3,\), got torch.float32 of shape \(4,\)"):
        opt.step(torch.zeros(3), torch.zeros(3), {**state, "v": torch.zeros(4)})
    with pytest.raises(ConfigError, match="params and update must be 1-D"):
        opt.step(torch.zeros(3), torch.zeros(2), state)
    assert ServerSGD().init_state(3) == {} and set(ServerSGD(momentum=0.5).init_state(3)) == {"momentum"}
    assert set(ServerYogi(bias_correction=True).init_state(2)) == {"m", "v", "step"}


# -- configuration --------------------------------------------------------------------------------


@pytest.mark.parametrize("optimizer", [ServerSGD(lr=0.5, momentum=0.9),
                                       ServerAdam(lr=0.01, bias_correction=True),
                                       ServerYogi(initial_v=0.0), ServerAdagrad(beta1=0.5, tau=0.1)])
def test_configurations_round_trip_through_json(optimizer):
    config = ExperimentConfig(fedavg=FedAvgConfig(server_optimizer=optimizer))
    again = ExperimentConfig.from_json(config.to_json())
    assert again == config and again.fedavg.resolved_server_optimizer == optimizer
    assert ServerOptimizer.from_dict(json.loads(json.dumps(optimizer.to_dict()))) == optimizer


def test_the_old_fields_still_mean_the_sgd_kind():
    old = FedAvgConfig.from_dict({"server_lr": 0.5, "server_momentum": 0.9})
    assert old.server_optimizer is None
    assert old.resolved_server_optimizer == ServerSGD(lr=0.5, momentum=0.9)
    # agreeing with server_optimizer, or left at their defaults, is fine
    assert FedAvgConfig(server_lr=0.5, server_momentum=0.9,
                        server_optimizer=ServerSGD(lr=0.5, momentum=0.9)).resolved_server_optimizer.lr == 0.5
    assert FedAvgConfig(server_optimizer=ServerAdam(lr=0.02)).resolved_server_optimizer.lr == 0.02


@pytest.mark.parametrize(("make", "message"), [
    (lambda: FedAvgConfig(server_lr=0.5, server_optimizer=ServerAdam(lr=0.01)),
     r"server_lr: 0.5 disagrees with server_optimizer.lr 0.01 \('adam'\)"),
    (lambda: FedAvgConfig(server_momentum=0.9, server_optimizer=ServerYogi()),
     r"server_momentum: 0.9 is the 'sgd' server optimizer's momentum .* server_optimizer is 'yogi'"),
    (lambda: FedAvgConfig(server_momentum=0.9, server_optimizer=ServerSGD(momentum=0.5)),
     "server_momentum: 0.9 disagrees with server_optimizer.momentum 0.5"),
    (lambda: FedAvgConfig(server_optimizer="adam"), "server_optimizer: expected a ServerOptimizer or None"),
    (lambda: FedAvgConfig.from_dict({"server_optimizer": {"kind": "adamw"}}),
     "server_optimizer.kind: unknown 'adamw'; known: adagrad, adam, sgd, yogi"),
    (lambda: FedAvgConfig.from_dict({"server_optimizer": {"kind": "adagrad", "beta2": 0.9}}),
     r"server_optimizer 'adagrad': unknown field\(s\) beta2"),
    (lambda: ServerAdam(beta1=1.0), r"server_optimizer.beta1: must be < 1.0, got 1.0"),
    (lambda: ServerYogi(beta2=-0.1), r"server_optimizer.beta2: must be >= 0.0"),
    (lambda: ServerAdagrad(tau=0.0), r"server_optimizer.tau: must be > 0.0, got 0.0"),
    (lambda: ServerAdam(lr=float("nan")), "server_optimizer.lr: must be a finite number"),
    (lambda: ServerAdam(initial_v=-1e-9), "server_optimizer.initial_v: must be >= 0.0"),
    (lambda: ServerAdam(bias_correction="yes"), "server_optimizer.bias_correction: must be a bool"),
    (lambda: ServerSGD(momentum=1.0), r"server_optimizer.momentum: must be < 1.0"),
])
def test_bad_configurations_name_the_field_and_the_bound(make, message):
    with pytest.raises(ConfigError, match=message):
        make()


def test_server_state_keeps_the_old_positional_momentum():
    m = torch.ones(3)
    old = ServerState(2, {}, {}, m, None)
    assert old.optimizer_state == {"momentum": m} and old.momentum is m
    assert ServerState(0, {}, {}, None).optimizer_state == {} and ServerState(0, {}).momentum is None


def test_flags_build_the_optimizer_and_refuse_what_the_kind_lacks():
    from secagg.cli.compose import FlagError, config_from_args
    from secagg.cli.options import _build_parser

    parser = _build_parser()

    def fedavg(*argv):
        return config_from_args(parser.parse_args(["train", *argv])).fedavg

    adam = fedavg("--server-optimizer", "adam", "--server-lr", "0.01", "--server-beta2", "0.999",
                  "--server-tau", "0.01")
    assert adam.server_optimizer == ServerAdam(lr=0.01, beta2=0.999, tau=0.01)
    assert (adam.server_lr, adam.server_momentum) == (1.0, 0.0)
    assert fedavg("--server-optimizer", "yogi").server_optimizer == ServerYogi()  # the kind's defaults
    # sgd is written as the shorthands: the same configuration as without --server-optimizer
    assert fedavg("--server-optimizer", "sgd", "--server-lr", "0.5", "--server-momentum", "0.9") == \
        fedavg("--server-lr", "0.5", "--server-momentum", "0.9")
    for argv, message in [
        (("--server-optimizer", "adagrad", "--server-beta2", "0.9"),
         "--server-beta2: not a parameter of --server-optimizer adagrad"),
        (("--server-optimizer", "adam", "--server-momentum", "0.9"),
         "--server-momentum: not a parameter of --server-optimizer adam"),
        (("--server-beta1", "0.5",), "--server-beta1: not a parameter of --server-optimizer sgd"),
        (("--server-optimizer", "yogi", "--server-tau", "0"), "--server-tau: must be > 0.0"),
        (("--server-lr", "-1"), "--server-lr: must be > 0.0"),
    ]:
        with pytest.raises(FlagError, match=message):
            fedavg(*argv)


def test_flags_change_a_config_files_optimizer(tmp_path):
    from secagg.cli.compose import config_from_args
    from secagg.cli.options import _build_parser

    path = tmp_path / "config.json"
    path.write_text(ExperimentConfig(fedavg=FedAvgConfig(server_optimizer=ServerYogi(tau=0.1))).to_json())
    args = _build_parser().parse_args(["train", "--config", str(path), "--server-lr", "0.003"])
    assert config_from_args(args).fedavg.server_optimizer == ServerYogi(lr=0.003, tau=0.1)


# -- state across rounds: checkpoint/resume and the Flower strategy --------------------------------


def _quick(rounds: int, optimizer: ServerOptimizer | None = None, **fedavg) -> ExperimentConfig:
    return ExperimentConfig(
        task=TaskConfig(num_clients=4, partition=PartitionConfig(kind="dirichlet", alpha=0.5)),
        fedavg=FedAvgConfig(rounds=rounds, fraction=0.5, client=ClientConfig(epochs=1, batch_size=32),
                            server_optimizer=optimizer, **fedavg),
        seed=5)


def _same(a, b) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_adam_state_survives_checkpoint_and_resume(tmp_path):
    opt = ServerAdam(lr=0.01, bias_correction=True)
    straight = run_experiment(_quick(2, opt), tmp_path / "a")
    run_experiment(_quick(1, opt), tmp_path / "b")
    tensors, _ = load_checkpoint(tmp_path / "b" / CHECKPOINT)
    assert {"server/optimizer/m", "server/optimizer/v", "server/optimizer/step"} <= set(tensors)
    resumed = run_experiment(_quick(2, opt), tmp_path / "b", resume=True)
    assert _same(straight.state.model, resumed.state.model)
    assert _same(straight.state.optimizer_state, resumed.state.optimizer_state)
    assert int(resumed.state.optimizer_state["step"]) == 2
    # the state is what the run needs: resuming with another optimizer is refused, naming why
    with pytest.raises(CheckpointError, match="written by a different configuration"):
        run_experiment(_quick(2, ServerAdam(lr=0.01)), tmp_path / "b", resume=True)


def test_a_checkpoint_of_an_older_version_still_resumes(tmp_path):
    """Written before server_optimizer and proximal_mu existed: the config lacks both fields, and the
    momentum buffer is 'server/momentum'."""
    run_experiment(_quick(1, server_momentum=0.5), tmp_path)
    path = tmp_path / CHECKPOINT
    tensors, meta = load_checkpoint(path)
    assert set(k for k in tensors if k.startswith("server/")) == {"server/momentum", "server/participations"}
    del meta["config"]["fedavg"]["server_optimizer"], meta["config"]["fedavg"]["client"]["proximal_mu"]
    save_checkpoint(path, tensors, meta)
    resumed = run_experiment(_quick(2, server_momentum=0.5), tmp_path, resume=True)
    straight = run_experiment(_quick(2, server_momentum=0.5))
    assert _same(straight.state.model, resumed.state.model)
    # a state that does not fit the optimizer is refused
    tensors["server/momentum"] = torch.zeros(3)
    save_checkpoint(path, tensors, meta)
    with pytest.raises(CheckpointError, match=r"inconsistent server state for round 1: .*'momentum'"):
        run_experiment(_quick(2, server_momentum=0.5), tmp_path, resume=True)


class _Grid:
    """An in-process Flower grid of plain clients (no mod): each trains by adding its fixed delta."""

    def __init__(self, deltas: dict[int, dict[str, np.ndarray]]) -> None:
        self.deltas = deltas

    def get_node_ids(self):
        return sorted(self.deltas)

    def send_and_receive(self, messages, timeout=None):
        from flwr.app import Array, ArrayRecord, Message, MetricRecord, RecordDict

        replies = []
        for m in messages:
            node = m.metadata.dst_node_id
            arrays = m.content.get("arrays")
            if arrays is None:  # secagg's hello: a plain client does not answer it
                replies.append(Message(RecordDict(), reply_to=m))
                continue
            trained = {k: Array(v.numpy() + self.deltas[node][k]) for k, v in arrays.items()}
            replies.append(Message(RecordDict({"arrays": ArrayRecord(trained),
                                               "metrics": MetricRecord({"num-examples": node})}), reply_to=m))
        return replies


@pytest.mark.parametrize("optimizer", [ServerYogi(lr=0.1, tau=0.01), ServerSGD(lr=0.5, momentum=0.9)])
def test_the_flower_strategy_carries_the_optimizer_state_across_rounds(monkeypatch, optimizer):
    from flwr.app import Array, ArrayRecord, ConfigRecord
    from flwr.supercore.task_identity import TaskIdentity

    from secagg.integrations.flower import SecAggStrategy

    for name in ("_run_id", "_node_id", "_task_id"):  # what a ServerApp process has set
        monkeypatch.setattr(TaskIdentity, name, 1)
    kwargs = ({"server_lr": 0.5, "server_momentum": 0.9} if isinstance(optimizer, ServerSGD)
              else {"server_optimizer": optimizer})
    strategy = SecAggStrategy(Mean(), fraction_evaluate=0.0, min_available_nodes=3, **kwargs)
    assert strategy.server_optimizer == optimizer
    rng = np.random.default_rng(0)
    init = {"w": rng.normal(size=(2, 3)).astype(np.float32), "b": np.zeros(3, np.float32)}
    deltas = {n: {k: (0.1 * rng.normal(size=v.shape)).astype(np.float32) for k, v in init.items()}
              for n in (11, 12, 13)}
    grid, arrays = _Grid(deltas), ArrayRecord({k: Array(v) for k, v in init.items()})
    x = torch.from_numpy(np.concatenate([init["w"].ravel(), init["b"]]))
    state = optimizer.init_state(9)
    for r in (1, 2, 3):
        replies = grid.send_and_receive(list(strategy.configure_train(r, arrays, ConfigRecord(), grid)))
        arrays, _ = strategy.aggregate_train(r, replies)
        update = strategy.history[-1].update
        expected = sum(n * np.concatenate([deltas[n]["w"].ravel(), deltas[n]["b"]]) for n in deltas) / 36
        np.testing.assert_allclose(update.numpy(), expected, atol=1e-6)
        x, state = optimizer.step(x, update, state)  # one optimizer, stepped by hand
        got = np.concatenate([arrays["w"].numpy().ravel(), arrays["b"].numpy()])
        np.testing.assert_array_equal(got, x.numpy())
    assert all(torch.equal(strategy.optimizer_state[k], state[k]) for k in state)
    if isinstance(optimizer, ServerSGD):
        assert torch.equal(strategy.momentum, state["momentum"])
    with pytest.raises(ConfigError, match=r"server_lr: 0\.5 disagrees with server_optimizer\.lr"):
        SecAggStrategy(Mean(), server_lr=0.5, server_optimizer=ServerAdam())


# -- a real run through secure aggregation --------------------------------------------------------


def _digits(aggregator) -> ExperimentConfig:
    return ExperimentConfig(
        task=TaskConfig(num_clients=5, partition=PartitionConfig(kind="dirichlet", alpha=0.3)),
        fedavg=FedAvgConfig(rounds=3, fraction=1.0, aggregator=aggregator,
                            server_optimizer=ServerAdam(lr=0.01),
                            client=ClientConfig(epochs=1, batch_size=32, proximal_mu=0.1)),
        seed=2)


def test_fedadam_and_fedprox_on_non_iid_digits_through_secure_aggregation_match_the_plain_mean():
    """What crosses the trust boundary is a sum: FedAdam reads only the aggregate and FedProx changes
    only local training, so a secure sum gives the plain mean's model to the quantization error
    (value range 1 in a 32-bit ring: about 1e-9 per coordinate, amplified by at most (1 - beta1) / tau
    per round through Adam's normalization)."""
    plain = run_experiment(_digits(Mean()))
    secure = run_experiment(_digits(SecureSum(value_range=1.0)))
    for name, w in plain.state.model.items():
        torch.testing.assert_close(secure.state.model[name], w, atol=1e-4, rtol=0)
    assert all(row["agg/survivors"] == 5 for row in secure.history)
    initial = plain.fedavg.model.state_dict()
    moved = max(float((plain.state.model[k] - v).abs().max()) for k, v in initial.items())
    assert moved > 1e-2, "the model trained: the agreement is not trivial"


class _SlowStartGrid(_Grid):
    """Nodes 12 and 13 miss the first hello (their app is still loading), then answer."""

    def __init__(self, deltas: dict[int, dict[str, np.ndarray]]) -> None:
        super().__init__(deltas)
        self.hellos: list[list[int]] = []

    def send_and_receive(self, messages, timeout=None):
        replies = super().send_and_receive(messages, timeout)
        if messages and messages[0].content.get("arrays") is None:
            self.hellos.append([int(m.metadata.dst_node_id) for m in messages])
            if len(self.hellos) == 1:
                return [r for r in replies if int(r.metadata.src_node_id) == 11]
        return replies


def test_a_node_that_misses_the_first_hello_is_asked_again_and_joins_round_one(monkeypatch):
    # under load a node's first message can outlast the stage timeout: round 1 must not go without it
    from flwr.app import Array, ArrayRecord, ConfigRecord
    from flwr.supercore.task_identity import TaskIdentity

    from secagg.integrations.flower import SecAggStrategy

    for name in ("_run_id", "_node_id", "_task_id"):
        monkeypatch.setattr(TaskIdentity, name, 1)
    strategy = SecAggStrategy(Mean(), fraction_evaluate=0.0, min_available_nodes=3)
    init = {"w": np.zeros((2, 3), np.float32)}
    grid = _SlowStartGrid({n: {"w": np.full((2, 3), 0.1 * n, np.float32)} for n in (11, 12, 13)})
    sent = list(strategy.configure_train(1, ArrayRecord({k: Array(v) for k, v in init.items()}),
                                         ConfigRecord(), grid))
    assert grid.hellos == [[11, 12, 13], [12, 13]]
    assert sorted(strategy.roster.values()) == [11, 12, 13]
    assert sorted(int(m.metadata.dst_node_id) for m in sent) == [11, 12, 13]
