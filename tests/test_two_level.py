"""The two-level secure sum as a deployment runs it: the top server's round, each combiner's round towards
the top and towards its clients, and the clients, all driven through bytes only (``secagg.two_level``).

Checked: the top unmasks exactly the ring sum of the surviving clients' inputs under the surviving
combiners (and their count), its mean is the weighted mean of the survivors' updates within the
quantization bound, dropout at either level gives that or a clean abort, and every party refuses a
peer that breaks the two-level contract (foreign members, a wrong plan, a misreported count).
"""

from __future__ import annotations

import dataclasses
import hashlib

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dp.local import LocalDP
from secagg.aggregation import HierarchicalSecureSum, SecureSum
from secagg.backend import Pipeline
from secagg.errors import AbortError, ConfigError, ProtocolError, RemoteProtocolError
from secagg.placement import place
from secagg.protocol.messages import Stage
from secagg.protocol.wire import decode, encode
from secagg.transport.envelope import Work, WorkKind, decode_work, encode_work

MODEL = b"global model bytes"
VERSION = hashlib.sha256(MODEL).digest()


def _updates(ids, d: int, seed: int) -> dict[int, np.ndarray]:
    g = torch.Generator().manual_seed(seed)  # test data only
    return {u: (0.3 * torch.randn(d, generator=g, dtype=torch.float64)).numpy() for u in ids}


def _run_level1(pipe: Pipeline, work: Work, updates, examples, drop: set[int], keys=None):
    """One combiner's session over its members (clients in ``drop`` go silent after their first reply);
    ``keys``: the clients' identities (malicious mode; ``pipe`` holds their registry)."""
    level1 = pipe.combiner_server(work.round, work.members, planned=work.planned,
                                  weight_bound=work.weight_bound, public=work.public, model_version=VERSION)
    clients = {u: pipe.client(u, updates[u], examples[u], model_version=VERSION,
                              identity=None if keys is None else keys[u]) for u in work.members}
    inputs = {}
    outgoing = level1.start(MODEL)
    first = True
    while outgoing:
        for u, data in outgoing.items():
            if u in drop and not first:
                continue
            level1.receive(u, clients[u].handle(data))
            if clients[u].session_input is not None:
                inputs[u] = clients[u].session_input.copy()
        first = False
        outgoing = level1.advance()
    return level1, inputs


def two_level_round(agg, ids, updates, examples, *, client_drop=frozenset(), combiner_drop=frozenset(),
                    dead_combiners=frozenset(), lie=None, round_index=2, keys=None, combiner_keys=None):
    """One whole round through bytes; ``combiner_drop``: combiners silent after the top's first stage;
    ``dead_combiners``: never answer; ``lie``: ``(combiner, count)`` to report instead of its own;
    ``keys``, ``combiner_keys``: identities for malicious mode (the registries follow from them)."""
    d = len(next(iter(updates.values())))
    registry = None if combiner_keys is None else {j: k.public for j, k in combiner_keys.items()}
    pipe = Pipeline(agg, d, seed=11, registry=registry)  # the top's and the combiners' top side
    clients_pipe = Pipeline(agg, d, seed=11, registry=None if keys is None else {u: k.public
                                                                                 for u, k in keys.items()})
    top = pipe.server(round_index, ids, weight_bound=float(max(examples.values())), model_version=VERSION)
    combiners, inputs, level1 = {}, {}, {}
    for j, data in top.start(MODEL).items():
        if j in dead_combiners:
            continue
        work = decode_work(data)
        assert work.planned == len(ids)
        own_key = None if combiner_keys is None else combiner_keys[j]
        c = pipe.combiner(j, model_version=VERSION, identity=own_key)
        members, _ = c.open(work)
        assert members == tuple(u for u in sorted(ids) if u % pipe.placement.combiners.combiners == j)
        try:
            server, got = _run_level1(clients_pipe, work, updates, examples, set(client_drop), keys)
        except AbortError:
            continue  # below its threshold: this combiner sits the top session out
        (s,) = server.sums
        level1[j], combiners[j] = s, c
        inputs.update({u: got[u] for u in s.survivors})
        count = len(s.survivors)
        if lie is not None and lie[0] == j:
            count = lie[1]
            c.members += (10**6,) * max(0, count - len(c.members))  # a lying peer skips our API's check
        top.receive(j, c.answer(s.result, count))
    outgoing = top.advance()
    while outgoing:
        for j, data in outgoing.items():
            if j in combiner_drop:
                continue
            top.receive(j, combiners[j].handle(data))
        outgoing = top.advance()
    return top, level1, inputs


@settings(max_examples=12, deadline=None)
@given(clients=st.integers(9, 24), m=st.integers(2, 3), bits=st.sampled_from([16, 32]),
       graph=st.sampled_from(["full", "secaggplus"]), seed=st.integers(0, 2**31),
       drop_client=st.booleans(), drop_combiner=st.booleans())
def test_the_top_unmasks_exactly_the_survivors_sum_and_count(clients, m, bits, graph, seed, drop_client,
                                                             drop_combiner):
    agg = HierarchicalSecureSum(combiners=m, secure=SecureSum(bits=bits, graph=graph, value_range=2.0))
    ids = tuple(range(3, 3 + clients))
    updates = _updates(ids, 6, seed)
    examples = {u: 5 + (u * 7) % 11 for u in ids}
    client_drop = {ids[0]} if drop_client else set()
    combiner_drop = {m - 1} if drop_combiner and m == 3 else set()  # the top threshold of 3 is 2
    top, level1, inputs = two_level_round(agg, ids, updates, examples, client_drop=client_drop,
                                          combiner_drop=combiner_drop)
    assert top.done
    summed = [u for j in top.survivors for u in level1[j].survivors]
    assert not set(summed) & client_drop
    assert set(top.survivors) == set(level1) - combiner_drop
    modulus = np.uint64(1 << bits)
    total = top.sessions[0].result.astype(np.uint64)
    want = sum(inputs[u].astype(np.uint64) for u in summed) % modulus
    assert np.array_equal(total[:-1], want)  # the words: every surviving client's input, nothing else
    assert int(total[-1]) == top.summed == len(summed)
    out = top.finish(agg.init_state(6))
    w = np.array([examples[u] for u in summed], dtype=np.float64)
    mean = (w[:, None] * np.stack([updates[u] for u in summed])).sum(0) / w.sum()
    bound = out.metrics["quantization_error_bound"] / out.metrics["total_weight"]
    assert np.abs(out.update.numpy() - mean).max() <= bound + 1e-6
    assert out.metrics["combiners_summed"] == len(top.survivors)


def test_a_combiner_below_its_threshold_sits_out_and_too_few_combiners_abort():
    agg = HierarchicalSecureSum(combiners=3)
    ids = tuple(range(12))
    updates, examples = _updates(ids, 4, 1), dict.fromkeys(ids, 3)
    # combiner 1's clients 1, 4, 7, 10: three silent leave one, below its threshold of 3
    top, _, _ = two_level_round(agg, ids, updates, examples, client_drop={1, 4, 7})
    assert set(top.survivors) == {0, 2} and top.summed == 8
    assert top.seated == tuple(u for u in ids if u % 3 != 1)
    with pytest.raises(AbortError):  # two of three combiners gone: below the top threshold of 2
        two_level_round(agg, ids, updates, examples, dead_combiners={0}, combiner_drop={1})


def test_the_top_refuses_a_misreported_count():
    agg = HierarchicalSecureSum(combiners=2)
    ids = tuple(range(8))
    updates, examples = _updates(ids, 4, 2), dict.fromkeys(ids, 3)
    top, _, _ = two_level_round(agg, ids, updates, examples, lie=(0, 4))
    top.finish(agg.init_state(4))  # the truth: 4 and 4
    for lie in ((0, 0), (1, 4 + 1)):  # below the sessions' thresholds / above the seated clients
        top, _, _ = two_level_round(agg, ids, updates, examples, lie=lie)
        with pytest.raises(RemoteProtocolError, match="misreported its survivors"):
            top.finish(agg.init_state(4))


def test_members_and_plan_are_checked_where_they_arrive():
    agg = HierarchicalSecureSum(combiners=3)
    pipe = Pipeline(agg, 5)
    top = pipe.server(1, tuple(range(12)), weight_bound=4.0, model_version=VERSION)
    first = {j: decode_work(data) for j, data in top.start(MODEL).items()}
    assert {j: w.members for j, w in first.items()} == {j: tuple(range(j, 12, 3)) for j in range(3)}
    work = first[1]
    # a combiner refuses another combiner's client, too few members, and a plan below its own seats
    for bad, match in ((dataclasses.replace(work, members=(1, 4, 6, 7)), r"clients \[6\] here"),
                       (dataclasses.replace(work, members=(1, 4)), "below min_clients=3"),
                       (dataclasses.replace(work, planned=3), "planned for 3 clients"),
                       (dataclasses.replace(work, planned=1 << 31), "does not fit this pipeline"),
                       (dataclasses.replace(work, message=b""), "Setup")):
        with pytest.raises(RemoteProtocolError, match=match):
            pipe.combiner(1, model_version=VERSION).open(bad)
    with pytest.raises(RemoteProtocolError, match="model version"):
        pipe.combiner(1, model_version=b"x" * 32).open(work)
    # a top session that sums fewer words (no count word) or runs below the threshold
    setup = decode(work.message)
    for params in (dataclasses.replace(setup.params, vector_length=setup.params.vector_length - 1),
                   dataclasses.replace(setup.params, threshold=1)):
        bad = dataclasses.replace(work, message=encode(dataclasses.replace(setup, params=params)))
        with pytest.raises(RemoteProtocolError, match="top session"):
            pipe.combiner(1, model_version=VERSION).open(bad)
    # a client refuses a plan below its session's size, a member list, and a plan on a flat pipeline
    c = pipe.combiner(1, model_version=VERSION)
    c.open(work)
    level1 = pipe.combiner_server(1, work.members, planned=12, weight_bound=4.0, model_version=VERSION)
    (u, data), *_ = level1.start(MODEL).items()
    task = decode_work(data)
    assert task.planned == 12 and task.members == ()
    for bad, match in ((dataclasses.replace(task, planned=2), "planned for 2 clients"),
                       (dataclasses.replace(task, planned=1 << 31), "does not fit this pipeline: bits=32"),
                       (dataclasses.replace(task, members=(1, 4, 7)), "member list")):
        with pytest.raises(RemoteProtocolError, match=match):
            pipe.client(u, np.zeros(5), 3, model_version=VERSION).start(bad)
    flat = Pipeline(SecureSum(), 5)
    with pytest.raises(RemoteProtocolError, match="one level"):
        flat.client(u, np.zeros(5), 3).start(task)
    with pytest.raises(ConfigError, match="not a two-level"):
        flat.combiner(0)


def test_a_combiner_answer_is_checked_and_the_work_envelope_round_trips():
    agg = HierarchicalSecureSum(combiners=2)
    pipe = Pipeline(agg, 3)
    top = pipe.server(1, tuple(range(6)), weight_bound=4.0)
    work = decode_work(top.start(MODEL)[0])
    assert decode_work(encode_work(work)) == work
    c = pipe.combiner(0)
    with pytest.raises(ConfigError, match="open"):
        c.answer(np.zeros(4, dtype=np.uint32), 3)
    c.open(work)
    with pytest.raises(ConfigError, match="uint32 words"):
        c.answer(np.zeros(5, dtype=np.uint32), 3)
    with pytest.raises(ConfigError, match="count"):
        c.answer(np.zeros(4, dtype=np.uint32), 4)
    reply = decode(c.answer(np.zeros(4, dtype=np.uint32), 3))
    assert c.reply_stage == int(Stage.ADVERTISE_KEYS) and type(reply).__name__ == "AdvertiseKeys"
    with pytest.raises(ConfigError, match="once"):
        c.answer(np.zeros(4, dtype=np.uint32), 3)
    raw = encode_work(Work(WorkKind.TASK, 1, members=(3, 1)))
    with pytest.raises(ProtocolError, match=r"Work\.members: expected sorted"):
        decode_work(raw)


def test_placement_runs_client_steps_above_the_two_level_sum():
    agg = LocalDP(clip=1.0, noise_multiplier=0.5, inner=HierarchicalSecureSum(combiners=2))
    placement = place(agg)
    assert placement.mode == "secure" and placement.combiners is agg.inner
    assert [s.kind for s in placement.client_steps] == ["local-dp"]
    assert "combiners" in placement.describe()
    with pytest.raises(ConfigError, match="min_clients"):
        Pipeline(agg, 4).server(1, (0, 1, 2, 3, 5), weight_bound=1.0)  # combiner 1 would sum 2


def _aggregator(*flags: str):
    from secagg.cli import config_from_args
    from secagg.cli.options import _build_parsers

    parser, _ = _build_parsers()
    return config_from_args(parser.parse_args(["train", "--clients", "12", *flags])).fedavg.aggregator


def test_the_combiners_flag_sums_the_runs_secure_sum_in_two_levels():
    from dp.central import DPFedAvg
    from secagg.aggregation import ClipNorm
    from secagg.cli import FlagError

    two = _aggregator("--secure", "--secure-bits", "24", "--combiners", "3")
    assert two == HierarchicalSecureSum(combiners=3, secure=_aggregator("--secure", "--secure-bits", "24"))
    for flags, outer in ((("--dp", "central", "--noise-multiplier", "1"), DPFedAvg),
                         (("--dp", "local", "--noise-multiplier", "1"), LocalDP),
                         (("--clip-norm", "1"),ClipNorm)):
        one = _aggregator("--secure", *flags)
        two = _aggregator("--secure", *flags, "--combiners", "2")
        assert isinstance(two, outer) and two.inner == HierarchicalSecureSum(combiners=2, secure=one.inner)
        assert dataclasses.replace(two, inner=one.inner) == one  # nothing else changed
    for flags, match in ((("--combiners", "2"), "add --secure"),
                         (("--secure", "--combiners", "1"), "--combiners: combiners: must be >= 2"),
                         (("--dp", "distributed", "--noise-multiplier", "1", "--combiners", "2"), "has none"),
                         (("--secure", "--aggregator", "median", "--combiners", "2"), "has none")):
        with pytest.raises(FlagError, match=match):
            _aggregator(*flags)


def test_keys_makes_combiner_identities_and_serve_as_a_combiner_refuses_training_flags(tmp_path, capsys):
    from secagg.cli import main
    from secagg.transport.auth import load_identity, load_registry

    assert main(["keys", "--clients", "4", "--combiners", "2", "--out", str(tmp_path)]) == 0
    registry = load_registry(tmp_path / "combiners" / "registry.json")
    assert sorted(registry) == [0, 1]
    for j in (0, 1):
        assert load_identity(tmp_path / "combiners" / f"combiner-{j}.pem").public == registry[j]
    assert sorted(load_registry(tmp_path / "registry.json")) == [0, 1, 2, 3]
    reg = str(tmp_path / "registry.json")
    with pytest.raises(SystemExit):
        main(["serve", "--combiner", "0", "--registry", reg, "--rounds", "3"])
    assert "--rounds: a combiner takes the run's configuration from the top server" in capsys.readouterr().err
    assert main(["serve", "--combiner", "0", "--registry", reg, "--insecure"]) == 2
    assert "--top: a combiner needs it" in capsys.readouterr().err
    assert main(["serve", "--combiner", "0", "--registry", reg, "--top", "localhost:1",
                 "--identity", str(tmp_path / "combiners" / "combiner-0.pem")]) == 2
    assert "--tls-cert/--tls-key: a combiner serves its clients over TLS" in capsys.readouterr().err


def test_dp_over_the_two_level_sum_releases_what_it_releases_over_the_flat_sum():
    """Same clipping, same grid, same seeded noise: DP-FedAvg's release is bit-identical whether the
    clipped rows go through one session or through combiners and a top session."""
    from secagg.aggregation import UpdateBatch

    flat = dataclasses.replace(_aggregator("--secure", "--dp", "central", "--noise-multiplier", "1"),
                               simulation_seed=4)
    two = dataclasses.replace(flat, inner=HierarchicalSecureSum(combiners=3, secure=flat.inner))
    g = torch.Generator().manual_seed(0)
    batch = UpdateBatch(torch.randn(12, 30, generator=g, dtype=torch.float64),
                        torch.ones(12, dtype=torch.float64), tuple(range(12)), round=2, seed=9)
    a = flat.aggregate(batch, flat.init_state(30))
    b = two.aggregate(batch, two.init_state(30))
    assert torch.equal(a.update, b.update) and b.metrics["inner/combiners_summed"] == 3
    assert two.epsilon_after(5, 30) == flat.epsilon_after(5, 30)


def test_central_dp_above_the_two_level_sum_clips_on_the_clients_and_noises_at_the_top():
    dp = _aggregator("--secure", "--dp", "central", "--noise-multiplier", "0.5", "--clip", "0.2",
                     "--combiners", "3")
    ids = tuple(range(12))
    updates = {u: 3.0 * row for u, row in _updates(ids, 6, 5).items()}  # well above the clip
    top, _, inputs = two_level_round(dp, ids, updates, dict.fromkeys(ids, 4))
    assert top.summed == 12
    out = top.finish(dp.init_state(6))
    assert out.metrics["noise_std"] == dp.noise_std and bool(torch.isfinite(out.update).all())
    # what each client put in the sum is its clipped row: the noiseless mean has norm <= the clip
    secure = dp.inner.secure
    total = sum(inputs[u].astype(np.uint64) for u in ids) % np.uint64(1 << secure.bits)
    mean, _ = secure.decode_sum(total.astype(np.uint32), 12, 12)
    assert np.linalg.norm(mean) <= 0.2 + 1e-6


def test_malicious_mode_at_both_levels_signs_and_checks_consistency():
    """Malicious-server mode: the clients sign for their combiner's session, the combiners for the top's
    (each side holds its operator's registry), with the consistency round at both levels."""
    from secagg.crypto.keys import SigningKey

    agg = HierarchicalSecureSum(combiners=2, secure=SecureSum(malicious=True, corrupt_fraction=0.0))
    ids = tuple(range(10))
    keys = {u: SigningKey.generate() for u in ids}
    combiner_keys = {j: SigningKey.generate() for j in range(2)}
    updates, examples = _updates(ids, 5, 8), dict.fromkeys(ids, 2)
    top, level1, inputs = two_level_round(agg, ids, updates, examples, keys=keys, combiner_keys=combiner_keys,
                                          client_drop={3})
    assert top.sessions[0].params.malicious and all(s.params.malicious for s in level1.values())
    summed = sorted(u for s in level1.values() for u in s.survivors)
    assert 3 not in summed and top.summed == len(summed) == 9
    total = sum(inputs[u].astype(np.uint64) for u in summed) % np.uint64(1 << 32)
    assert np.array_equal(top.sessions[0].result[:-1].astype(np.uint64), total)
    # a combiner without its own key, or without the registry, cannot join a malicious top session
    pipe = Pipeline(agg, 5, registry={j: k.public for j, k in combiner_keys.items()})
    work = decode_work(pipe.server(1, ids, weight_bound=2.0).start(MODEL)[1])
    words = np.zeros(6, dtype=np.uint32)  # 5 coordinates and the weight
    for combiner, match in ((pipe.combiner(1, identity=SigningKey.generate()), "registry: does not hold"),
                            (pipe.combiner(1), "identity: a malicious-mode session"),
                            (Pipeline(agg, 5).combiner(1, identity=combiner_keys[1]),
                             "registry: a malicious")):
        combiner.open(work)
        with pytest.raises(ConfigError, match=match):
            combiner.answer(words, 4)


def test_a_combiner_serves_only_its_own_clients_the_tops_configuration(tmp_path):
    """Set up from the top's configuration: it logs in only its clients (c mod m), refuses to be a
    combiner of a one-level run or one that does not exist."""
    from secagg.crypto.keys import SigningKey
    from secagg.experiment import ExperimentConfig
    from secagg.fedavg import FedAvgConfig
    from secagg.task import TaskConfig
    from secagg.transport.combiner import NetworkCombiner
    from secagg.transport.serve import ServeOptions

    clients = {u: SigningKey.generate().public for u in range(9)}
    two = ExperimentConfig(TaskConfig(num_clients=9),
                           FedAvgConfig(aggregator=HierarchicalSecureSum(combiners=3)))
    combiner = NetworkCombiner("localhost:1", 1, SigningKey.generate(), clients,
                               ServeOptions(address="127.0.0.1:0", linger_seconds=0.0))
    try:
        combiner._setup(two.to_json())
        assert combiner.port > 0 and sorted(combiner.service.auth.registry) == [1, 4, 7]
    finally:
        combiner._shutdown()
    flat = dataclasses.replace(two, fedavg=FedAvgConfig(aggregator=SecureSum()))
    with pytest.raises(RemoteProtocolError, match="no two-level secure sum"):
        NetworkCombiner("localhost:1", 1, SigningKey.generate(), clients,
                        ServeOptions())._setup(flat.to_json())
    with pytest.raises(ConfigError, match="not one of the run's 3 combiners"):
        NetworkCombiner("localhost:1", 3, SigningKey.generate(), clients,
                        ServeOptions())._setup(two.to_json())


def test_a_top_servers_first_stage_waits_its_own_grace_for_slower_combiners():
    """The top's first stage spans each combiner's whole session: once a quorum of combiners answered
    it waits ``task_grace_seconds`` (not the stage grace) for the rest; later stages the stage grace."""
    from secagg.transport.coordinator import Coordinator

    agg = HierarchicalSecureSum(combiners=3)
    pipe = Pipeline(agg, 4)
    coordinator = Coordinator("secure", task_seconds=300.0, stage_seconds=30.0, grace_seconds=5.0,
                              task_grace_seconds=50.0)
    top = pipe.server(1, tuple(range(9)), weight_bound=1.0)
    coordinator.begin_round(top, MODEL, 0.0)
    combiners = {}
    for j in (0, 1):  # two of three: the top threshold
        combiners[j] = pipe.combiner(j)
        combiners[j].open(decode_work(coordinator.poll(j, 0, 0).data))
        coordinator.submit(j, 1, int(Stage.ADVERTISE_KEYS),
                           combiners[j].answer(np.zeros(5, dtype=np.uint32), 3), now=10.0)
    assert top.quorum_reached and not coordinator.due(16.0) and coordinator.wake_at() == 60.0
    assert coordinator.due(60.0)
    assert coordinator.advance(60.0) is None  # on to SHARE_KEYS without combiner 2
    for j in (0, 1):
        item = coordinator.poll(j, 1, 0)
        coordinator.submit(j, 1, int(Stage.SHARE_KEYS), combiners[j].handle(decode_work(item.data).message),
                           now=61.0)
    assert coordinator.due(61.0)  # everyone who could answer did
    with pytest.raises(ConfigError, match="task_grace_seconds: must be > 0"):
        Coordinator("secure", task_grace_seconds=0.0)


@pytest.mark.parametrize(("last_seen", "closes_at"), [(None, 10.0), (0.0, 30.0), (25.0, 55.0)])
def test_liveness_stops_the_top_waiting_for_a_combiner_that_went_silent(last_seen, closes_at):
    """With ``liveness_seconds``, once a quorum answered, a stage closes when every combiner still
    missing has made no call for that long (one never seen: at once), before the grace runs out."""
    from secagg.transport.coordinator import Coordinator

    pipe = Pipeline(HierarchicalSecureSum(combiners=3), 4)
    coordinator = Coordinator("secure", task_seconds=300.0, stage_seconds=30.0, grace_seconds=5.0,
                              task_grace_seconds=50.0, liveness_seconds=30.0)
    top = pipe.server(1, tuple(range(9)), weight_bound=1.0)
    coordinator.begin_round(top, MODEL, 0.0)
    if last_seen is not None:
        coordinator.seen(2, last_seen)  # its poll; then nothing (a killed process)
    for j in (0, 1):
        combiner = pipe.combiner(j)
        combiner.open(decode_work(coordinator.poll(j, 0, 0).data))
        coordinator.seen(j, 10.0)
        coordinator.submit(j, 1, int(Stage.ADVERTISE_KEYS), combiner.answer(np.zeros(5, dtype=np.uint32), 3),
                           now=10.0)
    assert top.pending == frozenset({2})
    assert coordinator.wake_at() == closes_at
    assert not coordinator.due(closes_at - 0.5) or closes_at == 10.0
    assert coordinator.due(closes_at)


def test_liveness_is_for_a_top_server_only(tmp_path, capsys):
    from secagg.cli import main

    assert main(["keys", "--clients", "4", "--out", str(tmp_path)]) == 0
    reg = str(tmp_path / "registry.json")
    assert main(["serve", "--secure", "--clients", "4", "--registry", reg, "--insecure", "--liveness", "9",
                 "--out", str(tmp_path / "run")]) == 2
    assert "--liveness: only a two-level top server" in capsys.readouterr().err
    assert main(["serve", "--combiner", "0", "--registry", reg, "--insecure", "--top", "localhost:1",
                 "--identity", str(tmp_path / "clients" / "client-0.pem"), "--liveness", "9"]) == 2
    assert "--liveness: a combiner's clients go quiet" in capsys.readouterr().err
    for flags in (["--wait-clients", "3"], ["--out", str(tmp_path / "x")]):
        assert main(["serve", "--combiner", "0", "--registry", reg, "--insecure", "--top", "localhost:1",
                     "--identity", str(tmp_path / "clients" / "client-0.pem"), *flags]) == 2
        assert f"{flags[0]}: the top server's" in capsys.readouterr().err
