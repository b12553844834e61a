"""Model- and data-poisoning attacks: known answers on hand-computed cases and their defining properties."""

from __future__ import annotations

import math
from dataclasses import dataclass

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from attacks import (
    ALIE,
    IPM,
    AdaptiveALIE,
    AdaptiveIPM,
    AttackContext,
    Backdoor,
    ByzantineClients,
    DataAttack,
    GaussianNoise,
    LabelFlip,
    Mimic,
    MinMax,
    MinSum,
    ModelReplacement,
    Scaling,
    SignFlip,
    UpdateAttack,
    alie_z,
)
from attacks.adaptive import line_maximize
from secagg.aggregation import CoordinateMedian, Mean, UpdateBatch
from secagg.aggregation.distances import pairwise_sq_distances
from secagg.data.federated import ClientData
from secagg.data.partition import PartitionConfig
from secagg.errors import ConfigError
from secagg.fedavg import ClientConfig, FedAvg, FedAvgConfig
from secagg.task import TaskConfig, build_task


def ctx(honest, own=None, defence=None, f=2, weights=None) -> AttackContext:
    honest = torch.as_tensor(honest, dtype=torch.float64)
    own = torch.ones(f, honest.shape[1], dtype=torch.float64) if own is None else torch.as_tensor(
        own, dtype=torch.float64)
    w = None if weights is None else torch.as_tensor(weights, dtype=torch.float64)
    return AttackContext(honest, own, honest.shape[0] + own.shape[0], defence, weights=w)


def rule(aggregator):
    def defence(stack: torch.Tensor) -> torch.Tensor:
        n = stack.shape[0]
        return aggregator.aggregate(UpdateBatch(stack, torch.ones(n), tuple(range(n))), {}).update
    return defence


HONEST = [[1.0, 2.0], [3.0, 4.0], [5.0, 9.0]]  # mean (3, 5); unbiased std (2, sqrt(13))


def test_alie_known_answer_with_three_honest_vectors():
    out = ALIE(z=1.0).craft(ctx(HONEST))
    expected = torch.tensor([3.0 - 2.0, 5.0 - math.sqrt(13.0)], dtype=torch.float64)
    assert out.shape == (2, 2)
    torch.testing.assert_close(out, expected.expand(2, 2), rtol=0, atol=1e-12)


def test_alie_default_z_is_the_papers_z_max():
    # Baruch et al.: n = 50, f = 12: s = 26 - 12 = 14 supporters, z = Phi^-1(36 / 50)
    assert alie_z(50, 12) == pytest.approx(0.5828, abs=1e-4)
    c = ctx(HONEST, f=2)  # n = 5, f = 2: s = 1, z = Phi^-1(4/5)
    z = alie_z(5, 2)
    assert z == pytest.approx(0.8416, abs=1e-4)
    torch.testing.assert_close(ALIE().craft(c)[0], c.honest_mean() - z * c.honest_std())


def test_ipm_is_exactly_minus_epsilon_times_the_honest_mean():
    out = IPM(epsilon=0.5).craft(ctx(HONEST))
    assert torch.equal(out, torch.tensor([[-1.5, -2.5], [-1.5, -2.5]], dtype=torch.float64))


def test_sign_flip_scaling_and_model_replacement_use_the_attackers_own_updates():
    c = ctx(HONEST, own=[[1.0, -2.0], [0.5, 0.0]])
    assert torch.equal(SignFlip().craft(c), -c.own)
    assert torch.equal(Scaling(factor=3.0).craft(c), 3.0 * c.own)
    assert torch.equal(ModelReplacement().craft(c), 2.5 * c.own)  # n = 5 updates, f = 2, server lr 1
    assert torch.equal(ModelReplacement(server_lr=0.5).craft(c), 5.0 * c.own)
    assert torch.equal(ModelReplacement(boost=7.0).craft(c), 7.0 * c.own)
    assert not SignFlip.omniscient and ALIE.omniscient


def replaced_step(aggregator, honest, own, weights, attack: ModelReplacement) -> tuple[torch.Tensor, ...]:
    """(the server's step, the attackers' target) for one round: the honest rows are first re-centred
    so that their contribution to ``aggregator`` cancels (the paper's near-convergence assumption),
    and the target is the attackers' weighted mean own update (their plain mean when unweighted)."""
    h = torch.as_tensor(honest, dtype=torch.float64)
    own = torch.as_tensor(own, dtype=torch.float64)
    w = torch.as_tensor(weights, dtype=torch.float64)
    used = w if attack.weighted else torch.ones_like(w)
    wh, wa = used[: len(h)], used[len(h):]
    h = h - (wh @ h) / wh.sum()
    c = AttackContext(h, own, len(w), weights=w)
    stack = torch.cat([h, attack.craft(c)])
    agg = aggregator.aggregate(UpdateBatch(stack, w, tuple(range(len(w)))), {}).update
    return attack.server_lr * agg, (wa @ own) / wa.sum()


def test_model_replacement_replaces_the_model_under_the_example_weighted_mean():
    # one attacker holding 40 of 100 examples among 4 clients, server lr 1: the old n / eta = 4
    # overshoots (the step would be 1.6x its model); sum(w) / w_attacker = 2.5 lands on it
    honest, own, weights = [[1.0, -2.0], [0.5, 3.0], [-1.0, 0.0]], [[2.0, 1.0]], [20.0, 20.0, 20.0, 40.0]
    step, target = replaced_step(Mean(), honest, own, weights, ModelReplacement())
    torch.testing.assert_close(step, target, rtol=0, atol=1e-12)
    assert ModelReplacement().craft(ctx(honest, own, weights=weights)).tolist() == [[5.0, 2.5]]


@settings(max_examples=80, deadline=None)
@given(st.integers(1, 6), st.integers(1, 3), st.integers(1, 4), st.sampled_from([0.1, 0.5, 1.0, 2.0]),
       st.booleans(), st.data())
def test_model_replacement_lands_on_the_attackers_model(h, f, d, server_lr, weighted, data):
    weights = data.draw(st.lists(st.integers(1, 500), min_size=h + f, max_size=h + f))
    honest = data.draw(arrays("float64", (h, d), elements=st.floats(-10, 10)))
    own = data.draw(arrays("float64", (f, d), elements=st.floats(-10, 10)))
    attack = ModelReplacement(server_lr=server_lr, weighted=weighted)
    step, target = replaced_step(Mean(weighted=weighted), honest, own, weights, attack)
    torch.testing.assert_close(step, target, rtol=1e-9, atol=1e-9)
    if not weighted:  # an unweighted rule: the paper's n / (eta f), whatever the example counts
        assert attack.default_boost(ctx(honest, own, weights=weights)) == (h + f) / (server_lr * f)


SEEN: list[dict[str, torch.Tensor]] = []


@dataclass(frozen=True)
class RecordingByzantine(ByzantineClients, kind="test-recording-byzantine"):
    """ByzantineClients that keep what the server handed them (for the test below only)."""

    def craft(self, honest, own, defence, seed, weights=None):
        out = super().craft(honest, own, defence, seed, weights)
        SEEN.append({"honest": honest, "own": own, "weights": weights, "sent": out})
        return out


def test_the_server_hands_the_attackers_the_example_counts_and_replacement_lands():
    # a Dirichlet split gives the clients unequal example counts; one real FedAvg round (server lr
    # 0.5) with the default example-weighted Mean: the global model moves by the honest clients'
    # weighted contribution plus exactly the attackers' weighted mean own update
    task = build_task(TaskConfig(num_clients=6, partition=PartitionConfig(kind="dirichlet", alpha=0.5)),
                      seed=1)
    config = FedAvgConfig(rounds=1, server_lr=0.5, client=ClientConfig(epochs=1, batch_size=32),
                          adversary=RecordingByzantine(0.34, update_attack=ModelReplacement(server_lr=0.5)))
    trainer = FedAvg(config, task.model, task.data, seed=0)
    SEEN.clear()
    start = trainer.initial_state()
    result = trainer.run_round(start)
    (seen,) = SEEN
    counts = [float(len(task.data.partition[i])) for i in range(6)]
    w = seen["weights"].double()
    assert len(trainer.malicious) == 2 and sorted(w[4:].tolist()) == sorted(
        counts[i] for i in trainer.malicious), "the attackers' rows come last, with their counts"
    assert sorted(w.tolist()) == sorted(counts)
    assert len(set(counts)) > 1, "the counts must differ for this test to mean anything"
    wh, wa = w[:4], w[4:]
    honest_part = (wh @ seen["honest"].double()) / w.sum()
    target = (wa @ seen["own"].double()) / wa.sum()
    flat = trainer.layout.flatten
    moved = flat(result.state.model).double() - flat(start.model).double()
    torch.testing.assert_close(moved, 0.5 * honest_part + target, rtol=1e-4, atol=1e-6)


def test_model_replacement_refuses_attackers_without_examples():
    with pytest.raises(ConfigError, match="weights: the attackers' weights must sum to > 0"):
        ModelReplacement().craft(ctx(HONEST, weights=[1.0, 2.0, 3.0, 0.0, 0.0]))
    with pytest.raises(ConfigError, match=r"weights: expected \(5,\)"):
        ctx(HONEST, weights=[1.0, 2.0])
    with pytest.raises(ConfigError, match="weighted: must be true or false"):
        ModelReplacement(weighted="yes")


def test_gaussian_is_seeded_and_has_the_stated_moments():
    c = AttackContext(torch.zeros(3, 20000), torch.zeros(2, 20000), 5, seed=7)
    a, b = GaussianNoise(mean=1.0, std=3.0).craft(c), GaussianNoise(mean=1.0, std=3.0).craft(c)
    assert torch.equal(a, b) and a.shape == (2, 20000)
    assert float(a.mean()) == pytest.approx(1.0, abs=0.1)  # 5 sigma of the mean of 40000 draws = 0.075
    assert float(a.std()) == pytest.approx(3.0, rel=0.03)


honest_stacks = st.tuples(st.integers(3, 8), st.integers(1, 6)).flatmap(
    lambda s: arrays("float64", s, elements=st.floats(-10, 10)))


@settings(max_examples=60, deadline=None)
@given(honest_stacks, st.sampled_from(["unit_vec", "std", "sign"]))
def test_min_max_stays_within_the_honest_spread_and_is_tight(honest, perturbation):
    c = ctx(honest)
    attack = MinMax(perturbation=perturbation)
    m = attack.craft(c)[0]
    h = c.honest
    worst = float(pairwise_sq_distances(h).max())
    assert float(((h - m) ** 2).sum(dim=1).max()) <= worst + 1e-9
    assert torch.equal(attack.craft(c)[1], m), "every attacker sends the same update"


@settings(max_examples=60, deadline=None)
@given(honest_stacks, st.sampled_from(["unit_vec", "std", "sign"]))
def test_min_sum_stays_within_the_honest_sum_of_distances(honest, perturbation):
    c = ctx(honest)
    m = MinSum(perturbation=perturbation).craft(c)[0]
    h = c.honest
    assert float(((h - m) ** 2).sum()) <= float(pairwise_sq_distances(h).sum(dim=1).max()) + 1e-9


def test_min_max_search_finds_the_largest_gamma():
    # honest on a line: 0, 1, 2 (1-D); mean 1, std 1, perturbation -std = -1: m = 1 - gamma.
    # max distance to an honest value |1 - gamma - 2| = 1 + gamma <= max honest distance 2: gamma = 1
    m = MinMax(perturbation="std").craft(ctx([[0.0], [1.0], [2.0]]))[0, 0]
    assert float(m) == pytest.approx(0.0, abs=1e-4)


def test_min_sum_search_finds_the_largest_gamma():
    # honest 0, 1, 2; m = 1 - gamma: sum of squared distances 2 + 3 gamma^2 <= the largest honest
    # sum, 0 + 1 + 4 = 5, so gamma = 1 and m = 0
    m = MinSum(perturbation="std").craft(ctx([[0.0], [1.0], [2.0]]))[0, 0]
    assert float(m) == pytest.approx(0.0, abs=1e-4)


def test_mimic_copies_the_honest_update_along_the_main_direction():
    honest = [[-3.0, 0.1], [1.0, 0.0], [2.0, -0.1]]  # spread along x; row 0 is farthest along it
    out = Mimic().craft(ctx(honest))
    assert torch.equal(out, torch.tensor([honest[0], honest[0]], dtype=torch.float64))


def test_adaptive_attacks_are_at_least_as_strong_as_fixed_ones():
    g = torch.Generator().manual_seed(0)
    honest = 1.0 + 0.3 * torch.randn(8, 5, generator=g, dtype=torch.float64)
    for defence in (rule(CoordinateMedian()), rule(Mean())):
        c = ctx(honest, f=3, defence=defence)
        mean = c.honest_mean()

        def gap(attack: UpdateAttack, c=c, defence=defence, mean=mean) -> float:
            return float(torch.linalg.vector_norm(defence(torch.cat([c.honest, attack.craft(c)])) - mean))

        assert gap(AdaptiveIPM()) >= max(gap(IPM(epsilon=e)) for e in (0.1, 1.0)) - 1e-12
        assert gap(AdaptiveALIE()) >= max(gap(ALIE(z=z)) for z in (0.5, 1.5)) - 1e-12
    # against the plain mean the strongest IPM is the largest epsilon on the grid
    c = ctx(honest, f=3, defence=rule(Mean()))
    torch.testing.assert_close(AdaptiveIPM().craft(c), IPM(epsilon=100.0).craft(c))
    # without a known defence: the fixed-strength attack
    assert torch.equal(AdaptiveIPM().craft(ctx(honest, f=3)), IPM().craft(ctx(honest, f=3)))


def test_adaptive_grid_breaks_ties_towards_the_first_candidate():
    # a defence that ignores the attackers gives every strength the same distance (0): the grid keeps
    # its first candidate, the smallest strength (+z_min for ALIE, epsilon_min for IPM)
    c = ctx(HONEST, f=2, defence=lambda stack: stack[:3].mean(dim=0))
    torch.testing.assert_close(AdaptiveALIE(z_min=0.1).craft(c), ALIE(z=0.1).craft(c))
    torch.testing.assert_close(AdaptiveIPM(epsilon_min=0.2).craft(c), IPM(epsilon=0.2).craft(c))
    torch.testing.assert_close(AdaptiveALIE(z_min=0.1, search="line").craft(c), ALIE(z=0.1).craft(c))


def test_line_search_known_answers_and_evaluation_budget():
    calls: list[float] = []

    def rising(x: float) -> float:
        calls.append(x)
        return x

    # a rising objective: every expansion step improves, 15 doublings after the start
    best, value = line_maximize(rising, start=0.05, delta=1.0, ratio=0.8, evals=16)
    assert best == value == pytest.approx(0.05 + 2**15 - 1) and len(calls) == 16
    # against the plain mean the distance grows with epsilon: the line search finds the same point
    c = ctx(HONEST, f=2, defence=rule(Mean()))
    torch.testing.assert_close(AdaptiveIPM(search="line").craft(c), IPM(epsilon=0.05 + 2**15 - 1).craft(c))


@settings(max_examples=60, deadline=None)
@given(st.floats(0.0, 50.0), st.integers(8, 48))
def test_line_search_climbs_a_single_peak(peak, evals):
    calls: list[float] = []

    def tent(x: float) -> float:
        calls.append(x)
        return -abs(x - peak)

    best, value = line_maximize(tent, start=0.0, delta=1.0, ratio=0.8, evals=evals)
    assert len(calls) == evals and min(calls) >= 0.0
    assert value == max(tent(x) for x in calls[:evals]) == -abs(best - peak)
    assert value >= -peak, "never worse than the start"
    # a best-effort search, not a convergent one (measured worst case over peaks in [0, 50]: 3.3 away
    # after 16 evaluations, 1.0 after 24, 0.09 after 40)
    if evals >= 24:
        assert abs(best - peak) < (1.5 if evals < 40 else 0.25)


def test_label_flip_known_answers():
    data = ClientData(torch.zeros(4, 1, 8, 8), torch.tensor([0, 1, 7, 9]))
    assert LabelFlip().poison(data, 10, 0).y.tolist() == [9, 8, 2, 0]
    assert LabelFlip(mode="targeted", source=1, target=7).poison(data, 10, 0).y.tolist() == [0, 7, 7, 9]
    assert data.y.tolist() == [0, 1, 7, 9], "input untouched"
    with pytest.raises(ConfigError, match="target: must differ from source"):
        LabelFlip(mode="targeted", source=3, target=3)


def test_backdoor_stamps_the_trigger_and_adds_relabelled_copies():
    x = torch.zeros(10, 1, 8, 8)
    data = ClientData(x, torch.arange(10) % 3 + 1)
    attack = Backdoor(target=0, fraction=0.5, size=2, value=1.0)
    poisoned = attack.poison(data, 10, seed=3)
    assert len(poisoned) == 15 and poisoned.y[10:].tolist() == [0] * 5
    assert torch.equal(poisoned.x[:10], x) and float(x.sum()) == 0.0, "clean part kept, input untouched"
    assert torch.all(poisoned.x[10:, :, -2:, -2:] == 1.0) and float(poisoned.x[10:].sum()) == 5 * 4
    # success: among non-target test examples (4 of 5), 3 predicted as the target
    y = torch.tensor([0, 1, 2, 3, 4])
    assert attack.success_rate(torch.tensor([0, 0, 0, 0, 4]), y) == pytest.approx(0.75)


@pytest.mark.parametrize("family", [UpdateAttack, DataAttack])
def test_every_kind_round_trips_through_its_dict(family):
    for kind in family.kinds():
        value = family.from_dict({"kind": kind})
        assert family.from_dict(value.to_dict()) == value


def test_bad_settings_name_the_field():
    with pytest.raises(ConfigError, match="epsilon: must be > 0"):
        IPM(epsilon=0.0)
    with pytest.raises(ConfigError, match="perturbation"):
        MinMax(perturbation="up")
    with pytest.raises(ConfigError, match=r"attack\.kind: unknown 'nope'"):
        UpdateAttack.from_dict({"kind": "nope"})
    with pytest.raises(ConfigError, match="f: "):
        alie_z(10, 0)


def test_backdoor_position_places_the_trigger_and_the_corner_stays_the_default():
    x = torch.rand(3, 2, 8, 7)
    corner = x.clone()
    corner[..., -2:, -2:] = 1.0
    assert Backdoor().position == "corner"
    assert torch.equal(Backdoor().apply_trigger(x), corner), "default: the bottom-right square, as before"
    assert torch.equal(Backdoor(position="corner").apply_trigger(x), corner)
    center = Backdoor(size=2, value=5.0, position="center").apply_trigger(torch.zeros(1, 2, 8, 8))
    for channel in center[0]:  # every channel, the middle 2x2 of the 8x8 image
        assert channel.nonzero().tolist() == [[3, 3], [3, 4], [4, 3], [4, 4]]
        assert float(channel.sum()) == 20.0
    odd = Backdoor(size=3, position="center").apply_trigger(torch.zeros(1, 1, 8, 7))[0, 0]
    assert odd.nonzero().tolist() == [[r, c] for r in (2, 3, 4) for c in (2, 3, 4)]
    assert torch.equal(Backdoor(size=8, position="center").apply_trigger(torch.zeros(1, 1, 8, 8)),
                       torch.ones(1, 1, 8, 8)), "a trigger as large as the image covers all of it"
    data = ClientData(torch.zeros(4, 1, 8, 8), torch.tensor([1, 2, 3, 4]))
    poisoned = Backdoor(target=0, fraction=0.5, position="center").poison(data, 10, seed=0)
    assert torch.all(poisoned.x[4:, :, 3:5, 3:5] == 1.0) and float(poisoned.x[4:].sum()) == 2 * 4
    assert float(data.x.sum()) == 0.0, "input untouched"


def test_backdoor_position_is_validated_and_bench_specs_set_it_by_name():
    with pytest.raises(ConfigError, match="position: must be one of 'corner', 'center', got 'middle'"):
        Backdoor(position="middle")
    with pytest.raises(ConfigError, match="position: "):
        Backdoor(position=1)
    with pytest.raises(ConfigError, match="size: the 3x3 trigger needs images"):
        Backdoor(size=3, position="center").apply_trigger(torch.zeros(1, 1, 2, 8))
    assert DataAttack.from_dict({"kind": "backdoor", "position": "center", "size": 3}) == Backdoor(
        position="center", size=3)

    from attacks.bench.config import parse

    def bench(data: dict) -> object:
        return parse({"attacks": {"bd": {"data": data, "update": {"kind": "model-replacement"}}},
                      "defences": {"mean": {"kind": "mean"}}})

    built = bench({"kind": "backdoor", "position": "center"}).attacks[0].build()
    assert built[1] == Backdoor(position="center")
    with pytest.raises(ConfigError, match=r"attacks\.bd: position: must be one of"):
        bench({"kind": "backdoor", "position": "middle"})
