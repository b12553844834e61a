"""The client side of one secure-aggregation session, as a sans-I/O state machine.

``Client.handle(message) -> reply`` is the whole interface: no sockets, threads or clocks. Feed it
the server's messages in order; send back what it returns. Any violation (a message for another
stage or session, a forged share, a low-order key, a server asking for both shares of one peer)
raises :class:`ProtocolError` and moves the client to ``ABORTED`` for good: it then refuses every
further message and has revealed nothing beyond what the protocol allows.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from enum import Enum

import numpy as np

from secagg.crypto import aead
from secagg.crypto.keys import PRIVATE_KEY_BYTES, DHKeyPair, SigningKey, verify_signature
from secagg.crypto.prg import SEED_BYTES, accumulate_masks
from secagg.crypto.shamir import SHARE_BYTES, Share, split
from secagg.errors import ConfigError, LocalProtocolError, ProtocolError, RemoteProtocolError
from secagg.protocol.graph import ring_neighbours
from secagg.protocol.merkle import leaf_hash, verify_multiproof
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
    UnmaskRequest,
    UnmaskResponse,
    member_leaf,
    status_leaf,
    status_of,
)
from secagg.protocol.session import (
    advertisement_message,
    consistency_message,
    mask_seed,
    mask_sign,
    seed_commitment,
    session_id,
    share_key,
    share_point,
)


class ClientPhase(Enum):
    NEW = "new"
    ADVERTISED = "advertised"      # sent AdvertiseKeys, waits for the KeyDirectory
    SHARED = "shared"              # sent ShareKeys, waits for ForwardedShares
    CHECKED = "checked"            # sent ShareCheck (its refusals), waits for the MaskRequest
    MASKED = "masked"              # sent MaskedInput, waits for the UnmaskRequest (or ConsistencyRequest)
    SIGNED = "signed"              # malicious mode: signed the survivor sets, waits for the UnmaskRequest
    DONE = "done"                  # answered the UnmaskRequest
    ABORTED = "aborted"


_MODES = (False, True)  # honest-server mode, malicious-server mode
#: Every transition of a client, in one table (as h11 keeps its ``EVENT_TRIGGERED_TRANSITIONS``):
#: (phase, malicious mode) -> (the server message it waits for, the step that answers it, the phase
#: after that step succeeded). Any other message is refused; a failed step aborts the session.
TRANSITIONS: dict[tuple[ClientPhase, bool], tuple[type[Message], str, ClientPhase]] = {
    **{(ClientPhase.NEW, m): (Setup, "_on_setup", ClientPhase.ADVERTISED) for m in _MODES},
    **{(ClientPhase.ADVERTISED, m): (KeyDirectory, "_on_directory", ClientPhase.SHARED) for m in _MODES},
    **{(ClientPhase.SHARED, m): (ForwardedShares, "_on_shares", ClientPhase.CHECKED) for m in _MODES},
    **{(ClientPhase.CHECKED, m): (MaskRequest, "_on_mask_request", ClientPhase.MASKED) for m in _MODES},
    (ClientPhase.MASKED, False): (UnmaskRequest, "_on_unmask", ClientPhase.DONE),
    (ClientPhase.MASKED, True): (ConsistencyRequest, "_on_consistency", ClientPhase.SIGNED),
    (ClientPhase.SIGNED, True): (UnmaskRequest, "_on_unmask", ClientPhase.DONE),
    # a repeated request is answered again: the shares it may reveal are pinned by _revealed
    **{(ClientPhase.DONE, m): (UnmaskRequest, "_on_unmask", ClientPhase.DONE) for m in _MODES},
}


class Client:
    """One client's session. ``value`` is its input: ``d`` uint32 words (already quantized).

    The state machine guarantees, per peer, that it reveals either the share of the peer's self-mask
    seed (peer survived) or the share of the peer's mask key (peer dropped), never both.

    Malicious-server mode: give the client its long-term Ed25519 ``identity`` and the deployment's
    ``registry`` (client id -> trusted Ed25519 public key). It then signs its key advertisement,
    verifies every advertisement in the directory, signs the survivor sets it is shown, and reveals
    shares only if at least t survivors signed exactly the same sets. Such a client refuses a
    session that is not in malicious mode.
    """

    def __init__(self, client_id: int, value: np.ndarray, *, identity: SigningKey | None = None,
                 registry: Mapping[int, bytes] | None = None) -> None:
        if not isinstance(value, np.ndarray) or value.dtype != np.uint32 or value.ndim != 1:
            raise ConfigError("value: must be a 1-D uint32 array (quantize the update first)")
        if (identity is None) != (registry is None):
            raise ConfigError("identity, registry: malicious-server mode needs both (or neither)")
        if identity is not None and registry is not None and registry.get(client_id) != identity.public:
            raise ConfigError(f"registry: does not hold client {client_id}'s identity public key")
        self._identity = identity
        self._registry = dict(registry) if registry is not None else None
        self._signed: tuple[tuple[int, ...], tuple[int, ...]] | None = None
        self._status_root = b""  # malicious mode: the status root this client signed
        self.id = client_id
        self._value = value
        self.phase = ClientPhase.NEW
        self.params: SessionParams | None = None
        self.session: bytes = b""
        self._enc = DHKeyPair.generate()
        self._mask = DHKeyPair.generate()
        self._self_seed = b""
        self._commitment = b""
        self._index = 0  # our place in the sorted member list (our leaf in the members' tree)
        self._directory: dict[int, KeyEntry] = {}  # neighbours' (and our own) advertised keys
        self._neighbours: frozenset[int] = frozenset()  # ring neighbours that advertised keys
        self._sharers: frozenset[int] = frozenset()  # neighbours that shared keys with us (U2)
        self._excluded: frozenset[int] = frozenset()  # neighbours the server took out before masking
        self._held: dict[int, tuple[bytes, bytes]] = {}  # peer -> (b-share, s-share) it gave us
        self._own: tuple[bytes, bytes] = (b"", b"")  # our share of our own secrets
        self._share_keys: dict[int, bytes] = {}  # neighbour -> AES-GCM key for shares
        self._revealed: dict[int, str] = {}  # peer -> "b" or "s": the one share we showed
        #: neighbours whose forwarded shares did not decrypt or were malformed (reported, not fatal)
        self.refused: tuple[int, ...] = ()

    # -- the interface --------------------------------------------------------------------------

    def handle(self, message: Message) -> Message:
        """Process one server message and return the reply; :class:`ProtocolError` aborts."""
        if self.phase is ClientPhase.ABORTED:
            raise RemoteProtocolError(f"client {self.id}: session aborted, message refused")
        try:
            return self._dispatch(message)
        except ProtocolError:
            self.abort()
            raise

    def abort(self) -> None:
        """Give up the session; forget every secret (nothing more will be revealed)."""
        self.phase = ClientPhase.ABORTED
        self._held.clear()
        self._self_seed = b""
        self._own = (b"", b"")
        self._share_keys.clear()

    # -- one method per step --------------------------------------------------------------------

    def _dispatch(self, message: Message) -> Message:
        malicious = self.params is not None and self.params.malicious
        expected, handler, after = TRANSITIONS[(self.phase, malicious)]
        if not isinstance(message, expected):
            raise RemoteProtocolError(f"client {self.id}: got {type(message).__name__} while waiting for "
                                      f"{expected.__name__} (wrong round)")
        reply = getattr(self, handler)(message)
        self.phase = after  # only once the step has fully succeeded (a ProtocolError aborts instead)
        return reply

    def _on_setup(self, msg: Setup) -> AdvertiseKeys:
        p = msg.params
        if p.full_graph:
            if msg.index or msg.proof:
                raise RemoteProtocolError("Setup: a full-graph session sends the member list, not an index "
                                          "and proof")
            if self.id not in p.client_ids:
                raise RemoteProtocolError(f"client {self.id}: not among the invited clients")
            self._index = p.client_ids.index(self.id)
        else:
            # O(log n): the proof that we are the member at msg.index, against the root in P(params)
            if not verify_multiproof(p.members_root, p.members, {msg.index: leaf_hash(member_leaf(self.id))},
                                     msg.proof):
                raise RemoteProtocolError(f"client {self.id}: not among the invited clients (no valid "
                                          f"membership proof for index {msg.index})")
            self._index = msg.index
        if self._value.size != p.vector_length:
            raise RemoteProtocolError(f"client {self.id}: input has {self._value.size} words, the session "
                                      f"expects vector_length={p.vector_length}")
        if p.bits < 32 and int(self._value.max(initial=0)) >> p.bits:
            raise RemoteProtocolError(f"client {self.id}: input has words >= 2^{p.bits} (bits={p.bits})")
        if self._identity is not None and not p.malicious:
            raise RemoteProtocolError(
                f"client {self.id}: requires malicious-server mode; the server offered a "
                f"session without it")
        if len(p.nonce) != NONCE_BYTES:
            raise RemoteProtocolError(f"client {self.id}: the session carries no fresh server nonce: an "
                                      f"advertisement of an earlier session could be replayed into it")
        # b_u is drawn now so that the advertisement can commit to it (the server checks the b_u it
        # rebuilds from shares against the commitment: no wrong share can silently corrupt the sum)
        seed = os.urandom(SEED_BYTES)
        commitment = seed_commitment(p, self.id, seed)
        signature = b""
        if p.malicious:
            if self._identity is None:
                raise LocalProtocolError(
                    f"client {self.id}: malicious-server mode needs an identity key and a "
                    f"registry of trusted client keys")
            signature = self._identity.sign(
                advertisement_message(p, self.id, self._enc.public, self._mask.public, commitment))
        self.params, self._self_seed, self._commitment = p, seed, commitment
        return AdvertiseKeys(self.id, self._enc.public, self._mask.public, signature, commitment)

    def _on_directory(self, msg: KeyDirectory) -> ShareKeys:
        p = self._require_params()
        entries = {e.client_id: e for e in msg.entries}
        if len(entries) != len(msg.entries) or len({e.index for e in msg.entries}) != len(msg.entries):
            raise RemoteProtocolError("key directory: duplicate client id or index")
        mine = entries.get(self.id)
        if mine is None or (mine.enc_key, mine.mask_key, mine.commitment, mine.index) != (
                self._enc.public, self._mask.public, self._commitment, self._index):
            raise RemoteProtocolError(f"key directory: does not carry client {self.id}'s own keys")
        if any(len(e.commitment) != COMMITMENT_BYTES for e in msg.entries):
            raise RemoteProtocolError("key directory: an entry carries no self-mask seed commitment")
        if len({e.enc_key for e in msg.entries} | {e.mask_key for e in msg.entries}) != 2 * len(entries):
            raise RemoteProtocolError("key directory: a public key appears twice (substituted or replayed)")
        # the ring was fixed at Setup over the invited clients: a neighbour missing from the directory
        # is a hole, never replaced by another client (no choice of advertisements moves the ring)
        ring = ring_neighbours(p, self._index)
        if p.full_graph:
            position = {u: i for i, u in enumerate(p.client_ids)}
            stray = [e.client_id for e in msg.entries if position.get(e.client_id) != e.index]
        else:
            stray = [e.client_id for e in msg.entries if e.client_id != self.id and e.index not in ring]
        if stray:
            raise RemoteProtocolError(f"key directory: client(s) {stray[:10]} are not this client's ring "
                                      f"neighbours (not invited, or at another place of the ring)")
        if not p.full_graph and (p.malicious or msg.proof) and not verify_multiproof(
                p.members_root, p.members,
                {e.index: leaf_hash(member_leaf(e.client_id)) for e in msg.entries}, msg.proof):
            # without this a malicious server could seat its colluders at our neighbours' places
            raise RemoteProtocolError("key directory: the Merkle proof does not show these clients at "
                                      "these places of the member list")
        if p.malicious:
            self._verify_advertisements(p, msg.entries)
        self.session = session_id(p)
        self._neighbours = frozenset(entries) - {self.id}
        own = 1 if p.own_share_counts else 0
        if len(self._neighbours) + own < p.threshold:
            raise RemoteProtocolError(
                f"client {self.id}: only {len(self._neighbours)} of its {len(ring)} ring neighbours "
                f"advertised keys{' (plus its own share)' if own else ''}: fewer holders than the "
                f"threshold {p.threshold}")
        self._directory = entries
        holders = sorted(self._neighbours | {self.id})  # we keep one share of our own secrets
        xs = [share_point(v) for v in holders]
        b_shares = split(self._self_seed, p.threshold, xs)
        s_shares = split(self._mask.private_bytes(), p.threshold, xs)
        out = []
        for v, b, s in zip(holders, b_shares, s_shares, strict=True):
            if v == self.id:
                self._own = (b.to_bytes(), s.to_bytes())
                continue
            key = share_key(self._enc.agree(entries[v].enc_key, peer=v), self.session, self.id, v)
            self._share_keys[v] = key
            plaintext = (self.id.to_bytes(4, "big") + v.to_bytes(4, "big") + b.to_bytes() + s.to_bytes())
            out.append((v, aead.seal(key, plaintext, aead.associated_data(self.session, self.id, v))))
        return ShareKeys(self.id, self.session, tuple(out))

    def _on_shares(self, msg: ForwardedShares) -> ShareCheck:
        p = self._require_params()
        self._check_session(msg.session_id)
        if msg.recipient != self.id:
            raise RemoteProtocolError(f"forwarded shares addressed to client {msg.recipient}, not {self.id}")
        held: dict[int, tuple[bytes, bytes]] = {}
        refused: list[int] = []
        for sender, ciphertext in msg.shares:
            if sender not in self._neighbours:
                raise RemoteProtocolError(f"forwarded share from client {sender}, who is not a neighbour")
            try:
                held[sender] = self._open_share(sender, ciphertext)
            except ProtocolError:
                # one client's bad ciphertext must not stop the round: hold none of its shares and
                # report it before anyone masks; the server takes it out of the session if too few of
                # its holders could open its shares (else its secrets come from the others)
                refused.append(sender)
        self._sharers = frozenset([*held, *refused])  # they shared keys with us: our masking peers
        self._check_holders(p, self._sharers)
        held[self.id] = self._own
        self._held, self.refused = held, tuple(sorted(refused))
        return ShareCheck(self.id, self.session, self.refused)

    def _on_mask_request(self, msg: MaskRequest) -> MaskedInput:
        p = self._require_params()
        self._check_session(msg.session_id)
        excluded = frozenset(msg.excluded)
        if not excluded <= self._sharers:
            strays = sorted(excluded - self._sharers)[:10]
            raise RemoteProtocolError(f"mask request excludes client(s) {strays} that never shared keys with "
                                      f"client {self.id}")
        peers = self._sharers - excluded
        self._check_holders(p, peers)  # (the server cannot shrink our holders below t)
        self._excluded = excluded
        # pairwise masks with every neighbour that shared keys and is still in: they mask with us too
        masks = [(self._self_seed, 1)]
        for v in sorted(peers):
            seed = mask_seed(self._mask.agree(self._directory[v].mask_key, peer=v), self.session, self.id, v)
            masks.append((seed, mask_sign(self.id, v)))
        y = self._value.copy()
        accumulate_masks(y, masks)
        if p.bits < 32:
            np.bitwise_and(y, np.uint32((1 << p.bits) - 1), out=y)
        return MaskedInput(self.id, self.session, y.astype("<u4", copy=False).tobytes())

    def _check_holders(self, p: SessionParams, peers: frozenset[int]) -> None:
        own = 1 if p.own_share_counts else 0
        if len(peers) + own < p.threshold:  # holders who can reveal my secrets
            raise RemoteProtocolError(f"client {self.id}: only {len(peers)} neighbours shared keys"
                                      f"{' (plus my own share)' if own else ''}: fewer than the threshold "
                                      f"{p.threshold}")

    def _open_share(self, sender: int, ciphertext: bytes) -> tuple[bytes, bytes]:
        """``sender``'s two shares for us from its ciphertext; :class:`ProtocolError` if it does not
        decrypt or holds anything but two field elements addressed from ``sender`` to us."""
        key = self._share_keys[sender]  # the pair key is symmetric: derived once, in _on_directory
        plain = aead.open_sealed(key, ciphertext, aead.associated_data(self.session, sender, self.id),
                                 sender=sender)
        if (int.from_bytes(plain[:4], "big"), int.from_bytes(plain[4:8], "big")) != (sender, self.id):
            raise RemoteProtocolError(f"share from client {sender}: wrong sender/recipient inside")
        b, s = plain[8 : 8 + SHARE_BYTES], plain[8 + SHARE_BYTES :]
        Share.from_bytes(share_point(self.id), b)  # range checks: ProtocolError if malformed
        Share.from_bytes(share_point(self.id), s)
        return b, s

    def _on_consistency(self, msg: ConsistencyRequest) -> ConsistencySignature:
        p = self._require_params()
        self._check_session(msg.session_id)
        self._check_sets(msg.survivors, msg.dropped)
        # our neighbours' statuses must be the ones under the root everybody signs: a server that
        # shows a client as alive to some of its holders and as dropped to others gets two roots
        survivors, dropped = set(msg.survivors), set(msg.dropped)
        leaves = {e.index: leaf_hash(status_leaf(u, status_of(u, survivors, dropped, self._excluded)))
                  for u, e in self._directory.items()}
        if not verify_multiproof(msg.status_root, p.members, leaves, msg.proof):
            raise RemoteProtocolError(f"client {self.id}: the consistency request's statuses are not under "
                                      f"its status root (bad proof)")
        assert self._identity is not None  # malicious mode was checked at Setup
        self._signed, self._status_root = (msg.survivors, msg.dropped), msg.status_root
        signature = self._identity.sign(consistency_message(self.session, msg.status_root))
        return ConsistencySignature(self.id, self.session, signature)

    def _on_unmask(self, msg: UnmaskRequest) -> UnmaskResponse:
        p = self._require_params()
        self._check_session(msg.session_id)
        if p.malicious:
            if (msg.survivors, msg.dropped) != self._signed:
                raise RemoteProtocolError(
                    f"client {self.id}: the unmask request names other survivor/dropped "
                    f"sets than the ones I signed: refusing")
            self._verify_consistency(p, msg)
        asked = self._check_sets(msg.survivors, msg.dropped)
        for v, kind in asked.items():
            if self._revealed.get(v, kind) != kind:
                raise RemoteProtocolError(f"server asked for both the self-mask share and the mask-key share "
                                          f"of client {v}: refusing")
        self._revealed.update(asked)
        b = tuple((v, self._held[v][0]) for v in sorted(asked) if asked[v] == "b")
        s = tuple((v, self._held[v][1]) for v in sorted(asked) if asked[v] == "s")
        return UnmaskResponse(self.id, self.session, b, s)

    def _check_sets(self, survivor_ids: tuple[int, ...], dropped_ids: tuple[int, ...]) -> dict[int, str]:
        """Check every server claim about the sets; return the share kind asked for each holder."""
        p = self._require_params()
        survivors, dropped = set(survivor_ids), set(dropped_ids)
        if survivors & dropped:
            both = sorted(survivors & dropped)
            raise RemoteProtocolError(f"unmask request lists client(s) {both} as both surviving and dropped: "
                                      f"refusing to reveal both shares")
        if self.id not in survivors:
            raise RemoteProtocolError(f"unmask request does not list client {self.id} among the survivors")
        # the sum must cover at least t clients; each client checks what it sees: its share holders
        # (without t surviving holders its own seed could not be rebuilt anyway)
        seen = len(survivors & self._revealers(p))
        if seen < p.threshold:
            raise RemoteProtocolError(f"unmask request: {seen} survivors, fewer than the threshold "
                                      f"{p.threshold}: the sum would expose too few clients")
        named_excluded = (survivors | dropped) & self._excluded
        if named_excluded:
            raise RemoteProtocolError(f"unmask request names client(s) {sorted(named_excluded)} that the "
                                      f"server excluded from the session")
        if not (survivors | dropped) <= self._directory.keys():
            raise RemoteProtocolError("unmask request names clients that never advertised keys (or are not "
                                      "this client's neighbours)")
        # peers whose shares we refused: we hold nothing of theirs to reveal (the server knows)
        claimed = (survivors | dropped) & self._revealers(p) - set(self.refused)
        if not claimed <= set(self._held):
            missing = sorted(claimed - set(self._held))
            raise RemoteProtocolError(
                f"unmask request names neighbour(s) {missing} that never shared keys with me")
        return {v: ("b" if v in survivors else "s") for v in claimed}

    def _verify_advertisements(self, p: SessionParams, entries: tuple[KeyEntry, ...]) -> None:
        assert self._registry is not None
        for e in entries:
            trusted = self._registry.get(e.client_id)
            if trusted is None:
                raise RemoteProtocolError(
                    f"key directory: client {e.client_id} is not in the trusted registry")
            if not e.signature:
                raise RemoteProtocolError(
                    f"key directory: the advertisement of client {e.client_id} is unsigned")
            verify_signature(trusted, e.signature,
                             advertisement_message(p, e.client_id, e.enc_key, e.mask_key, e.commitment),
                             signer=e.client_id)

    def _verify_consistency(self, p: SessionParams, msg: UnmaskRequest) -> None:
        """At least t distinct survivors signed exactly these sets, or we refuse to reveal anything."""
        assert self._registry is not None
        message = consistency_message(self.session, self._status_root)
        # only holders of our shares count: on a sparse graph, t signatures from anywhere do not stop
        # a server showing different statuses to different neighbourhoods (on the full graph: everyone)
        survivors = set(msg.survivors) & self._revealers(p)
        valid = set()
        for signer, signature in msg.signatures:
            if len(valid) >= p.threshold:
                break  # t valid signatures settle it; verifying the rest costs time, not security
            trusted = self._registry.get(signer)
            if signer not in survivors or trusted is None:
                continue
            try:
                verify_signature(trusted, signature, message, signer=signer)
            except ProtocolError:
                continue
            valid.add(signer)
        if len(valid) < p.threshold:
            raise RemoteProtocolError(
                f"client {self.id}: only {len(valid)} valid consistency signatures on the "
                f"survivor set, fewer than the threshold {p.threshold}: the server may be "
                f"showing different sets to different clients; refusing to reveal shares")

    # -- helpers --------------------------------------------------------------------------------

    def _revealers(self, p: SessionParams) -> set[int]:
        """The clients whose shares (or consistency signatures) this client reveals or counts."""
        return self._neighbours | {self.id} if p.own_share_counts else set(self._neighbours)

    def _require_params(self) -> SessionParams:
        assert self.params is not None  # guaranteed by the phase order
        return self.params

    def _check_session(self, sid: bytes) -> None:
        if sid != self.session:
            raise RemoteProtocolError(f"client {self.id}: message from another session (session id mismatch)")


assert PRIVATE_KEY_BYTES == SEED_BYTES  # both secrets are 32 bytes: one Shamir field fits both
