"""secagg's strategy in plain mode inside a real Flower app, on Flower's simulation engine."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
from flower_sim import DIM, client_update, examples, make_client_app, make_server_app, simulate

from secagg.aggregation import CenteredClipping, UpdateBatch
from secagg.experiment import run_experiment
from secagg.integrations.flower import SecAggStrategy

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "flower_digits"


def test_the_example_on_flowers_simulation_equals_secaggs_own_fedavg_driver():
    """Same seed, same rule, same sampled clients (half of them per round), same local training: the
    final weights agree to float32 rounding. (Not bit for bit: a Flower client ships its trained
    weights, from which the server takes the update; secagg's driver keeps the update itself, so each
    round may differ in the last bit of a coordinate. Measured: 6e-8 after 3 rounds.)"""
    sys.path.insert(0, str(EXAMPLE))
    try:
        from flower_digits.task import experiment
        from run import simulate as simulate_example
    finally:
        sys.path.remove(str(EXAMPLE))
    record = simulate_example("robust", num_clients=8, rounds=3, epochs=1, fraction=0.5)
    ours = run_experiment(experiment("robust", num_clients=8, rounds=3, epochs=1, fraction=0.5))
    fedavg = ours.fedavg
    for r, row in enumerate(record["rounds"], start=1):
        assert row["sampled"] == fedavg.sample_clients(r)  # the driver's sample, by client id
        assert row["survivors"] == row["sampled"] and row["aborted"] is None
    for name, tensor in ours.state.model.items():
        got = np.asarray(record["weights"][name])
        assert np.abs(got - tensor.double().flatten().numpy()).max() <= 1e-6, name
    for h in ours.history:
        assert abs(record["accuracy"][str(h["round"])] - h["accuracy"]) <= 1 / 360 + 1e-12


def test_plain_flower_clients_bad_replies_are_rejected_and_counted_and_the_state_carries_over(tmp_path):
    """Plain Flower clients (no secagg mod): NaN arrays, a wrong shape, a pickled object array
    claiming to be float32, a reply without its example count: each rejected and counted every
    round, the round aggregated over the rest with centered clipping, whose centre carries over."""
    rule = CenteredClipping(tau=0.05)
    bad = {1: "nan", 2: "shape", 3: "pickle", 4: "no-count"}
    strategy = SecAggStrategy(rule, fraction_evaluate=0.0, min_available_nodes=8)
    result: dict = {}
    rounds = 3
    simulate(make_server_app(strategy, rounds, result),
             make_client_app(rule, tmp_path, {}, bad=bad, mod=False), 8)
    good = [p for p in range(8) if p not in bad]
    state, total = rule.init_state(DIM), torch.zeros(DIM, dtype=torch.float64)
    for r, h in enumerate(result["history"], start=1):
        assert h.aborted is None and len(h.rejected) == len(bad) and len(h.survivors) == len(good)
        reasons = " | ".join(h.rejected.values())
        for needle in ("NaN", "expected float32 (7,)", "not a valid array", "num-examples"):
            assert needle in reasons, (needle, reasons)
        batch = UpdateBatch(torch.from_numpy(np.stack([client_update(p, r) for p in good])),
                            torch.tensor([float(examples(p)) for p in good], dtype=torch.float64),
                            tuple(good), r, 0)
        out = rule.aggregate(batch, state)
        state, total = out.state, total + out.update.double()
        assert np.allclose(h.update.double().numpy(), out.update.double().numpy(), atol=1e-6)
        metrics = strategy.history[r - 1]
        assert metrics.round == r
    assert torch.allclose(strategy.state["center"].double(), state["center"].double(), atol=1e-6)
    assert np.allclose(result["w"], total.numpy(), atol=1e-5)
