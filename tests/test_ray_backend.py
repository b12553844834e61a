"""The Ray backend: same numbers as the local loop, for FedAvg's clients and for benchmark cells."""

from __future__ import annotations

import csv
import sys
import tomllib
from dataclasses import dataclass

import pytest
import torch

ray = pytest.importorskip("ray")

from test_bench import TINY  # noqa: E402  (the same tiny grid the bench tests use)

from attacks.backdoors import Neurotoxin  # noqa: E402
from attacks.bench import write_reports  # noqa: E402
from attacks.bench.config import parse  # noqa: E402
from attacks.bench.runner import run_grid  # noqa: E402
from attacks.byzantine import ByzantineClients  # noqa: E402
from attacks.data_poisoning import Backdoor  # noqa: E402
from secagg.data.federated import ClientData  # noqa: E402
from secagg.data.partition import PartitionConfig  # noqa: E402
from secagg.errors import ConfigError  # noqa: E402
from secagg.experiment import ExperimentConfig, run_experiment  # noqa: E402
from secagg.fedavg import ClientConfig, FedAvgConfig  # noqa: E402
from secagg.fedavg.adversary import Adversary  # noqa: E402
from secagg.parallel import LocalExecutor, RayExecutor, ray_available  # noqa: E402
from secagg.task import TaskConfig  # noqa: E402


@pytest.fixture(scope="module")
def local_ray():
    """One local Ray for the whole module: starting it takes seconds."""
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, ignore_reinit_error=True)
    yield
    ray.shutdown()


def test_map_keeps_item_order_and_passes_shared_arguments(local_ray):
    # builtins: Ray pickles functions by reference and its workers cannot import this test module
    items = list(range(1, 10))
    with RayExecutor() as executor:
        assert executor.map(pow, items, 3) == [3 ** x for x in items]
        assert sorted(executor.as_completed(divmod, items, 100)) == [(i, divmod(100, x))
                                                                      for i, x in enumerate(items)]
        assert executor.map(pow, [], 3) == []
    with RayExecutor(threads=1) as executor:
        assert executor.map(pow, items, 2) == [2 ** x for x in items]
    assert ray.is_initialized(), "an executor does not shut down a Ray it did not start"
    assert LocalExecutor().map(pow, items, 3) == [3 ** x for x in items]


@dataclass(frozen=True)
class InfiniteData(Adversary, kind="test-infinite-data"):
    """Client 1 trains on infinite inputs: its update is NaN and the server must reject it."""

    def malicious(self, num_clients: int, seed: int) -> frozenset[int]:
        return frozenset({1})

    def poison_data(self, data: ClientData, num_classes: int, seed: int) -> ClientData:
        return ClientData(torch.full_like(data.x, float("inf")), data.y)


# the attackers' own trainer (projected SGD off a mask) travels with their jobs to the workers
NEUROTOXIN = ByzantineClients(0.5, Neurotoxin(ratio=0.2), Backdoor())


def _config(adversary: Adversary | None) -> ExperimentConfig:
    return ExperimentConfig(
        task=TaskConfig(num_clients=4, partition=PartitionConfig(kind="dirichlet", alpha=0.5)),
        fedavg=FedAvgConfig(rounds=2, fraction=1.0, client=ClientConfig(epochs=1, batch_size=16),
                            adversary=adversary),
        seed=3)


def _metrics(history):
    return [{k: v for k, v in row.items() if k != "seconds"} for row in history]


@pytest.mark.parametrize("adversary", [None, InfiniteData(), NEUROTOXIN],
                         ids=["honest", "rejected-client", "neurotoxin-projected-sgd"])
def test_fedavg_on_ray_is_bit_identical_to_the_local_loop(local_ray, adversary):
    local = run_experiment(_config(adversary))
    with RayExecutor() as executor:
        remote = run_experiment(_config(adversary), executor=executor)
    assert _metrics(remote.history) == _metrics(local.history)
    a, b = local.state.model, remote.state.model
    assert a.keys() == b.keys() and all(a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]) for k in a)
    if isinstance(adversary, InfiniteData):
        assert [r["rejected"] for r in remote.history] == [[1], [1]]
        assert [r["clients"] for r in remote.history] == [3, 3]


def _table(path):
    with path.open() as fh:
        return [{k: v for k, v in r.items() if k != "seconds"} for r in csv.DictReader(fh)]


def _summary(path):
    # the last line totals the training time ("N cells, T s of training in total"): it differs
    return [line for line in path.read_text().splitlines() if "s of training in total" not in line]


def test_grid_on_ray_writes_the_same_tables_and_resumes(local_ray, tmp_path):
    config = parse(tomllib.loads(TINY))
    first = run_grid(config, tmp_path / "ray", progress=False, limit=2, backend="ray")
    assert len(first) == 2
    on_ray = run_grid(config, tmp_path / "ray", progress=False, backend="ray")  # resumes the other two
    local = run_grid(config, tmp_path / "local", progress=False, jobs=1)
    assert _metrics(on_ray) == _metrics(local) and len(local) == 4 + 1  # + the centralized baseline
    assert _metrics(on_ray[:2]) == _metrics(first), "finished cells are kept, not rerun"
    paths = {d: write_reports(tmp_path / d, config, rows) for d, rows in (("ray", on_ray), ("local", local))}
    assert _table(paths["ray"]["csv"]) == _table(paths["local"]["csv"])
    assert _summary(paths["ray"]["summary"]) == _summary(paths["local"]["summary"])
    with pytest.raises(ConfigError, match="leave jobs unset"):
        run_grid(config, tmp_path / "x", jobs=2, backend="ray")
    with pytest.raises(ConfigError, match="backend: 'dask' is not one of local, ray"):
        run_grid(config, tmp_path / "x", backend="dask")
    with pytest.raises(ConfigError, match="only used with backend 'ray'"):
        run_grid(config, tmp_path / "x", ray_address="localhost:6379")


def test_a_missing_ray_is_a_config_error_naming_the_extra(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now raises ImportError
    message = r"ray backend: the 'ray' package is not installed; pip install 'secagg\[ray\]'"
    assert not ray_available()
    with pytest.raises(ConfigError, match=message):
        RayExecutor()
    with pytest.raises(ConfigError, match=message):
        run_grid(parse(tomllib.loads(TINY)), tmp_path, progress=False, backend="ray")


def test_combiners_run_as_ray_tasks_and_sum_exactly_the_same(local_ray):
    """Two-level secure aggregation with each combiner's session (its clients included) a Ray task:
    the same survivors and the same exact sum as one after the other in this process."""
    import numpy as np

    from secagg.aggregation import HierarchicalSecureSum, SecureSum

    rng = np.random.default_rng(3)  # test data only
    inputs = {u: rng.integers(0, 2**16, 9, dtype=np.uint64).astype(np.uint32) for u in range(24)}
    agg = HierarchicalSecureSum(combiners=4, secure=SecureSum(bits=16, dropout=0.2))
    local = agg.run(inputs, 9, round_index=2, seed=5)
    with RayExecutor(threads=1) as executor:
        remote = agg.run(inputs, 9, round_index=2, seed=5, executor=executor)
    assert remote.survivors == local.survivors and remote.combiners == local.combiners
    assert np.array_equal(remote.total, local.total)
    want = sum(inputs[u].astype(np.uint64) for u in remote.survivors) % (1 << 16)
    assert np.array_equal(remote.total.astype(np.uint64), want)
    assert set(remote.seconds) >= {f"combiner_{j}" for j in range(4)}
