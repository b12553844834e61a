"""The canary audit (dp.audit): estimators against closed forms, broken mechanisms it must catch,
correct ones it must not flag, and the ``--audit-canaries`` flag end to end."""

from __future__ import annotations

import dataclasses
import itertools
import json
import math

import numpy as np
import pytest
import scipy.optimize
import scipy.stats
import torch
from hypothesis import given
from hypothesis import strategies as st

from dp.audit import (
    CANARY_ID_BASE,
    CanaryAudit,
    canary_directions,
    gaussian_epsilon,
    gaussian_fit_epsilon,
    one_run_epsilon_lower_bound,
    one_run_p_value,
)
from dp.central import DPFedAvg
from dp.distributed import DistributedDP
from secagg.aggregation import Aggregate, Aggregator, ClipNorm, Mean, UpdateBatch
from secagg.cli import FlagError, _build_parser, config_from_args, main
from secagg.errors import ConfigError, UpdateError
from secagg.transport.serve import network_mode

DELTA = 1e-5


def gdp_epsilon(mu: float, delta: float) -> float:
    """mu-GDP -> (epsilon, delta) (Dong, Roth, Su 2022, Corollary 2.13), solved independently."""
    def gap(eps: float) -> float:
        norm = scipy.stats.norm
        return norm.cdf(-eps / mu + mu / 2) - math.exp(eps) * norm.cdf(-eps / mu - mu / 2) - delta
    return scipy.optimize.brentq(gap, 0.0, 200.0)


def hockey_stick_by_quadrature(eps: float, m0: float, s0: float, m1: float, s1: float) -> float:
    """max over both orders of the integral of (p - e^eps q)_+, on a fine grid (no closed form)."""
    lo, hi = min(m0 - 40 * s0, m1 - 40 * s1), max(m0 + 40 * s0, m1 + 40 * s1)
    y = np.linspace(lo, hi, 2_000_001)
    p, q = scipy.stats.norm.pdf(y, m1, s1), scipy.stats.norm.pdf(y, m0, s0)
    step = y[1] - y[0]
    return max(float(np.maximum(p - math.exp(eps) * q, 0).sum() * step),
               float(np.maximum(q - math.exp(eps) * p, 0).sum() * step))


# ----------------------------------------------------------------------------------- estimators


@pytest.mark.parametrize("mu", [0.3, 1.0, 2.5, 5.0])
@pytest.mark.parametrize("delta", [1e-5, 1e-3])
def test_equal_variance_gaussians_give_the_gdp_epsilon(mu, delta):
    assert gaussian_epsilon(0.0, 1.0, mu, 1.0, delta) == pytest.approx(gdp_epsilon(mu, delta), rel=1e-8)
    # cosines live on the 1/sqrt(d) scale: the same answer
    s = 4810 ** -0.5
    assert gaussian_epsilon(0.0, s, mu * s, s, delta) == pytest.approx(gdp_epsilon(mu, delta), rel=1e-8)


@pytest.mark.parametrize("m1, s1", [(1.0, 1.2), (2.0, 0.7), (0.0, 1.5)])
def test_unequal_variances_match_the_privacy_profile_by_quadrature(m1, s1):
    eps = gaussian_epsilon(0.0, 1.0, m1, s1, 1e-3)
    assert hockey_stick_by_quadrature(eps, 0.0, 1.0, m1, s1) == pytest.approx(1e-3, rel=1e-3)
    # and the equal-variance value understates it: the tails' likelihood ratio is unbounded
    assert eps > gaussian_epsilon(0.0, 1.0, m1, 1.0, 1e-3)


def test_identical_gaussians_have_epsilon_zero_and_separated_ones_are_capped():
    assert gaussian_epsilon(0.3, 2.0, 0.3, 2.0, DELTA) == 0.0
    assert gaussian_epsilon(0.0, 1.0, 1e4, 1.0, DELTA) == math.inf


def test_the_gaussian_fit_recovers_a_known_mu():
    d = 5000
    g = np.random.default_rng(0)  # not secret: test data
    observed = g.normal(1.5 * d ** -0.5, d ** -0.5, 20_000)
    null = g.normal(0.0, d ** -0.5, 20_000)
    want = gdp_epsilon(1.5, DELTA)
    for fit in (gaussian_fit_epsilon(observed, null, DELTA, variance="equal", resamples=100),
                gaussian_fit_epsilon(observed, None, DELTA, dim=d, variance="auto", resamples=100)):
        assert fit.mu == pytest.approx(1.5, rel=0.03)
        assert fit.epsilon == pytest.approx(want, rel=0.05)
        assert fit.ci_low <= want <= fit.ci_high
    # the paper's fitted-variance reading is higher, never lower, on the same data
    assert gaussian_fit_epsilon(observed, null, DELTA, resamples=0).epsilon >= 0.99 * want


@given(st.floats(-1.0, 1.0), st.floats(0.1, 10.0), st.integers(0, 2**32 - 1))
def test_the_fit_is_invariant_under_affine_maps_and_symmetric(shift, scale, seed):
    g = np.random.default_rng(seed)  # not secret: test data
    a, b = g.normal(0.5, 1.0, 40), g.normal(0.0, 1.3, 60)
    eps = gaussian_fit_epsilon(a, b, 1e-3, resamples=0).epsilon
    moved = gaussian_fit_epsilon(shift + scale * a, shift + scale * b, 1e-3, resamples=0).epsilon
    assert moved == pytest.approx(eps, rel=1e-6, abs=1e-9)
    assert gaussian_fit_epsilon(b, a, 1e-3, resamples=0).epsilon == pytest.approx(eps, rel=1e-6, abs=1e-9)


def test_one_run_p_value_is_the_binomial_tail_at_delta_zero():
    for v in (0, 7, 12, 20):
        assert one_run_p_value(50, 20, v, 0.8, 0.0) == pytest.approx(
            scipy.stats.binom.sf(v - 1, 20, math.exp(0.8) / (1 + math.exp(0.8))))
    assert one_run_p_value(50, 20, 15, 0.8, 1e-3) > one_run_p_value(50, 20, 15, 0.8, 0.0)


def _crafted(m: int, k: int, correct: int) -> tuple[np.ndarray, np.ndarray]:
    """Scores m-1..0 and inclusion bits with exactly ``correct`` right guesses of 2k at k per side."""
    inc = np.zeros(m, dtype=bool)
    inc[: (correct + 1) // 2] = True                      # top k: this many truly in
    out_bottom = correct // 2                              # bottom k: this many truly out
    inc[m - k: m - out_bottom] = True
    inc[k: m - k: 2] = True                                # the middle: about half, unguessed
    return np.arange(m, 0, -1, dtype=float), inc


def test_the_one_run_bound_is_zero_at_chance_and_grows_with_correct_guesses():
    m, k = 400, 50
    bounds = []
    for correct in range(k, 2 * k + 1, 5):
        scores, inc = _crafted(m, k, correct)
        b = one_run_epsilon_lower_bound(scores, inc, DELTA, guesses=k)
        assert (b.guesses, b.correct) == (k, correct)
        bounds.append(b.epsilon)
    assert bounds[0] == 0.0
    assert all(x <= y for x, y in itertools.pairwise(bounds)) and bounds[-1] > 1.5
    scores, inc = _crafted(m, k, 2 * k)
    strict = one_run_epsilon_lower_bound(scores, inc, DELTA, confidence=0.999, guesses=k).epsilon
    assert strict < bounds[-1]  # more confidence, lower bound


def test_the_one_run_bound_stays_below_a_known_epsilon():
    # randomized response at eps0: each guess is right with probability e^eps0 / (1 + e^eps0), the
    # best an eps0-DP mechanism allows; the 95% lower bound must not exceed eps0
    eps0, m = 2.0, 2000
    g = np.random.default_rng(3)  # not secret: test data
    inc = g.random(m) < 0.5
    right = g.random(m) < math.exp(eps0) / (1 + math.exp(eps0))
    scores = np.where(inc == right, 1.0, -1.0) + 1e-3 * g.standard_normal(m)
    b = one_run_epsilon_lower_bound(scores, inc, 0.0)
    assert 0.5 < b.epsilon <= eps0


@pytest.mark.parametrize("call, field", [
    (lambda: gaussian_fit_epsilon([0.1], [0.0, 1.0], DELTA), "observed_cos"),
    (lambda: gaussian_fit_epsilon([0.1, float("nan")], [0.0, 1.0], DELTA), "observed_cos"),
    (lambda: gaussian_fit_epsilon([0.1, 0.2], [0.0, 1.0], 1.5), "delta"),
    (lambda: gaussian_fit_epsilon([0.1, 0.2], [0.0, 1.0], DELTA, dim=100), "null_cos, dim"),
    (lambda: gaussian_fit_epsilon([0.1, 0.2], None, DELTA, dim=100, variance="x"), "variance"),
    (lambda: one_run_epsilon_lower_bound([1.0, 2.0, 3.0], [True, False], DELTA), "included"),
    (lambda: one_run_epsilon_lower_bound([1.0, 2.0, 3.0], [1, 0, 1], DELTA), "included"),
    (lambda: one_run_epsilon_lower_bound([1.0, 2.0, 3.0, 4.0], np.ones(4, bool), DELTA, guesses=3),
     "guesses"),
    (lambda: CanaryAudit(canaries=2, inner=DPFedAvg()), "canaries"),
    (lambda: CanaryAudit(inclusion="some", inner=DPFedAvg()), "inclusion"),
    (lambda: CanaryAudit(inclusion="all", null_canaries=1, inner=DPFedAvg()), "null_canaries"),
    (lambda: CanaryAudit(inner=Mean()), "canary_norm"),
    (lambda: CanaryAudit(inner=CanaryAudit(inner=DPFedAvg())), "inner"),
])
def test_bad_inputs_name_the_field(call, field):
    with pytest.raises(ConfigError, match=field):
        call()


# ----------------------------------------------------------------------------------- the wrapper


CAPTURED: list[UpdateBatch] = []


@dataclasses.dataclass(frozen=True)
class Capture(Aggregator, kind="test-audit-capture"):
    """Records the batch it is given (test only) and returns its unweighted mean."""

    def aggregate(self, batch: UpdateBatch, state):
        CAPTURED.append(batch)
        return Aggregate(batch.updates.mean(dim=0), state)


def _batch(n: int, d: int, r: int = 1, seed: int = 0) -> UpdateBatch:
    g = torch.Generator().manual_seed(seed)
    return UpdateBatch(torch.randn(n, d, generator=g), torch.arange(1.0, n + 1, dtype=torch.float64),
                       tuple(range(n)), round=r, seed=r)


def test_canaries_are_clip_norm_rows_with_fresh_ids_and_depend_on_no_client():
    audit = CanaryAudit(canaries=8, inclusion="all", seed=3, inner=ClipNorm(max_norm=0.5, inner=Capture()))
    CAPTURED.clear()
    base, extra = _batch(4, 30), _batch(1, 30, seed=9)
    audit.aggregate(base, audit.init_state(30))
    added = UpdateBatch(torch.cat([base.updates, extra.updates]), torch.cat([base.weights, extra.weights]),
                        tuple(range(5)), round=base.round, seed=base.seed)
    audit.aggregate(added, audit.init_state(30))  # a neighbouring batch: client 4 added
    small, big = CAPTURED
    ids = small.client_ids[4:]
    assert ids == tuple(CANARY_ID_BASE + j for j in range(8)) == big.client_ids[5:]
    # canary rows: the directions, sent 10 clips long and so clipped to exactly the clip, identical
    # whoever the real clients are
    want = canary_directions(3, range(8), 30) * 0.5
    assert np.allclose(small.updates[4:].numpy(), want, atol=1e-5)
    assert torch.equal(small.updates[4:], big.updates[5:])
    assert torch.equal(small.updates[:4], big.updates[:4])  # one added client: one added row
    assert float(small.weights[4]) == float(small.weights[:4].median())
    with pytest.raises(UpdateError, match="client_ids"):
        audit.aggregate(UpdateBatch(torch.zeros(1, 30), torch.ones(1), (CANARY_ID_BASE,)), {})


def test_the_inner_epsilon_sampling_and_budget_pass_through():
    inner = DPFedAvg(noise_multiplier=1.3, sample_rate=0.3, expected_clients=3.0, target_epsilon=9.0)
    audit = CanaryAudit(canaries=200, inner=inner)
    assert audit.epsilon_after(7, 50) == inner.epsilon_after(7, 50)
    assert audit.poisson_sample_rate() == 0.3 and audit.privacy_budget() == 9.0 and audit.claims_dp()
    assert audit.report_delta() == inner.delta
    # canaries take part at the inner rule's Poisson rate, and half of them are inserted
    inserted = audit.included()
    assert 70 < inserted.sum() < 130
    rate = np.mean([np.isin(np.flatnonzero(inserted), audit.participants(r)).mean() for r in range(1, 41)])
    assert rate == pytest.approx(0.3, abs=0.03)
    assert Aggregator.from_dict(json.loads(json.dumps(audit.to_dict()))) == audit


def test_the_report_is_empty_before_a_release_and_logged_every_round():
    audit = CanaryAudit(canaries=20, inner=DPFedAvg(noise_multiplier=1.0, sampling="none",
                                                     simulation_seed=0))
    empty = audit.report(audit.init_state(40))
    assert empty["empirical_epsilon"] is None and empty["canaries"] == 20
    out = audit.aggregate(_batch(3, 40), audit.init_state(40))
    assert out.metrics["audit/canaries"] == 20.0 and "audit/empirical_epsilon" in out.metrics
    assert "inner/noise_std" in out.metrics and torch.equal(out.state["sum"], out.update.double())
    assert all(math.isfinite(v) for v in out.metrics.values())


@dataclasses.dataclass(frozen=True)
class ScaledNoise(DPFedAvg, kind="test-audit-scaled-noise"):
    """A BROKEN DP-FedAvg (test only): draws noise_scale times the noise it is accounted for."""

    noise_scale: float = 0.25

    def aggregate_with_noise(self, batch, state, rng=None):
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(DPFedAvg)}
        weak = DPFedAvg(**{**fields, "noise_multiplier": self.noise_multiplier * self.noise_scale})
        return weak.aggregate_with_noise(batch, state, rng)


def audited_run(scale: float, z: float, *, dim: int, canaries: int, rounds: int, inclusion: str,
                null: int | None = None, clients: int = 10, seed: int = 0):
    """Rounds of a (possibly broken) DP-FedAvg on random client rows, audited; (accountant eps, report).
    Noise is seeded (simulation_seed) so that the test is reproducible."""
    inner = ScaledNoise(clip=1.0, noise_multiplier=z, expected_clients=float(clients), sampling="none",
                        simulation_seed=seed, noise_scale=scale)
    audit = CanaryAudit(canaries=canaries, null_canaries=null, seed=seed, inclusion=inclusion, inner=inner)
    state = audit.init_state(dim)
    g = torch.Generator().manual_seed(seed)
    for r in range(1, rounds + 1):
        rows = torch.randn(clients, dim, generator=g) * (2.0 / dim**0.5)
        batch = UpdateBatch(rows, torch.ones(clients, dtype=torch.float64), tuple(range(clients)),
                            round=r, seed=1000 * seed + r)
        state = audit.aggregate(batch, state).state
    return audit.epsilon_after(rounds, dim), audit.report(state)


def test_the_audit_catches_noise_divided_by_four():
    accountant, rep = audited_run(0.25, 2.0, dim=4000, canaries=300, rounds=4, inclusion="all")
    honest_gdp = gdp_epsilon(math.sqrt(4) / 2.0, DELTA)  # what z = 2 over 4 rounds really gives
    assert accountant == pytest.approx(4.73, abs=0.01) and honest_gdp < accountant
    assert rep["ci_low"] > 2.5 * accountant  # clearly above: about 14 nats
    assert rep["empirical_epsilon"] > 2.5 * accountant


def test_the_one_run_lower_bound_catches_noise_left_out():
    accountant, rep = audited_run(1e-6, 6.0, dim=2000, canaries=400, null=100, rounds=2, inclusion="half")
    assert accountant < 1.0
    assert rep["lower_bound_95"] > 2.5 * accountant  # a proof, at 95%, that the claim is false
    assert rep["ci_low"] > 10 * accountant


@pytest.mark.parametrize("seed", [0, 1])
def test_a_correct_mechanism_is_not_flagged(seed):
    accountant, rep = audited_run(1.0, 2.0, dim=4000, canaries=300, rounds=4, inclusion="half", seed=seed)
    assert rep["lower_bound_95"] < accountant
    assert rep["ci_low"] <= accountant <= rep["ci_high"] or rep["ci_high"] < accountant
    assert rep["empirical_epsilon"] < 1.25 * accountant
    assert rep["null_std"] == pytest.approx(4000 ** -0.5, rel=0.15)  # the null really is N(0, 1/d)
    accountant, rep = audited_run(1.0, 6.0, dim=2000, canaries=400, null=100, rounds=2, inclusion="half",
                                  seed=seed)
    assert rep["lower_bound_95"] < accountant


# ----------------------------------------------------------------------------------- command line


def test_train_audit_canaries_reports_next_to_the_epsilon(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--audit-canaries", "20", "--rounds", "2", "--clients", "5", "--local-epochs", "1",
                 "--dp", "central", "--noise-multiplier", "1.0", "--out", str(out), "--no-progress"]) == 0
    printed = " ".join(capsys.readouterr().out.split())
    assert "privacy audit (20 canaries" in printed and "(accountant: " in printed
    doc = json.loads((out / "results.json").read_text())
    agg = doc["config"]["fedavg"]["aggregator"]
    assert agg["kind"] == "canary-audit" and agg["inner"]["kind"] == "dp-fedavg"
    assert [r["clients"] for r in doc["rounds"]] == [5, 5]  # canaries are not clients
    summary = doc["summary"]
    assert summary["audit"]["accountant_epsilon"] == summary["final_epsilon"] == doc["rounds"][-1]["epsilon"]
    assert summary["audit"]["canaries"] == 20 and summary["audit"]["round"] == 2
    assert "empirical_epsilon" in summary["audit"] and "lower_bound_95" in summary["audit"]
    assert all("agg/audit/empirical_epsilon" in r for r in doc["rounds"])


def _config(*flags: str):
    return config_from_args(_build_parser().parse_args(["train", "--clients", "10", "--rounds", "3", *flags]))


def test_audit_flags_wrap_every_client_level_mechanism():
    for dp in (["--dp", "central"], ["--dp", "adaptive"], ["--dp", "local"]):
        agg = _config(*dp, "--noise-multiplier", "1.0", "--audit-canaries", "8", "--audit-inclusion", "all"
                      ).fedavg.aggregator
        assert isinstance(agg, CanaryAudit) and agg.canaries == 8 and agg.inclusion == "all"
    agg = _config("--dp", "distributed", "--fraction", "0.5", "--noise-multiplier", "1.0",
                  "--audit-canaries", "6").fedavg.aggregator
    inner = agg.inner
    # the ring and denominator carry the canaries; the noise is still planned for the 5 real clients
    assert isinstance(inner, DistributedDP) and (inner.expected_clients, inner.min_clients) == (11, 5)
    assert math.isfinite(agg.epsilon_after(3, 100))


@pytest.mark.parametrize("flags, message", [
    (["--audit-canaries", "8"], "needs --dp central"),
    (["--dp", "dpsgd", "--noise-multiplier", "1", "--audit-canaries", "8"], "needs --dp central"),
    (["--dp", "central", "--noise-multiplier", "1", "--audit-canaries", "2"], "canaries"),
    (["--audit-inclusion", "half"], "needs --audit-canaries"),
])
def test_bad_audit_flags_are_refused(flags, message):
    with pytest.raises(FlagError, match=message):
        _config(*flags)


def test_serve_refuses_canaries(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["serve", "--dp", "central", "--noise-multiplier", "1", "--audit-canaries", "8",
              "--registry", str(tmp_path / "registry.json"), "--out", str(tmp_path)])
    assert exit_.value.code == 2 and "secagg serve does not insert them" in capsys.readouterr().err
    # a configuration file that smuggles the wrapper in is refused by the server itself
    with pytest.raises(ConfigError, match="simulation only"):
        network_mode(CanaryAudit(inner=DPFedAvg()))


def test_bench_audits_the_dp_defences(tmp_path):
    from grids import TINY

    from attacks.bench import run_grid, write_reports
    from attacks.bench.config import parse
    from attacks.bench.runner import Audit

    dp = ('dp = { kind = "dp-fedavg", clip = 0.3, noise_multiplier = 1.0, expected_clients = 5.0, '
          'sampling = "none" }')
    toml = TINY.replace('ipm = { update = { kind = "ipm", epsilon = 10.0 } }\n', "").replace(
        'median = { kind = "median" }', dp)
    assert "ipm" not in toml and "dp-fedavg" in toml
    import tomllib

    grid = parse(tomllib.loads(toml))
    rows = run_grid(grid, tmp_path, progress=False, jobs=1, audit=Audit(10))
    by = {r["defence"]: r for r in rows if r.get("section") != "baseline"}
    assert "audit_empirical_epsilon" not in by["mean"]
    assert by["dp"]["audit_canaries"] == 10 and by["dp"]["audit_empirical_epsilon"] is not None
    summary = write_reports(tmp_path, grid, rows)["summary"].read_text()
    assert "## Privacy audit" in summary and "| dp | iid | none |" in summary
    with pytest.raises(ConfigError, match="another benchmark configuration"):
        run_grid(grid, tmp_path, progress=False, jobs=1, audit=Audit(12))
