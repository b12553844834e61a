"""DP in the FedAvg core: clipping, CSPRNG Gaussian noise, DP-FedAvg, local DP, adaptive clipping,
Poisson sampling, epsilon in the history and privacy budgets."""

from __future__ import annotations

import itertools
import json
import math
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from conftest import make_dataset
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from scipy import stats

from dp.accounting import GaussianAccountant, local_gaussian_epsilon
from dp.adaptive import AdaptiveClipDP
from dp.central import DPFedAvg, clip_rows
from dp.gaussian import gaussian
from dp.local import LocalDP
from dp.noise import SecureRandom
from secagg.aggregation import ClipNorm, Mean, SecureSum, TrimmedMean, UpdateBatch
from secagg.errors import ConfigError
from secagg.experiment import ExperimentConfig, run_experiment
from secagg.fedavg import ClientConfig, FedAvg, FedAvgConfig, SGDTrainer
from secagg.models import MLP
from secagg.task import TaskConfig

SEED = bytes(range(32))  # a fixed CSPRNG key: reproducible statistics (tests only)


def _batch(updates: torch.Tensor) -> UpdateBatch:
    n = updates.shape[0]
    return UpdateBatch(updates, torch.ones(n, dtype=torch.float64), tuple(range(n)))


# ------------------------------------------------------------------------------------ clipping

@given(arrays(np.float64, st.tuples(st.integers(1, 6), st.integers(1, 8)),
              elements=st.floats(-1e6, 1e6, allow_nan=False)),
       st.floats(1e-3, 1e3))
def test_clipping_never_increases_a_norm_and_keeps_in_bound_rows(rows, clip):
    u = torch.from_numpy(rows)
    clipped, norms = clip_rows(u, clip)
    after = torch.linalg.vector_norm(clipped, dim=1)
    assert torch.equal(norms, torch.linalg.vector_norm(u, dim=1))
    assert (after <= norms * (1 + 1e-12)).all()
    inside = norms <= clip
    assert torch.equal(clipped[inside], u[inside])
    outside = ~inside
    torch.testing.assert_close(after[outside], torch.full_like(after[outside], clip), rtol=1e-12, atol=0)
    # same direction: clipping is a positive rescaling
    assert (clipped[outside] * u[outside] >= 0).all()


# --------------------------------------------------------------------------- Gaussian sampler

def test_gaussian_from_the_csprng_is_standard_normal():
    z = gaussian(1.0, 200_001, SecureRandom(SEED))
    assert z.shape == (200_001,) and z.dtype == np.float64
    n = z.size
    assert abs(z.mean()) < 5 / math.sqrt(n)
    assert abs(z.std() - 1.0) < 5 / math.sqrt(2 * n)
    assert stats.kstest(z, "norm").pvalue > 1e-4
    assert np.array_equal(gaussian(2.0, 10, SecureRandom(SEED)), 2.0 * gaussian(1.0, 10, SecureRandom(SEED)))
    assert not np.array_equal(gaussian(1.0, 10), gaussian(1.0, 10)), "default: a fresh secret key"


# --------------------------------------------------------------------------------- DP-FedAvg

def test_dpfedavg_noise_has_std_z_c_on_the_sum():
    z, c, m, d = 1.7, 0.5, 4.0, 100_000
    agg = DPFedAvg(clip=c, noise_multiplier=z, expected_clients=m)
    out = agg.aggregate_with_noise(_batch(torch.zeros(3, d, dtype=torch.float64)), {}, rng=SecureRandom(SEED))
    noise_on_sum = out.update * m
    assert abs(float(noise_on_sum.mean())) < 5 * z * c / math.sqrt(d)
    assert abs(float(noise_on_sum.std()) - z * c) < 5 * z * c / math.sqrt(2 * d)
    assert out.metrics["noise_std"] == pytest.approx(z * c / m)


@pytest.mark.parametrize("secure", [False, True])
def test_dpfedavg_divides_the_clipped_sum_by_expected_clients(secure):
    g = torch.Generator().manual_seed(0)
    u = torch.randn(3, 5, generator=g, dtype=torch.float64) * torch.tensor([[0.1], [3.0], [10.0]],
                                                                         dtype=torch.float64)
    c, z, m = 1.0, 0.3, 10.0
    inner = SecureSum(weighted=False, value_range=1.0, max_clients=10) if secure else Mean(weighted=False)
    agg = DPFedAvg(clip=c, noise_multiplier=z, expected_clients=m, inner=inner)
    out = agg.aggregate_with_noise(_batch(u), {}, rng=SecureRandom(SEED))
    clipped, _ = clip_rows(u, c)
    noise = torch.from_numpy(gaussian(z * c, 5, SecureRandom(SEED)))
    expected = (clipped.sum(dim=0) + noise) / m  # not / 3, the realized count
    torch.testing.assert_close(out.update, expected, rtol=0, atol=1e-6 if secure else 1e-12)
    assert out.metrics["clipped_fraction"] == pytest.approx(2 / 3)


def test_dpfedavg_unweighted_every_client_counts_once():
    u = torch.tensor([[0.5, 0.0], [0.0, 0.5]], dtype=torch.float64)
    a = DPFedAvg(clip=1.0, noise_multiplier=1e-9, expected_clients=2.0)
    heavy = UpdateBatch(u, torch.tensor([1.0, 1000.0], dtype=torch.float64), (0, 1))
    torch.testing.assert_close(a.aggregate_with_noise(heavy, {}).update, u.mean(dim=0), rtol=0, atol=1e-6)


def test_dpfedavg_epsilon_and_budget_hooks():
    a = DPFedAvg(noise_multiplier=1.1, sample_rate=0.1, delta=1e-6, accountant="rdp", sampling="poisson",
                 target_epsilon=3.0)
    ref = GaussianAccountant(1.1, 0.1, "rdp", "poisson")
    assert a.epsilon_after(7) == pytest.approx(ref.epsilon(7, 1e-6))
    assert a.privacy_budget() == 3.0 and a.poisson_sample_rate() == 0.1
    assert ClipNorm(inner=a).epsilon_after(7) == a.epsilon_after(7)  # wrappers delegate
    assert ClipNorm(inner=a).poisson_sample_rate() == 0.1
    assert DPFedAvg(sampling="none").poisson_sample_rate() is None


@pytest.mark.parametrize(("make", "field"), [
    (lambda: DPFedAvg(noise_multiplier=0.0), "noise_multiplier: must be > 0"),
    (lambda: DPFedAvg(noise_multiplier=-1.0), "noise_multiplier: must be > 0"),
    (lambda: DPFedAvg(clip=0.0), "clip: must be > 0"),
    (lambda: DPFedAvg(delta=1.0), "delta: must be < 1"),
    (lambda: DPFedAvg(delta=0.0), "delta: must be > 0"),
    (lambda: DPFedAvg(expected_clients=0.0), "expected_clients: must be > 0"),
    (lambda: DPFedAvg(sample_rate=1.5), "sample_rate: must be <= 1"),
    (lambda: DPFedAvg(accountant="gdp"), "accountant: must be one of"),
    (lambda: DPFedAvg(sampling="fixed"), "sampling: must be one of"),
    (lambda: DPFedAvg(target_epsilon=0.0), "target_epsilon: must be > 0"),
    (lambda: DPFedAvg(inner=Mean()), "inner: must be Mean\\(weighted=False\\)"),
    (lambda: DPFedAvg(inner=TrimmedMean()), "inner: must be"),
    (lambda: LocalDP(noise_multiplier=0.0), "noise_multiplier: must be > 0"),
    (lambda: LocalDP(clip=-1.0), "clip: must be > 0"),
    (lambda: LocalDP(delta=2.0), "delta: must be < 1"),
    (lambda: AdaptiveClipDP(initial_clip=0.0), "initial_clip: must be > 0"),
    (lambda: AdaptiveClipDP(target_quantile=1.0), "target_quantile: must be < 1"),
    (lambda: AdaptiveClipDP(learning_rate=0.0), "learning_rate: must be > 0"),
    (lambda: AdaptiveClipDP(expected_clients=100, delta=1.0), "delta: must be < 1"),
    (lambda: AdaptiveClipDP(inner=SecureSum(weighted=False, value_range=0.4, max_clients=9)),
         "inner.value_range: must be >= 0.5"),
        (lambda: DPFedAvg(inner=SecureSum(weighted=False)), "inner.max_clients: a DP sum"),
])
def test_bad_settings_name_the_field_and_bound(make, field):
    with pytest.raises(ConfigError, match=field):
        make()


# ------------------------------------------------------------------- sampling and the config

def test_fixed_sampler_with_poisson_accounting_is_refused():
    dp = DPFedAvg(sample_rate=0.5, sampling="poisson")
    with pytest.raises(ConfigError, match=r"sampling: .*Poisson.*sampling='none'"):
        FedAvgConfig(fraction=0.5, aggregator=dp)
    with pytest.raises(ConfigError, match="sampling: "):
        FedAvgConfig(fraction=0.5, aggregator=ClipNorm(inner=dp))  # found inside wrappers too
    with pytest.raises(ConfigError, match=r"fraction: must equal the sample rate 0\.5"):
        FedAvgConfig(fraction=0.4, sampling="poisson", aggregator=dp)
    FedAvgConfig(fraction=0.5, sampling="poisson", aggregator=dp)
    FedAvgConfig(fraction=0.5, aggregator=DPFedAvg(sample_rate=0.5, sampling="none"))  # no amplification
    with pytest.raises(ConfigError, match="sampling: must be one of"):
        FedAvgConfig(sampling="uniform")


def test_config_with_dp_round_trips_through_json():
    cfg = FedAvgConfig(fraction=0.25, sampling="poisson",
                       aggregator=DPFedAvg(sample_rate=0.25, expected_clients=2.5, target_epsilon=4.0,
                                           inner=SecureSum(weighted=False, max_clients=10)))
    assert FedAvgConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    for agg in (LocalDP(inner=SecureSum()), AdaptiveClipDP(expected_clients=40)):
        assert FedAvgConfig.from_dict(FedAvgConfig(aggregator=agg).to_dict()).aggregator == agg


def _fedavg(num_clients: int, **config) -> FedAvg:
    data = make_dataset(num_clients=num_clients, per_client=4)
    torch.manual_seed(0)
    model = MLP(data.input_shape, data.num_classes)
    cfg = FedAvgConfig(client=ClientConfig(epochs=1, batch_size=0), **config)
    return FedAvg(cfg, model, data, seed=3)


def test_poisson_sampling_count_is_binomial_and_deterministic():
    n, q, rounds = 20, 0.3, 400
    trainer = _fedavg(n, fraction=q, sampling="poisson")
    draws = [trainer.sample_clients(r) for r in range(1, rounds + 1)]
    counts = np.array([len(c) for c in draws])
    assert abs(counts.mean() - q * n) < 5 * math.sqrt(n * q * (1 - q) / rounds)
    assert counts.var() == pytest.approx(n * q * (1 - q), rel=0.3)
    per_client = np.bincount(np.concatenate([np.array(c, dtype=int) for c in draws]), minlength=n)
    assert (np.abs(per_client / rounds - q) < 5 * math.sqrt(q * (1 - q) / rounds)).all()
    assert all(c == sorted(set(c)) for c in draws)
    assert draws == [_fedavg(n, fraction=q, sampling="poisson").sample_clients(r)
                     for r in range(1, rounds + 1)]


def test_a_round_with_no_client_is_skipped_and_still_counted():
    q = 0.2
    dp = DPFedAvg(noise_multiplier=1.0, sample_rate=q, expected_clients=3 * q)
    trainer = _fedavg(3, fraction=q, sampling="poisson", aggregator=dp)
    empty = next(r for r in range(1, 200) if not trainer.sample_clients(r))
    state = trainer.initial_state()
    state.round = empty - 1
    result = trainer.run_round(state)
    assert result.record["clients"] == 0 and result.record["skipped"]
    assert result.record["train_loss"] is None and result.record["update_norm"] == 0.0
    assert result.state.round == empty
    assert all(torch.equal(result.state.model[k], v) for k, v in state.model.items())
    assert result.record["epsilon"] == pytest.approx(dp.epsilon_after(empty))


def test_history_epsilon_grows_and_matches_the_accountant():
    q, z = 0.5, 1.3
    dp = DPFedAvg(noise_multiplier=z, sample_rate=q, expected_clients=6 * q, delta=1e-5)
    trainer = _fedavg(6, fraction=q, sampling="poisson", aggregator=dp)
    state, eps = trainer.initial_state(), []
    for _ in range(4):
        result = trainer.run_round(state)
        state = result.state
        eps.append(result.record["epsilon"])
    ref = GaussianAccountant(z, q, "rdp", "poisson")
    assert eps == pytest.approx([ref.epsilon(r, 1e-5) for r in range(1, 5)], rel=1e-12)
    assert all(a < b for a, b in itertools.pairwise(eps))
    assert sum(len(trainer.sample_clients(r)) for r in range(1, 5)) == int(state.participations.sum())


def test_no_dp_records_epsilon_none():
    trainer = _fedavg(3)
    assert trainer.run_round(trainer.initial_state()).record["epsilon"] is None


# ------------------------------------------------------------------------------------ local DP

def test_local_dp_noises_each_row_and_accounts_per_client():
    z, c, n, d = 0.8, 2.0, 4, 6
    agg = LocalDP(clip=c, noise_multiplier=z, delta=1e-5, inner=Mean(weighted=False))
    u = torch.randn(n, d, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 3
    out = agg.aggregate_with_noise(_batch(u), {}, rng=SecureRandom(SEED))
    rng = SecureRandom(SEED)
    noise = torch.stack([torch.from_numpy(gaussian(z * c, d, rng)) for _ in range(n)])
    torch.testing.assert_close(out.update, (clip_rows(u, c)[0] + noise).mean(dim=0), rtol=0, atol=1e-12)
    eps = [agg.epsilon_after(r) for r in (1, 2, 5)]
    assert eps == [local_gaussian_epsilon(z, r, 1e-5) for r in (1, 2, 5)]
    assert eps[0] < eps[1] < eps[2]


def test_local_dp_per_row_noise_std_is_z_c():
    z, c, d = 1.5, 0.5, 50_000
    out = LocalDP(clip=c, noise_multiplier=z, inner=Mean(weighted=False)).aggregate_with_noise(
        _batch(torch.zeros(1, d, dtype=torch.float64)), {}, rng=SecureRandom(SEED))
    assert abs(float(out.update.std()) - z * c) < 5 * z * c / math.sqrt(2 * d)


# --------------------------------------------------------------------------- adaptive clipping

def _norm_rows(rng: np.random.Generator, m: int, scale: float) -> torch.Tensor:
    norms = scale * np.exp(0.5 * rng.standard_normal(m))  # log-normal norms: simulation, not DP noise
    directions = rng.standard_normal((m, 3))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    return torch.from_numpy(directions * norms[:, None])


@pytest.mark.parametrize("gamma", [0.3, 0.5, 0.8])
def test_adaptive_clip_converges_to_the_quantile(gamma):
    m, scale = 100, 2.0
    agg = AdaptiveClipDP(initial_clip=0.1, noise_multiplier=1.0, expected_clients=float(m),
                         target_quantile=gamma)
    quantile = scale * math.exp(0.5 * stats.norm.ppf(gamma))
    sim, noise = np.random.default_rng(7), SecureRandom(SEED)
    state, trace = agg.init_state(3), []
    for _ in range(400):
        state = agg.aggregate_with_noise(_batch(_norm_rows(sim, m, scale)), state, rng=noise).state
        trace.append(float(state["clip"][0]))
    settled = math.exp(np.mean(np.log(trace[-150:])))
    assert abs(settled - quantile) < 0.1 * quantile, (settled, quantile)
    assert abs(trace[-1] - quantile) < 0.2 * quantile


def test_adaptive_clip_moves_the_right_way():
    agg = AdaptiveClipDP(initial_clip=100.0, noise_multiplier=1.0, expected_clients=100.0)
    small = _norm_rows(np.random.default_rng(0), 100, 1.0)  # all unclipped: b ~ 1 > gamma
    out = agg.aggregate_with_noise(_batch(small), agg.init_state(3), rng=SecureRandom(SEED))
    assert out.metrics["noisy_unclipped_fraction"] > 0.5
    assert float(out.state["clip"][0]) < 100.0
    low = AdaptiveClipDP(initial_clip=1e-3, noise_multiplier=1.0, expected_clients=100.0)
    out = low.aggregate_with_noise(_batch(small), low.init_state(3), rng=SecureRandom(SEED))  # all clipped
    assert float(out.state["clip"][0]) > 1e-3


def test_adaptive_clip_bits_go_through_the_secure_sum():
    rows = _norm_rows(np.random.default_rng(1), 6, 0.3)
    clear = AdaptiveClipDP(initial_clip=0.3, noise_multiplier=0.5, expected_clients=6.0, count_stddev=1.0)
    secure = AdaptiveClipDP(initial_clip=0.3, noise_multiplier=0.5, expected_clients=6.0, count_stddev=1.0,
                            inner=SecureSum(weighted=False, max_clients=6))
    a = clear.aggregate_with_noise(_batch(rows), clear.init_state(3), rng=SecureRandom(SEED))
    b = secure.aggregate_with_noise(_batch(rows), secure.init_state(3), rng=SecureRandom(SEED))
    assert b.metrics["inner/survivors"] == 6.0  # the secure session carried the rows
    assert float(b.state["clip"][0]) == pytest.approx(float(a.state["clip"][0]), rel=1e-6)
    torch.testing.assert_close(a.update, b.update, rtol=0, atol=1e-6)


def test_adaptive_clip_defaults_are_valid_and_refusal_names_sigma_b():
    # the default configuration used to raise (sigma_b = m / 20 = 0.5 < z / 2)
    default = AdaptiveClipDP()
    assert default.sigma_b == 1.0 and default.epsilon_after(3) is not None
    assert AdaptiveClipDP(noise_multiplier=1.0, expected_clients=100.0).sigma_b == 5.0  # the paper's m / 20
    with pytest.raises(ConfigError, match="noise_multiplier: must be < 2 sigma_b"):
        AdaptiveClipDP(noise_multiplier=1.0, expected_clients=10.0, count_stddev=0.5)
    with pytest.raises(ConfigError, match="sigma_b"):
        AdaptiveClipDP(noise_multiplier=2.0, count_stddev=1.0)


# ---------------------------------------------------------------- budgets, checkpoint, resume

def _experiment(rounds: int, aggregator=None, trainer=None, **fedavg) -> ExperimentConfig:
    kw = {"aggregator": aggregator} if aggregator is not None else {}
    if trainer is not None:
        kw["trainer"] = trainer
    return ExperimentConfig(task=TaskConfig(num_clients=4, model="mlp"),
                            fedavg=FedAvgConfig(rounds=rounds, client=ClientConfig(epochs=1, batch_size=0),
                                                **kw, **fedavg), seed=1)


def test_budget_stops_training_before_it_is_exceeded(tmp_path):
    z, q = 1.0, 0.5
    ref = GaussianAccountant(z, q)
    budget = 0.5 * (ref.epsilon(2, 1e-5) + ref.epsilon(3, 1e-5))
    dp = DPFedAvg(noise_multiplier=z, sample_rate=q, expected_clients=2.0, target_epsilon=budget)
    result = run_experiment(_experiment(6, dp, fraction=q, sampling="poisson"), tmp_path)
    assert [row["round"] for row in result.history] == [1, 2]
    assert result.history[-1]["epsilon"] <= budget
    assert result.stopped.startswith("privacy budget: epsilon would reach") and "in round 3" in result.stopped
    doc = json.loads((tmp_path / "results.json").read_text())
    assert doc["stopped"] == result.stopped and len(doc["rounds"]) == 2
    assert doc["summary"]["final_epsilon"] == result.history[-1]["epsilon"]


@dataclass(frozen=True)
class CountingTrainer(SGDTrainer, kind="test-counting-trainer"):
    """Plain SGD whose "epsilon" is the most rounds any client took part in (tests the plumbing)."""

    budget: float | None = None

    def epsilon_after(self, participations, examples):
        assert all(c in examples for c in participations)
        return float(max(participations.values(), default=0))

    def privacy_budget(self):
        return self.budget


def test_trainer_participations_survive_resume_and_budget_applies(tmp_path):
    full = run_experiment(_experiment(4, trainer=CountingTrainer(), fraction=0.5))
    eps = [row["epsilon"] for row in full.history]
    assert eps == sorted(eps) and eps[-1] >= 2.0
    run_experiment(_experiment(2, trainer=CountingTrainer(), fraction=0.5), tmp_path)
    resumed = run_experiment(_experiment(4, trainer=CountingTrainer(), fraction=0.5), tmp_path, resume=True)
    assert [row["epsilon"] for row in resumed.history] == eps
    assert torch.equal(resumed.state.participations, full.state.participations)
    capped = run_experiment(_experiment(4, trainer=CountingTrainer(budget=eps[-1] - 1), fraction=0.5))
    assert capped.stopped is not None and "trainer 'test-counting-trainer'" in capped.stopped
    assert all(row["epsilon"] <= eps[-1] - 1 for row in capped.history)
