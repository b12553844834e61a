"""Suspendable clients: a client snapshotted to bytes and restored before every message runs the same
session as one that lives through it, never reveals both shares of a peer across a restore, and a
damaged snapshot is a ConfigError, whatever the damage."""

from __future__ import annotations

import contextlib
import functools

import msgpack
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from secagg.aggregation import SecureSum
from secagg.backend import ClientRound, Pipeline
from secagg.crypto.keys import SigningKey
from secagg.errors import AbortError, ConfigError, ProtocolError
from secagg.protocol.client import (
    SNAPSHOT_FIELDS,
    SNAPSHOT_LABEL,
    SNAPSHOT_MAGIC,
    SNAPSHOT_VERSION,
    Client,
    ClientPhase,
    seal_record,
)
from secagg.protocol.messages import KeyDirectory, SessionParams, Setup, Stage, UnmaskRequest
from secagg.protocol.runner import REPLY_STAGE, run_session
from secagg.protocol.server import Server
from secagg.protocol.wire import decode, encode

NONCE = bytes(range(32))  # a fixed session nonce for hand-built setups (a Server draws a fresh one)
STAGES = list(Stage)


def _expected(inputs, survivors, bits):
    total = np.zeros_like(next(iter(inputs.values())))
    for u in survivors:
        total += inputs[u]  # uint32 wraps mod 2^32
    return total & np.uint32((1 << bits) - 1) if bits < 32 else total


@st.composite
def sessions(draw, malicious: bool, full: bool):
    """Session parameters (honest or malicious mode, full graph or SecAgg+), inputs, a dropout
    schedule (any stage, valid or not) and the clients' identity keys."""
    n = draw(st.integers(3 if full else 4, 10))
    ids = tuple(sorted(draw(st.sets(st.integers(0, 5000), min_size=n, max_size=n))))
    degree = n - 1 if full else draw(st.sampled_from(list(range(2, n - 1, 2))))
    if malicious:  # corrupt = 0: t > n / 2 on the full graph, degree / 2 < t <= degree on SecAgg+
        threshold = draw(st.integers(n // 2 + 1, n) if full else st.integers(degree // 2 + 1, degree))
    else:
        threshold = draw(st.integers(1, degree + 1))
    d = draw(st.integers(1, 16))
    bits = draw(st.sampled_from([8, 16, 31, 32]))
    params = SessionParams(round=draw(st.integers(0, 5)), model_version=b"v1", client_ids=ids,
                           threshold=threshold, degree=degree, vector_length=d, bits=bits,
                           malicious=malicious, nonce=NONCE)
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    inputs = {u: rng.integers(0, 2**bits, d, dtype=np.uint64).astype(np.uint32) for u in ids}
    drop_rate = draw(st.sampled_from([0.0, 0.15, 0.3, 0.6]))
    schedule = {u: STAGES[int(rng.integers(len(STAGES)))] for u in ids if rng.random() < drop_rate}
    keys = {u: SigningKey.generate() for u in ids} if malicious else {}
    return params, inputs, schedule, keys


class Suspended:
    """A session whose clients exist only as snapshot bytes between messages (a stateless worker per
    message): each message restores the client, lets it answer, and stores its new snapshot."""

    def __init__(self, params: SessionParams, inputs, keys) -> None:
        self.params, self.keys = params, keys
        self.registry = {u: k.public for u, k in keys.items()} if params.malicious else None
        self.server = Server(params, self.registry)
        self.stored = {u: Client(u, inputs[u], identity=keys.get(u), registry=self.registry).snapshot()
                       for u in params.client_ids}
        self.aborts: dict[int, str] = {}

    def restore(self, u: int, data: bytes | None = None) -> Client:
        return Client.restore(self.stored[u] if data is None else data, identity=self.keys.get(u),
                              registry=self.registry)

    def answer(self, u: int, data: bytes) -> bytes | None:
        """Client u's reply to the wire bytes ``data``, or None if it refused (it is aborted then)."""
        before = self.stored[u]
        client = self.restore(u)
        assert client.snapshot() == before  # a round trip changes nothing: one encoding per state
        message = decode(data)
        try:
            reply = encode(client.handle(message))
        except ProtocolError as exc:
            self.aborts[u] = str(exc)
            self.stored[u] = client.snapshot()
            aborted = self.restore(u)
            assert aborted.phase is ClientPhase.ABORTED
            with pytest.raises(ProtocolError, match="aborted"):
                aborted.handle(message)
            return None
        self.stored[u] = client.snapshot()
        if not isinstance(message, Setup | KeyDirectory):
            # every later step draws no randomness: a second restore of the same bytes answers, and
            # ends, exactly alike (Setup draws b_u and KeyDirectory fresh Shamir coefficients)
            twin = self.restore(u, before)
            assert encode(twin.handle(message)) == reply
            assert twin.snapshot() == self.stored[u]
        return reply

    def run(self, schedule) -> Server:
        gone: set[int] = set()

        def deliver(outgoing) -> None:
            for u, message in outgoing:
                stage = REPLY_STAGE[type(message)]
                if u in gone or schedule.get(u, len(STAGES)) <= stage:
                    gone.add(u)
                    continue
                reply = self.answer(u, encode(message))
                if reply is None:
                    gone.add(u)
                    continue
                with contextlib.suppress(ProtocolError):  # (an honest server takes every reply)
                    self.server.receive(decode(reply), sender=u)

        deliver(self.server.start())
        while self.server.stage is not None:
            deliver(self.server.advance())
        return self.server


@pytest.mark.parametrize("full", [True, False], ids=["full-graph", "secagg+"])
@pytest.mark.parametrize("malicious", [False, True], ids=["honest", "malicious"])
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_clients_restored_before_every_message_give_the_exact_sum_of_the_survivors(malicious, full, data):
    params, inputs, schedule, keys = data.draw(sessions(malicious, full))
    try:
        reference = run_session(params, inputs, drop_before=schedule, identities=keys or None)
    except AbortError:
        reference = None
    session = Suspended(params, inputs, keys)
    if reference is None:  # the outcome is fixed by the schedule: the same session aborts the same way
        with pytest.raises(AbortError):
            session.run(schedule)
        return
    server = session.run(schedule)
    assert server.survivors == reference.survivors and server.dropped == reference.dropped
    assert np.array_equal(server.result, _expected(inputs, server.survivors, params.bits))
    assert np.array_equal(server.result, reference.result)
    assert set(session.aborts) == set(reference.client_aborts)
    assert not set(server.survivors) & set(session.aborts)


# -- never both shares of one peer, across a restore ------------------------------------------------

def _masked_session(full: bool) -> tuple[Suspended, dict[int, np.ndarray]]:
    """Eight clients (full graph, or SecAgg+ of degree 4), all through MaskedInput, no dropouts."""
    ids = tuple(range(8))
    params = SessionParams(1, b"v1", ids, 3, 7 if full else 4, 6, nonce=NONCE)
    rng = np.random.default_rng(5)
    inputs = {u: rng.integers(0, 2**32, 6, dtype=np.uint64).astype(np.uint32) for u in ids}
    session = Suspended(params, inputs, {})
    for step in (session.server.start, session.server.advance, session.server.advance,
                 session.server.advance):
        for u, message in step():
            session.server.receive(decode(session.answer(u, encode(message))), sender=u)
    assert all(session.restore(u).phase is ClientPhase.MASKED for u in ids)
    return session, inputs


@pytest.mark.parametrize("full", [True, False])
@pytest.mark.parametrize("first", ["b", "s"])
def test_a_restored_client_never_reveals_the_other_share_of_a_peer(full, first):
    session, _ = _masked_session(full)
    client = session.restore(0)
    peer = max(client._neighbours)
    near = sorted(client._neighbours | {0})
    alive = tuple(near)
    without = tuple(u for u in near if u != peer)
    asks = {"b": (alive, ()), "s": (without, (peer,))}
    second = "s" if first == "b" else "b"
    response = client.handle(UnmaskRequest(client.session, *asks[first]))
    shown = dict(response.self_mask_shares if first == "b" else response.mask_key_shares)
    assert peer in shown
    data = client.snapshot()  # a new worker for the next message: only these bytes survive
    restored = session.restore(0, data)
    assert restored.phase is ClientPhase.DONE
    again = restored.handle(UnmaskRequest(client.session, *asks[first]))  # a repeat is answered alike
    assert again == response
    restored = session.restore(0, restored.snapshot())
    with pytest.raises(ProtocolError, match="both the self-mask share and the mask-key share"):
        restored.handle(UnmaskRequest(client.session, *asks[second]))
    # and the refusal survives too: the aborted client restores aborted and holds nothing
    aborted = session.restore(0, restored.snapshot())
    assert aborted.phase is ClientPhase.ABORTED and not aborted._held
    with pytest.raises(ProtocolError, match="aborted"):
        aborted.handle(UnmaskRequest(client.session, *asks[first]))


@pytest.mark.parametrize("full", [True, False])
def test_a_restored_client_refuses_both_shares_asked_in_one_request(full):
    session, _ = _masked_session(full)
    client = session.restore(0)
    peer = max(client._neighbours)
    near = tuple(sorted(client._neighbours | {0}))
    with pytest.raises(ProtocolError, match="both surviving and dropped"):
        client.handle(UnmaskRequest(client.session, near, (peer,)))
    assert session.restore(0, client.snapshot()).phase is ClientPhase.ABORTED


# -- damaged snapshots --------------------------------------------------------------------------------

@functools.cache
def _phase_snapshots() -> tuple[bytes, ...]:
    """Snapshots of one client in every phase (NEW to DONE in malicious mode on the full graph and
    on SecAgg+, honest DONE, ABORTED), restorable without identity (honest) or with KEYS[0]."""
    out = []
    for malicious, degree in ((True, 5), (True, 4), (False, 4)):
        ids = tuple(range(6))
        keys = dict(KEYS) if malicious else {}
        params = SessionParams(2, b"v1", ids, 4 if degree == 5 else 3, degree, 5, bits=16,
                               malicious=malicious, nonce=NONCE)
        inputs = {u: np.full(5, u + 1, dtype=np.uint32) for u in ids}
        session = Suspended(params, inputs, keys)  # run by hand, to keep client 0's every snapshot
        out.append(session.stored[0])
        deliver_from = [session.server.start]
        while deliver_from:
            for u, message in deliver_from.pop()():
                reply = session.answer(u, encode(message))
                if reply is not None:
                    session.server.receive(decode(reply), sender=u)
                if u == 0:
                    out.append(session.stored[0])
            if session.server.stage is not None:
                deliver_from.append(session.server.advance)
        assert session.server.result is not None
    client = Client.restore(out[-1])  # honest, done: abort it for an aborted snapshot
    client.abort()
    out.append(client.snapshot())
    return tuple(out)


KEYS = {u: SigningKey.generate() for u in range(6)}
REGISTRY = {u: k.public for u, k in KEYS.items()}


def _fields(data: bytes) -> list:
    """A snapshot's fields, read back by hand: ``[magic, version, body, digest]``, ``body`` the array
    ``[magic, version, *fields]``."""
    return msgpack.unpackb(msgpack.unpackb(data)[2])[2:]


def _restore(data: bytes) -> Client:
    """Restore with the identity the snapshot asks for (the test's malicious clients hold KEYS)."""
    try:
        malicious = bool(_fields(data)[SNAPSHOT_FIELDS.index("identity")])
    except Exception:  # damaged beyond reading: restore decides how
        malicious = False
    return Client.restore(data, identity=KEYS[0] if malicious else None,
                          registry=REGISTRY if malicious else None)


def _reseal(fields: list, version: int = SNAPSHOT_VERSION) -> bytes:
    """A record with a valid digest over edited fields: what the field checks (not the digest) see."""
    return seal_record(fields, what="s", magic=SNAPSHOT_MAGIC, version=version, label=SNAPSHOT_LABEL)


def test_every_phase_round_trips_and_restores_to_the_same_state():
    phases = []
    for data in _phase_snapshots():
        client = _restore(data)
        assert client.snapshot() == data
        phases.append(client.phase)
    assert set(phases) == set(ClientPhase)


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_raw_damage_is_a_config_error(data):
    """Truncation, bit flips, inserted or deleted bytes anywhere: a ConfigError, nothing else."""
    snapshot = data.draw(st.sampled_from(_phase_snapshots()))
    kind = data.draw(st.sampled_from(["truncate", "flip", "insert", "delete", "replace"]))
    at = data.draw(st.integers(0, len(snapshot) - 1))
    if kind == "truncate":
        bad = snapshot[:at]
    elif kind == "flip":
        bad = bytearray(snapshot)
        bad[at] ^= 1 << data.draw(st.integers(0, 7))
        bad = bytes(bad)
    elif kind == "insert":
        bad = snapshot[:at] + data.draw(st.binary(min_size=1, max_size=8)) + snapshot[at:]
    elif kind == "delete":
        bad = snapshot[:at] + snapshot[at + data.draw(st.integers(1, 8)):]
    else:
        bad = snapshot[:at] + data.draw(st.binary(min_size=1, max_size=8)) + snapshot[at + 1:]
    if bad == snapshot:
        return
    with pytest.raises(ConfigError):
        _restore(bad)


_ODD_VALUES = st.one_of(st.none(), st.booleans(), st.integers(-(2**63), 2**64 - 1), st.floats(),
                        st.text(max_size=8), st.binary(max_size=80),
                        st.lists(st.binary(max_size=40), max_size=3))


@settings(max_examples=400, deadline=None)
@given(st.data())
def test_edited_fields_under_a_valid_digest_are_a_config_error_or_a_consistent_client(data):
    """A field replaced by any msgpack value, or its bytes cut, grown or flipped, behind a valid digest
    (the field checks alone): restore raises ConfigError and nothing else, and what it accepts is a
    client whose snapshot is again restorable."""
    snapshot = data.draw(st.sampled_from(_phase_snapshots()))
    fields = _fields(snapshot)
    i = data.draw(st.integers(0, len(fields) - 1))
    old = fields[i]
    edit = data.draw(st.sampled_from(["replace", "cut", "grow", "flip"]))
    if edit == "replace" or type(old) is not bytes or not old:
        fields[i] = data.draw(_ODD_VALUES)
    elif edit == "cut":
        fields[i] = old[: data.draw(st.integers(0, len(old) - 1))]
    elif edit == "grow":
        fields[i] = old + data.draw(st.binary(min_size=1, max_size=40))
    else:
        at = data.draw(st.integers(0, len(old) - 1))
        fields[i] = old[:at] + bytes([old[at] ^ (1 << data.draw(st.integers(0, 7)))]) + old[at + 1:]
    try:
        bad = _reseal(fields)
    except (ProtocolError, ValueError, TypeError, OverflowError):
        return  # not encodable as msgpack at all (a float NaN is fine; a 2^64 int is not)
    try:
        client = _restore(bad)
    except ConfigError:
        return
    assert _restore(client.snapshot()).phase is client.phase


def _edited(phase: ClientPhase, name: str, value) -> bytes:
    snapshot = next(s for s in _phase_snapshots() if _restore(s).phase is phase)
    fields = _fields(snapshot)
    fields[SNAPSHOT_FIELDS.index(name)] = value
    return _reseal(fields)


@pytest.mark.parametrize(("phase", "name", "value", "match"), [
    (ClientPhase.MASKED, "enc_key", b"\x01" * 31, "enc_key: expected 32 bytes"),
    (ClientPhase.MASKED, "mask_key", b"\x01" * 33, "mask_key: expected 32 bytes"),
    (ClientPhase.SHARED, "mask_key", b"\x01" * 32, "directory: does not carry client 0's own keys"),
    (ClientPhase.MASKED, "share_keys", b"\x00" * 5, "share_keys: expected"),
    (ClientPhase.CHECKED, "value", b"\x00" * 16, "value: 4 words, the session's vector_length is 5"),
    (ClientPhase.MASKED, "value", b"\x00" * 19, "value: 19 bytes is not a whole number"),
    (ClientPhase.CHECKED, "value", b"\xff" * 20, r"value: words >= 2\^16"),
    (ClientPhase.MASKED, "value", [1, 2], "value: expected bytes"),
    # the input is masked and sent: a snapshot after that does not keep it
    (ClientPhase.MASKED, "value", b"\x00" * 20, "value: kept in phase masked"),
    (ClientPhase.MASKED, "phase", "masked!", "phase: expected one of"),
    (ClientPhase.MASKED, "phase", 4, "phase: expected one of"),
    (ClientPhase.MASKED, "phase", "new", "setup: a client in phase new has session parameters"),
    (ClientPhase.MASKED, "phase", "done", "signed: missing"),
    (ClientPhase.MASKED, "client_id", "0", "client_id: expected an integer"),
    (ClientPhase.MASKED, "client_id", True, "client_id: expected an integer"),
    (ClientPhase.MASKED, "index", -1, "index: expected an integer"),
    (ClientPhase.MASKED, "held_ids", b"", "held_b: expected 0 bytes"),
    (ClientPhase.MASKED, "self_seed", b"\x00" * 32, "commitment: does not commit"),
    (ClientPhase.MASKED, "session", b"\x00" * 32, "session: is not the id"),
    (ClientPhase.MASKED, "neighbours", b"\x00\x00\x00\x02\x00\x00\x00\x01", "sorted and unique"),
    (ClientPhase.MASKED, "setup", b"\x00garbage", "setup: "),
    (ClientPhase.MASKED, "directory", encode(Setup(SessionParams(0, b"", (0, 1), 1, 1, 1))), "directory: "),
    (ClientPhase.DONE, "revealed_s", b"\x00\x00\x00\x01", "revealed_s: client"),
    (ClientPhase.NEW, "held_ids", b"\x00\x00\x00\x01", "held_b: expected 33 bytes, got 0"),
    (ClientPhase.ABORTED, "self_seed", b"\x00" * 32, "holds no secrets"),
])
def test_targeted_damage_names_the_field(phase, name, value, match):
    with pytest.raises(ConfigError, match=match):
        _restore(_edited(phase, name, value))


def test_a_wrong_version_magic_or_digest_is_refused_by_name():
    snapshot = _phase_snapshots()[3]
    with pytest.raises(ConfigError, match="unsupported version 2"):
        _restore(_reseal(_fields(snapshot), version=2))
    outer = msgpack.unpackb(snapshot)
    with pytest.raises(ConfigError, match="bad magic"):
        _restore(msgpack.packb([0x5EC6, *outer[1:]]))
    with pytest.raises(ConfigError, match="integrity check failed"):
        _restore(msgpack.packb([*outer[:3], bytes(32)]))
    with pytest.raises(ConfigError, match="expected bytes"):
        Client.restore("not bytes")  # type: ignore[arg-type]


def test_the_identity_must_be_the_clients_own_and_is_never_in_the_snapshot():
    malicious = [s for s in _phase_snapshots() if _fields(s)[SNAPSHOT_FIELDS.index("identity")]]
    secret = KEYS[0].private.private_bytes_raw()
    for data in malicious:
        assert secret not in data
        with pytest.raises(ConfigError, match="identity: the snapshot's client 0 runs in malicious"):
            Client.restore(data)
        with pytest.raises(ConfigError, match="identity: not the key of the snapshot's client 0"):
            Client.restore(data, identity=KEYS[1], registry=REGISTRY)
    honest = _phase_snapshots()[-1]
    with pytest.raises(ConfigError, match="has no identity key"):
        Client.restore(honest, identity=KEYS[0], registry=REGISTRY)


# -- a whole backend round, suspended between messages ---------------------------------------------

def _updates(n: int, d: int, seed: int, scale: float = 1.0) -> np.ndarray:
    g = torch.Generator().manual_seed(seed)
    return (scale * torch.randn(n, d, generator=g, dtype=torch.float64)).numpy()


def _round(pipeline: Pipeline, updates, examples, *, suspend: bool, silent_after=None, identities=None):
    """One backend round over bytes; ``suspend``: every client lives as its suspend() record between
    messages and is resumed for each (a stateless worker per message)."""
    ids = tuple(range(len(updates)))
    server = pipeline.server(4, ids, weight_bound=float(max(examples)))
    key = (lambda u: None) if identities is None else identities.__getitem__
    live = {u: pipeline.client(u, updates[u], examples[u], identity=key(u)) for u in ids}
    records: dict[int, bytes] = {}
    inputs: dict[int, np.ndarray] = {}
    answered = dict.fromkeys(ids, 0)
    outgoing = server.start()
    while outgoing:
        for u, data in outgoing.items():
            if silent_after and answered[u] >= silent_after.get(u, 10**9):
                continue
            client: ClientRound = (pipeline.resume_client(records[u], identity=key(u)) if u in records
                                   else live[u])
            reply = client.handle(data)
            answered[u] += 1
            assert client.session_input is not None
            inputs.setdefault(u, client.session_input.copy())
            early = (int(Stage.ADVERTISE_KEYS), int(Stage.SHARE_KEYS), int(Stage.SHARE_CHECK))
            if client.session_input.size or client.reply_stage in early:
                # the restored input words, until the masked input is sent (then they are not kept)
                assert np.array_equal(client.session_input, inputs[u])
            if suspend:
                records[u] = client.suspend()
                assert not (identities and identities[u].private.private_bytes_raw() in records[u])
            server.receive(u, reply)
        outgoing = server.advance()
    assert server.done
    return server, inputs


@pytest.fixture
def replayed_inputs(monkeypatch):
    """Make the sessions' secret draws repeatable: the first round records each client's session input
    (keyed by its example count), a second round replays it. The two rounds then differ only in
    suspension, and must agree to the bit."""
    recorded: dict[float, np.ndarray] = {}

    def patch(pipeline: Pipeline, replay: bool) -> None:
        cls = type(pipeline.placement.session)
        original = cls.session_input

        def session_input(self, release, num_examples, weight_bound, params, round_seed):
            if replay:
                return recorded[num_examples].copy()
            value = original(self, release, num_examples, weight_bound, params, round_seed)
            recorded[num_examples] = value.copy()
            return value
        monkeypatch.setattr(cls, "session_input", session_input)
    return patch


@pytest.mark.parametrize("malicious", [False, True])
@pytest.mark.parametrize("silent_after", [None, {3: 2}, {1: 3}])
def test_a_suspended_secure_round_gives_the_same_aggregate(replayed_inputs, malicious, silent_after):
    n, d = 5, 12
    keys = {u: SigningKey.generate() for u in range(n)} if malicious else None
    registry = {u: k.public for u, k in keys.items()} if keys else None
    pipeline = Pipeline(SecureSum(value_range=4.0, malicious=malicious), d, registry=registry)
    updates = np.clip(_updates(n, d, 7), -4, 4)
    examples = [3, 5, 7, 11, 13]  # distinct: they key the replayed inputs
    replayed_inputs(pipeline, replay=False)
    suspended, inputs = _round(pipeline, updates, examples, suspend=True, silent_after=silent_after,
                               identities=keys)
    replayed_inputs(pipeline, replay=True)
    plain, _ = _round(pipeline, updates, examples, suspend=False, silent_after=silent_after, identities=keys)
    assert suspended.survivors == plain.survivors
    (one,), (other,) = suspended.sums, plain.sums
    assert np.array_equal(one.result, other.result)
    assert np.array_equal(one.result, _expected(inputs, suspended.survivors, one.params.bits))
    a, b = suspended.finish({}), plain.finish({})
    assert torch.equal(a.update, b.update) and a.metrics == b.metrics


def test_a_suspended_distributed_dp_round_gives_the_same_aggregate(replayed_inputs):
    from dp.distributed import DistributedDP

    n, d = 4, 300
    rule = DistributedDP(clip=1.0, noise_multiplier=1.0, expected_clients=n, bits=20)
    pipeline = Pipeline(rule, d, seed=3)
    updates = _updates(n, d, 9, scale=0.05)
    examples = [1, 2, 3, 4]
    replayed_inputs(pipeline, replay=False)
    suspended, _ = _round(pipeline, updates, examples, suspend=True)
    replayed_inputs(pipeline, replay=True)
    plain, _ = _round(pipeline, updates, examples, suspend=False)
    assert np.array_equal(suspended.sums[0].result, plain.sums[0].result)
    a, b = suspended.finish({}), plain.finish({})
    assert torch.equal(a.update, b.update)


def test_suspend_and_resume_refuse_what_has_nothing_to_suspend():
    pipeline = Pipeline(SecureSum(value_range=4.0), 4)
    client = pipeline.client(0, np.zeros(4), 1)
    with pytest.raises(ConfigError, match=r"suspend: client 0 has no secure session .* not started"):
        client.suspend()
    from secagg.aggregation import Mean

    plain = Pipeline(Mean(), 4)
    server = plain.server(0, (0, 1), weight_bound=1.0)
    c = plain.client(0, np.zeros(4), 1)
    c.handle(server.start()[0])
    with pytest.raises(ConfigError, match="sent its plain update"):
        c.suspend()
    with pytest.raises(ConfigError, match="a plain pipeline has no secure session"):
        plain.resume_client(b"")


def test_a_resumed_round_is_checked_and_keeps_its_fields():
    pipeline = Pipeline(SecureSum(value_range=4.0), 4)
    server = pipeline.server(0, (0, 1, 2), weight_bound=2.0)
    first = server.start()
    client = pipeline.client(1, np.ones(4), 2, train_loss=0.25, model_version=None)
    client.handle(first[1])
    record = client.suspend()
    back = pipeline.resume_client(record)
    assert (back.id, back.num_examples, back.train_loss, back.reply_stage, back.model_version) == (
        1, 2, 0.25, int(Stage.ADVERTISE_KEYS), None)
    assert back.released is None and np.array_equal(back.session_input, client.session_input)
    assert back.suspend() == record
    for cut in (0, 5, len(record) // 2, len(record) - 1):
        with pytest.raises(ConfigError):
            pipeline.resume_client(record[:cut])
    flipped = bytearray(record)
    flipped[len(record) // 2] ^= 4
    with pytest.raises(ConfigError, match="integrity check failed"):
        pipeline.resume_client(bytes(flipped))
