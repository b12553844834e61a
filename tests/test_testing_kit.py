"""The public testing kit (secagg.testing, dp.testing) applied to the library's own components, and
to deliberately broken ones that it must reject with a readable message."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dp.noise import SecureRandom, discrete_gaussian, discrete_gaussian_pmf, skellam, skellam_pmf
from dp.testing import check_noise_mechanism
from secagg.aggregation import (
    Aggregate,
    Aggregator,
    Bucketing,
    Bulyan,
    CenteredClipping,
    ClipNorm,
    CoordinateMedian,
    GeometricMedian,
    Krum,
    Mean,
    MultiKrum,
    NearestNeighbourMixing,
    SecureBucketing,
    SecureSum,
    TrimmedMean,
    UpdateBatch,
)
from secagg.errors import WireError
from secagg.protocol import wire
from secagg.protocol.messages import (
    MAX_ID,
    AdvertiseKeys,
    ConsistencyRequest,
    ConsistencySignature,
    MaskedInput,
    SessionParams,
    Setup,
    Stage,
    UnmaskRequest,
)
from secagg.protocol.runner import run_session
from secagg.testing import (
    attacker_placements,
    check_aggregator,
    check_message_codec,
    check_secure_sum,
    client_populations,
    dropout_schedules,
    hostile_bytes,
    update_batches,
    update_stacks,
)

NONCE = bytes(range(32))  # a fixed session nonce for hand-built setups (a Server draws a fresh one)

SEED = bytes(range(32))


def weighted_mean(batch: UpdateBatch) -> torch.Tensor:
    w = batch.weights / batch.weights.sum()
    return w @ batch.updates.double()


def true_median(batch: UpdateBatch) -> torch.Tensor:
    """Coordinate median, the mean of the middle pair for even n (numpy's definition)."""
    return torch.from_numpy(np.median(batch.updates.double().numpy(), axis=0))


# ---------------------------------------------------------------------------------------------------
# Every built-in aggregator passes the kit
# ---------------------------------------------------------------------------------------------------

BUILTINS = [
    pytest.param(Mean(), dict(breakdown=False, reference=weighted_mean), id="mean"),
    pytest.param(CoordinateMedian(), dict(f=1, reference=true_median), id="median"),
    pytest.param(TrimmedMean(f=1), dict(f=1, min_clients=3), id="trimmed-mean"),
    # Krum with one neighbour (n = f + 3) scores mutual nearest neighbours equally and picks the lower
    # row: its output depends on the order at n = 4, so permutation is checked from n = 5 on
    pytest.param(Krum(f=1), dict(f=1, min_clients=4, breakdown="member", permutation_min_clients=5),
                 id="krum"),
    pytest.param(MultiKrum(f=1), dict(f=1, min_clients=4, permutation_min_clients=5), id="multi-krum"),
    pytest.param(Bulyan(f=1), dict(f=1, min_clients=7, max_clients=9), id="bulyan"),
    pytest.param(GeometricMedian(), dict(breakdown=False), id="geometric-median"),
    pytest.param(CenteredClipping(), dict(breakdown=False), id="centered-clipping"),
    pytest.param(NearestNeighbourMixing(f=1, inner=TrimmedMean(f=1)), dict(f=1, min_clients=3), id="nnm"),
    # seeded buckets are drawn by row position: the output depends on the order by design
    pytest.param(Bucketing(bucket_size=2), dict(breakdown=False, permutation=False), id="bucketing"),
    pytest.param(ClipNorm(max_norm=1.0), dict(breakdown=False), id="clip-norm"),
    # secure sums clip to [-clip, clip] and quantize: values within clip, reference within 1e-4
    pytest.param(SecureSum(), dict(breakdown=False, min_clients=2, magnitude=0.5, reference=weighted_mean,
                                   reference_atol=1e-4, max_examples=10), id="secure-sum"),
    pytest.param(SecureBucketing(bucket_size=2, threat_model="honest-but-curious-server"),
                 dict(breakdown=False, permutation=False, min_clients=2, magnitude=0.5, max_examples=8),
                 id="secure-bucketing"),
    pytest.param(SecureBucketing(bucket_size=3), dict(breakdown=False, permutation=False, min_clients=2,
                                                      magnitude=0.5, max_examples=8),
                 id="secure-bucketing-colluding-clients"),
]


@pytest.mark.parametrize(("rule", "options"), BUILTINS)
def test_builtin_aggregators_pass_the_kit(rule, options):
    check_aggregator(rule, **{"max_examples": 25, **options})


def run_session_sum(params: SessionParams, inputs, drop_before) -> np.ndarray:
    return run_session(params, inputs, drop_before=drop_before).result


def test_run_session_passes_the_secure_sum_check():
    check_secure_sum(run_session_sum, max_examples=25)


# A small message strategy: several types with random valid fields (tests/test_wire.py covers all).
_sid = st.binary(min_size=wire.SESSION_ID_BYTES, max_size=wire.SESSION_ID_BYTES)
_cid = st.integers(0, MAX_ID)
_ids = st.lists(_cid, max_size=4, unique=True).map(lambda ids: tuple(sorted(ids)))
_key = st.binary(min_size=32, max_size=32)
_params = st.builds(lambda ids, t, d: SessionParams(round=1, model_version=b"v1", client_ids=ids,
                                                    threshold=min(t, len(ids)), degree=len(ids) - 1,
                                                    vector_length=d, bits=16, nonce=NONCE),
                    st.lists(_cid, min_size=2, max_size=5, unique=True).map(lambda i: tuple(sorted(i))),
                    st.integers(1, 5), st.integers(1, 64))
WIRE_MESSAGES = st.one_of(
    st.builds(Setup, _params),
    st.builds(AdvertiseKeys, _cid, _key, _key, st.one_of(st.just(b""), st.binary(min_size=64, max_size=64))),
    st.builds(MaskedInput, _cid, _sid, st.integers(0, 16).map(lambda w: bytes(range(4 * w)))),
    st.builds(ConsistencyRequest, _sid, _ids, _ids),
    st.builds(ConsistencySignature, _cid, _sid, st.binary(min_size=64, max_size=64)),
    st.builds(UnmaskRequest, _sid, _ids, _ids),
)


def test_wire_codec_passes_the_codec_check():
    check_message_codec(wire.encode, wire.decode, WIRE_MESSAGES, max_examples=60)


@pytest.mark.parametrize(("sampler", "pmf"), [
    pytest.param(lambda n: discrete_gaussian(3.0, n, SecureRandom(SEED)),
                 lambda ks: discrete_gaussian_pmf(3.0, ks), id="discrete-gaussian"),
    pytest.param(lambda n: discrete_gaussian(0.7, n, SecureRandom(SEED)),
                 lambda ks: discrete_gaussian_pmf(0.7, ks), id="discrete-gaussian-small-sigma"),
    pytest.param(lambda n: skellam(4.0, n, SecureRandom(SEED)), lambda ks: skellam_pmf(4.0, ks),
                 id="skellam"),
])
def test_noise_samplers_pass_the_noise_check(sampler, pmf):
    check_noise_mechanism(sampler, pmf)  # seeded: deterministic


# ---------------------------------------------------------------------------------------------------
# Broken implementations the kit must reject, with a readable message
# ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CenteringMean(Aggregator, kind="test-kit-centering-mean"):
    """Broken: centers the updates in place before averaging."""

    def aggregate(self, batch, state):
        u = batch.updates
        center = u.mean(dim=0)
        u.sub_(center)  # mutates the caller's tensor
        return Aggregate(center + u.mean(dim=0), dict(state))


@dataclass(frozen=True)
class LowerMedian(Aggregator, kind="test-kit-lower-median"):
    """Broken: torch.median returns the lower of the two middle values for even n."""

    def aggregate(self, batch, state):
        return Aggregate(batch.updates.median(dim=0).values, dict(state))


@dataclass(frozen=True)
class UntypedTrimmedMean(Aggregator, kind="test-kit-untyped-trimmed"):
    """Broken: rejects too few clients with a bare ValueError instead of a SecAggError."""

    f: int = 1

    def aggregate(self, batch, state):
        n = batch.num_clients
        if 2 * self.f >= n:
            raise ValueError("not enough clients")
        s = batch.updates.sort(dim=0).values
        return Aggregate(s[self.f:n - self.f].mean(dim=0), dict(state))


@dataclass(frozen=True)
class Float64Mean(Aggregator, kind="test-kit-float64-mean"):
    """Broken: always returns float64."""

    def aggregate(self, batch, state):
        return Aggregate(batch.updates.double().mean(dim=0), dict(state))


@dataclass(frozen=True)
class OrderDependent(Aggregator, kind="test-kit-first-row"):
    """Broken: returns the first row."""

    def aggregate(self, batch, state):
        return Aggregate(batch.updates[0].clone(), dict(state))


def test_kit_rejects_an_aggregator_that_mutates_its_input():
    with pytest.raises(AssertionError, match=r"mutated its input: \d+ entries of batch.updates changed"):
        check_aggregator(CenteringMean(), breakdown=False, max_examples=20)


def test_kit_rejects_a_lower_median_through_the_reference():
    with pytest.raises(AssertionError, match="disagrees with the reference by") as info:
        check_aggregator(LowerMedian(), f=1, reference=true_median, max_examples=30)
    assert "reference:" in str(info.value)


def test_kit_rejects_untyped_errors():
    with pytest.raises(AssertionError, match=r"raised ValueError: not enough clients .*SecAggError"):
        check_aggregator(UntypedTrimmedMean(), f=1, min_clients=3, max_examples=20)


def test_kit_rejects_a_wrong_output_dtype():
    with pytest.raises(AssertionError, match=r"output dtype torch\.float64, expected the input dtype"):
        check_aggregator(Float64Mean(), breakdown=False, dtypes=(torch.float32,), max_examples=10)


def test_kit_rejects_an_order_dependent_rule():
    with pytest.raises(AssertionError, match="is not permutation invariant"):
        check_aggregator(OrderDependent(), breakdown=False, max_examples=20)


def test_kit_refuses_to_pass_a_rule_it_could_not_exercise():
    with pytest.raises(AssertionError, match=r"rejected all \d+ generated batches"):
        check_aggregator(Bulyan(f=2), f=2, max_clients=8, max_examples=10)


def test_kit_finds_the_breakdown_of_the_mean():
    with pytest.raises(AssertionError, match=r"broke down with f=1 attacker\(s\) at rows"):
        check_aggregator(Mean(), f=1, max_examples=20)


def test_kit_finds_that_krum_is_order_dependent_at_one_neighbour():
    with pytest.raises(AssertionError, match="is not permutation invariant"):
        check_aggregator(Krum(f=1), f=1, min_clients=4, max_clients=4, breakdown=False, max_examples=40)


def length_prefixed_encode(payload: bytes) -> bytes:
    return len(payload).to_bytes(2, "big") + payload


def crashing_decode(data: bytes) -> bytes:
    """Broken: indexes the length header without checking that it is there."""
    n = data[0] << 8 | data[1]  # IndexError on 0- or 1-byte input
    if len(data) != n + 2:
        raise WireError(f"expected {n} payload bytes, got {len(data) - 2}")
    return data[2:]


def test_kit_rejects_a_codec_that_crashes_on_truncation():
    with pytest.raises(AssertionError, match=r"decode raised IndexError: .* only WireError or success"):
        check_message_codec(length_prefixed_encode, crashing_decode, st.binary(max_size=20),
                            max_examples=50)


def checked_decode(data: bytes) -> bytes:
    if len(data) < 2:
        raise WireError("missing length header")
    return crashing_decode(data)


def test_a_careful_length_prefixed_codec_passes():
    check_message_codec(length_prefixed_encode, checked_decode, st.binary(max_size=20), max_examples=30)


def test_kit_rejects_a_lossy_codec():
    with pytest.raises(AssertionError, match="round trip changed the message"):
        check_message_codec(lambda m: length_prefixed_encode(m[:4]), checked_decode,  # drops bytes
                            st.binary(max_size=8), max_examples=50)


def test_kit_rejects_a_sampler_with_the_wrong_variance():
    with pytest.raises(AssertionError, match=r"statistic .* p-value .* < alpha=0.001"):
        check_noise_mechanism(lambda n: discrete_gaussian(3.3, n, SecureRandom(SEED)),
                              lambda ks: discrete_gaussian_pmf(3.0, ks))


def test_variance_test_alone_catches_a_scaled_variance():
    # a coarse support pools the shape away: the moment test must still see the variance
    rng = np.random.default_rng(0)
    with pytest.raises(AssertionError, match=r"(variance test|chi-square).*p-value"):
        check_noise_mechanism(lambda n: np.rint(rng.normal(0, 3.2, n)).astype(np.int64),
                              lambda ks: discrete_gaussian_pmf(3.0, ks))


def test_kit_rejects_a_secure_sum_that_ignores_dropouts():
    def everyone(params, inputs, drop_before):
        total = sum(v.astype(np.uint64) for v in inputs.values())
        return total & np.uint64((1 << params.bits) - 1)

    with pytest.raises(AssertionError, match=r"secure sum (is wrong|returned a result although fewer)"):
        check_secure_sum(everyone, max_examples=30)


def test_kit_rejects_a_secure_sum_raising_untyped_errors():
    def fragile(params, inputs, drop_before):
        if drop_before:
            raise RuntimeError("peer vanished")
        return run_session_sum(params, inputs, drop_before)

    with pytest.raises(AssertionError, match="raised RuntimeError: peer vanished; expected the sum or an"):
        check_secure_sum(fragile, max_examples=30)


# ---------------------------------------------------------------------------------------------------
# The strategies themselves
# ---------------------------------------------------------------------------------------------------


@settings(max_examples=30, deadline=None)
@given(update_stacks(min_clients=2, max_clients=5, max_dim=3, dtype=torch.float64, magnitude=10.0))
def test_update_stacks_are_finite_and_bounded_by_default(u):
    assert u.dtype == torch.float64 and 2 <= u.shape[0] <= 5 and 1 <= u.shape[1] <= 3
    assert bool(torch.isfinite(u).all()) and float(u.abs().max()) <= 10.0 * 1.1


@settings(max_examples=30, deadline=None)
@given(update_stacks(min_clients=3, max_clients=5, magnitude=1.0, outliers=True))
def test_outlier_rows_sit_far_away(u):
    assert float(u.abs().max()) > 1e3


@settings(max_examples=30, deadline=None)
@given(update_stacks(min_clients=4, max_clients=6, max_dim=2, ties=True))
def test_tied_stacks_repeat_values(u):
    assert len(set(u.flatten().tolist())) < u.numel()


def test_nonfinite_values_appear_only_when_asked():
    seen = []

    @settings(max_examples=60, deadline=None)
    @given(update_stacks(allow_nonfinite=True))
    def collect(u):
        seen.append(not bool(torch.isfinite(u).all()))

    collect()
    assert any(seen)


@settings(max_examples=30, deadline=None)
@given(update_batches(max_clients=6))
def test_update_batches_have_distinct_ids_and_positive_counts(batch):
    assert len(set(batch.client_ids)) == batch.num_clients
    assert bool((batch.weights >= 1).all())


@settings(max_examples=40, deadline=None)
@given(data=st.data(), respect=st.booleans())
def test_dropout_schedules_respect_or_violate_the_threshold(data, respect):
    ids, _ = data.draw(client_populations(min_clients=2, max_clients=8))
    t = data.draw(st.integers(1, len(ids)))
    schedule = data.draw(dropout_schedules(ids, t, respect_threshold=respect))
    assert set(schedule) <= set(ids) and all(isinstance(s, Stage) for s in schedule.values())
    assert (len(ids) - len(schedule) >= t) == respect


@settings(max_examples=30, deadline=None)
@given(data=st.data(), n=st.integers(1, 10))
def test_attacker_placements_pick_f_distinct_rows(data, n):
    f = data.draw(st.integers(0, n))
    rows = data.draw(attacker_placements(n, f))
    assert len(rows) == f and rows <= set(range(n))


@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_hostile_bytes_differ_from_the_valid_message(data):
    valid = wire.encode(AdvertiseKeys(7, bytes(32), bytes(32), b""))
    assert data.draw(hostile_bytes(valid)) != valid


def test_the_csprng_gaussian_passes_the_continuous_check_and_a_wrong_std_fails():
    from scipy.stats import norm

    from dp.gaussian import gaussian
    from dp.testing import check_continuous_noise

    check_continuous_noise(lambda n: gaussian(2.0, n, SecureRandom(SEED)), norm(scale=2.0).cdf,
                           mean=0.0, variance=4.0)
    with pytest.raises(AssertionError, match=r"(Kolmogorov-Smirnov|variance) test rejected the sampler"):
        check_continuous_noise(lambda n: gaussian(2.2, n, SecureRandom(SEED)), norm(scale=2.0).cdf,
                               mean=0.0, variance=4.0)
