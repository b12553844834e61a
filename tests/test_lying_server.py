"""A lying server against malicious-server mode: each lie is detected and no input is recoverable.

``attempt_recovery`` is the attacker: it pools everything the server received with every share the
colluding clients hold, and reconstructs a victim's input if it has t shares of both the victim's
self-mask seed and its mask key. The positive control proves it works: in honest-but-curious mode
the split-request lie recovers the victim's input exactly. In malicious mode the same lie, and every
other lie below, is detected and recovery fails.
"""

from __future__ import annotations

import contextlib
import dataclasses

import numpy as np
import pytest
from views import consistency_request

from secagg.crypto.keys import DHKeyPair, SigningKey
from secagg.crypto.prg import accumulate_masks
from secagg.crypto.shamir import Share, reconstruct
from secagg.errors import AbortError, ConfigError, ProtocolError
from secagg.protocol.client import Client, ClientPhase
from secagg.protocol.messages import (
    ConsistencyRequest,
    ConsistencySignature,
    KeyDirectory,
    SessionParams,
    Setup,
    UnmaskRequest,
    UnmaskResponse,
)
from secagg.protocol.server import Server
from secagg.protocol.session import mask_seed, mask_sign, share_point
from secagg.protocol.wire import decode, encode

NONCE = bytes(range(32))  # a fixed session nonce for hand-built setups (a Server draws a fresh one)

D = 16
VICTIM = 0


def wire(message):
    return decode(encode(message))


class Session:
    """A server and clients driven by hand, so the test can play a lying server."""

    def __init__(self, n: int, t: int, *, malicious: bool, corrupt: int = 0, round_: int = 1,
                 identities: dict[int, SigningKey] | None = None, model: bytes = b"model") -> None:
        self.params = SessionParams(round_, model, tuple(range(n)), t, n - 1, D, malicious=malicious,
                                    corrupt=corrupt, nonce=NONCE)
        rng = np.random.default_rng(n * 7 + t)
        self.inputs = {u: rng.integers(0, 2**32, D, dtype=np.uint64).astype(np.uint32) for u in range(n)}
        self.identities = identities or {u: SigningKey.generate() for u in range(n)}
        registry = {u: k.public for u, k in self.identities.items()} if malicious else None
        self.clients = {u: Client(u, self.inputs[u], identity=self.identities[u] if malicious else None,
                                  registry=registry) for u in range(n)}
        self.server = Server(self.params, registry)
        self.masked: dict[int, bytes] = {}

    def reply(self, u: int, message):
        """Client u's wire reply, or None if it refused (it is then aborted)."""
        try:
            return wire(self.clients[u].handle(wire(message)))
        except ProtocolError:
            return None

    def to_masked_input(self, setup_for: dict[int, Setup] | None = None, directory_edit=None) -> None:
        """Run up to (and including) MaskedInput; optional lies on Setup or the directory."""
        for u, setup in self.server.start():
            reply = self.reply(u, (setup_for or {}).get(u, setup))
            if reply is not None:
                with contextlib.suppress(ProtocolError):
                    self.server.receive(reply, sender=u)
        for u, directory in self.server.advance():
            if directory_edit is not None:
                directory = directory_edit(u, directory)
            reply = self.reply(u, directory)
            if reply is not None:
                self.server.receive(reply, sender=u)
        for u, forwarded in self.server.advance():
            reply = self.reply(u, forwarded)  # the share check
            if reply is not None:
                self.server.receive(reply, sender=u)
        for u, request in self.server.advance():
            reply = self.reply(u, request)
            if reply is not None:
                self.server.receive(reply, sender=u)
                self.masked[u] = reply.vector


def attempt_recovery(s: Session, colluders: set[int], responses: list[UnmaskResponse]) -> np.ndarray | None:
    """The attacker: the victim's input if the pooled shares give t of both its secrets, else None."""
    t = s.params.threshold
    b_shares: dict[int, bytes] = {}
    s_shares: dict[int, bytes] = {}
    for r in responses:
        for pool, pairs in ((b_shares, r.self_mask_shares), (s_shares, r.mask_key_shares)):
            for peer, data in pairs:
                if peer == VICTIM:
                    pool[r.sender] = data
    for c in colluders:  # colluders hand over whatever they hold of the victim's secrets
        held = s.clients[c]._held.get(VICTIM)
        if held is not None:
            b_shares.setdefault(c, held[0])
            s_shares.setdefault(c, held[1])
    if len(b_shares) < t or len(s_shares) < t or VICTIM not in s.masked:
        return None
    b = reconstruct([Share.from_bytes(share_point(h), d) for h, d in sorted(b_shares.items())][:t], t)
    key = DHKeyPair.from_private_bytes(
        reconstruct([Share.from_bytes(share_point(h), d) for h, d in sorted(s_shares.items())][:t], t))
    x = np.frombuffer(s.masked[VICTIM], dtype="<u4").copy()
    masks = [(b, -1)]
    for v in sorted(set(s.server.shares) - {VICTIM}):  # the victim masked with everyone in U2
        seed = mask_seed(key.agree(s.server.keys[v].mask_key), s.server.session, VICTIM, v)
        masks.append((seed, -mask_sign(VICTIM, v)))
    accumulate_masks(x, masks)
    return x


def split_request_attack(s: Session, group_b: set[int], group_s: set[int], colluders: set[int]) -> list:
    """Show the victim as a survivor to group_b and as dropped to group_s, then ask both to unmask."""
    everyone = tuple(sorted(s.masked))
    views = {"b": (everyone, ()), "s": (tuple(u for u in everyone if u != VICTIM), (VICTIM,))}
    groups = {"b": group_b, "s": group_s}
    responses = []
    for kind, (survivors, dropped) in views.items():
        members = groups[kind] | colluders
        signatures = ()
        if s.params.malicious:
            sigs = []
            for u in sorted(members):
                reply = s.reply(u, consistency_request(s.server, u, survivors, dropped))
                if reply is not None:
                    sigs.append((u, reply.signature))
            signatures = tuple(sigs)
        for u in sorted(groups[kind]):
            reply = s.reply(u, UnmaskRequest(s.server.session, survivors, dropped, signatures))
            if reply is not None:
                responses.append(reply)
    return responses


# -- the positive control: the harness recovers an input when the defence is off -------------------------

def test_control_split_request_recovers_the_victim_in_honest_mode():
    s = Session(6, 3, malicious=False)
    s.to_masked_input()
    responses = split_request_attack(s, group_b={1, 2}, group_s={3, 4}, colluders={5})
    recovered = attempt_recovery(s, {5}, responses)
    assert recovered is not None and np.array_equal(recovered, s.inputs[VICTIM]), \
        "without malicious mode the split lie exposes one client's input: the harness works"


# -- malicious mode: each lie is detected, and recovery fails -------------------------------------------

@pytest.mark.parametrize(("group_b", "group_s"), [({1, 2}, {3, 4}), ({1, 2, 3}, {4}), ({1}, {2, 3, 4})])
def test_lie_ask_for_both_shares_is_detected(group_b, group_s):
    # n=6, c=1 colluder: t must exceed (6 + 1) / 2, so t=4
    s = Session(6, 4, malicious=True, corrupt=1)
    s.to_masked_input()
    responses = split_request_attack(s, group_b, group_s, colluders={5})
    assert attempt_recovery(s, {5}, responses) is None
    refused = [u for u in group_b | group_s if s.clients[u].phase is ClientPhase.ABORTED]
    assert refused, "at least one view lacked t signatures and its clients refused"


def test_lie_inconsistent_survivor_sets_is_detected():
    s = Session(7, 5, malicious=True, corrupt=2)
    s.to_masked_input()
    sid, everyone = s.server.session, tuple(sorted(s.masked))
    # odd clients are told everyone survived; even clients that client 1 dropped
    shown = {u: (everyone, ()) if u % 2 else (tuple(v for v in everyone if v != 1), (1,)) for u in everyone}
    sigs = {u: s.reply(u, consistency_request(s.server, u, *shown[u])) for u in everyone}
    assert all(m is not None for m in sigs.values()), "each view is self-consistent, so everyone signs"
    # the server forwards every signature it got, with the odd clients' view
    request = UnmaskRequest(sid, everyone, (), tuple((u, m.signature) for u, m in sorted(sigs.items())))
    for u in everyone:
        assert s.reply(u, request) is None, f"client {u} must refuse"
        assert s.clients[u].phase is ClientPhase.ABORTED
    assert attempt_recovery(s, {5, 6}, []) is None


@pytest.mark.parametrize("how", ["strip-one", "strip-all"])
def test_lie_drop_signatures_is_detected(how):
    s = Session(5, 4, malicious=True, corrupt=1)

    def strip(u, directory: KeyDirectory) -> KeyDirectory:
        entries = tuple(e._replace(signature=b"") if how == "strip-all" or e.client_id == 3 else e
                        for e in directory.entries)
        return KeyDirectory(entries) if how == "strip-all" else directory.__class__(entries)

    # a directory mixing signed and unsigned entries cannot even be encoded: hand it over unencoded
    for u, setup in s.server.start():
        s.server.receive(wire(s.clients[u].handle(wire(setup))), sender=u)
    for u, directory in s.server.advance():
        with pytest.raises(ProtocolError, match="unsigned"):
            s.clients[u].handle(strip(u, directory))


@pytest.mark.parametrize("forgery", ["none", "too-few", "zeroed", "one-signer-repeated", "non-survivor"])
def test_lie_drop_or_forge_consistency_signatures_is_detected(forgery):
    s = Session(5, 4, malicious=True, corrupt=1)
    s.to_masked_input()
    sid, everyone = s.server.session, tuple(sorted(s.masked))
    sigs = [(u, s.reply(u, consistency_request(s.server, u, everyone, ())).signature) for u in everyone]
    forged = {
        "none": [],
        "too-few": sigs[:3],
        "zeroed": [(u, bytes(64)) for u, _ in sigs],
        "one-signer-repeated": [sigs[0]] * 4,
        # valid signatures from an outsider do not count: only survivors vouch for the sets
        "non-survivor": [*sigs[:3], (99, sigs[3][1])],
    }[forgery]
    with pytest.raises(ProtocolError, match="valid consistency signatures"):
        s.clients[1].handle(UnmaskRequest(sid, everyone, (), tuple(forged)))
    assert s.clients[1].phase is ClientPhase.ABORTED and not s.clients[1]._held


def test_lie_replay_from_earlier_session_is_detected():
    identities = {u: SigningKey.generate() for u in range(5)}
    old = Session(5, 4, malicious=True, corrupt=1, round_=1, identities=identities)
    old_adverts = {}
    for u, setup in old.server.start():
        old_adverts[u] = wire(old.clients[u].handle(wire(setup)))
    new = Session(5, 4, malicious=True, corrupt=1, round_=2, identities=identities)
    for u, setup in new.server.start():
        reply = wire(new.clients[u].handle(wire(setup)))
        if u == 3:
            reply = old_adverts[3]  # the server substitutes last round's signed advertisement
            with pytest.raises(ProtocolError, match="does not verify"):
                new.server.receive(reply, sender=u)  # an honest server already sees it
            new.server.keys[3] = reply  # a lying one keeps it anyway
            continue
        new.server.receive(reply, sender=u)
    for u, directory in new.server.advance():
        if u != 3:
            with pytest.raises(ProtocolError, match="signature of client 3 does not verify"):
                new.clients[u].handle(wire(directory))


def test_lie_substitute_client_key_is_detected():
    s = Session(5, 4, malicious=True, corrupt=1)
    rogue = DHKeyPair.generate().public

    def substitute(u, directory: KeyDirectory) -> KeyDirectory:
        return KeyDirectory(tuple(e._replace(mask_key=rogue) if e.client_id == VICTIM else e
                                  for e in directory.entries))

    with pytest.raises(AbortError, match="only 0 clients shared keys"):
        s.to_masked_input(directory_edit=substitute)
    for u in range(1, 5):
        assert s.clients[u].phase is ClientPhase.ABORTED, "every peer rejects the substituted key"
    assert not s.masked, "nobody masked with a server-chosen key"
    assert attempt_recovery(s, {4}, []) is None


def test_lie_forward_share_to_wrong_client_is_detected():
    s = Session(5, 4, malicious=True, corrupt=1)
    for u, setup in s.server.start():
        s.server.receive(wire(s.clients[u].handle(wire(setup))), sender=u)
    for u, directory in s.server.advance():
        s.server.receive(wire(s.clients[u].handle(wire(directory))), sender=u)
    forwarded = dict(s.server.advance())
    # client 2 is handed the ciphertext that client 0 addressed to client 1, labelled as its own
    to_1 = dict(forwarded[1].shares)[VICTIM]
    lie = dataclasses.replace(forwarded[2], shares=tuple((v, to_1 if v == VICTIM else c)
                                                         for v, c in forwarded[2].shares))
    reply = s.clients[2].handle(wire(lie))  # refused and reported, never opened as another's share
    assert reply.refused == (VICTIM,) and s.clients[2].refused == (VICTIM,)
    assert VICTIM not in s.clients[2]._held


def test_lie_model_inconsistency_fails_loudly():
    # Pasquini et al. 2022: the victim alone gets another model; its signed advertisement then fails
    s = Session(5, 4, malicious=True, corrupt=1)
    other = Setup(dataclasses.replace(s.params, model_version=b"poisoned-model"))
    s.to_masked_input(setup_for={VICTIM: other})
    assert VICTIM not in s.server.keys, "an honest server refuses the victim's advertisement"
    assert all(s.clients[u].phase is ClientPhase.MASKED for u in range(1, 5))
    assert VICTIM not in s.masked


def test_lie_model_inconsistency_via_lying_server_aborts_everyone():
    s = Session(5, 4, malicious=True, corrupt=1)
    other = Setup(dataclasses.replace(s.params, model_version=b"poisoned-model"))
    setups = s.server.start()
    for u, setup in setups:
        reply = wire(s.clients[u].handle(wire(other if u == VICTIM else setup)))
        s.server.keys[u] = reply  # a lying server accepts everything
    for u, directory in s.server.advance():
        if u == VICTIM:
            continue
        with pytest.raises(ProtocolError, match=f"signature of client {VICTIM} does not verify"):
            s.clients[u].handle(wire(directory))


@pytest.mark.parametrize("claim", ["overlap", "too-few", "not-advertised", "self-missing"])
def test_lie_false_claims_are_detected(claim):
    s = Session(6, 4, malicious=True, corrupt=1)
    s.to_masked_input()
    everyone = tuple(sorted(s.masked))
    survivors, dropped = {
        "overlap": (everyone, (everyone[-1],)),
        "too-few": (everyone[:3], ()),
        "not-advertised": (everyone, (77,)),
        "self-missing": (everyone[1:], ()),
    }[claim]
    u = VICTIM if claim != "self-missing" else everyone[0]
    with pytest.raises(ProtocolError):
        s.clients[u].handle(consistency_request(s.server, u, survivors, dropped))


def test_honest_server_in_malicious_mode_gives_the_exact_sum():
    s = Session(7, 5, malicious=True, corrupt=2)
    s.to_masked_input()
    outgoing = s.server.advance()  # ConsistencyRequest
    assert all(isinstance(m, ConsistencyRequest) for _, m in outgoing)
    for u, message in outgoing:
        reply = s.reply(u, message)
        assert isinstance(reply, ConsistencySignature)
        s.server.receive(reply, sender=u)
    for u, message in s.server.advance():
        reply = s.reply(u, message)
        assert isinstance(reply, UnmaskResponse)
        s.server.receive(reply, sender=u)
    s.server.advance()
    expected = sum(s.inputs[u] for u in range(7))
    assert np.array_equal(s.server.result, expected)


def test_malicious_thresholds_are_enforced():
    with pytest.raises(ConfigError, match=r"threshold: malicious mode needs t > \(n \+ corrupt\) / 2"):
        SessionParams(1, b"", tuple(range(10)), 6, 9, 4, malicious=True, corrupt=3, nonce=NONCE)
    SessionParams(1, b"", tuple(range(10)), 7, 9, 4, malicious=True, corrupt=3, nonce=NONCE)
    with pytest.raises(ConfigError, match=r"on a SecAgg\+ graph needs degree / 2 < t <= degree \(2 < t <= 4"):
        SessionParams(1, b"", tuple(range(10)), 2, 4, 4, malicious=True, nonce=NONCE)


def test_client_with_identity_refuses_a_session_without_malicious_mode():
    key = SigningKey.generate()
    client = Client(0, np.zeros(D, np.uint32), identity=key, registry={0: key.public, 1: b"x" * 32})
    setup = Setup(SessionParams(1, b"", (0, 1), 2, 1, D, nonce=NONCE))
    with pytest.raises(ProtocolError, match="requires malicious-server mode"):
        client.handle(setup)
