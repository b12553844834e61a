"""Placement: each step runs where its trust model says, and the split pipeline is the simulated one.

``Aggregator.aggregate`` must equal ``aggregate_released`` over rows that went through
``client_step`` (same noise), and :func:`secagg.placement.place` must refuse a client step the server
would have to run.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dp.central import DPFedAvg
from dp.local import LocalDP
from dp.noise import SecureRandom
from secagg.aggregation import (
    ClipNorm,
    CoordinateMedian,
    Mean,
    NearestNeighbourMixing,
    SecureBucketing,
    SecureSum,
    TrimmedMean,
    UpdateBatch,
)
from secagg.errors import ConfigError
from secagg.placement import place


def _seeded(seed: int) -> SecureRandom:
    return SecureRandom(seed.to_bytes(32, "little"))  # seeded: TESTS ONLY


def _batch(n: int, d: int, seed: int = 0) -> UpdateBatch:
    g = torch.Generator().manual_seed(seed)
    return UpdateBatch(3.0 * torch.randn(n, d, generator=g), torch.arange(1.0, n + 1, dtype=torch.float64),
                       tuple(range(n)), round=1, seed=seed)


@pytest.mark.parametrize("inner", [Mean(), CoordinateMedian(), TrimmedMean(f=1)])
def test_local_dp_is_its_client_step_then_its_server_part(inner):
    rule = LocalDP(clip=1.0, noise_multiplier=0.7, inner=inner)
    batch = _batch(5, 40)
    whole = rule.aggregate_with_noise(batch, {}, rng=_seeded(7))
    rng = _seeded(7)
    released = torch.stack([rule.client_step(row, rng=rng) for row in batch.updates])
    split = rule.aggregate_released(batch.replace(updates=released), {})
    assert torch.equal(whole.update, split.update)
    assert split.metrics["noise_std"] == pytest.approx(0.7) and "clipped_fraction" not in split.metrics
    assert whole.metrics["clipped_fraction"] == 1.0  # every row of norm ~19 was clipped


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 300), st.floats(0.05, 5.0), st.floats(0.1, 3.0), st.integers(0, 2**31))
def test_a_client_release_is_its_clipped_update_plus_the_stated_noise(d, clip, z, seed):
    rule = LocalDP(clip=clip, noise_multiplier=z)
    update = torch.randn(d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * 4.0
    released = rule.client_step(update, rng=_seeded(seed))
    norm = float(torch.linalg.vector_norm(update))
    clipped = update * min(1.0, clip / norm)
    noise = (released - clipped).numpy()
    assert released.dtype == update.dtype and released.shape == update.shape
    # the same noise as a fresh draw from the same key: the release is clip + N(0, (z C)^2), nothing else
    from dp.gaussian import gaussian
    assert np.allclose(noise, gaussian(z * clip, d, _seeded(seed)), atol=1e-9 * (1 + z * clip))


def test_released_noise_has_the_accounted_spread():
    rule = LocalDP(clip=0.5, noise_multiplier=2.0)
    noise = rule.client_step(torch.zeros(200_000, dtype=torch.float64)).numpy()  # OS CSPRNG
    assert abs(noise.mean()) < 5 * 1.0 / math.sqrt(noise.size)
    assert noise.std() == pytest.approx(1.0, rel=0.01)  # z C = 1


def test_place_splits_the_client_steps_from_the_sum():
    p = place(LocalDP(inner=SecureSum()))
    assert p.mode == "secure" and p.client_steps == (LocalDP(inner=SecureSum()),) and p.session == SecureSum()
    p = place(LocalDP(inner=CoordinateMedian()))
    assert p.mode == "plain" and p.session is None and len(p.client_steps) == 1
    assert place(SecureSum()).client_steps == () and place(DPFedAvg()).mode == "plain"
    assert "on the clients: local-dp; crossing to the server: secure sum" in place(
        LocalDP(inner=SecureSum())).describe()
    # two local layers: each client applies both, outermost first
    twice = LocalDP(clip=1.0, noise_multiplier=0.5, inner=LocalDP(clip=2.0, noise_multiplier=0.5))
    assert [s.clip for s in place(twice).client_steps] == [1.0, 2.0]


@pytest.mark.parametrize("aggregator, message", [
    (ClipNorm(max_norm=1.0, inner=LocalDP()), "'local-dp' must run on the clients (placement 'client'), "
                                              "but it sits inside 'clip-norm', which runs on the server"),
    (LocalDP(inner=ClipNorm(max_norm=1.0, inner=LocalDP())), "sits inside 'clip-norm'"),
    (SecureBucketing(bucket_size=3, inner=SecureSum()),
     "'secure-bucketing' has another secure-aggregation rule ('secure-sum') inside it"),
    (NearestNeighbourMixing(inner=SecureBucketing(bucket_size=3)),
     "'nnm' runs on the server over individual"),
    (DPFedAvg(simulation_seed=0), "simulation_seed"),
])
def test_what_cannot_be_placed_is_refused_naming_the_step(aggregator, message):
    with pytest.raises(ConfigError, match="aggregator: .*" + message.replace("(", r"\(").replace(")", r"\)")):
        place(aggregator)


@settings(max_examples=30, deadline=None)
@given(st.integers(2, 40), st.integers(3, 6), st.integers(0, 2**31))
def test_secure_bucketing_is_placed_as_one_session_per_bucket_of_the_simulations_partition(n, size, seed):
    rule = SecureBucketing(bucket_size=size, inner=CoordinateMedian(),
                           threat_model="honest-but-curious-server")
    p = place(rule)
    assert p.mode == "secure" and p.groups == rule and p.session == rule.secure and p.client_steps == ()
    ids = tuple(range(100, 100 + 3 * n, 3))
    groups = p.session_groups(ids, seed)
    batch = UpdateBatch(torch.zeros(n, 2), torch.ones(n, dtype=torch.float64), ids, 1, seed)
    assert groups == [tuple(sorted(ids[i] for i in idx.tolist())) for idx in rule.buckets(batch)]
    assert sorted(u for g in groups for u in g) == list(ids)  # a partition of the round
    assert min(len(g) for g in groups) >= min(size, n)


def test_a_client_refuses_a_bucket_below_bucket_size():
    from secagg.errors import RemoteProtocolError

    p = place(SecureBucketing(bucket_size=4, inner=CoordinateMedian()))
    p.check_group((1, 2, 3, 4))
    with pytest.raises(RemoteProtocolError, match="session: bucket_size: the server seated this client in a "
                                                  "bucket of 3, below bucket_size=4"):
        p.check_group((1, 2, 3))


def test_release_applies_the_client_steps_and_nothing_for_server_rules():
    update = torch.full((10,), 3.0)
    assert torch.equal(place(CoordinateMedian()).release(update), update)
    out = place(LocalDP(clip=1.0, noise_multiplier=1e-9)).release(update)
    assert float(torch.linalg.vector_norm(out)) == pytest.approx(1.0, abs=1e-5)


def test_a_client_enforces_its_own_local_noise_floor():
    from secagg.experiment import ExperimentConfig
    from secagg.fedavg import FedAvgConfig
    from secagg.transport.node import check_local_noise

    def config(agg):
        return ExperimentConfig(fedavg=FedAvgConfig(aggregator=agg))

    check_local_noise(config(Mean()), None)  # no floor: anything goes
    check_local_noise(config(LocalDP(noise_multiplier=2.0, inner=SecureSum())), 2.0)
    with pytest.raises(ConfigError, match=r"--min-local-noise: .* >= 2 on the client, .* adds at most 1\.5"):
        check_local_noise(config(LocalDP(noise_multiplier=1.5)), 2.0)
    # server-side noise is no local noise: DP-FedAvg's noise is added by the server
    with pytest.raises(ConfigError, match="adds none: not taking part"):
        check_local_noise(config(DPFedAvg(noise_multiplier=5.0)), 1.0)


@pytest.mark.parametrize("aggregator, announced", [
    (SecureSum(), "plain"), (LocalDP(inner=SecureSum()), "plain"), (Mean(), "secure")])
def test_a_client_refuses_a_server_announcing_another_mode_than_its_configuration(aggregator, announced):
    """A lying server says "plain" for a configuration with a secure sum, to get raw updates: refused
    before the client trains or sends anything."""
    from secagg.crypto.keys import SigningKey
    from secagg.errors import ProtocolError
    from secagg.experiment import ExperimentConfig
    from secagg.fedavg import FedAvgConfig
    from secagg.task import TaskConfig
    from secagg.transport.envelope import Challenge, Welcome, encode_challenge, encode_welcome
    from secagg.transport.node import NetworkClient

    config = ExperimentConfig(TaskConfig(num_clients=2), FedAvgConfig(aggregator=aggregator))
    replies = {"Hello": encode_challenge(Challenge(bytes(32))),
               "Login": encode_welcome(Welcome(b"t" * 32, config.to_json(), announced))}
    client = NetworkClient("127.0.0.1:1", 0, SigningKey.generate())
    sent: list[str] = []
    client._call = lambda method, request, **_: sent.append(method) or replies[method]  # type: ignore[method-assign]
    client._connect = lambda: None  # type: ignore[method-assign]
    with pytest.raises(ProtocolError, match=f"announced '{announced}' mode, but its configuration places"):
        client._login()
    assert sent == ["Hello", "Login"] and client._token == b""


# ----------------------------------------------------------------------- steps over a secure sum


def _finish(rule, batch, state, **kw):
    """A deployment's pipeline in one process: client steps per row, the sum, the server's finish."""
    p = place(rule)
    rows = torch.stack([p.release(row) for row in batch.updates])
    summed = p.session.aggregate(batch.replace(updates=rows.to(torch.float64)), {})
    return p.finish(summed, state, num_clients=batch.num_clients, dtype=batch.updates.dtype)


def test_dp_fedavg_over_a_secure_sum_clips_on_the_clients_and_noises_the_sum_on_the_server():
    rule = DPFedAvg(clip=1.0, noise_multiplier=0.8, expected_clients=6.0, sampling="none",
                    inner=SecureSum(weighted=False, max_clients=10))
    p = place(rule)
    assert p.mode == "secure" and p.client_steps == (rule,) and p.session == rule.inner
    batch = _batch(6, 30)
    released = p.release(batch.updates[0])
    # the client clips a little inside C, so that its rounded encoding stays within C
    assert float(torch.linalg.vector_norm(released)) < 1.0
    from dp.central import secure_clip
    assert float(torch.linalg.vector_norm(released)) == pytest.approx(secure_clip(rule.inner, 1.0, 10, 30))
    whole = rule.aggregate_with_noise(batch, {}, rng=_seeded(3))
    rows = torch.stack([p.release(row) for row in batch.updates])
    summed = rule.inner.aggregate(batch.replace(updates=rows), {})
    split = rule.after_sum(summed, {}, num_clients=6, dtype=batch.updates.dtype, rng=_seeded(3))
    assert torch.allclose(whole.update, split.update, atol=1e-6)
    assert split.metrics["noise_std"] == whole.metrics["noise_std"]
    assert "clipped_fraction" not in split.metrics  # the server never sees a client's norm
    # the server's part adds N(0, (z C)^2) to the sum: times expected_clients, minus the sum
    noise = (split.update.double() * 6.0 - summed.update.double() * 6.0).numpy()
    from dp.gaussian import gaussian
    assert np.allclose(noise, gaussian(0.8, 30, _seeded(3)), atol=1e-5)


def test_clip_norm_over_a_secure_sum_clips_on_the_clients():
    rule = ClipNorm(max_norm=0.5, inner=SecureSum())
    p = place(rule)
    assert p.mode == "secure" and p.client_steps == (rule,)
    batch = _batch(4, 20)
    out = _finish(rule, batch, {})
    whole = rule.aggregate(batch, {})
    assert torch.allclose(out.update, whole.update, atol=2e-4)  # SecureSum's rounding: well under a step
    assert float(torch.linalg.vector_norm(p.release(batch.updates[1]))) == pytest.approx(0.5, rel=1e-6)
    # without a secure sum below it, clipping stays on the (trusted) server
    assert place(ClipNorm(inner=CoordinateMedian())).client_steps == ()


def test_central_dp_without_a_secure_sum_runs_on_the_trusted_server():
    p = place(DPFedAvg(clip=1.0, inner=Mean(weighted=False)))
    assert p.mode == "plain" and p.client_steps == ()


def test_a_server_rule_above_a_secure_sum_is_refused():
    from secagg.aggregation import NearestNeighbourMixing

    rule = NearestNeighbourMixing(inner=SecureSum())
    with pytest.raises(ConfigError, match="'nnm' runs on the server over individual updates "
                                          r"\(it has no client part\), but it sits above the secure sum"):
        place(rule)


def test_distributed_dp_over_a_sparse_graph_is_refused_for_a_deployment():
    from dp.distributed import DistributedDP

    assert place(DistributedDP()).mode == "secure"
    with pytest.raises(ConfigError, match="graph: deployed distributed DP needs graph='full'"):
        place(DistributedDP(graph="secaggplus"))
