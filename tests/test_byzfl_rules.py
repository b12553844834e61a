"""The rules ByzFL also has: conformance with ByzFL 0.0.11, validation, invariants, composition.

Conformance runs the real ByzFL (``pip install --no-deps byzfl==0.0.11``) on small float32 stacks;
without it those tests fail with the install command (they never skip). ByzFL computes in float32,
so outputs are compared within float32 tolerances; where ByzFL leaves exact ties to
``argpartition``/``topk`` (an arbitrary pick), ours must be one valid reading of the rule and ByzFL's
another. Also covered: the float32-Gram path of Krum/Multi-Krum (exact-where-it-matters) against the
exact path, and the two Weiszfeld paths of the geometric median against each other.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
from collections.abc import Iterator
from types import ModuleType

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from secagg.aggregation import (
    AdaptiveRobustClipping,
    Aggregator,
    CenteredClipping,
    CoordinateMedian,
    GeometricMedian,
    Krum,
    Meamed,
    Mean,
    MinimumDiameterAveraging,
    MoNNA,
    MultiKrum,
    NearestNeighbourMixing,
    TrimmedMean,
    UpdateBatch,
)
from secagg.aggregation import columns as columns_module
from secagg.aggregation import distances as distances_module
from secagg.aggregation import geomed as geomed_module
from secagg.aggregation.arc import arc_clip_count
from secagg.aggregation.distances import bounded_sq_distances, pairwise_sq_distances
from secagg.aggregation.mda import min_diameter_subset, search_size
from secagg.aggregation.meamed import closest_to_median_rows
from secagg.errors import ConfigError, UpdateError
from secagg.testing.byzfl import ByzFL, load_byzfl_aggregators

SETTINGS = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def byzfl() -> ByzFL:
    """ByzFL's aggregators, or a failure (not a skip) naming the install command."""
    try:
        return load_byzfl_aggregators()
    except ImportError as exc:
        pytest.fail(f"the ByzFL conformance tests need ByzFL: {exc}", pytrace=False)


def batch_of(u: torch.Tensor, weights: torch.Tensor | None = None) -> UpdateBatch:
    n = u.shape[0]
    w = torch.ones(n, dtype=torch.float64) if weights is None else weights
    return UpdateBatch(u, w, tuple(range(n)))


def run(agg: Aggregator, u: torch.Tensor) -> torch.Tensor:
    return agg.aggregate(batch_of(u), agg.init_state(u.shape[1])).update


def as64(x) -> torch.Tensor:
    return torch.as_tensor(np.asarray(x), dtype=torch.float64)


def close(ours: torch.Tensor, ref, scale: float = 1.0) -> bool:
    """Within float32 rounding of the inputs' scale (ByzFL computes in float32)."""
    return bool(torch.allclose(ours.double(), as64(ref), rtol=1e-4, atol=1e-5 * scale))


@st.composite
def stacks(draw, min_n: int = 1, max_n: int = 10, max_d: int = 6, grid: bool | None = None):
    """A float32 (n, d) stack: standard normal times a scale, or small integers (many ties)."""
    n = draw(st.integers(min_n, max_n))
    d = draw(st.integers(1, max_d))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31)))
    if grid if grid is not None else draw(st.booleans()):
        return torch.randint(-3, 4, (n, d), generator=g).float()
    return torch.randn(n, d, generator=g) * draw(st.sampled_from([1e-2, 1.0, 1e2]))


def scale_of(u: torch.Tensor) -> float:
    return max(1.0, float(u.abs().max()))


@contextlib.contextmanager
def patched(*changes: tuple[ModuleType, str, object]) -> Iterator[None]:
    """Set module constants for the block (hypothesis and function-scoped monkeypatch do not mix)."""
    saved = [(module, name, getattr(module, name)) for module, name, _ in changes]
    try:
        for module, name, value in changes:
            setattr(module, name, value)
        yield
    finally:
        for module, name, value in saved:
            setattr(module, name, value)


# --- conformance with ByzFL ------------------------------------------------------------------------


@SETTINGS
@given(stacks())
def test_median_matches_byzfl(u):
    ref = byzfl().aggregators.Median()
    ours = run(CoordinateMedian(), u)
    assert close(ours, ref(u.clone()), scale_of(u)) and close(ours, ref(u.numpy().copy()), scale_of(u))


@SETTINGS
@given(stacks(), st.data())
def test_trimmed_mean_matches_byzfl(u, data):
    f = data.draw(st.integers(0, (u.shape[0] - 1) // 2))
    ref = byzfl().aggregators.TrMean(f=f)
    ours = run(TrimmedMean(f=f), u)
    assert close(ours, ref(u.clone()), scale_of(u)) and close(ours, ref(u.numpy().copy()), scale_of(u))


def _scores(u: torch.Tensor, k: int) -> torch.Tensor:
    d = pairwise_sq_distances(u)
    d.fill_diagonal_(float("inf"))
    return d.topk(k, dim=1, largest=False).values.sum(dim=1)


@SETTINGS
@given(stacks(min_n=2, grid=False), st.data())
def test_krum_and_multi_krum_match_byzfl_with_its_neighbour_count(u, data):
    n = u.shape[0]
    f = data.draw(st.integers(0, (n - 1) // 2))
    k = n - f - 1  # ByzFL's convention (the paper's is n - f - 2)
    if k < 1:
        return
    agg = byzfl().aggregators
    ours = run(Krum(f=f, neighbours=k), u)
    theirs = agg.Krum(f=f)(u.clone())
    scores = _scores(u, k)
    if not torch.equal(ours, theirs):  # only a near-tie in ByzFL's float32 scores may differ
        pick = next(i for i in range(n) if torch.equal(u[i], theirs))
        assert float(scores[pick]) <= float(scores.min()) * (1 + 1e-5)
    ours_m = run(MultiKrum(f=f, neighbours=k), u)
    theirs_m = agg.MultiKrum(f=f)(u.clone())
    if not close(ours_m, theirs_m, scale_of(u)):
        ranked = torch.sort(scores).values
        assert n - f < n and float(ranked[n - f]) <= float(ranked[n - f - 1]) * (1 + 1e-5)


@SETTINGS
@given(stacks(grid=False), st.integers(1, 12), st.sampled_from([0.1, 1e-3]))
def test_geometric_median_matches_byzfl_from_zero(u, steps, nu):
    ref = byzfl().aggregators.GeometricMedian(nu=nu, T=steps)
    ours = run(GeometricMedian(eps=nu, max_iter=steps, tol=1e-300, weighted=False, init="zero"), u)
    assert close(ours, ref(u.clone()), scale_of(u))


def _meamed_extremes(u: torch.Tensor, f: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per coordinate, the mean of the n - f values closest to the median with distance ties broken
    towards the smaller values, and towards the larger: every valid reading lies between the two."""
    n, d = u.shape
    x = u.double()
    med = x.median(dim=0).values if n % 2 else torch.sort(x, dim=0).values[n // 2 - 1:n // 2 + 1].mean(0)
    lo, hi = torch.empty(d, dtype=torch.float64), torch.empty(d, dtype=torch.float64)
    for j in range(d):
        col = x[:, j].tolist()
        dist = [abs(v - float(med[j])) for v in col]
        small = sorted(range(n), key=lambda i: (dist[i], col[i]))[:n - f]
        large = sorted(range(n), key=lambda i: (dist[i], -col[i]))[:n - f]
        lo[j] = sum(col[i] for i in small) / (n - f)
        hi[j] = sum(col[i] for i in large) / (n - f)
    return lo, hi


@SETTINGS
@given(stacks(), st.data())
def test_meamed_matches_byzfl_and_breaks_ties_towards_smaller_values(u, data):
    n = u.shape[0]
    f = data.draw(st.integers(0, (n - 1) // 2))
    ours = run(Meamed(f=f), u).double()
    smaller, larger = _meamed_extremes(u, f)
    tol = 1e-5 * scale_of(u)
    torch.testing.assert_close(ours, smaller, rtol=1e-5, atol=tol)
    ref = byzfl().aggregators.Meamed(f=f)
    for theirs in (as64(ref(u.clone())), as64(ref(u.numpy().copy()))):
        lo, hi = torch.minimum(smaller, larger), torch.maximum(smaller, larger)
        assert bool(((theirs >= lo - tol) & (theirs <= hi + tol)).all())


@SETTINGS
@given(stacks(grid=False), st.data())
def test_monna_matches_byzfl(u, data):
    n = u.shape[0]
    f = data.draw(st.integers(0, (n - 1) // 2))
    pivot = data.draw(st.integers(0, n - 1))
    ours = run(MoNNA(f=f, pivot=pivot), u)
    ref = byzfl().aggregators.MoNNA(f=f, idx=pivot)
    assert close(ours, ref(u.clone()), scale_of(u)) and close(ours, ref(u.numpy().copy()), scale_of(u))


@SETTINGS
@given(stacks(), st.data())
def test_arc_matches_byzfl(u, data):
    n = u.shape[0]
    f = data.draw(st.integers(0, n - 1))
    byz = byzfl()
    rule = AdaptiveRobustClipping(f=f, inner=Mean(weighted=False))
    clipped_theirs = byz.preaggregators.ARC(f=f)(u.clone())  # ByzFL clips its input in place
    assert close(rule.clip(u), clipped_theirs, scale_of(u))
    assert close(run(rule, u), byz.aggregators.Average()(clipped_theirs), scale_of(u))


@SETTINGS
@given(stacks(min_n=1, max_n=9, grid=False), st.data())
def test_mda_matches_byzfl(u, data):
    n = u.shape[0]
    f = data.draw(st.integers(0, (n - 1) // 2))
    if n - f < 2:
        return  # ByzFL takes the max over no pairs there and fails; ours returns the row
    ours = run(MinimumDiameterAveraging(f=f), u)
    assert close(ours, byzfl().aggregators.MDA(f=f)(u.clone()), scale_of(u))


@SETTINGS
@given(stacks(grid=False), st.data())
def test_nnm_matches_byzfl(u, data):
    n = u.shape[0]
    f = data.draw(st.integers(0, n - 1))
    ours = NearestNeighbourMixing(f=f).mix(u)
    assert close(ours, byzfl().preaggregators.NNM(f=f)(u.clone()), scale_of(u))


@SETTINGS
@given(stacks(grid=False), st.integers(1, 3), st.sampled_from([0.5, 100.0]))
def test_centered_clipping_matches_byzfl_from_zero(u, steps, tau):
    ours = run(CenteredClipping(tau=tau, iterations=steps), u)
    theirs = byzfl().aggregators.CenteredClipping(L=steps, tau=tau)(u.clone())
    assert close(ours, theirs, scale_of(u))


def test_arc_clip_count_follows_byzfl_rounding():
    assert arc_clip_count(121, 66) == 59 and arc_clip_count(121, 66, "exact") == 60
    assert arc_clip_count(10, 1) == 1 and arc_clip_count(10, 0) == 0 and arc_clip_count(4, 2) == 2
    for n in range(1, 60):
        for f in range(n):
            assert arc_clip_count(n, f) == int((2 * f / n) * (n - f))
            assert arc_clip_count(n, f, "exact") == 2 * f * (n - f) // n


def test_missing_byzfl_raises_with_the_install_command(monkeypatch):
    import importlib.util
    import sys

    monkeypatch.delitem(sys.modules, "byzfl", raising=False)
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    with pytest.raises(ImportError, match=r"pip install --no-deps byzfl==0\.0\.11"):
        load_byzfl_aggregators()


# --- validation ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("make", "error", "message"), [
    (lambda: Meamed(f=-1), ConfigError, r"f: must be >= 0, got -1"),
    (lambda: Meamed(f=1.0), ConfigError, r"f: must be an integer, got 1.0"),
    (lambda: MoNNA(pivot=-1), ConfigError, r"pivot: must be >= 0, got -1"),
    (lambda: MoNNA(f=True), ConfigError, r"f: must be an integer, got True"),
    (lambda: AdaptiveRobustClipping(f=-2), ConfigError, r"f: must be >= 0, got -2"),
    (lambda: AdaptiveRobustClipping(rounding="round"), ConfigError,
     r"rounding: must be one of 'float', 'exact'"),
    (lambda: AdaptiveRobustClipping(inner="mean"), ConfigError, r"inner: expected an Aggregator, got str"),
    (lambda: MinimumDiameterAveraging(max_subsets=0), ConfigError, r"max_subsets: must be >= 1, got 0"),
    (lambda: MinimumDiameterAveraging(f=-1), ConfigError, r"f: must be >= 0, got -1"),
    (lambda: GeometricMedian(init="median"), ConfigError, r"init: must be one of 'mean', 'zero'"),
])
def test_bad_config_names_field_and_bound(make, error, message):
    with pytest.raises(error, match=message):
        make()


@pytest.mark.parametrize(("rule", "n", "message"), [
    (Meamed(f=2), 4, r"f: Meamed needs 2f < n, got f=2, n=4"),
    (MoNNA(f=2), 4, r"f: MoNNA needs 2f < n, got f=2, n=4"),
    (MoNNA(f=1, pivot=3), 3, r"pivot: must be < n = 3, got 3"),
    (AdaptiveRobustClipping(f=3), 3, r"f: ARC needs f < n, got f=3, n=3"),
    (MinimumDiameterAveraging(f=2), 4, r"f: MDA needs 2f < n, got f=2, n=4"),
    (MinimumDiameterAveraging(f=3, max_subsets=100), 9, r"max_subsets: MDA with n=9, f=3 may examine up to "
                                                        r"\d+ removal sets, above max_subsets=100"),
    (MultiKrum(f=3, neighbours=1), 3, r"m: the default n - f must be >= 1, got n=3, f=3"),
])
def test_a_batch_that_does_not_fit_is_an_update_error(rule, n, message):
    with pytest.raises(UpdateError, match=message):
        run(rule, torch.randn(n, 2, generator=torch.Generator().manual_seed(0)))


def test_arc_refuses_a_dp_rule_inside():
    from dp.central import DPFedAvg

    with pytest.raises(ConfigError, match=r"inner: AdaptiveRobustClipping \('arc'\) makes each row"):
        AdaptiveRobustClipping(f=1, inner=DPFedAvg(expected_clients=10))


# --- invariants ------------------------------------------------------------------------------------


@st.composite
def attacked(draw):
    """(stack, honest mask, f): f attackers far from n - f honest rows (2f < n), shuffled."""
    f = draw(st.integers(1, 3))
    honest = draw(st.integers(f + 1, f + 6))
    d = draw(st.integers(1, 5))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31)))
    h = torch.randn(honest, d, generator=g, dtype=torch.float64)
    far = draw(st.sampled_from([1e2, 1e4]))
    sign = torch.where(torch.rand(f, d, generator=g) < 0.5, -1.0, 1.0).double()
    bad = sign * far * (1 + torch.rand(f, d, generator=g, dtype=torch.float64))
    u = torch.cat([h, bad])
    mask = torch.cat([torch.ones(honest, dtype=torch.bool), torch.zeros(f, dtype=torch.bool)])
    perm = torch.tensor(draw(st.permutations(range(honest + f))))
    return u[perm], mask[perm], f


def inside_honest_box(out: torch.Tensor, u: torch.Tensor, honest: torch.Tensor) -> bool:
    lo, hi = u[honest].min(dim=0).values, u[honest].max(dim=0).values
    slack = 1e-9 * (1 + float(u[honest].abs().max()))
    return bool(((out >= lo - slack) & (out <= hi + slack)).all())


@SETTINGS
@given(attacked())
def test_far_attackers_leave_the_honest_mean(case):
    u, honest, f = case
    honest_mean = u[honest].mean(dim=0)
    pivot = int(honest.nonzero()[0])
    for rule in (Meamed(f=f), MoNNA(f=f, pivot=pivot), MinimumDiameterAveraging(f=f)):
        out = run(rule, u)
        assert inside_honest_box(out, u, honest), rule
        torch.testing.assert_close(out, honest_mean, rtol=1e-9, atol=1e-9)


@SETTINGS
@given(stacks(min_n=1, max_n=12), st.data())
def test_arc_never_increases_a_norm_and_clips_exactly_k_rows(u, data):
    n = u.shape[0]
    f = data.draw(st.integers(0, n - 1))
    rule = AdaptiveRobustClipping(f=f)
    scale, tau = rule.scales(u)
    clipped = rule.clip(u)
    norms = torch.linalg.vector_norm(u.double(), dim=1)
    after = torch.linalg.vector_norm(clipped.double(), dim=1)
    assert bool((after <= norms * (1 + 1e-6) + 1e-30).all())
    k = arc_clip_count(n, f)
    changed = int((scale < 1).sum())
    assert changed <= k
    if len(set(norms.tolist())) == n:  # distinct norms: exactly the k largest are clipped
        assert changed == k
        top = torch.sort(norms, descending=True).indices[:k]
        assert bool((scale[top] < 1).all())
        torch.testing.assert_close(after[top], torch.full((k,), tau, dtype=torch.float64), rtol=1e-5, atol=0)
    out = rule.aggregate(batch_of(u), {})
    assert out.metrics["clipped_count"] == changed and out.metrics["clip_threshold"] == tau


@SETTINGS
@given(st.integers(1, 12), st.integers(1, 70), st.integers(0, 2**31), st.sampled_from([1.0, 4.0, 1e3, 1e8]),
       st.booleans(), st.data())
def test_arcs_mean_matches_the_definition_in_float64(n, d, seed, blowup, weighted, data):
    # the scales folded into the mean's weights, against ARC's definition, in many column blocks
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(n, d, generator=g)
    u[0] *= blowup
    f = data.draw(st.integers(0, n - 1))
    weights = torch.rand(n, generator=g, dtype=torch.float64) + 0.1
    rule = AdaptiveRobustClipping(f=f, inner=Mean(weighted=weighted))
    with patched((columns_module, "MIN_BLOCK", 16)):
        out = rule.aggregate(batch_of(u, weights), {})
    norms = torch.linalg.vector_norm(u.double(), dim=1)
    k = arc_clip_count(n, f)
    tau = torch.sort(norms).values[n - k - 1]
    scale = torch.clamp(tau / norms, max=1.0)
    w = weights if weighted else torch.ones(n, dtype=torch.float64)
    expected = (w * scale) @ u.double() / w.sum()
    size = float((scale[:, None] * u.double()).abs().max())
    torch.testing.assert_close(out.update.double(), expected, rtol=1e-5, atol=1e-5 * max(size, 1e-30))
    assert out.metrics["clipped_count"] == int((norms > tau).sum())  # continuous draws: no ties
    assert out.metrics["clip_threshold"] == pytest.approx(float(tau), rel=1e-6)


@SETTINGS
@given(stacks(min_n=3, max_n=9), st.data())
def test_permutation_invariance(u, data):
    n = u.shape[0]
    f = data.draw(st.integers(0, (n - 1) // 2))
    perm = torch.tensor(data.draw(st.permutations(range(n))))
    assert torch.equal(run(Meamed(f=f), u), run(Meamed(f=f), u[perm])), "Meamed: bit for bit"
    tol = {"rtol": 1e-5, "atol": 1e-5 * scale_of(u)}
    arc = AdaptiveRobustClipping(f=f, inner=Mean(weighted=False))
    torch.testing.assert_close(run(arc, u), run(arc, u[perm]), **tol)
    if torch.equal(u, u.round()):
        return  # integer grid: equal distances, where the rules below break ties by row index
    sq = pairwise_sq_distances(u.double()).numpy()
    diameters = [max((sq[i, j] for i, j in itertools.combinations(c, 2)), default=0.0)
                 for c in itertools.combinations(range(n), n - f)]
    if diameters.count(min(diameters)) == 1:  # else the first optimal subset follows the order
        mda = MinimumDiameterAveraging(f=f)
        torch.testing.assert_close(run(mda, u), run(mda, u[perm]), **tol)
    pivot = data.draw(st.integers(0, n - 1))
    inverse = torch.argsort(perm)
    torch.testing.assert_close(run(MoNNA(f=f, pivot=pivot), u),
                               run(MoNNA(f=f, pivot=int(inverse[pivot])), u[perm]), **tol)


def test_monna_ties_go_to_the_lower_index():
    u = torch.tensor([[0.0], [1.0], [-1.0], [5.0]])  # rows 1 and 2 tie at distance 1 from the pivot
    assert run(MoNNA(f=1, pivot=0), u).tolist() == [0.0]  # keeps rows 0, 1, 2: mean 0
    # n = 7, keep 4: distances 0, 2, 1, 1, 2, 8, 9; rows 1 and 4 tie at the boundary, row 1 is kept
    v = torch.tensor([[0.0], [2.0], [1.0], [-1.0], [-2.0], [8.0], [9.0]])
    assert run(MoNNA(f=3, pivot=0), v).tolist() == [0.5]


def test_known_answers():
    col = torch.tensor([[0.0], [1.0], [2.0], [2.1], [2.1]])
    assert run(Meamed(f=2), col).item() == pytest.approx((2.0 + 2.1 + 2.1) / 3)  # can leave the honest range
    # even n: the median is the mean of the two middle values (1.5); 0 and 3 tie, the smaller is kept
    assert run(Meamed(f=1), torch.tensor([[0.0], [1.0], [2.0], [3.0]])).item() == 1.0
    u = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [10.0, 10.0], [0.5, 0.5]])
    out = MinimumDiameterAveraging(f=1).aggregate(batch_of(u), {})
    torch.testing.assert_close(out.update, u[[0, 1, 2, 4]].mean(dim=0))
    assert out.metrics == {"diameter": pytest.approx(math.sqrt(2)), "selected_count": 4.0}
    # ARC: k = int(2 * 1/4 * 3) = 1: the largest norm (5) is clipped to the next (3)
    v = torch.tensor([[3.0, 4.0], [0.0, 3.0], [1.0, 0.0], [0.0, 0.0]])
    torch.testing.assert_close(AdaptiveRobustClipping(f=1).clip(v), torch.tensor(
        [[1.8, 2.4], [0.0, 3.0], [1.0, 0.0], [0.0, 0.0]]))


# --- the exact minimum-diameter search -------------------------------------------------------------


def _brute_force(sq: np.ndarray, f: int) -> tuple[list[int], float]:
    n = sq.shape[0]
    best: tuple[list[int], float] | None = None
    for subset in itertools.combinations(range(n), n - f):
        diameter = max((sq[i, j] for i, j in itertools.combinations(subset, 2)), default=0.0)
        if best is None or diameter < best[1]:
            best = (list(subset), diameter)
    assert best is not None
    return best


@settings(max_examples=60, deadline=None)
@given(stacks(min_n=1, max_n=10, max_d=3), st.data())
def test_min_diameter_subset_is_the_first_optimal_combination(u, data):
    n = u.shape[0]
    f = data.draw(st.integers(0, (n - 1) // 2))
    sq = pairwise_sq_distances(u.double()).numpy()
    assert min_diameter_subset(sq, f) == _brute_force(sq, f)


def test_search_size_and_default_limit():
    assert search_size(100, 13) <= 10**6 < search_size(100, 14)
    assert search_size(9, 3) == (9 + 2 * 4 + 1) * 8


# --- composition and serialization -----------------------------------------------------------------


@SETTINGS
@given(stacks(min_n=5, max_n=9, grid=False), st.data())
def test_arc_in_front_of_any_rule(u, data):
    n = u.shape[0]
    f = data.draw(st.integers(0, (n - 3) // 2))
    inner = data.draw(st.sampled_from([
        CoordinateMedian(), TrimmedMean(f=f), Krum(f=f), MultiKrum(f=f), GeometricMedian(),
        Meamed(f=f), MoNNA(f=f), MinimumDiameterAveraging(f=f), Mean(), NearestNeighbourMixing(f=f),
    ]))
    rule = AdaptiveRobustClipping(f=f, inner=inner)
    out = rule.aggregate(batch_of(u), rule.init_state(u.shape[1]))
    torch.testing.assert_close(out.update, run(inner, rule.clip(u)), rtol=1e-5, atol=1e-6 * scale_of(u))
    assert out.metrics["clipped_count"] <= arc_clip_count(n, f)


@pytest.mark.parametrize("rule", [
    Meamed(), Meamed(f=3), MoNNA(), MoNNA(f=2, pivot=4), AdaptiveRobustClipping(),
    AdaptiveRobustClipping(f=2, inner=TrimmedMean(f=1), rounding="exact"),
    AdaptiveRobustClipping(f=1, inner=NearestNeighbourMixing(f=1, inner=Meamed(f=1))),
    MinimumDiameterAveraging(), MinimumDiameterAveraging(f=3, max_subsets=5000),
    GeometricMedian(init="zero", eps=0.1, max_iter=3),
])
def test_round_trip_through_json(rule):
    data = json.loads(json.dumps(rule.to_dict()))
    again = Aggregator.from_dict(data)
    assert again == rule and type(again) is type(rule) and repr(again) == repr(rule)


def test_new_rules_do_not_mutate_their_input():
    u = torch.randn(9, 4, generator=torch.Generator().manual_seed(3))
    before = u.clone()
    for rule in (Meamed(f=2), MoNNA(f=2), AdaptiveRobustClipping(f=2), MinimumDiameterAveraging(f=2),
                 AdaptiveRobustClipping(f=2, inner=CoordinateMedian())):
        run(rule, u)
        assert torch.equal(u, before), rule


# --- the fast (float32 Gram) paths against the exact ones ------------------------------------------


@settings(max_examples=20, deadline=None)
@given(st.integers(4, 14), st.integers(1, 40), st.integers(0, 2**31),
       st.sampled_from(["iid", "offset", "ties"]), st.data())
def test_krum_fast_path_selects_what_exact_distances_select(n, d, seed, layout, data):
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(n, d, generator=g)
    if layout == "offset":  # a large common component: the float32 Gram's worst case
        u = u * 1e-3 + 1e3 * torch.randn(d, generator=g)
    elif layout == "ties":  # duplicated rows: exact score ties that must stay ties
        u = torch.randint(-2, 3, (n, d), generator=g).float()
        u[n // 2:] = u[: n - n // 2].clone()
    f = data.draw(st.integers(0, n - 3))
    k = data.draw(st.integers(1, n - 1))
    m = data.draw(st.integers(1, n))
    exact = [run(Krum(f=f, neighbours=k), u), run(MultiKrum(f=f, m=m, neighbours=k), u)]
    with patched((distances_module, "EXACT_BELOW", 0)):
        bounded = bounded_sq_distances(u)
        fast = [run(Krum(f=f, neighbours=k), u), run(MultiKrum(f=f, m=m, neighbours=k), u)]
    assert not bounded.exact
    truth = pairwise_sq_distances(u)
    assert bool(((bounded.approx - truth).abs() <= bounded.bound + 1e-9 * truth.max()).all())
    assert torch.equal(fast[0], exact[0])
    torch.testing.assert_close(fast[1], exact[1], rtol=1e-6, atol=1e-6 * scale_of(u))


@settings(max_examples=15, deadline=None)
@given(stacks(min_n=1, max_n=9, grid=False), st.sampled_from(["mean", "zero"]), st.booleans())
def test_geometric_median_direct_and_gram_paths_agree(u, init, fp32_gram):
    rule = GeometricMedian(tol=1e-10, max_iter=40, init=init, weighted=False)
    below = 0 if fp32_gram else 1 << 22
    with patched((geomed_module, "EXACT_BELOW", below)):
        on_gram = rule.aggregate(batch_of(u), {})
    with patched((geomed_module, "DIRECT_MAX_ITER", 40)):
        direct = rule.aggregate(batch_of(u), {})
    spread = float((u - u.mean(0)).abs().max()) + 1e-3 * scale_of(u)
    torch.testing.assert_close(on_gram.update, direct.update, rtol=0, atol=1e-3 * spread)
    assert on_gram.metrics["iterations"] >= 1 and direct.metrics["iterations"] >= 1


def test_closest_to_median_rows_matches_the_column_rule():
    from secagg.aggregation.bulyan import closest_to_median_mean

    g = torch.Generator().manual_seed(0)
    for m in range(1, 10):
        s = np.sort(torch.randint(-3, 4, (m, 40), generator=g).float().numpy(), axis=0)
        for keep in range(1, m + 1):
            np.testing.assert_allclose(closest_to_median_rows(np.ascontiguousarray(s.T), keep),
                                       closest_to_median_mean(s, keep), rtol=1e-6, atol=1e-6)
