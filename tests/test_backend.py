"""The aggregation-backend API: an external system drives the placed pipeline with its own transport.

Every round here is driven only through ``Pipeline.server``/``Pipeline.client`` and bytes, the way
another FL framework would, and checked against the rule run in one process: exact secure sums,
clipping and noise where the placement says, peers' bad bytes refused without changing the round.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dp.central import DPFedAvg
from dp.local import LocalDP
from secagg.aggregation import ClipNorm, Mean, SecureSum, TrimmedMean, UpdateBatch
from secagg.backend import Pipeline
from secagg.crypto.keys import SigningKey
from secagg.errors import AbortError, ConfigError, ProtocolError


def drive(pipeline: Pipeline, updates: np.ndarray, examples: list[int], *,
          silent_after: dict[int, int] | None = None, identities: dict[int, SigningKey] | None = None,
          garbage: bool = False, state=None):
    """One round over bytes. ``silent_after[u] = k``: client u answers only its first k messages."""
    ids = tuple(range(len(updates)))
    server = pipeline.server(3, ids, weight_bound=float(max(examples)), state=state)
    clients = {u: pipeline.client(u, updates[u], examples[u],
                                  identity=None if identities is None else identities[u]) for u in ids}
    answered = dict.fromkeys(ids, 0)
    refused = []
    outgoing = server.start()
    while outgoing:
        for u, data in outgoing.items():
            if silent_after and answered[u] >= silent_after.get(u, 10**9):
                continue
            reply = clients[u].handle(data)
            answered[u] += 1
            if garbage:
                for bad in (b"", b"\x00" * 7, reply[:-1]):
                    try:
                        server.receive(u, bad)
                    except ProtocolError as exc:
                        refused.append(type(exc).__name__)
            server.receive(u, reply)
        outgoing = server.advance()
    assert server.done
    return server, clients, refused


def _updates(n: int, d: int, seed: int, scale: float = 1.0) -> np.ndarray:
    g = torch.Generator().manual_seed(seed)
    return (scale * torch.randn(n, d, generator=g, dtype=torch.float64)).numpy()


@settings(max_examples=15, deadline=None)
@given(st.integers(2, 6), st.integers(1, 40), st.integers(0, 2**31),
       st.lists(st.integers(1, 50), min_size=6, max_size=6))
def test_a_secure_round_over_bytes_is_the_weighted_mean_of_its_survivors(n, d, seed, counts):
    rule = SecureSum(value_range=4.0)
    pipeline = Pipeline(rule, d)
    updates = np.clip(_updates(n, d, seed), -4.0, 4.0)
    server, _, _ = drive(pipeline, updates, counts[:n])
    out = server.finish({})
    w = np.asarray(counts[:n], dtype=np.float64)
    want = (w[:, None] * updates).sum(axis=0) / w.sum()
    # each client's stochastic rounding is off by < one quantum of its weighted update
    bound = rule.quantizers(n)[0].error_bound(n) * max(counts) / w.sum() + 1e-6
    assert np.abs(out.update.double().numpy() - want).max() <= bound
    assert server.survivors == tuple(range(n)) and out.metrics["survivors"] == n


def test_a_dropout_is_recovered_and_the_sum_covers_the_survivors():
    pipeline = Pipeline(SecureSum(value_range=4.0, weighted=False), 10)
    updates = np.clip(_updates(5, 10, 1), -4, 4)
    server, _, _ = drive(pipeline, updates, [1] * 5, silent_after={4: 2})  # 4 leaves after sharing keys
    assert server.survivors == (0, 1, 2, 3)
    assert np.allclose(server.finish({}).update.double().numpy(), updates[:4].mean(axis=0), atol=1e-4)


def test_malicious_mode_with_the_operators_registry():
    keys = {u: SigningKey.generate() for u in range(4)}
    registry = {u: k.public for u, k in keys.items()}
    pipeline = Pipeline(SecureSum(value_range=4.0, malicious=True), 8, registry=registry)
    updates = np.clip(_updates(4, 8, 2), -4, 4)
    server, _, _ = drive(pipeline, updates, [2, 2, 2, 2], identities=keys)
    assert np.allclose(server.finish({}).update.double().numpy(), updates.mean(axis=0), atol=1e-4)
    with pytest.raises(ConfigError, match="identity: a malicious-mode session needs"):
        drive(pipeline, updates, [2, 2, 2, 2])


def test_central_dp_over_a_secure_sum_clips_on_the_clients_and_noises_the_sum():
    d = 20_000
    rule = DPFedAvg(clip=1.0, noise_multiplier=1.5, expected_clients=4.0, sampling="none",
                    inner=SecureSum(weighted=False, max_clients=8, value_range=1.0))
    pipeline = Pipeline(rule, d)
    updates = _updates(4, d, 3, scale=0.1)  # norm ~14: every client clips
    server, clients, _ = drive(pipeline, updates, [5, 6, 7, 8])
    for c in clients.values():
        assert float(torch.linalg.vector_norm(c.released)) <= 1.0
    out = server.finish({})
    total = sum(c.released.numpy() for c in clients.values())
    noise = out.update.double().numpy() * 4.0 - total
    assert noise.std() == pytest.approx(1.5, rel=0.03) and abs(noise.mean()) < 5 * 1.5 / np.sqrt(d)
    assert out.metrics["noise_std"] == rule.noise_std


def test_a_plain_round_runs_the_rule_on_exactly_the_released_rows():
    rule = TrimmedMean(f=1)
    pipeline = Pipeline(rule, 12)
    assert pipeline.mode == "plain"
    updates = _updates(5, 12, 4)
    server, _, _ = drive(pipeline, updates, [3, 1, 4, 1, 5])
    rows = torch.from_numpy(updates.astype("<f4"))
    want = rule.aggregate(UpdateBatch(rows, torch.tensor([3.0, 1, 4, 1, 5], dtype=torch.float64),
                                      tuple(range(5)), 3), {})
    assert torch.equal(server.finish({}).update, want.update)


def test_local_dp_noise_is_added_by_each_client_and_never_by_the_server():
    rule = LocalDP(clip=0.5, noise_multiplier=2.0, inner=Mean())
    pipeline = Pipeline(rule, 5000)
    updates = _updates(3, 5000, 5)
    server, clients, _ = drive(pipeline, updates, [1, 1, 2])
    for u, c in clients.items():
        clipped = updates[u] * 0.5 / np.linalg.norm(updates[u])
        assert (c.released.numpy() - clipped).std() == pytest.approx(1.0, rel=0.05)
    rows = np.stack([c.released.to(torch.float32).numpy() for c in clients.values()]).astype(np.float64)
    want = (np.array([1, 1, 2])[:, None] * rows).sum(axis=0) / 4
    assert np.allclose(server.finish({}).update.double().numpy(), want, atol=1e-6)


def test_bad_bytes_from_a_client_are_refused_and_change_nothing():
    for rule in (SecureSum(value_range=4.0), Mean()):
        pipeline = Pipeline(rule, 6)
        updates = np.clip(_updates(3, 6, 6), -4, 4)
        server, _, refused = drive(pipeline, updates, [1, 2, 3], garbage=True)
        assert refused and set(refused) <= {"ProtocolError", "WireError"}
        assert server.survivors == (0, 1, 2)
        assert np.allclose(server.finish({}).update.double().numpy(),
                           (np.array([1, 2, 3])[:, None] * updates).sum(axis=0) / 6, atol=1e-4)


def test_a_client_refuses_a_server_asking_for_a_plain_update_under_a_secure_pipeline():
    secure, plain = Pipeline(SecureSum(), 4), Pipeline(Mean(), 4)
    request = plain.server(0, (0, 1), weight_bound=1.0).start()[0]  # a lying server's plain request
    with pytest.raises(ProtocolError, match="refusing to send it in the clear"):
        secure.client(0, np.zeros(4), 1).handle(request)


def test_caller_misuse_is_a_config_error_naming_the_field():
    pipeline = Pipeline(Mean(), 4)
    with pytest.raises(ConfigError, match="update: expected 4 coordinates, got 3"):
        pipeline.client(0, np.zeros(3), 1)
    with pytest.raises(ConfigError, match="update: must be finite"):
        pipeline.client(0, np.array([0, 0, np.nan, 0]), 1)
    with pytest.raises(ConfigError, match="weight_bound: must be > 0"):
        pipeline.server(0, (0, 1), weight_bound=0)
    with pytest.raises(ConfigError, match="client_ids: expected distinct ids"):
        pipeline.server(0, (1, 1), weight_bound=1.0)
    server = pipeline.server(0, (0, 1), weight_bound=1.0)
    with pytest.raises(ConfigError, match="finish: the round is not done"):
        server.finish({})
    server.start()
    with pytest.raises(AbortError, match="no client sent an update"):
        server.advance()
    with pytest.raises(ConfigError, match="aggregator: 'local-dp' must run on the clients"):
        Pipeline(LocalDP(inner=ClipNorm(inner=LocalDP())), 4)  # refused when built, not mid-round


@pytest.mark.parametrize("mechanism", ["ddg", "skellam"])
def test_distributed_dp_noise_is_added_inside_the_sum_by_the_clients(mechanism):
    """The clients rotate, round and noise inside the secure sum; the server decodes the sum, which
    is the clipped updates' sum plus noise of standard deviation z c, and never adds any itself."""
    from dp.distributed import DistributedDP

    d, n = 3000, 4
    rule = DistributedDP(mechanism=mechanism, clip=1.0, noise_multiplier=2.0, expected_clients=n, bits=24)
    pipeline = Pipeline(rule, d, seed=11)
    updates = _updates(n, d, 8, scale=0.05)  # norm ~2.7: every client clips
    server, _, _ = drive(pipeline, updates, [1] * n)
    out = server.finish({})
    clipped = sum(u * min(1.0, 1.0 / np.linalg.norm(u)) for u in updates)
    noise = out.update.double().numpy() * n - clipped
    assert noise.std() == pytest.approx(2.0, rel=0.06)
    assert out.metrics["survivors"] == n and out.metrics["sigma_l"] > 0


def test_distributed_dp_clients_refuse_a_session_that_could_unmask_too_little_noise():
    """A server lowering the threshold below the survivors the noise is planned for could unmask a
    sum of fewer clients (less noise): each client checks the threshold itself."""
    import dataclasses

    from dp.distributed import DistributedDP
    from secagg.protocol.messages import Setup
    from secagg.protocol.wire import encode
    from secagg.transport.envelope import Work, WorkKind, encode_work

    rule = DistributedDP(clip=1.0, noise_multiplier=1.0, expected_clients=4, bits=20)
    pipeline = Pipeline(rule, 16)
    params = rule.secure_params((0, 1, 2, 3), 16, 1)
    assert params.threshold == 4  # the planned survivors (min_clients = expected_clients)
    lying = dataclasses.replace(params, threshold=2)
    first = encode_work(Work(WorkKind.TASK, 1, 0, b"", encode(Setup(lying)), 1.0))
    with pytest.raises(ProtocolError, match=r"the session's threshold 2 is below this pipeline's \(4\)"):
        pipeline.client(0, np.zeros(16), 1).handle(first)


def test_a_sparse_secaggplus_round_over_bytes_sums_its_survivors():
    """A SecAgg+ client's Setup carries only the member count and root (O(log n)), not the list: the
    client checks the session against what its own pipeline would choose for that many members."""
    rule = SecureSum(value_range=4.0, weighted=False, graph="secaggplus")
    n, d = 60, 9
    pipeline = Pipeline(rule, d)
    updates = np.clip(_updates(n, d, 5), -4, 4)
    server, _, _ = drive(pipeline, updates, [1] * n, silent_after={7: 2, 30: 3})
    (session,) = server.sessions
    assert not session.params.full_graph and session.params.degree < n - 1
    keep = [u for u in range(n) if u in server.survivors]
    assert 7 not in keep and len(keep) >= n - 2
    got = server.finish({}).update.double().numpy()
    assert np.allclose(got, updates[keep].mean(axis=0), atol=1e-4)


def test_clients_refuse_a_session_below_their_own_threshold_or_security_mode():
    import dataclasses

    from secagg.protocol.messages import Setup
    from secagg.protocol.wire import encode
    from secagg.transport.envelope import Work, WorkKind, encode_work

    for rule in (SecureSum(value_range=1.0, weighted=False),
                 SecureSum(value_range=1.0, weighted=False, malicious=True)):
        pipeline = Pipeline(rule, 8)
        params = pipeline.placement.session_params((0, 1, 2, 3, 4), 8, 1)
        lowered = ([dataclasses.replace(params, malicious=False)] if rule.malicious  # a downgrade
                   else [dataclasses.replace(params, threshold=params.threshold - 1)])
        for lying in lowered:
            first = encode_work(Work(WorkKind.TASK, 1, 0, b"", encode(Setup(lying)), 1.0))
            identity = SigningKey.generate() if rule.malicious else None
            client = pipeline.client(0, np.zeros(8), 1, identity=identity)
            with pytest.raises(ProtocolError, match="is below this pipeline's"):
                client.handle(first)


def test_a_plain_round_gives_seeded_rules_the_rounds_public_seed():
    """Bucket seating is seeded by the round's public seed: over the backend it must be the seed a
    simulation and ``secagg serve`` use (before, the backend passed 0 and seated buckets differently)."""
    from secagg.aggregation import Bucketing, CoordinateMedian
    from secagg.seeding import round_seed

    rule = Bucketing(bucket_size=2, inner=CoordinateMedian())
    pipeline = Pipeline(rule, 6, seed=5)
    updates = _updates(7, 6, 9)
    server, _, _ = drive(pipeline, updates, [1] * 7)  # round 3
    rows = torch.from_numpy(updates.astype("<f4"))
    batch = UpdateBatch(rows, torch.ones(7, dtype=torch.float64), tuple(range(7)), 3, round_seed(5, 3))
    assert torch.equal(server.finish({}).update, rule.aggregate(batch, {}).update)
    other = UpdateBatch(rows, torch.ones(7, dtype=torch.float64), tuple(range(7)), 3, 0)
    assert not torch.equal(rule.aggregate(other, {}).update, rule.aggregate(batch, {}).update)


def test_adaptive_clipping_over_a_secure_sum_clips_on_the_clients_to_the_servers_clip():
    """The server sends the round's clip norm from its state; each client clips to it and appends its
    centred clip bit (one more coordinate); the server adds both noises to the unmasked sum and steps
    the clip. Over many rounds the released count and update average to the clients' true ones."""
    from dp.adaptive import BIT_RANGE, AdaptiveClipDP

    d, clip, m = 12, 2.0, 4
    rule = AdaptiveClipDP(initial_clip=1.0, noise_multiplier=0.5, expected_clients=m, count_stddev=0.4,
                          inner=SecureSum(weighted=False, value_range=4.0, max_clients=m))
    pipeline = Pipeline(rule, d)
    assert pipeline.placement.sum_dim(d) == d + 1
    updates = _updates(m, d, 5)
    lengths = np.array([[0.5], [1.5], [3.0], [6.0]])
    updates = updates / np.linalg.norm(updates, axis=1, keepdims=True) * lengths
    state = {**rule.init_state(d), "clip": torch.tensor([clip], dtype=torch.float64)}
    fractions, totals = [], []
    for _ in range(60):
        server, clients, _ = drive(pipeline, updates, [1] * m, state=state)
        for u, client in clients.items():
            released = client.released.double().numpy()
            assert released.shape == (d + 1,)
            assert np.linalg.norm(released[:d]) <= clip + 1e-12  # clipped on the client, to the sent C
            bit = float(np.linalg.norm(updates[u]) <= clip)
            assert released[d] == pytest.approx(bit - BIT_RANGE, abs=1e-6)
        out = server.finish(state)
        assert out.metrics["clip"] == clip
        assert float(out.state["clip"][0]) == pytest.approx(out.metrics["next_clip"])
        fractions.append(out.metrics["noisy_unclipped_fraction"])
        totals.append(out.update.double().numpy() * m)
    # two of the four clients are within the clip: the noisy fraction is 1/2 plus N(0, (0.4 / 4)^2)
    assert np.mean(fractions) == pytest.approx(0.5, abs=4 * 0.1 / np.sqrt(60))
    assert np.std(fractions) == pytest.approx(0.1, rel=0.35)
    norms = np.linalg.norm(updates, axis=1, keepdims=True)
    clipped_sum = (updates * np.minimum(1.0, clip / norms)).sum(axis=0)
    spread = rule.update_noise_multiplier * clip
    assert np.abs(np.mean(totals, axis=0) - clipped_sum).max() < 5 * spread / np.sqrt(60)


def test_a_client_refuses_a_clip_norm_that_is_not_finite_and_positive():
    from dp.adaptive import AdaptiveClipDP
    from secagg.errors import RemoteProtocolError

    rule = AdaptiveClipDP(inner=SecureSum(weighted=False, value_range=4.0, max_clients=3))
    pipeline = Pipeline(rule, 4)
    state = {**rule.init_state(4), "clip": torch.tensor([-1.0], dtype=torch.float64)}
    server = pipeline.server(1, (0, 1, 2), weight_bound=1.0, state=state)
    first = server.start()
    client = pipeline.client(0, np.ones(4), 1)
    with pytest.raises(RemoteProtocolError, match="public: the server's round values for 'dp-fedavg-adaptive'"
                                                  r".*clip norm, one finite float > 0, got \[-1.0\]"):
        client.handle(first[0])


def test_secure_bucketing_runs_one_session_per_bucket_of_the_simulations_seating():
    """Secure bucketing over the backend: one secure session per bucket, side by side, the buckets those
    the simulation draws from the round's public seed; each session's sum is exactly its survivors'
    inputs, a dropout is recovered inside its own bucket, and the robust rule across the bucket means
    matches the simulation's within the quantization error."""
    from secagg.aggregation import CoordinateMedian, SecureBucketing
    from secagg.seeding import round_seed

    rule = SecureBucketing(bucket_size=3, inner=CoordinateMedian(), secure=SecureSum(value_range=4.0))
    n, d = 9, 7
    pipeline = Pipeline(rule, d, seed=11)
    updates = np.clip(_updates(n, d, 21), -4.0, 4.0)
    ids = tuple(range(n))
    groups = pipeline.placement.session_groups(ids, round_seed(11, 3))
    assert len(groups) == 3 and sorted(u for g in groups for u in g) == list(ids)

    server, clients, _ = drive(pipeline, updates, [1] * n)
    assert [s.params.client_ids for s in server.sessions] == groups
    for one in server.sums:
        total = sum(clients[u].session_input.astype(np.uint64) for u in one.survivors)
        np.testing.assert_array_equal(one.result, (total % (1 << one.params.bits)).astype(np.uint32))
    rows = torch.from_numpy(updates)
    batch = UpdateBatch(rows, torch.ones(n, dtype=torch.float64), ids, 3, round_seed(11, 3))
    want = rule.aggregate(batch, {})
    got = server.finish({})
    assert torch.allclose(got.update.double(), want.update.double(), atol=1e-5)

    dropped = groups[1][0]
    server, clients, _ = drive(pipeline, updates, [1] * n, silent_after={dropped: 2})  # after ShareKeys
    assert server.dropped == (dropped,) and len(server.survivors) == n - 1
    for one in server.sums:
        assert set(one.survivors) == set(one.params.client_ids) - {dropped}
        total = sum(clients[u].session_input.astype(np.uint64) for u in one.survivors)
        np.testing.assert_array_equal(one.result, (total % (1 << one.params.bits)).astype(np.uint32))
    means = [updates[[u for u in g if u != dropped]].mean(axis=0) for g in groups]
    assert np.allclose(server.finish({}).update.double().numpy(), np.median(np.stack(means), axis=0),
                       atol=1e-5)


def test_a_bucket_whose_session_aborts_aborts_the_round_naming_its_clients():
    from secagg.aggregation import CoordinateMedian, SecureBucketing

    rule = SecureBucketing(bucket_size=3, inner=CoordinateMedian(), secure=SecureSum(value_range=4.0))
    pipeline = Pipeline(rule, 4)
    ids = tuple(range(9))
    groups = pipeline.placement.session_groups(ids, pipeline.round_seed(3))
    victim = groups[2]
    with pytest.raises(AbortError, match=rf"the session of clients \[{', '.join(map(str, victim))}\]"):
        drive(pipeline, np.zeros((9, 4)), [1] * 9, silent_after={victim[0]: 2, victim[1]: 2})


def test_stage_and_quorum_tell_a_transport_when_it_may_stop_waiting():
    """``stage`` names what the round collects now; ``quorum_reached`` turns true once every session's
    threshold (secure) or a majority (plain) answered, ``stage_complete`` once everybody did."""
    from secagg.protocol.messages import Stage
    from secagg.transport.envelope import UPDATE_STAGE

    pipeline = Pipeline(SecureSum(value_range=4.0), 3)
    server = pipeline.server(1, (0, 1, 2, 3, 4), weight_bound=1.0)
    t = server.sessions[0].params.threshold
    assert server.stage is None and not server.quorum_reached
    first = server.start()
    assert server.stage == int(Stage.ADVERTISE_KEYS)
    clients = {u: pipeline.client(u, np.zeros(3), 1) for u in first}
    for k, u in enumerate(first, start=1):
        server.receive(u, clients[u].handle(first[u]))
        assert server.quorum_reached == (k >= t) and server.stage_complete == (k == 5)
    server.advance()
    assert server.stage == int(Stage.SHARE_KEYS) and not server.quorum_reached

    plain = Pipeline(Mean(), 3).server(1, (0, 1, 2), weight_bound=1.0)
    sent = plain.start()
    assert plain.stage == UPDATE_STAGE
    for k, u in enumerate(sent, start=1):
        plain.receive(u, Pipeline(Mean(), 3).client(u, np.ones(3), 1).handle(sent[u]))
        assert plain.quorum_reached == (k >= 2)
    assert plain.advance() == {} and plain.done and plain.stage is None
    with pytest.raises(ProtocolError, match="round 1 is closed"):
        plain.receive(0, b"")


def test_a_refused_share_is_reported_by_the_round_and_the_sum_stays_exact():
    """A share ciphertext that does not decrypt (here: flipped in transit) no longer stops its
    recipient: the round reports who refused whose shares, and the mean covers everybody."""
    from secagg.protocol.messages import ForwardedShares
    from secagg.protocol.wire import decode, encode

    pipeline = Pipeline(SecureSum(value_range=4.0, weighted=False), 6)
    updates = np.clip(_updates(5, 6, 40), -4, 4)
    server = pipeline.server(3, tuple(range(5)), weight_bound=1.0)
    clients = {u: pipeline.client(u, updates[u], 1) for u in range(5)}
    outgoing = server.start()
    while outgoing:
        for u, data in outgoing.items():
            message = decode(data) if server.stage is not None and server.stage > 0 else None
            if isinstance(message, ForwardedShares) and u == 2:  # one ciphertext to client 2 is damaged
                (sender, ct), *rest = message.shares
                damaged = bytes([ct[0] ^ 1]) + ct[1:]
                data = encode(ForwardedShares(u, message.session_id, ((sender, damaged), *rest)))
            server.receive(u, clients[u].handle(data))
        outgoing = server.advance()
    assert list(server.refused) == [2] and len(server.refused[2]) == 1
    assert server.survivors == tuple(range(5))
    assert np.allclose(server.finish({}).update.double().numpy(), updates.mean(axis=0), atol=1e-4)
