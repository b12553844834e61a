"""``benchmarks/flower_secaggplus.py`` (ours vs Flower's own SecAgg+, both through Flower's simulation
runtime) and the example's ``flower-secaggplus`` variant, at toy sizes.

Each Flower simulation pays Ray's start-up (10-20 s on 2 cores), so the test runs three: our side for
two rounds (none dropped in round 1, one client dropped at the masked-input stage in round 2: its mask
key is rebuilt from its neighbours' shares), Flower's side with the same client dropped, and one round
of the example. The released means are checked inside the benchmark's functions (they raise otherwise)
and their errors again here.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("flwr")
pytest.importorskip("ray")

N, D = 6, 1000


def _sane(f: dict, n: int, dropped: int) -> None:
    assert f["n"] == n and f["d"] == D and f["dropped"] == dropped
    assert f["clients_finished"] == n - dropped
    assert f["client_s_max"] >= f["client_s"] > 0 and f["client_secagg_s"] > 0 and f["client_cpu_s"] > 0
    assert f["unmask_s"] >= f["unmask_wait_s"] > 0 and f["round_s"] >= f["unmask_s"]
    assert f["bytes_per_client"] == pytest.approx(f["bytes_down_per_client"] + f["bytes_up_per_client"])
    assert f["bytes_per_client"] > f["bytes_model_down"] >= 4 * D  # the model went down, in float32
    assert f["bytes_secagg_per_client"] == pytest.approx(f["bytes_per_client"] - f["bytes_model_down"])
    assert 0 <= f["max_abs_err"] < 1e-4  # the released mean is the survivors' (quantization error only)


def test_both_sides_at_a_toy_size_and_the_example_variant(load_benchmark, tmp_path):
    bench = load_benchmark("flower_secaggplus")
    params = bench.parameters(N)  # raises unless ours and Flower's (k, t) agree
    assert params["flower_num_shares"] == params["k"] + 1 and 2 <= params["t"] <= params["k"] + 1
    drop = 1 / N  # one client drops at the masked-input stage
    assert len(bench.dropped_partitions(N, drop, 0)) == 1

    ours = bench.run_ours_through_flower(N, D, drop, 0, rounds=2, drop_rounds=(2,))
    _sane(ours, N, 1)
    assert ours["round"] == 2
    assert (ours["k"], ours["threshold"]) == (params["k"], params["t"]) and ours["own_share_counts"]
    assert ours["unmask_dead"] == 1 and set(ours["client_s_by_stage"]) == set(bench.STAGES)
    # our masked input is d + 1 32-bit words (the update and its weight), kept in the node's Context
    # between messages until it is sent
    assert ours["bytes_by_stage"]["masked_input"]["up"] > 4 * (D + 1)
    assert ours["context_state_bytes"] > 4 * (D + 1)

    flower = bench.run_flower_secaggplus(N, D, drop, 0)
    _sane(flower, N, 1)
    assert (flower["num_shares"], flower["threshold"]) == (params["flower_num_shares"], params["t"])
    assert flower["unmask_dead"] == 1
    assert flower["bytes_by_stage"]["collect_masked_vectors"]["up"] > 8 * D  # int64 on Flower's side

    (none,) = ours["earlier_rounds"]  # round 1: nobody dropped
    _sane(none, N, 0)
    assert none["round"] == 1 and none["unmask_dead"] == 0
    # the server rebuilt and regenerated masks in both rounds (in round 2 also the dropped client's)
    assert ours["unmask_shamir_s"] > 0 and ours["unmask_prg_s"] > 0 and none["unmask_prg_s"] > 0

    # the comparison's table and plot from these figures
    row = bench.side_by_side(ours, flower, params)
    assert row["ratio_flower_over_ours"]["unmask_s"] == flower["unmask_s"] / ours["unmask_s"]
    text = bench.table([row])
    assert text.count("\n") == 2 and f"| {N} | 10^3 | 17% |" in text
    bench.plot([row], str(tmp_path / "plot.png"))
    assert (tmp_path / "plot.png").stat().st_size > 0

    # the example's third variant: Flower's own SecAgg+ on the digits task, one round, 4 clients
    run = _load_example_runner()
    record = run.simulate("flower-secaggplus", num_clients=4, rounds=1, epochs=1)
    assert record["variant"] == "flower-secaggplus"
    assert set(record["accuracy"]) == {"0", "1"}
    assert 0.0 <= record["accuracy"]["0"] <= 1.0 and 0.0 < record["accuracy"]["1"] <= 1.0
    (only,) = record["rounds"]
    assert only == {"round": 1, "results": 4, "failures": 0, "accuracy": record["accuracy"]["1"]}
    # Flower's SecAgg+ released the example-weighted mean of the clients' trained models (the same local
    # training as our variants), up to its quantization (2^22 levels over [-8, 8])
    from flower_digits.task import experiment, task, train

    config = experiment("flower-secaggplus", num_clients=4, rounds=1, epochs=1)
    initial = task(4, 0).model.state_dict()
    trained = [train(config, p, 1, {k: v.clone() for k, v in initial.items()}) for p in range(4)]
    total = sum(examples for _, examples, _ in trained)
    for name, released in record["weights"].items():
        want = sum(w[name].double().flatten().numpy() * examples for w, examples, _ in trained) / total
        assert np.allclose(np.asarray(released), want, atol=1e-4), name


def _load_example_runner():
    """``examples/flower_digits/run.py`` as a module (it puts the example's package on sys.path)."""
    path = Path(__file__).resolve().parents[1] / "examples" / "flower_digits" / "run.py"
    spec = importlib.util.spec_from_file_location("flower_digits_run", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
