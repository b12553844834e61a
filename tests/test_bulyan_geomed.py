"""Bulyan (El Mhamdi et al. 2018) and the smoothed-Weiszfeld geometric median (RFA, Pillutla et al.)."""

from __future__ import annotations

import json

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from secagg.aggregation.base import Aggregator, UpdateBatch
from secagg.aggregation.bulyan import Bulyan, iterated_krum
from secagg.aggregation.geomed import GeometricMedian
from secagg.errors import ConfigError, UpdateError


def make_batch(rows, weights=None, dtype=torch.float64) -> UpdateBatch:
    u = torch.as_tensor(rows, dtype=dtype)
    n = u.shape[0]
    w = torch.ones(n) if weights is None else torch.as_tensor(weights)
    w = w.to(torch.float64)
    return UpdateBatch(u, w, tuple(range(n)))


def run(agg: Aggregator, batch: UpdateBatch) -> torch.Tensor:
    return agg.aggregate(batch, {}).update


def randn(seed: int, *shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def objective(u: torch.Tensor, z: torch.Tensor) -> float:
    return float(torch.linalg.vector_norm(u - z, dim=1).sum())


# ---------------------------------------------------------------- Bulyan


@given(f=st.integers(0, 2), extra=st.integers(0, 4), d=st.integers(1, 6), seed=st.integers(0, 2**31),
       perm_seed=st.integers(0, 2**31))
def test_bulyan_permutation_invariant(f, extra, d, seed, perm_seed):
    n = 4 * f + 3 + extra
    u = randn(seed, n, d)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(perm_seed))
    assert torch.equal(run(Bulyan(f=f), make_batch(u)), run(Bulyan(f=f), make_batch(u[perm])))


@given(f=st.integers(0, 2), extra=st.integers(0, 3), d=st.integers(1, 5), seed=st.integers(0, 2**31))
def test_bulyan_translation_equivariant(f, extra, d, seed):
    n = 4 * f + 3 + extra
    u = randn(seed, n, d)
    c = randn(seed + 1, d) * 10
    assert torch.allclose(run(Bulyan(f=f), make_batch(u + c)), run(Bulyan(f=f), make_batch(u)) + c,
                          atol=1e-9)


@given(f=st.integers(1, 3), extra=st.integers(0, 3), d=st.integers(1, 5), seed=st.integers(0, 2**31),
       scale=st.sampled_from([1e2, 1e6, 1e9]), colluding=st.booleans())
def test_bulyan_stays_in_honest_hull(f, extra, d, seed, scale, colluding):
    n = 4 * f + 3 + extra
    honest = randn(seed, n - f, d)
    if colluding:  # all attackers on one far point: the strongest case against the Krum stage
        attackers = randn(seed + 1, 1, d).sign().expand(f, d) * scale
    else:
        attackers = randn(seed + 1, f, d) * scale
    u = torch.cat([attackers, honest])
    out = run(Bulyan(f=f), make_batch(u))
    lo, hi = honest.min(dim=0).values, honest.max(dim=0).values
    assert bool(((out >= lo - 1e-12) & (out <= hi + 1e-12)).all())


def test_bulyan_known_answer_and_metrics():
    # f = 1, n = 7: theta = 5, beta = 3. The far row 100 is never selected by iterated Krum.
    rows = [[0.0], [1.0], [2.0], [3.0], [4.0], [5.0], [100.0]]
    chosen = iterated_krum(torch.tensor(rows, dtype=torch.float64), f=1, count=5)
    assert 6 not in chosen and len(set(chosen)) == 5
    res = Bulyan(f=1).aggregate(make_batch(rows), {})
    assert res.metrics == {"selected_count": 5.0, "kept_count": 3.0}
    # selected set is 5 of {0..5}; its 3 values closest to the median average to the median here
    sel = sorted(rows[i][0] for i in chosen)
    assert res.update.item() == pytest.approx(sum(sel[1:4]) / 3)


def test_bulyan_closest_to_median_rule_not_symmetric_trim():
    # f = 1, n = 7: theta = 5, beta = 3. Iterated Krum selects {0, 0.1, 0.2, 2.0, 50}; their median is
    # 0.2 and the 3 values closest to it are {0, 0.1, 0.2} -> 0.1. Dropping the largest and smallest
    # instead would keep {0.1, 0.2, 2.0} -> 0.7667.
    rows = [[0.0], [0.1], [0.2], [2.0], [2.05], [50.0], [60.0]]
    chosen = sorted(iterated_krum(torch.tensor(rows, dtype=torch.float64), f=1, count=5))
    assert chosen == [0, 1, 2, 3, 5]
    assert run(Bulyan(f=1), make_batch(rows)).item() == pytest.approx(0.1)


def test_bulyan_f0_is_mean():
    u = randn(3, 5, 4)
    assert torch.allclose(run(Bulyan(f=0), make_batch(u)), u.mean(dim=0))


def test_bulyan_errors():
    with pytest.raises(UpdateError, match=r"n >= 4f \+ 3, got n=6, f=1"):
        Bulyan(f=1).aggregate(make_batch(randn(0, 6, 2)), {})
    with pytest.raises(UpdateError, match=r"n=10, f=2"):
        Bulyan(f=2).aggregate(make_batch(randn(0, 10, 2)), {})
    Bulyan(f=2).aggregate(make_batch(randn(0, 11, 2)), {})  # the bound itself is fine
    with pytest.raises(ConfigError, match="f: must be >= 0"):
        Bulyan(f=-1)
    with pytest.raises(ConfigError, match="f: must be an integer"):
        Bulyan(f=1.5)  # type: ignore[arg-type]


# ---------------------------------------------------------------- geometric median


def test_geomed_three_collinear_points_is_middle():
    out = run(GeometricMedian(), make_batch([[0.0, 0.0], [1.0, 0.0], [10.0, 0.0]]))
    assert torch.allclose(out, torch.tensor([1.0, 0.0], dtype=torch.float64), atol=1e-5)


def test_geomed_square_corners_is_center():
    corners = torch.tensor([[1.0, 1.0], [1.0, -1.0], [-1.0, 1.0], [-1.0, -1.0]], dtype=torch.float64)
    c = torch.tensor([3.0, -2.0], dtype=torch.float64)
    out = run(GeometricMedian(), make_batch(corners + c))
    assert torch.allclose(out, c, atol=1e-9)


def test_geomed_weighted_majority_point_wins():
    rows = [[0.0, 0.0], [1.0, 0.0], [10.0, 0.0]]
    out = run(GeometricMedian(), make_batch(rows, weights=[1.0, 1.0, 5.0]))
    assert torch.allclose(out, torch.tensor([10.0, 0.0], dtype=torch.float64), atol=1e-5)
    out = run(GeometricMedian(weighted=False), make_batch(rows, weights=[1.0, 1.0, 5.0]))
    assert torch.allclose(out, torch.tensor([1.0, 0.0], dtype=torch.float64), atol=1e-5)


def test_geomed_beats_mean_on_objective_with_outlier():
    u = torch.cat([randn(5, 9, 4), torch.full((1, 4), 1e3, dtype=torch.float64)])
    z = run(GeometricMedian(), make_batch(u))
    assert objective(u, z) < objective(u, u.mean(dim=0)) - 1.0
    # and it is (close to) a minimiser: small perturbations do not improve it
    for seed in range(5):
        assert objective(u, z) <= objective(u, z + 1e-3 * randn(100 + seed, 4)) + 1e-9


@given(n_honest=st.integers(2, 8), d=st.integers(1, 5), seed=st.integers(0, 2**31),
       scale=st.sampled_from([1e3, 1e6, 1e9]), data=st.data())
def test_geomed_far_attackers_bounded(n_honest, d, seed, scale, data):
    f = data.draw(st.integers(1, (n_honest - 1)))  # strict minority: f < n / 2
    honest = randn(seed, n_honest, d)
    attackers = randn(seed + 1, f, d) * scale
    out = run(GeometricMedian(), make_batch(torch.cat([honest, attackers])))
    center = honest.mean(dim=0)
    r = float(torch.linalg.vector_norm(honest - center, dim=1).max())
    alpha = f / (n_honest + f)
    # exact minimiser z: F(z) <= F(center) and the triangle inequality give (1 - 2a)|z - c| <= (2 - 2a) r
    bound = (2 - 2 * alpha) / (1 - 2 * alpha) * r
    assert float(torch.linalg.vector_norm(out - center)) <= bound + 1e-6


@given(n=st.integers(1, 8), d=st.integers(1, 5), seed=st.integers(0, 2**31), perm_seed=st.integers(0, 2**31))
def test_geomed_permutation_invariant_and_translation_equivariant(n, d, seed, perm_seed):
    u = randn(seed, n, d)
    w = randn(seed + 2, n).abs() + 0.1
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(perm_seed))
    agg = GeometricMedian(tol=1e-12, max_iter=1000)
    base = run(agg, make_batch(u, w))
    assert torch.allclose(run(agg, make_batch(u[perm], w[perm])), base, atol=1e-6)
    c = randn(seed + 3, d) * 5
    assert torch.allclose(run(agg, make_batch(u + c, w)), base + c, atol=1e-6)


def test_geomed_max_iter_respected():
    u = torch.cat([randn(7, 6, 3), torch.full((1, 3), 50.0, dtype=torch.float64)])
    res = GeometricMedian(tol=1e-15, max_iter=3).aggregate(make_batch(u), {})
    assert res.metrics == {"iterations": 3.0, "converged": 0.0}
    # one step by hand from the mean
    z = u.mean(dim=0)
    b = 1.0 / torch.linalg.vector_norm(u - z, dim=1)
    expected = (b @ u) / b.sum()
    assert torch.allclose(run(GeometricMedian(max_iter=1), make_batch(u)), expected, atol=1e-12)
    res = GeometricMedian(max_iter=1000).aggregate(make_batch(u), {})
    assert res.metrics["converged"] == 1.0 and 1 < res.metrics["iterations"] < 1000


def test_geomed_float32_dtype_and_zero_weight_error():
    u = randn(1, 5, 3).to(torch.float32)
    assert run(GeometricMedian(), make_batch(u, dtype=torch.float32)).dtype == torch.float32
    with pytest.raises(UpdateError, match="total weight > 0"):
        GeometricMedian().aggregate(make_batch(u, weights=[0.0] * 5), {})
    GeometricMedian(weighted=False).aggregate(make_batch(u, weights=[0.0] * 5), {})


@pytest.mark.parametrize("kwargs, match", [
    ({"eps": 0.0}, "eps: must be > 0"),
    ({"eps": -1.0}, "eps: must be > 0"),
    ({"tol": 0.0}, "tol: must be > 0"),
    ({"tol": float("nan")}, "tol: must be a finite number"),
    ({"max_iter": 0}, "max_iter: must be >= 1"),
    ({"max_iter": 2.0}, "max_iter: must be an integer"),
    ({"weighted": 1}, "weighted: must be a bool"),
])
def test_geomed_bad_params(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        GeometricMedian(**kwargs)


# ---------------------------------------------------------------- shared


@pytest.mark.parametrize("agg", [Bulyan(f=1), Bulyan(f=0), GeometricMedian(),
                                 GeometricMedian(eps=1e-3, tol=1e-4, max_iter=7, weighted=False)])
def test_json_round_trip(agg):
    data = json.loads(json.dumps(agg.to_dict()))
    assert data["kind"] == agg.kind
    assert Aggregator.from_dict(data) == agg


@pytest.mark.parametrize("agg", [Bulyan(f=1), GeometricMedian()])
def test_no_input_mutation(agg):
    u = torch.cat([randn(9, 9, 4), torch.full((1, 4), 1e6, dtype=torch.float64)])
    w = torch.arange(1.0, 11.0, dtype=torch.float64)
    batch = make_batch(u, w)
    u0, w0 = batch.updates.clone(), batch.weights.clone()
    state = {"x": torch.ones(2)}
    res = agg.aggregate(batch, state)
    assert torch.equal(batch.updates, u0) and torch.equal(batch.weights, w0)
    assert set(state) == {"x"} and torch.equal(state["x"], torch.ones(2))
    assert res.update.data_ptr() != batch.updates.data_ptr()


@given(f=st.integers(1, 3), extra=st.integers(0, 3), d=st.integers(1, 5), seed=st.integers(0, 2**31),
       scale=st.sampled_from([1e3, 1e6]))
def test_iterated_krum_never_selects_spread_out_far_attackers(f, extra, d, seed, scale):
    n = 4 * f + 3 + extra
    a = randn(seed + 1, f, d)
    # far by construction: every attacker coordinate has magnitude >= scale (a plain randn * scale drew
    # a coordinate of 0.0005 * 1000 once, inside the honest cloud, and the attacker was rightly chosen)
    attackers = scale * (1 + a.abs()) * torch.where(a < 0, -1.0, 1.0)
    u = torch.cat([attackers, randn(seed, n - f, d)])  # attackers are rows < f
    chosen = iterated_krum(u, f, n - 2 * f)
    assert len(set(chosen)) == n - 2 * f and min(chosen) >= f


def _reference_bulyan(u: torch.Tensor, f: int) -> torch.Tensor:
    """Per-coordinate loop over the iterated-Krum selection: the beta values closest to the median."""
    theta = u.shape[0] - 2 * f
    beta = theta - 2 * f
    sel = u[iterated_krum(u, f, theta)]
    out = []
    for j in range(u.shape[1]):
        vals = sorted(sel[:, j].tolist())
        med = vals[theta // 2] if theta % 2 else (vals[theta // 2 - 1] + vals[theta // 2]) / 2
        out.append(sum(sorted(vals, key=lambda x, m=med: (abs(x - m), x))[:beta]) / beta)
    return torch.tensor(out, dtype=torch.float64)


@given(f=st.integers(0, 2), extra=st.integers(0, 4), d=st.integers(1, 5), seed=st.integers(0, 2**31),
       outliers=st.booleans())
def test_bulyan_matches_reference(f, extra, d, seed, outliers):
    n = 4 * f + 3 + extra
    u = randn(seed, n, d)
    if outliers:
        u[:f] *= 100
    assert torch.allclose(run(Bulyan(f=f), make_batch(u)), _reference_bulyan(u, f), atol=1e-12)
