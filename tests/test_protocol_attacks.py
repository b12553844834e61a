"""Attacks on the secure-aggregation protocol: each is refused with a typed error, and the round goes on.

Every test shows two things: the documented error (:class:`ProtocolError`, :class:`WireError`,
:class:`AbortError`, :class:`ConfigError`) at the party that detects the attack, and the designed
continuation: the round completes with the offender treated as absent or dropped, and the result is
then exactly ``sum(x_u for u in survivors) mod 2^bits``, or the round aborts with :class:`AbortError`.
For these attacks: never a wrong sum, never a crash, never both shares of one client. (Bytes the protocol
cannot authenticate, a masked vector or an unmask share altered on the way to the server, shift the sum
undetectably, as a dishonest client could; transport integrity is assumed for those.)

Sessions are small (n <= 8, d <= 16; d = 4096 only for the uniformity statistics) and use
non-contiguous client ids so that no test passes by accident of ids being list indices.

The attacks are written against the honest-but-curious protocol (four client stages); where the
malicious-server mode changes the picture (a fifth stage, CONSISTENCY_CHECK, and signed sets), the
test also runs in that mode, and section 11 holds the attacks only that mode defends against.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import functools
import os

import msgpack
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from views import consistency_request, status_root

from secagg.crypto import aead
from secagg.crypto.keys import DHKeyPair, SigningKey, verify_signature
from secagg.crypto.shamir import split
from secagg.errors import AbortError, ConfigError, ProtocolError, WireError
from secagg.protocol.client import Client, ClientPhase
from secagg.protocol.graph import ring_neighbours
from secagg.protocol.messages import (
    AdvertiseKeys,
    ConsistencyRequest,
    ConsistencySignature,
    ForwardedShares,
    KeyDirectory,
    KeyEntry,
    MaskedInput,
    MaskRequest,
    Message,
    SessionParams,
    Setup,
    ShareCheck,
    ShareKeys,
    Stage,
    UnmaskRequest,
    UnmaskResponse,
)
from secagg.protocol.runner import run_session
from secagg.protocol.server import Outgoing, Server, ServerPhase
from secagg.protocol.session import consistency_message, session_id, share_key, share_point
from secagg.protocol.wire import MAGIC, VERSION, decode, encode

NONCE = bytes(range(32))  # a fixed session nonce for hand-built setups (a Server draws a fresh one)

# -- helpers ------------------------------------------------------------------------------------------


def ids_for(n: int) -> tuple[int, ...]:
    return tuple(10 + 7 * i for i in range(n))


def make_params(n: int = 5, t: int = 3, d: int = 8, degree: int | None = None, bits: int = 32,
                model_version: bytes = b"model-v1", malicious: bool = False) -> SessionParams:
    return SessionParams(round=3, model_version=model_version, client_ids=ids_for(n), threshold=t,
                         degree=n - 1 if degree is None else degree, vector_length=d, bits=bits,
                         malicious=malicious, nonce=NONCE)


def stages_of(params: SessionParams) -> list[Stage]:
    """The client stages a session goes through: CONSISTENCY_CHECK only in malicious-server mode."""
    return [s for s in Stage if params.malicious or s is not Stage.CONSISTENCY_CHECK]


def make_inputs(params: SessionParams, seed: int = 0) -> dict[int, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {u: rng.integers(0, 1 << params.bits, size=params.vector_length, dtype=np.uint64).astype(np.uint32)
            for u in params.client_ids}


def expected_sum(params: SessionParams, inputs: dict[int, np.ndarray], members) -> np.ndarray:
    """``sum(inputs[u] for u in members) mod 2^bits`` with numpy's uint32 wrap-around."""
    total = np.zeros(params.vector_length, dtype=np.uint32)
    for u in members:
        np.add(total, inputs[u], out=total)
    if params.bits < 32:
        np.bitwise_and(total, np.uint32((1 << params.bits) - 1), out=total)
    return total


def assert_exact(params: SessionParams, result: np.ndarray | None, inputs: dict[int, np.ndarray],
                 members) -> None:
    assert result is not None, "the round did not produce a result"
    assert result.dtype == np.uint32 and result.shape == (params.vector_length,)
    np.testing.assert_array_equal(result, expected_sum(params, inputs, members))


def wire(message: Message) -> Message:
    """Send a message through the codec, as a transport would."""
    return decode(encode(message))


def others(params: SessionParams, *excluded: int) -> tuple[int, ...]:
    return tuple(u for u in params.client_ids if u not in excluded)


def snapshot(server: Server) -> tuple:
    """Everything a refused message must leave untouched (the running sum included)."""
    return (server.phase, server.stage, server.expected_senders(), server.session, dict(server.keys),
            dict(server.shares), frozenset(server.masked), dict(server.consistency), dict(server.responses),
            server.survivors, server.dropped, server._sum.tobytes(),
            None if server.result is None else server.result.tobytes())


def flip_bit(data: bytes, byte: int, bit: int = 0) -> bytes:
    out = bytearray(data)
    out[byte] ^= 1 << bit
    return bytes(out)


class Harness:
    """A :class:`Server` and its :class:`Client` objects driven by hand, every message through the codec.

    ``outgoing`` holds the server messages that open the stage being collected, not yet delivered.
    A client's :class:`ProtocolError` propagates, unless ``tolerant``: then the client is recorded in
    ``aborts`` and skipped from then on (as the runner does). In malicious-server mode every client
    gets an Ed25519 ``identities[u]`` and trusts ``registry`` (so does the default server).
    """

    def __init__(self, params: SessionParams, inputs: dict[int, np.ndarray], server: Server | None = None,
                 tolerant: bool = False):
        self.params = params
        self.tolerant = tolerant
        self.inputs = inputs
        self.identities = ({u: SigningKey.generate() for u in params.client_ids} if params.malicious
                           else {})
        self.registry = {u: k.public for u, k in self.identities.items()} if params.malicious else None
        self.server = server if server is not None else Server(params, self.registry)
        self.clients = {u: Client(u, inputs[u], identity=self.identities.get(u),
                                  registry=self.registry) for u in params.client_ids}
        self.aborts: dict[int, str] = {}
        self.outgoing: Outgoing = self.server.start()

    def deliver(self, skip=()) -> dict[int, Message]:
        replies = {}
        for u, message in self.outgoing:
            if u in skip or u in self.aborts:
                continue
            try:
                replies[u] = wire(self.clients[u].handle(wire(message)))
            except ProtocolError as exc:
                if not self.tolerant:
                    raise
                self.aborts[u] = str(exc)
        return replies

    def submit(self, replies: dict[int, Message]) -> None:
        for u in sorted(replies):
            self.server.receive(wire(replies[u]))

    def step(self, skip=()) -> None:
        self.submit(self.deliver(skip))
        self.outgoing = self.server.advance()

    def finish(self, skip=()) -> np.ndarray:
        while self.server.phase is not ServerPhase.DONE:
            self.step(skip)
        assert self.server.result is not None
        return self.server.result

    def request(self) -> UnmaskRequest:
        (message,) = {m for _, m in self.outgoing}
        assert isinstance(message, UnmaskRequest)
        return message


def drive(params: SessionParams, inputs: dict[int, np.ndarray], until: Stage,
          server: Server | None = None) -> Harness:
    """A harness whose server collects stage ``until``; ``outgoing`` holds that stage's opening messages."""
    h = Harness(params, inputs, server)
    for stage in stages_of(params):
        if stage == until:
            return h
        h.step()
    raise AssertionError(f"stage {until.name} does not occur in this mode")


def rewrite(direction: str, target: int, stage: Stage, change):
    """A tamper hook applying ``change(message) -> message`` to one client's message of one stage."""
    def tamper(d: str, u: int, s: Stage, data: bytes) -> bytes:
        if (d, u, s) == (direction, target, stage):
            changed = change(decode(data))
            return changed if isinstance(changed, bytes) else encode(changed)
        return data
    return tamper


_P25519 = 2**255 - 19
# The X25519 u-coordinates of small order (RFC 7748 section 6.1; the libsodium blocklist): 0 and 1, the
# two points of order 8, and the non-canonical encodings p-1, p, p+1; plus 0 with the ignored top bit set.
SMALL_ORDER = {
    "zero": bytes(32),
    "one": b"\x01" + bytes(31),
    "order8-a": (325606250916557431795983626356110631294008115727848805560023387167927233504
                 ).to_bytes(32, "little"),
    "order8-b": (39382357235489614581723060781553021112529911719440698176882885853963445705823
                 ).to_bytes(32, "little"),
    "p-1": (_P25519 - 1).to_bytes(32, "little"),
    "p": _P25519.to_bytes(32, "little"),
    "p+1": (_P25519 + 1).to_bytes(32, "little"),
    "zero-top-bit": bytes(31) + b"\x80",
}


# -- 1. the server asks for both shares of one client --------------------------------------------------


@pytest.fixture
def unmasking() -> Harness:
    params = make_params(n=5, t=3, d=8)
    return drive(params, make_inputs(params, 1), Stage.UNMASKING)


@pytest.mark.parametrize("both", ["peer", "self"])
def test_request_listing_a_client_as_survivor_and_dropped_is_refused(unmasking: Harness, both: str) -> None:
    h = unmasking
    ids = h.params.client_ids
    c = ids[0]
    v = ids[3] if both == "peer" else c
    request = h.request()
    assert v in request.survivors and request.dropped == ()
    bad = wire(UnmaskRequest(request.session_id, request.survivors, (v,)))  # the codec lets it through
    produced = []
    with pytest.raises(ProtocolError, match="both"):
        produced.append(h.clients[c].handle(bad))
    assert produced == []
    assert h.clients[c].phase is ClientPhase.ABORTED
    with pytest.raises(ProtocolError, match="aborted"):  # for good: not even the honest request now
        h.clients[c].handle(request)
    # c sent its masked input, so it is a survivor and its input is in the sum; the others unmask it
    result = h.finish(skip={c})
    assert h.server.survivors == ids
    assert_exact(h.params, result, h.inputs, ids)


@pytest.mark.parametrize("order", ["self-mask-first", "mask-key-first"])
def test_second_request_cannot_obtain_the_other_share(unmasking: Harness, order: str) -> None:
    h = unmasking
    ids = h.params.client_ids
    c, v = ids[0], ids[3]
    honest = h.request()  # v survived: c should reveal v's self-mask share
    lie = UnmaskRequest(honest.session_id, others(h.params, v), (v,))  # claims v dropped: mask-key share
    first, second = (honest, lie) if order == "self-mask-first" else (lie, honest)
    produced: list[UnmaskResponse] = [h.clients[c].handle(wire(first))]
    assert h.clients[c].phase is ClientPhase.DONE
    with pytest.raises(ProtocolError, match="both"):
        produced.append(h.clients[c].handle(wire(second)))
    assert h.clients[c].phase is ClientPhase.ABORTED
    assert len(produced) == 1
    b_peers = {p for r in produced for p, _ in r.self_mask_shares}
    s_peers = {p for r in produced for p, _ in r.mask_key_shares}
    assert not b_peers & s_peers
    if order == "self-mask-first":
        assert v in b_peers and v not in s_peers  # no share of v's mask key ever left c
        h.server.receive(wire(produced[0]))
    else:
        assert v in s_peers and v not in b_peers
        before = snapshot(h.server)
        with pytest.raises(ProtocolError, match="self-mask shares for exactly"):
            h.server.receive(wire(produced[0]))  # the honest server did not ask for that
        assert snapshot(h.server) == before
    result = h.finish(skip={c})
    assert_exact(h.params, result, h.inputs, ids)


def test_repeated_identical_request_is_answered_identically(unmasking: Harness) -> None:
    h = unmasking
    ids = h.params.client_ids
    c = ids[1]
    request = h.request()
    r1 = h.clients[c].handle(wire(request))
    r2 = h.clients[c].handle(wire(request))
    assert h.clients[c].phase is ClientPhase.DONE
    assert r1 == r2 and encode(r1) == encode(r2)
    h.server.receive(wire(r1))
    before = snapshot(h.server)
    with pytest.raises(ProtocolError, match="duplicate"):
        h.server.receive(wire(r2))
    assert snapshot(h.server) == before
    result = h.finish(skip={c})
    assert_exact(h.params, result, h.inputs, ids)


# -- 2. a share forwarded to someone other than its addressee ----------------------------------------


@pytest.mark.parametrize("mode", ["swap-recipients", "relabel-sender", "readdress"])
def test_share_addressed_to_another_client_is_refused(mode: str) -> None:
    params = make_params(n=8, t=4, d=16)
    inputs = make_inputs(params, 2)
    ids = params.client_ids
    a, b, c, e = ids[0], ids[3], ids[5], ids[6]
    sent: dict[int, dict[int, bytes]] = {}  # sender -> recipient -> ciphertext, as the server saw them
    victims = {"swap-recipients": (b, c), "relabel-sender": (b,), "readdress": (b,)}[mode]

    def tamper(direction: str, u: int, stage: Stage, data: bytes) -> bytes:
        if direction == "to_server" and stage is Stage.SHARE_KEYS:
            sent[u] = dict(decode(data).shares)
        if direction == "to_client" and stage is Stage.SHARE_CHECK and u in victims:
            msg = decode(data)
            assert isinstance(msg, ForwardedShares)
            if mode == "readdress":
                changed = dataclasses.replace(msg, recipient=c)
            else:
                # swap: A's ciphertext for C goes to B and vice versa; relabel: E's ciphertext for B
                # is presented as coming from A
                forged = sent[a][c if u == b else b] if mode == "swap-recipients" else sent[e][b]
                changed = dataclasses.replace(
                    msg, shares=tuple((s, forged if s == a else ct) for s, ct in msg.shares))
            assert changed != msg
            return encode(changed)
        return data

    report = run_session(params, inputs, tamper=tamper)
    assert report.rejected == []
    if mode == "readdress":  # a message for another client: the victim aborts, as if it dropped
        assert set(report.client_aborts) == set(victims)
        assert all("addressed to client" in reason for reason in report.client_aborts.values())
        assert report.dropped == victims  # they shared keys, then vanished: their mask keys are recovered
        assert report.survivors == others(params, *victims)
    else:  # a share that fails authentication: refused and reported, the victim goes on masking
        assert report.client_aborts == {} and report.survivors == ids
        assert report.refused == {v: (a,) for v in victims}
    assert_exact(params, report.result, inputs, report.survivors)


# -- 3. a tampered share ciphertext -------------------------------------------------------------------


def _flip_shares(recipients, sender: int, byte: int):
    def tamper(direction: str, u: int, stage: Stage, data: bytes) -> bytes:
        if direction == "to_client" and stage is Stage.SHARE_CHECK and u in recipients:
            msg = decode(data)
            shares = tuple((s, flip_bit(ct, byte, 5) if s == sender else ct) for s, ct in msg.shares)
            assert shares != msg.shares
            return encode(dataclasses.replace(msg, shares=shares))
        return data
    return tamper


@pytest.mark.parametrize("byte", [0, 11, 12, 40, 70, -1], ids=["nonce0", "nonce11", "body0", "body",
                                                              "body-end", "tag-end"])
def test_flipped_bit_in_one_share_ciphertext_is_reported_and_the_round_goes_on(byte: int) -> None:
    """One bad ciphertext no longer stops anything: its recipient refuses that sender's shares, still
    masks with it, and reports it; the sender's secrets are rebuilt from its other neighbours."""
    params = make_params(n=8, t=4, d=16)
    inputs = make_inputs(params, 3)
    ids = params.client_ids
    victim, sender = ids[2], ids[6]
    report = run_session(params, inputs, tamper=_flip_shares({victim}, sender, byte))
    assert report.client_aborts == {} and report.rejected == []
    assert report.refused == {victim: (sender,)}
    assert report.survivors == ids
    assert_exact(params, report.result, inputs, report.survivors)
    # the sender drops after masking: its mask key is rebuilt without the victim's share
    report = run_session(params, inputs, tamper=_flip_shares({victim}, sender, byte),
                         drop_before={sender: Stage.MASKED_INPUT})
    assert report.refused == {victim: (sender,)} and report.survivors == others(params, sender)
    assert_exact(params, report.result, inputs, report.survivors)


@pytest.mark.parametrize("degree", [None, 6], ids=["full", "secaggplus"])
@pytest.mark.parametrize("tampered", [1, 4, 5, 7])
def test_a_sender_of_bad_shares_is_taken_out_and_the_round_goes_on(tampered: int, degree) -> None:
    """No one-client denial of service: a client whose share ciphertexts fail at some recipients stays in
    while t of its holders (its own share included) could open them; below that the share check takes
    it out before anyone masks (nobody masks with it, its input is in no sum), and the round completes
    with the exact sum of the others. Its recipients' reports name it either way."""
    params = make_params(n=8, t=4, d=16, degree=degree)
    inputs = make_inputs(params, 4)
    sender = params.client_ids[-1]
    server = Server(params)
    near = sorted(server.ring(sender))[:tampered]  # the recipients whose ciphertext from it is damaged
    report = run_session(params, inputs, tamper=_flip_shares(set(near), sender, 20), server=server)
    assert report.client_aborts == {} and report.rejected == []
    assert report.refused == dict.fromkeys(near, (sender,))
    holders = len(server.ring(sender)) - len(near) + 1  # its own share counts in honest mode
    if holders >= params.threshold:
        assert report.survivors == params.client_ids and report.excluded == ()
    else:
        assert report.excluded == (sender,) and sender not in report.survivors + report.dropped
        assert report.survivors == others(params, sender)
    assert_exact(params, report.result, inputs, report.survivors)


# -- 4. low-order X25519 keys --------------------------------------------------------------------------


@pytest.mark.parametrize("point", sorted(SMALL_ORDER))
@pytest.mark.parametrize("field", ["enc_key", "mask_key"])
def test_server_refuses_a_small_order_key_and_continues(point: str, field: str) -> None:
    params = make_params(n=5, t=3, d=8)
    inputs = make_inputs(params, 5)
    victim = params.client_ids[1]
    tamper = rewrite("to_server", victim, Stage.ADVERTISE_KEYS,
                     lambda m: dataclasses.replace(m, **{field: SMALL_ORDER[point]}))
    report = run_session(params, inputs, tamper=tamper)
    assert report.rejected == [(victim, f"server: {field} of client {victim} is a low-order X25519 key")]
    assert report.client_aborts == {}
    assert victim not in report.survivors + report.dropped
    assert report.survivors == others(params, victim)
    assert_exact(params, report.result, inputs, report.survivors)


def _advertised(params: SessionParams, inputs: dict[int, np.ndarray]):
    clients = {u: Client(u, inputs[u]) for u in params.client_ids}
    ads = {u: c.handle(wire(Setup(params))) for u, c in clients.items()}
    entries = tuple(KeyEntry(u, a.enc_key, a.mask_key, a.signature, a.commitment, params.client_ids.index(u))
                    for u, a in sorted(ads.items()))
    return clients, entries


@pytest.mark.parametrize("point", sorted(SMALL_ORDER))
def test_client_refuses_a_directory_with_a_small_order_encryption_key(point: str) -> None:
    params = make_params(n=4, t=3, d=8)
    clients, entries = _advertised(params, make_inputs(params, 6))
    target, control, peer = params.client_ids[0], params.client_ids[1], params.client_ids[2]
    forged = tuple(e._replace(enc_key=SMALL_ORDER[point]) if e.client_id == peer else e
                   for e in entries)
    produced = []
    with pytest.raises(ProtocolError, match=f"public key of client {peer} has small order"):
        produced.append(clients[target].handle(wire(KeyDirectory(forged))))
    assert produced == [] and clients[target].phase is ClientPhase.ABORTED
    # the same directory without the forgery is accepted: the low-order key alone caused the abort
    assert isinstance(clients[control].handle(wire(KeyDirectory(entries))), ShareKeys)


def _share_from_corrupt_peer(peer_mask_key: bytes):
    """Client ``u`` gets a directory in which peer ``v`` (simulated here, its keys ours) advertises
    ``peer_mask_key``, then a correctly encrypted share from ``v``. Returns (client, reply or error)."""
    params = make_params(n=4, t=2, d=8)
    u, v = params.client_ids[0], params.client_ids[1]
    inputs = make_inputs(params, 7)
    client = Client(u, inputs[u])
    ad = client.handle(wire(Setup(params)))
    v_enc = DHKeyPair.generate()
    rest = [KeyEntry(w, DHKeyPair.generate().public, DHKeyPair.generate().public, b"", os.urandom(32), i + 2)
            for i, w in enumerate(params.client_ids[2:])]
    entries = tuple(sorted([KeyEntry(u, ad.enc_key, ad.mask_key, b"", ad.commitment, 0),
                            KeyEntry(v, v_enc.public, peer_mask_key, b"", os.urandom(32), 1),
                            *rest], key=lambda e: e.client_id))
    try:
        client.handle(wire(KeyDirectory(entries)))
    except ProtocolError as exc:  # refusing the key as soon as it is seen is fine too
        return client, exc
    sid = client.session
    assert sid == session_id(params)
    xs = [share_point(u), share_point(v)]
    b, s = split(os.urandom(32), params.threshold, xs)[0], split(os.urandom(32), params.threshold, xs)[0]
    key = share_key(v_enc.agree(ad.enc_key, peer=u), sid, v, u)
    plaintext = v.to_bytes(4, "big") + u.to_bytes(4, "big") + b.to_bytes() + s.to_bytes()
    ciphertext = aead.seal(key, plaintext, aead.associated_data(sid, v, u))
    try:
        check = client.handle(wire(ForwardedShares(u, sid, ((v, ciphertext),))))
        assert isinstance(check, ShareCheck) and check.refused == ()
        return client, client.handle(wire(MaskRequest(sid, ())))  # masking: the mask key is used here
    except ProtocolError as exc:
        return client, exc


@pytest.mark.parametrize("point", ["zero", "one", "order8-a", "p+1"])
def test_client_never_masks_with_a_small_order_mask_key(point: str) -> None:
    client, outcome = _share_from_corrupt_peer(SMALL_ORDER[point])
    assert isinstance(outcome, ProtocolError)
    assert "has small order" in str(outcome)
    assert client.phase is ClientPhase.ABORTED
    # control: the same share with a proper mask key is accepted and the client masks its input
    client, outcome = _share_from_corrupt_peer(DHKeyPair.generate().public)
    assert isinstance(outcome, MaskedInput) and client.phase is ClientPhase.MASKED


# -- 5. duplicate ids, duplicate messages, replayed keys -------------------------------------------------


def test_duplicate_client_ids_are_a_config_error() -> None:
    with pytest.raises(ConfigError, match="duplicate"):
        SessionParams(round=0, model_version=b"", client_ids=(1, 2, 2, 3), threshold=2, degree=3,
                      vector_length=4, nonce=NONCE)
    with pytest.raises(ConfigError, match="sorted and unique"):
        SessionParams(round=0, model_version=b"", client_ids=(2, 1, 3), threshold=2, degree=2,
                      vector_length=4, nonce=NONCE)
    # a Setup carrying duplicate ids cannot even be decoded (id lists travel packed, big-endian uint32)
    packed = b"".join(i.to_bytes(4, "big") for i in (1, 2, 2, 3))
    p_fields = [0, b"", 4, bytes(32), 2, 3, 4, 32, False, 0, b""]
    raw = msgpack.packb([MAGIC, VERSION, 1, p_fields, packed, 0, b""], use_bin_type=True)
    with pytest.raises(WireError, match="duplicate"):
        decode(raw)


def test_second_advertise_keys_from_one_client_is_refused() -> None:
    params = make_params(n=4, t=3, d=8)
    inputs = make_inputs(params, 8)
    h = Harness(params, inputs)
    replies = h.deliver()
    u = params.client_ids[2]
    h.server.receive(replies[u])
    before = snapshot(h.server)
    impostor = Client(u, inputs[u]).handle(wire(Setup(params)))  # a second device claiming id u
    for again in (replies[u], impostor):
        with pytest.raises(ProtocolError, match=f"duplicate AdvertiseKeys from client {u}"):
            h.server.receive(wire(again))
        assert snapshot(h.server) == before
    h.submit({w: m for w, m in replies.items() if w != u})
    h.outgoing = h.server.advance()
    assert h.server.keys[u] == replies[u]  # the first one stands
    assert_exact(params, h.finish(), inputs, params.client_ids)


@pytest.mark.parametrize(("own", "copied"), [("enc_key", "enc_key"), ("mask_key", "mask_key"),
                                             ("enc_key", "mask_key"), ("mask_key", "enc_key")])
def test_replayed_public_key_is_refused(own: str, copied: str) -> None:
    params = make_params(n=5, t=3, d=8)
    inputs = make_inputs(params, 9)
    honest, thief = params.client_ids[0], params.client_ids[3]  # the honest client's keys arrive first
    seen: dict[str, bytes] = {}

    def tamper(direction: str, u: int, stage: Stage, data: bytes) -> bytes:
        if direction == "to_server" and stage is Stage.ADVERTISE_KEYS:
            msg = decode(data)
            if u == honest:
                seen.update(enc_key=msg.enc_key, mask_key=msg.mask_key)
            if u == thief:
                return encode(dataclasses.replace(msg, **{own: seen[copied]}))
        return data

    report = run_session(params, inputs, tamper=tamper)
    assert report.rejected == [(thief, f"server: client {thief} advertised another client's key (replay)")]
    assert report.survivors == others(params, thief) and report.dropped == ()
    assert_exact(params, report.result, inputs, report.survivors)


def test_same_key_advertised_twice_is_refused() -> None:
    params = make_params(n=5, t=3, d=8)
    inputs = make_inputs(params, 10)
    victim = params.client_ids[2]
    report = run_session(params, inputs, tamper=rewrite(
        "to_server", victim, Stage.ADVERTISE_KEYS, lambda m: dataclasses.replace(m, mask_key=m.enc_key)))
    assert report.rejected == [(victim, f"server: client {victim} advertised the same key twice")]
    assert report.survivors == others(params, victim)
    assert_exact(params, report.result, inputs, report.survivors)


def test_client_refuses_directories_with_duplicates() -> None:
    params = make_params(n=4, t=3, d=8)
    clients, entries = _advertised(params, make_inputs(params, 11))
    a, b, c = params.client_ids[:3]
    # c's keys replayed under b's id (b's own keys replaced): a public key appears twice
    replayed = tuple(e._replace(enc_key=entries[2].enc_key) if e.client_id == b else e
                     for e in entries)
    with pytest.raises(ProtocolError, match="a public key appears twice"):
        clients[a].handle(wire(KeyDirectory(replayed)))
    assert clients[a].phase is ClientPhase.ABORTED
    # the same client listed twice: the codec refuses it, and so does the client given the object
    doubled = KeyDirectory((*entries[:2], entries[1], *entries[2:]))
    with pytest.raises(WireError, match="duplicate"):
        decode(encode(doubled))
    with pytest.raises(ProtocolError, match="duplicate client id or index"):
        clients[c].handle(doubled)
    assert clients[c].phase is ClientPhase.ABORTED


# -- 6. messages from the wrong round or another session ------------------------------------------------


def _candidates(params: SessionParams, sender: int, sid: bytes) -> list[Message]:
    """One well-formed message of every type, with the right sender, session id and vector length."""
    key1, key2 = DHKeyPair.generate().public, DHKeyPair.generate().public
    return [AdvertiseKeys(sender, key1, key2), ShareKeys(sender, sid, ()), ShareCheck(sender, sid, ()),
            MaskedInput(sender, sid, bytes(4 * params.vector_length)),
            ConsistencySignature(sender, sid, bytes(64)), UnmaskResponse(sender, sid, (), ()),
            Setup(params), KeyDirectory((KeyEntry(sender, key1, key2),)), ForwardedShares(sender, sid, ()),
            MaskRequest(sid, ()), ConsistencyRequest(sid, (sender,), ()), UnmaskRequest(sid, (sender,), ())]


_SERVER_EXPECTS = {Stage.ADVERTISE_KEYS: AdvertiseKeys, Stage.SHARE_KEYS: ShareKeys,
                   Stage.SHARE_CHECK: ShareCheck, Stage.MASKED_INPUT: MaskedInput,
                   Stage.CONSISTENCY_CHECK: ConsistencySignature,
                   Stage.UNMASKING: UnmaskResponse}
# (mode, stage) for every stage the mode has: honest mode has no CONSISTENCY_CHECK
_MODE_STAGES = [(mode, stage) for mode in ("honest", "malicious")
                for stage in stages_of(make_params(malicious=mode == "malicious"))]


def test_consistency_check_is_a_malicious_mode_stage_only() -> None:
    """An honest-mode server goes straight from MASKED_INPUT to UNMASKING; a malicious-mode one does not."""
    for malicious in (False, True):
        params = make_params(n=5, t=3, d=8, malicious=malicious)
        h = Harness(params, make_inputs(params, 12))
        seen = [h.server.stage]
        while h.server.stage is not None:
            h.step()
            seen.append(h.server.stage)
        assert seen == [*stages_of(params), None]
        assert (Stage.CONSISTENCY_CHECK in seen) is malicious
        assert_exact(params, h.server.result, h.inputs, params.client_ids)


@pytest.mark.parametrize(("mode", "stage"), _MODE_STAGES, ids=[f"{m}-{s.name}" for m, s in _MODE_STAGES])
def test_server_refuses_messages_from_the_wrong_round(mode: str, stage: Stage) -> None:
    params = make_params(n=5, t=3, d=8, malicious=mode == "malicious")
    inputs = make_inputs(params, 12)
    h = drive(params, inputs, stage)
    sender = min(h.server.expected_senders())
    sid = h.server.session or bytes(32)
    refused = 0
    candidates = _candidates(params, sender, sid)
    for message in candidates:
        if isinstance(message, _SERVER_EXPECTS[stage]):
            continue
        before = snapshot(h.server)
        with pytest.raises(ProtocolError, match="wrong round"):
            h.server.receive(wire(message))
        assert snapshot(h.server) == before
        refused += 1
    assert refused == len(candidates) - 1 == 11
    assert_exact(params, h.finish(), inputs, params.client_ids)
    for message in _candidates(params, sender, h.server.session):  # after the end: nothing is expected
        with pytest.raises(ProtocolError, match="no client message expected"):
            h.server.receive(message)


def test_masked_input_while_collecting_share_keys_changes_nothing() -> None:
    params = make_params(n=5, t=3, d=8)
    inputs = make_inputs(params, 13)
    h = drive(params, inputs, Stage.SHARE_KEYS)
    u = params.client_ids[1]
    early = MaskedInput(u, h.server.session, inputs[u].astype("<u4").tobytes())
    senders = h.server.expected_senders()
    before = snapshot(h.server)
    with pytest.raises(ProtocolError, match=r"MaskedInput received during stage SHARE_KEYS \(wrong round\)"):
        h.server.receive(wire(early))
    assert h.server.expected_senders() == senders == frozenset(params.client_ids)
    assert snapshot(h.server) == before
    assert_exact(params, h.finish(), inputs, params.client_ids)


# phase the client is in when the harness collects `stage`, and a message it does not expect then
_CLIENT_CASES = {
    "new+KeyDirectory": (False, Stage.ADVERTISE_KEYS, ClientPhase.NEW, KeyDirectory),
    "advertised+ForwardedShares": (False, Stage.SHARE_KEYS, ClientPhase.ADVERTISED, ForwardedShares),
    "shared+UnmaskRequest": (False, Stage.SHARE_CHECK, ClientPhase.SHARED, UnmaskRequest),
    "checked+ForwardedShares": (False, Stage.MASKED_INPUT, ClientPhase.CHECKED, ForwardedShares),
    "checked+UnmaskRequest": (False, Stage.MASKED_INPUT, ClientPhase.CHECKED, UnmaskRequest),
    "masked+Setup": (False, Stage.UNMASKING, ClientPhase.MASKED, Setup),
    "masked+ForwardedShares": (False, Stage.UNMASKING, ClientPhase.MASKED, ForwardedShares),
    # an honest-mode client has no consistency round: a ConsistencyRequest is out of place
    "masked+ConsistencyRequest": (False, Stage.UNMASKING, ClientPhase.MASKED, ConsistencyRequest),
    "malicious/shared+ConsistencyRequest": (True, Stage.SHARE_CHECK, ClientPhase.SHARED, ConsistencyRequest),
    "malicious/checked+ConsistencyRequest": (True, Stage.MASKED_INPUT, ClientPhase.CHECKED,
                                             ConsistencyRequest),
    # a malicious server skipping the consistency round: no shares without signing the sets first
    "malicious/masked+UnmaskRequest": (True, Stage.CONSISTENCY_CHECK, ClientPhase.MASKED, UnmaskRequest),
    "malicious/masked+Setup": (True, Stage.CONSISTENCY_CHECK, ClientPhase.MASKED, Setup),
    # a second round of signing (another pair of sets to sign) is refused
    "malicious/signed+ConsistencyRequest": (True, Stage.UNMASKING, ClientPhase.SIGNED, ConsistencyRequest),
    "malicious/signed+ForwardedShares": (True, Stage.UNMASKING, ClientPhase.SIGNED, ForwardedShares),
}


@pytest.mark.parametrize("case", sorted(_CLIENT_CASES))
def test_client_refuses_messages_from_the_wrong_round(case: str) -> None:
    malicious, stage, phase, wrong_type = _CLIENT_CASES[case]
    params = make_params(n=5, t=3, d=8, malicious=malicious)
    inputs = make_inputs(params, 14)
    h = drive(params, inputs, stage)
    u = params.client_ids[2]
    assert h.clients[u].phase is phase
    (message,) = [m for m in _candidates(params, u, h.server.session or bytes(32)) if type(m) is wrong_type]
    with pytest.raises(ProtocolError, match="wrong round"):
        h.clients[u].handle(wire(message))
    assert h.clients[u].phase is ClientPhase.ABORTED
    result = h.finish(skip={u})
    sent_masked = phase in (ClientPhase.MASKED, ClientPhase.SIGNED)
    assert (u in h.server.survivors) == sent_masked  # it had sent its masked input
    assert h.server.survivors == (params.client_ids if sent_masked else others(params, u))
    if malicious and sent_masked:  # a survivor that never signed is not asked to unmask
        assert (u in h.server.consistency) == (phase is ClientPhase.SIGNED)
    assert h.server.dropped == ((u,) if phase in (ClientPhase.SHARED, ClientPhase.CHECKED) else ())
    assert_exact(params, result, inputs, h.server.survivors)


def test_messages_replayed_from_an_earlier_session_are_refused() -> None:
    params = make_params(n=6, t=3, d=8)
    inputs = make_inputs(params, 15)
    ids = params.client_ids
    fresh = dataclasses.replace(params, nonce=b"")  # each server draws its own nonce, as deployed
    old = drive(fresh, inputs, Stage.SHARE_KEYS)
    new = drive(fresh, inputs, Stage.SHARE_KEYS)  # identical parameters: only the nonce and keys differ
    assert old.server.session != new.server.session
    stale_forward, stale_request = ids[2], ids[1]
    for stage in (Stage.SHARE_KEYS, Stage.SHARE_CHECK, Stage.MASKED_INPUT):
        skip = {stale_forward} if stage is not Stage.SHARE_KEYS else set()
        old_replies, new_replies = old.deliver(), new.deliver(skip)
        if stage is Stage.SHARE_CHECK:  # a session-1 ForwardedShares reaches a session-2 client
            (fwd,) = [m for w, m in old.outgoing if w == stale_forward]
            with pytest.raises(ProtocolError, match="another session"):
                new.clients[stale_forward].handle(wire(fwd))
            assert new.clients[stale_forward].phase is ClientPhase.ABORTED
        for u in (ids[0], ids[4]):  # a recorded message is fed before the genuine one
            before = snapshot(new.server)
            with pytest.raises(ProtocolError, match="is for another session"):
                new.server.receive(wire(old_replies[u]))
            assert snapshot(new.server) == before
        old.submit(old_replies)
        new.submit(new_replies)
        old.outgoing, new.outgoing = old.server.advance(), new.server.advance()
    with pytest.raises(ProtocolError, match="another session"):  # a session-1 UnmaskRequest
        new.clients[stale_request].handle(wire(old.request()))
    assert new.clients[stale_request].phase is ClientPhase.ABORTED
    result = new.finish(skip={stale_request, stale_forward})
    assert new.server.dropped == (stale_forward,)
    assert new.server.survivors == others(params, stale_forward)  # stale_request sent its masked input
    assert_exact(params, result, inputs, new.server.survivors)


# -- 7. wrong vector lengths ------------------------------------------------------------------------


def test_masked_input_of_the_wrong_length_is_refused_and_its_sender_dropped() -> None:
    params = make_params(n=5, t=3, d=8)
    inputs = make_inputs(params, 16)
    h = drive(params, inputs, Stage.MASKED_INPUT)
    replies = h.deliver()
    u = params.client_ids[3]
    genuine = replies.pop(u)
    for words in (params.vector_length - 1, params.vector_length + 1, 0):
        vector = (genuine.vector * 2)[: 4 * words]
        before = snapshot(h.server)
        expected = fr"client {u}: {4 * words} bytes, expected 32 \(8 words of 32 bits\)"
        with pytest.raises(ProtocolError, match=expected):
            h.server.receive(wire(dataclasses.replace(genuine, vector=vector)))
        assert snapshot(h.server) == before
    h.submit(replies)
    h.outgoing = h.server.advance()
    assert h.server.dropped == (u,)
    result = h.finish()
    assert h.server.survivors == others(params, u)
    assert_exact(params, result, inputs, h.server.survivors)


def test_truncated_masked_input_in_transit_counts_as_dropped() -> None:
    params = make_params(n=5, t=3, d=8)
    inputs = make_inputs(params, 17)
    u = params.client_ids[0]
    report = run_session(params, inputs, tamper=rewrite(
        "to_server", u, Stage.MASKED_INPUT, lambda m: dataclasses.replace(m, vector=m.vector[:-4])))
    assert report.rejected == [(u, f"server: masked input of client {u}: 28 bytes, expected 32 (8 words "
                                   f"of 32 bits)")]
    assert report.dropped == (u,) and report.survivors == others(params, u)
    assert_exact(params, report.result, inputs, report.survivors)


def test_client_with_a_wrong_length_input_aborts_at_setup() -> None:
    params = make_params(n=5, t=3, d=8)
    inputs = make_inputs(params, 18)
    u = params.client_ids[4]
    client = Client(u, inputs[u][:-1])
    with pytest.raises(ProtocolError, match="input has 7 words, the session expects vector_length=8"):
        client.handle(wire(Setup(params)))
    assert client.phase is ClientPhase.ABORTED
    for bad in (inputs[u].reshape(2, 4), inputs[u].astype(np.int64), list(inputs[u])):
        with pytest.raises(ConfigError, match="1-D uint32 array"):
            Client(u, bad)
    short = {**inputs, u: inputs[u][:-1]}
    report = run_session(params, short, tamper=None)
    assert list(report.client_aborts) == [u] and "vector_length=8" in report.client_aborts[u]
    assert report.survivors == others(params, u) and report.dropped == ()
    assert_exact(params, report.result, inputs, report.survivors)


def test_words_beyond_the_ring_are_refused_with_bits_below_32() -> None:
    """A client's input word >= 2^bits aborts that client; on the wire the masked words are packed at
    the ring's width, so a word beyond the ring cannot even be written: the old uint32 form is refused
    for its length."""
    params = make_params(n=5, t=3, d=8, bits=16)
    inputs = make_inputs(params, 19)
    u, w = params.client_ids[1], params.client_ids[2]
    big = {**inputs, u: inputs[u] | np.uint32(1 << 16)}
    report = run_session(params, big, tamper=rewrite(  # w's masked input in 32-bit words
        "to_server", w, Stage.MASKED_INPUT,
        lambda m: dataclasses.replace(m, vector=np.frombuffer(m.vector, "<u2").astype("<u4").tobytes())))
    assert list(report.client_aborts) == [u] and "2^16" in report.client_aborts[u]
    assert report.rejected == [(w, f"server: masked input of client {w}: 32 bytes, expected 16 (8 words of "
                                   f"16 bits)")]
    assert report.dropped == (w,) and report.survivors == others(params, u, w)
    assert_exact(params, report.result, inputs, report.survivors)


def test_masked_words_travel_at_the_ring_width_and_stray_padding_bits_are_refused() -> None:
    params = make_params(n=4, t=3, d=5, bits=12)  # 60 bits: 8 bytes, the last 4 bits padding
    inputs = make_inputs(params, 23)
    u, w = params.client_ids[0], params.client_ids[3]
    sizes = {}

    def note(m):
        sizes[m.sender] = len(m.vector)
        return m

    report = run_session(params, inputs, tamper=rewrite(
        "to_server", w, Stage.MASKED_INPUT,
        lambda m: dataclasses.replace(note(m), vector=m.vector[:-1] + bytes([m.vector[-1] | 0x80]))))
    assert sizes[w] == 8  # ceil(5 * 12 / 8) bytes, where uint32 words took 20
    assert report.rejected == [(w, f"server: masked input of client {w}: padding bits after the last word "
                                   f"are not zero")]
    assert report.survivors == others(params, w) and u in report.survivors
    assert_exact(params, report.result, inputs, report.survivors)


# -- 8. malformed messages never crash the server -----------------------------------------------------


class _StageRecorder(Server):
    """A server that keeps a deep copy of itself as it starts collecting each stage."""

    def __init__(self, params: SessionParams, registry: dict[int, bytes] | None = None) -> None:
        super().__init__(params, registry)
        self.copies: dict[Stage, Server] = {}

    def _keep(self) -> None:
        copies, self.copies = self.copies, {}
        try:
            copies[self.stage] = copy.deepcopy(self)
        finally:
            self.copies = copies

    def start(self) -> Outgoing:
        out = super().start()
        self._keep()
        return out

    def advance(self) -> Outgoing:
        out = super().advance()
        if self.stage is not None:
            self._keep()
        return out


@functools.cache
def _fuzz_targets(malicious: bool = False) -> dict[Stage, tuple[Server, tuple[bytes, ...]]]:
    """Per stage: the server about to collect it, and the client messages it then received (real bytes,
    captured in transit). One client drops after ShareKeys, so the unmask responses carry both kinds.
    In malicious mode the server holds the identity registry, so it checks every signature it gets."""
    params = make_params(n=5, t=3, d=8, malicious=malicious)
    stages = stages_of(params)
    captured: dict[Stage, list[bytes]] = {s: [] for s in stages}

    def tamper(direction: str, u: int, stage: Stage, data: bytes) -> bytes:
        if direction == "to_server":
            captured[stage].append(data)
        return data

    identities = {u: SigningKey.generate() for u in params.client_ids} if malicious else None
    registry = {u: k.public for u, k in identities.items()} if identities else None
    server = _StageRecorder(params, registry)
    dropped = params.client_ids[4]
    report = run_session(params, make_inputs(params, 20), drop_before={dropped: Stage.MASKED_INPUT},
                         tamper=tamper, server=server, identities=identities)
    assert report.result is not None and report.dropped == (dropped,)
    assert all(captured.values())
    assert set(server.copies) == set(stages)
    return {s: (server.copies[s], tuple(captured[s])) for s in stages}


def _feed(server0: Server, data: bytes, genuine: tuple[bytes, ...] = ()) -> bool:
    """Decode and receive ``data`` on a copy of ``server0``; only typed refusals may escape, and a refusal
    leaves the state as it was. After an accepted message the genuine messages of the stage follow
    (duplicates refused) and the stage is closed: only :class:`AbortError` may escape then."""
    server = copy.deepcopy(server0)
    before = snapshot(server)
    try:
        server.receive(decode(data))
    except (WireError, ProtocolError):  # WireError is a ProtocolError; both listed for the reader
        assert snapshot(server) == before
        return False
    for raw in genuine:
        try:
            server.receive(decode(raw))
        except ProtocolError as exc:
            assert "duplicate" in str(exc) or "replay" in str(exc) or "unexpected" in str(exc)
    with contextlib.suppress(AbortError):
        for _, message in server.advance():  # whatever the server sends next can go on the wire
            encode(message)
    return True


# (malicious, stage): every stage of both modes
_stage = st.sampled_from([(m, s) for m in (False, True) for s in stages_of(make_params(malicious=m))])


@settings(max_examples=150)
@given(stage=_stage, data=st.data())
def test_fuzz_bit_flips_of_real_messages(stage: tuple[bool, Stage], data: st.DataObject) -> None:
    """Flip bits anywhere, flip bits in the payload (the last 32 bytes: keys, ciphertexts, vectors, shares,
    signatures, which the server often has to accept), truncate, or append bytes."""
    server0, messages = _fuzz_targets(stage[0])[stage[1]]
    raw = data.draw(st.sampled_from(messages))
    mode = data.draw(st.sampled_from(["flip", "flip-payload", "truncate", "append"]))
    if mode == "truncate":
        mutated = raw[: data.draw(st.integers(0, len(raw) - 1))]
    elif mode == "append":
        mutated = raw + data.draw(st.binary(min_size=1, max_size=8))
    else:
        first = 0 if mode == "flip" else 8 * (len(raw) - 32)
        bits = data.draw(st.lists(st.integers(first, 8 * len(raw) - 1), min_size=1, max_size=6, unique=True))
        buf = bytearray(raw)
        for bit in bits:
            buf[bit // 8] ^= 1 << (bit % 8)
        mutated = bytes(buf)
    _feed(server0, mutated, messages)


@settings(max_examples=80)
@given(stage=_stage, junk=st.binary(max_size=300))
def test_fuzz_random_bytes(stage: tuple[bool, Stage], junk: bytes) -> None:
    assert not _feed(_fuzz_targets(stage[0])[stage[1]][0], junk)


_leaf = st.one_of(st.none(), st.booleans(), st.integers(-(2**63), 2**64 - 1), st.floats(),
                  st.text(max_size=4), st.binary(max_size=40),
                  st.sampled_from([0, 1, 10, 17, 38, 2**32 - 2, 2**32 - 1, -1]),
                  st.sampled_from([bytes(32), bytes(33), bytes(4 * 8), bytes(4 * 7), bytes(8 + 66 + 28),
                                   bytes(63)]))
_value = st.recursive(_leaf, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                     st.dictionaries(st.integers(0, 3), inner, max_size=2)),
                      max_leaves=12)


@settings(max_examples=150)
@given(stage=_stage, data=st.data())
def test_fuzz_field_replacement_in_real_messages(stage: tuple[bool, Stage], data: st.DataObject) -> None:
    """Replace one element of a real message's msgpack array (header or field) with an arbitrary value,
    including the session's real ids and session id, so near-valid messages reach the state machine."""
    server0, messages = _fuzz_targets(stage[0])[stage[1]]
    obj = msgpack.unpackb(data.draw(st.sampled_from(messages)), raw=False)
    index = data.draw(st.integers(0, len(obj) - 1))
    donors = [msgpack.unpackb(m, raw=False)[index] for m in messages]  # splice another client's field
    real = st.sampled_from([*server0.params.client_ids, server0.session, *donors])
    obj[index] = data.draw(st.one_of(_value, real))
    if data.draw(st.booleans()):
        obj = obj[: data.draw(st.integers(0, len(obj)))] + data.draw(st.lists(_value, max_size=2))
    _feed(server0, msgpack.packb(obj, use_bin_type=True), messages)


@pytest.mark.parametrize("malicious", [False, True], ids=["honest", "malicious"])
def test_fuzz_targets_accept_their_own_messages(malicious: bool) -> None:
    """The fuzzed servers are live: each genuine captured message is accepted at its stage."""
    targets = _fuzz_targets(malicious)
    assert list(targets) == stages_of(make_params(malicious=malicious))
    for stage, (server0, messages) in targets.items():
        assert server0.stage is stage
        for raw in messages:
            assert _feed(server0, raw, messages)


# -- 9. what the server sees ---------------------------------------------------------------------------

# Upper 1e-5 quantile of the chi-square distribution with 15 degrees of freedom (16 bins), 50.49
# (scipy.stats.chi2.ppf(1 - 1e-5, 15) = 50.493; the 1e-4 quantile is 44.26). Fixed here so the test
# does not need scipy; four statistics in this file use it, so a false alarm has probability < 4e-5.
CHI2_CRIT_15_DOF = 50.49


def _masked_views(value: int, n: int = 5, d: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """Every masked input the server received (concatenated) for inputs all equal to ``value``."""
    params = make_params(n=n, t=3, d=d)
    inputs = {u: np.full(d, value, dtype=np.uint32) for u in params.client_ids}
    views: list[np.ndarray] = []

    def tamper(direction: str, u: int, stage: Stage, data: bytes) -> bytes:
        if direction == "to_server" and stage is Stage.MASKED_INPUT:
            views.append(np.frombuffer(decode(data).vector, dtype="<u4"))
        return data

    report = run_session(params, inputs, tamper=tamper)
    assert len(views) == n
    assert_exact(params, report.result, inputs, params.client_ids)
    return np.concatenate(views), report.result


def _nibbles(words: np.ndarray, shift: int) -> np.ndarray:
    return np.bincount((words >> np.uint32(shift)) & np.uint32(15), minlength=16).astype(np.float64)


def _chi2_uniform(counts: np.ndarray) -> float:
    expected = counts.sum() / counts.size
    return float(((counts - expected) ** 2 / expected).sum())


def _chi2_two_sample(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson's statistic for homogeneity of two histograms (2 x 16 table: 15 dof); empty bins skipped."""
    keep = (a + b) > 0
    a, b = a[keep], b[keep]
    total = a + b
    ea, eb = total * a.sum() / total.sum(), total * b.sum() / total.sum()
    return float(((a - ea) ** 2 / ea).sum() + ((b - eb) ** 2 / eb).sum())


@pytest.fixture(scope="module")
def views() -> dict[int, np.ndarray]:
    return {value: _masked_views(value)[0] for value in (0, 0xFFFFFFFF)}


@pytest.mark.parametrize("shift", [28, 0], ids=["top-nibble", "bottom-nibble"])
def test_masked_inputs_of_zero_inputs_are_uniform(views: dict[int, np.ndarray], shift: int) -> None:
    words = views[0]
    assert words.size == 5 * 4096
    unmasked = _chi2_uniform(_nibbles(np.zeros_like(words), shift))
    assert unmasked > 1e4  # the statistic does detect an unmasked view
    assert _chi2_uniform(_nibbles(words, shift)) < CHI2_CRIT_15_DOF


@pytest.mark.parametrize("shift", [28, 0], ids=["top-nibble", "bottom-nibble"])
def test_views_of_zero_and_all_ones_inputs_are_indistinguishable(views: dict[int, np.ndarray],
                                                                  shift: int) -> None:
    zeros, ones = views[0], views[0xFFFFFFFF]
    unmasked = _chi2_two_sample(_nibbles(np.zeros_like(zeros), shift),
                                _nibbles(np.full_like(ones, 0xFFFFFFFF), shift))
    assert unmasked > 1e4  # the statistic does tell unmasked views apart
    assert _chi2_two_sample(_nibbles(zeros, shift), _nibbles(ones, shift)) < CHI2_CRIT_15_DOF


def test_results_of_the_uniformity_sessions_are_exact() -> None:
    _, result = _masked_views(0xFFFFFFFF, n=5, d=64)
    np.testing.assert_array_equal(result, np.full(64, (5 * 0xFFFFFFFF) % 2**32, dtype=np.uint32))


def test_client_dropped_after_masked_input_is_a_survivor() -> None:
    params = make_params(n=6, t=3, d=16)
    inputs = make_inputs(params, 21)
    u = params.client_ids[2]
    report = run_session(params, inputs, drop_before={u: Stage.UNMASKING})
    assert report.survivors == params.client_ids and report.dropped == ()
    assert_exact(params, report.result, inputs, params.client_ids)


def test_client_dropped_after_share_keys_is_never_in_the_sum() -> None:
    params = make_params(n=6, t=3, d=16)
    inputs = make_inputs(params, 22)
    u = params.client_ids[1]
    assert inputs[u].any()
    responses: list[UnmaskResponse] = []

    def tamper(direction: str, w: int, stage: Stage, data: bytes) -> bytes:
        if direction == "to_server" and stage is Stage.UNMASKING:
            responses.append(decode(data))
        return data

    report = run_session(params, inputs, drop_before={u: Stage.MASKED_INPUT}, tamper=tamper)
    assert report.dropped == (u,) and report.survivors == others(params, u)
    assert_exact(params, report.result, inputs, report.survivors)
    with_u = expected_sum(params, inputs, params.client_ids)
    assert not np.array_equal(report.result, with_u)
    # what the server was given to unmask: b-shares of survivors only, s-shares of the dropped only
    assert len(responses) == len(report.survivors)
    for r in responses:
        b_peers, s_peers = {p for p, _ in r.self_mask_shares}, {p for p, _ in r.mask_key_shares}
        assert b_peers == set(report.survivors) and s_peers == {u}


def test_late_masked_input_of_a_dropped_client_is_refused() -> None:
    params = make_params(n=5, t=3, d=8)
    inputs = make_inputs(params, 23)
    h = drive(params, inputs, Stage.MASKED_INPUT)
    replies = h.deliver()
    u = params.client_ids[0]
    late = replies.pop(u)
    h.submit(replies)
    h.outgoing = h.server.advance()  # the deadline passed without u
    before = snapshot(h.server)
    with pytest.raises(ProtocolError, match="wrong round"):
        h.server.receive(late)
    assert snapshot(h.server) == before
    result = h.finish(skip={u})
    assert h.server.dropped == (u,)
    assert_exact(params, result, inputs, others(params, u))


# -- 10. session binding ----------------------------------------------------------------------------


def test_other_model_version_gives_another_session_id() -> None:
    params = make_params(n=3, t=2, d=8)
    other = dataclasses.replace(params, model_version=b"model-v2")
    inputs = make_inputs(params, 24)
    a, b, c = params.client_ids
    clients = {a: Client(a, inputs[a]), b: Client(b, inputs[b]), c: Client(c, inputs[c])}
    ads = {u: cl.handle(wire(Setup(other if u == b else params))) for u, cl in clients.items()}
    entries = tuple(KeyEntry(u, m.enc_key, m.mask_key, m.signature, m.commitment, params.client_ids.index(u))
                    for u, m in sorted(ads.items()))
    for cl in clients.values():
        cl.handle(wire(KeyDirectory(entries)))
    assert clients[a].session == clients[c].session == session_id(params)
    assert clients[b].session == session_id(other) != clients[a].session


class _SplitSetupServer(Server):
    """An otherwise honest server that sends the victim a Setup for another model version."""

    def __init__(self, params: SessionParams, victim: int) -> None:
        super().__init__(params)
        self.victim = victim
        self.victim_params = dataclasses.replace(params, model_version=b"model-v2")

    def start(self) -> Outgoing:
        return [(u, Setup(self.victim_params) if u == self.victim else m) for u, m in super().start()]


def test_victim_of_a_split_setup_is_refused_and_the_rest_sum_exactly() -> None:
    params = make_params(n=6, t=3, d=16)
    inputs = make_inputs(params, 25)
    victim = params.client_ids[2]
    report = run_session(params, inputs, server=_SplitSetupServer(params, victim))
    assert report.rejected == [(victim, f"server: ShareKeys from client {victim} is for another session")]
    assert report.client_aborts == {}
    assert victim not in report.survivors + report.dropped
    assert report.survivors == others(params, victim)
    assert_exact(params, report.result, inputs, report.survivors)


class _TranslatingServer(_SplitSetupServer):
    """A server that tries to combine the victim anyway: it rewrites session ids in both directions.

    ``filter_victim``: also withhold the victim's shares from everyone else (so the honest clients do
    not trip over its ciphertexts), keeping it in U2 as if it had shared keys.
    """

    def __init__(self, params: SessionParams, victim: int, filter_victim: bool) -> None:
        super().__init__(params, victim)
        self.filter_victim = filter_victim
        self.victim_session = b""

    def receive(self, message: Message, *, sender: int | None = None) -> None:
        if getattr(message, "sender", None) == self.victim and hasattr(message, "session_id"):
            message = dataclasses.replace(message, session_id=self.session)
        super().receive(message, sender=sender)

    def advance(self) -> Outgoing:
        out = super().advance()
        if self.phase is ServerPhase.COLLECT_SHARES:
            self.victim_session = session_id(self.victim_params)
        changed = []
        for u, m in out:
            if isinstance(m, ForwardedShares) and self.filter_victim and u != self.victim:
                m = dataclasses.replace(m, shares=tuple(p for p in m.shares if p[0] != self.victim))
            if u == self.victim and hasattr(m, "session_id"):
                m = dataclasses.replace(m, session_id=self.victim_session)
            changed.append((u, m))
        return changed


def test_server_translating_session_ids_cannot_combine_the_victim() -> None:
    params = make_params(n=6, t=3, d=16)
    inputs = make_inputs(params, 26)
    victim = params.client_ids[3]
    h = Harness(params, inputs, _TranslatingServer(params, victim, filter_victim=False), tolerant=True)
    h.step()
    h.step()
    assert victim in h.server.shares  # the translated ShareKeys was accepted
    # nobody can open a ciphertext bound to the other session id: the honest clients refuse the
    # victim's shares, the victim refuses everyone's (each reports it; nobody aborts)
    h.step()
    assert h.aborts == {}
    honest = others(params, victim)
    assert h.server.refused == {victim: honest} | {u: (victim,) for u in honest}
    # nobody holds a share of the victim's secrets: the share check takes it out before anyone masks
    # (its masks were derived under another session id and would not cancel anyway), and the honest
    # clients' sum comes out exactly
    assert h.server.excluded == {victim}
    result = h.finish()
    assert victim not in h.server.survivors + h.server.dropped
    assert_exact(params, result, inputs, honest)


def test_server_hiding_the_victims_shares_still_cannot_combine_it() -> None:
    params = make_params(n=6, t=3, d=16)
    inputs = make_inputs(params, 27)
    victim = params.client_ids[3]
    h = Harness(params, inputs, _TranslatingServer(params, victim, filter_victim=True), tolerant=True)
    h.step()
    h.step()
    h.step()  # the victim cannot open the honest shares (bound to the real session id): it refuses them
    assert h.aborts == {} and h.server.refused == {victim: others(params, victim)}
    assert h.server.excluded == frozenset()  # its holders reported nothing: they never saw its shares
    h.step()
    assert h.server.survivors == params.client_ids
    # the honest clients never received the victim's shares: asked for them, they refuse; the victim
    # alone answers (with its own share), too few to unmask anything
    replies = h.deliver()
    assert list(replies) == [victim]
    assert all("never shared keys with me" in h.aborts[u] for u in others(params, victim))
    h.submit(replies)
    with pytest.raises(AbortError, match="only 1 clients answered the unmask request"):
        h.server.advance()
    assert h.server.result is None


# -- the client's round-2 threshold check (an off-by-one here was found and fixed) ------------------


def test_client_aborts_when_fewer_than_t_holders_have_its_shares() -> None:
    params = make_params(n=6, t=5, d=8)
    h = drive(params, make_inputs(params, 28), Stage.SHARE_CHECK)
    u, forwarded = h.outgoing[0]
    # t-2 neighbours shared keys with u; with u's own share, t-1 < t holders: b_u can never be recovered
    short = ForwardedShares(u, forwarded.session_id, forwarded.shares[: params.threshold - 2])
    with pytest.raises(ProtocolError, match="fewer than the threshold"):
        h.clients[u].handle(wire(short))


def test_client_aborts_when_far_fewer_than_t_holders_have_its_shares() -> None:
    params = make_params(n=6, t=5, d=8)
    h = drive(params, make_inputs(params, 29), Stage.SHARE_CHECK)
    u, forwarded = h.outgoing[0]
    short = ForwardedShares(u, forwarded.session_id, forwarded.shares[: params.threshold - 3])
    with pytest.raises(ProtocolError, match="fewer than the threshold 5"):
        h.clients[u].handle(wire(short))
    assert h.clients[u].phase is ClientPhase.ABORTED


def test_client_refuses_a_mask_request_that_leaves_it_fewer_than_t_holders() -> None:
    """A server cannot shrink a client's masking peers below t by excluding them: the client counts."""
    params = make_params(n=6, t=5, d=8)
    h = drive(params, make_inputs(params, 30), Stage.MASKED_INPUT)
    u, request = h.outgoing[0]
    assert isinstance(request, MaskRequest) and request.excluded == ()
    with pytest.raises(ProtocolError, match="fewer than the threshold 5"):
        h.clients[u].handle(wire(dataclasses.replace(request, excluded=others(params, u)[:2])))
    u2 = h.outgoing[1][0]
    with pytest.raises(ProtocolError, match="never shared keys"):  # only its own neighbours can go
        h.clients[u2].handle(wire(dataclasses.replace(request, excluded=(2**32 - 2,))))


# -- 11. malicious-server mode: signed survivor sets ------------------------------------------------------


@pytest.fixture
def consistency_check() -> Harness:
    """Malicious mode, n = 5, t = 3 (2t > n): the server is about to ask the survivors to sign."""
    params = make_params(n=5, t=3, d=8, malicious=True)
    return drive(params, make_inputs(params, 30), Stage.CONSISTENCY_CHECK)


def _sign(h: Harness, signers, survivors: tuple[int, ...], dropped: tuple[int, ...]) -> dict[int, bytes]:
    """What each of ``signers`` answers to a ConsistencyRequest for these sets (through the codec)."""
    replies = {u: wire(h.clients[u].handle(wire(consistency_request(h.server, u, survivors, dropped))))
               for u in signers}
    assert all(isinstance(r, ConsistencySignature) for r in replies.values())
    assert all(h.clients[u].phase is ClientPhase.SIGNED for u in signers)
    return {u: r.signature for u, r in replies.items()}


def _revealed(responses) -> tuple[set[int], set[int]]:
    """The peers whose self-mask share, and whose mask-key share, left some client."""
    return ({p for r in responses for p, _ in r.self_mask_shares},
            {p for r in responses for p, _ in r.mask_key_shares})


def test_malicious_client_refuses_to_sign_a_client_as_both(consistency_check: Harness) -> None:
    h = consistency_check
    ids = h.params.client_ids
    c, v = ids[0], ids[3]
    (request,) = {m for _, m in h.outgoing}
    assert isinstance(request, ConsistencyRequest) and request.survivors == ids and request.dropped == ()
    produced = []
    with pytest.raises(ProtocolError, match="both"):
        produced.append(h.clients[c].handle(wire(consistency_request(h.server, c, ids, (v,)))))
    assert produced == [] and h.clients[c].phase is ClientPhase.ABORTED
    # c is a survivor that never signed: the others sign, unmask it, and the sum is exact
    result = h.finish(skip={c})
    assert h.server.survivors == ids and c not in h.server.consistency
    assert_exact(h.params, result, h.inputs, ids)


@pytest.mark.parametrize("order", ["honest-first", "lie-first"])
def test_malicious_client_answers_only_for_the_sets_it_signed(consistency_check: Harness, order: str) -> None:
    """Honest mode answers the first request and refuses the second; here a request for other sets than
    the signed ones is refused even first, with the genuine signatures attached."""
    h = consistency_check
    ids = h.params.client_ids
    c, v = ids[0], ids[3]
    h.step()  # everyone signs the true sets
    honest = h.request()
    assert len(honest.signatures) == len(ids)
    lie = UnmaskRequest(honest.session_id, others(h.params, v), (v,), honest.signatures)
    produced: list[UnmaskResponse] = []
    if order == "honest-first":
        produced.append(h.clients[c].handle(wire(honest)))
        assert h.clients[c].phase is ClientPhase.DONE
    with pytest.raises(ProtocolError, match="other survivor/dropped sets than the ones I signed"):
        produced.append(h.clients[c].handle(wire(lie)))
    assert h.clients[c].phase is ClientPhase.ABORTED
    b_peers, s_peers = _revealed(produced)
    assert v not in s_peers and (v in b_peers) == (order == "honest-first")
    result = h.finish(skip={c})
    assert_exact(h.params, result, h.inputs, ids)


def test_split_view_cannot_collect_t_signatures_for_both_views(consistency_check: Harness) -> None:
    """The attack the consistency round exists for: v is a survivor to some clients and dropped to others.

    With 2t > n, at most one of the two views gathers t signatures; the clients shown the other refuse,
    so no share of v's mask key ever leaves a client.
    """
    h = consistency_check
    ids = h.params.client_ids
    v = ids[4]
    view_a, view_b = (ids, ()), (others(h.params, v), (v,))
    group_a, group_b = (*ids[:2], v), ids[2:4]  # 3 = t sign view A, 2 < t sign view B
    signatures = {**_sign(h, group_a, *view_a), **_sign(h, group_b, *view_b)}
    every = tuple(sorted(signatures.items()))
    responses = []
    for u in group_b:  # view B with every signature the server holds: only 2 verify over view B
        with pytest.raises(ProtocolError, match="only 2 valid consistency signatures"):
            h.clients[u].handle(wire(UnmaskRequest(h.server.session, *view_b, every)))
        assert h.clients[u].phase is ClientPhase.ABORTED
    for u in group_a:  # view A has its t signatures: these clients answer, with b-shares only
        responses.append(h.clients[u].handle(wire(UnmaskRequest(h.server.session, *view_a, every))))
    b_peers, s_peers = _revealed(responses)
    assert v in b_peers and s_peers == set()


@pytest.mark.parametrize("forgery", ["t-1 genuine", "one bit flipped", "relabelled signer", "other session",
                                     "other sets", "dropped signer", "stranger signer", "repeated signer"])
def test_unmask_request_needs_t_valid_signatures(forgery: str) -> None:
    """t - 1 genuine signatures plus one that must not count: the client reveals nothing."""
    params = make_params(n=5, t=3, d=8, malicious=True)
    h = drive(params, make_inputs(params, 34), Stage.MASKED_INPUT)
    ids, t = params.client_ids, params.threshold
    c, a, b, d = ids[0], ids[2], ids[3], ids[4]
    h.step(skip={d})  # d shared keys, then vanished: it is dropped (and colludes with the server below)
    h.step()
    request = h.request()
    assert request.dropped == (d,) and [u for u, _ in request.signatures] == list(others(params, d))
    genuine = dict(request.signatures)
    keep = {u: genuine[u] for u in ids[: t - 1]}
    sets = (request.survivors, request.dropped)
    root = status_root(h.server, *sets)  # what the survivors signed
    stranger = SigningKey.generate()  # id MAX_ID is in nobody's registry
    bad: dict[int, bytes] = {
        "t-1 genuine": {},
        "one bit flipped": {a: flip_bit(genuine[a], 7)},
        "relabelled signer": {a: genuine[b]},
        "other session": {a: h.identities[a].sign(consistency_message(bytes(32), root))},
        "other sets": {a: h.identities[a].sign(consistency_message(request.session_id,
                                                                   status_root(h.server, ids, ())))},
        # a valid signature over exactly these sets, by a client they do not list as a survivor
        "dropped signer": {d: h.identities[d].sign(consistency_message(request.session_id, root))},
        "stranger signer": {2**32 - 2: stranger.sign(consistency_message(request.session_id, root))},
        "repeated signer": {},
    }[forgery]
    pairs = tuple(sorted({**keep, **bad}.items()))
    forged = UnmaskRequest(request.session_id, *sets, pairs)
    if forgery == "repeated signer":  # the codec refuses a repeated signer; the client counts it once
        forged = dataclasses.replace(forged, signatures=(*pairs, pairs[-1]))
        with pytest.raises(WireError, match="duplicate"):
            encode(forged)
    else:
        forged = wire(forged)
    produced = []
    with pytest.raises(ProtocolError, match=f"only {t - 1} valid consistency signatures"):
        produced.append(h.clients[c].handle(forged))
    assert produced == [] and h.clients[c].phase is ClientPhase.ABORTED
    # control: exactly t genuine signatures are enough
    enough = UnmaskRequest(request.session_id, *sets, tuple(request.signatures[:t]))
    assert isinstance(h.clients[ids[1]].handle(wire(enough)), UnmaskResponse)


def test_identity_holding_client_refuses_a_downgraded_session() -> None:
    """A server cannot switch the consistency round off: a client with an identity refuses honest mode,
    and a client without one refuses malicious mode (it could not verify anything)."""
    honest, malicious = make_params(n=5, t=3, d=8), make_params(n=5, t=3, d=8, malicious=True)
    inputs = make_inputs(honest, 31)
    u = honest.client_ids[0]
    key = SigningKey.generate()
    client = Client(u, inputs[u], identity=key, registry={u: key.public})
    with pytest.raises(ProtocolError, match="requires malicious-server mode"):
        client.handle(wire(Setup(honest)))
    assert client.phase is ClientPhase.ABORTED
    plain = Client(u, inputs[u])
    with pytest.raises(ProtocolError, match="needs an identity key"):
        plain.handle(wire(Setup(malicious)))
    assert plain.phase is ClientPhase.ABORTED


def test_malicious_mode_both_shares_attack_end_to_end() -> None:
    """End to end: a server that lists a survivor as dropped in the ConsistencyRequest of one client."""
    params = make_params(n=5, t=3, d=8, malicious=True)
    inputs = make_inputs(params, 32)
    ids = params.client_ids
    c, v = ids[0], ids[3]

    def tamper(direction: str, u: int, stage: Stage, data: bytes) -> bytes:
        if (direction, u, stage) == ("to_client", c, Stage.CONSISTENCY_CHECK):
            msg = decode(data)
            return encode(dataclasses.replace(msg, dropped=(v,)))
        return data

    report = run_session(params, inputs, tamper=tamper)
    assert list(report.client_aborts) == [c] and "both" in report.client_aborts[c]
    assert report.survivors == ids and report.dropped == ()
    assert_exact(params, report.result, inputs, ids)


# -- library issues found by these tests (fixed; kept as regressions) ----------------------------------


def test_a_signed_advertisement_in_honest_mode_cannot_stop_the_round() -> None:
    params = make_params(n=5, t=3, d=8)
    inputs = make_inputs(params, 33)
    victim = params.client_ids[1]
    report = run_session(params, inputs, tamper=rewrite(
        "to_server", victim, Stage.ADVERTISE_KEYS, lambda m: dataclasses.replace(m, signature=bytes(64))))
    # the honest-mode server refuses the signed advertisement; everyone else sums exactly
    assert any("without malicious-server mode" in reason for u, reason in report.rejected if u == victim)
    assert set(others(params, victim)) <= set(report.survivors)
    assert_exact(params, report.result, inputs, report.survivors)


# -- a wrong share of a self-mask seed, with exactly t responses ---------------------------------------


@pytest.mark.parametrize("degree", [None, 4], ids=["full", "secaggplus"])
def test_one_altered_self_mask_share_among_exactly_t_aborts_instead_of_a_wrong_sum(degree) -> None:
    """With exactly t unmask responses nothing can cross-check the shares: before the commitments, one
    altered share of a survivor's b_u gave a wrong sum (every word off) and no error. The rebuilt b_u
    is now checked against the commitment in its owner's advertisement."""
    params = make_params(n=7, t=4, d=16, degree=degree)
    inputs = make_inputs(params, 30)
    target = params.client_ids[1]

    def run(lie: bool):
        server = Server(params)

        def alter(direction: str, u: int, stage: Stage, data: bytes) -> bytes:
            if direction != "to_server" or stage is not Stage.UNMASKING:
                return data
            # the target's shares come back from exactly t holders: one more is silenced, one lies
            holders = sorted(server.neighbours(target))
            silenced, liar = holders[-(len(holders) + 1 - params.threshold):], holders[0]
            if u in silenced:
                return b""  # refused by the server: as if it never answered
            if lie and u == liar:
                msg = decode(data)
                shares = tuple((v, flip_bit(share, 31) if v == target else share)
                               for v, share in msg.self_mask_shares)
                return encode(dataclasses.replace(msg, self_mask_shares=shares))
            return data
        return run_session(params, inputs, tamper=alter, server=server)

    honest = run(lie=False)  # the same round without the lie: exact
    assert_exact(params, honest.result, inputs, honest.survivors)
    with pytest.raises(AbortError, match=f"self-mask seed of client {target} does not match its commitment"):
        run(lie=True)


@pytest.mark.parametrize("degree", [None, 4], ids=["full", "secaggplus"])
@pytest.mark.parametrize("kind", ["self-mask", "mask-key"])
def test_one_wrong_share_among_more_than_t_is_identified_and_the_sum_stays_exact(degree, kind) -> None:
    """With more than t unmask responses, a wrong share that fails the owner's commitment (or public
    key) is found by leaving each share out in turn: its sender is reported in ``wrong_shares`` and the
    round completes with the verified secret, the exact sum."""
    params = make_params(n=7, t=3, d=16, degree=degree)
    inputs = make_inputs(params, 31)
    target = params.client_ids[1]
    server = Server(params)
    dropped = {target: Stage.MASKED_INPUT} if kind == "mask-key" else {}
    field = "self_mask_shares" if kind == "self-mask" else "mask_key_shares"

    def alter(direction: str, u: int, stage: Stage, data: bytes) -> bytes:
        if direction != "to_server" or stage is not Stage.UNMASKING:
            return data
        if u != min(server.neighbours(target)):  # the first holder: its share is always used
            return data
        msg = decode(data)
        shares = tuple((v, flip_bit(share, 31) if v == target else share) for v, share in getattr(msg, field))
        return encode(dataclasses.replace(msg, **{field: shares}))

    report = run_session(params, inputs, tamper=alter, server=server, drop_before=dropped)
    assert_exact(params, report.result, inputs, report.survivors)
    assert server.wrong_shares == report.wrong_shares == {min(server.neighbours(target)): [target]}


def test_an_advertisement_from_an_earlier_session_with_the_same_parameters_does_not_verify() -> None:
    """Two sessions with equal round, model and clients differ in the server's fresh nonce: a signed
    advertisement of the first is refused in the second (by an honest server and by every client)."""
    from secagg.protocol.session import advertisement_message

    params = dataclasses.replace(make_params(n=5, t=4, malicious=True), nonce=b"")
    keys = {u: SigningKey.generate() for u in params.client_ids}
    registry = {u: k.public for u, k in keys.items()}
    first, second = Server(params, registry), Server(params, registry)
    assert len(first.params.nonce) == 32 and first.params.nonce != second.params.nonce
    victim = params.client_ids[0]
    (_, setup), *_ = first.start()
    old = Client(victim, np.zeros(8, np.uint32), identity=keys[victim], registry=registry).handle(wire(setup))
    second.start()
    with pytest.raises(ProtocolError, match="signature"):
        second.receive(wire(old), sender=victim)
    new_message = advertisement_message(second.params, victim, old.enc_key, old.mask_key, old.commitment)
    with pytest.raises(ProtocolError):
        verify_signature(registry[victim], old.signature, new_message, signer=victim)


def test_a_client_refuses_a_session_without_a_nonce() -> None:
    params = dataclasses.replace(make_params(), nonce=b"")
    client = Client(params.client_ids[0], np.zeros(8, np.uint32))
    with pytest.raises(ProtocolError, match="no fresh server nonce"):
        client.handle(wire(Setup(params)))


@settings(max_examples=25, deadline=None)
@given(st.integers(5, 9), st.booleans(), st.data())
def test_any_set_of_damaged_share_ciphertexts_gives_the_exact_sum_of_the_clients_kept_in(
        n: int, sparse: bool, data: st.DataObject) -> None:
    """Whatever set of (sender, recipient) share ciphertexts is damaged in transit, nobody aborts over it:
    each recipient reports exactly the senders it could not open; the share check takes out exactly
    senders left with fewer than t holders who could open their shares, and the round gives the exact
    sum of the clients kept in (or aborts only because fewer than t were kept)."""
    degree = 4 if sparse and n > 5 else n - 1
    t = data.draw(st.integers(2, degree), label="t")
    params = make_params(n=n, t=t, d=8, degree=degree)
    inputs = make_inputs(params, data.draw(st.integers(0, 2**16), label="seed"))
    ids = params.client_ids
    damaged = data.draw(st.sets(st.tuples(st.sampled_from(ids), st.sampled_from(ids)).filter(
        lambda p: p[0] != p[1]), max_size=2 * n), label="damaged (sender, recipient)")

    def tamper(direction: str, u: int, stage: Stage, payload: bytes) -> bytes:
        if direction == "to_client" and stage is Stage.SHARE_CHECK:
            msg = decode(payload)
            shares = tuple((s, flip_bit(ct, 40) if (s, u) in damaged else ct) for s, ct in msg.shares)
            return encode(dataclasses.replace(msg, shares=shares))
        return payload

    try:
        report = run_session(params, inputs, tamper=tamper)
    except AbortError as exc:
        assert "checked their shares and kept enough holders" in str(exc), str(exc)
        return
    assert report.client_aborts == {} and report.rejected == []
    for recipient, senders in report.refused.items():
        assert all((s, recipient) in damaged for s in senders)
    ring = _ring_of(params)
    if degree == n - 1:  # every pair exchanges shares: every damaged one is reported, nothing else
        want: dict[int, list[int]] = {}
        for s, r in sorted(damaged):
            want.setdefault(r, []).append(s)
        assert report.refused == {r: tuple(v) for r, v in want.items()}
    kept = set(ids) - set(report.excluded)

    def openers(v: int) -> int:  # the kept clients that could open v's shares
        return sum(1 for w in ring[v] if w in kept and (v, w) not in damaged)

    assert all(openers(v) + 1 >= t for v in kept), "a client kept in has t holders (its own included)"
    assert all(openers(v) + 1 < t for v in report.excluded), "only a client short of holders is taken out"
    assert report.survivors == tuple(sorted(kept)) and report.dropped == ()
    assert_exact(params, report.result, inputs, report.survivors)


# -- the ring cannot be ground ------------------------------------------------------------------------


def _after_setup(params: SessionParams) -> tuple[dict[int, Client], dict[int, AdvertiseKeys]]:
    clients = {u: Client(u, np.zeros(params.vector_length, np.uint32)) for u in params.client_ids}
    setups = dict(Server(params).start())
    return clients, {u: wire(c.handle(wire(setups[u]))) for u, c in clients.items()}


def _ring_of(params: SessionParams) -> dict[int, frozenset[int]]:
    """Each invited client's ring neighbours (ids), from the written construction."""
    ids = params.client_ids
    return {u: frozenset(ids[j] for j in ring_neighbours(params, i)) for i, u in enumerate(ids)}


def _directory_seen_by(client: Client, ads: dict[int, AdvertiseKeys], kept) -> Client | ProtocolError:
    """A copy of ``client`` (after Setup) given the directory of the advertisements in ``kept``."""
    ids = client.params.client_ids if client.params.client_ids else None
    index = {u: i for i, u in enumerate(sorted(ads))} if ids is None else {u: i for i, u in enumerate(ids)}
    entries = tuple(KeyEntry(u, a.enc_key, a.mask_key, a.signature, a.commitment, index[u])
                    for u, a in sorted(ads.items()) if u in kept)
    copy_ = copy.deepcopy(client)
    try:
        copy_.handle(wire(KeyDirectory(entries)))
    except ProtocolError as exc:
        return exc
    return copy_


@settings(max_examples=30, deadline=None)
@given(st.integers(8, 20), st.data())
def test_no_choice_of_advertisements_moves_an_honest_clients_neighbourhood(n: int,
                                                                            data: st.DataObject) -> None:
    """The ring is fixed by Setup (round, degree, the members' root) before any key: whichever
    advertisements the server lets into a directory, an honest client's neighbours are its Setup-time
    ring neighbours among them (a dropout, real or claimed, leaves a hole, never a new neighbour), and a
    directory that seats anyone else next to it is refused."""
    k = data.draw(st.sampled_from([2, 4, 6]), label="degree")
    params = make_params(n=n, t=2, d=4, degree=k)
    ids = params.client_ids
    ring = _ring_of(params)
    clients, ads = _after_setup(params)
    victim = data.draw(st.sampled_from(ids), label="victim")
    for _ in range(5):  # five directories a grinding server might try
        kept = data.draw(st.sets(st.sampled_from(ids), min_size=2), label="advertisements let in") | {victim}
        seen = _directory_seen_by(clients[victim], ads, kept)
        if kept - ring[victim] - {victim}:  # someone who is not a ring neighbour: refused outright
            assert isinstance(seen, ProtocolError) and "not this client's ring neighbours" in str(seen)
            seen = _directory_seen_by(clients[victim], ads, (kept & ring[victim]) | {victim})
        if isinstance(seen, ProtocolError):  # too few live neighbours to hold its shares: it sits out
            assert "fewer holders than the threshold" in str(seen)
            assert len(ring[victim] & kept) + 1 < params.threshold
            continue
        assert seen._neighbours == ring[victim] & kept


def test_the_papers_grinding_attack_finds_no_directory_that_surrounds_the_victim() -> None:
    """n = 12, k = 4, t = 3, 3 colluders placed anywhere but next to the victim on the Setup ring:
    before, tens of directory subsets put them around the victim; now none of 300 directories a
    grinding server tries (random subsets of the advertisements that keep the victim) gives the
    victim a single colluding neighbour."""
    params = make_params(n=12, t=3, d=4, degree=4)
    ids = params.client_ids
    ring = _ring_of(params)
    victim = ids[0]
    colluders = {u for u in ids if u != victim and u not in ring[victim]}
    clients, ads = _after_setup(params)
    rng = np.random.default_rng(12)  # not secret: which directories the test tries
    tried = 0
    for _ in range(300):
        kept = {victim, *(u for u in ids if rng.random() < 0.7)}
        if kept - ring[victim] - {victim}:  # a colluder (or anyone else) seated next to it: refused
            seen = _directory_seen_by(clients[victim], ads, kept)
            assert isinstance(seen, ProtocolError) and "not this client's ring neighbours" in str(seen)
        seen = _directory_seen_by(clients[victim], ads, (kept & ring[victim]) | {victim})
        if isinstance(seen, Client):
            tried += 1
            assert not seen._neighbours & colluders
    assert tried > 100  # most directories leave the victim enough holders to go on
