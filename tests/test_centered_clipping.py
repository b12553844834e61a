"""Centered clipping (Karimireddy, He and Jaggi, ICML 2021)."""

from __future__ import annotations

import json

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from secagg.aggregation.base import Aggregator, UpdateBatch
from secagg.aggregation.centered_clipping import CenteredClipping
from secagg.errors import ConfigError, UpdateError


def make_batch(u: torch.Tensor) -> UpdateBatch:
    n = u.shape[0]
    return UpdateBatch(u, torch.ones(n, dtype=torch.float64), tuple(range(n)))


def test_huge_tau_is_the_mean_from_any_center() -> None:
    g = torch.Generator().manual_seed(0)
    u = torch.randn(7, 5, generator=g, dtype=torch.float64)
    for center in (torch.zeros(5, dtype=torch.float64), torch.randn(5, generator=g, dtype=torch.float64)):
        out = CenteredClipping(tau=1e12, iterations=1).aggregate(make_batch(u), {"center": center})
        torch.testing.assert_close(out.update, u.mean(dim=0))


def test_far_attacker_moves_output_by_at_most_tau_over_n_per_iteration() -> None:
    g = torch.Generator().manual_seed(1)
    honest = torch.randn(9, 4, generator=g, dtype=torch.float64) * 0.1
    attacker = torch.full((1, 4), 1e6, dtype=torch.float64)
    n, tau = 10, 0.5
    for iters in (1, 3):
        agg = CenteredClipping(tau=tau, iterations=iters)
        state = {"center": torch.zeros(4, dtype=torch.float64)}
        clean = agg.aggregate(make_batch(torch.cat([honest, honest[:1]])), state).update
        attacked = agg.aggregate(make_batch(torch.cat([honest, attacker])), state).update
        assert float(torch.linalg.vector_norm(attacked - clean)) <= iters * 2 * tau / n + 1e-9
        # one iteration: the attacker's own pull is at most tau / n
        if iters == 1:
            only_honest_part = agg.aggregate(make_batch(torch.cat([honest, torch.zeros(1, 4,
                                             dtype=torch.float64)])), state).update
            assert float(torch.linalg.vector_norm(attacked - only_honest_part)) <= tau / n + 1e-9


def test_state_threads_through_rounds() -> None:
    agg = CenteredClipping(tau=0.3, iterations=2)
    state = agg.init_state(3)
    assert set(state) == {"center"}
    assert torch.equal(state["center"], torch.zeros(3))
    u1 = torch.tensor([[1.0, 0.0, 0.0], [0.0, 2.0, 0.0]])
    r1 = agg.aggregate(make_batch(u1), state)
    torch.testing.assert_close(r1.state["center"], r1.update)
    u2 = torch.tensor([[0.0, 0.0, 1.0], [1.0, 1.0, 1.0]])
    r2 = agg.aggregate(make_batch(u2), r1.state)
    expected = agg.aggregate(make_batch(u2), {"center": r1.update.clone()}).update
    torch.testing.assert_close(r2.update, expected)
    assert not torch.equal(r2.update, agg.aggregate(make_batch(u2), agg.init_state(3)).update)


def test_manual_formula() -> None:
    u = torch.tensor([[3.0, 4.0], [0.0, 0.5]], dtype=torch.float64)
    center = torch.zeros(2, dtype=torch.float64)
    out = CenteredClipping(tau=1.0).aggregate(make_batch(u), {"center": center}).update
    expected = (torch.tensor([0.6, 0.8]) + torch.tensor([0.0, 0.5])).to(torch.float64) / 2
    torch.testing.assert_close(out, expected)


def test_no_input_mutation() -> None:
    u = torch.randn(6, 8)
    center = torch.randn(8)
    u0, c0 = u.clone(), center.clone()
    state = {"center": center}
    out = CenteredClipping(tau=0.1, iterations=3).aggregate(make_batch(u), state)
    assert torch.equal(u, u0) and torch.equal(center, c0) and state["center"] is center
    out.update.add_(1.0)
    assert torch.equal(center, c0)


@given(st.integers(min_value=0, max_value=10_000), st.integers(min_value=1, max_value=8))
def test_permutation_invariance(seed: int, n: int) -> None:
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(n, 5, generator=g, dtype=torch.float64)
    center = torch.randn(5, generator=g, dtype=torch.float64)
    perm = torch.randperm(n, generator=g)
    agg = CenteredClipping(tau=0.7, iterations=2)
    a = agg.aggregate(make_batch(u), {"center": center}).update
    b = agg.aggregate(make_batch(u[perm]), {"center": center}).update
    torch.testing.assert_close(a, b)


@pytest.mark.parametrize("kwargs", [{"tau": 0.0}, {"tau": -1.0}, {"tau": float("inf")},
                                    {"tau": float("nan")}, {"iterations": 0}, {"iterations": 1.5},
                                    {"iterations": True}])
def test_config_errors(kwargs) -> None:
    with pytest.raises(ConfigError):
        CenteredClipping(**kwargs)


def test_state_errors() -> None:
    agg = CenteredClipping()
    batch = make_batch(torch.ones(2, 3))
    with pytest.raises(UpdateError):
        agg.aggregate(batch, {})
    with pytest.raises(UpdateError):
        agg.aggregate(batch, {"center": torch.zeros(4)})


def test_json_round_trip() -> None:
    agg = CenteredClipping(tau=2.5, iterations=3)
    data = json.loads(json.dumps(agg.to_dict()))
    assert data == {"kind": "centered-clipping", "tau": 2.5, "iterations": 3}
    assert Aggregator.from_dict(data) == agg


def test_state_is_checkpointable(tmp_path) -> None:
    agg = CenteredClipping(tau=0.5)
    state = agg.aggregate(make_batch(torch.randn(4, 6)), agg.init_state(6)).state
    assert all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items())
    path = tmp_path / "state.pt"
    torch.save(state, path)
    loaded = torch.load(path)
    assert set(loaded) == {"center"} and torch.equal(loaded["center"], state["center"])


def _batched_reference(u: torch.Tensor, center: torch.Tensor, tau: float, iterations: int) -> torch.Tensor:
    """The docstring's iteration, batched in float64 (one (n, d) difference stack per iteration)."""
    u64, v = u.to(torch.float64), center.to(torch.float64).clone()
    for _ in range(iterations):
        diff = u64 - v
        scale = torch.clamp(tau / torch.linalg.vector_norm(diff, dim=1).clamp_min(1e-300), max=1.0)
        v = v + (scale / u.shape[0]) @ diff
    return v


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("iterations", [1, 3])
def test_column_kernel_matches_batched_formula(dtype: torch.dtype, iterations: int) -> None:
    """The CPU path (distances by column chunk, then ``v (1 - sum s / n) + sum (s / n) u``) on a stack wide
    enough for several column blocks, far from and near to the center, with a non-zero center."""
    g = torch.Generator().manual_seed(7)
    n, d = 13, 70_001
    u = (torch.randn(n, d, generator=g, dtype=torch.float64) + 5.0).to(dtype)
    u[0] += 100.0  # one far row: always clipped
    center = (torch.randn(d, generator=g, dtype=torch.float64) * 0.1 + 5.0).to(dtype)
    c0 = center.clone()
    for tau in (1.0, 300.0, 1e9):
        out = CenteredClipping(tau=tau, iterations=iterations).aggregate(make_batch(u), {"center": center})
        assert out.update.dtype == dtype and torch.equal(center, c0)
        ref = _batched_reference(u, center, tau, iterations)
        tol = 1e-5 if dtype == torch.float32 else 1e-12
        torch.testing.assert_close(out.update.to(torch.float64), ref, rtol=tol, atol=tol)
        torch.testing.assert_close(out.state["center"], out.update, rtol=0, atol=0)
