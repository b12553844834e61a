"""Defences from the poisoning literature: FLTrust, FLAME, FoolsGold, DnC, SignGuard, RLR."""

from __future__ import annotations

import json
import math
import re
import tempfile

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import dp
from secagg.aggregation import (
    FLAME,
    Aggregator,
    CoordinateMedian,
    DnC,
    FLTrust,
    FoolsGold,
    Mean,
    RobustLearningRate,
    SignGuard,
    UpdateBatch,
)
from secagg.aggregation.flame import majority_cluster
from secagg.aggregation.foolsgold import foolsgold_weights
from secagg.aggregation.similarity import cosine_similarities
from secagg.checkpoint import load_checkpoint, save_checkpoint
from secagg.crypto.normal import box_muller, secret_normal
from secagg.data.partition import PartitionConfig
from secagg.errors import ConfigError, UpdateError
from secagg.experiment import ExperimentConfig, run_experiment
from secagg.fedavg import ClientConfig, FedAvgConfig
from secagg.layout import ParamLayout
from secagg.task import TaskConfig
from secagg.testing.checks import check_aggregator

FAST = settings(max_examples=25, deadline=None, database=None)
SKLEARN = settings(max_examples=12, deadline=None, database=None)  # a clustering per example
seeds = st.integers(0, 2**31 - 1)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)  # not secret: test data


def make_batch(u: torch.Tensor, *, ids: tuple[int, ...] | None = None, weights: torch.Tensor | None = None,
               reference: torch.Tensor | None = None, seed: int = 0,
               layout: ParamLayout | None = None, model: torch.Tensor | None = None) -> UpdateBatch:
    n = u.shape[0]
    return UpdateBatch(u, torch.ones(n, dtype=torch.float64) if weights is None else weights,
                       tuple(range(n)) if ids is None else ids, round=1, seed=seed, layout=layout,
                       reference=reference, global_model=model)


def close(a: torch.Tensor, b: torch.Tensor, tol: float = 1e-9) -> bool:
    scale = 1.0 + max(float(a.abs().max()), float(b.abs().max()))
    return float((a - b).abs().max()) <= tol * scale


# -- FLTrust -----------------------------------------------------------------------------------------


def _away_from(v: torch.Tensor, g0: torch.Tensor) -> torch.Tensor:
    """``v`` reflected, if needed, so that it points away from ``g0`` (cosine < 0)."""
    dot = float(v @ g0)
    if dot > 0:
        v = v - 2 * dot / float(g0 @ g0) * g0
    return v - 0.1 * g0 / float(torch.linalg.vector_norm(g0))  # strictly negative, also for dot = 0


@FAST
@given(seed=seeds, honest=st.integers(1, 6), bad=st.integers(1, 4), d=st.integers(2, 6))
def test_fltrust_ignores_updates_pointing_away_from_the_reference(seed, honest, bad, d):
    g = gen(seed)
    g0 = torch.randn(d, generator=g, dtype=torch.float64)
    # honest rows agree with g0 at least a little: its direction plus noise
    good = g0 + 0.5 * torch.randn(honest, d, generator=g, dtype=torch.float64)
    attackers = torch.stack([_away_from(1e3 * torch.randn(d, generator=g, dtype=torch.float64), g0)
                             for _ in range(bad)])
    rule = FLTrust()
    clean = rule.aggregate(make_batch(good, reference=g0), {})
    attacked = rule.aggregate(make_batch(torch.cat([attackers, good]), reference=g0), {})
    assert close(attacked.update, clean.update)
    assert attacked.metrics["trusted_count"] == clean.metrics["trusted_count"]
    # the output is never longer than the root update
    g0_norm = float(torch.linalg.vector_norm(g0))
    assert float(torch.linalg.vector_norm(attacked.update)) <= g0_norm * (1 + 1e-9)


@FAST
@given(seed=seeds, n=st.integers(1, 7), d=st.integers(1, 6))
def test_fltrust_equals_the_reference_norm_rescaled_mean_when_all_agree(seed, n, d):
    g = gen(seed)
    g0 = torch.randn(d, generator=g, dtype=torch.float64)
    direction = g0 + 0.3 * torch.randn(d, generator=g, dtype=torch.float64)
    if float(direction @ g0) <= 0:  # "agree": a positive cosine with the server's update
        direction = -direction if float(direction @ g0) < 0 else g0
    scales = torch.rand(n, generator=g, dtype=torch.float64) * 10 + 0.1
    u = scales[:, None] * direction  # every client agrees: one direction, any positive length
    out = FLTrust().aggregate(make_batch(u, reference=g0), {})
    rescaled = u / torch.linalg.vector_norm(u, dim=1, keepdim=True) * torch.linalg.vector_norm(g0)
    assert close(out.update, rescaled.mean(dim=0))
    # and a client agreeing exactly with the server gives back the server's own update
    assert close(FLTrust().aggregate(make_batch(3.0 * g0[None, :], reference=g0), {}).update, g0)


@FAST
@given(seed=seeds, n=st.integers(2, 7), d=st.integers(2, 6), row=st.integers(0, 6),
       boost=st.floats(1e-3, 1e6))
def test_fltrust_is_invariant_to_boosting_an_update(seed, n, d, row, boost):
    g = gen(seed)
    u = torch.randn(n, d, generator=g, dtype=torch.float64)
    g0 = torch.randn(d, generator=g, dtype=torch.float64)
    boosted = u.clone()
    boosted[row % n] *= boost
    rule = FLTrust()
    assert close(rule.aggregate(make_batch(boosted, reference=g0), {}).update,
                 rule.aggregate(make_batch(u, reference=g0), {}).update, 1e-7)


def test_fltrust_zero_trust_and_missing_reference():
    g0 = torch.tensor([1.0, 0.0])
    u = torch.tensor([[-1.0, 0.5], [-2.0, -1.0], [0.0, 0.0]])
    out = FLTrust().aggregate(make_batch(u, reference=g0), {})
    assert torch.equal(out.update, torch.zeros(2)) and out.metrics["zero_trust"] == 1.0
    assert out.metrics["trusted_count"] == 0.0
    mean = FLTrust(zero_trust="mean").aggregate(make_batch(u, reference=g0), {})
    rescaled = torch.stack([u[0] / u[0].norm(), u[1] / u[1].norm(), u[2]])
    torch.testing.assert_close(mean.update, rescaled.mean(dim=0))
    with pytest.raises(UpdateError, match="reference: FLTrust needs the server's root-data update"):
        FLTrust().aggregate(make_batch(u), {})
    assert FLTrust(root_size=37).root_examples() == 37
    assert RobustLearningRate(inner=FLTrust(root_size=12)).root_examples() == 12


# -- FLAME -------------------------------------------------------------------------------------------


@SKLEARN
@given(seed=seeds, honest=st.integers(5, 9), bad=st.integers(1, 4), d=st.integers(20, 60))
def test_flame_drops_a_minority_of_colluding_identical_updates(seed, honest, bad, d):
    bad = min(bad, (honest - 1) // 2)  # a strict minority that cannot form a majority cluster
    g = gen(seed)
    common = torch.randn(d, generator=g)
    good = common + 0.5 * torch.randn(honest, d, generator=g)
    backdoor = (torch.randn(d, generator=g) * 3).repeat(bad, 1)
    u = torch.cat([backdoor, good])
    keep = majority_cluster(cosine_similarities(u))
    assert not bool(keep[:bad].any())  # no backdoor row in the cluster
    assert int(keep.sum()) >= (honest + bad) // 2 + 1  # a strict majority, all honest
    out = FLAME(noise_lambda=0.0, cluster_on="updates").aggregate(make_batch(u), {})
    assert out.metrics["kept_count"] == float(keep.sum()) and out.metrics["dropped_count"] >= bad
    norms = torch.linalg.vector_norm(u, dim=1)
    clipped = u * torch.clamp(torch.quantile(norms, 0.5) / norms, max=1.0)[:, None]
    assert close(out.update, clipped[keep].mean(dim=0), 1e-5)


@FAST
@given(seed=seeds, n=st.integers(1, 9), d=st.integers(1, 8), spread=st.floats(1e-3, 1e3))
def test_flame_never_lets_more_than_the_median_norm_through_before_noise(seed, n, d, spread):
    g = gen(seed)
    u = torch.randn(n, d, generator=g, dtype=torch.float64) * (
        spread ** torch.rand(n, 1, generator=g, dtype=torch.float64))
    model = 10.0 * torch.randn(d, generator=g, dtype=torch.float64)
    out = FLAME(noise_lambda=0.0).aggregate(make_batch(u, model=model), {})
    median = float(torch.quantile(torch.linalg.vector_norm(u, dim=1), 0.5))
    assert out.metrics["clip_norm"] == pytest.approx(median)
    assert float(torch.linalg.vector_norm(out.update)) <= median * (1 + 1e-9)


def test_flame_noise_is_secret_by_default_and_sized_lambda_times_the_clip_norm():
    g = gen(3)
    u = torch.randn(8, 20000, generator=g)
    model = torch.randn(20000, generator=g)
    quiet = FLAME(noise_lambda=0.0).aggregate(make_batch(u, model=model), {})
    a = FLAME(noise_lambda=0.01).aggregate(make_batch(u, model=model), {})
    b = FLAME(noise_lambda=0.01).aggregate(make_batch(u, model=model), {})
    assert not torch.equal(a.update, b.update)  # fresh CSPRNG noise each call
    noise = (a.update - quiet.update).double()
    assert float(noise.std()) == pytest.approx(0.01 * a.metrics["clip_norm"], rel=0.03)
    assert abs(float(noise.mean())) < 0.05 * float(noise.std())
    public = FLAME(noise_lambda=0.01, secret_noise=False)
    c, d = (public.aggregate(make_batch(u, seed=5, model=model), {}),
            public.aggregate(make_batch(u, seed=5, model=model), {}))
    assert torch.equal(c.update, d.update)  # reproducible from the public seed
    with pytest.raises(ConfigError, match=r"secret_noise: .*a deployment needs secret_noise=true"):
        public.check_deployable()
    FLAME().check_deployable()
    assert not FLAME().claims_dp() and FLAME().epsilon_after(10, 100) is None


@SKLEARN
@given(seed=seeds, n=st.integers(3, 9), d=st.integers(2, 40), scale=st.sampled_from([1e-3, 1.0, 1e3]))
def test_flame_clusters_the_clients_models_from_a_float64_gram(seed, n, d, scale):
    # the clients' models G + u_i sit close together: their cosines come from a float64 Gram, and
    # the cluster is HDBSCAN's on exactly those (computed here directly in float64)
    g = gen(seed)
    model = scale * torch.randn(d, generator=g)
    u = 1e-2 * scale * torch.randn(n, d, generator=g)
    u[0] *= 30.0  # one update far larger than the rest
    w = (model.double() + u.double())
    direct = (w @ w.T) / (w.norm(dim=1)[:, None] * w.norm(dim=1)[None, :])
    keep = majority_cluster(direct.clamp(-1.0, 1.0), 256 * torch.finfo(torch.float64).eps)
    out = FLAME(noise_lambda=0.0).aggregate(make_batch(u, model=model), {})
    assert out.metrics["kept_count"] == float(keep.sum())
    cos, _ = FLAME().cosines(make_batch(u, model=model))
    torch.testing.assert_close(cos, direct.clamp(-1.0, 1.0), rtol=0, atol=1e-12)
    assert FLAME().needs_global_model() and not FLAME(cluster_on="updates").needs_global_model()
    assert RobustLearningRate(inner=FLAME()).needs_global_model()
    with pytest.raises(ConfigError, match="global_model: FLAME with cluster_on='models'"):
        FLAME().aggregate(make_batch(u), {})


def test_secret_normal_moments():
    z = secret_normal(200_001)
    assert z.shape == (200_001,) and z.dtype == np.float64
    assert abs(float(z.mean())) < 0.01 and float(z.std()) == pytest.approx(1.0, abs=0.01)
    assert float((np.abs(z) > 1.96).mean()) == pytest.approx(0.05, abs=0.003)
    assert not np.array_equal(secret_normal(8), secret_normal(8)), "a fresh key per call"


def test_box_muller_known_answer_and_extremes():
    # u1 = 0.75, u2 = 0.25: radius sqrt(-2 ln 0.25), angle pi / 2 -> (0, radius); u1 = 0 is finite
    z = box_muller(np.array([0.75, 0.0, 0.25, 0.5]), 4)
    r = np.sqrt(-2.0 * np.log(0.25))
    np.testing.assert_allclose(z, [0.0, 0.0, r, 0.0], atol=1e-15)
    assert box_muller(np.array([0.3, 0.6]), 1).shape == (1,)
    with pytest.raises(ValueError, match="uniforms: expected 2 values for 1 normals"):
        box_muller(np.zeros(4), 1)


# -- FoolsGold ---------------------------------------------------------------------------------------


def test_foolsgold_down_weights_sybils_that_repeat_themselves_across_rounds():
    g = gen(11)
    honest, sybils, d = 5, 3, 200
    objective = torch.randn(d, generator=g)
    rule = FoolsGold()
    state = rule.init_state(d)
    for _ in range(3):
        good = torch.randn(honest, d, generator=g)
        bad = objective + 0.01 * torch.randn(sybils, d, generator=g)
        batch = make_batch(torch.cat([good, bad]), ids=tuple(range(honest + sybils)))
        alpha, _ = rule.client_weights(batch, state)
        out = rule.aggregate(batch, state)
        state = out.state
    assert float(alpha[honest:].max()) == 0.0  # every sybil ignored
    assert float(alpha[:honest].min()) > 0.5
    assert close(out.update, (alpha[:honest].float() @ good) / alpha[:honest].sum().float(), 1e-5)
    assert out.metrics["zero_weight_count"] == sybils


def test_foolsgold_state_round_trips_and_follows_client_ids():
    rule = FoolsGold()
    state = rule.init_state(3)
    assert state == {}
    u1 = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    r1 = rule.aggregate(make_batch(u1, ids=(10, 11, 12)), state)
    assert set(r1.state) == {"history/10", "history/11", "history/12"}
    u2 = torch.tensor([[0.0, 2.0, 0.0], [5.0, 5.0, 5.0]])
    frozen = {k: v.clone() for k, v in r1.state.items()}
    r2 = rule.aggregate(make_batch(u2, ids=(12, 99)), r1.state)  # one old client, one new one
    assert all(torch.equal(r1.state[k], v) for k, v in frozen.items())  # input state untouched
    torch.testing.assert_close(r2.state["history/12"], u1[2] + u2[0])
    torch.testing.assert_close(r2.state["history/99"], u2[1])  # a new client starts at zero
    assert torch.equal(r2.state["history/10"], u1[0]) and r2.metrics["clients_tracked"] == 4
    # the state survives a checkpoint: the same round from the reloaded state gives the same result
    with tempfile.TemporaryDirectory() as tmp:
        save_checkpoint(f"{tmp}/s", r1.state, {})
        loaded, _ = load_checkpoint(f"{tmp}/s")
    again = rule.aggregate(make_batch(u2, ids=(12, 99)), loaded)
    assert torch.equal(again.update, r2.update)
    # a history of the wrong length, duplicate ids, and the client cap are refused by name
    with pytest.raises(UpdateError, match=r"state\.history/12: expected shape \(3,\)"):
        rule.aggregate(make_batch(u2, ids=(12, 99)), {"history/12": torch.zeros(4)})
    with pytest.raises(UpdateError, match=r"client_ids: .*appear more than once"):
        rule.aggregate(make_batch(u2, ids=(7, 7)), {})
    with pytest.raises(UpdateError, match=r"max_clients: the state would hold 4 .* above max_clients=3"):
        FoolsGold(max_clients=3).aggregate(make_batch(u2, ids=(12, 99)), r1.state)


@FAST
@given(seed=seeds, n=st.integers(1, 8), kappa=st.floats(0.1, 5.0))
def test_foolsgold_weights_are_in_the_unit_interval(seed, n, kappa):
    u = torch.randn(n, 4, generator=gen(seed), dtype=torch.float64)
    w = foolsgold_weights(cosine_similarities(u), kappa)
    assert w.shape == (n,) and bool(((w >= 0) & (w <= 1)).all())
    # identical histories: nobody is trusted, and the aggregate is then zero, not NaN
    same = torch.ones(3, 4)
    out = FoolsGold().aggregate(make_batch(same), {})
    assert torch.equal(out.update, torch.zeros(4)) and out.metrics["zero_weight"] == 1.0


def test_foolsgold_important_features_and_unnormalised_sum():
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 2))
    layout = ParamLayout.from_module(model)
    rule = FoolsGold(important_features=True, topk_fraction=0.5)
    state = rule.init_state(layout.dim)
    g = gen(2)
    for _ in range(2):
        u = torch.randn(4, layout.dim, generator=g)
        out = rule.aggregate(make_batch(u, layout=layout), state)
        torch.testing.assert_close(out.state["global"], state["global"] + out.update)
        state = out.state
    with pytest.raises(UpdateError, match=r"state\.global: FoolsGold with important_features"):
        rule.aggregate(make_batch(u, layout=layout), {})
    alpha, _ = FoolsGold(normalize=False).client_weights(make_batch(u), {})
    torch.testing.assert_close(FoolsGold(normalize=False).aggregate(make_batch(u), {}).update,
                               alpha.float() @ u)


# -- DnC ---------------------------------------------------------------------------------------------


@FAST
@given(seed=seeds, honest=st.integers(4, 12), f=st.integers(1, 3), b=st.sampled_from([16, 60, 10_000]),
       niters=st.integers(1, 3))
def test_dnc_removes_far_outliers_of_a_planted_low_dimensional_attack(seed, honest, f, b, niters):
    g = gen(seed)
    d = 60
    good = torch.randn(honest, d, generator=g, dtype=torch.float64)
    direction = torch.randn(d, generator=g, dtype=torch.float64)
    direction /= direction.norm()
    # the attackers all sit far along one direction (a rank-one attack), with a little jitter
    bad = good.mean(dim=0) + 100.0 * direction + 0.01 * torch.randn(f, d, generator=g, dtype=torch.float64)
    u = torch.cat([bad, good])
    out = DnC(f=f, b=b, niters=niters).aggregate(make_batch(u, seed=seed), {})
    # f removed per iteration, and they are the attackers: what is left is honest rows only
    assert out.metrics["removed_count"] >= f
    kept = int(out.metrics["kept_count"])
    assert kept >= 1
    residual = out.update - good.mean(dim=0)
    assert float(residual @ direction) < 5.0  # no pull along the attack direction
    if niters == 1:
        assert kept == honest and close(out.update, good.mean(dim=0))


def test_dnc_limits_and_subsample_size():
    u = torch.randn(4, 10, generator=gen(0))
    with pytest.raises(UpdateError, match=r"f: DnC keeps n - ceil\(c f\) updates .* n=4, f=2, c=2.0"):
        DnC(f=2, c=2.0).aggregate(make_batch(u), {})
    assert torch.allclose(DnC(f=0).aggregate(make_batch(u), {}).update, u.mean(dim=0))
    assert DnC(b=5).subsample_size(10) == 5 and DnC(b=50).subsample_size(10) == 10
    assert DnC(b_fraction=0.2).subsample_size(1001) == 201
    rule = DnC(f=1, b=3)
    a, b = rule.aggregate(make_batch(u, seed=4), {}), rule.aggregate(make_batch(u, seed=4), {})
    assert torch.equal(a.update, b.update)  # seeded from the batch: reproducible


# -- SignGuard ---------------------------------------------------------------------------------------


@SKLEARN
@given(seed=seeds, honest=st.integers(6, 10), bad=st.integers(1, 3),
       clustering=st.sampled_from(["meanshift", "dbscan", "kmeans"]),
       subset=st.sampled_from(["block", "random"]))
def test_signguard_removes_sign_flipped_updates(seed, honest, bad, clustering, subset):
    g = gen(seed)
    d = 6000  # 3000 coordinates read: the honest sign fractions vary by about 0.01
    good = 0.6 + torch.randn(honest, d, generator=g, dtype=torch.float64)  # ~73% positive signs
    flipped = -good[:bad]  # same norms: only the sign statistics give them away
    u = torch.cat([flipped, good])
    rule = SignGuard(clustering=clustering, subset=subset, fraction=0.5)
    out = rule.aggregate(make_batch(u, seed=seed), {})
    assert out.metrics["norm_rejected"] == 0.0
    assert out.metrics["kept_count"] == honest and out.metrics["sign_rejected"] == bad
    norms = torch.linalg.vector_norm(u, dim=1)
    median = torch.quantile(norms, 0.5)
    clipped = good * torch.clamp(median / norms[bad:], max=1.0)[:, None]
    assert close(out.update, clipped.mean(dim=0))


def test_signguard_norm_filter_drops_boosted_and_vanishing_updates():
    g = gen(5)
    good = 0.6 + torch.randn(8, 500, generator=g)
    u = torch.cat([good, 10 * good[:1], 0.01 * good[1:2]])
    out = SignGuard().aggregate(make_batch(u), {})
    assert out.metrics["norm_rejected"] == 2.0 and out.metrics["kept_count"] <= 8
    assert float(torch.linalg.vector_norm(out.update)) <= out.metrics["clip_norm"] * (1 + 1e-6)


# -- RLR ---------------------------------------------------------------------------------------------


@FAST
@given(seed=seeds, n=st.integers(1, 9), d=st.integers(1, 12), theta=st.integers(1, 9))
def test_rlr_negates_coordinates_with_weak_sign_agreement(seed, n, d, theta):
    g = gen(seed)
    u = torch.randn(n, d, generator=g, dtype=torch.float64)
    u[torch.rand(n, d, generator=g) < 0.2] = 0.0  # zero entries vote 0
    w = torch.rand(n, generator=g, dtype=torch.float64) + 0.1
    out = RobustLearningRate(theta=theta).aggregate(make_batch(u, weights=w), {})
    votes = torch.sign(u).sum(dim=0)
    lr = torch.where(votes.abs() >= theta, 1.0, -1.0).to(torch.float64)
    mean = (w / w.sum()) @ u  # the paper's example-weighted FedAvg mean
    assert close(out.update, lr * mean)
    assert out.metrics["flipped_fraction"] == pytest.approx(float((lr < 0).double().mean()))


@FAST
@given(seed=seeds, n=st.integers(4, 9), d=st.integers(1, 12))
def test_rlr_leaves_the_mean_when_every_client_agrees(seed, n, d):
    g = gen(seed)
    signs = torch.where(torch.rand(d, generator=g) < 0.5, -1.0, 1.0).to(torch.float64)
    u = signs * (torch.rand(n, d, generator=g, dtype=torch.float64) + 0.01)
    batch = make_batch(u)
    assert close(RobustLearningRate(theta=4).aggregate(batch, {}).update, Mean().aggregate(batch, {}).update)
    median = RobustLearningRate(theta=4, inner=CoordinateMedian()).aggregate(batch, {})
    assert close(median.update, CoordinateMedian().aggregate(batch, {}).update)


def test_rlr_keeps_buffers_and_refuses_a_dp_inner():
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2))
    layout = ParamLayout.from_module(model)
    u = torch.randn(3, layout.dim, generator=gen(1))
    u[1] = -u[0]  # weak agreement everywhere: every parameter coordinate is negated
    out = RobustLearningRate(theta=3).aggregate(make_batch(u, layout=layout), {})
    mean = u.mean(dim=0)
    n_params = layout.num_parameters
    torch.testing.assert_close(out.update[:n_params], -mean[:n_params])
    torch.testing.assert_close(out.update[n_params:], mean[n_params:])  # running statistics: +1
    with pytest.raises(ConfigError, match="inner: RobustLearningRate"):
        RobustLearningRate(inner=dp.DPFedAvg(expected_clients=3))


# -- the interface contract, validation, serialization -------------------------------------------------


@pytest.mark.parametrize("rule,kwargs", [
    (FoolsGold(), {}), (RobustLearningRate(theta=2), {}), (FLAME(noise_lambda=0.0, cluster_on="updates"), {}),
    (DnC(f=1, b=3), {"min_clients": 2, "permutation": False}),
])
def test_conforms_to_the_aggregator_contract(rule, kwargs):
    check_aggregator(rule, breakdown=False, max_examples=10, **kwargs)


@pytest.mark.parametrize("cls,kwargs,message", [
    (FLTrust, {"root_size": 0}, "root_size: must be >= 1, got 0"),
    (FLTrust, {"zero_trust": "uniform"}, "zero_trust: must be one of 'zero', 'mean'"),
    (FLAME, {"noise_lambda": -1.0}, "noise_lambda: must be >= 0.0, got -1.0"),
    (FLAME, {"secret_noise": "yes"}, "secret_noise: must be true or false"),
    (FLAME, {"cluster_on": "weights"}, "cluster_on: must be one of 'models', 'updates'"),
    (FoolsGold, {"kappa": 0.0}, "kappa: must be > 0.0, got 0.0"),
    (FoolsGold, {"topk_fraction": 1.5}, "topk_fraction: must be <= 1.0, got 1.5"),
    (FoolsGold, {"history_norm": -2.0}, "history_norm: must be > 0.0"),
    (FoolsGold, {"max_clients": 0}, "max_clients: must be >= 1, got 0"),
    (DnC, {"f": -1}, "f: must be >= 0, got -1"),
    (DnC, {"niters": 0}, "niters: must be >= 1, got 0"),
    (DnC, {"b": 0}, "b: must be >= 1, got 0"),
    (DnC, {"c": 0.0}, "c: must be > 0.0, got 0.0"),
    (DnC, {"b_fraction": 1.2}, "b_fraction: must be <= 1.0, got 1.2"),
    (SignGuard, {"upper": 0.05}, "upper: must be > 0.1, got 0.05"),
    (SignGuard, {"lower": -0.1}, "lower: must be >= 0.0, got -0.1"),
    (SignGuard, {"fraction": 0.0}, "fraction: must be > 0.0, got 0.0"),
    (SignGuard, {"clustering": "hdbscan"}, "clustering: must be one of 'meanshift', 'dbscan', 'kmeans'"),
    (SignGuard, {"subset": "all"}, "subset: must be one of 'block', 'random'"),
    (RobustLearningRate, {"theta": 0}, "theta: must be >= 1, got 0"),
])
def test_validation_names_field_and_bound(cls, kwargs, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        cls(**kwargs)


@pytest.mark.parametrize("rule", [
    FLTrust(), FLTrust(root_size=50, zero_trust="mean"),
    FLAME(), FLAME(noise_lambda=0.01, secret_noise=False, cluster_on="updates"),
    FoolsGold(), FoolsGold(kappa=2.0, normalize=False, history_norm=1.0, important_features=True,
                           topk_fraction=0.2, max_clients=50),
    DnC(), DnC(f=3, niters=5, c=1.5, b_fraction=0.2), SignGuard(),
    SignGuard(lower=0.2, upper=2.0, fraction=0.3, subset="random", clustering="kmeans"),
    RobustLearningRate(), RobustLearningRate(theta=2, inner=DnC(f=1)),
])
def test_round_trip_through_json(rule):
    assert Aggregator.from_dict(json.loads(json.dumps(rule.to_dict()))) == rule


# -- inside FedAvg ----------------------------------------------------------------------------------


@pytest.fixture
def one_thread():
    saved = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny model: one thread is fastest, and -n 2 workers share 2 cores
    yield
    torch.set_num_threads(saved)


@pytest.mark.parametrize("rule,metric", [
    (FLTrust(root_size=40), "agg/reference_norm"),
    (FLAME(), "agg/kept_count"),
    (FoolsGold(), "agg/clients_tracked"),
    (DnC(f=1, b=500), "agg/kept_count"),
    (SignGuard(), "agg/kept_count"),
    (RobustLearningRate(theta=2), "agg/flipped_fraction"),
])
def test_runs_inside_fedavg_on_digits(one_thread, rule, metric):
    config = ExperimentConfig(
        task=TaskConfig(num_clients=6, partition=PartitionConfig(kind="dirichlet", alpha=1.0)),
        fedavg=FedAvgConfig(rounds=2, client=ClientConfig(epochs=1, batch_size=32), aggregator=rule),
        seed=1)
    result = run_experiment(config)
    assert len(result.history) == 2
    for record in result.history:
        assert math.isfinite(record[metric])
    if isinstance(rule, FLTrust):  # the server trained on its root data: a non-zero reference
        assert all(r["agg/reference_norm"] > 0 for r in result.history)
    if isinstance(rule, FoolsGold):
        assert result.history[-1]["agg/clients_tracked"] == 6.0
    assert all(torch.isfinite(v).all() for v in result.state.model.values())
