"""An adversarial server against malicious-server mode: each lie is detected, and no input leaks.

The harness
-----------
:class:`LyingServer` is the library's :class:`Server` with one switch per lie, every switch off by
default: with no switch it *is* the honest server (plus a log of every message it sent and received).
:class:`Deployment` drives it and real :class:`Client` objects over the real wire format (a message the
codec cannot even encode is handed over as an object, so the client's own checks are still exercised),
lets chosen clients collude with the server (they follow its instructions, give it their identity keys
so it can sign anything in their name, and hand over every Shamir share they hold and their own mask
key), and keeps every client inspectable afterwards.

:func:`attempt_recovery` is the attack itself. From everything the server saw (masked inputs,
directories, forwarded ciphertexts, every UnmaskResponse) plus everything the colluders know, it
reconstructs the victim's self-mask seed b_u (t shares) and removes each pairwise mask of the victim,
using the victim's mask key s_u^SK if it has t shares of it, or else the neighbour's mask key s_v^SK
(a pair seed derives from either end), and returns x_u = y_u - PRG(b_u) - sum_v sign * PRG(s_uv).
It returns None when it lacks t shares of something it needs.

Controls prove the harness can succeed where the defence is absent: without malicious mode the split
request recovers the victim's input exactly, and in malicious mode it does too as soon as the
colluders outnumber the declared ``corrupt`` (the threshold bound is tight, and the harness's forged
colluder signatures are accepted). Each lie test then asserts the specific detection (which client
refuses, with which message, and that the refusing clients sent no share) and that recovery fails.

What actually protects. On the full graph with 2t > n + corrupt, counting alone already stops the
split on one victim (n honest-or-colluding holders give at most n + corrupt shares, 2t are needed);
the consistency check is what stops multi-view attacks that remove the victim's pair masks with its
neighbours' keys, since only one view can ever gather t signatures. On a SecAgg+ graph t is small
against n, so several views can each gather t signatures, and only the per-neighbourhood threshold
stands in the way.

Findings, now fixed and kept as regression tests at the end: on a SecAgg+ graph three differently-lying
views, each signed by t clients, isolated a victim with no colluder (fixed: a client counts consistency
signatures only from the holders of its own shares); and the malicious threshold from
``secaggplus_parameters(..., malicious=True)`` was one share short when t1 + k is odd, because the owner's
own share counted as a (k + 1)-th holder (fixed: in malicious mode on a sparse graph the owner's share
is never revealed or counted, so the k neighbours are the only holders, as in Bell et al.'s analysis).
"""

from __future__ import annotations

import dataclasses
import itertools
import os
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from views import consistency_request, local_view, status_root

from secagg.crypto import aead
from secagg.crypto.keys import DHKeyPair, SigningKey, verify_signature
from secagg.crypto.prg import accumulate_masks
from secagg.crypto.shamir import Share, reconstruct
from secagg.errors import AbortError, ConfigError, ProtocolError, WireError
from secagg.protocol.client import Client, ClientPhase
from secagg.protocol.finder import secaggplus_parameters
from secagg.protocol.messages import (
    AdvertiseKeys,
    ConsistencySignature,
    ForwardedShares,
    KeyDirectory,
    MaskedInput,
    Message,
    SessionParams,
    Setup,
    Stage,
    UnmaskRequest,
    UnmaskResponse,
)
from secagg.protocol.ring import Ring, ring_seed
from secagg.protocol.runner import REPLY_STAGE, run_session
from secagg.protocol.server import Outgoing, Server, ServerPhase
from secagg.protocol.session import (
    advertisement_message,
    consistency_message,
    mask_seed,
    mask_sign,
    share_point,
)
from secagg.protocol.wire import decode, encode

NONCE = bytes(range(32))  # a fixed session nonce for hand-built setups (a Server draws a fresh one)

D = 8
VICTIM = 0
Sets = tuple[tuple[int, ...], tuple[int, ...]]  # (survivors, dropped) as shown to a client
Signatures = tuple[tuple[int, bytes], ...]


NOT_SIGNED_ENOUGH = "valid consistency signatures on the survivor set, fewer than the threshold"


def full(n: int = 10, t: int = 7, corrupt: int = 3, *, malicious: bool = True,
         round_: int = 1) -> SessionParams:
    """Classic SecAgg (complete graph). Malicious mode needs 2t > n + corrupt: n=10, corrupt=3, t=7."""
    return SessionParams(round_, b"model-v1", tuple(range(n)), t, n - 1, D, malicious=malicious,
                         corrupt=corrupt, nonce=NONCE)


def sparse(n: int = 12, k: int = 6, t: int = 5, corrupt: int = 2, *, malicious: bool = True,
           round_: int = 1) -> SessionParams:
    """SecAgg+ (Harary graph of even degree k < n - 1). In malicious mode only the k neighbours' shares
    count (not the owner's), and safety against c colluding neighbours needs 2t > k + c: 10 > 6 + 2."""
    return SessionParams(round_, b"model-v1", tuple(range(n)), t, k, D, malicious=malicious, corrupt=corrupt,
                         nonce=NONCE)


# the two topologies every topology-independent lie runs on, with colluders up to `corrupt`
TOPOLOGIES = {"full": (full, (7, 8, 9)), "secaggplus": (sparse, (10, 11))}


# -- the lying server -----------------------------------------------------------------------------------

ViewsFn = Callable[["LyingServer"], dict[int, Sets]]
SignatureEdit = Callable[[int, Sets, Signatures], Signatures]


class LyingServer(Server):
    """The library's server with a switch per lie; with no switch set it behaves honestly.

    ``setup_for``: {client: params} sends that client another Setup (model inconsistency).
    ``advert_swap``: {client: AdvertiseKeys} replaces what that client advertised (replay).
    ``directory_edit(recipient, directory)``: the directory each client is sent (strip, substitute).
    ``forward_edit(server, outgoing)``: the ForwardedShares batch (misrouting).
    ``views(server)``: {client: (survivors, dropped)} shown after MaskedInput, to whom (split, false
    claims, inconsistent sets); malicious mode asks each to sign its sets, honest mode asks to unmask.
    ``unmask_sets``: the sets every UnmaskRequest names instead of the recipient's own view.
    ``signatures``: "matching" (the signatures collected on exactly the named sets) or "all".
    ``signature_edit(recipient, sets, signatures)``: what signatures the UnmaskRequest carries.
    ``colluder_keys``: identity keys the colluders handed over: every request also carries their
    signatures on whatever sets it names.

    Every message in (``received``, with the transport-authenticated sender) and out (``sent``) is
    logged: that log is the server's view for :func:`attempt_recovery`. After the last stage the lying
    server still computes what it honestly can (the true survivors' sum, or a typed AbortError).
    """

    def __init__(self, params: SessionParams, registry: Mapping[int, bytes] | None = None, *,
                 colluder_keys: Mapping[int, SigningKey] | None = None,
                 setup_for: Mapping[int, SessionParams] | None = None,
                 advert_swap: Mapping[int, AdvertiseKeys] | None = None,
                 directory_edit: Callable[[int, KeyDirectory], KeyDirectory] | None = None,
                 forward_edit: Callable[[LyingServer, Outgoing], Outgoing] | None = None,
                 views: ViewsFn | None = None, unmask_sets: Sets | None = None,
                 signatures: str = "matching", signature_edit: SignatureEdit | None = None) -> None:
        super().__init__(params, registry)
        self.colluder_keys = dict(colluder_keys or {})
        self.setup_for = dict(setup_for or {})
        self.advert_swap = dict(advert_swap or {})
        self.directory_edit = directory_edit
        self.forward_edit = forward_edit
        self.views = views
        self.unmask_sets = unmask_sets
        self.signatures = signatures
        self.signature_edit = signature_edit
        self.received: list[tuple[int | None, Message]] = []
        self.sent: list[tuple[int, Message]] = []
        self.shown: dict[int, Sets] = {}
        self.victim: int | None = None  # set by a views function that picks its victim from the graph

    @property
    def lies_late(self) -> bool:
        return (self.views is not None or self.unmask_sets is not None or self.signatures != "matching"
                or self.signature_edit is not None)

    def _log(self, out: Outgoing) -> Outgoing:
        self.sent.extend(out)
        return out

    def start(self) -> Outgoing:
        return self._log([(u, dataclasses.replace(m, params=self.setup_for[u]) if u in self.setup_for else m)
                          for u, m in super().start()])

    def receive(self, message: Message, *, sender: int | None = None) -> None:
        self.received.append((sender, message))
        if isinstance(message, AdvertiseKeys) and message.sender in self.advert_swap:
            message = self.advert_swap[message.sender]
        if self.lies_late and isinstance(message, ConsistencySignature) and sender == message.sender:
            self.consistency[message.sender] = message.signature  # whatever sets it was over
            return
        if self.lies_late and isinstance(message, UnmaskResponse) and sender == message.sender:
            self.responses[message.sender] = message  # whatever shares it carries
            return
        super().receive(message, sender=sender)

    def advance(self) -> Outgoing:
        late = (ServerPhase.COLLECT_MASKED, ServerPhase.COLLECT_CONSISTENCY, ServerPhase.COLLECT_UNMASK)
        if not self.lies_late or self.phase not in late:
            out = super().advance()
            if self.directory_edit is not None:
                out = [(u, self.directory_edit(u, m) if isinstance(m, KeyDirectory) else m) for u, m in out]
            if self.forward_edit is not None and out and isinstance(out[0][1], ForwardedShares):
                out = self.forward_edit(self, out)
            return self._log(out)
        try:
            if self.phase is ServerPhase.COLLECT_MASKED:
                return self._log(self._show_views())
            if self.phase is ServerPhase.COLLECT_CONSISTENCY:
                return self._log(self._request_unmasking())
            self._unmask()  # the true survivors' sum from whatever came back, or AbortError
            self.phase = ServerPhase.DONE  # this liar drives its own transitions, not Server's table
            return []
        except AbortError:
            self.phase = ServerPhase.ABORTED
            raise

    def _show_views(self) -> Outgoing:
        self._need(len(self.masked), "sent masked inputs")
        self.survivors = tuple(sorted(self.masked))
        self.dropped = tuple(sorted(set(self.shares) - self.masked))
        truth = {u: (self.survivors, self.dropped) for u in self.survivors}
        self.shown = dict(self.views(self)) if self.views is not None else truth
        if self.params.malicious:
            self.phase = ServerPhase.COLLECT_CONSISTENCY
            return [(u, consistency_request(self, u, *sets)) for u, sets in sorted(self.shown.items())]
        self.phase = ServerPhase.COLLECT_UNMASK
        return [(u, UnmaskRequest(self.session, *local_view(self, u, *(self.unmask_sets or sets))))
                for u, sets in sorted(self.shown.items())]

    def _request_unmasking(self) -> Outgoing:
        self.phase = ServerPhase.COLLECT_UNMASK
        out: Outgoing = []
        for u, sets in sorted(self.shown.items()):
            named = self.unmask_sets or sets
            signatures = self.signatures_on(named)
            if self.signature_edit is not None:
                signatures = self.signature_edit(u, named, signatures)
            out.append((u, UnmaskRequest(self.session, *local_view(self, u, *named), signatures)))
        return out

    def signatures_on(self, sets: Sets) -> Signatures:
        """The signatures collected on ``sets`` (or all, if so switched), plus the colluders' on ``sets``."""
        pool = {u: sig for u, sig in self.consistency.items()
                if self.signatures == "all" or self.shown.get(u) == sets}
        message = consistency_message(self.session, status_root(self, *sets))
        pool.update({c: key.sign(message) for c, key in self.colluder_keys.items()})
        return tuple(sorted(pool.items()))


# -- the deployment: clients, colluders, transport ------------------------------------------------------

@dataclasses.dataclass
class Loot:
    """What one colluding client hands the server: every share it holds, and its own mask key."""

    held: dict[int, tuple[bytes, bytes]]
    mask_private: bytes


class Deployment:
    """One session: real clients, some colluding, and a (possibly lying) server, over the wire format."""

    def __init__(self, params: SessionParams, *, colluders: Sequence[int] = (), seed: int = 0,
                 identities: Mapping[int, SigningKey] | None = None) -> None:
        self.params = params
        rng = np.random.default_rng(seed)
        self.inputs = {u: rng.integers(0, 1 << params.bits, D, dtype=np.uint64).astype(np.uint32)
                       for u in params.client_ids}
        self.identities = dict(identities) if identities is not None else {
            u: SigningKey.generate() for u in params.client_ids}
        self.registry = {u: k.public for u, k in self.identities.items()} if params.malicious else None
        self.clients = {u: Client(u, self.inputs[u], registry=self.registry,
                                  identity=self.identities[u] if params.malicious else None)
                        for u in params.client_ids}
        self.colluders = frozenset(colluders)
        self.loot = {c: Loot({}, self.clients[c]._mask.private_bytes()) for c in self.colluders}
        self.aborts: dict[int, str] = {}       # client -> the ProtocolError it raised (it refused)
        self.rejected: list[tuple[int, str]] = []  # what the server refused
        self.unencodable: list[tuple[int, Message]] = []
        self.gone: set[int] = set()
        self.server = self.lie()

    def lie(self, *, server_checks: bool = False, **switches) -> LyingServer:
        """Replace the server. ``server_checks``: give it the registry so it verifies signatures itself."""
        keys = {c: self.identities[c] for c in self.colluders} if self.params.malicious else {}
        self.server = LyingServer(self.params, self.registry if server_checks else None,
                                  colluder_keys=keys, **switches)
        return self.server

    @property
    def honest(self) -> list[int]:
        return [u for u in self.params.client_ids if u not in self.colluders]

    def run(self, drop_before: Mapping[int, Stage] | None = None) -> np.ndarray | AbortError:
        """Run to the end: the server's result, or the AbortError that ended the round."""
        drop = dict(drop_before or {})
        try:
            self._deliver(self.server.start(), drop)
            while self.server.stage is not None:
                self._deliver(self.server.advance(), drop)
        except AbortError as exc:
            return exc
        assert self.server.result is not None
        return self.server.result

    def _transmit(self, u: int, message: Message) -> Message:
        try:
            return decode(encode(message))
        except WireError:
            self.unencodable.append((u, message))  # no codec would carry it; hand the object over
            return message

    def _deliver(self, outgoing: Outgoing, drop: Mapping[int, Stage]) -> None:
        for u, message in outgoing:
            stage = REPLY_STAGE[type(message)]
            if u in self.gone or (u in drop and drop[u] <= stage):
                self.gone.add(u)
                continue
            client = self.clients[u]
            try:
                reply = client.handle(self._transmit(u, message))
            except ProtocolError as exc:
                self.aborts[u] = str(exc)
                self.gone.add(u)
                continue
            finally:
                if u in self.colluders and client._held:
                    self.loot[u].held = dict(client._held)  # a colluder keeps a copy of what it holds
            try:
                self.server.receive(self._transmit(u, reply), sender=u)
            except ProtocolError as exc:
                self.rejected.append((u, str(exc)))

    # -- what the tests inspect ---------------------------------------------------------------------------

    def recover(self, victim: int) -> np.ndarray | None:
        return attempt_recovery(self.server, victim, self.params, self.loot)

    def leaks(self, victim: int) -> bool:
        """The attack recovers exactly the victim's input."""
        recovered = self.recover(victim)
        return recovered is not None and np.array_equal(recovered, self.inputs[victim])

    def revealed(self, kind: str, owner: int) -> set[int]:
        """Honest clients that sent the server their share of ``owner``'s b ("b") or s^SK ("s")."""
        out = set()
        for sender, m in self.server.received:
            if isinstance(m, UnmaskResponse):
                pairs = m.self_mask_shares if kind == "b" else m.mask_key_shares
                if any(owner == o for o, _ in pairs):
                    out.add(sender)
        return out - self.colluders

    def responders(self) -> set[int]:
        return {s for s, m in self.server.received if isinstance(m, UnmaskResponse)}

    def exact_sum(self, members) -> np.ndarray:
        total = np.zeros(D, dtype=np.uint32)
        for u in members:
            total += self.inputs[u]  # wraps mod 2^32
        if self.params.bits < 32:
            total &= np.uint32((1 << self.params.bits) - 1)
        return total

    def assert_typed(self, outcome: np.ndarray | AbortError) -> None:
        """Either a typed abort, or exactly the sum over the survivors the server settled on."""
        if not isinstance(outcome, AbortError):
            assert np.array_equal(outcome, self.exact_sum(self.server.survivors))

    def assert_refused(self, clients, match: str) -> None:
        """Each of ``clients`` refused with a message containing ``match``, forgot its secrets, and
        sent the server no UnmaskResponse."""
        responders = self.responders()
        for u in clients:
            assert u in self.aborts, f"client {u} should have refused"
            assert match in self.aborts[u], f"client {u}: {self.aborts[u]!r}"
            assert self.clients[u].phase is ClientPhase.ABORTED and not self.clients[u]._held
            assert u not in responders, f"client {u} revealed shares"


# -- the attack -----------------------------------------------------------------------------------------

def attempt_recovery(view: LyingServer, victim: int, params: SessionParams,
                     colluders: Mapping[int, Loot]) -> np.ndarray | None:
    """The victim's input from the server's view and the colluders' loot, or None if out of reach.

    Needs t shares of b_victim, and for every neighbour v the victim masked with, either t shares of
    s_victim^SK, v's own key (v colludes), or t shares of s_v^SK. Shares are points ``share_point(holder)``.
    """
    t = params.threshold
    masked = next((m for s, m in view.received if s == victim and isinstance(m, MaskedInput)), None)
    directory = next((m for r, m in view.sent if r == victim and isinstance(m, KeyDirectory)), None)
    forwarded = next((m for r, m in view.sent if r == victim and isinstance(m, ForwardedShares)), None)
    if masked is None or directory is None or forwarded is None:
        return None  # no masked input from the victim: nothing to unmask
    entries = {e.client_id: e for e in directory.entries}
    pool: dict[tuple[str, int], dict[int, bytes]] = {}
    for sender, m in view.received:
        if isinstance(m, UnmaskResponse) and sender == m.sender:
            for kind, pairs in (("b", m.self_mask_shares), ("s", m.mask_key_shares)):
                for owner, data in pairs:
                    pool.setdefault((kind, owner), {})[sender] = data
    for c, loot in colluders.items():
        for owner, (b, s) in loot.held.items():
            pool.setdefault(("b", owner), {}).setdefault(c, b)
            pool.setdefault(("s", owner), {}).setdefault(c, s)

    def secret(kind: str, owner: int) -> bytes | None:
        found = sorted(pool.get((kind, owner), {}).items())
        if len(found) < t:
            return None
        try:
            return reconstruct([Share.from_bytes(share_point(h), data) for h, data in found], t)
        except ProtocolError:
            return None

    def mask_key(owner: int) -> DHKeyPair | None:
        raw = colluders[owner].mask_private if owner in colluders else secret("s", owner)
        if raw is None or owner not in entries:
            return None
        key = DHKeyPair.from_private_bytes(raw)
        return key if key.public == entries[owner].mask_key else None

    seed = secret("b", victim)
    if seed is None:
        return None
    own = mask_key(victim)
    masks = [(seed, -1)]
    for v, _ in forwarded.shares:  # the victim masked with every neighbour whose share reached it
        if own is not None:
            shared = own.agree(entries[v].mask_key, peer=v)
        else:
            other = mask_key(v)
            if other is None:
                return None
            shared = other.agree(entries[victim].mask_key, peer=victim)
        masks.append((mask_seed(shared, masked.session_id, victim, v), -mask_sign(victim, v)))
    x = np.frombuffer(masked.vector, dtype="<u4").astype(np.uint32)
    accumulate_masks(x, masks)
    if params.bits < 32:
        x &= np.uint32((1 << params.bits) - 1)
    return x


# -- lies, as reusable switch settings ------------------------------------------------------------------

def split_views(victim: int, group_b: Sequence[int], group_s: Sequence[int]) -> ViewsFn:
    """Show ``group_b`` the victim as a survivor (they reveal b_victim) and ``group_s`` the victim as
    dropped (they reveal s_victim^SK); everything else as it really is."""
    def views(server: LyingServer) -> dict[int, Sets]:
        server.victim = victim
        survivors, dropped = set(server.survivors), set(server.dropped)
        v1 = (tuple(sorted(survivors | {victim})), tuple(sorted(dropped - {victim})))
        v2 = (tuple(sorted(survivors - {victim})), tuple(sorted(dropped | {victim})))
        return {**dict.fromkeys(group_b, v1), **dict.fromkeys(group_s, v2)}
    return views


def split_halves(victim: int, colluders: frozenset[int]) -> ViewsFn:
    """:func:`split_views` over the honest survivors, alternating (the victim sees itself survive)."""
    def views(server: LyingServer) -> dict[int, Sets]:
        others = [u for u in server.survivors if u not in colluders and u != victim]
        group_b = ([victim] if victim in server.survivors else []) + others[0::2]
        return split_views(victim, group_b, others[1::2])(server)
    return views


def same_claim(make: Callable[[tuple[int, ...], tuple[int, ...]], Sets]) -> ViewsFn:
    """Every survivor is shown the same (false) sets ``make(survivors, dropped)``."""
    def views(server: LyingServer) -> dict[int, Sets]:
        return dict.fromkeys(server.survivors, make(server.survivors, server.dropped))
    return views


def one_view_each(colluders: frozenset[int]) -> ViewsFn:
    """Each honest survivor is told that the next honest survivor dropped: all views differ."""
    def views(server: LyingServer) -> dict[int, Sets]:
        honest = [u for u in server.survivors if u not in colluders]
        out = {}
        for i, u in enumerate(honest):
            w = honest[(i + 1) % len(honest)]
            out[u] = (tuple(v for v in server.survivors if v != w), tuple(sorted({*server.dropped, w})))
        return out
    return views


def scatter_views(victim: int, colluders: frozenset[int], parts: int = 3) -> ViewsFn:
    """Isolation on any graph: the victim survives in every view, and each view drops another part of
    the other survivors; a client is shown a view that keeps it. Together the views ask for b_victim
    and for the mask key of every other survivor."""
    def views(server: LyingServer) -> dict[int, Sets]:
        others = [u for u in server.survivors if u != victim]
        chunks = [set(others[i::parts]) for i in range(parts)]
        out = {}
        for u in server.survivors:
            if u in colluders:
                continue
            i = next((i for i in range(parts) if u not in chunks[(i + u) % parts]), 0)
            dropped = chunks[(i + u) % parts]
            out[u] = (tuple(v for v in server.survivors if v not in dropped),
                      tuple(sorted(dropped | set(server.dropped))))
        return out
    return views


def ring_order(server: LyingServer) -> list[int]:
    """The Harary ring Setup puts the invited clients on (checked against the server's own graph)."""
    p = server.params
    ring_ = Ring(ring_seed(p.round, p.degree, p.members, p.members_root), p.members)
    order = [p.client_ids[i] for i in ring_.indices_at(np.arange(p.members)).tolist()]
    m, half = len(order), server.params.degree // 2
    for i, u in enumerate(order):
        ring = {order[(i + j) % m] for j in range(-half, half + 1) if j}
        if ring != server.neighbours(u):
            pytest.fail("ring_order does not reproduce the library's graph")
    return order


def isolation_views(victim: int) -> ViewsFn:
    """SecAgg+ with k=4 and 12 clients: three views that together isolate the victim (ring position 0).

    V0 (shown at positions 0, +3, -3, -5) drops the victim's four neighbours +-1, +-2; VA (+1, -2, +4,
    +5) drops -1 and +2; VB (-1, +2, -4, +6) drops +1 and -2. Each view is self-consistent and goes to
    t=4 of its own survivors, who all sign it. Holders then reveal b_victim from positions 0, +-1, +-2,
    and for each neighbour v its four other holders (who all see v dropped) reveal s_v^SK.
    """
    plan = {(0, 3, -3, -5): (-2, -1, 1, 2), (1, -2, 4, 5): (-1, 2), (-1, 2, -4, 6): (1, -2)}

    def views(server: LyingServer) -> dict[int, Sets]:
        server.victim = victim
        order = ring_order(server)
        if len(order) != 12 or server.params.degree != 4:
            pytest.fail("isolation_views is laid out for 12 clients on a degree-4 ring")
        p = order.index(victim)

        def at(r: int) -> int:
            return order[(p + r) % 12]

        out = {}
        for members, dropped_rel in plan.items():
            dropped = {at(r) for r in dropped_rel} | set(server.dropped)
            sets = (tuple(u for u in server.survivors if u not in dropped), tuple(sorted(dropped)))
            out.update(dict.fromkeys((at(r) for r in members), sets))
        return out
    return views


def strip_signature(of: int) -> Callable[[int, KeyDirectory], KeyDirectory]:
    def edit(_: int, directory: KeyDirectory) -> KeyDirectory:
        return dataclasses.replace(directory, entries=tuple(
            e._replace(signature=b"") if e.client_id == of else e for e in directory.entries))
    return edit


def substitute_key(of: int, field: str, signature: str = "keep", resigner: SigningKey | None = None,
                   *, only_for: Sequence[int] | None = None, params: SessionParams | None = None):
    """Replace ``of``'s ``enc_key`` or ``mask_key`` by a server-chosen one, in the directory sent to
    ``only_for`` (default: everyone); keep, drop or re-sign (with a colluder's identity) its signature."""
    rogue = DHKeyPair.generate().public

    def edit(recipient: int, directory: KeyDirectory) -> KeyDirectory:
        if only_for is not None and recipient not in only_for:
            return directory
        entries = []
        for e in directory.entries:
            if e.client_id == of:
                e = e._replace(**{field: rogue})
                if signature == "drop":
                    e = e._replace(signature=b"")
                elif signature == "resign":
                    assert resigner is not None and params is not None
                    e = e._replace(signature=resigner.sign(
                        advertisement_message(params, of, e.enc_key, e.mask_key)))
            entries.append(e)
        return dataclasses.replace(directory, entries=tuple(entries))
    return edit


def misroute(pairs: int = 1, *, check: list | None = None, clients: Mapping[int, Client] | None = None):
    """For ``pairs`` recipients R: hand R the ciphertext some sender S addressed to another recipient R2,
    labelled as S's share for R. ``check`` collects (S, R, R2, opens_for_R, opens_for_R2)."""
    def edit(server: LyingServer, out: Outgoing) -> Outgoing:
        original = {u: dict(m.shares) for u, m in out}
        inbox = {u: dict(shares) for u, shares in original.items()}
        targets = sorted(original)[:pairs]
        for r in targets:
            r2, s = next(((r2, s) for r2 in sorted(original) if r2 != r
                          for s in sorted(set(original[r]) & set(original[r2]) - {r, r2})), (None, None))
            if r2 is None or s is None:
                continue
            ciphertext = original[r2][s]
            if check is not None and clients is not None:
                check.append((s, r, r2, _opens(clients[r], s, r, ciphertext, server.session),
                              _opens(clients[r2], s, r2, ciphertext, server.session)))
            inbox[r][s] = ciphertext
        return [(u, dataclasses.replace(m, shares=tuple(sorted(inbox[u].items())))) for u, m in out]
    return edit


def _opens(client: Client, sender: int, recipient: int, ciphertext: bytes, sid: bytes) -> bool:
    try:
        aead.open_sealed(client._share_keys[sender], ciphertext, aead.associated_data(sid, sender, recipient),
                         sender=sender)
    except ProtocolError:
        return False
    return True


def old_advertisement(dep: Deployment, u: int, round_: int) -> AdvertiseKeys:
    """``u``'s genuine signed advertisement from another session (another round), same identity."""
    old = Client(u, dep.inputs[u], identity=dep.identities[u], registry=dep.registry)
    return old.handle(Setup(dataclasses.replace(dep.params, round=round_)))


# ======================================================================================================
# Controls: the harness recovers an input wherever the defence is absent
# ======================================================================================================

@pytest.mark.parametrize(("t", "colluders", "group_b", "group_s"), [
    (5, (), (0, 1, 2, 3, 4), (5, 6, 7, 8, 9)),
    (6, (8, 9), (0, 1, 2, 3), (4, 5, 6, 7)),
])
def test_control_split_request_recovers_the_victim_without_malicious_mode(t, colluders, group_b, group_s):
    dep = Deployment(full(10, t, 0, malicious=False), colluders=colluders)
    dep.lie(views=split_views(VICTIM, group_b, group_s))
    dep.run()
    assert dep.revealed("b", VICTIM) == set(group_b) and dep.revealed("s", VICTIM) == set(group_s)
    recovered = dep.recover(VICTIM)
    assert recovered is not None and np.array_equal(recovered, dep.inputs[VICTIM]), \
        "honest-but-curious mode: half the holders reveal b_0, half s_0: the harness recovers x_0"
    assert not dep.aborts, "nothing in honest-but-curious mode detects the split"


def test_control_split_request_recovers_the_victim_when_colluders_exceed_corrupt():
    # corrupt=3 is declared (t=7 > 13/2), but 4 clients collude: both views reach t signatures
    dep = Deployment(full(10, 7, 3), colluders=(6, 7, 8, 9))
    dep.lie(views=split_views(VICTIM, (0, 1, 2), (3, 4, 5)))
    dep.run()
    assert not dep.aborts, "3 honest + 4 colluder signatures = t on each view: nobody refuses"
    recovered = dep.recover(VICTIM)
    assert recovered is not None and np.array_equal(recovered, dep.inputs[VICTIM]), \
        "one colluder beyond `corrupt` breaks malicious mode: the bound 2t > n + corrupt is tight"


def test_isolation_with_t_equal_k_is_refused_by_the_local_survivor_count_even_without_malicious_mode():
    # the recovery's second route: a victim whose every neighbour is (claimed) dropped is unmasked with
    # the neighbours' mask keys. With t = k every neighbour's mask key needs the victim's own share of
    # it, so the victim must be shown all four neighbours dropped: it then sees 1 survivor among its
    # share holders, fewer than t, and refuses (wire v3: each client counts the survivors it can see)
    dep = Deployment(sparse(12, 4, 4, 0, malicious=False))
    dep.lie(views=isolation_views(VICTIM))
    dep.run()
    dep.assert_refused([VICTIM], "1 survivors, fewer than the threshold 4")
    assert dep.recover(VICTIM) is None
    assert dep.revealed("s", VICTIM) == set(), "s_0 itself never left anyone"


# ======================================================================================================
# 1. The server asks for both shares of the victim (split survivor sets)
# ======================================================================================================

@pytest.mark.parametrize("size_s", range(1, 7))
def test_lie_ask_for_both_shares_full_graph(size_s):
    # n=10, corrupt=3, t=7: 7 honest clients (victim 0 and 1..6) and colluders 7, 8, 9 who sign anything
    dep = Deployment(full(), colluders=(7, 8, 9))
    others = [1, 2, 3, 4, 5, 6]
    group_b, group_s = [VICTIM, *others[: 6 - size_s]], others[6 - size_s :]
    dep.lie(views=split_views(VICTIM, group_b, group_s))
    outcome = dep.run()
    # a view reaches t signatures iff its honest signers plus the 3 colluders reach 7: never both
    short_b, short_s = len(group_b) + 3 < 7, len(group_s) + 3 < 7
    assert short_b != short_s
    refused = group_b if short_b else group_s
    dep.assert_refused(refused, f"only {len(refused) + 3} {NOT_SIGNED_ENOUGH} 7")
    assert (dep.revealed("b", VICTIM) if short_b else dep.revealed("s", VICTIM)) == set()
    assert isinstance(outcome, AbortError)
    assert dep.recover(VICTIM) is None
    assert all(dep.recover(u) is None for u in dep.honest)


@pytest.mark.parametrize("lean", ["b-heavy", "balanced", "s-heavy"])
def test_lie_ask_for_both_shares_secaggplus(lean):
    # SecAgg+: n=12, k=6, t=5 (2t > k + corrupt: 10 > 8), colluders 10 and 11; the server picks as
    # victim the honest client with the most colluding neighbours (worst case), after seeing the graph
    dep = Deployment(sparse(12, 6, 5, 2), colluders=(10, 11))

    def views(server: LyingServer) -> dict[int, Sets]:
        honest = [u for u in server.survivors if u not in dep.colluders]
        victim = max(honest, key=lambda u: (len(server.neighbours(u) & dep.colluders), -u))
        near = sorted(server.neighbours(victim) - dep.colluders)
        cut = {"b-heavy": len(near), "balanced": len(near) // 2, "s-heavy": 0}[lean]
        far = [u for u in honest if u != victim and u not in near]
        # non-neighbours sign both views (alternately), so each view has t signatures
        return split_views(victim, [victim, *near[:cut], *far[0::2]], [*near[cut:], *far[1::2]])(server)

    dep.lie(views=views)
    dep.run()
    victim = dep.server.victim
    assert victim is not None and dep.server.neighbours(victim) & dep.colluders
    assert not dep.revealed("b", victim) & dep.revealed("s", victim), "no holder reveals both"
    assert dep.recover(victim) is None, "4 honest + 2 x 2 colluding < 2t: b or s stays below t"
    assert all(dep.recover(u) is None for u in dep.honest)


# ======================================================================================================
# 2. Different survivor sets to different clients, then an unmask request with the signatures it has
# ======================================================================================================

@pytest.mark.parametrize("topology", sorted(TOPOLOGIES))
def test_lie_inconsistent_survivor_sets_one_view_each(topology):
    make, colluders = TOPOLOGIES[topology]
    dep = Deployment(make(), colluders=colluders)
    dep.lie(views=one_view_each(dep.colluders), signatures="all")
    outcome = dep.run()
    t, c = dep.params.threshold, len(colluders)
    assert all(len(dep.server.signatures_on(s)) >= t for s in dep.server.shown.values()), \
        "every request carries at least t signatures (all it has), so a count alone would pass"
    # (on the full graph every signer is a neighbour; the exact count is pinned there only)
    dep.assert_refused(dep.honest, f"only {1 + c} {NOT_SIGNED_ENOUGH} {t}" if dep.params.full_graph
                       else NOT_SIGNED_ENOUGH)
    assert dep.responders() == set()
    assert isinstance(outcome, AbortError) and "only 0 clients answered the unmask request" in str(outcome)
    assert all(dep.recover(u) is None for u in dep.honest)


def test_lie_inconsistent_survivor_sets_unmask_names_one_of_them():
    dep = Deployment(full(), colluders=(7, 8, 9))
    truth = (tuple(range(10)), ())
    claim_1_dropped = (tuple(u for u in range(10) if u != 1), (1,))
    # odd clients are told the truth, even clients that client 1 dropped; all sign their own view
    dep.lie(views=lambda s: {u: truth if u % 2 else claim_1_dropped for u in dep.honest},
            unmask_sets=truth, signatures="all")
    outcome = dep.run()
    assert {u for u, m in dep.server.received if isinstance(m, ConsistencySignature)} == set(dep.honest)
    dep.assert_refused([0, 2, 4, 6], "names other survivor/dropped sets than the ones I signed")
    dep.assert_refused([1, 3, 5], f"only 6 {NOT_SIGNED_ENOUGH} 7")  # 3 odd + 3 colluders
    assert isinstance(outcome, AbortError) and dep.responders() == set()
    assert all(dep.recover(u) is None for u in dep.honest)


# ======================================================================================================
# 3. Signatures stripped, zeroed, swapped (directory) or removed, forged, duplicated (unmask request)
# ======================================================================================================

@pytest.mark.parametrize("topology", sorted(TOPOLOGIES))
@pytest.mark.parametrize(("how", "message"), [
    ("strip-one", "the advertisement of client 3 is unsigned"),
    ("strip-all", "the advertisement of client 0 is unsigned"),
    ("zero-one", "signature of client 3 does not verify"),
    ("swap-two", "signature of client 3 does not verify"),
])
def test_lie_drop_signatures_from_the_directory(topology, how, message):
    make, colluders = TOPOLOGIES[topology]
    dep = Deployment(make(), colluders=colluders)

    def edit(_: int, directory: KeyDirectory) -> KeyDirectory:
        e = list(directory.entries)
        at = {x.client_id: i for i, x in enumerate(e)}
        if how == "strip-all":
            e = [x._replace(signature=b"") for x in e]
        elif 3 in at:
            i = at[3]
            if how == "strip-one":
                e[i] = e[i]._replace(signature=b"")
            elif how == "zero-one":
                e[i] = e[i]._replace(signature=bytes(64))
            else:  # swapped with a neighbouring entry: both fail (on the full graph client 3's first)
                j = i + 1 if i + 1 < len(e) else i - 1
                e[i], e[j] = e[i]._replace(signature=e[j].signature), e[j]._replace(signature=e[i].signature)
        return dataclasses.replace(directory, entries=tuple(e))

    dep.lie(directory_edit=edit)
    outcome = dep.run()
    # only the clients whose directory carries client 3 see it (on the full graph: everybody)
    seers = [u for u in dep.params.client_ids
             if how == "strip-all" or u == 3 or 3 in dep.server.neighbours(u)]
    if how == "strip-all" or dep.params.full_graph:
        dep.assert_refused(seers, message if dep.params.full_graph else "is unsigned")
        assert isinstance(outcome, AbortError) and "only 0 clients shared keys" in str(outcome)
    else:
        dep.assert_refused(seers, "does not verify" if "verify" in message else message)
        dep.assert_typed(outcome)
        return
    # a directory mixing signed and unsigned entries cannot even be put on the wire
    assert bool(dep.unencodable) == (how == "strip-one")
    assert not any(isinstance(m, MaskedInput) for _, m in dep.server.received)


def _split_signature_lie(how: str, valid_v1: dict[int, bytes]) -> SignatureEdit:
    """Pad the victim-dropped view's signatures so that it carries >= t entries."""
    def edit(recipient: int, sets: Sets, signatures: Signatures) -> Signatures:
        if VICTIM not in sets[1]:
            return signatures  # the victim-survived view: left alone
        own = list(signatures)
        if how == "removed":
            return ()
        if how == "forged":
            return tuple(sorted([*own, *((u, os.urandom(64)) for u in (1, 2, 3))]))
        if how == "duplicated-signer":
            return (own[0],) * 7  # one genuine signature, seven times (not encodable: ids must be unique)
        if how == "outsider":
            return tuple(sorted([*own, (97, own[0][1]), (98, own[1][1]), (99, own[2][1])]))
        if how == "other-view":  # genuine signatures, but over the victim-survived sets
            return tuple(sorted({**dict(own), **valid_v1}.items()))
        raise AssertionError(how)
    return edit


@pytest.mark.parametrize(("how", "valid"), [
    ("removed", 0), ("forged", 6), ("duplicated-signer", 1), ("outsider", 6), ("other-view", 6)])
def test_lie_drop_or_forge_consistency_signatures(how, valid):
    dep = Deployment(full(), colluders=(7, 8, 9))
    valid_v1: dict[int, bytes] = {}

    def edit(recipient: int, sets: Sets, signatures: Signatures) -> Signatures:
        if VICTIM not in sets[1]:
            valid_v1.update((u, sig) for u, sig in signatures if u in (1, 2, 3))
        return _split_signature_lie(how, valid_v1)(recipient, sets, signatures)

    # V1 (victim survived) goes to 0..3: 4 + 3 colluders = t; V2 (victim dropped) to 4..6: 3 + 3 < t
    dep.lie(views=split_views(VICTIM, (0, 1, 2, 3), (4, 5, 6)), signature_edit=edit)
    dep.run()
    requests = [m for r, m in dep.server.sent if isinstance(m, UnmaskRequest) and r in (4, 5, 6)]
    if how != "removed":
        assert all(len(m.signatures) >= 7 for m in requests), "t entries: a naive count would pass"
    dep.assert_refused((4, 5, 6), f"only {valid} {NOT_SIGNED_ENOUGH} 7")
    assert dep.revealed("s", VICTIM) == set(), "no honest client revealed s_0"
    assert dep.revealed("b", VICTIM) == {0, 1, 2, 3}, "the consistent view was answered"
    assert bool(dep.unencodable) == (how == "duplicated-signer")
    assert dep.recover(VICTIM) is None


def test_lie_drop_signatures_from_an_honest_unmask_request():
    dep = Deployment(full(), colluders=(7, 8, 9))
    dep.lie(signature_edit=lambda recipient, sets, signatures: ())
    outcome = dep.run()
    dep.assert_refused(dep.honest, f"only 0 {NOT_SIGNED_ENOUGH} 7")
    assert isinstance(outcome, AbortError)


# ======================================================================================================
# 4. Replay from an earlier session (another round)
# ======================================================================================================

@pytest.mark.parametrize("topology", sorted(TOPOLOGIES))
@pytest.mark.parametrize("what", ["advertise-keys", "directory-entry", "whole-directory"])
def test_lie_replay_advertisement_from_earlier_session(topology, what):
    make, colluders = TOPOLOGIES[topology]
    # round 1: the victim drops after sharing keys, so that round's server legitimately learned the
    # victim's round-1 mask key: replaying its round-1 advertisement would let it unmask the victim
    old = Deployment(make(round_=1), colluders=colluders)
    old_result = old.run({VICTIM: Stage.MASKED_INPUT})
    assert not isinstance(old_result, AbortError)
    old_advert = next(m for s, m in old.server.received if s == VICTIM and isinstance(m, AdvertiseKeys))
    old_directory = next(m for r, m in old.server.sent if isinstance(m, KeyDirectory))

    dep = Deployment(make(round_=2), colluders=colluders, identities=old.identities)
    if what == "advertise-keys":
        dep.lie(advert_swap={VICTIM: old_advert})
    elif what == "directory-entry":
        old_entry = next(e for e in old_directory.entries if e.client_id == VICTIM)
        dep.lie(directory_edit=lambda u, d: dataclasses.replace(
            d, entries=tuple(old_entry if e.client_id == VICTIM else e for e in d.entries)))
    else:
        dep.lie(directory_edit=lambda u, d: old_directory)
    outcome = dep.run()
    if what == "whole-directory":
        for u in dep.params.client_ids:
            dep.assert_refused([u], f"does not carry client {u}'s own keys")
    else:
        dep.assert_refused(sorted(dep.server.ring(VICTIM)), f"signature of client {VICTIM} does not verify")
        dep.assert_refused([VICTIM], f"does not carry client {VICTIM}'s own keys")
    if dep.params.full_graph or what == "whole-directory":
        assert isinstance(outcome, AbortError) and "only 0 clients shared keys" in str(outcome)
    dep.assert_typed(outcome)  # SecAgg+: the victim's neighbours refuse, the others may go on without them


def test_lie_replay_advertisement_refused_by_an_honest_server_with_the_registry():
    identities = {u: SigningKey.generate() for u in range(10)}
    dep = Deployment(full(round_=2), colluders=(7, 8, 9), identities=identities)
    dep.lie(server_checks=True, advert_swap={VICTIM: old_advertisement(dep, VICTIM, round_=1)})
    result = dep.run()
    assert (VICTIM, f"signature of client {VICTIM} does not verify") in dep.rejected
    assert np.array_equal(result, dep.exact_sum(range(1, 10))), "the round goes on without the victim"


def test_lie_replay_consistency_signatures_from_earlier_session():
    # round 1: the victim really dropped, so its survivors genuinely signed "0 dropped"
    old = Deployment(full(round_=1), colluders=(7, 8, 9))
    assert not isinstance(old.run({VICTIM: Stage.MASKED_INPUT}), AbortError)
    v2 = (tuple(range(1, 10)), (VICTIM,))
    replayed = {s: m.signature for s, m in old.server.received
                if isinstance(m, ConsistencySignature) and s in (1, 2, 3)}
    for u, sig in replayed.items():  # genuine: they verify on round 1's session
        verify_signature(old.identities[u].public, sig,
                         consistency_message(old.server.session, status_root(old.server, *v2)), signer=u)

    # round 2, same identities: split, and pad the victim-dropped view (same sets!) with round-1 signatures
    dep = Deployment(full(round_=2), colluders=(7, 8, 9), identities=old.identities)

    def pad(recipient: int, sets: Sets, signatures: Signatures) -> Signatures:
        return tuple(sorted({**dict(signatures), **replayed}.items())) if sets == v2 else signatures

    dep.lie(views=split_views(VICTIM, (0, 1, 2, 3), (4, 5, 6)), signature_edit=pad)
    dep.run()
    assert dep.server.shown[4] == v2
    assert all(len(m.signatures) == 9 for r, m in dep.server.sent if isinstance(m, UnmaskRequest) and r == 4)
    dep.assert_refused((4, 5, 6), f"only 6 {NOT_SIGNED_ENOUGH} 7")
    assert dep.revealed("s", VICTIM) == set() and dep.recover(VICTIM) is None


# ======================================================================================================
# 5. A client's key substituted by a server-chosen one
# ======================================================================================================

@pytest.mark.parametrize("topology", sorted(TOPOLOGIES))
@pytest.mark.parametrize("field", ["enc_key", "mask_key"])
@pytest.mark.parametrize(("signature", "message"), [
    ("keep", f"signature of client {VICTIM} does not verify"),
    ("drop", f"the advertisement of client {VICTIM} is unsigned"),
    ("resign", f"signature of client {VICTIM} does not verify"),  # signed with a colluder's identity
])
def test_lie_substitute_client_key(topology, field, signature, message):
    make, colluders = TOPOLOGIES[topology]
    dep = Deployment(make(), colluders=colluders)
    dep.lie(directory_edit=substitute_key(VICTIM, field, signature, dep.identities[colluders[0]],
                                          params=dep.params))
    outcome = dep.run()
    dep.assert_refused(sorted(dep.server.ring(VICTIM)), message)  # on SecAgg+ only they see its entry
    dep.assert_refused([VICTIM], f"does not carry client {VICTIM}'s own keys")
    if dep.params.full_graph:
        assert isinstance(outcome, AbortError) and "only 0 clients shared keys" in str(outcome)
    dep.assert_typed(outcome)
    masked = [s for s, m in dep.server.received if isinstance(m, MaskedInput)]
    assert not set(masked) & (dep.server.ring(VICTIM) | {VICTIM}), "nobody masked with it"


def test_lie_substitute_client_key_for_targeted_clients_only():
    # only clients 1, 2, 3 are given the server's mask key for the victim: they refuse, the rest go on
    dep = Deployment(full(), colluders=(7, 8, 9))
    dep.lie(directory_edit=substitute_key(VICTIM, "mask_key", only_for=(1, 2, 3)))
    result = dep.run()
    dep.assert_refused((1, 2, 3), f"signature of client {VICTIM} does not verify")
    assert np.array_equal(result, dep.exact_sum((0, 4, 5, 6, 7, 8, 9)))
    assert all(dep.recover(u) is None for u in dep.honest)


# ======================================================================================================
# 6. A share forwarded to the wrong client
# ======================================================================================================

@pytest.mark.parametrize("topology", sorted(TOPOLOGIES))
def test_lie_forward_share_to_wrong_client(topology):
    make, colluders = TOPOLOGIES[topology]
    dep = Deployment(make(), colluders=colluders)
    check: list = []
    dep.lie(forward_edit=misroute(1, check=check, clients=dep.clients))
    result = dep.run()
    [(s, r, _, opens_for_r, opens_for_r2)] = check
    assert opens_for_r2 and not opens_for_r, "genuine ciphertext, but it never decrypts at the wrong client"
    # r refuses s's shares (it reports them, holds none of them, reveals none) and goes on: the round
    # completes with everyone, exactly, s's secrets rebuilt from its other neighbours
    assert dep.aborts == {} and dep.server.refused == {r: (s,)}
    assert s not in {v for v, _ in dep.server.responses[r].self_mask_shares}
    assert np.array_equal(result, dep.exact_sum(dep.params.client_ids))
    assert all(dep.recover(u) is None for u in dep.honest)


def test_lie_forward_shares_to_wrong_clients_is_reported_and_never_leaks():
    dep = Deployment(full(), colluders=(7, 8, 9))
    dep.lie(forward_edit=misroute(4))
    outcome = dep.run()
    assert dep.aborts == {} and len(dep.server.refused) == 4
    dep.assert_typed(outcome)
    assert all(dep.recover(u) is None for u in dep.honest)


# ======================================================================================================
# 7. Model inconsistency (Pasquini et al. 2022): another model for the victim only
# ======================================================================================================

@pytest.mark.parametrize("topology", sorted(TOPOLOGIES))
def test_lie_model_inconsistency_fails_loudly(topology):
    make, colluders = TOPOLOGIES[topology]
    dep = Deployment(make(), colluders=colluders)
    poisoned = dataclasses.replace(dep.params, model_version=b"model-crafted-for-the-victim")
    dep.lie(setup_for={VICTIM: poisoned})  # a lying server relays the victim's advertisement unchecked
    outcome = dep.run()
    # the victim signed its keys together with the poisoned parameters: they fail at every client that
    # sees them (every other client on the full graph, its ring neighbours on SecAgg+), and everyone
    # else's fail at the victim
    near = sorted(dep.server.ring(VICTIM))
    dep.assert_refused(near, f"signature of client {VICTIM} does not verify")
    dep.assert_refused([VICTIM], f"signature of client {near[0]} does not verify")
    if dep.params.full_graph:
        assert isinstance(outcome, AbortError) and "only 0 clients shared keys" in str(outcome)
    dep.assert_typed(outcome)
    masked = {s for s, m in dep.server.received if isinstance(m, MaskedInput)}
    assert not masked & {VICTIM, *near}


def test_lie_model_inconsistency_through_the_library_runner():
    params = full()
    identities = {u: SigningKey.generate() for u in params.client_ids}
    inputs = {u: np.full(D, u, dtype=np.uint32) for u in params.client_ids}
    poisoned = dataclasses.replace(params, model_version=b"model-crafted-for-the-victim")
    with pytest.raises(AbortError, match="only 0 clients shared keys"):
        run_session(params, inputs, server=LyingServer(params, setup_for={VICTIM: poisoned}),
                    identities=identities)


def test_lie_model_inconsistency_refused_by_an_honest_server_with_the_registry():
    dep = Deployment(full(), colluders=(7, 8, 9))
    poisoned = dataclasses.replace(dep.params, model_version=b"model-crafted-for-the-victim")
    dep.lie(server_checks=True, setup_for={VICTIM: poisoned})
    result = dep.run()
    assert (VICTIM, f"signature of client {VICTIM} does not verify") in dep.rejected
    assert np.array_equal(result, dep.exact_sum(range(1, 10))), "the victim's input is in no sum"
    assert dep.clients[VICTIM].phase is ClientPhase.ADVERTISED


# ======================================================================================================
# 8. False claims about the sets
# ======================================================================================================

def _claim(kind: str, t: int) -> Callable[[tuple[int, ...], tuple[int, ...]], Sets]:
    def make(survivors: tuple[int, ...], dropped: tuple[int, ...]) -> Sets:
        if kind == "overlap":
            return survivors, tuple(sorted({*dropped, survivors[-1]}))
        if kind == "survivor-never-shared":  # client 9 advertised keys, then vanished
            return tuple(sorted({*survivors, 9})), dropped
        if kind == "dropped-never-advertised":  # client 9 never even advertised
            return survivors, tuple(sorted({*dropped, 9}))
        if kind == "below-threshold":
            return survivors[: t - 1], dropped
        raise AssertionError(kind)
    return make


@pytest.mark.parametrize("topology", sorted(TOPOLOGIES))
@pytest.mark.parametrize(("claim", "drop_9", "message"), [
    ("overlap", None, "as both surviving and dropped"),
    ("survivor-never-shared", Stage.SHARE_KEYS, "names neighbour(s) [9] that never shared keys with me"),
    ("dropped-never-advertised", Stage.ADVERTISE_KEYS, "names clients that never advertised keys"),
    ("below-threshold", None, "survivors, fewer than the threshold"),
])
def test_lie_claims_are_refused_before_signing(topology, claim, drop_9, message):
    make, colluders = TOPOLOGIES[topology]
    dep = Deployment(make(), colluders=colluders)
    t = dep.params.threshold
    dep.lie(views=same_claim(_claim(claim, t)))
    outcome = dep.run({9: drop_9} if drop_9 is not None else None)
    recipients = [u for u in dep.server.shown if u not in dep.colluders]
    if not dep.params.full_graph and claim != "below-threshold":  # a lie reaches the ring neighbours
        about = 9 if claim != "overlap" else dep.server.shown[recipients[0]][0][-1]
        recipients = [u for u in recipients if u in dep.server.ring(about) | {about}]
    if claim == "below-threshold":
        listed = set(dep.server.shown[recipients[0]][0])
        dep.assert_refused([u for u in recipients if u in listed],
                           f"{t - 1} survivors, fewer than the threshold" if dep.params.full_graph
                           else "survivors, fewer than the threshold")
        dep.assert_refused([u for u in recipients if u not in listed], "does not list client")
    else:
        dep.assert_refused(recipients, message)
    assert not any(isinstance(m, ConsistencySignature) and s in recipients for s, m in dep.server.received)
    if dep.params.full_graph:
        assert isinstance(outcome, AbortError)
    dep.assert_typed(outcome)  # on SecAgg+ only 9's neighbours hold anything of 9 to refuse over
    assert all(dep.recover(u) is None for u in dep.honest)


@pytest.mark.parametrize("claim", ["victim-dropped", "overlap", "below-threshold"])
def test_lie_claims_at_unmasking_differ_from_the_signed_sets(claim):
    dep = Deployment(full(), colluders=(7, 8, 9))
    everyone = tuple(range(10))
    unmask_sets = {"victim-dropped": (everyone[1:], (VICTIM,)), "overlap": (everyone, (9,)),
                   "below-threshold": (everyone[:6], ())}[claim]
    dep.lie(unmask_sets=unmask_sets)  # everyone signs the truth; the request names other sets
    outcome = dep.run()
    dep.assert_refused(dep.honest, "names other survivor/dropped sets than the ones I signed")
    assert isinstance(outcome, AbortError) and dep.responders() == set()


# ======================================================================================================
# The same isolation on the full graph is refused (compare the SecAgg+ finding below)
# ======================================================================================================

def test_lie_isolate_victim_with_scattered_views_full_graph():
    dep = Deployment(full(), colluders=(7, 8, 9))
    dep.lie(views=scatter_views(VICTIM, dep.colluders))
    outcome = dep.run()
    assert len(set(dep.server.shown.values())) == 3
    for u in dep.honest:
        assert NOT_SIGNED_ENOUGH in dep.aborts[u], "no view reaches t = 7 signatures"
    assert isinstance(outcome, AbortError) and dep.responders() == set()
    assert all(dep.recover(u) is None for u in dep.honest)


# ======================================================================================================
# 9. The honest server in malicious mode: exact sums, with dropouts at every stage
# ======================================================================================================

DROPOUTS = [
    {},
    {9: Stage.ADVERTISE_KEYS},
    {9: Stage.SHARE_KEYS},
    {9: Stage.MASKED_INPUT},
    {9: Stage.CONSISTENCY_CHECK},
    {9: Stage.UNMASKING},
    {3: Stage.MASKED_INPUT, 9: Stage.CONSISTENCY_CHECK},
    {2: Stage.SHARE_KEYS, 9: Stage.UNMASKING},
]


@pytest.mark.parametrize("topology", sorted(TOPOLOGIES))
@pytest.mark.parametrize("drops", DROPOUTS,
                         ids=lambda d: "+".join(f"{u}@{s.name}" for u, s in d.items()) or "none")
def test_honest_server_in_malicious_mode_gives_the_exact_sum(topology, drops):
    make, colluders = TOPOLOGIES[topology]
    dep = Deployment(make(), colluders=colluders)
    result = dep.run(drops)
    assert all(dep.recover(u) is None for u in dep.honest), "the colluders' loot never exposes anyone"
    if topology == "secaggplus" and len(drops) > 1:
        # k=6, t=5: two dropouts among one client's neighbours (graph-dependent) leave < t holders
        dep.assert_typed(result)
        assert all("fewer than the threshold" in m for m in dep.aborts.values()), dep.aborts
        return
    assert not dep.aborts and not dep.rejected and not dep.unencodable
    expected_survivors = {u for u in dep.params.client_ids
                          if u not in drops or drops[u] > Stage.MASKED_INPUT}
    assert set(dep.server.survivors) == expected_survivors
    assert np.array_equal(result, dep.exact_sum(expected_survivors))
    # and the library's own runner agrees
    report = run_session(dep.params, dep.inputs, drop_before=drops)
    assert np.array_equal(report.result, result)


LIES = ("none", "split", "inconsistent", "scatter", "claim-overlap", "claim-below-threshold",
        "unmask-other-sets", "strip-directory-signature", "substitute-mask-key", "substitute-enc-key",
        "model", "replay-advertisement", "zero-consistency-signatures", "misroute")


def configure(dep: Deployment, lie: str, victim: int) -> None:
    t = dep.params.threshold
    if lie == "none":
        dep.lie()
    elif lie == "split":
        dep.lie(views=split_halves(victim, dep.colluders))
    elif lie == "inconsistent":
        dep.lie(views=one_view_each(dep.colluders), signatures="all")
    elif lie == "scatter":
        dep.lie(views=scatter_views(victim, dep.colluders))
    elif lie == "claim-overlap":
        dep.lie(views=same_claim(_claim("overlap", t)))
    elif lie == "claim-below-threshold":
        dep.lie(views=same_claim(_claim("below-threshold", t)))
    elif lie == "unmask-other-sets":  # everyone signs the truth; the request says the victim dropped
        def views(s: LyingServer) -> dict[int, Sets]:
            if victim in s.survivors:
                s.unmask_sets = (tuple(u for u in s.survivors if u != victim),
                                 tuple(sorted({*s.dropped, victim})))
            return {u: (s.survivors, s.dropped) for u in s.survivors}
        dep.lie(views=views)
    elif lie == "strip-directory-signature":
        dep.lie(directory_edit=strip_signature(victim))
    elif lie in ("substitute-mask-key", "substitute-enc-key"):
        dep.lie(directory_edit=substitute_key(victim, lie.removeprefix("substitute-").replace("-", "_")))
    elif lie == "model":
        dep.lie(setup_for={victim: dataclasses.replace(dep.params, model_version=b"other")})
    elif lie == "replay-advertisement":
        dep.lie(advert_swap={victim: old_advertisement(dep, victim, dep.params.round + 1)})
    elif lie == "zero-consistency-signatures":
        dep.lie(signature_edit=lambda r, sets, sigs: tuple((u, bytes(64)) for u, _ in sigs))
    elif lie == "misroute":
        dep.lie(forward_edit=misroute(1))
    else:
        raise AssertionError(lie)


@settings(max_examples=30, deadline=None)
@given(data=st.data())
def test_lie_chosen_at_random_with_dropouts_never_leaks_and_honest_sums_are_exact(data):
    n = data.draw(st.integers(4, 12), label="n")
    corrupt = data.draw(st.integers(0, (n - 2) // 2), label="corrupt")
    t = (n + corrupt) // 2 + 1  # the smallest threshold malicious mode accepts
    params = SessionParams(1, b"m", tuple(range(n)), t, n - 1, D, malicious=True, corrupt=corrupt,
                           nonce=NONCE)
    colluders = data.draw(st.lists(st.integers(1, n - 1), min_size=corrupt, max_size=corrupt, unique=True),
                          label="colluders")
    drops = data.draw(st.dictionaries(st.integers(0, n - 1), st.sampled_from(list(Stage)), max_size=n // 3),
                      label="drops")
    lie = data.draw(st.sampled_from(LIES), label="lie")
    dep = Deployment(params, colluders=colluders, seed=n)
    configure(dep, lie, VICTIM)
    outcome = dep.run(drops)
    dep.assert_typed(outcome)  # whatever the lie: a typed abort, or exactly the survivors' sum
    if lie == "none":  # an honest server: a client refuses only when too few peers remain
        assert all("fewer than the threshold" in m for m in dep.aborts.values()), dep.aborts
    for u in dep.honest:
        assert dep.recover(u) is None, f"lie {lie!r} exposed client {u}"


# ======================================================================================================
# 10. Threshold validation of malicious mode
# ======================================================================================================

FULL_RULE = r"^threshold: malicious mode needs t > \(n \+ corrupt\) / 2 = "
SPARSE_RULE = r"^threshold: malicious mode on a SecAgg\+ graph needs degree / 2 < t <= degree "


@pytest.mark.parametrize(("n", "corrupt"), [(4, 0), (4, 1), (10, 0), (10, 3), (12, 5)])
def test_malicious_threshold_validation_full_graph(n, corrupt):
    for t in range(1, n + 1):
        if 2 * t <= n + corrupt:
            with pytest.raises(ConfigError, match=FULL_RULE):
                SessionParams(1, b"", tuple(range(n)), t, n - 1, D, malicious=True, corrupt=corrupt,
                              nonce=NONCE)
        else:
            SessionParams(1, b"", tuple(range(n)), t, n - 1, D, malicious=True, corrupt=corrupt,
                          nonce=NONCE)
        SessionParams(1, b"", tuple(range(n)), t, n - 1, D, malicious=False, corrupt=corrupt,
                      nonce=NONCE)  # no such rule


@pytest.mark.parametrize("k", [2, 4, 6, 8])
def test_malicious_threshold_validation_secaggplus(k):
    for t in range(1, k + 2):  # the owner's share does not count: t must be a majority of k, and <= k
        if not k < 2 * t <= 2 * k:
            with pytest.raises(ConfigError, match=SPARSE_RULE):
                SessionParams(1, b"", tuple(range(12)), t, k, D, malicious=True, nonce=NONCE)
        else:
            SessionParams(1, b"", tuple(range(12)), t, k, D, malicious=True, nonce=NONCE)


def test_lie_setup_with_a_lowered_malicious_threshold_does_not_decode():
    params = full(10, 7, 3)
    good = encode(Setup(params))
    assert good.count(bytes([0x07, 0x09, 0x08])) == 1  # threshold, degree, vector_length as fixints
    raw = good.replace(bytes([0x07, 0x09, 0x08]), bytes([0x05, 0x09, 0x08]))  # a lying server lowers t to 5
    with pytest.raises(WireError, match="threshold"):
        decode(raw)


# ======================================================================================================
# Former findings, fixed: regression tests
# ======================================================================================================

def test_lie_isolate_victim_with_three_views_secaggplus():
    dep = Deployment(sparse(12, 4, 3, 0))
    dep.lie(views=isolation_views(VICTIM))
    dep.run()
    if len(set(dep.server.shown.values())) != 3:
        pytest.fail("precondition: three distinct views")
    assert not dep.leaks(VICTIM), (
        f"x_{VICTIM} recovered exactly; refusals: {dep.aborts}; "
        f"b_{VICTIM} from {sorted(dep.revealed('b', VICTIM))}")


def test_lie_ask_for_both_shares_at_the_finder_threshold_secaggplus():
    k, t = secaggplus_parameters(10, 0.1, 0.1, malicious=True)
    if (k, t) != (4, 3):
        pytest.fail(f"precondition: finder gives (4, 3), got {(k, t)}")
    dep = Deployment(sparse(10, k, t, 1), colluders=(9,))
    dep.lie(views=finder_split_views(colluder=9))
    dep.run()
    victim = dep.server.victim
    if victim is None or 9 not in dep.server.neighbours(victim):
        pytest.fail("precondition: the victim neighbours the colluder")
    assert not dep.leaks(victim), (
        f"x_{victim} recovered exactly: b from {sorted(dep.revealed('b', victim))} + colluder, "
        f"s from {sorted(dep.revealed('s', victim))} + colluder, t={t}")


def finder_split_views(colluder: int) -> ViewsFn:
    """The split request against a neighbour of ``colluder``: the victim and one honest neighbour reveal
    b_victim, the other honest neighbours s_victim, each adding the colluder's shares. Non-neighbours are
    placed so that every revealer sees t signers of its view even within its own neighbourhood: the
    attack does not depend on consistency signatures being counted globally."""
    def views(server: LyingServer) -> dict[int, Sets]:
        t = server.params.threshold
        for victim in sorted(server.neighbours(colluder)):
            near = sorted(server.neighbours(victim) - {colluder})
            far = [u for u in server.survivors if u not in {colluder, victim, *near}]
            for b_near in near:
                s_near = [u for u in near if u != b_near]
                for bits in itertools.product((0, 1), repeat=len(far)):
                    group_b = [victim, b_near, *(f for f, x in zip(far, bits, strict=True) if not x)]
                    group_s = [*s_near, *(f for f, x in zip(far, bits, strict=True) if x)]
                    shown = split_views(victim, group_b, group_s)(server)
                    if all(_local_signers(server, shown, u, {colluder}) >= t for u in (victim, *near)):
                        return shown
        pytest.fail("precondition: no assignment with t local signers for every revealer")
    return views


def _local_signers(server: LyingServer, shown: Mapping[int, Sets], u: int, colluders: set[int]) -> int:
    """How many of ``u``'s closed neighbourhood sign ``u``'s view (colluders sign any view)."""
    view = shown[u]
    return sum(1 for w in server.neighbours(u) | {u}
               if w in view[0] and (w in colluders or shown.get(w) == view))


def test_malicious_secaggplus_parameters_are_checked_against_the_corruption_they_claim():
    """n = 12, k = 4, t = 3 with 3 corrupt clients passed the majority rule alone: 3 colluding
    neighbours of a 4-neighbour client reach t = 3 shares. The finder's bound refuses it, naming the
    bound and the threshold that meets it; every (k, t) the finder picks passes."""
    from secagg.protocol.finder import secure_threshold

    with pytest.raises(ConfigError, match=r"t=3 .* corrupt=3 .* above 2\^-40.*raise the threshold to >= 4"):
        SessionParams(1, b"", tuple(range(12)), 3, 4, D, malicious=True, corrupt=3,
                      nonce=NONCE)
    SessionParams(1, b"", tuple(range(12)), 4, 4, D, malicious=True, corrupt=3, nonce=NONCE)
    SessionParams(1, b"", tuple(range(12)), 3, 4, D, malicious=True, corrupt=0,
                  nonce=NONCE)  # no corruption claimed
    for n in (20, 100, 1000, 10_000):
        for corrupt_fraction in (0.05, 0.2, 0.3):
            k, t = secaggplus_parameters(n, corrupt_fraction, 0.05, malicious=True)
            corrupt = int(corrupt_fraction * n + 1e-9)
            assert secure_threshold(n, k, corrupt, malicious=True) == t
            SessionParams(1, b"", tuple(range(n)), t, k, D, malicious=True, corrupt=corrupt)
            rule = "probability above 2\\^-40" if 2 * (t - 1) > k else SPARSE_RULE  # the majority rule first
            with pytest.raises(ConfigError, match=rule):
                SessionParams(1, b"", tuple(range(n)), t - 1, k, D, malicious=True, corrupt=corrupt)


@settings(max_examples=40, deadline=None)
@given(st.integers(8, 400), st.data())
def test_secure_threshold_bounds_the_corrupt_neighbours(n, data):
    """Below the secure threshold the corrupt neighbours of one client reach t with probability above
    2^-41 / n (computed independently from the hypergeometric tail); at it, below."""
    import math

    from scipy.stats import hypergeom

    from secagg.protocol.finder import secure_threshold

    k = data.draw(st.integers(1, (n - 2) // 2).map(lambda h: 2 * h))
    corrupt = data.draw(st.integers(0, n // 3))
    t = secure_threshold(n, k, corrupt)
    tail = lambda x: hypergeom(n, corrupt, k).sf(x)  # noqa: E731 - P[X > x]
    assert t >= 2 and tail(t - 1) < 2.0**-41 / n * (1 + 1e-6)
    if t > 2:
        assert tail(t - 2) >= 2.0**-41 / n * (1 - 1e-6)
    assert secure_threshold(n, n - 1, corrupt) == corrupt + 1
    assert secure_threshold(n, n - 1, corrupt, malicious=True) == (n + corrupt) // 2 + 1
    assert math.isfinite(tail(0))
