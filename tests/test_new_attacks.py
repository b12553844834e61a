"""Issue 19's attacks: Fang et al.'s Krum and trimmed-mean attacks, ByzFL's optimal line search (a
conformance test against the real package), the distributed backdoor (DBA), Neurotoxin, and the
attack window with the bench's durability figures."""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import math
import sys
import types
from dataclasses import dataclass

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from attacks import (
    ALIE,
    AdaptiveALIE,
    AdaptiveIPM,
    AttackContext,
    ByzantineClients,
    DataAttack,
    DistributedBackdoor,
    FangKrum,
    FangTrim,
    Neurotoxin,
    SignFlip,
    UpdateAttack,
)
from attacks.adaptive import byzfl_line_search
from attacks.bench.config import parse
from attacks.bench.runner import durability
from secagg.aggregation import CoordinateMedian, Krum, Mean, TrimmedMean, UpdateBatch
from secagg.data.federated import ClientData
from secagg.errors import ConfigError
from secagg.fedavg import ClientConfig, FedAvg, FedAvgConfig
from secagg.fedavg.trainer import FrozenSGDTrainer, SGDTrainer
from secagg.layout import ParamLayout
from secagg.seeding import torch_generator
from secagg.task import TaskConfig, build_task

BYZFL_HINT = "pip install --no-deps byzfl==0.0.11"


def rule(aggregator):
    def defence(stack: torch.Tensor) -> torch.Tensor:
        n = stack.shape[0]
        return aggregator.aggregate(UpdateBatch(stack, torch.ones(n, dtype=stack.dtype), tuple(range(n))),
                                    {}).update
    return defence


def gap(defence, ctx: AttackContext, rows: torch.Tensor) -> float:
    aggregate = defence(torch.cat([ctx.honest, rows])).double()
    return float(torch.linalg.vector_norm(aggregate - ctx.honest_mean()))


# ---------------------------------------------------------------- Fang et al. (USENIX Security 2020)


def test_fang_krum_upper_bound_known_answer():
    # m = 5 updates, c = 1 attacker, d = 1: honest 0, 1, 3, 6. Each honest update's m - c - 2 = 2
    # nearest honest: 0 -> 1 + 3, 1 -> 1 + 2, 3 -> 2 + 3, 6 -> 3 + 5; min 3, over (m - 2c - 1) sqrt(d)
    # = 2: 1.5; plus max ||u_i|| / sqrt(d) = 6
    ctx = AttackContext(torch.tensor([[0.0], [1.0], [3.0], [6.0]], dtype=torch.float64),
                        torch.zeros(1, 1, dtype=torch.float64), 5)
    assert FangKrum().upper_bound(ctx) == pytest.approx(7.5, abs=1e-12)


def krum_picks_crafted(ctx: AttackContext, rows: torch.Tensor, f: int) -> bool:
    out = rule(Krum(f=f))(torch.cat([ctx.honest, rows]))
    return any(torch.equal(out, r) for r in rows)


@pytest.mark.parametrize("seed", range(4))
def test_fang_krum_gets_selected_where_alie_and_sign_flip_do_not(seed):
    # planted non-IID round: 7 honest clients near convergence (updates ~0), 3 with large updates
    # (~3 per coordinate), and 3 attackers whose own updates look like the large ones. Krum keeps a
    # near-zero honest update against ALIE (mean - z std sits between the groups) and sign flipping
    # (-own is far from everyone); Fang's search shrinks lambda until -lambda s sits in the
    # near-zero group and Krum picks it, with the deployed Krum or with its own simulation.
    h, f, d = 10, 3, 30
    g = torch_generator(seed, "fang-krum-test")
    near = 0.05 * torch.randn(7, d, generator=g, dtype=torch.float64)
    far = 3.0 + 0.5 * torch.randn(3, d, generator=g, dtype=torch.float64)
    own = 3.0 + 0.5 * torch.randn(f, d, generator=g, dtype=torch.float64)
    honest = torch.cat([near, far])
    for defence in (rule(Krum(f=f)), None):
        ctx = AttackContext(honest, own, h + f, defence)
        assert not krum_picks_crafted(ctx, ALIE().craft(ctx), f)
        assert not krum_picks_crafted(ctx, SignFlip().craft(ctx), f)
        attack = FangKrum()
        lam = attack.strength(ctx)
        assert lam < attack.upper_bound(ctx) / 8, "the search had to halve lambda several times"
        rows = attack.craft(ctx)
        torch.testing.assert_close(rows, (-lam * torch.sign(ctx.honest_mean())).expand(f, d), rtol=0, atol=0)
        assert krum_picks_crafted(ctx, rows, f)


def test_fang_krum_sends_the_largest_halved_lambda_that_krum_selects_and_spreads_with_radius():
    # IID honest updates around +1: the paper's bound (3.3 here) puts -lambda s far from them; the
    # search halves it until Krum picks the crafted update, and not one halving more
    g = torch_generator(3, "fang-krum-iid")
    honest = 1.0 + torch.randn(12, 50, generator=g, dtype=torch.float64)
    ctx = AttackContext(honest, torch.zeros(3, 50, dtype=torch.float64), 15, rule(Krum(f=3)), seed=4)
    attack, s = FangKrum(), torch.sign(ctx.honest_mean())
    bound, lam = attack.upper_bound(ctx), attack.strength(ctx)
    halvings = math.log2(bound / lam)
    assert halvings == round(halvings) >= 1
    assert attack.selected(ctx, (-lam * s).expand(3, 50))
    assert not attack.selected(ctx, (-2 * lam * s).expand(3, 50))
    assert krum_picks_crafted(ctx, attack.craft(ctx), 3)
    # radius: attackers 2..c at that distance from attacker 1, in seeded random directions
    spread = FangKrum(radius=0.01)
    rows = spread.craft(ctx)
    torch.testing.assert_close(rows[0], -spread.strength(ctx) * s, rtol=0, atol=0)
    torch.testing.assert_close(torch.linalg.vector_norm(rows[1:] - rows[0], dim=1),
                               torch.full((2,), 0.01, dtype=torch.float64))
    assert torch.equal(rows, spread.craft(ctx)), "seeded"
    # a defence that never picks the attackers: lambda halves down to the threshold
    never = AttackContext(honest, ctx.own, 15, lambda stack: stack[0])
    assert 1e-3 <= FangKrum(threshold=1e-3).strength(never) < 2e-3


@pytest.mark.parametrize("seed", range(5))
def test_fang_trim_values_lie_beyond_the_honest_range_against_the_change_direction(seed):
    g = torch_generator(seed, "fang-trim-range")
    honest = torch.randn(12, 64, generator=g, dtype=torch.float64) + torch.linspace(-2, 2, 64,
                                                                                     dtype=torch.float64)
    ctx = AttackContext(honest, torch.zeros(4, 64, dtype=torch.float64), 16, seed=seed)
    rows = FangTrim().craft(ctx)
    top, bottom, s = honest.max(0).values, honest.min(0).values, torch.sign(ctx.honest_mean())
    down, up = s < 0, s > 0
    assert bool(down.any()) and bool(up.any())
    # s = -1: in [max, 2 max] (max > 0) or [max / 2, max] (max <= 0); s = +1: mirrored below the min
    hi = torch.where(top > 0, 2 * top, top / 2)
    assert bool(((rows >= top) & (rows <= torch.maximum(top, hi)))[:, down].all())
    lo = torch.where(bottom > 0, bottom / 2, 2 * bottom)
    assert bool(((rows <= bottom) & (rows >= torch.minimum(bottom, lo)))[:, up].all())
    assert torch.equal(rows, FangTrim().craft(ctx)), "seeded from ctx.seed"
    assert not torch.equal(rows, FangTrim().craft(dataclasses.replace(ctx, seed=seed + 1)))


@pytest.mark.parametrize("seed", range(5))
def test_fang_trim_moves_trimmed_mean_and_median_further_than_alie(seed):
    # measured over 20 seeds (h = 12, f = 4, d = 100): Fang / ALIE distance >= 2.0 for the trimmed
    # mean, >= 1.16 for the median (the median can move at most one order statistic per attacker,
    # which ALIE's z_max already nearly does)
    h, f, d = 12, 4, 100
    g = torch_generator(seed, "fang-trim-vs-alie")
    mu = torch.randn(d, generator=g, dtype=torch.float64)
    honest = mu + 0.5 * torch.randn(h, d, generator=g, dtype=torch.float64)
    own = mu + 0.5 * torch.randn(f, d, generator=g, dtype=torch.float64)
    for aggregator, factor in ((TrimmedMean(f=f), 1.6), (CoordinateMedian(), 1.08)):
        defence = rule(aggregator)
        ctx = AttackContext(honest, own, h + f, defence, seed=seed)
        assert gap(defence, ctx, FangTrim().craft(ctx)) > factor * gap(defence, ctx, ALIE().craft(ctx))


# ---------------------------------------------------------------- ByzFL's optimal attacks


def byzfl_attacks() -> tuple[types.ModuleType, types.ModuleType, types.ModuleType]:
    """ByzFL's attacks, aggregators and pre-aggregators, imported without its package __init__
    (which needs torchvision); fails (never skips) when byzfl is missing: CI installs it."""
    if "byzfl" not in sys.modules:
        spec = importlib.util.find_spec("byzfl")
        if spec is None or not spec.submodule_search_locations:
            pytest.fail(f"byzfl is not installed; the ByzFL conformance tests need it: {BYZFL_HINT}")
        package = types.ModuleType("byzfl")
        package.__path__ = list(spec.submodule_search_locations)
        package.__spec__ = spec
        sys.modules["byzfl"] = package
    try:
        return (importlib.import_module("byzfl.attacks.attacks"),
                importlib.import_module("byzfl.aggregators.aggregators"),
                importlib.import_module("byzfl.aggregators.preaggregators"))
    except ImportError as exc:
        pytest.fail(f"byzfl's attacks failed to import ({exc}); install the pinned release: {BYZFL_HINT}")


def traced(attack):
    """``attack`` (a ByzFL optimal attack) recording every (tau, objective) it evaluates and its
    chosen tau."""
    evaluate, contract = attack._evaluate, attack._contraction_phase
    attack.trace = []

    def recording_evaluate(honest, mean, tau):
        value = evaluate(honest, mean, tau)
        attack.trace.append((tau, value))
        return value

    def recording_contract(*args):
        attack.best = contract(*args)
        return attack.best

    attack._evaluate, attack._contraction_phase = recording_evaluate, recording_contract
    return attack


SEARCHES = [{}, {"start": 0.0, "delta": 0.5, "evals": 30}, {"start": 1.0, "delta": -0.25, "evals": 25}]


@pytest.mark.parametrize("seed", range(4))
def test_byzfl_search_reproduces_byzfl_optimal_alie_and_ipm(seed):
    # ByzFL's numpy backend (float64) on the same honest stack and the same rule: the same strength
    # (exactly: the same points are tried in the same order) and the same crafted vector. Krum:
    # ByzFL scores with the n - f - 1 nearest others, ours with neighbours=n - f - 1.
    attacks_, aggs, _ = byzfl_attacks()
    h, f, d = 9, 3, 6
    n = h + f
    g = torch_generator(seed, "byzfl-conformance")
    honest = 0.5 + torch.randn(h, d, generator=g, dtype=torch.float64)
    pairs = [(CoordinateMedian(), aggs.Median()), (Krum(f=f, neighbours=n - f - 1), aggs.Krum(f=f)),
             (TrimmedMean(f=f), aggs.TrMean(f=f)), (Mean(weighted=False), aggs.Average())]
    for ours, theirs in pairs:
        ctx = AttackContext(honest, torch.zeros(f, d, dtype=torch.float64), n, rule(ours))
        for kw in SEARCHES:
            for mine, cls, sign in (
                    (AdaptiveALIE(search="byzfl", **kw), attacks_.Optimal_ALittleIsEnough, -1.0),
                    (AdaptiveIPM(search="byzfl", **kw), attacks_.Optimal_InnerProductManipulation, 1.0)):
                reference = traced(cls(theirs, pre_agg_list=[], f=f, **kw))
                expected = torch.from_numpy(reference(honest.numpy().copy()))
                where = f"{type(ours).__name__} {cls.__name__} {kw}"
                assert mine.strength(ctx) == sign * reference.best, where  # ALIE: our z is ByzFL's -tau
                assert len(reference.trace) == (kw.get("evals", 20))
                torch.testing.assert_close(mine.craft(ctx)[0], expected, rtol=1e-12, atol=1e-12, msg=where)
                assert mine.craft(ctx).shape == (f, d)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(-5, 5), min_size=4, max_size=12), st.floats(-3, 3),
       st.sampled_from([10.0, 0.7, -1.5]), st.floats(0.51, 0.99), st.integers(1, 30))
def test_byzfl_line_search_probes_exactly_the_points_byzfl_probes(heights, start, delta, ratio, evals):
    # any objective (a piecewise-constant landscape, so ties happen): ByzFL's own expansion and
    # contraction phases, driven through its _evaluate, try the same points and keep the same one
    attacks_, aggs, _ = byzfl_attacks()

    def landscape(x: float) -> float:
        return heights[int(abs(x) * 3) % len(heights)]

    theirs = attacks_.Optimal_InnerProductManipulation(aggs.Average(), pre_agg_list=[], f=1, evals=evals,
                                                       start=start, delta=delta, ratio=ratio)
    probed: list[float] = []
    theirs._evaluate = lambda honest, mean, tau: probed.append(tau) or landscape(tau)
    best, value, delta_left, left = theirs._expansion_phase(None, None)
    expected = theirs._contraction_phase(None, None, best, value, delta_left, left)
    mine: list[float] = []
    got, got_value = byzfl_line_search(lambda x: mine.append(x) or landscape(x), start=start, delta=delta,
                                       ratio=ratio, evals=evals)
    assert mine == probed and got == expected and got_value == landscape(expected)


def test_byzfl_search_settings_are_checked():
    with pytest.raises(ConfigError, match="delta: must be non-zero"):
        AdaptiveIPM(search="byzfl", delta=0.0)
    with pytest.raises(ConfigError, match="delta: must be > 0"):
        AdaptiveIPM(search="line", delta=-1.0)
    with pytest.raises(ConfigError, match="start: only search 'byzfl'"):
        AdaptiveALIE(start=1.0)
    with pytest.raises(ConfigError, match="ratio"):
        AdaptiveALIE(search="byzfl", ratio=0.5)


# ---------------------------------------------------------------- distributed backdoor (DBA)


def test_dba_local_patterns_are_disjoint_and_make_up_the_global_trigger():
    attack = DistributedBackdoor()
    parts = [set(attack.pixels(k, 8, 8)) for k in range(4)]
    assert all(len(p) == 2 for p in parts)
    assert all(not (parts[i] & parts[j]) for i in range(4) for j in range(i + 1, 4))
    blank = torch.zeros(1, 1, 8, 8)
    stamped = attack.apply_trigger(blank)[0, 0]
    assert {(int(r), int(c)) for r, c in stamped.nonzero()} == set().union(*parts)
    assert set().union(*parts) == {(0, 0), (0, 1), (0, 6), (0, 7), (7, 0), (7, 1), (7, 6), (7, 7)}
    with pytest.raises(ConfigError, match="bar, thickness"):
        DistributedBackdoor(bar=5).apply_trigger(blank)


@pytest.mark.parametrize("attacker", range(6))
def test_each_dba_attacker_poisons_with_its_own_part_only(attacker):
    attack = DistributedBackdoor(target=3, fraction=0.5)
    data = ClientData(torch.zeros(10, 1, 8, 8), torch.arange(10) % 3 + 4)
    adversary = ByzantineClients(0.25, data_attack=attack)
    poisoned = adversary.poison_data(data, 10, seed=2, attacker=attacker)
    assert len(poisoned) == 15 and poisoned.y[10:].tolist() == [3] * 5
    assert torch.equal(poisoned.x[:10], data.x) and float(data.x.sum()) == 0.0
    own = set(attack.pixels(attacker % 4, 8, 8))
    for image in poisoned.x[10:, 0]:
        assert {(int(r), int(c)) for r, c in image.nonzero()} == own


def test_dba_success_is_measured_with_the_full_global_trigger():
    attack = DistributedBackdoor(target=0)
    x = torch.rand(20, 1, 8, 8) * 0.5
    y = torch.arange(20) % 10
    pixels = [p for k in range(4) for p in attack.pixels(k, 8, 8)]

    def needs_all(inputs: torch.Tensor) -> torch.Tensor:  # a model that fires only on every part
        full = torch.stack([inputs[:, 0, r, c] == 1.0 for r, c in pixels]).all(dim=0)
        return torch.where(full, 0, 1 + torch.arange(len(inputs)) % 9)

    def needs_one(inputs: torch.Tensor) -> torch.Tensor:  # fires on local pattern 2 alone
        r, c = attack.pixels(2, 8, 8)[0]
        return torch.where(inputs[:, 0, r, c] == 1.0, 0, 1)

    assert ByzantineClients(0.25, data_attack=attack).metrics(needs_all, x, y) == {"attack_success": 1.0}
    assert attack.metrics(needs_one, x, y) == {"attack_success": 1.0}
    assert attack.success_rate(needs_all(attack.apply_local_trigger(x, 1)), y) == 0.0


@dataclass(frozen=True)
class OldStyleAttack(DataAttack):
    """A data attack written before ``attacker`` existed (not registered: the attack matrix counts the
    registered kinds)."""

    def poison(self, data: ClientData, num_classes: int, seed: int) -> ClientData:  # type: ignore[override]
        return ClientData(data.x.clone(), torch.zeros_like(data.y))


def test_data_attacks_without_the_attacker_argument_keep_working():
    data = ClientData(torch.zeros(3, 1, 8, 8), torch.tensor([1, 2, 3]))
    out = ByzantineClients(0.25, data_attack=OldStyleAttack()).poison_data(data, 10, 0, attacker=5)
    assert out.y.tolist() == [0, 0, 0]


# ---------------------------------------------------------------- Neurotoxin


def test_neurotoxin_zeroes_the_top_coordinates_of_the_global_update():
    g = torch_generator(0, "neurotoxin")
    own = torch.randn(3, 120, generator=g, dtype=torch.float64)
    global_update = torch.randn(100, generator=g, dtype=torch.float64)  # 100 parameters, 20 buffers
    ctx = AttackContext(torch.zeros(2, 120, dtype=torch.float64), own, 5, global_update=global_update)
    out = Neurotoxin(ratio=0.05).craft(ctx)
    top = global_update.abs().topk(5).indices
    assert bool((out[:, top] == 0).all())
    keep = torch.ones(120, dtype=torch.bool)
    keep[top] = False
    assert torch.equal(out[:, keep], own[:, keep]), "everything else (buffers included) kept"
    assert Neurotoxin(ratio=0.011).masked(ctx)[0].sum() == 2  # ceil(0.011 * 100)
    # round 1 (no global update): each attacker masks its own update's top coordinates
    first = Neurotoxin(ratio=0.05).craft(dataclasses.replace(ctx, global_update=None))
    for row, mine in zip(first, own, strict=True):
        assert bool((row[mine.abs().topk(6).indices] == 0).all()) and int((row == 0).sum()) == 6
    bounded = Neurotoxin(ratio=0.05, norm_bound=1.0).craft(ctx)
    torch.testing.assert_close(torch.linalg.vector_norm(bounded, dim=1), torch.ones(3, dtype=torch.float64))
    with pytest.raises(ConfigError, match="global_update"):
        AttackContext(ctx.honest, own, 5, global_update=torch.zeros(121))


@dataclass(frozen=True)
class Recording(ByzantineClients, kind="test-recording-window"):
    """ByzantineClients that log the rounds they craft in and every global update handed to them."""

    def craft(self, honest, own, defence, seed, weights=None, *, global_update=None):
        sent = super().craft(honest, own, defence, seed, weights, global_update=global_update)
        LOG.append({"global_update": global_update, "own": own.clone(), "sent": sent})
        return sent


LOG: list[dict] = []


@pytest.fixture(scope="module")
def task():
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield build_task(TaskConfig(num_clients=8), seed=0)
    torch.set_num_threads(saved)


CLIENT = ClientConfig(epochs=2, batch_size=32)


def run(task, adversary, rounds: int, start=None) -> tuple[FedAvg, list[dict]]:
    trainer = FedAvg(FedAvgConfig(rounds=rounds, client=CLIENT, adversary=adversary), task.model, task.data,
                     seed=0)
    state = trainer.initial_state() if start is None else dataclasses.replace(trainer.initial_state(),
                                                                             model=start.model)
    records = []
    for _ in range(rounds):
        result = trainer.run_round(state)
        state = result.state
        records.append(result.record)
    return trainer, records


def test_neurotoxin_in_a_run_masks_by_the_previous_global_update(task):
    LOG.clear()
    adversary = Recording(0.25, data_attack=DistributedBackdoor(), update_attack=Neurotoxin(ratio=0.1))
    trainer = FedAvg(FedAvgConfig(rounds=2, client=CLIENT, adversary=adversary), task.model, task.data,
                     seed=0)
    first = trainer.initial_state()
    second = trainer.run_round(first).state
    trainer.run_round(second)
    assert LOG[0]["global_update"] is None
    flat = trainer.layout.flatten
    p = trainer.layout.num_parameters
    moved = flat(second.model)[:p] - flat(first.model)[:p]
    torch.testing.assert_close(LOG[1]["global_update"], moved)
    top = moved.abs().topk(math.ceil(0.1 * p)).indices
    assert bool((LOG[1]["sent"][:, top] == 0).all())


def test_neurotoxin_step_projection_trains_off_the_mask_and_the_rest_adapts(task):
    # the attackers' own trained rows (LOG "own") are 0 on the mask after projected SGD, while
    # projection="update" trains normally (nonzero there) and only zeroes the mask when sending; the
    # unmasked coordinates differ between the two, because training adapted to the frozen weights
    own_rows = {}
    for projection in ("step", "update"):
        LOG.clear()
        adversary = Recording(0.25, data_attack=DistributedBackdoor(),
                              update_attack=Neurotoxin(ratio=0.1, projection=projection))
        trainer = FedAvg(FedAvgConfig(rounds=2, client=CLIENT, adversary=adversary), task.model, task.data,
                         seed=0)
        state = trainer.run_round(trainer.initial_state()).state
        trainer.run_round(state)
        mask = Neurotoxin(ratio=0.1).top(LOG[1]["global_update"])
        own_rows[projection] = LOG[1]["own"][:, :mask.numel()]
        assert bool((LOG[1]["sent"][:, :mask.numel()][:, mask] == 0).all())
    assert bool((own_rows["step"][:, mask] == 0).all())
    assert bool((own_rows["update"][:, mask] != 0).any())
    assert not torch.equal(own_rows["step"][:, ~mask], own_rows["update"][:, ~mask])
    with pytest.raises(ConfigError, match="projection: must be one of"):
        Neurotoxin(projection="grad")


@settings(max_examples=8, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), density=st.sampled_from([0.0, 0.01, 0.3, 1.0]))
def test_frozen_coordinates_stay_at_the_global_value_through_momentum_and_weight_decay(task, seed, density):
    config = ClientConfig(epochs=2, batch_size=16, lr=0.1, momentum=0.9, weight_decay=0.01)
    p = task_layout(task).num_parameters
    frozen = torch.rand(p, generator=torch_generator(seed, "frozen")) < density
    data = task.data.client(0)
    update = FrozenSGDTrainer(frozen).train(task.model, task.model.state_dict(), data, config,
                                            task_layout(task), seed=seed, client_id=0)
    assert bool((update.delta[:p][frozen] == 0).all())
    if not bool(frozen.any()):  # no mask: exactly plain local SGD
        plain = SGDTrainer().train(task.model, task.model.state_dict(), data, config, task_layout(task),
                                   seed=seed, client_id=0)
        assert torch.equal(update.delta, plain.delta)
    elif not bool(frozen.all()):
        assert bool((update.delta[:p][~frozen] != 0).any())


def test_a_frozen_mask_of_the_wrong_shape_or_dtype_is_refused(task):
    p = task_layout(task).num_parameters
    for bad, got in ((torch.zeros(p + 1, dtype=torch.bool), f"shape \\({p + 1},\\)"),
                     (torch.zeros(p), "torch.float32"), ([False] * p, "list")):
        with pytest.raises(ConfigError, match=f"frozen: expected a bool tensor of shape \\({p},\\).*{got}"):
            FrozenSGDTrainer(bad).train(task.model, task.model.state_dict(), task.data.client(0), CLIENT,
                                        task_layout(task), seed=0, client_id=0)


def task_layout(task) -> ParamLayout:
    return ParamLayout.from_module(task.model)


# ---------------------------------------------------------------- attack window and durability


def test_attackers_behave_honestly_outside_the_window_and_success_is_logged_every_round(task):
    LOG.clear()
    attack = DistributedBackdoor()
    window = Recording(0.5, data_attack=attack, update_attack=Neurotoxin(), start_round=3, stop_round=3)
    _, attacked = run(task, window, 4)
    _, clean = run(task, None, 2)
    assert len(LOG) == 1, "crafted in round 3 only"
    for a, c in zip(attacked[:2], clean, strict=True):  # rounds 1-2: exactly an honest run
        assert (a["accuracy"], a["loss"], a["train_loss"]) == (c["accuracy"], c["loss"], c["train_loss"])
    assert all(isinstance(r["attack_success"], float) for r in attacked)
    assert [window.active(r) for r in range(1, 5)] == [False, False, True, False]
    with pytest.raises(ConfigError, match="stop_round: must be >= 3"):
        ByzantineClients(0.2, data_attack=attack, start_round=3, stop_round=2)


@pytest.fixture(scope="module")
def pretrained(task):
    """The global model after 12 honest rounds (test accuracy about 0.9)."""
    trainer = FedAvg(FedAvgConfig(rounds=12, client=CLIENT), task.model, task.data, seed=0)
    state = trainer.initial_state()
    for _ in range(12):
        state = trainer.run_round(state).state
    return state


def test_dba_plants_the_global_trigger_in_a_fedavg_run_and_fades_after_the_stop(task, pretrained):
    # measured: 4 of 8 clients (parts 0-3), plain mean: success 0.25, 0.44, 0.79, 0.95 in attack
    # rounds 1-4 at clean accuracy 0.86-0.91; after stopping at round 3: 0.25, 0.17, 0.13
    adversary = ByzantineClients(0.5, data_attack=DistributedBackdoor())
    trainer, records = run(task, adversary, 4, start=pretrained)
    assert sorted(trainer.attacker_index(c) for c in trainer.malicious) == [0, 1, 2, 3]
    success = [r["attack_success"] for r in records]
    assert success[-1] > 0.85 and records[-1]["accuracy"] > 0.8, records[-1]
    assert success[0] < success[-1]
    _, stopped = run(task, dataclasses.replace(adversary, stop_round=3), 5, start=pretrained)
    curve = [r["attack_success"] for r in stopped]
    figures = durability(curve, 3)
    assert figures["attack_success_at_stop"] == curve[2] > 0.6
    assert figures["attack_success_final"] == curve[-1] < curve[2]
    assert figures["durability"] in (0, 1, 2)


def test_durability_figures_known_answers():
    curve = [0.1, 0.6, 0.8, 0.7, 0.41, 0.39, 0.5]
    assert durability(curve, 3) == {"attack_success_at_stop": 0.8, "attack_success_final": 0.5,
                                    "durability": 2}  # 0.7, 0.41 >= 0.4; 0.39 < 0.4
    assert durability(curve, None)["durability"] is None
    assert durability(curve, 7)["attack_success_at_stop"] == 0.5
    assert durability(curve[:2], 5) == {"attack_success_at_stop": 0.6, "attack_success_final": 0.6,
                                        "durability": None}
    assert durability([None, None], 1) == {"attack_success_at_stop": None, "attack_success_final": None,
                                           "durability": None}
    assert durability([0.0, 0.0, 0.3], 1)["durability"] == 0


def bench(attacks: dict) -> dict:
    return {"run": {"rounds": 4, "clients": 4, "attackers": [0.25]}, "attacks": attacks,
            "defences": {"mean": {"kind": "mean"}}}


def test_bench_attack_specs_take_an_attack_window():
    spec = {"data": {"kind": "dba"}, "update": {"kind": "neurotoxin"}, "start_round": 2, "stop_round": 3}
    (attack,) = parse(bench({"durable": spec})).attacks
    assert (attack.start_round, attack.stop_round) == (2, 3)
    with pytest.raises(ConfigError, match=r"attacks\.durable\.stop_round: expected an integer >= start"):
        parse(bench({"durable": {**spec, "stop_round": 1}}))
    with pytest.raises(ConfigError, match="an attack window needs"):
        parse(bench({"none": {"stop_round": 2}}))
    for kind in ("fang-krum", "fang-trim", "neurotoxin"):
        assert UpdateAttack.from_dict({"kind": kind}).to_dict()["kind"] == kind
    assert DataAttack.from_dict({"kind": "dba", "parts": 2}) == DistributedBackdoor(parts=2)
