"""The client side of one secure-aggregation session, as a sans-I/O state machine.

``Client.handle(message) -> reply`` is the whole interface: no sockets, threads or clocks. Feed it
the server's messages in order; send back what it returns. Any violation (a message for another
stage or session, a forged share, a low-order key, a server asking for both shares of one peer)
raises :class:`ProtocolError` and moves the client to ``ABORTED`` for good: it then refuses every
further message and has revealed nothing beyond what the protocol allows.

Suspension: for a transport whose workers are stateless (Flower's, a serverless one), a client is
:meth:`Client.snapshot`-ed to bytes after each message and :meth:`Client.restore`-d before the next.
The snapshot is an explicit, versioned msgpack record (no pickle: nothing executes on load) holding
every secret drawn so far and the per-peer record of the shares already revealed, so a restored
client continues exactly where the original stopped and still never reveals both shares of a peer.
It holds secrets (the mask keys, the self-mask seed, held shares): store it as such.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import os
from collections.abc import Mapping, Sequence
from enum import Enum
from typing import Any

import numpy as np

from secagg import codec
from secagg.crypto import aead
from secagg.crypto.keys import PRIVATE_KEY_BYTES, PUBLIC_KEY_BYTES, DHKeyPair, SigningKey, verify_signature
from secagg.crypto.prg import SEED_BYTES, accumulate_masks
from secagg.crypto.shamir import SHARE_BYTES, Share, split
from secagg.errors import ConfigError, LocalProtocolError, ProtocolError, RemoteProtocolError, WireError
from secagg.protocol.graph import ring_neighbours
from secagg.protocol.merkle import leaf_hash, verify_multiproof
from secagg.protocol.messages import (
    COMMITMENT_BYTES,
    MAX_CLIENTS,
    MAX_ID,
    MAX_VECTOR_LENGTH,
    NONCE_BYTES,
    ROOT_BYTES,
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
from secagg.protocol.packing import pack_words
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
from secagg.protocol.wire import SESSION_ID_BYTES, decode, encode, read_ids


class ClientPhase(Enum):
    NEW = "new"
    ADVERTISED = "advertised"      # sent AdvertiseKeys, waits for the KeyDirectory
    SHARED = "shared"              # sent ShareKeys, waits for ForwardedShares
    CHECKED = "checked"            # sent ShareCheck (its refusals), waits for the MaskRequest
    MASKED = "masked"              # sent MaskedInput, waits for the UnmaskRequest (or ConsistencyRequest)
    SIGNED = "signed"              # malicious mode: signed the survivor sets, waits for the UnmaskRequest
    DONE = "done"                  # answered the UnmaskRequest
    ABORTED = "aborted"


#: phases after the masked input was sent: the client's input is not needed (nor kept in a snapshot)
_INPUT_SENT = frozenset({ClientPhase.MASKED, ClientPhase.SIGNED, ClientPhase.DONE})
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
        # snapshot parts that never change once set ("setup", "directory"): encoded once, not per message
        self._records: dict[str, bytes] = {}

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

    @property
    def value(self) -> np.ndarray:
        """Its input: the ``d`` uint32 words it masks (the caller's array; a restored client's own, which
        is empty once the masked input was sent: a snapshot does not keep it after its use)."""
        return self._value

    # -- suspension (stateless workers) ---------------------------------------------------------

    def snapshot(self) -> bytes:
        """Everything needed to continue this session exactly, as a versioned record (any phase).

        Secrets drawn so far are in it (so a restored client never redraws them), and so is the record
        of which share of each peer was revealed (so no restore lets a server get both). Not in it:
        the identity key and the registry (the operator supplies them to :meth:`restore` each time;
        only the identity's public key is recorded, to check that the same one comes back). On a
        SecAgg+ graph the parameters are kept as the client's view (no member list: O(k) state).
        """
        p = self.params
        if p is not None and "setup" not in self._records:
            # the session parameters as the wire format's Setup (its schema and checks, not a second
            # one); a SecAgg+ client keeps the view it was sent: count and root, not the member list
            view = p if p.full_graph or not p.client_ids else dataclasses.replace(p, client_ids=())
            self._records["setup"] = encode(Setup(view))
        if self._directory and "directory" not in self._records:
            self._records["directory"] = encode(KeyDirectory(tuple(
                self._directory[u] for u in sorted(self._directory))))
        held = sorted(self._held)
        keys = sorted(self._share_keys)
        fields = {
            "client_id": self.id,
            "phase": self.phase.value,
            "identity": b"" if self._identity is None else self._identity.public,
            "setup": self._records.get("setup", b""),  # (none before Setup)
            "index": self._index,
            "session": self.session,
            "enc_key": self._enc.private_bytes(),
            "mask_key": self._mask.private_bytes(),
            "self_seed": self._self_seed,
            "commitment": self._commitment,
            "directory": self._records.get("directory", b""),
            "neighbours": _pack_ids(self._neighbours),
            "sharers": _pack_ids(self._sharers),
            "excluded": _pack_ids(self._excluded),
            "held_ids": _pack_ids(held),
            "held_b": b"".join(self._held[u][0] for u in held),
            "held_s": b"".join(self._held[u][1] for u in held),
            "own_b": self._own[0],
            "own_s": self._own[1],
            "share_key_ids": _pack_ids(keys),
            "share_keys": b"".join(self._share_keys[u] for u in keys),
            "revealed_b": _pack_ids(u for u, kind in self._revealed.items() if kind == "b"),
            "revealed_s": _pack_ids(u for u, kind in self._revealed.items() if kind == "s"),
            "refused": _pack_ids(self.refused),
            "signed": [] if self._signed is None else [_pack_ids(ids) for ids in self._signed],
            "status_root": self._status_root,
            # once masked and sent, the input is not needed again: not kept (a snapshot of a large
            # model's client is then O(k), not O(d), for the remaining messages)
            "value": b"" if self.phase in _INPUT_SENT else self._value.astype("<u4", copy=False).tobytes(),
        }
        assert tuple(fields) == SNAPSHOT_FIELDS
        return seal_record(list(fields.values()), what="client snapshot", magic=SNAPSHOT_MAGIC,
                           version=SNAPSHOT_VERSION, label=SNAPSHOT_LABEL)

    @classmethod
    def restore(cls, data: bytes, *, identity: SigningKey | None = None,
                registry: Mapping[int, bytes] | None = None) -> Client:
        """The client a :meth:`snapshot` was taken of, in the same phase with the same secrets: given
        the same server messages it gives the same replies (up to randomness it had not drawn yet).

        ``identity`` and ``registry``: as for the constructor (malicious mode); the identity must be
        the one the snapshot's client had. :class:`ConfigError` naming the field for anything that is
        not an intact snapshot of this version (truncated, corrupted, fields of the wrong type, length
        or size, states that no session reaches): it is the caller's own storage, not a peer's message.
        An aborted client restores aborted.
        """
        raw = open_record(data, what="client snapshot", magic=SNAPSHOT_MAGIC, version=SNAPSHOT_VERSION,
                          label=SNAPSHOT_LABEL, limits=_SNAPSHOT_LIMITS, arity=len(SNAPSHOT_FIELDS))
        f = _SnapshotReader(dict(zip(SNAPSHOT_FIELDS, raw, strict=True)))
        client_id = f.uint("client_id", MAX_ID)
        phase_name = f.get("phase")
        phases = {ph.value: ph for ph in ClientPhase}
        if type(phase_name) is not str or phase_name not in phases:
            raise _bad("phase", f"expected one of {', '.join(phases)}")
        phase = phases[phase_name]
        public = f.bin("identity", sizes=(0, PUBLIC_KEY_BYTES))
        if public and identity is None:
            raise ConfigError(f"identity: the snapshot's client {client_id} runs in malicious-server mode: "
                              f"restore it with its identity key (and the registry)")
        if public and identity is not None and identity.public != public:
            raise ConfigError(f"identity: not the key of the snapshot's client {client_id} (it signed with "
                              f"another identity key)")
        if not public and identity is not None:
            raise ConfigError(f"identity: the snapshot's client {client_id} has no identity key; "
                              f"restore it without one")
        words = f.bin("value", maximum=4 * MAX_VECTOR_LENGTH)
        if len(words) % 4:
            raise _bad("value", f"{len(words)} bytes is not a whole number of uint32 words")
        value = np.frombuffer(words, dtype="<u4").astype(np.uint32)  # a fresh, writable native array
        client = cls(client_id, value, identity=identity, registry=registry)  # (checks the registry)

        client.phase = phase
        client.params = f.setup()
        client._index = f.uint("index", MAX_CLIENTS - 1)
        client.session = f.bin("session", sizes=(0, SESSION_ID_BYTES))
        client._enc = f.dh_key("enc_key")
        client._mask = f.dh_key("mask_key")
        client._self_seed = f.bin("self_seed", sizes=(0, SEED_BYTES))
        client._commitment = f.bin("commitment", sizes=(0, COMMITMENT_BYTES))
        client._directory = f.directory()
        client._neighbours = frozenset(f.ids("neighbours"))
        client._sharers = frozenset(f.ids("sharers"))
        client._excluded = frozenset(f.ids("excluded"))
        held_ids = f.ids("held_ids")
        point = share_point(client_id)
        held_b = f.shares("held_b", len(held_ids), point)
        held_s = f.shares("held_s", len(held_ids), point)
        client._held = {u: (b, s) for u, b, s in zip(held_ids, held_b, held_s, strict=True)}
        own_b, own_s = f.bin("own_b", sizes=(0, SHARE_BYTES)), f.bin("own_s", sizes=(0, SHARE_BYTES))
        if len(own_b) != len(own_s):
            raise _bad("own_s", "holds one of the two own shares without the other")
        if own_b:
            f.shares("own_b", 1, point)
            f.shares("own_s", 1, point)
        client._own = (own_b, own_s)
        key_ids = f.ids("share_key_ids")
        keys = f.bin("share_keys", sizes=(_SHARE_KEY_BYTES * len(key_ids),))
        client._share_keys = {u: keys[_SHARE_KEY_BYTES * i : _SHARE_KEY_BYTES * (i + 1)]
                              for i, u in enumerate(key_ids)}
        shown_b, shown_s = f.ids("revealed_b"), f.ids("revealed_s")
        if set(shown_b) & set(shown_s):
            raise _bad("revealed_s", f"client(s) {sorted(set(shown_b) & set(shown_s))[:10]} are recorded "
                                     f"with both shares revealed")
        client._revealed = {**dict.fromkeys(shown_b, "b"), **dict.fromkeys(shown_s, "s")}
        client.refused = f.ids("refused")
        signed = f.get("signed")
        if type(signed) is not list or len(signed) not in (0, 2):
            raise _bad("signed", "expected [] or [survivors, dropped]")
        client._signed = (f.ids("signed", signed[0]), f.ids("signed", signed[1])) if signed else None
        client._status_root = f.bin("status_root", sizes=(0, ROOT_BYTES))
        client._check_restored(f.get("setup"), f.get("directory"))
        return client

    def _check_restored(self, setup: bytes, directory: bytes) -> None:
        """:class:`ConfigError` unless the restored fields are a state that the phase's steps reach.

        Each phase has exactly the fields its steps have set (and nothing of the later ones), and the
        derived values agree with what they were derived from (the commitment with the seed, the
        session id with the parameters, our directory entry with our keys): a snapshot that passes
        cannot make a later step fail with anything but the protocol's own errors.
        """
        if self.phase is ClientPhase.ABORTED:
            if self._held or self._self_seed or any(self._own) or self._share_keys:
                raise _bad("phase", "an aborted client holds no secrets (abort forgets them)")
            return  # it refuses every message: how far it got before aborting changes nothing
        rank = _RANK[self.phase]
        p = self.params
        if (p is None) != (rank < _RANK[ClientPhase.ADVERTISED]):
            raise _bad("setup", f"a client in phase {self.phase.value} "
                                f"{'has no' if rank else 'has'} session parameters")
        later = [  # (reached from this phase on, field, is it set)
            (ClientPhase.ADVERTISED, "self_seed", bool(self._self_seed)),
            (ClientPhase.ADVERTISED, "commitment", bool(self._commitment)),
            (ClientPhase.SHARED, "session", bool(self.session)),
            (ClientPhase.SHARED, "directory", bool(self._directory)),
            (ClientPhase.SHARED, "own_b", bool(self._own[0])),
            (ClientPhase.CHECKED, "held_ids", bool(self._held)),
        ]
        for since, name, present in later:
            if present != (rank >= _RANK[since]):
                raise _bad(name, f"{'set' if present else 'missing'} in phase {self.phase.value}")
        empty_until = [  # fields a step may leave empty, but never set before it
            (ClientPhase.SHARED, "neighbours", self._neighbours),
            (ClientPhase.SHARED, "share_key_ids", self._share_keys),
            (ClientPhase.CHECKED, "sharers", self._sharers),
            (ClientPhase.CHECKED, "refused", self.refused),
            (ClientPhase.MASKED, "excluded", self._excluded),
            (ClientPhase.DONE, "revealed_b", self._revealed),
        ]
        for since, name, value in empty_until:
            if value and rank < _RANK[since]:
                raise _bad(name, f"set in phase {self.phase.value}")
        if p is None:
            if self._index:
                raise _bad("index", "set before the session's Setup")
            return
        if _RANK[ClientPhase.SIGNED] <= rank and p.malicious:
            if self._signed is None or not self._status_root:
                raise _bad("signed", f"missing: a malicious-mode client in phase {self.phase.value} "
                                     f"has signed the survivor sets")
        elif self._signed is not None or self._status_root:
            raise _bad("signed", f"set in phase {self.phase.value}")
        if self.phase is ClientPhase.SIGNED and not p.malicious:
            raise _bad("phase", "signed is a malicious-mode phase")
        if p.malicious != (self._identity is not None):
            raise _bad("setup", "malicious-server mode and an identity key go together")
        if self.phase in _INPUT_SENT:
            if self._value.size:
                raise _bad("value", f"kept in phase {self.phase.value}: the input was already masked and "
                                    f"sent")
        elif self._value.size != p.vector_length:
            raise _bad("value", f"{self._value.size} words, the session's vector_length is {p.vector_length}")
        if p.bits < 32 and int(self._value.max(initial=0)) >> p.bits:
            raise _bad("value", f"words >= 2^{p.bits} (the session's bits)")
        if p.full_graph:
            if self.id not in p.client_ids or p.client_ids.index(self.id) != self._index:
                raise _bad("index", f"client {self.id} is not at index {self._index} of the member list")
        elif self._index >= p.members:
            raise _bad("index", f"{self._index} is beyond the {p.members} members")
        if self._commitment != seed_commitment(p, self.id, self._self_seed):
            raise _bad("commitment", "does not commit to the self-mask seed (corrupted seed or commitment)")
        self._records["setup"] = setup  # canonical (the wire decoder checked): reuse it, re-encode nothing
        if rank < _RANK[ClientPhase.SHARED]:
            return
        if self.session != session_id(p):
            raise _bad("session", "is not the id of the session's parameters")
        mine = self._directory.get(self.id)
        if mine is None or (mine.enc_key, mine.mask_key, mine.commitment, mine.index) != (
                self._enc.public, self._mask.public, self._commitment, self._index):
            raise _bad("directory", f"does not carry client {self.id}'s own keys (corrupted keys?)")
        if len({e.index for e in self._directory.values()}) != len(self._directory):
            raise _bad("directory", "two entries at one index")
        if self._neighbours != self._directory.keys() - {self.id}:
            raise _bad("neighbours", "are not the directory's other clients")
        if self._share_keys.keys() != self._neighbours:
            raise _bad("share_key_ids", "are not the neighbours")
        self._records["directory"] = directory
        if rank < _RANK[ClientPhase.CHECKED]:
            return
        refused = set(self.refused)
        if not self._sharers <= self._neighbours or not refused <= self._sharers:
            raise _bad("sharers", "sharers must be neighbours, refused ones sharers")
        if self._held.keys() != (self._sharers - refused) | {self.id} or self._held[self.id] != self._own:
            raise _bad("held_ids", "the shares held are not the accepted sharers' and our own")
        if not self._excluded <= self._sharers:
            raise _bad("excluded", "names clients that never shared keys with us")
        if not self._revealed.keys() <= self._held.keys():
            raise _bad("revealed_b", "names clients whose shares we do not hold")

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
        return MaskedInput(self.id, self.session, pack_words(y, p.bits))  # bits a word, not 32

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


# -- snapshot records ----------------------------------------------------------------------------

SNAPSHOT_MAGIC = 0x5EC8  # (the wire format is 0x5EC6, the transport envelopes 0x5EC7)
SNAPSHOT_VERSION = 1
SNAPSHOT_LABEL = b"secagg/v1/client-snapshot"
#: the snapshot's fields, in order (ids lists are packed big-endian uint32, sorted; see snapshot())
SNAPSHOT_FIELDS = (
    "client_id", "phase", "identity", "setup", "index", "session", "enc_key", "mask_key", "self_seed",
    "commitment", "directory", "neighbours", "sharers", "excluded", "held_ids", "held_b", "held_s",
    "own_b", "own_s", "share_key_ids", "share_keys", "revealed_b", "revealed_s", "refused", "signed",
    "status_root", "value")
# caps: the vector, plus a full-graph directory, shares and keys for MAX_CLIENTS peers
_PER_PEER_BYTES = 4 * 4 + 2 * PUBLIC_KEY_BYTES + 64 + COMMITMENT_BYTES + 4 * 5 + 2 * SHARE_BYTES + 32
_SNAPSHOT_LIMITS = codec.Limits(max_bytes=4 * MAX_VECTOR_LENGTH + _PER_PEER_BYTES * MAX_CLIENTS + (1 << 20),
                                max_bin=4 * MAX_VECTOR_LENGTH + (1 << 16), max_str=16,
                                max_array=len(SNAPSHOT_FIELDS) + 2)
_RANK = {phase: rank for rank, phase in enumerate(
    (ClientPhase.NEW, ClientPhase.ADVERTISED, ClientPhase.SHARED, ClientPhase.CHECKED, ClientPhase.MASKED,
     ClientPhase.SIGNED, ClientPhase.DONE))}
_SHARE_KEY_BYTES = 32  # an AES-256-GCM key (session.share_key)


def seal_record(fields: Sequence[Any], *, what: str, magic: int, version: int, label: bytes) -> bytes:
    """A local record: ``[magic, version, body, SHA-256(label || body)]``, ``body`` the msgpack array
    ``[magic, version, *fields]``. The digest catches a truncated or corrupted record (a flipped bit
    in a stored key would otherwise mask with the wrong key: a silently wrong sum); it authenticates
    nothing: whoever can write the store can read the secrets in it anyway."""
    try:
        body = codec.pack(magic, version, *fields)
    except (OverflowError, TypeError, ValueError) as exc:  # a bug here, never the caller's data
        raise LocalProtocolError(f"{what}: cannot encode: {type(exc).__name__}: {exc}") from exc
    return codec.pack(magic, version, body, hashlib.sha256(label + body).digest())


def open_record(data: bytes, *, what: str, magic: int, version: int, label: bytes, limits: codec.Limits,
                arity: int) -> list[Any]:
    """The ``arity`` fields of a :func:`seal_record` record; :class:`ConfigError` naming ``what`` for
    bytes that are not one intact record of this ``magic`` and ``version``. The fields are msgpack
    values still to check, one by one (nothing executes on load)."""
    outer_limits = codec.Limits(max_bytes=limits.max_bytes + 64, max_bin=limits.max_bytes, max_str=0,
                                max_array=4)
    try:
        outer = codec.unpack(data, what=what, magic=magic, version=version, limits=outer_limits,
                             min_fields=2)
        if len(outer) != 4 or type(outer[2]) is not bytes or type(outer[3]) is not bytes:
            raise WireError(f"{what}: expected [magic, version, body, digest]")
        if not hmac.compare_digest(outer[3], hashlib.sha256(label + outer[2]).digest()):
            raise WireError(f"{what}: integrity check failed (the record is corrupted or truncated)")
        fields = codec.unpack(outer[2], what=f"{what} body", magic=magic, version=version, limits=limits)
    except WireError as exc:
        raise ConfigError(str(exc)) from None
    if len(fields) != 2 + arity:
        raise ConfigError(f"{what}: expected {arity} fields, got {len(fields) - 2}")
    return fields[2:]


def _bad(field: str, why: str) -> ConfigError:
    return ConfigError(f"client snapshot.{field}: {why}")


def _pack_ids(ids: Any) -> bytes:
    return np.asarray(sorted(ids), dtype=">u4").tobytes()


_FIELD = object()  # (read the named field itself)


class _SnapshotReader:
    """Typed reads of a snapshot's raw fields; every failure is a :class:`ConfigError` naming one."""

    def __init__(self, raw: dict[str, Any]) -> None:
        self.raw = raw

    def get(self, name: str) -> Any:
        return self.raw[name]

    def uint(self, name: str, bound: int) -> int:
        v = self.raw[name]
        if type(v) is not int or not 0 <= v <= bound:
            raise _bad(name, f"expected an integer in [0, {bound}]")
        return v

    def bin(self, name: str, *, sizes: tuple[int, ...] | None = None, maximum: int | None = None,
            value: Any = _FIELD) -> bytes:
        """Bytes of one of ``sizes`` or at most ``maximum``: field ``name``, or ``value`` read as it."""
        v = self.raw[name] if value is _FIELD else value
        if type(v) is not bytes:
            raise _bad(name, "expected bytes")
        if sizes is not None and len(v) not in sizes:
            raise _bad(name, f"expected {' or '.join(map(str, sizes))} bytes, got {len(v)}")
        if maximum is not None and len(v) > maximum:
            raise _bad(name, f"expected at most {maximum} bytes, got {len(v)}")
        return v

    def ids(self, name: str, value: Any = _FIELD) -> tuple[int, ...]:
        """A packed id list, as the wire format packs them (big-endian uint32, strictly increasing)."""
        try:
            return read_ids(self.bin(name, maximum=4 * MAX_CLIENTS, value=value), name)
        except WireError as exc:
            raise ConfigError(f"client snapshot.{exc}") from None

    def shares(self, name: str, count: int, point: int) -> list[bytes]:
        b = self.bin(name, sizes=(SHARE_BYTES * count,))
        out = [b[i : i + SHARE_BYTES] for i in range(0, len(b), SHARE_BYTES)]
        try:
            for share in out:
                Share.from_bytes(point, share)  # a field element below the prime
        except ProtocolError as exc:
            raise _bad(name, str(exc)) from None
        return out

    def dh_key(self, name: str) -> DHKeyPair:
        try:
            return DHKeyPair.from_private_bytes(self.bin(name, sizes=(PRIVATE_KEY_BYTES,)))
        except (ProtocolError, ValueError) as exc:
            raise _bad(name, str(exc)) from None

    def _message(self, name: str) -> Any:
        try:
            return decode(self.bin(name, maximum=_SNAPSHOT_LIMITS.max_bin))
        except WireError as exc:
            raise _bad(name, str(exc)) from None

    def setup(self) -> SessionParams | None:
        if not self.raw["setup"]:
            return None
        setup = self._message("setup")
        if not isinstance(setup, Setup) or setup.index or setup.proof:
            raise _bad("setup", "expected the session parameters as a Setup without index and proof")
        return setup.params

    def directory(self) -> dict[int, KeyEntry]:
        if not self.raw["directory"]:
            return {}
        directory = self._message("directory")
        if not isinstance(directory, KeyDirectory) or directory.proof or not directory.entries:
            raise _bad("directory", "expected the key directory's entries, without proof")
        return {e.client_id: e for e in directory.entries}


assert PRIVATE_KEY_BYTES == SEED_BYTES  # both secrets are 32 bytes: one Shamir field fits both
