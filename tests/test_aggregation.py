"""The aggregator interface: weighted mean, clipping, composition and serialization."""

from __future__ import annotations

import json
import re

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from secagg.aggregation import Aggregator, ClipNorm, Mean, UpdateBatch, aggregator_kinds
from secagg.errors import ConfigError, UpdateError


@st.composite
def batches(draw, min_n=1, max_n=8, max_d=16):
    n = draw(st.integers(min_n, max_n))
    d = draw(st.integers(1, max_d))
    seed = draw(st.integers(0, 2**31))
    g = torch.Generator().manual_seed(seed)
    scale = draw(st.sampled_from([1e-3, 1.0, 1e3]))
    updates = torch.randn(n, d, generator=g, dtype=torch.float64) * scale
    weights = torch.tensor(draw(st.lists(st.integers(1, 1000), min_size=n, max_size=n)),
                           dtype=torch.float64)
    return UpdateBatch(updates, weights, tuple(range(n)))


@given(batches())
def test_weighted_mean_is_the_example_weighted_average(batch):
    out = Mean().aggregate(batch, {}).update
    expected = sum(float(w) * batch.updates[i] for i, w in enumerate(batch.weights)) / float(
        batch.weights.sum())
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12 * float(batch.updates.abs().max()))


@given(batches())
def test_unweighted_mean_ignores_weights(batch):
    torch.testing.assert_close(Mean(weighted=False).aggregate(batch, {}).update,
                               batch.updates.mean(dim=0))


@given(batches(), st.floats(0.01, 100))
def test_clip_then_mean_equals_mean_of_clipped_rows(batch, max_norm):
    before = batch.updates.clone()
    out = ClipNorm(max_norm=max_norm).aggregate(batch, {})
    norms = batch.updates.norm(dim=1)
    clipped = torch.stack([u * min(1.0, max_norm / float(nrm)) if nrm > 0 else u
                           for u, nrm in zip(batch.updates, norms, strict=True)])
    w = batch.weights / batch.weights.sum()
    torch.testing.assert_close(out.update, w @ clipped)
    assert out.metrics["clipped_fraction"] == pytest.approx(float((norms > max_norm).double().mean()))
    assert torch.equal(batch.updates, before), "aggregators must not mutate their input"
    assert float(out.update.norm()) <= max_norm * (1 + 1e-9)


def test_mean_does_not_mutate_input():
    u = torch.randn(4, 5)
    batch = UpdateBatch(u.clone(), torch.ones(4, dtype=torch.float64), (0, 1, 2, 3))
    Mean().aggregate(batch, {})
    assert torch.equal(batch.updates, u)


@pytest.mark.parametrize("agg", [
    Mean(), Mean(weighted=False), ClipNorm(max_norm=0.5),
    ClipNorm(max_norm=2.0, inner=ClipNorm(max_norm=1.0, inner=Mean(weighted=False))),
])
def test_aggregators_round_trip_through_json(agg):
    text = json.dumps(agg.to_dict())
    again = Aggregator.from_dict(json.loads(text))
    assert again == agg and repr(again) == repr(agg)


def test_registry_lists_builtins_and_rejects_unknowns():
    assert {"mean", "clip-norm"} <= set(aggregator_kinds())
    with pytest.raises(ConfigError, match=r"aggregator\.kind: unknown 'no-such-rule'"):
        Aggregator.from_dict({"kind": "no-such-rule"})
    with pytest.raises(ConfigError, match="unknown field\\(s\\) f"):
        Aggregator.from_dict({"kind": "mean", "f": 1})
    with pytest.raises(ConfigError, match=r"max_norm: must be > 0\.0, got -1"):
        Aggregator.from_dict({"kind": "clip-norm", "max_norm": -1})
    with pytest.raises(ConfigError, match="weighted: must be true or false"):
        Mean(weighted="yes")  # type: ignore[arg-type]


def test_update_batch_validation_names_the_problem():
    w = torch.ones(2, dtype=torch.float64)
    bad = torch.tensor([[0.0, 1.0], [float("nan"), 0.0]])
    with pytest.raises(UpdateError, match=r"non-finite values \(NaN/Inf\) from client\(s\) \[8\]"):
        UpdateBatch(bad, w, (7, 8))
    with pytest.raises(UpdateError, match="weights: expected shape \\(2,\\)"):
        UpdateBatch(torch.zeros(2, 3), torch.ones(3, dtype=torch.float64), (0, 1))
    with pytest.raises(UpdateError, match="weights: must be finite and >= 0"):
        UpdateBatch(torch.zeros(2, 3), torch.tensor([1.0, -1.0]), (0, 1))
    with pytest.raises(UpdateError, match="need at least 1 client update"):
        UpdateBatch(torch.zeros(0, 3), torch.ones(0), ())
    with pytest.raises(UpdateError, match="weights: sum must be > 0"):
        Mean().aggregate(UpdateBatch(torch.zeros(2, 3), torch.zeros(2), (0, 1)), {})


def test_a_user_aggregator_plugs_in_and_serializes():
    from dataclasses import dataclass

    @dataclass(frozen=True)
    class FirstClient(Aggregator, kind="test-first-client"):
        scale: float = 1.0

        def aggregate(self, batch, state):
            from secagg.aggregation import Aggregate
            return Aggregate(batch.updates[0] * self.scale, dict(state))

    agg = ClipNorm(max_norm=10.0, inner=FirstClient(scale=2.0))
    assert Aggregator.from_dict(json.loads(json.dumps(agg.to_dict()))) == agg
    batch = UpdateBatch(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), torch.ones(2), (0, 1))
    assert torch.equal(agg.aggregate(batch, {}).update, torch.tensor([2.0, 0.0]))


@given(st.lists(st.sampled_from(["ok", "big", "nan", "inf", "-inf", "inf-inf"]), min_size=1, max_size=8),
       st.sampled_from([torch.float32, torch.float64]))
def test_non_finite_rows_are_named_exactly_even_when_finite_sums_overflow(kinds, dtype):
    big = torch.finfo(dtype).max
    rows = {"ok": [1.0, -2.0, 3.0], "big": [big, big, -1.0],  # finite, but the sum overflows
            "nan": [0.0, float("nan"), 1.0], "inf": [float("inf"), 0.0, 0.0],
            "-inf": [0.0, 0.0, float("-inf")], "inf-inf": [float("inf"), float("-inf"), 0.0]}
    u = torch.tensor([rows[k] for k in kinds], dtype=dtype)
    bad = [i for i, k in enumerate(kinds) if k not in ("ok", "big")]
    ids = tuple(range(100, 100 + len(kinds)))
    if not bad:
        UpdateBatch(u, torch.ones(len(kinds)), ids)
        return
    with pytest.raises(UpdateError, match=rf"from client\(s\) {re.escape(str([ids[i] for i in bad]))}$"):
        UpdateBatch(u, torch.ones(len(kinds)), ids)
