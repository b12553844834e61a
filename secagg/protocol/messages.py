"""The messages of one secure-aggregation session, as typed values (no I/O, no encoding).

Flow (Bonawitz et al. 2017, with the SecAgg+ graph of Bell et al. 2020)::

    server -> each invited  Setup(params, its index in the member list, its Merkle proof)
    client -> server        AdvertiseKeys(enc_key, mask_key, commitment to b_u)  stage ADVERTISE_KEYS
    server -> each in U1    KeyDirectory(its ring neighbours' advertised keys[, Merkle proof])
    client -> server        ShareKeys(one AEAD ciphertext per neighbour)         stage SHARE_KEYS
    server -> each in U2    ForwardedShares(the ciphertexts addressed to it)
    client -> server        ShareCheck(the senders whose shares it refused)      stage SHARE_CHECK
    server -> each checker  MaskRequest(its neighbours excluded from the session)
    client -> server        MaskedInput(x + PRG(b_u) + sum +-PRG(s_uv))         stage MASKED_INPUT
   [server -> U3            ConsistencyRequest(its neighbours' statuses, status root, proof)  malicious
    client -> server        ConsistencySignature(sig over the status root)      stage CONSISTENCY_CHECK]
    server -> U3 (or U4)    UnmaskRequest(its neighbours among U3 and U2 \\ U3[, holders' signatures])

On a SecAgg+ graph every server message is about the recipient's neighbourhood only (O(k) bytes,
plus O(k log(n/k)) of Merkle proof in malicious mode): no client ever receives an O(n) list.
    client -> server        UnmaskResponse(b-shares of survivors, s-shares of the dropped)  UNMASKING

Every message after the directory carries the session id, so a message from another session (or
another round) is refused.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Collection
from dataclasses import dataclass
from enum import IntEnum
from typing import NamedTuple

from secagg.errors import ConfigError
from secagg.protocol.finder import secure_threshold
from secagg.protocol.graph import check_degree
from secagg.protocol.merkle import MerkleTree
from secagg.validation import check_int

MAX_CLIENTS = 1 << 20
MAX_ID = (1 << 32) - 2  # Shamir evaluation point id + 1 must stay below 2^32
MAX_VECTOR_LENGTH = 1 << 28
MODEL_VERSION_MAX_BYTES = 64
NONCE_BYTES = 32
COMMITMENT_BYTES = 32
ROOT_BYTES = 32
MAX_PROOF_BYTES = 32 * 64 * 21  # a multiproof: at most k hashes per tree level (k <= 64 * 21 here)


class Stage(IntEnum):
    """The protocol step a client message answers (its 'round' in the papers' terms)."""

    ADVERTISE_KEYS = 0
    SHARE_KEYS = 1
    SHARE_CHECK = 2
    MASKED_INPUT = 3
    CONSISTENCY_CHECK = 4  # malicious-server mode only
    UNMASKING = 5


@dataclass(frozen=True)
class SessionParams:
    """The public parameters of one aggregation session, fixed by the server before it starts.

    ``client_ids``: the invited clients (sorted, unique, each in [0, 2^32 - 2]). ``members`` and
    ``members_root`` are derived from them: the count and the Merkle root
    (:mod:`secagg.protocol.merkle`) of the list. A client of a SecAgg+ session never sees the list:
    its view has ``client_ids = ()`` and the server's ``members`` and ``members_root`` instead, and
    it learns its neighbours with a proof against the root.
    ``threshold``: t, the Shamir threshold among the holders of a client's shares: its ``degree``
    neighbours and itself (so ``t <= degree + 1``; for the full graph, t of n as in Bonawitz et al.).
    ``degree``: k of the Harary graph; ``len(client_ids) - 1`` means the full graph (classic SecAgg).
    ``vector_length``: d, uint32 words per input. ``bits``: the ring is Z_(2^bits).
    ``round`` and ``model_version`` are bound into the session id, so a client given another model
    or round computes other seeds and cannot be combined with the rest. ``nonce``: 32 bytes of fresh
    server randomness for this session (:class:`~secagg.protocol.server.Server` draws them when the
    parameters come without); every advertisement is bound to it, so an advertisement from an
    earlier session with otherwise equal parameters verifies nowhere. Clients refuse a session
    without one.
    ``malicious``: the active-security mode of Bonawitz et al.: signed key advertisements and a
    ConsistencyCheck round. ``corrupt``: how many clients may collude with the server; in malicious
    mode the threshold must exceed ``(n + corrupt) / 2`` on the full graph (so two different survivor
    sets can never both collect t signatures), and on a SecAgg+ graph a strict majority of the
    ``degree`` neighbours, whose shares alone count there, and at least
    :func:`~secagg.protocol.finder.secure_threshold` for the claimed ``corrupt`` (the corrupt
    neighbours of a client stay below it except with probability 2^-40, the finder's bound; use
    ``secaggplus_parameters(..., malicious=True)`` for its exact value).
    """

    round: int
    model_version: bytes
    client_ids: tuple[int, ...]
    threshold: int
    degree: int
    vector_length: int
    bits: int = 32
    malicious: bool = False
    corrupt: int = 0
    nonce: bytes = b""
    members: int = 0
    members_root: bytes = b""

    def __post_init__(self) -> None:
        check_int("round", self.round, minimum=0, maximum=(1 << 32) - 1)
        if not isinstance(self.model_version, bytes) or len(self.model_version) > MODEL_VERSION_MAX_BYTES:
            raise ConfigError(f"model_version: must be bytes of length <= {MODEL_VERSION_MAX_BYTES}")
        n = self._check_members()
        check_degree(check_int("degree", self.degree, minimum=1), n)
        if not self.client_ids and self.degree == n - 1:
            raise ConfigError("client_ids: a full-graph session needs the list (every client is a "
                              "neighbour); only a SecAgg+ client's view may omit it")
        check_int("threshold", self.threshold, minimum=1, maximum=self.degree + 1)
        check_int("vector_length", self.vector_length, minimum=1, maximum=MAX_VECTOR_LENGTH)
        check_int("bits", self.bits, minimum=1, maximum=32)
        if not isinstance(self.malicious, bool):
            raise ConfigError(f"malicious: must be true or false, got {self.malicious!r}")
        check_int("corrupt", self.corrupt, minimum=0, maximum=n - 1)
        if not isinstance(self.nonce, bytes) or len(self.nonce) not in (0, NONCE_BYTES):
            raise ConfigError(f"nonce: must be {NONCE_BYTES} bytes of fresh randomness (or empty before the "
                              f"server draws it), got {self.nonce!r:.40}")
        if self.malicious:
            if self.full_graph and 2 * self.threshold <= n + self.corrupt:
                raise ConfigError(f"threshold: malicious mode needs t > (n + corrupt) / 2 = "
                                  f"{(n + self.corrupt) / 2:g} on the full graph, got t={self.threshold}; "
                                  f"raise the threshold to >= {(n + self.corrupt) // 2 + 1} or lower corrupt")
            if not self.full_graph and not self.degree / 2 < self.threshold <= self.degree:
                raise ConfigError(f"threshold: malicious mode on a SecAgg+ graph needs degree / 2 < t <= "
                                  f"degree ({self.degree / 2:g} < t <= {self.degree}; a client's own share "
                                  f"does not count), got t={self.threshold}; "
                                  f"use secaggplus_parameters(..., malicious=True)")
            if not self.full_graph and self.corrupt:
                need = secure_threshold(n, self.degree, self.corrupt, malicious=True)
                if self.threshold < need:
                    fix = (f"raise the threshold to >= {need}" if need <= self.degree
                           else "no threshold <= degree is enough: raise the degree")
                    raise ConfigError(
                        f"threshold: t={self.threshold} on a SecAgg+ graph of degree {self.degree} and {n} "
                        f"clients lets corrupt={self.corrupt} colluding clients reach a client's secrets "
                        f"(or both kinds of its shares) with probability above 2^-40, the parameter "
                        f"finder's bound; {fix}, or use secaggplus_parameters(..., malicious=True)")

    def _check_members(self) -> int:
        """Check the member list (or, in a client's SecAgg+ view, its count and root); return n."""
        ids = self.client_ids
        if not isinstance(ids, tuple):
            raise ConfigError("client_ids: need a tuple of client ids")
        if not ids:
            check_int("members", self.members, minimum=2, maximum=MAX_CLIENTS)
            if not isinstance(self.members_root, bytes) or len(self.members_root) != ROOT_BYTES:
                raise ConfigError(f"members_root: a view without client_ids needs the {ROOT_BYTES}-byte "
                                  f"Merkle root of the member list")
            return self.members
        if len(ids) < 2:
            raise ConfigError("client_ids: need a tuple of at least 2 client ids")
        if len(ids) > MAX_CLIENTS:
            raise ConfigError(f"client_ids: at most {MAX_CLIENTS} clients, got {len(ids)}")
        if not set(map(type, ids)) <= {int}:  # bool and int subclasses are not ids
            raise ConfigError("client_ids: must all be integers")
        if ids[0] < 0 or ids[-1] > MAX_ID:
            raise ConfigError(f"client_ids: must be in [0, {MAX_ID}]")
        if any(a >= b for a, b in itertools.pairwise(ids)):
            raise ConfigError("client_ids: must be sorted and unique (duplicate or unsorted id)")
        # derived from the list whenever it is given (so dataclasses.replace(p, client_ids=...) is
        # consistent); a decoder that received a count and a root beside a list compares them itself
        object.__setattr__(self, "members", len(ids))
        object.__setattr__(self, "members_root", members_root(ids))
        return len(ids)

    @property
    def num_clients(self) -> int:
        return self.members

    @property
    def full_graph(self) -> bool:
        return self.degree == self.num_clients - 1

    @property
    def own_share_counts(self) -> bool:
        """Whether a client's own share of its secrets is revealed and counted toward ``t``.

        Not in malicious mode on a SecAgg+ graph: the finder's malicious threshold (Bell et al.)
        makes ``2t > k + t1`` for ``k`` share holders, so the owner as a ``k + 1``-th holder would let
        ``t1`` colluding neighbours complete ``t`` self-mask and ``t`` mask-key shares of a victim the
        server shows as alive to some holders and as dropped to others.
        """
        return self.full_graph or not self.malicious


def member_leaf(client_id: int) -> bytes:
    """The Merkle leaf of a member: its id as 4 big-endian bytes."""
    return client_id.to_bytes(4, "big")


@functools.lru_cache(maxsize=4)  # parameters are rebuilt (a nonce added, a wire round trip): hash once
def members_tree(client_ids: tuple[int, ...]) -> MerkleTree:
    """The Merkle tree (:mod:`secagg.protocol.merkle`) over the sorted member ids' leaves: its root is
    in P(params), the server's membership proofs come from it (one build per member list)."""
    return MerkleTree([member_leaf(u) for u in client_ids])


def members_root(client_ids: tuple[int, ...]) -> bytes:
    """The Merkle root of :func:`members_tree`."""
    return members_tree(client_ids).root


def status_of(client_id: int, survivors: Collection[int], dropped: Collection[int],
              excluded: Collection[int]) -> int:
    """A member's status byte in the status tree (see :func:`status_leaf`)."""
    if client_id in survivors:
        return STATUS_SURVIVED
    if client_id in dropped:
        return STATUS_DROPPED
    return STATUS_EXCLUDED if client_id in excluded else STATUS_ABSENT


class KeyEntry(NamedTuple):
    """One client's advertised keys (``signature`` is empty unless the malicious-server mode is on),
    its ``commitment`` to its self-mask seed (:func:`~secagg.protocol.session.seed_commitment`) and
    its ``index`` in the sorted member list (its leaf in the members' Merkle tree).

    A named tuple, not a dataclass: a 1000-client directory builds a thousand of these per client.
    """

    client_id: int
    enc_key: bytes
    mask_key: bytes
    signature: bytes = b""
    commitment: bytes = b""
    index: int = 0


@dataclass(frozen=True)
class Setup:
    """The session's parameters. On a SecAgg+ graph also the recipient's ``index`` in the sorted
    member list and the Merkle ``proof`` of it against ``params.members_root`` (the list itself is
    not sent); on the full graph the list is in ``params`` and ``index`` and ``proof`` are empty."""

    params: SessionParams
    index: int = 0
    proof: bytes = b""


@dataclass(frozen=True)
class AdvertiseKeys:
    """A client's two fresh public keys, its ``commitment`` to its self-mask seed b_u (so that the
    server can check the b_u it rebuilds from shares), and in malicious mode its ``signature`` over
    all of them and the session parameters."""

    sender: int
    enc_key: bytes
    mask_key: bytes
    signature: bytes = b""
    commitment: bytes = b""


@dataclass(frozen=True)
class KeyDirectory:
    """The recipient's own entry and its ring neighbours' (those that advertised keys), sorted by id.

    ``proof``: in malicious mode on a SecAgg+ graph, the Merkle multiproof that each entry's id is
    the member at its ``index`` (so the server cannot seat anyone else next to the recipient)."""

    entries: tuple[KeyEntry, ...]
    proof: bytes = b""


@dataclass(frozen=True)
class ShareKeys:
    """``shares``: ``(recipient, ciphertext)`` for each of the sender's neighbours, sorted by id."""

    sender: int
    session_id: bytes
    shares: tuple[tuple[int, bytes], ...]


@dataclass(frozen=True)
class ForwardedShares:
    """``shares``: ``(sender, ciphertext)`` addressed to ``recipient``, sorted by sender id."""

    recipient: int
    session_id: bytes
    shares: tuple[tuple[int, bytes], ...]


@dataclass(frozen=True)
class ShareCheck:
    """``refused``: the sender's neighbours whose forwarded shares did not decrypt or were malformed
    (it holds none of their shares). Sent before anyone masks, so that the server can take a client
    whose secrets cannot be rebuilt out of the session instead of aborting the round over it."""

    sender: int
    session_id: bytes
    refused: tuple[int, ...] = ()


@dataclass(frozen=True)
class MaskRequest:
    """``excluded``: the recipient's neighbours the server took out of the session (fewer than t of
    their share holders accepted their shares): nobody masks with them. The recipient masks with every
    other neighbour that shared keys with it."""

    session_id: bytes
    excluded: tuple[int, ...] = ()


@dataclass(frozen=True)
class MaskedInput:
    """``vector``: the masked input, ``vector_length`` words of ``bits`` bits reduced mod 2^bits,
    packed at that width (:mod:`secagg.protocol.packing`: ``ceil(vector_length * bits / 8)`` bytes;
    at 32 bits the little-endian uint32 array)."""

    sender: int
    session_id: bytes
    vector: bytes


@dataclass(frozen=True)
class ConsistencyRequest:
    """Malicious mode: the statuses the server will ask about, for every survivor to sign.

    ``survivors`` and ``dropped``: the recipient's neighbours (and itself) in U3 and in U2 \\ U3.
    ``status_root``: the Merkle root over every member's status (:func:`status_leaf`), the one
    value every survivor signs; ``proof``: the multiproof of the recipient's directory entries'
    statuses against it. Two clients shown different statuses of a common neighbour cannot both be
    shown the same root.
    """

    session_id: bytes
    survivors: tuple[int, ...]
    dropped: tuple[int, ...]
    status_root: bytes = b""
    proof: bytes = b""


@dataclass(frozen=True)
class ConsistencySignature:
    """A survivor's Ed25519 signature over (session id, status root)."""

    sender: int
    session_id: bytes
    signature: bytes


@dataclass(frozen=True)
class UnmaskRequest:
    """``survivors``: the recipient's neighbours (and itself) in U3 (sent masked inputs);
    ``dropped``: its neighbours in U2 \\ U3 (shared keys, then vanished).

    In malicious mode ``signatures`` carries its share holders' ``(signer, signature)`` consistency
    signatures over the status root it signed; it reveals nothing unless at least t of them verify.
    """

    session_id: bytes
    survivors: tuple[int, ...]
    dropped: tuple[int, ...]
    signatures: tuple[tuple[int, bytes], ...] = ()


@dataclass(frozen=True)
class UnmaskResponse:
    """Shares of survivors' self-mask seeds b_u and of dropped clients' mask keys s_u^SK, by peer."""

    sender: int
    session_id: bytes
    self_mask_shares: tuple[tuple[int, bytes], ...]
    mask_key_shares: tuple[tuple[int, bytes], ...]


STATUS_ABSENT, STATUS_SURVIVED, STATUS_DROPPED, STATUS_EXCLUDED = 0, 1, 2, 3


def status_leaf(client_id: int, status: int) -> bytes:
    """A member's leaf in the status tree: its id (4 bytes, big-endian) and its status byte:
    1 survived (U3), 2 dropped (U2 \\ U3), 3 excluded by the share check, 0 none of these (never
    shared keys)."""
    return client_id.to_bytes(4, "big") + bytes([status])


Message = (Setup | AdvertiseKeys | KeyDirectory | ShareKeys | ForwardedShares | ShareCheck | MaskRequest
           | MaskedInput | ConsistencyRequest | ConsistencySignature | UnmaskRequest | UnmaskResponse)
