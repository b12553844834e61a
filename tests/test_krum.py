"""Krum, Multi-Krum and the pairwise-distance kernel behind them."""

from __future__ import annotations

import json

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from secagg.aggregation.base import Aggregator, UpdateBatch
from secagg.aggregation.distances import pairwise_sq_distances
from secagg.aggregation.krum import Krum, MultiKrum
from secagg.errors import ConfigError, UpdateError

DTYPES = [torch.float32, torch.float64]


def batch_of(u: torch.Tensor) -> UpdateBatch:
    n = u.shape[0]
    return UpdateBatch(u, torch.ones(n, dtype=torch.float64), tuple(range(n)))


def direct_sq_distances(u: torch.Tensor) -> torch.Tensor:
    """The textbook ``sum((a - b)^2)`` in float64, no Gram matrix."""
    x = u.double()
    return ((x[:, None, :] - x[None, :, :]) ** 2).sum(dim=-1)


def reference_scores(u: torch.Tensor, neighbours: int) -> list[float]:
    """Krum scores the slow, obvious way: per row, sort the distances to the other rows."""
    d = direct_sq_distances(u)
    n = u.shape[0]
    return [sum(sorted(float(d[i, j]) for j in range(n) if j != i)[:neighbours]) for i in range(n)]


@st.composite
def matrices(draw, min_n=1, max_n=8, max_d=12):
    n = draw(st.integers(min_n, max_n))
    d = draw(st.integers(1, max_d))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31)))
    dtype = draw(st.sampled_from(DTYPES))
    scale = draw(st.sampled_from([1e-3, 1.0, 1e3]))
    return (torch.randn(n, d, generator=g, dtype=torch.float64) * scale).to(dtype)


# --- pairwise_sq_distances ------------------------------------------------------------------------


@given(st.integers(1, 9), st.integers(1, 16), st.integers(0, 2**31), st.sampled_from(DTYPES),
       st.sampled_from([1e-3, 1.0]), st.sampled_from(["none", "common", "two-clusters"]),
       st.sampled_from([1e2, 1e4]))
def test_distances_match_direct_float64_even_with_large_offsets(n, d, seed, dtype, noise, layout,
                                                                offset):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=torch.float64) * noise
    if layout == "common":  # every row ~ offset + small noise: a float32 Gram cancels completely
        x = x + offset * torch.randn(d, generator=g, dtype=torch.float64)
    elif layout == "two-clusters":  # re-centring cannot remove both offsets; float64 must carry it
        sign = torch.where(torch.rand(n, generator=g) < 0.5, -1.0, 1.0).double()
        x = x + offset * sign[:, None]
    u = x.to(dtype)
    before = u.clone()
    out = pairwise_sq_distances(u)
    expected = direct_sq_distances(u)
    assert out.dtype == torch.float64 and out.shape == (n, n)
    assert torch.equal(out, out.T) and torch.equal(out.diagonal(), torch.zeros(n, dtype=torch.float64))
    assert bool((out >= 0).all())
    # Float64 rounding of the Gram formula on median-centred rows: a float32 Gram would be ~1e6x
    # further off; skipping the centring would be off by eps * offset^2 in the "common" layout.
    centred = u.double() - u.double().median(dim=0).values
    big = float((centred**2).sum(dim=1).max())
    torch.testing.assert_close(out, expected, rtol=1e-9, atol=1e-13 * big + 1e-300)
    assert torch.equal(u, before)


def test_float32_gram_would_cancel_on_this_input():
    """The large-offset case above is a real test: the naive float32 Gram gets it badly wrong."""
    g = torch.Generator().manual_seed(0)
    u = (1e4 + 1e-1 * torch.randn(6, 8, generator=g, dtype=torch.float64)).float()
    gram = u @ u.T
    naive = gram.diagonal()[:, None] + gram.diagonal()[None, :] - 2 * gram
    expected = direct_sq_distances(u)
    assert float((naive.double() - expected).abs().max()) > 10 * float(expected.max())
    torch.testing.assert_close(pairwise_sq_distances(u), expected, rtol=1e-12, atol=1e-12)


# --- Krum: basic properties -----------------------------------------------------------------------


@given(matrices(min_n=3), st.integers(0, 5), st.data())
def test_krum_returns_one_input_row_with_the_lowest_score(u, f, data):
    n = u.shape[0]
    f = min(f, n - 3)
    k = data.draw(st.one_of(st.none(), st.integers(1, n - 1)))
    before = u.clone()
    out = Krum(f=f, neighbours=k).aggregate(batch_of(u), {})
    sel = int(out.metrics["selected"])
    assert out.update.dtype == u.dtype
    assert torch.equal(out.update, u[sel])
    scores = reference_scores(u, n - f - 2 if k is None else k)
    assert scores[sel] <= min(scores) * (1 + 1e-9) + 1e-12 * max(scores)
    assert out.metrics["score"] == pytest.approx(scores[sel], rel=1e-9, abs=1e-12 * max(scores))
    assert torch.equal(u, before), "Krum must not mutate its input"


@given(matrices(min_n=3), st.integers(0, 5), st.data())
def test_krum_selects_the_same_row_under_permutation(u, f, data):
    n = u.shape[0]
    f = min(f, n - 3)
    perm = torch.tensor(data.draw(st.permutations(range(n))))
    a = Krum(f=f).aggregate(batch_of(u), {}).update
    b = Krum(f=f).aggregate(batch_of(u[perm]), {}).update
    # Genuinely tied rows (e.g. a mutual nearest pair when neighbours=1) may swap with the order;
    # otherwise the chosen row must be the same one.
    scores = reference_scores(u, n - f - 2)
    best = min(scores)
    tied = [i for i, s in enumerate(scores) if s <= best * (1 + 1e-9) + 1e-12 * max(scores)]
    if len(tied) == 1:
        assert torch.equal(a, b) and torch.equal(a, u[tied[0]])
    else:
        assert any(torch.equal(a, u[i]) for i in tied) and any(torch.equal(b, u[i]) for i in tied)


@given(matrices(min_n=3), st.integers(0, 5), st.integers(0, 2**31), st.sampled_from([1.0, 10.0]))
def test_krum_is_translation_equivariant(u, f, seed, shift):
    n = u.shape[0]
    f = min(f, n - 3)
    u = u.double()
    c = torch.randn(u.shape[1], generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    c = c * shift * float(u.abs().max())
    plain = Krum(f=f).aggregate(batch_of(u), {})
    moved = Krum(f=f).aggregate(batch_of(u + c), {})
    assert moved.metrics["selected"] == plain.metrics["selected"]
    torch.testing.assert_close(moved.update, plain.update + c)


# --- robustness: f far-away attackers never get through --------------------------------------------


@st.composite
def attacked(draw):
    """(updates, honest mask, f): n >= 2f + 3, the f attackers far from the honest cluster."""
    f = draw(st.integers(1, 3))
    honest = draw(st.integers(f + 3, f + 7))
    d = draw(st.integers(1, 8))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31)))
    far = draw(st.sampled_from([1e3, 1e5]))
    mode = draw(st.sampled_from(["identical", "tight-cluster", "scattered"]))
    h = torch.randn(honest, d, generator=g, dtype=torch.float64)
    direction = torch.nn.functional.normalize(torch.randn(d, generator=g, dtype=torch.float64), dim=0)
    if mode == "identical":
        bad = (far * direction).expand(f, d).clone()
    elif mode == "tight-cluster":
        bad = far * direction + 1e-3 * torch.randn(f, d, generator=g, dtype=torch.float64)
    else:  # each attacker somewhere else, all at least `far` away
        dirs = torch.nn.functional.normalize(torch.randn(f, d, generator=g, dtype=torch.float64), dim=1)
        bad = dirs * far * (1 + torch.rand(f, 1, generator=g, dtype=torch.float64) * 9)
    u = torch.cat([h, bad])
    mask = torch.cat([torch.ones(honest, dtype=torch.bool), torch.zeros(f, dtype=torch.bool)])
    perm = torch.tensor(draw(st.permutations(range(honest + f))))
    return u[perm], mask[perm], f


@given(attacked())
def test_krum_never_selects_a_far_attacker(case):
    u, honest, f = case
    out = Krum(f=f).aggregate(batch_of(u), {})
    sel = int(out.metrics["selected"])
    assert bool(honest[sel]), f"Krum picked attacker row {sel}"
    assert any(torch.equal(out.update, row) for row in u[honest])


@given(attacked(), st.data())
def test_multi_krum_averages_only_honest_rows(case, data):
    u, honest, f = case
    n = u.shape[0]
    m = data.draw(st.integers(1, n - 2 * f))
    out = MultiKrum(f=f, m=m).aggregate(batch_of(u), {}).update
    scores = torch.tensor(reference_scores(u, n - f - 2))
    chosen = torch.sort(scores, stable=True).indices[:m]
    assert bool(honest[chosen].all())
    torch.testing.assert_close(out, u[chosen.sort().values].mean(dim=0))
    lo, hi = u[honest].min(dim=0).values, u[honest].max(dim=0).values
    assert bool(((out >= lo - 1e-12) & (out <= hi + 1e-12)).all())


# --- known answers and ties ------------------------------------------------------------------------


def col(values: list[float], dtype: torch.dtype = torch.float64) -> torch.Tensor:
    return torch.tensor(values, dtype=dtype)[:, None]


@pytest.mark.parametrize("dtype", DTYPES)
def test_krum_known_answers(dtype):
    # [0, 1, 2, 100], f=1, neighbours = n - f - 2 = 1: scores 1, 1, 1, 98^2 -> tie, lowest index 0.
    out = Krum(f=1).aggregate(batch_of(col([0, 1, 2, 100], dtype)), {})
    assert out.metrics == {"selected": 0.0, "score": 1.0}
    # neighbours=2 (the n - f - 1 convention): scores 1+4, 1+1, 1+4, 98^2+99^2 -> row 1.
    out = Krum(f=1, neighbours=2).aggregate(batch_of(col([0, 1, 2, 100], dtype)), {})
    assert out.metrics == {"selected": 1.0, "score": 2.0}
    assert out.update.dtype == dtype and out.update.tolist() == [1.0]
    # [0, 1, 2, 3, 100], f=1, neighbours=2: scores 5, 2, 2, 5, 97^2+98^2 -> tie of 1 and 2 -> 1.
    u = col([0, 1, 2, 3, 100], dtype)
    out = Krum(f=1).aggregate(batch_of(u), {})
    assert out.metrics == {"selected": 1.0, "score": 2.0}
    # the same rows in another order: the tie now goes to the lower index, which holds 2.
    out = Krum(f=1).aggregate(batch_of(col([100, 3, 2, 1, 0], dtype)), {})
    assert out.metrics == {"selected": 2.0, "score": 2.0} and out.update.tolist() == [2.0]
    # Multi-Krum on the same: m = n - f = 4 keeps 0..3; m = 3 breaks the 5-5 tie towards row 0.
    assert MultiKrum(f=1).aggregate(batch_of(u), {}).update.tolist() == [1.5]
    assert MultiKrum(f=1, m=3).aggregate(batch_of(u), {}).update.tolist() == [1.0]
    assert MultiKrum(f=1, m=2).aggregate(batch_of(u), {}).update.tolist() == [1.5]


def test_krum_known_answer_in_two_dimensions():
    # Unit square corners, its centre and a far point; f=2, neighbours = 6 - 2 - 2 = 2. A corner's
    # two nearest are the centre (0.5) and a side (1) -> 1.5; the centre has four at 0.5 -> 1.
    u = torch.tensor([[0, 0], [1, 0], [0, 1], [0.5, 0.5], [1, 1], [50, 50]], dtype=torch.float64)
    out = Krum(f=2).aggregate(batch_of(u), {})
    assert out.metrics == {"selected": 3.0, "score": 1.0}


def test_all_equal_rows_select_index_zero():
    u = torch.ones(6, 3)
    assert Krum(f=1).aggregate(batch_of(u), {}).metrics["selected"] == 0.0
    torch.testing.assert_close(MultiKrum(f=1).aggregate(batch_of(u), {}).update, torch.ones(3))


# --- Multi-Krum edges --------------------------------------------------------------------------------


@given(matrices(min_n=3), st.integers(0, 5))
def test_multi_krum_extremes_are_mean_and_krum(u, f):
    n = u.shape[0]
    f = min(f, n - 3)
    before = u.clone()
    everything = MultiKrum(f=f, m=n).aggregate(batch_of(u), {})
    assert everything.update.dtype == u.dtype
    assert torch.equal(everything.update, u.mean(dim=0))
    assert everything.metrics == {"selected_count": float(n), "rejected_count": 0.0}
    one = MultiKrum(f=f, m=1).aggregate(batch_of(u), {}).update
    assert torch.equal(one, Krum(f=f).aggregate(batch_of(u), {}).update)
    assert torch.equal(u, before), "Multi-Krum must not mutate its input"


# --- errors and serialization ----------------------------------------------------------------------


def test_too_few_updates_for_f():
    with pytest.raises(UpdateError, match=r"f: Krum needs n >= f \+ 3, got n=4, f=2"):
        Krum(f=2).aggregate(batch_of(torch.randn(4, 3)), {})
    with pytest.raises(UpdateError, match=r"f: Krum needs n >= f \+ 3, got n=2, f=0"):
        MultiKrum(f=0).aggregate(batch_of(torch.randn(2, 3)), {})
    Krum(f=2).aggregate(batch_of(torch.randn(5, 3)), {})  # the bound itself is fine


def test_out_of_range_m_and_neighbours():
    batch = batch_of(torch.randn(5, 3))
    with pytest.raises(UpdateError, match=r"m: must be <= n = 5, got 6"):
        MultiKrum(f=1, m=6).aggregate(batch, {})
    MultiKrum(f=1, m=5).aggregate(batch, {})
    with pytest.raises(UpdateError, match=r"neighbours: must be <= n - 1 = 4 for n=5, got 5"):
        Krum(f=1, neighbours=5).aggregate(batch, {})
    with pytest.raises(UpdateError, match=r"neighbours: must be <= n - 1 = 4 for n=5, got 5"):
        MultiKrum(f=1, neighbours=5).aggregate(batch, {})
    Krum(f=1, neighbours=4).aggregate(batch, {})


@pytest.mark.parametrize(("make", "message"), [
    (lambda: Krum(f=-1), r"f: must be >= 0, got -1"),
    (lambda: Krum(f=True), r"f: must be an integer, got True"),
    (lambda: Krum(f=1.5), r"f: must be an integer, got 1.5"),
    (lambda: Krum(neighbours=0), r"neighbours: must be >= 1, got 0"),
    (lambda: MultiKrum(m=0), r"m: must be >= 1, got 0"),
    (lambda: MultiKrum(m="3"), r"m: must be an integer, got '3'"),
    (lambda: MultiKrum(neighbours=-2), r"neighbours: must be >= 1, got -2"),
])
def test_bad_config_is_a_config_error(make, message):
    with pytest.raises(ConfigError, match=message):
        make()


@pytest.mark.parametrize("agg", [
    Krum(), Krum(f=3), Krum(f=2, neighbours=4), MultiKrum(), MultiKrum(f=2, m=5),
    MultiKrum(f=0, m=1, neighbours=2),
])
def test_round_trip_through_json(agg):
    again = Aggregator.from_dict(json.loads(json.dumps(agg.to_dict())))
    assert again == agg and type(again) is type(agg) and repr(again) == repr(agg)


def test_from_dict_validates():
    assert Krum(f=2).to_dict() == {"kind": "krum", "f": 2, "neighbours": None}
    assert MultiKrum(f=1, m=3).to_dict() == {"kind": "multi-krum", "f": 1, "m": 3, "neighbours": None}
    with pytest.raises(ConfigError, match=r"m: must be >= 1, got 0"):
        Aggregator.from_dict({"kind": "multi-krum", "f": 1, "m": 0})
    with pytest.raises(ConfigError, match=r"unknown field\(s\) m"):
        Aggregator.from_dict({"kind": "krum", "f": 1, "m": 2})
