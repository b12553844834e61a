"""The Flower integration's parts that need no running Flower: arrays, records, sampling, errors."""

from __future__ import annotations

import io
from importlib import metadata

import numpy as np
import pytest
import torch
from conftest import make_dataset
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict
from hypothesis import given, settings
from hypothesis import strategies as st

from secagg.aggregation import Mean, NearestNeighbourMixing, SecureSum
from secagg.crypto.keys import SigningKey
from secagg.errors import ConfigError, RemoteProtocolError, UpdateError
from secagg.fedavg import FedAvg
from secagg.fedavg.config import FedAvgConfig
from secagg.integrations.flower import ArraysLayout, SecAggStrategy, fingerprint, flwr_version, secagg_mod
from secagg.integrations.flower.compat import SUPPORTED
from secagg.integrations.flower.records import RECORD, VERSION, pack, unpack
from secagg.integrations.flower.strategy import _reply_metrics
from secagg.models import build_model

DTYPES = ("float16", "float32", "float64", "int64")
shapes = st.lists(st.integers(0, 4), min_size=0, max_size=3).map(tuple)
entries = st.lists(st.tuples(st.sampled_from(DTYPES), shapes), min_size=1, max_size=5)


def record_of(spec: list[tuple[str, tuple[int, ...]]], seed: int) -> ArrayRecord:
    rng = np.random.default_rng(seed)  # test data only
    arrays = {}
    for i, (dtype, shape) in enumerate(spec):
        arrays[f"layer{i}"] = Array(np.array(rng.standard_normal(shape) * 100, dtype=dtype))
    return ArrayRecord(arrays)


@settings(max_examples=40, deadline=None)
@given(entries.filter(lambda e: any(d != "int64" for d, _ in e)), st.integers(0, 2**31))
def test_arrays_round_trip_bit_exactly_and_integer_arrays_stay_the_servers(spec, seed):
    record = record_of(spec, seed)
    layout = ArraysLayout.of(record)
    floats = [(d, s) for d, s in spec if d != "int64"]
    assert layout.dim == sum(int(np.prod(s)) for _, s in floats)
    vector = layout.flatten(record)
    other = record_of(spec, seed + 1)
    back = layout.unflatten(vector, other)
    for (dtype, _), name in zip(spec, record.keys(), strict=True):
        source = record if dtype != "int64" else other  # integer arrays come from the template
        assert back[name].numpy().tobytes() == source[name].numpy().tobytes()
        assert back[name].dtype == dtype


def test_a_record_without_a_float_array_cannot_be_federated():
    with pytest.raises(UpdateError, match="no floating-point array"):
        ArraysLayout.of(ArrayRecord({"step": Array(np.arange(3))}))


def _pickled(shape: tuple[int, ...]) -> Array:
    buffer = io.BytesIO()
    objects = np.array([object()] * int(np.prod(shape)), dtype=object).reshape(shape)
    np.save(buffer, objects, allow_pickle=True)  # what an attacker would send: np.load must refuse it
    return Array(dtype="float32", shape=shape, stype="numpy.ndarray", data=buffer.getvalue())


def _other_bytes(shape: tuple[int, ...]) -> Array:
    real = Array(np.zeros((shape[0] + 1,), dtype=np.float32))
    return Array(dtype="float32", shape=shape, stype="numpy.ndarray", data=real.data)


@pytest.mark.parametrize(("arrays", "message"), [
    ({"w": Array(np.zeros(4, np.float32))}, "expected the arrays"),
    ({"w": Array(np.zeros(4, np.float32)), "b": Array(np.zeros(2, np.float32)),
      "x": Array(np.zeros(1, np.float32))}, "expected the arrays"),
    ({"w": Array(np.zeros(4, np.float64)), "b": Array(np.zeros(2, np.float32))}, r"expected float32 \(4,\)"),
    ({"w": Array(np.zeros((2, 2), np.float32)), "b": Array(np.zeros(2, np.float32))},
     r"got float32 \(2, 2\)"),
    ({"w": _pickled((4,)), "b": Array(np.zeros(2, np.float32))}, "not a valid array"),
    ({"w": _other_bytes((4,)), "b": Array(np.zeros(2, np.float32))}, "another dtype or shape"),
])
def test_a_peers_arrays_are_checked_against_the_model_before_use(arrays, message):
    model = {"w": Array(np.zeros(4, np.float32)), "b": Array(np.zeros(2, np.float32))}
    layout = ArraysLayout.of(ArrayRecord(model))
    with pytest.raises(UpdateError, match=message):
        layout.flatten(ArrayRecord(arrays), what="client 3's arrays")


def test_the_model_fingerprint_changes_with_any_name_dtype_shape_or_value():
    base = {"w": np.arange(6, dtype=np.float32), "b": np.zeros(2, dtype=np.float32)}
    prints = {fingerprint(ArrayRecord({k: Array(v) for k, v in base.items()}))}
    variants = [{"w": base["w"].reshape(2, 3)}, {"w": base["w"].astype(np.float64)},
                {"w": base["w"] + np.float32(1e-6)}, {"v": base["w"]}]
    for change in variants:
        arrays = {**base, **change} if "v" not in change else {"v": base["w"], "b": base["b"]}
        prints.add(fingerprint(ArrayRecord({k: Array(v) for k, v in arrays.items()})))
    assert len(prints) == 1 + len(variants)
    again = fingerprint(ArrayRecord({k: Array(v.copy()) for k, v in base.items()}))
    assert again in prints


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 30), st.floats(0.05, 1.0), st.integers(0, 2**20), st.integers(1, 50),
       st.sampled_from(["fixed", "poisson"]))
def test_the_strategy_samples_the_clients_secaggs_driver_samples(n, fraction, seed, round_index, sampling):
    data = make_dataset(num_clients=n, per_client=2)
    model = build_model("mlp", data.input_shape, data.num_classes)
    fedavg = FedAvg(FedAvgConfig(fraction=fraction, sampling=sampling), model, data, seed=seed)
    strategy = SecAggStrategy(Mean(), fraction_train=fraction, sampling=sampling, seed=seed,
                              min_train_nodes=1)
    assert strategy._sample(round_index, list(range(n))) == fedavg.sample_clients(round_index)


def test_secret_sampling_draws_a_fresh_sample_of_the_same_size():
    strategy = SecAggStrategy(Mean(), fraction_train=0.5, secret_sampling=True, min_train_nodes=1)
    samples = {tuple(strategy._sample(1, list(range(40)))) for _ in range(20)}
    assert all(len(s) == 20 for s in samples) and len(samples) > 1


@pytest.mark.parametrize(("fields", "message"), [
    ({"version": VERSION + 1, "stage": "task", "round": 1, "data": b""}, "version"),
    ({"version": VERSION, "stage": "steal", "round": 1, "data": b""}, "stage"),
    ({"version": VERSION, "stage": "task", "round": -1, "data": b""}, "round"),
    ({"version": VERSION, "stage": "task", "round": True, "data": b""}, "round"),
    ({"version": VERSION, "stage": "task", "round": 1, "data": "text"}, "data must be bytes"),
    ({"version": VERSION, "stage": "task", "round": 1}, "data must be bytes"),
])
def test_a_malformed_integration_record_is_a_peer_error_naming_the_field(fields, message):
    with pytest.raises(RemoteProtocolError, match=message):
        unpack(RecordDict({RECORD: ConfigRecord(fields)}), who="node 7")


def test_records_pack_and_unpack_and_foreign_messages_carry_none():
    content = RecordDict({RECORD: pack("protocol", 4, b"\x01\x02", seed=3)})
    assert unpack(content, who="server") == {"version": VERSION, "stage": "protocol", "round": 4,
                                             "data": b"\x01\x02", "seed": 3}
    assert unpack(RecordDict({"config": ConfigRecord({"lr": 0.1})}), who="server") is None
    with pytest.raises(RemoteProtocolError, match="not a ConfigRecord"):
        unpack(RecordDict({RECORD: MetricRecord({"x": 1.0})}), who="server")


@pytest.mark.parametrize(("metrics", "message"), [
    ({}, "num-examples"), ({"num-examples": -1}, "num-examples"), ({"num-examples": 2.5}, "num-examples"),
    ({"num-examples": 2**31}, "num-examples"),
])
def test_a_plain_reply_needs_a_valid_example_count(metrics, message):
    with pytest.raises(RemoteProtocolError, match=message):
        _reply_metrics(RecordDict({"metrics": MetricRecord(metrics)}), "num-examples", "client 1")
    assert _reply_metrics(RecordDict({"metrics": MetricRecord({"num-examples": 4.0, "train_loss": 0.5})}),
                          "num-examples", "client 1") == (4, 0.5)


def test_configuration_errors_name_the_field():
    with pytest.raises(ConfigError, match="weight_bound: a weighted secure sum"):
        SecAggStrategy(SecureSum())
    assert SecAggStrategy(SecureSum(weight_bound=50.0)).weight_bound == 50.0
    assert SecAggStrategy(SecureSum(), weight_bound=20.0).mode == "secure"
    with pytest.raises(ConfigError, match="aggregator: expected one of this library's Aggregators"):
        SecAggStrategy(object())  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="'nnm' runs on the server"):
        SecAggStrategy(NearestNeighbourMixing(inner=SecureSum(weight_bound=1.0)))
    with pytest.raises(ConfigError, match="fraction_train"):
        SecAggStrategy(Mean(), fraction_train=0.0)
    with pytest.raises(ConfigError, match="registry: a client with an identity key"):
        secagg_mod(SecureSum(malicious=True, weight_bound=1.0), identity=SigningKey.generate())
    with pytest.raises(ConfigError, match="'nnm' runs on the server"):
        secagg_mod(NearestNeighbourMixing(inner=SecureSum(weight_bound=1.0)))


def test_a_missing_or_unsupported_flower_is_a_clear_error(monkeypatch):
    assert flwr_version() in SUPPORTED

    def missing(name):
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(metadata, "version", missing)
    with pytest.raises(ConfigError, match=r'Flower is not installed.*pip install "secagg\[flower\]"'):
        flwr_version()
    with pytest.raises(ImportError):  # the usual guard around an optional integration catches it too
        flwr_version()
    monkeypatch.setattr(metadata, "version", lambda name: "1.20.3")
    with pytest.raises(ConfigError, match=r"Flower 1\.20\.3 is installed; .* supports flwr 1\.42"):
        flwr_version()


def test_the_update_a_client_sends_is_its_trained_arrays_minus_the_global_ones():
    glob = ArrayRecord({"w": Array(np.linspace(-1, 1, 5, dtype=np.float32))})
    trained = ArrayRecord({"w": Array(np.linspace(-1, 1, 5, dtype=np.float32) + np.float32(0.25))})
    layout = ArraysLayout.of(glob)
    delta = layout.flatten(trained) - layout.flatten(glob)
    assert torch.allclose(delta, torch.full((5,), 0.25), atol=1e-7)


def test_local_arrays_stay_out_of_the_vector_and_the_servers_copy_is_kept():
    glob = ArrayRecord({"w": Array(np.ones(4, dtype=np.float32)), "bn": Array(np.zeros(2, dtype=np.float32)),
                        "step": Array(np.array([1]))})
    layout = ArraysLayout.of(glob, ("bn",))
    assert layout.dim == 4 and layout.layout.local == ("bn",)
    trained = ArrayRecord({"w": Array(np.full(4, 3.0, dtype=np.float32)),
                           "bn": Array(np.full(2, 9.0, dtype=np.float32)), "step": Array(np.array([1]))})
    assert torch.equal(layout.flatten(trained), torch.full((4,), 3.0))  # the client's bn is not in it
    back = layout.unflatten(layout.flatten(trained), glob)
    assert np.array_equal(back["bn"].numpy(), np.zeros(2, dtype=np.float32))
    with pytest.raises(ConfigError, match="local_arrays: 'step' is not a floating-point array"):
        ArraysLayout.of(glob, ("step",))
    with pytest.raises(ConfigError, match="local_arrays: 'gamma' is not"):
        ArraysLayout.of(glob, ("gamma",))
    with pytest.raises(ConfigError, match="local_arrays: expected a collection"):
        secagg_mod(Mean(), local_arrays="bn")
    with pytest.raises(ConfigError, match="names an array twice"):
        SecAggStrategy(Mean(), local_arrays=("bn", "bn"))


def test_the_two_level_sum_is_refused_by_name_on_both_sides():
    """Flower has one server: a rule whose sessions run in combiner processes cannot be placed there."""
    from secagg.aggregation import HierarchicalSecureSum

    for build in (lambda a: SecAggStrategy(a), lambda a: secagg_mod(a)):
        with pytest.raises(ConfigError, match="'hierarchical-secure-sum' sums in two levels"):
            build(HierarchicalSecureSum(combiners=2))
