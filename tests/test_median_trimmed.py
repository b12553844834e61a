"""Robust combine rules: coordinate-wise median and trimmed mean (Yin et al. 2018)."""

from __future__ import annotations

import json

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from secagg.aggregation.base import Aggregator, UpdateBatch
from secagg.aggregation.median import CoordinateMedian
from secagg.aggregation.trimmed_mean import TrimmedMean
from secagg.errors import ConfigError, UpdateError


def make_batch(rows, dtype=torch.float64, weights=None) -> UpdateBatch:
    u = torch.as_tensor(rows, dtype=dtype)
    if u.dim() == 1:
        u = u[:, None]
    n = u.shape[0]
    w = torch.ones(n) if weights is None else torch.as_tensor(weights)
    w = w.to(torch.float64)
    return UpdateBatch(u, w, tuple(range(n)))


def run(agg: Aggregator, batch: UpdateBatch) -> torch.Tensor:
    return agg.aggregate(batch, {}).update


@st.composite
def matrices(draw, min_n=1, max_n=9, max_d=12, dtype=torch.float64):
    n = draw(st.integers(min_n, max_n))
    d = draw(st.integers(1, max_d))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31)))
    scale = draw(st.sampled_from([1e-3, 1.0, 1e3]))
    u = torch.randn(n, d, generator=g, dtype=torch.float64) * scale
    if draw(st.booleans()):  # many ties: round to a coarse grid
        u = torch.round(u / scale) * scale
    return u.to(dtype)


@st.composite
def rules(draw, n: int):
    """A median, or a trimmed mean with a valid f for ``n`` clients."""
    if draw(st.booleans()):
        return CoordinateMedian()
    return TrimmedMean(f=draw(st.integers(0, (n - 1) // 2)))


# --- known answers ------------------------------------------------------------------------------------

@pytest.mark.parametrize(("values", "expected"), [
    ([1, 2, 3, 10], 2.5),  # even n: mean of the two middles (torch.median would say 2)
    ([5, 1, 4, 2, 3], 3.0),
    ([2, 2, 2, 9], 2.0),
    ([7], 7.0),
    ([-1, 4], 1.5),
])
def test_median_known_answers(values, expected):
    assert run(CoordinateMedian(), make_batch(values)).tolist() == [expected]


@pytest.mark.parametrize(("f", "values", "expected"), [
    (1, [1, 2, 3, 100], 2.5),
    (1, [100, -50, 3, 1, 2], 2.0),
    (2, [100, -50, 3, 1, 2], 2.0),
    (0, [1, 2, 3, 100], 26.5),
    (1, [4, 4, 4, 4], 4.0),
])
def test_trimmed_mean_known_answers(f, values, expected):
    assert run(TrimmedMean(f=f), make_batch(values)).tolist() == [expected]


def test_multi_coordinate_known_answers():
    rows = [[1.0, 10.0, -3.0],
            [4.0, -2.0, -3.0],
            [2.0, 0.0, 8.0],
            [9.0, 6.0, 1.0]]
    b = make_batch(rows)
    # sorted columns: [1,2,4,9], [-2,0,6,10], [-3,-3,1,8]
    assert run(CoordinateMedian(), b).tolist() == [3.0, 3.0, -1.0]
    assert run(TrimmedMean(f=1), b).tolist() == [3.0, 3.0, -1.0]
    assert run(TrimmedMean(f=0), b).tolist() == [4.0, 3.5, 0.75]
    b5 = make_batch([*rows, [0.0, 100.0, 2.0]])
    # sorted columns: [0,1,2,4,9], [-2,0,6,10,100], [-3,-3,1,2,8]
    assert run(CoordinateMedian(), b5).tolist() == [2.0, 6.0, 1.0]
    assert run(TrimmedMean(f=1), b5).tolist() == [7 / 3, 16 / 3, 0.0]
    assert run(TrimmedMean(f=2), b5).tolist() == [2.0, 6.0, 1.0]


# --- properties ---------------------------------------------------------------------------------------

@given(st.data(), matrices())
def test_permutation_invariance_is_exact(data, u):
    agg = data.draw(rules(n=u.shape[0]))
    perm = torch.as_tensor(data.draw(st.permutations(range(u.shape[0]))), dtype=torch.long)
    assert torch.equal(run(agg, make_batch(u)), run(agg, make_batch(u[perm])))


@given(st.data(), matrices(), st.integers(0, 2**31), st.sampled_from([1e-2, 1.0, 1e2]))
def test_translation_equivariance(data, u, seed, scale):
    agg = data.draw(rules(n=u.shape[0]))
    c = torch.randn(u.shape[1], generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * scale
    shifted = run(agg, make_batch(u + c))
    tol = 1e-12 * (float(u.abs().max()) + scale)
    torch.testing.assert_close(shifted, run(agg, make_batch(u)) + c, rtol=0, atol=tol)


@given(matrices())
def test_median_lies_within_coordinate_range(u):
    out = run(CoordinateMedian(), make_batch(u))
    assert (out >= u.min(dim=0).values).all() and (out <= u.max(dim=0).values).all()


@given(matrices())
def test_median_of_odd_n_is_a_client_value_and_splits_them(u):
    out = run(CoordinateMedian(), make_batch(u))
    n = u.shape[0]
    below = (u < out).sum(dim=0)
    above = (u > out).sum(dim=0)
    assert (below <= n // 2).all() and (above <= n // 2).all()
    if n % 2:
        assert (u == out).any(dim=0).all()


@given(matrices())
def test_trimmed_mean_with_f0_is_the_plain_mean(u):
    torch.testing.assert_close(run(TrimmedMean(f=0), make_batch(u)), u.mean(dim=0))


@given(matrices(min_n=3))
def test_trimmed_mean_matches_a_reference(u):
    n = u.shape[0]
    for f in range(0, (n - 1) // 2 + 1):
        expected = torch.sort(u, dim=0).values[f:n - f].mean(dim=0)
        torch.testing.assert_close(run(TrimmedMean(f=f), make_batch(u)), expected)


@given(st.data(), matrices(max_n=6), st.lists(st.integers(1, 1000), min_size=9, max_size=9))
def test_weights_are_ignored(data, u, weights):
    agg = data.draw(rules(n=u.shape[0]))
    n = u.shape[0]
    assert torch.equal(run(agg, make_batch(u)), run(agg, make_batch(u, weights=weights[:n])))


@st.composite
def attacked(draw):
    """Honest rows plus ``k`` attacker rows anywhere (huge, or on both sides), rows shuffled."""
    honest = draw(matrices(min_n=1, max_n=8))
    h, d = honest.shape
    # k < h attackers: the median needs k < n/2 = (h + k)/2; the trimmed mean with f = k needs 2k < h + k.
    k = draw(st.integers(0, h - 1))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31)))
    kind = draw(st.sampled_from(["plus", "minus", "mixed", "random"]))
    if kind == "plus":
        bad = torch.full((k, d), 1e6, dtype=torch.float64)
    elif kind == "minus":
        bad = torch.full((k, d), -1e6, dtype=torch.float64)
    elif kind == "mixed":
        bad = torch.where(torch.rand(k, d, generator=g) < 0.5, 1e6, -1e6).to(torch.float64)
    else:
        bad = torch.randn(k, d, generator=g, dtype=torch.float64) * 1e30
    rows = torch.cat([honest, bad])
    perm = torch.randperm(h + k, generator=g)
    return honest, rows[perm], k


def _within_honest_range(out, honest):
    lo, hi = honest.min(dim=0).values, honest.max(dim=0).values
    slack = 1e-12 * honest.abs().max(dim=0).values
    return bool(((out >= lo - slack) & (out <= hi + slack)).all())


@given(attacked())
def test_median_breakdown(case):
    honest, rows, k = case
    assert 2 * k < rows.shape[0]
    assert _within_honest_range(run(CoordinateMedian(), make_batch(rows)), honest)


@given(attacked())
def test_trimmed_mean_breakdown(case):
    honest, rows, k = case
    assert 2 * k < rows.shape[0]
    assert _within_honest_range(run(TrimmedMean(f=k), make_batch(rows)), honest)


def test_too_little_trimming_breaks_down():
    rows = [1.0, 2.0, 3.0, 1e6, 1e6]
    assert run(TrimmedMean(f=2), make_batch(rows)).item() == 3.0
    assert run(TrimmedMean(f=1), make_batch(rows)).item() > 3.0


# --- dtype, mutation, state ---------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("agg", [CoordinateMedian(), TrimmedMean(f=1), TrimmedMean(f=0)])
def test_dtype_preserved_and_input_not_mutated(agg, dtype):
    u = torch.randn(5, 7, generator=torch.Generator().manual_seed(0)).to(dtype)
    before = u.clone()
    batch = UpdateBatch(u, torch.ones(5, dtype=torch.float64), tuple(range(5)))
    out = agg.aggregate(batch, {"x": torch.zeros(1)})
    assert out.update.dtype == dtype and out.update.shape == (7,)
    assert torch.equal(batch.updates, before) and batch.updates is u
    assert set(out.state) == {"x"} and out.metrics == {}
    expected = run(agg, make_batch(before.double())).to(dtype)
    torch.testing.assert_close(out.update, expected)


def test_non_contiguous_input():
    u = torch.randn(6, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    t = u.t().contiguous().t()  # same values, column-major strides
    assert not t.is_contiguous()
    for agg in (CoordinateMedian(), TrimmedMean(f=2)):
        assert torch.equal(run(agg, make_batch(t)), run(agg, make_batch(u)))


# --- errors and serialization -------------------------------------------------------------------------

def test_trimmed_mean_config_errors():
    with pytest.raises(ConfigError, match=r"f: must be >= 0, got -1"):
        TrimmedMean(f=-1)
    with pytest.raises(ConfigError, match=r"f: must be an integer"):
        TrimmedMean(f=1.5)
    with pytest.raises(ConfigError, match=r"f: must be an integer"):
        TrimmedMean(f=True)


@pytest.mark.parametrize(("f", "n"), [(3, 6), (1, 2), (1, 1), (4, 7)])
def test_trimmed_mean_needs_2f_below_n(f, n):
    with pytest.raises(UpdateError, match=rf"f: trimmed mean needs 2f < n, got f={f}, n={n}"):
        run(TrimmedMean(f=f), make_batch(list(range(n))))


def test_trimmed_mean_largest_valid_f_is_the_median_for_odd_n():
    b = make_batch([[5.0, -1.0], [1.0, 0.0], [4.0, 7.0], [2.0, 2.0], [3.0, 3.0]])
    assert torch.equal(run(TrimmedMean(f=2), b), run(CoordinateMedian(), b))


@pytest.mark.parametrize("agg", [CoordinateMedian(), TrimmedMean(f=0), TrimmedMean(f=3), TrimmedMean()])
def test_round_trip_through_json(agg):
    data = json.loads(json.dumps(agg.to_dict()))
    again = Aggregator.from_dict(data)
    assert again == agg and repr(again) == repr(agg) and type(again) is type(agg)


def test_from_dict_validates_and_names_kinds():
    assert CoordinateMedian().to_dict() == {"kind": "median"}
    assert TrimmedMean(f=2).to_dict() == {"kind": "trimmed-mean", "f": 2}
    with pytest.raises(ConfigError, match=r"f: must be >= 0, got -2"):
        Aggregator.from_dict({"kind": "trimmed-mean", "f": -2})
    with pytest.raises(ConfigError, match=r"unknown field\(s\) f"):
        Aggregator.from_dict({"kind": "median", "f": 1})
