"""The server side of one secure-aggregation session, as a sans-I/O state machine.

The transport feeds every client message to :meth:`Server.receive` and, when the stage is over
(everyone answered, or the deadline passed: the transport's call), calls :meth:`Server.advance` to
get the next batch of outgoing messages. A message that breaks the protocol raises
:class:`ProtocolError` and leaves the server's state exactly as it was, so the transport can log it
and carry on: a hostile client cannot crash the round. When fewer than ``t`` clients remain, or a
secret cannot be recovered, :meth:`advance` raises :class:`AbortError`.

The server learns ``sum(x_u for u in U3) mod 2^bits`` and nothing else about individual inputs.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Collection, Mapping
from enum import Enum

import numpy as np

from secagg.crypto.keys import DHKeyPair, is_low_order, verify_signature
from secagg.crypto.prg import accumulate_masks
from secagg.crypto.shamir import P, Share, reconstruct
from secagg.errors import AbortError, LocalProtocolError, ProtocolError, RemoteProtocolError
from secagg.protocol.graph import neighbour_table
from secagg.protocol.merkle import MerkleTree
from secagg.protocol.messages import (
    COMMITMENT_BYTES,
    NONCE_BYTES,
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
    members_tree,
)
from secagg.protocol.packing import unpack_words
from secagg.protocol.session import (
    advertisement_message,
    consistency_message,
    mask_seed,
    mask_sign,
    seed_commitment,
    session_id,
    share_point,
    status_tree,
)

Outgoing = list[tuple[int, Message]]  # (recipient client id, message)


class ServerPhase(Enum):
    NEW = "new"
    COLLECT_KEYS = "collect-keys"
    COLLECT_SHARES = "collect-shares"
    COLLECT_CHECKS = "collect-checks"
    COLLECT_MASKED = "collect-masked"
    COLLECT_CONSISTENCY = "collect-consistency"  # malicious mode only
    COLLECT_UNMASK = "collect-unmask"
    DONE = "done"
    ABORTED = "aborted"


#: Every transition of the server, in one table (as h11 keeps its ``EVENT_TRIGGERED_TRANSITIONS``):
#: collecting phase -> (the client message it collects, that stage, the step that closes the stage,
#: the next phase in honest-server mode, in malicious-server mode). :meth:`Server.start` moves NEW
#: to COLLECT_KEYS; a closing step that raises :class:`AbortError` moves to ABORTED instead.
TRANSITIONS: dict[ServerPhase, tuple[type[Message], Stage, str, ServerPhase, ServerPhase]] = {
    ServerPhase.COLLECT_KEYS: (AdvertiseKeys, Stage.ADVERTISE_KEYS, "_after_keys",
                               ServerPhase.COLLECT_SHARES, ServerPhase.COLLECT_SHARES),
    ServerPhase.COLLECT_SHARES: (ShareKeys, Stage.SHARE_KEYS, "_after_shares",
                                 ServerPhase.COLLECT_CHECKS, ServerPhase.COLLECT_CHECKS),
    ServerPhase.COLLECT_CHECKS: (ShareCheck, Stage.SHARE_CHECK, "_after_checks",
                                 ServerPhase.COLLECT_MASKED, ServerPhase.COLLECT_MASKED),
    ServerPhase.COLLECT_MASKED: (MaskedInput, Stage.MASKED_INPUT, "_after_masked",
                                 ServerPhase.COLLECT_UNMASK, ServerPhase.COLLECT_CONSISTENCY),
    ServerPhase.COLLECT_CONSISTENCY: (ConsistencySignature, Stage.CONSISTENCY_CHECK, "_after_consistency",
                                      ServerPhase.COLLECT_UNMASK, ServerPhase.COLLECT_UNMASK),
    ServerPhase.COLLECT_UNMASK: (UnmaskResponse, Stage.UNMASKING, "_unmask",
                                 ServerPhase.DONE, ServerPhase.DONE),
}
_EXPECTS = {phase: (row[0], row[1]) for phase, row in TRANSITIONS.items()}


class Server:
    """Runs one session for ``params``; :attr:`result` holds the sum once :attr:`phase` is DONE.

    In malicious mode an honest server given the ``registry`` of trusted client keys also checks
    signatures as they arrive (clients never rely on that: they verify everything themselves).
    """

    def __init__(self, params: SessionParams, registry: Mapping[int, bytes] | None = None) -> None:
        if not params.nonce:  # fresh per session: binds every advertisement to this session alone
            params = dataclasses.replace(params, nonce=os.urandom(NONCE_BYTES))
        self.params = params
        self.registry = dict(registry) if registry is not None else None
        self.consistency: dict[int, bytes] = {}
        self.phase = ServerPhase.NEW
        self.session = b""
        self.result: np.ndarray | None = None
        self.keys: dict[int, AdvertiseKeys] = {}
        self.shares: dict[int, ShareKeys] = {}
        self.checks: set[int] = set()  # sent their ShareCheck
        #: taken out of the session after the share check: fewer than t of their holders accepted
        #: their shares (nobody masks with them; they are neither survivors nor dropped)
        self.excluded: frozenset[int] = frozenset()
        self.masked: set[int] = set()
        self.responses: dict[int, UnmaskResponse] = {}
        #: survivor -> the neighbours whose shares it refused (did not decrypt or were malformed): the
        #: operator's report of who sent bad shares (or of who claims so)
        self.refused: dict[int, tuple[int, ...]] = {}
        #: responder -> the clients whose secret it returned a wrong share of (identified by leaving
        #: each share out in turn until the rebuilt secret verified; the round went on without it)
        self.wrong_shares: dict[int, list[int]] = {}
        self._sum = np.zeros(params.vector_length, dtype=np.uint32)
        self.survivors: tuple[int, ...] = ()
        self.dropped: tuple[int, ...] = ()
        self._invited = frozenset(params.client_ids)
        self._survivor_cache: tuple[tuple[int, ...], frozenset[int]] = ((), frozenset())
        self._dropped_set: frozenset[int] = frozenset()
        self._maskers_cache: tuple[frozenset[int] | None, frozenset[int]] = (None, frozenset())
        self._seen_keys: set[bytes] = set()  # every advertised public key: a replay is refused in O(1)
        self._index = {u: i for i, u in enumerate(params.client_ids)}
        self._ids = np.asarray(params.client_ids, dtype=np.int64)
        # SecAgg+: the ring, O(n k) integers (no per-client sets: those would be O(n k) objects)
        self._table = None if params.full_graph else neighbour_table(params)
        self._members = members_tree(params.client_ids)  # (built once, with params.members_root)
        self._advertisers: frozenset[int] = frozenset()
        self._entries: dict[int, KeyEntry] = {}
        self._status_root = b""
        self._status_tree: MerkleTree | None = None

    def ring(self, u: int) -> frozenset[int]:
        """``u``'s ring neighbours as Setup fixed them, whether they advertised keys or not: O(k)."""
        if self._table is None:
            return self._invited - {u}
        return frozenset(self._ids[self._table[self._index[u]]].tolist())

    def neighbours(self, u: int) -> frozenset[int]:
        """``u``'s ring neighbours that advertised keys (its neighbours in this session): O(k)."""
        if self._table is None:
            return self._advertisers - {u}
        return frozenset(v for v in self._ids[self._table[self._index[u]]].tolist() if v in self.keys)

    @property
    def stage(self) -> Stage | None:
        """The client stage being collected now (``None`` before start and after the end)."""
        expected = _EXPECTS.get(self.phase)
        return expected[1] if expected else None

    @property
    def _survivor_set(self) -> frozenset[int]:
        """``survivors`` as a set, rebuilt only when ``survivors`` is replaced."""
        if self._survivor_cache[0] is not self.survivors:
            self._survivor_cache = (self.survivors, frozenset(self.survivors))
        return self._survivor_cache[1]

    def _pool_and_got(self) -> tuple[Collection[int], Collection[int]]:
        """Who may answer the current stage, and who has (a subset of it); both O(1) membership."""
        if self.phase is ServerPhase.COLLECT_KEYS:
            return self._invited, self.keys
        if self.phase is ServerPhase.COLLECT_SHARES:
            return self.keys, self.shares
        if self.phase is ServerPhase.COLLECT_CHECKS:
            return self.shares, self.checks
        if self.phase is ServerPhase.COLLECT_MASKED:
            return self._maskers, self.masked
        if self.phase is ServerPhase.COLLECT_CONSISTENCY:
            return self._survivor_set, self.consistency
        if self.phase is ServerPhase.COLLECT_UNMASK:
            return (self.consistency if self.params.malicious else self._survivor_set), self.responses
        return (), ()

    def expected_senders(self) -> frozenset[int]:
        """Who may still send a message in the current stage."""
        pool, got = self._pool_and_got()
        return frozenset(pool) - frozenset(got)

    def answered(self) -> int:
        """How many clients have answered the current stage (0 before start and after the end)."""
        return len(self._pool_and_got()[1])

    def stage_complete(self) -> bool:
        """True when every client that could answer in this stage has answered."""
        pool, got = self._pool_and_got()
        return self.stage is not None and len(got) == len(pool)  # got is a subset of pool

    # -- transport interface ---------------------------------------------------------------------

    def start(self) -> Outgoing:
        """Begin the session: the Setup message for every invited client."""
        if self.phase is not ServerPhase.NEW:
            raise LocalProtocolError("server: session already started")
        self.phase = ServerPhase.COLLECT_KEYS
        if self.params.full_graph:
            setup = Setup(self.params)
            return [(u, setup) for u in self.params.client_ids]
        # SecAgg+: each client gets its place in the member list and the O(log n) proof of it
        return [(u, Setup(self.params, i, self._members.multiproof([i])))
                for i, u in enumerate(self.params.client_ids)]

    def receive(self, message: Message, *, sender: int | None = None) -> None:
        """Validate and record one client message; :class:`ProtocolError` (state unchanged) if bad.

        ``sender``: the client id the transport authenticated (TLS identity, connection); a message
        claiming to come from anyone else is refused. Transports should always pass it: the
        ``sender`` field inside a message is only a claim.
        """
        if sender is not None and getattr(message, "sender", sender) != sender:
            raise RemoteProtocolError(f"server: a message from client {sender} claims to come from client "
                                      f"{message.sender}")  # type: ignore[union-attr]
        expected = _EXPECTS.get(self.phase)
        if expected is None:
            raise RemoteProtocolError(f"server: no client message expected in phase {self.phase.value}")
        cls, stage = expected
        if not isinstance(message, cls):
            raise RemoteProtocolError(f"server: {type(message).__name__} received during stage {stage.name} "
                                      f"(wrong round)")
        sender = message.sender
        pool, got = self._pool_and_got()  # O(1) per message: this runs for every client message
        if sender not in pool or sender in got:
            seen = {AdvertiseKeys: self.keys, ShareKeys: self.shares, ShareCheck: self.checks,
                    MaskedInput: self.masked,
                    ConsistencySignature: self.consistency, UnmaskResponse: self.responses}[cls]
            already = sender in seen
            raise RemoteProtocolError(f"server: {'duplicate' if already else 'unexpected'} {cls.__name__} "
                                      f"from client {sender}")
        if cls is not AdvertiseKeys and message.session_id != self.session:
            raise RemoteProtocolError(f"server: {cls.__name__} from client {sender} is for another session")
        getattr(self, f"_receive_{cls.__name__}")(message)

    def advance(self) -> Outgoing:
        """Close the current stage; the messages that start the next one. :class:`AbortError` if too few."""
        row = TRANSITIONS.get(self.phase)
        if row is None:
            raise LocalProtocolError(f"server: nothing to advance in phase {self.phase.value}")
        _, _, close, honest, malicious = row
        try:
            out = getattr(self, close)()
        except AbortError:
            self.phase = ServerPhase.ABORTED
            raise
        self.phase = malicious if self.params.malicious else honest
        return out or []

    # -- receiving ---------------------------------------------------------------------------------

    def _receive_AdvertiseKeys(self, msg: AdvertiseKeys) -> None:
        for name in ("enc_key", "mask_key"):
            if is_low_order(getattr(msg, name)):
                raise RemoteProtocolError(f"server: {name} of client {msg.sender} is a low-order X25519 key")
        if not self.params.malicious and msg.signature:
            # a directory mixes signed and unsigned entries only if we let it: refuse, don't relay
            raise RemoteProtocolError(f"server: client {msg.sender} signed its advertisement in a session "
                                      f"without malicious-server mode")
        if self.params.malicious:
            if not msg.signature:
                raise RemoteProtocolError(f"server: the advertisement of client {msg.sender} is unsigned")
            if self.registry is not None:
                trusted = self.registry.get(msg.sender)
                if trusted is None:
                    raise RemoteProtocolError(f"server: client {msg.sender} is not in the trusted registry")
                verify_signature(trusted, msg.signature,
                                 advertisement_message(self.params, msg.sender, msg.enc_key, msg.mask_key,
                                                       msg.commitment),
                                 signer=msg.sender)
        if len(msg.commitment) != COMMITMENT_BYTES:
            raise RemoteProtocolError(f"server: client {msg.sender} advertised no self-mask seed commitment")
        if msg.enc_key == msg.mask_key:
            raise RemoteProtocolError(f"server: client {msg.sender} advertised the same key twice")
        if msg.enc_key in self._seen_keys or msg.mask_key in self._seen_keys:
            raise RemoteProtocolError(f"server: client {msg.sender} advertised another client's key (replay)")
        self._seen_keys.update((msg.enc_key, msg.mask_key))
        self.keys[msg.sender] = msg

    def _receive_ShareKeys(self, msg: ShareKeys) -> None:
        expected = self.neighbours(msg.sender)
        if len(msg.shares) != len(expected) or any(r not in expected for r, _ in msg.shares):
            raise RemoteProtocolError(
                f"server: client {msg.sender} must send exactly one share to each of its "
                f"{len(expected)} neighbours")
        self.shares[msg.sender] = msg

    def _receive_MaskedInput(self, msg: MaskedInput) -> None:
        # the words packed at the ring's width: a wrong length or stray padding bits are refused
        y = unpack_words(msg.vector, self.params.bits, self.params.vector_length,
                         what=f"server: masked input of client {msg.sender}")
        np.add(self._sum, y, out=self._sum)  # wraps mod 2^32; reduced mod 2^bits at the end
        self.masked.add(msg.sender)

    def _receive_ShareCheck(self, msg: ShareCheck) -> None:
        # O(|refused|), not O(n): this runs once per client
        near = self.neighbours(msg.sender) if msg.refused else frozenset()
        unknown = [v for v in msg.refused if v not in self.shares or v not in near]
        if unknown:
            raise RemoteProtocolError(f"server: client {msg.sender} reports refused shares from {unknown}, "
                                      f"who sent it none")
        self.checks.add(msg.sender)
        if msg.refused:
            self.refused[msg.sender] = msg.refused  # sorted and unique: the wire format checks it

    def _receive_ConsistencySignature(self, msg: ConsistencySignature) -> None:
        if self.registry is not None:
            verify_signature(self.registry[msg.sender], msg.signature,
                             consistency_message(self.session, self._status_root), signer=msg.sender)
        self.consistency[msg.sender] = msg.signature

    def _receive_UnmaskResponse(self, msg: UnmaskResponse) -> None:
        holders = self.neighbours(msg.sender) | ({msg.sender} if self.params.own_share_counts else set())
        holders -= set(self.refused.get(msg.sender, ()))  # it holds none of those peers' shares
        want_b = holders & self._survivor_set
        want_s = holders & self._dropped_set
        if {v for v, _ in msg.self_mask_shares} != want_b or len(msg.self_mask_shares) != len(want_b):
            raise RemoteProtocolError(f"server: client {msg.sender} must return self-mask shares for exactly "
                                      f"{sorted(want_b)}")
        if {v for v, _ in msg.mask_key_shares} != want_s or len(msg.mask_key_shares) != len(want_s):
            raise RemoteProtocolError(f"server: client {msg.sender} must return mask-key shares for exactly "
                                      f"{sorted(want_s)}")
        # every share a field element (the wire fixed their length): a share >= P is refused here
        if any(int.from_bytes(data, "big") >= P for _, data in msg.self_mask_shares + msg.mask_key_shares):
            raise RemoteProtocolError(f"server: client {msg.sender} returned a share outside the field")
        self.responses[msg.sender] = msg

    # -- advancing ---------------------------------------------------------------------------------

    def _need(self, count: int, what: str) -> None:
        if count < self.params.threshold:
            raise AbortError(f"only {count} clients {what}, fewer than the threshold t="
                             f"{self.params.threshold}: round aborted")

    def _after_keys(self) -> Outgoing:
        self._need(len(self.keys), "advertised keys")
        p = self.params
        self.session = session_id(p)
        self._advertisers = frozenset(self.keys)
        self._entries = {u: KeyEntry(u, a.enc_key, a.mask_key, a.signature, a.commitment, self._index[u])
                         for u, a in sorted(self.keys.items())}
        if self._table is None:  # the full graph: one directory for everyone
            directory = KeyDirectory(tuple(self._entries.values()))
            return [(u, directory) for u in self._entries]
        # SecAgg+: each client's own entry and its ring neighbours' (the non-advertisers are holes);
        # in malicious mode with the proof that these are the members at those places
        out: Outgoing = []
        for u in self._entries:
            entries = tuple(self._entries[v] for v in sorted(self.neighbours(u) | {u}))
            proof = self._members.multiproof([e.index for e in entries]) if p.malicious else b""
            out.append((u, KeyDirectory(entries, proof)))
        return out

    def _after_shares(self) -> Outgoing:
        self._need(len(self.shares), "shared keys")
        inbox: dict[int, list[tuple[int, bytes]]] = {u: [] for u in self.shares}
        for sender in sorted(self.shares):
            for recipient, ciphertext in self.shares[sender].shares:
                if recipient in inbox:
                    inbox[recipient].append((sender, ciphertext))
        return [(u, ForwardedShares(u, self.session, tuple(inbox[u]))) for u in sorted(inbox)]

    def _after_checks(self) -> Outgoing:
        """Take out every client fewer than t of whose holders can open its shares (a sender of bad
        ciphertexts, or one whose holders left): its secrets could not be rebuilt, so nobody masks
        with it and the round goes on without it. Then ask the others to mask."""
        self._need(len(self.checks), "checked their shares")
        t, own = self.params.threshold, 1 if self.params.own_share_counts else 0
        refusers: dict[int, set[int]] = {}
        for u, peers in self.refused.items():
            for v in peers:
                refusers.setdefault(v, set()).add(u)
        excluded: set[int] = set()

        def holders(v: int) -> int:
            """Kept checkers that can open v's shares (its own share: while it is there to reveal it)."""
            if self._table is None:
                live = len(self.checks) - len(excluded & self.checks) - (v in self.checks)
            else:
                live = sum(1 for w in self.neighbours(v) if w in self.checks and w not in excluded)
            return live - len(refusers.get(v, set()) - excluded) + (own if v in self.checks else 0)

        # to a fixpoint: a client taken out no longer holds anyone's shares, so its neighbours are
        # looked at again (a worklist: one pass when nobody is short, the common case)
        pending = set(self.shares)
        while pending:
            v = pending.pop()
            if v not in excluded and holders(v) < t:
                excluded.add(v)
                pending |= (set(self.shares) if self._table is None else set(self.neighbours(v))) - excluded
        self.excluded = frozenset(excluded)
        self._need(len(self.checks - self.excluded), "checked their shares and kept enough holders")
        out: Outgoing = []
        for u in sorted(self.checks - self.excluded):
            out.append((u, MaskRequest(self.session, tuple(sorted(self.neighbours(u) & self.excluded)))))
        return out

    @property
    def _maskers(self) -> frozenset[int]:
        """Who may send a masked input: the share checkers the check kept in."""
        if self._maskers_cache[0] is not self.excluded:
            self._maskers_cache = (self.excluded, frozenset(self.checks - self.excluded))
        return self._maskers_cache[1]

    def _after_masked(self) -> Outgoing:
        self._need(len(self.masked), "sent masked inputs")
        self.survivors = tuple(sorted(self.masked))
        self.dropped = tuple(sorted(set(self.shares) - self.excluded - self.masked))
        self._dropped_set = frozenset(self.dropped)
        if self.params.malicious:
            # one status per member under one root that every survivor signs (O(n) for the server)
            self._status_tree = status_tree(self.params.client_ids, self._survivor_set, self._dropped_set,
                                            self.excluded)
            self._status_root = self._status_tree.root
        return [(u, self._request(u, ConsistencyRequest if self.params.malicious else UnmaskRequest))
                for u in self.survivors]

    def _request(self, u: int, kind: type, signatures: tuple[tuple[int, bytes], ...] = ()) -> Message:
        """``u``'s ConsistencyRequest or UnmaskRequest: the survivors and the dropped among its
        neighbours and itself (on the full graph: all), O(k)."""
        near = self.neighbours(u) | {u}
        if self._table is None:
            survivors, dropped = self.survivors, self.dropped
        else:
            survivors = tuple(sorted(near & self._survivor_set))
            dropped = tuple(sorted(near & self._dropped_set))
        if kind is UnmaskRequest:
            return UnmaskRequest(self.session, survivors, dropped, signatures)
        assert self._status_tree is not None
        indices = [self._index[v] for v in near]
        return ConsistencyRequest(self.session, survivors, dropped, self._status_root,
                                  self._status_tree.multiproof(indices))

    def _after_consistency(self) -> Outgoing:
        self._need(len(self.consistency), "signed the survivor set")
        everyone = tuple(sorted(self.consistency.items()))
        out: Outgoing = []
        for u in sorted(self.consistency):
            # its share holders' signatures (on the full graph: everybody's)
            mine = everyone if self._table is None else tuple(
                (v, self.consistency[v]) for v in sorted(self.neighbours(u) | {u}) if v in self.consistency)
            out.append((u, self._request(u, UnmaskRequest, mine)))
        return out

    def _index_shares(self) -> dict[tuple[str, int], list[tuple[int, bytes]]]:
        """(kind, owner) -> [(responder, share bytes)], responders in increasing id order."""
        index: dict[tuple[str, int], list[tuple[int, bytes]]] = {}
        for responder in sorted(self.responses):
            response = self.responses[responder]
            for kind, pairs in (("b", response.self_mask_shares), ("s", response.mask_key_shares)):
                for owner, data in pairs:
                    index.setdefault((kind, owner), []).append((responder, data))
        return index

    def _recover(self, index: dict[tuple[str, int], list[tuple[int, bytes]]], owner: int,
                 kind: str) -> bytes:
        """``owner``'s secret from the returned shares, checked against what its owner advertised (the
        self-mask seed against its commitment, the mask key against its public key).

        A wrong share can therefore never turn into a wrong sum. With more than ``t`` shares a check
        that fails is retried with each share in turn left out: a single wrong share is identified
        (its sender is recorded in :attr:`wrong_shares`) and the round goes on with the verified
        secret. :class:`AbortError` if too few shares came back or no ``t`` of them verify.
        """
        what = "self-mask seed" if kind == "b" else "mask key"
        found = index.get((kind, owner), [])
        t = self.params.threshold
        if len(found) < t:
            refusers = sorted(r for r, peers in self.refused.items() if owner in peers)
            why = (f" ({len(refusers)} neighbour(s) refused its shares as undecryptable or malformed: "
                   f"{refusers[:10]})" if refusers else "")
            raise AbortError(f"only {len(found)} shares of client {owner}'s {what} came back, fewer than "
                             f"the threshold t={t}{why}: round aborted")
        shares = [Share.from_bytes(share_point(responder), data) for responder, data in found]
        secret = self._rebuilt(owner, kind, shares[:t])
        if secret is not None:
            return secret
        for left_out in range(t + 1 if len(shares) > t else 0):
            secret = self._rebuilt(owner, kind, [s for i, s in enumerate(shares[: t + 1]) if i != left_out])
            if secret is not None:
                self.wrong_shares.setdefault(found[left_out][0], []).append(owner)
                return secret
        raise AbortError(f"the reconstructed {what} of client {owner} does not match its "
                         f"{'commitment' if kind == 'b' else 'advertised key'}: some share was wrong; "
                         f"round aborted")

    def _rebuilt(self, owner: int, kind: str, shares: list[Share]) -> bytes | None:
        """The secret these ``t`` shares interpolate, if it is the one ``owner`` advertised; else None."""
        try:
            secret = reconstruct(shares, self.params.threshold)
        except ProtocolError:  # e.g. an interpolated value >= 2^256: a wrong share, like any other
            return None
        if kind == "b":
            ok = seed_commitment(self.params, owner, secret) == self.keys[owner].commitment
        else:
            ok = DHKeyPair.from_private_bytes(secret).public == self.keys[owner].mask_key
        return secret if ok else None

    def _unmask(self) -> None:
        self._need(len(self.responses), "answered the unmask request")
        index = self._index_shares()
        masks: list[tuple[bytes, int]] = []
        for u in self.survivors:
            masks.append((self._recover(index, u, "b"), -1))
        survivors = self._survivor_set
        for v in self.dropped:
            key = DHKeyPair.from_private_bytes(self._recover(index, v, "s"))
            for w in sorted(self.neighbours(v) & survivors):
                seed = mask_seed(key.agree(self.keys[w].mask_key, peer=w), self.session, v, w)
                masks.append((seed, -mask_sign(w, v)))  # w added sign(w, v) * PRG(s_wv): remove it
        total = self._sum.copy()
        accumulate_masks(total, masks)
        if self.params.bits < 32:
            np.bitwise_and(total, np.uint32((1 << self.params.bits) - 1), out=total)
        self.result = total
