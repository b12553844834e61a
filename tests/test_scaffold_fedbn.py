"""SCAFFOLD (control variates summed like the update) and FedBN (BatchNorm stays on the clients).

SCAFFOLD is checked against the paper's Algorithm 1 (option II) written out in float64 numpy on
softmax regression, independently of the library; its invariant (the server's control is the mean of
every client's) under partial participation; its sensitivity under DP from neighbouring batches.
FedBN: no BatchNorm entry is in what a client sends, the server's never changes, each client goes
on from its own, and evaluation is per site. Both resume from a checkpoint bit for bit.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import make_dataset
from hypothesis import given, settings
from hypothesis import strategies as st

from dp import DPFedAvg, DPSGDTrainer
from secagg.aggregation import Mean, SecureSum
from secagg.errors import ConfigError
from secagg.experiment import ExperimentConfig, run_experiment
from secagg.fedavg import ClientConfig, FedAvg, FedAvgConfig
from secagg.fedavg.client import client_update
from secagg.fedavg.server import evaluate, evaluate_sites
from secagg.layout import ParamLayout, local_entries
from secagg.models import MLP, Logistic, build_model
from secagg.task import TaskConfig

SHAPE, K = (1, 3, 3), 3


def _softmax_grad(w: np.ndarray, b: np.ndarray, x: np.ndarray, y: np.ndarray,
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Gradient of the mean cross-entropy of logits ``x w^T + b`` (float64)."""
    z = x @ w.T + b
    p = np.exp(z - z.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    p[np.arange(len(y)), y] -= 1.0
    return p.T @ x / len(y), p.mean(axis=0)


def _reference_scaffold(w, b, clients, samples, *, lr, epochs, server_lr):
    """Karimireddy et al. 2020, Algorithm 1, option II, full-batch local steps, uniform means:
    returns the global (w, b), the server control (cw, cb) and every client's, in float64."""
    n = len(clients)
    c = [np.zeros_like(w), np.zeros_like(b)]
    ci = {i: [np.zeros_like(w), np.zeros_like(b)] for i in range(n)}
    x = [w.astype(np.float64), b.astype(np.float64)]
    for sampled in samples:
        dys, dcs = [], []
        for i in sampled:
            y = [x[0].copy(), x[1].copy()]
            for _ in range(epochs):
                g = _softmax_grad(y[0], y[1], *clients[i])
                y = [y[j] - lr * (g[j] - ci[i][j] + c[j]) for j in range(2)]
            new = [ci[i][j] - c[j] + (x[j] - y[j]) / (epochs * lr) for j in range(2)]
            dys.append([y[j] - x[j] for j in range(2)])
            dcs.append([new[j] - ci[i][j] for j in range(2)])
            ci[i] = new
        x = [x[j] + server_lr * np.mean([d[j] for d in dys], axis=0) for j in range(2)]
        c = [c[j] + len(sampled) / n * np.mean([d[j] for d in dcs], axis=0) for j in range(2)]
    return x, c, ci


@settings(max_examples=12, deadline=None)
@given(seed=st.integers(0, 2**16), fraction=st.sampled_from([0.5, 1.0]), lr=st.sampled_from([0.1, 0.5]),
       epochs=st.integers(1, 3), server_lr=st.sampled_from([0.5, 1.0]))
def test_scaffold_follows_the_papers_algorithm(seed, fraction, lr, epochs, server_lr):
    data = make_dataset(4, 10, K, SHAPE, seed=seed % 7)
    torch.manual_seed(seed)
    model = Logistic(SHAPE, K)
    config = FedAvgConfig(rounds=3, fraction=fraction, aggregator=Mean(weighted=False), scaffold=True,
                          server_lr=server_lr, client=ClientConfig(epochs=epochs, batch_size=0, lr=lr))
    fedavg = FedAvg(config, model, data, seed=seed)
    state = fedavg.initial_state()
    samples = []
    for _ in range(3):
        samples.append(fedavg.sample_clients(state.round + 1))
        state = fedavg.run_round(state).state
    clients = [(data.client(i).x.reshape(10, -1).double().numpy(), data.client(i).y.numpy())
               for i in range(4)]
    w0 = model.state_dict()["net.1.weight"].double().numpy()
    b0 = model.state_dict()["net.1.bias"].double().numpy()
    x, c, ci = _reference_scaffold(w0, b0, clients, samples, lr=lr, epochs=epochs, server_lr=server_lr)
    np.testing.assert_allclose(state.model["net.1.weight"].double().numpy(), x[0], atol=2e-5)
    np.testing.assert_allclose(state.model["net.1.bias"].double().numpy(), x[1], atol=2e-5)
    # the library keeps controls in units of one local step: lr * c
    np.testing.assert_allclose(state.control["control/net.1.weight"].double().numpy(), lr * c[0], atol=2e-5)
    for i, kept in state.client_states.items():
        np.testing.assert_allclose(kept["control/net.1.weight"].double().numpy(), lr * ci[i][0], atol=2e-5)
    assert set(state.client_states) == set().union(*map(set, samples))


@settings(max_examples=8, deadline=None)
@given(seed=st.integers(0, 2**16), fraction=st.sampled_from([0.25, 0.5, 0.75]))
def test_the_server_control_is_the_mean_of_every_clients_control(seed, fraction):
    """c = (1/N) sum_i c_i over all N clients (those never sampled hold 0), whatever the sample."""
    data = make_dataset(8, 6, K, SHAPE, seed=seed % 5)
    torch.manual_seed(seed)
    config = FedAvgConfig(rounds=4, fraction=fraction, aggregator=Mean(weighted=False), scaffold=True,
                          client=ClientConfig(epochs=2, batch_size=4, lr=0.2, momentum=0.5))
    fedavg = FedAvg(config, MLP(SHAPE, K, hidden=5), data, seed=seed)
    state = fedavg.initial_state()
    for _ in range(4):
        state = fedavg.run_round(state).state
        for name, c in state.control.items():
            mean = sum(s[name].double() for s in state.client_states.values()) / data.num_clients
            torch.testing.assert_close(c.double(), mean, atol=1e-6, rtol=0)


def test_scaffolds_first_round_is_fedavgs_bit_for_bit_and_its_update_is_wider():
    data = make_dataset(4, 10, K, SHAPE)
    torch.manual_seed(0)
    model = MLP(SHAPE, K, hidden=6)
    plain = FedAvg(FedAvgConfig(rounds=1), model, data, seed=3)
    scaffold = FedAvg(FedAvgConfig(rounds=1, scaffold=True), model, data, seed=3)
    a = plain.run_round(plain.initial_state()).state
    b = scaffold.run_round(scaffold.initial_state()).state
    assert all(torch.equal(a.model[k], b.model[k]) for k in a.model)  # c = c_i = 0: plain local SGD
    p = plain.layout.num_parameters
    assert scaffold.update_layout.dim == plain.layout.dim + p
    assert scaffold.update_layout.control_names == tuple(f"control/{n}" for n, _ in model.named_parameters())
    assert b.control and all(float(v.abs().sum()) > 0 for v in b.control.values())


def test_scaffold_through_a_secure_sum_matches_the_plain_mean_and_helps_on_label_skew():
    from secagg.data.partition import PartitionConfig

    task = TaskConfig(num_clients=10, partition=PartitionConfig(kind="dirichlet", alpha=0.3))
    runs = {}
    for name, kw in {"fedavg": {}, "scaffold": {"scaffold": True},
                     "secure": {"scaffold": True, "aggregator": SecureSum(value_range=1.0)}}.items():
        runs[name] = run_experiment(ExperimentConfig(task=task, fedavg=FedAvgConfig(rounds=4, **kw), seed=0))
    plain, secure = runs["scaffold"].state, runs["secure"].state
    for k in plain.model:
        torch.testing.assert_close(secure.model[k], plain.model[k], atol=1e-4, rtol=0)
    for k in plain.control:
        torch.testing.assert_close(secure.control[k], plain.control[k], atol=1e-4, rtol=0)
    # client drift on Dirichlet(0.3): the corrected steps reach a better model in 4 rounds
    assert runs["scaffold"].history[-1]["accuracy"] > runs["fedavg"].history[-1]["accuracy"]


def test_dp_bounds_a_scaffold_clients_whole_vector_control_half_included():
    """Neighbouring batches (one client removed), the same seeded noise: the released means differ by
    the removed client's clipped vector over the public denominator, of norm <= C, though its control
    half alone exceeds C before clipping."""
    data = make_dataset(6, 10, K, SHAPE)
    torch.manual_seed(1)
    clip = 0.05
    dp = DPFedAvg(clip=clip, noise_multiplier=1.0, expected_clients=6.0, sample_rate=1.0, sampling="none",
                  simulation_seed=7)
    fedavg = FedAvg(FedAvgConfig(rounds=3, aggregator=dp, scaffold=True,
                                 client=ClientConfig(epochs=2, batch_size=5, lr=0.5)),
                    MLP(SHAPE, K, hidden=6), data, seed=2)
    state = fedavg.run_round(fedavg.initial_state()).state
    got = fedavg.source.collect(fedavg, state, 2, fedavg.sample_clients(2))
    batch = got.batch
    m = fedavg.layout.model_dim
    assert batch.dim == fedavg.update_layout.dim
    assert float(torch.linalg.vector_norm(batch.updates[-1, m:])) > clip
    full = dp.aggregate(batch, state.aggregator_state).update
    fewer = batch.replace(updates=batch.updates[:-1], weights=batch.weights[:-1],
                          client_ids=batch.client_ids[:-1])
    less = dp.aggregate(fewer, state.aggregator_state).update
    gap = float(torch.linalg.vector_norm((full - less).double())) * 6.0
    assert 0 < gap <= clip * (1 + 1e-5)


def test_fedbn_keeps_every_batchnorm_entry_on_its_client():
    data = make_dataset(4, 11, K, SHAPE)  # 11 % 5 == 1: a last batch of one joins the one before
    torch.manual_seed(0)
    model = build_model("mlp-bn", SHAPE, K)
    local = local_entries(model, "local")
    assert local == ("net.2.weight", "net.2.bias", "net.2.running_mean", "net.2.running_var",
                     "net.2.num_batches_tracked")
    config = FedAvgConfig(rounds=3, fraction=0.5, norm_layers="local",
                          client=ClientConfig(epochs=1, batch_size=5))
    fedavg = FedAvg(config, model, data, seed=4)
    assert fedavg.layout.local == local and not set(fedavg.layout.names) & set(local)
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    state = fedavg.initial_state()
    for _ in range(3):
        before = state
        sampled = fedavg.sample_clients(state.round + 1)
        got = fedavg.source.collect(fedavg, state, state.round + 1, sampled)
        assert got.batch.dim == fedavg.layout.dim  # what crosses holds no BatchNorm coordinate
        state = fedavg.run_round(state).state
        for name in local:  # the server's BatchNorm never moves
            assert torch.equal(state.model[name], initial[name])
        for c in range(data.num_clients):  # a client's own BatchNorm changes only when it trains
            if c not in sampled:
                assert (c in state.client_states) == (c in before.client_states)
                if c in state.client_states:
                    assert all(torch.equal(state.client_states[c][k], before.client_states[c][k])
                               for k in local)
            else:
                assert not torch.equal(state.client_states[c]["net.2.running_mean"],
                                       initial["net.2.running_mean"])
    # a client goes on from its own BatchNorm: its next update is client_update from what it kept
    c = next(iter(state.client_states))
    r = state.round + 1
    mine = client_update(fedavg.model, state.model, data.client(c), config.client, fedavg.update_layout,
                         seed=fedavg_seed(fedavg, r, c), client_id=c, local_state=state.client_states[c])
    got = fedavg.source.collect(fedavg, state, r, [c])
    assert torch.equal(got.batch.updates[0], mine.delta)


def fedavg_seed(fedavg: FedAvg, r: int, c: int) -> int:
    from secagg.seeding import derive_seed

    return derive_seed(fedavg.seed, "client", r, c)


def test_fedbn_evaluates_each_site_with_its_own_batchnorm():
    data = make_dataset(3, 12, K, SHAPE)
    torch.manual_seed(0)
    model = build_model("mlp-bn", SHAPE, K)
    fedavg = FedAvg(FedAvgConfig(rounds=2, norm_layers="local", client=ClientConfig(epochs=2, batch_size=4)),
                    model, data, seed=0)
    state = fedavg.run_round(fedavg.run_round(fedavg.initial_state()).state).state
    x, y = data.test_x, data.test_y
    own = [evaluate(model, {**state.model, **state.client_states[i]}, x, y) for i in range(3)]
    whole = evaluate_sites(model, state.model, state.client_states, fedavg.layout.local, x, y, 3)
    assert whole["accuracy"] == pytest.approx(np.mean([m["accuracy"] for m in own]))
    assert whole["site_accuracy_min"] == min(m["accuracy"] for m in own)
    owner = np.arange(len(y)) % 3
    split = evaluate_sites(model, state.model, state.client_states, fedavg.layout.local, x, y, 3, owner)
    correct = sum(evaluate(model, {**state.model, **state.client_states[i]}, x[owner == i], y[owner == i])
                  ["accuracy"] * int((owner == i).sum()) for i in range(3))
    assert split["accuracy"] == pytest.approx(correct / len(y))


def test_scaffold_and_fedbn_resume_from_a_checkpoint_bit_for_bit(tmp_path):
    task = TaskConfig(num_clients=5, model="mlp-bn")
    fedavg = FedAvgConfig(rounds=4, fraction=0.6, scaffold=True, norm_layers="local",
                          client=ClientConfig(epochs=1))
    whole = run_experiment(ExperimentConfig(task=task, fedavg=fedavg, seed=3))
    half = ExperimentConfig(task=task, fedavg=FedAvgConfig(**{**fedavg.__dict__, "rounds": 2}), seed=3)
    run_experiment(half, tmp_path)
    resumed = run_experiment(ExperimentConfig(task=task, fedavg=fedavg, seed=3), tmp_path, resume=True)
    a, b = whole.state, resumed.state
    assert all(torch.equal(a.model[k], b.model[k]) for k in a.model)
    assert all(torch.equal(a.control[k], b.control[k]) for k in a.control)
    assert set(a.client_states) == set(b.client_states)
    for c in a.client_states:
        assert all(torch.equal(a.client_states[c][k], b.client_states[c][k]) for k in a.client_states[c])
    assert [h["accuracy"] for h in whole.history] == [h["accuracy"] for h in resumed.history]


def test_configurations_that_cannot_hold_are_refused_by_name():
    with pytest.raises(ConfigError, match=r"norm_layers: 'local' .*has no BatchNorm"):
        FedAvg(FedAvgConfig(norm_layers="local"), MLP(SHAPE, K), make_dataset(2, 4, K, SHAPE))
    with pytest.raises(ConfigError, match="norm_layers: must be one of"):
        FedAvgConfig(norm_layers="personal")
    with pytest.raises(ConfigError, match="scaffold: expected true or false"):
        FedAvgConfig(scaffold=1)
    with pytest.raises(ConfigError, match=r"trainer: scaffold .*'dpsgd' trainer does not take"):
        FedAvgConfig(scaffold=True, trainer=DPSGDTrainer(noise_multiplier=1.0, max_grad_norm=1.0))
    from secagg.gan import GANTrainer

    with pytest.raises(ConfigError, match=r"trainer: norm_layers='local' .*'gan' trainer"):
        FedAvgConfig(norm_layers="local", trainer=GANTrainer())


def test_layouts_with_controls_and_local_entries_round_trip():
    model = build_model("mlp-bn", SHAPE, K)
    layout = ParamLayout.from_module(model, norm_layers="local").with_controls()
    again = ParamLayout.from_dict(layout.to_dict())
    assert again == layout and again.with_controls() == layout
    assert again.model.dim == layout.model_dim == layout.dim - layout.num_parameters
    assert layout.model.local == layout.local


def test_the_flags_build_scaffold_and_fedbn(tmp_path):
    from secagg.cli import main

    assert main(["train", "--rounds", "2", "--clients", "4", "--scaffold", "--norm-layers", "local",
                 "--model", "mlp-bn", "--secure", "--out", str(tmp_path)]) == 0
    import json

    results = json.loads((tmp_path / "results.json").read_text())
    assert results["config"]["fedavg"]["scaffold"] is True
    assert results["config"]["fedavg"]["norm_layers"] == "local"
    assert "site_accuracy_min" in results["rounds"][-1]


def test_a_deployment_client_refuses_a_state_file_of_another_client_or_run(tmp_path):
    from secagg.checkpoint import save_checkpoint
    from secagg.crypto.keys import SigningKey
    from secagg.transport.node import NetworkClient

    layout = FedAvgConfig(scaffold=True).update_layout(MLP(SHAPE, K, hidden=4))
    path = tmp_path / "state.safetensors"
    client = NetworkClient("localhost:1", 2, SigningKey.generate(), state_file=path)
    client._layout = layout
    assert client._load_state() == {}  # no file yet: the first round starts from nothing
    kept = {name: torch.full(s.shape, 0.5) for name, s in
            ((s.name, s) for s in layout.specs if s.kind == "control")}
    save_checkpoint(path, kept, {"client": 2, "round": 1, "layout": layout.to_dict()})
    assert all(torch.equal(v, kept[k]) for k, v in client._load_state().items())
    save_checkpoint(path, kept, {"client": 3, "round": 1, "layout": layout.to_dict()})
    with pytest.raises(ConfigError, match=r"state_file: .* written by client 3"):
        client._load_state()
    other = FedAvgConfig().update_layout(MLP(SHAPE, K, hidden=4))
    save_checkpoint(path, kept, {"client": 2, "round": 1, "layout": other.to_dict()})
    with pytest.raises(ConfigError, match="for another model or algorithm"):
        client._load_state()


@pytest.mark.slow
def test_scaffold_and_fedbn_over_the_network_keep_each_clients_state_on_that_client(deployment):
    """Real processes, secure aggregation: the server's checkpoint holds no client's state and its
    BatchNorm never moves; each client's state file holds its BatchNorm and c_i; the server's control
    is the example-weighted mean of the clients' (every client in every round), and the run equals
    the simulation of the same configuration."""
    from secagg.checkpoint import load_checkpoint
    from secagg.experiment import CHECKPOINT
    from secagg.task import build_task

    dep = deployment(4)
    dep.serve("--secure", "--scaffold", "--norm-layers", "local", "--model", "mlp-bn", "--local-epochs", "1",
              rounds=3)
    for u in range(4):
        dep.client(u, "--state-file", f"state-{u}.safetensors")
    rounds = dep.wait_server()["rounds"]
    assert [r["round"] for r in rounds] == [1, 2, 3] and not any(r.get("aborted") for r in rounds)
    audit = dep.audited_rounds()
    assert sorted(audit) == [1, 2, 3] and all(a["exact"] for a in audit.values())

    task_config = TaskConfig(num_clients=4, model="mlp-bn")
    config = FedAvgConfig(rounds=3, aggregator=SecureSum(), scaffold=True, norm_layers="local",
                          client=ClientConfig(epochs=1))
    sim = run_experiment(ExperimentConfig(task_config, config))
    task = build_task(task_config, seed=0)
    local = local_entries(task.model, "local")
    controls = config.update_layout(task.model).control_names
    server, _ = load_checkpoint(dep.out / CHECKPOINT)
    assert not any(k.startswith("clients/") for k in server)
    for name in local:
        assert torch.equal(server[f"weights/{name}"], task.model.state_dict()[name])
    for k, v in sim.state.model.items():
        torch.testing.assert_close(server[f"weights/{k}"], v, atol=1e-5, rtol=0)
    states = [load_checkpoint(dep.root / f"state-{u}.safetensors")[0] for u in range(4)]
    sizes = torch.tensor(task.data.client_sizes(), dtype=torch.float64)
    for u, kept in enumerate(states):
        assert set(kept) == set(local) | set(controls)
        for k, v in kept.items():
            torch.testing.assert_close(v, sim.state.client_states[u][k], atol=1e-5, rtol=0)
    for name in controls:
        mean = sum(w * s[name].double() for w, s in zip(sizes, states, strict=True)) / sizes.sum()
        torch.testing.assert_close(server[f"server/{name}"].double(), mean, atol=1e-5, rtol=0)


@pytest.mark.parametrize("rule", ["fltrust", "flame"])
def test_rules_that_read_a_root_update_or_the_global_model_take_the_wider_vector(rule):
    """FLTrust's root update is trained like a client whose own control is the server's (and that has
    no BatchNorm of its own yet); FLAME's global model is the broadcast, controls included."""
    from secagg.aggregation import FLAME, FLTrust

    agg = FLTrust(root_size=20) if rule == "fltrust" else FLAME()
    data = make_dataset(6, 12, K, SHAPE)
    torch.manual_seed(0)
    fedavg = FedAvg(FedAvgConfig(rounds=2, aggregator=agg, scaffold=True, norm_layers="local",
                                 client=ClientConfig(epochs=1, batch_size=4)),
                    build_model("mlp-bn", SHAPE, K), data, seed=0)
    state = fedavg.run_round(fedavg.initial_state()).state
    dim = fedavg.update_layout.dim
    if rule == "fltrust":
        assert fedavg.root_update(state, 2).shape == (dim,)
    else:
        assert fedavg.global_model(state).shape == (dim,)
    state = fedavg.run_round(state).state
    assert state.round == 2 and state.control
