"""Tests for secagg.protocol.wire: round trips of every message type and hostile input.

The contract under test (wire.py's docstring): :func:`decode` raises :class:`WireError` for anything
that is not a valid message -- random bytes, truncations, bit flips, schema-invalid msgpack -- and no
other exception type ever escapes. A decoded message re-encodes to the canonical encoding of the
msgpack value it was read from.

Wire version 3: a SecAgg+ Setup carries P(params) (member count and Merkle root, no list) plus the
recipient's index and proof, so what a client decodes is its *view* of the parameters
(``client_ids == ()``); :func:`on_the_wire` gives that view, and such a message round-trips exactly
at the byte level.
"""

from __future__ import annotations

import dataclasses
import struct
import time
import tracemalloc
import typing
from typing import Any

import msgpack
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from secagg.crypto.shamir import SHARE_BYTES
from secagg.errors import ConfigError, WireError
from secagg.protocol import wire
from secagg.protocol.finder import secure_threshold
from secagg.protocol.merkle import MerkleTree
from secagg.protocol.messages import (
    MAX_CLIENTS,
    MAX_ID,
    MAX_PROOF_BYTES,
    MAX_VECTOR_LENGTH,
    MODEL_VERSION_MAX_BYTES,
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
    members_root,
)
from secagg.protocol.wire import MAGIC, SHARE_CIPHERTEXT_BYTES, VERSION, decode, encode

MESSAGE_TYPES = typing.get_args(Message)

# ---------------------------------------------------------------------------------------------------
# Strategies: every message type with valid random fields.
# ---------------------------------------------------------------------------------------------------

client_id = st.integers(0, MAX_ID)
key32 = st.binary(min_size=32, max_size=32)
session_id = st.binary(min_size=wire.SESSION_ID_BYTES, max_size=wire.SESSION_ID_BYTES)
signature64 = st.binary(min_size=64, max_size=64)
signature = st.one_of(st.just(b""), signature64)
#: an opaque Merkle proof: whole 32-byte hashes (the wire checks the shape, the client the hashes)
proof = st.integers(0, 8).flatmap(lambda hashes: st.binary(min_size=32 * hashes, max_size=32 * hashes))


def id_tuples(min_size: int = 0, max_size: int = 8) -> st.SearchStrategy[tuple[int, ...]]:
    return st.lists(client_id, min_size=min_size, max_size=max_size, unique=True).map(
        lambda ids: tuple(sorted(ids)))


def id_pairs(payload_bytes: int, max_size: int = 5) -> st.SearchStrategy[tuple[tuple[int, bytes], ...]]:
    payload = st.binary(min_size=payload_bytes, max_size=payload_bytes)
    return st.lists(st.tuples(client_id, payload), max_size=max_size, unique_by=lambda p: p[0]).map(
        lambda pairs: tuple(sorted(pairs)))


@st.composite
def session_params(draw: st.DrawFn) -> SessionParams:
    ids = draw(id_tuples(min_size=2, max_size=24))
    n = len(ids)
    degree = draw(st.sampled_from([d for d in range(1, n) if d == n - 1 or d % 2 == 0]))
    malicious = draw(st.booleans())
    # malicious mode: on the full graph t > (n + corrupt) / 2, i.e. corrupt <= 2t - n - 1; on a sparse
    # graph a strict majority of the degree neighbours (the owner's own share does not count there)
    full = degree == n - 1
    if not malicious:
        threshold = draw(st.integers(1, degree + 1))
    elif full:
        threshold = draw(st.integers((degree + 1) // 2 + 1, degree + 1))
    else:  # and at least the finder's secure threshold for the corruption it claims
        corrupt = draw(st.integers(0, n - 1))
        if max(degree // 2 + 1, secure_threshold(n, degree, corrupt, malicious=True)) > degree:
            corrupt = 0
        threshold = draw(st.integers(max(degree // 2 + 1, secure_threshold(n, degree, corrupt, True)),
                                     degree))
    if not malicious or full:
        corrupt = draw(st.integers(0, 2 * threshold - n - 1 if malicious and full else n - 1))
    return SessionParams(
        round=draw(st.integers(0, (1 << 32) - 1)),
        model_version=draw(st.binary(max_size=MODEL_VERSION_MAX_BYTES)),
        client_ids=ids,
        threshold=threshold,
        degree=degree,
        vector_length=draw(st.integers(1, MAX_VECTOR_LENGTH)),
        bits=draw(st.integers(1, 32)),
        malicious=malicious,
        corrupt=corrupt,
        nonce=draw(st.sampled_from([b"", bytes(32)]) | st.binary(min_size=32, max_size=32)),
    )


def client_view(params: SessionParams) -> SessionParams:
    """What a SecAgg+ client holds: the parameters without the member list (count and root kept)."""
    return dataclasses.replace(params, client_ids=())


@st.composite
def setups(draw: st.DrawFn) -> Setup:
    """A full-graph Setup (the member list travels, no index or proof), or a SecAgg+ one: the
    recipient's index and a proof (the real one or random whole hashes), with the server's
    parameters (the list, which stays home) or the client's view of them (no list at all)."""
    params = draw(session_params())
    if params.full_graph:
        return Setup(params)
    index = draw(st.integers(0, params.members - 1))
    real = MerkleTree([member_leaf(u) for u in params.client_ids]).multiproof([index])
    sent = draw(st.just(real) | proof)
    return Setup(client_view(params) if draw(st.booleans()) else params, index, sent)


def on_the_wire(message: Message) -> Message:
    """What ``decode(encode(message))`` gives: a SecAgg+ Setup arrives as the client's view."""
    if isinstance(message, Setup) and not message.params.full_graph and message.params.client_ids:
        return dataclasses.replace(message, params=client_view(message.params))
    return message


@st.composite
def key_entries(draw: st.DrawFn) -> tuple[KeyEntry, ...]:
    ids = draw(id_tuples(max_size=6))
    signed = draw(st.booleans())  # a directory is signed throughout or not at all
    sig = st.binary(min_size=64, max_size=64) if signed else st.just(b"")
    committed = draw(st.booleans())  # so is the commitment column
    commitment = key32 if committed else st.just(b"")
    index = st.integers(0, MAX_CLIENTS - 1)  # the member's leaf: any order on the wire
    return tuple(KeyEntry(i, draw(key32), draw(key32), draw(sig), draw(commitment), draw(index))
                 for i in ids)


vector = st.integers(0, 1024).flatmap(lambda words: st.binary(min_size=4 * words, max_size=4 * words))

STRATEGIES: dict[type, st.SearchStrategy[Any]] = {
    Setup: setups(),
    AdvertiseKeys: st.builds(AdvertiseKeys, client_id, key32, key32, signature, key32 | st.just(b"")),
    KeyDirectory: st.builds(KeyDirectory, key_entries(), proof),
    ShareKeys: st.builds(ShareKeys, client_id, session_id, id_pairs(SHARE_CIPHERTEXT_BYTES)),
    ForwardedShares: st.builds(ForwardedShares, client_id, session_id, id_pairs(SHARE_CIPHERTEXT_BYTES)),
    MaskedInput: st.builds(MaskedInput, client_id, session_id, vector),
    ShareCheck: st.builds(ShareCheck, client_id, session_id, id_tuples()),
    MaskRequest: st.builds(MaskRequest, session_id, id_tuples()),
    ConsistencyRequest: st.builds(ConsistencyRequest, session_id, id_tuples(), id_tuples(),
                                  st.just(b"") | key32, proof),
    ConsistencySignature: st.builds(ConsistencySignature, client_id, session_id, signature64),
    UnmaskRequest: st.builds(UnmaskRequest, session_id, id_tuples(), id_tuples(), id_pairs(64)),
    UnmaskResponse: st.builds(UnmaskResponse, client_id, session_id, id_pairs(SHARE_BYTES),
                              id_pairs(SHARE_BYTES)),
}


def messages() -> st.SearchStrategy[Message]:
    """Any protocol message, with valid random fields."""
    return st.one_of(*STRATEGIES.values())


def small_messages() -> st.SearchStrategy[Message]:
    """Messages whose encoding stays short (for the quadratic all-prefixes test)."""
    return messages().filter(lambda m: len(encode(m)) <= 1200)


# Fixed small valid messages, one per type, for exhaustive (every prefix / every bit) tests.
SID = bytes(range(32))
CT = bytes(range(SHARE_CIPHERTEXT_BYTES))
SH = bytes(range(1, SHARE_BYTES + 1))
PARAMS = SessionParams(round=7, model_version=b"v1", client_ids=(3, 200, 70000), threshold=2, degree=2,
                       vector_length=5, bits=16)
MALICIOUS_PARAMS = SessionParams(round=7, model_version=b"v1", client_ids=(3, 200, 70000, MAX_ID),
                                 threshold=4, degree=3, vector_length=5, bits=16, malicious=True, corrupt=3)
# SecAgg+: degree 2 of 5 members; the Setup of the member at index 3 (70001) carries its proof
SPARSE_PARAMS = SessionParams(round=7, model_version=b"v1", client_ids=(3, 200, 70000, 70001, MAX_ID),
                              threshold=2, degree=2, vector_length=5, bits=16, malicious=True,
                              nonce=bytes(range(32, 64)))
SPARSE_PROOF = MerkleTree([member_leaf(u) for u in SPARSE_PARAMS.client_ids]).multiproof([3])
SIG = bytes(range(64, 128))
FIXED: list[Message] = [
    Setup(PARAMS),
    Setup(MALICIOUS_PARAMS),
    Setup(SPARSE_PARAMS, 3, SPARSE_PROOF),
    AdvertiseKeys(200, bytes(32), b"\xff" * 32, b"\x01" * 64),
    KeyDirectory((KeyEntry(3, b"\x02" * 32, b"\x03" * 32), KeyEntry(300, b"\x04" * 32, b"\x05" * 32))),
    KeyDirectory((KeyEntry(0, b"\x06" * 32, b"\x07" * 32, b"\x08" * 64),
                  KeyEntry(MAX_ID, b"\x09" * 32, b"\x0a" * 32, b"\x0b" * 64))),
    KeyDirectory(()),
    KeyDirectory((KeyEntry(3, b"\x02" * 32, b"\x03" * 32, b"\x08" * 64, b"\x0c" * 32, 4),
                  KeyEntry(200, b"\x04" * 32, b"\x05" * 32, b"\x0b" * 64, b"\x0d" * 32, 0)),
                 bytes(range(64, 128))),
    ShareKeys(3, SID, ((200, CT), (70000, CT))),
    ForwardedShares(70000, SID, ((3, CT),)),
    MaskedInput(MAX_ID, SID, bytes(range(20))),
    ShareCheck(3, SID, (200, 70000)),
    ShareCheck(3, SID, ()),
    MaskRequest(SID, (70000,)),
    UnmaskRequest(SID, (3, 200), (70000,)),
    UnmaskRequest(SID, (3, 200), (70000,), ((3, SIG), (200, SIG))),
    ConsistencyRequest(SID, (3, 200), (70000,)),
    ConsistencyRequest(SID, (), ()),
    ConsistencyRequest(SID, (3,), (200, 70000), b"\x0e" * 32, bytes(range(96))),
    ConsistencySignature(MAX_ID, SID, SIG),
    UnmaskResponse(3, SID, ((200, SH),), ((70000, SH), (MAX_ID, SH))),
]


# ---------------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------------


def canonical(data: bytes) -> bytes:
    """The canonical (shortest-form) msgpack encoding of the value ``data`` holds."""
    return msgpack.packb(msgpack.unpackb(data, raw=False, strict_map_key=False), use_bin_type=True)


def decode_or_wire_error(data: bytes) -> Message | None:
    """``decode(data)``, or None when it raised WireError; any other exception fails the test."""
    try:
        return decode(data)
    except WireError:
        return None
    except Exception as exc:  # pragma: no cover - only reached when the library is broken
        pytest.fail(f"decode raised {type(exc).__name__} (not WireError): {exc!r}")


def assert_faithful(data: bytes, message: Message) -> None:
    """A message decode accepted is a protocol message and stands for exactly the value ``data`` holds."""
    assert type(message) in MESSAGE_TYPES
    assert encode(message) == canonical(data)


def frame(code: Any, *fields: Any, magic: Any = MAGIC, version: Any = VERSION) -> bytes:
    return msgpack.packb([magic, version, code, *fields], use_bin_type=True)


def bin32_header(length: int) -> bytes:
    return b"\xc6" + struct.pack(">I", length)


def array32_header(length: int) -> bytes:
    return b"\xdd" + struct.pack(">I", length)


# ---------------------------------------------------------------------------------------------------
# Round trips
# ---------------------------------------------------------------------------------------------------


def test_strategies_cover_every_message_type() -> None:
    assert set(STRATEGIES) == set(MESSAGE_TYPES)
    assert {type(m) for m in FIXED} == set(MESSAGE_TYPES)
    setups_ = [m for m in FIXED if isinstance(m, Setup)]
    assert any(m.params.full_graph for m in setups_) and any(m.proof for m in setups_)
    assert any(m.proof for m in FIXED if isinstance(m, KeyDirectory))
    assert any(m.status_root and m.proof for m in FIXED if isinstance(m, ConsistencyRequest))


def assert_round_trips(message: Message) -> None:
    """Object level: decode gives the message (a SecAgg+ Setup: its client's view, which then
    round-trips exactly); byte level: one encoding, whatever the side that encodes it."""
    encoded = encode(message)
    assert isinstance(encoded, bytes)
    decoded = decode(encoded)
    assert type(decoded) is type(message)
    assert decoded == on_the_wire(message)
    assert encode(decoded) == encoded  # canonical: one encoding per message
    assert decode(encode(decoded)) == decoded
    if isinstance(message, Setup) and not message.params.full_graph:
        view = decoded.params  # type: ignore[union-attr]
        assert view.client_ids == ()
        assert (view.members, view.members_root) == (message.params.members, message.params.members_root)
        assert (decoded.index, decoded.proof) == (message.index, message.proof)  # type: ignore[union-attr]
        if message.params.client_ids:  # the server's object: only the list stays home
            assert view == client_view(message.params) != message.params
            assert view.members_root == members_root(message.params.client_ids)


@pytest.mark.parametrize("cls", MESSAGE_TYPES, ids=lambda c: c.__name__)
@given(data=st.data())
def test_round_trip_every_type(cls: type, data: st.DataObject) -> None:
    message = data.draw(STRATEGIES[cls])
    assert_round_trips(message)
    encoded = encode(message)
    assert decode(bytearray(encoded)) == on_the_wire(message)
    assert decode(memoryview(encoded)) == on_the_wire(message)


@given(messages())
def test_round_trip_mixed(message: Message) -> None:
    assert_round_trips(message)


@pytest.mark.parametrize("message", FIXED, ids=lambda m: type(m).__name__)
def test_fixed_messages_round_trip(message: Message) -> None:
    assert_round_trips(message)


def test_a_sparse_setup_sends_no_member_list() -> None:
    """SecAgg+: O(1) parameters plus an O(log n) proof, the same bytes from the server's parameters
    or the client's view; the full graph sends the whole list, and its root is recomputed."""
    sparse = Setup(SPARSE_PARAMS, 3, SPARSE_PROOF)
    view = Setup(client_view(SPARSE_PARAMS), 3, SPARSE_PROOF)
    assert encode(sparse) == encode(view)
    assert decode(encode(sparse)) == view
    assert msgpack.unpackb(encode(sparse))[4:] == [b"", 3, SPARSE_PROOF]
    assert len(SPARSE_PROOF) == 3 * ROOT_BYTES  # depth 3 for 5 members
    full = decode(encode(Setup(MALICIOUS_PARAMS)))
    assert full.params.client_ids == MALICIOUS_PARAMS.client_ids  # type: ignore[union-attr]
    assert full.params.members_root == members_root(MALICIOUS_PARAMS.client_ids)  # type: ignore[union-attr]


def test_encodings_of_different_types_differ() -> None:
    """The type code is part of the encoding: an AdvertiseKeys never decodes as anything else."""
    a = AdvertiseKeys(1, bytes(32), bytes(32))
    decoded = decode(encode(a))
    assert type(decoded) is AdvertiseKeys
    assert msgpack.unpackb(encode(a))[:3] == [MAGIC, VERSION, 2]


# ---------------------------------------------------------------------------------------------------
# Hostile bytes
# ---------------------------------------------------------------------------------------------------


@given(st.binary(max_size=600))
def test_random_bytes_raise_wire_error(data: bytes) -> None:
    with pytest.raises(WireError):
        decode(data)


@given(st.sampled_from(sorted(wire._SCHEMAS)), st.integers(3, 10), st.binary(max_size=300))
def test_random_bodies_behind_a_valid_header(code: int, arity: int, body: bytes) -> None:
    """A correct magic/version/type followed by junk: WireError, or (rarely) a faithful valid message."""
    data = bytes([0x90 | arity]) + msgpack.packb(MAGIC) + msgpack.packb(VERSION) + bytes([code]) + body
    message = decode_or_wire_error(data)
    if message is not None:
        assert_faithful(data, message)


def test_non_bytes_input_raises_wire_error() -> None:
    for value in (None, "abc", 5, [1, 2], object()):
        with pytest.raises(WireError):
            decode(value)  # type: ignore[arg-type]


@pytest.mark.parametrize("message", FIXED, ids=lambda m: type(m).__name__)
def test_every_truncation_of_fixed_messages(message: Message) -> None:
    data = encode(message)
    for cut in range(len(data)):
        with pytest.raises(WireError):
            decode(data[:cut])


@settings(max_examples=25)
@given(small_messages())
def test_every_truncation_of_random_messages(message: Message) -> None:
    data = encode(message)
    for cut in range(len(data)):
        with pytest.raises(WireError):
            decode(data[:cut])


@pytest.mark.parametrize("message", FIXED, ids=lambda m: type(m).__name__)
def test_trailing_bytes_raise_wire_error(message: Message) -> None:
    data = encode(message)
    for extra in (b"\x00", b"\xc0", data):
        with pytest.raises(WireError):
            decode(data + extra)


def flip(data: bytes, bit: int) -> bytes:
    out = bytearray(data)
    out[bit // 8] ^= 1 << (bit % 8)
    return bytes(out)


@given(messages(), st.data())
def test_single_bit_flips(message: Message, data: st.DataObject) -> None:
    encoded = encode(message)
    bit = data.draw(st.integers(0, 8 * len(encoded) - 1), label="bit")
    flipped = flip(encoded, bit)
    result = decode_or_wire_error(flipped)
    if result is not None:
        # Exact re-encoding whenever the flipped bytes are canonical msgpack; see
        # test_non_canonical_encodings_are_refused for the non-canonical case.
        assert_faithful(flipped, result)
        assert result != on_the_wire(message)


@pytest.mark.parametrize("message", FIXED, ids=lambda m: type(m).__name__)
def test_every_single_bit_flip_of_fixed_messages(message: Message) -> None:
    encoded = encode(message)
    accepted = 0
    for bit in range(8 * len(encoded)):
        flipped = flip(encoded, bit)
        result = decode_or_wire_error(flipped)
        if result is not None:
            accepted += 1
            assert_faithful(flipped, result)
            assert result != on_the_wire(message)
    assert accepted < 8 * len(encoded)  # the header bits at least are checked
    if isinstance(message, Setup) and message.params.full_graph:
        # the member list is bound to members_root: no flip of its bytes gets through
        ids = packed(*message.params.client_ids)
        start = encoded.index(ids)
        for bit in range(8 * start, 8 * (start + len(ids))):
            assert decode_or_wire_error(flip(encoded, bit)) is None


# --- schema-invalid msgpack values ------------------------------------------------------------------

K = bytes(32)


def packed(*ids: int) -> bytes:
    """An id list in its wire form: big-endian uint32 words."""
    return b"".join(struct.pack(">I", i) for i in ids)


def directory(ids: bytes, enc: bytes | None = None, mask: bytes | None = None, sigs: bytes = b"",
              commits: bytes = b"", indices: Any = None) -> list:
    """A KeyDirectory's entries in wire form: six packed columns (ids, member indices, enc keys,
    mask keys, signatures, seed commitments); indices 0, 1, ... unless given."""
    n = len(ids) // 4
    return [ids, packed(*range(n)) if indices is None else indices, bytes(32 * n) if enc is None else enc,
            bytes(32 * n) if mask is None else mask, sigs, commits]


def key_directory(*columns: Any, proof: Any = b"", **named: Any) -> bytes:
    """A KeyDirectory frame: :func:`directory`'s columns and a Merkle proof (none by default)."""
    return frame(3, directory(*columns, **named), proof)


ROOT123 = members_root((1, 2, 3))


def p_fields(ids: Any, threshold: int, degree: int, vector_length: int = 4, bits: int = 32,
             malicious: Any = False, corrupt: Any = 0, nonce: Any = b"") -> list:
    """P(params) for the members ``ids`` (round 0, no model version): their count and Merkle root."""
    ids = tuple(ids)
    return [0, b"", len(ids), members_root(ids), threshold, degree, vector_length, bits, malicious, corrupt,
            nonce]


def setup_frame(ids: Any, *params: Any, index: Any = 0, proof: Any = b"", **named: Any) -> bytes:
    """A Setup frame as the server sends it: the member list on the full graph (degree n - 1) only."""
    ids = tuple(ids)
    fields = p_fields(ids, *params, **named)
    return frame(1, fields, packed(*ids) if fields[5] == len(ids) - 1 else b"", index, proof)


VALID_FIELDS: dict[int, list[Any]] = {
    # Setup: [P(params), member list (full graph), index, proof]; P(params) = [round, model_version,
    # members, members_root, threshold, degree, vector_length, bits, malicious, corrupt, nonce]
    1: [[0, b"", 3, ROOT123, 2, 2, 4, 32, False, 0, b""], packed(1, 2, 3), 0, b""],
    2: [5, K, K, b"", b""],
    3: [directory(packed(1, 2), sigs=bytes(128)), b""],
    4: [5, SID, [[1, CT], [2, CT]]],
    5: [5, SID, [[1, CT], [2, CT]]],
    6: [5, SID, b"\x00" * 8],
    7: [SID, packed(1, 2), packed(3), [[1, SIG], [2, SIG]]],
    8: [5, SID, [[1, SH]], [[2, SH]]],
    9: [SID, packed(1, 2), packed(3), b"", b""],
    10: [5, SID, SIG],
    11: [5, SID, packed(1, 2)],
    12: [SID, packed(3)],
}
# the same, in malicious mode: t = 3 of 3 clients tolerates corrupt <= 2
MALICIOUS_FIELDS = [0, b"", 3, ROOT123, 3, 2, 4, 32, True, 2, b""]
# a SecAgg+ Setup (degree 2 of 6 members) for the member at index 4: no list, an index and its proof
SPARSE_IDS = tuple(range(1, 7))
SPARSE_ROOT = members_root(SPARSE_IDS)
SPARSE_FIELDS = [[0, b"", 6, SPARSE_ROOT, 2, 2, 4, 32, False, 0, b""], b"", 4,
                 MerkleTree([member_leaf(u) for u in SPARSE_IDS]).multiproof([4])]


def with_field(code: int, index: int, value: Any) -> bytes:
    fields = list(VALID_FIELDS[code])
    fields[index] = value
    return frame(code, *fields)


def with_params(index: int, value: Any, base: list[Any] | None = None) -> bytes:
    """The base Setup (members 1, 2, 3 on the full graph) with P(params)[index] replaced."""
    params = list(VALID_FIELDS[1][0] if base is None else base)
    params[index] = value
    return frame(1, params, *VALID_FIELDS[1][1:])


def with_members(members: int, degree: int) -> bytes:
    """The base Setup (the list 1, 2, 3 and its root) claiming ``members`` and ``degree``."""
    params = list(VALID_FIELDS[1][0])
    params[2], params[5] = members, degree
    return frame(1, params, *VALID_FIELDS[1][1:])


# members 5 beside a list of 6 (a valid SecAgg+ degree-4 list, and its root): only the count is wrong
MEMBERS_5_OF_6 = frame(1, [0, b"", 5, members_root(tuple(range(1, 7))), 2, 4, 4, 32, False, 0, b""],
                       packed(*range(1, 7)), 0, b"")


def with_sparse(index: int, value: Any) -> bytes:
    """The SecAgg+ Setup with field ``index`` replaced."""
    fields = list(SPARSE_FIELDS)
    fields[index] = value
    return frame(1, *fields)


def with_sparse_params(index: int, value: Any) -> bytes:
    params = list(SPARSE_FIELDS[0])
    params[index] = value
    return with_sparse(0, params)


def with_malicious_params(index: int, value: Any) -> bytes:
    return with_params(index, value, MALICIOUS_FIELDS)


V = msgpack.packb(VERSION)  # the version as raw msgpack (one byte), for hand-built frames


def nested_arrays(depth: int) -> bytes:
    """Raw msgpack: ``depth`` one-element arrays around an empty array."""
    return b"\x91" * depth + b"\x90"


def nested_list(depth: int) -> list:
    value: list = []
    for _ in range(depth):
        value = [value]
    return value


HEADER_AND_FRAMING_CASES: dict[str, bytes] = {
    "empty input": b"",
    "int": msgpack.packb(1),
    "bin": msgpack.packb(b"\x5e\xc6"),
    "nil": msgpack.packb(None),
    "empty array": msgpack.packb([]),
    "two items": msgpack.packb([MAGIC, VERSION]),
    "empty map": msgpack.packb({}),
    "map with entries": msgpack.packb({1: 2}),
    "map of fields": msgpack.packb({"magic": MAGIC, "version": VERSION, "type": 2}),
    "top-level ext": msgpack.packb(msgpack.ExtType(1, b"x")),
    "top-level timestamp ext": b"\xd6\xff" + b"\x00" * 4,
    "nonempty str": msgpack.packb("secagg"),
    "magic + 1": frame(2, *VALID_FIELDS[2], magic=MAGIC + 1),
    "magic 0": frame(2, *VALID_FIELDS[2], magic=0),
    "magic negative": frame(2, *VALID_FIELDS[2], magic=-MAGIC),
    "magic as bin": frame(2, *VALID_FIELDS[2], magic=b"\x5e\xc6"),
    "magic as bool": frame(2, *VALID_FIELDS[2], magic=True),
    "magic as nil": frame(2, *VALID_FIELDS[2], magic=None),
    "magic as array": frame(2, *VALID_FIELDS[2], magic=[MAGIC]),
    "magic as ext": frame(2, *VALID_FIELDS[2], magic=msgpack.ExtType(3, b"ab")),
    "version 0": frame(2, *VALID_FIELDS[2], version=0),
    "version 1": frame(2, *VALID_FIELDS[2], version=1),  # the format before nonces and commitments
    "version 2": frame(2, *VALID_FIELDS[2], version=2),  # the format before member roots and proofs
    "version 2, a v2 Setup": frame(1, [0, b"", packed(1, 2, 3), 2, 2, 4, 32, False, 0, b""], version=2),
    "version 2, a v2 KeyDirectory": frame(3, [packed(1), K, K, b"", b""], version=2),
    "version 3": frame(2, *VALID_FIELDS[2], version=3),  # the format before packed masked words
    "version 5": frame(2, *VALID_FIELDS[2], version=5),
    "version -1": frame(2, *VALID_FIELDS[2], version=-1),
    "version 2**64-1": frame(2, *VALID_FIELDS[2], version=2**64 - 1),
    "version as bool True": frame(2, *VALID_FIELDS[2], version=True),
    "version as bin": frame(2, *VALID_FIELDS[2], version=b"\x01"),
    "version as array": frame(2, *VALID_FIELDS[2], version=[1]),
    "version as empty map": frame(2, *VALID_FIELDS[2], version={}),
    "type 0": frame(0, *VALID_FIELDS[2]),
    "type 11 (first unused)": frame(11, *VALID_FIELDS[2]),
    "type 255": frame(255, *VALID_FIELDS[2]),
    "type -2": frame(-2, *VALID_FIELDS[2]),
    "type True (== Setup's code 1)": frame(True, *VALID_FIELDS[1]),
    "type as float 2.0": frame(2.0, *VALID_FIELDS[2]),
    "type as nil": frame(None, *VALID_FIELDS[2]),
    "type as bin": frame(b"\x02", *VALID_FIELDS[2]),
    "type as array": frame([2], *VALID_FIELDS[2]),
    "type as empty str": frame("", *VALID_FIELDS[2]),
    "type as a 20-deep array": b"\x94" + msgpack.packb(MAGIC) + V + nested_arrays(20) + b"\x00",
    "array nested past msgpack's stack limit": b"\x94" + msgpack.packb(MAGIC) + V + b"\x02"
    + nested_arrays(5000),
    "huge declared array": b"\x93" + msgpack.packb(MAGIC) + V + array32_header(2**32 - 1),
    "array above MAX_CLIENTS at the top": array32_header(MAX_CLIENTS + 1) + b"\x00" * 8,
    "ext in a field": with_field(2, 1, msgpack.ExtType(5, K)),
    "timestamp ext in a field": with_field(2, 0, msgpack.Timestamp(1, 0)),
    "zero-length ext8 in a field": with_field(2, 0, 7777).replace(b"\xcd\x1e\x61", b"\xc7\x00\x05"),
    "raw timestamp ext in a field": with_field(2, 0, 7777).replace(b"\xcd\x1e\x61", b"\xd7\xff" + bytes(8)),
}
FIELD_CASES: dict[str, bytes] = {}
for code, fields in VALID_FIELDS.items():
    name = wire._SCHEMAS[code][0].__name__
    FIELD_CASES[f"{name}: missing field"] = frame(code, *fields[:-1])
    FIELD_CASES[f"{name}: extra field"] = frame(code, *fields, b"")
    FIELD_CASES[f"{name}: extra nil field"] = frame(code, *fields, None)
    FIELD_CASES[f"{name}: no fields"] = frame(code)
    for i in range(len(fields)):
        for label, junk in {"nil": None, "true": True, "float": 1.5, "map": {}, "nonempty map": {1: b"x"},
                            "empty str": "", "nonempty str": "abc", "ext": msgpack.ExtType(1, b"\x01"),
                            "list": [b"x"], "negative": -1}.items():
            FIELD_CASES[f"{name}: field {i} as {label}"] = with_field(code, i, junk)
        FIELD_CASES[f"{name}: field {i} nested 30 deep"] = with_field(code, i, nested_list(30))

FIELD_CASES.update({
    # ids: out of range, wrong type
    "AdvertiseKeys.sender = -1": with_field(2, 0, -1),
    "AdvertiseKeys.sender = MAX_ID + 1": with_field(2, 0, MAX_ID + 1),
    "AdvertiseKeys.sender = 2**32 - 1": with_field(2, 0, 2**32 - 1),
    "AdvertiseKeys.sender = 2**64 - 1": with_field(2, 0, 2**64 - 1),
    "AdvertiseKeys.sender = -2**63": with_field(2, 0, -(2**63)),
    "AdvertiseKeys.sender = True": with_field(2, 0, True),
    "AdvertiseKeys.sender = False": with_field(2, 0, False),
    "AdvertiseKeys.sender = 5.0": with_field(2, 0, 5.0),
    "AdvertiseKeys.sender as bin": with_field(2, 0, b"\x05"),
    # key / signature lengths and types
    "AdvertiseKeys.enc_key 31 bytes": with_field(2, 1, bytes(31)),
    "AdvertiseKeys.enc_key 33 bytes": with_field(2, 1, bytes(33)),
    "AdvertiseKeys.enc_key empty": with_field(2, 1, b""),
    "AdvertiseKeys.enc_key as empty str": with_field(2, 1, ""),
    "AdvertiseKeys.enc_key as list of ints": with_field(2, 1, list(range(32))),
    "AdvertiseKeys.enc_key as list of bin": with_field(2, 1, [K]),
    "AdvertiseKeys.mask_key 31 bytes": with_field(2, 2, bytes(31)),
    "AdvertiseKeys.signature 1 byte": with_field(2, 3, b"\x00"),
    "AdvertiseKeys.signature 63 bytes": with_field(2, 3, bytes(63)),
    "AdvertiseKeys.signature 65 bytes": with_field(2, 3, bytes(65)),
    "AdvertiseKeys.signature 128 bytes": with_field(2, 3, bytes(128)),
    # KeyDirectory: six packed columns and a Merkle proof
    "KeyDirectory.entries in the list-of-entries form": frame(3, [[1, K, K, b""], [2, K, K, b""]], b""),
    "KeyDirectory.entries 3 columns": frame(3, directory(packed(1, 2))[:3], b""),
    "KeyDirectory.entries 5 columns (the v2 form, no indices)": frame(
        3, [packed(1, 2), bytes(64), bytes(64), b"", b""], b""),
    "KeyDirectory.entries 7 columns": frame(3, [*directory(packed(1, 2)), b""], b""),
    "KeyDirectory.entries as bin": frame(3, K, b""),
    "KeyDirectory.entries as map": frame(3, {}, b""),
    "KeyDirectory.entries ids unsorted": key_directory(packed(2, 1)),
    "KeyDirectory.entries ids duplicate": key_directory(packed(1, 1)),
    "KeyDirectory.entries id > MAX_ID": key_directory(packed(1, MAX_ID + 1)),
    "KeyDirectory.entries ids not whole words": key_directory(packed(1, 2) + b"\x00", indices=packed(0, 1)),
    "KeyDirectory.entries ids as a list": frame(3, [[1, 2], packed(0, 1), bytes(64), bytes(64), b"", b""],
                                                b""),
    "KeyDirectory.entries enc keys one byte short": key_directory(packed(1, 2), enc=bytes(63)),
    "KeyDirectory.entries enc keys one key short": key_directory(packed(1, 2), enc=bytes(32)),
    "KeyDirectory.entries mask keys one byte long": key_directory(packed(1, 2), mask=bytes(65)),
    "KeyDirectory.entries mask keys as list": key_directory(packed(1, 2), mask=[K, K]),
    "KeyDirectory.entries one signature of two": key_directory(packed(1, 2), sigs=bytes(64)),
    "KeyDirectory.entries signatures 127 bytes": key_directory(packed(1, 2), sigs=bytes(127)),
    "KeyDirectory.entries signatures 129 bytes": key_directory(packed(1, 2), sigs=bytes(129)),
    "KeyDirectory.entries signatures as nil": key_directory(packed(1, 2), sigs=None),
    "KeyDirectory.entries one commitment of two": key_directory(packed(1, 2), commits=bytes(32)),
    "KeyDirectory.entries commitments 65 bytes": key_directory(packed(1, 2), commits=bytes(65)),
    "KeyDirectory.entries keys without ids": key_directory(b"", enc=K, mask=K),
    # the indices column: one big-endian uint32 per id, each below MAX_CLIENTS
    "KeyDirectory.entries indices one index short": key_directory(packed(1, 2), indices=packed(0)),
    "KeyDirectory.entries indices one index long": key_directory(packed(1, 2), indices=packed(0, 1, 2)),
    "KeyDirectory.entries indices one byte short": key_directory(packed(1, 2), indices=packed(0, 1)[:-1]),
    "KeyDirectory.entries indices without ids": key_directory(b"", indices=packed(0)),
    "KeyDirectory.entries index = MAX_CLIENTS": key_directory(packed(1, 2), indices=packed(0, MAX_CLIENTS)),
    "KeyDirectory.entries index = 2**32 - 1": key_directory(packed(1, 2), indices=packed(2**32 - 1, 0)),
    "KeyDirectory.entries indices as a list": key_directory(packed(1, 2), indices=[0, 1]),
    "KeyDirectory.entries indices as nil": frame(3, [packed(1, 2), None, bytes(64), bytes(64), b"", b""],
                                                 b""),
    # the proof: whole 32-byte hashes
    "KeyDirectory.proof 31 bytes": key_directory(packed(1, 2), proof=bytes(31)),
    "KeyDirectory.proof 33 bytes": key_directory(packed(1, 2), proof=bytes(33)),
    "KeyDirectory.proof 1 byte": key_directory(packed(1, 2), proof=b"\x00"),
    "KeyDirectory.proof past MAX_PROOF_BYTES": key_directory(packed(1, 2), proof=bytes(MAX_PROOF_BYTES + 32)),
    "KeyDirectory.proof as a list of hashes": key_directory(packed(1, 2), proof=[K, K]),
    "KeyDirectory in the one-field v2 form": frame(3, directory(packed(1, 2))),
    # session ids
    "ShareKeys.session_id 31": with_field(4, 1, bytes(31)),
    "ShareKeys.session_id 33": with_field(4, 1, bytes(33)),
    "MaskedInput.session_id empty": with_field(6, 1, b""),
    "UnmaskRequest.session_id 64": with_field(7, 0, bytes(64)),
    "UnmaskResponse.session_id 31": with_field(8, 1, bytes(31)),
    # share pairs
    "ShareKeys.shares unsorted": with_field(4, 2, [[2, CT], [1, CT]]),
    "ShareKeys.shares duplicate": with_field(4, 2, [[1, CT], [1, CT]]),
    "ShareKeys.shares ciphertext short": with_field(4, 2, [[1, CT[:-1]]]),
    "ShareKeys.shares ciphertext long": with_field(4, 2, [[1, CT + b"\x00"]]),
    "ShareKeys.shares item of 3": with_field(4, 2, [[1, CT, b""]]),
    "ShareKeys.shares item of 1": with_field(4, 2, [[1]]),
    "ShareKeys.shares item as bin": with_field(4, 2, [CT]),
    "ShareKeys.shares id negative": with_field(4, 2, [[-1, CT]]),
    "ShareKeys.shares id bool": with_field(4, 2, [[True, CT]]),
    "ShareKeys.shares id > MAX_ID": with_field(4, 2, [[MAX_ID + 1, CT]]),
    "ShareKeys.shares data nested": with_field(4, 2, [[1, [CT]]]),
    "ForwardedShares.recipient negative": with_field(5, 0, -5),
    "ForwardedShares.shares unsorted": with_field(5, 2, [[9, CT], [3, CT]]),
    "ForwardedShares.shares share-sized data": with_field(5, 2, [[1, SH]]),
    "UnmaskResponse.self_mask_shares data 32": with_field(8, 2, [[1, SH[:-1]]]),
    "UnmaskResponse.self_mask_shares data 34": with_field(8, 2, [[1, SH + b"\x00"]]),
    "UnmaskResponse.mask_key_shares unsorted": with_field(8, 3, [[5, SH], [4, SH]]),
    "UnmaskResponse.mask_key_shares duplicate": with_field(8, 3, [[4, SH], [4, SH]]),
    "UnmaskResponse.mask_key_shares ciphertext-sized": with_field(8, 3, [[4, CT]]),
    # id lists
    "UnmaskRequest.survivors unsorted": with_field(7, 1, packed(2, 1)),
    "UnmaskRequest.survivors duplicate": with_field(7, 1, packed(1, 1)),
    "UnmaskRequest.dropped unsorted": with_field(7, 2, packed(9, 3, 4)),
    "UnmaskRequest.dropped > MAX_ID": with_field(7, 2, packed(MAX_ID + 1)),
    "UnmaskRequest.dropped last > MAX_ID": with_field(7, 2, packed(1, 2, MAX_ID + 1)),
    "UnmaskRequest.dropped 3 bytes": with_field(7, 2, b"\x00\x00\x01"),
    "UnmaskRequest.dropped 5 bytes": with_field(7, 2, packed(1) + b"\x02"),
    "UnmaskRequest.survivors as a list (unpacked form)": with_field(7, 1, [1, 2]),
    "UnmaskRequest.survivors as an empty list": with_field(7, 1, []),
    "UnmaskRequest.survivors nested": with_field(7, 1, [packed(1), packed(2)]),
    "UnmaskRequest.survivors above MAX_CLIENTS": with_field(7, 1, packed(*range(MAX_CLIENTS + 1))),
    "UnmaskRequest in the old 3-field form": frame(7, *VALID_FIELDS[7][:3]),
    # consistency signatures carried by the unmask request: [signer, 64 bytes], signers increasing
    "UnmaskRequest.signatures unsorted": with_field(7, 3, [[2, SIG], [1, SIG]]),
    "UnmaskRequest.signatures duplicate signer": with_field(7, 3, [[1, SIG], [1, SIG]]),
    "UnmaskRequest.signatures empty signature": with_field(7, 3, [[1, b""]]),
    "UnmaskRequest.signatures signature 63 bytes": with_field(7, 3, [[1, SIG[:-1]]]),
    "UnmaskRequest.signatures signature 65 bytes": with_field(7, 3, [[1, SIG + b"\x00"]]),
    "UnmaskRequest.signatures share-sized data": with_field(7, 3, [[1, SH]]),
    "UnmaskRequest.signatures signer bool": with_field(7, 3, [[True, SIG]]),
    "UnmaskRequest.signatures signer > MAX_ID": with_field(7, 3, [[MAX_ID + 1, SIG]]),
    "UnmaskRequest.signatures signer negative": with_field(7, 3, [[-1, SIG]]),
    "UnmaskRequest.signatures item of 3": with_field(7, 3, [[1, SIG, SIG]]),
    "UnmaskRequest.signatures as one bin": with_field(7, 3, SIG),
    "UnmaskRequest.signatures as a map": with_field(7, 3, {1: SIG}),
    # ConsistencyRequest: the same packed id lists as UnmaskRequest, no signatures
    "ConsistencyRequest.session_id 31": with_field(9, 0, bytes(31)),
    "ConsistencyRequest.survivors unsorted": with_field(9, 1, packed(2, 1)),
    "ConsistencyRequest.survivors duplicate": with_field(9, 1, packed(1, 1)),
    "ConsistencyRequest.survivors > MAX_ID": with_field(9, 1, packed(1, MAX_ID + 1)),
    "ConsistencyRequest.survivors 7 bytes": with_field(9, 1, packed(1, 2)[:-1]),
    "ConsistencyRequest.survivors as a list (unpacked form)": with_field(9, 1, [1, 2]),
    "ConsistencyRequest.dropped unsorted": with_field(9, 2, packed(9, 3)),
    "ConsistencyRequest.dropped as a list": with_field(9, 2, [3]),
    "ConsistencyRequest with signatures (UnmaskRequest's form)": frame(9, *VALID_FIELDS[7]),
    "ConsistencyRequest in the old 3-field form": frame(9, *VALID_FIELDS[9][:3]),
    # the status root: none or 32 bytes; the proof: whole 32-byte hashes
    "ConsistencyRequest.status_root 31 bytes": with_field(9, 3, bytes(31)),
    "ConsistencyRequest.status_root 33 bytes": with_field(9, 3, bytes(33)),
    "ConsistencyRequest.status_root 64 bytes": with_field(9, 3, bytes(64)),
    "ConsistencyRequest.status_root as a list": with_field(9, 3, [K]),
    "ConsistencyRequest.proof 33 bytes": with_field(9, 4, bytes(33)),
    "ConsistencyRequest.proof 31 bytes": with_field(9, 4, bytes(31)),
    "ConsistencyRequest.proof 40 bytes": with_field(9, 4, bytes(40)),
    "ConsistencyRequest.proof past MAX_PROOF_BYTES": with_field(9, 4, bytes(MAX_PROOF_BYTES + 32)),
    "ConsistencyRequest.proof as a list of hashes": with_field(9, 4, [K]),
    # ConsistencySignature: exactly 64 bytes (unlike AdvertiseKeys, never empty)
    "ConsistencySignature.signature empty": with_field(10, 2, b""),
    "ConsistencySignature.signature 63 bytes": with_field(10, 2, SIG[:-1]),
    "ConsistencySignature.signature 65 bytes": with_field(10, 2, SIG + b"\x00"),
    "ConsistencySignature.signature 128 bytes": with_field(10, 2, SIG + SIG),
    "ConsistencySignature.signature as list": with_field(10, 2, [SIG]),
    "ConsistencySignature.sender bool": with_field(10, 0, True),
    "ConsistencySignature.sender > MAX_ID": with_field(10, 0, MAX_ID + 1),
    "ConsistencySignature.session_id 33": with_field(10, 1, bytes(33)),
    # vectors
    "MaskedInput.vector as list": with_field(6, 2, [0, 0, 0, 0]),
    # Setup: [P(params), member list, index, proof]; P(params) has 11 fields
    "Setup.params 6 fields": with_field(1, 0, VALID_FIELDS[1][0][:6]),
    "Setup.params in the v1 7-field form": with_field(1, 0, VALID_FIELDS[1][0][:7]),
    "Setup.params 8 fields": with_field(1, 0, VALID_FIELDS[1][0][:8]),
    "Setup.params 10 fields": with_field(1, 0, VALID_FIELDS[1][0][:10]),
    "Setup.params 12 fields": with_field(1, 0, [*VALID_FIELDS[1][0], 0]),
    "Setup in the v2 form (the list inside the params)": frame(
        1, [0, b"", packed(1, 2, 3), 2, 2, 4, 32, False, 0, b""]),
    "Setup in the v2 form, v3 tail": frame(
        1, [0, b"", packed(1, 2, 3), 2, 2, 4, 32, False, 0, b""], *VALID_FIELDS[1][1:]),
    "Setup.params as bin": with_field(1, 0, b"\x00" * 9),
    "Setup.params as map": with_field(1, 0, {}),
    "Setup.params round -1": with_params(0, -1),
    "Setup.params round 2**32": with_params(0, 2**32),
    "Setup.params model_version 65 bytes": with_params(1, bytes(MODEL_VERSION_MAX_BYTES + 1)),
    "Setup.params model_version str": with_params(1, ""),
    # the member list (Setup field 1), consistent with members and members_root unless said
    "Setup.params one client": setup_frame([1], 2, 2),
    "Setup.params one client, degree 0": setup_frame([1], 1, 0),
    "Setup.params no clients": frame(1, [0, b"", 0, members_root((1,)), 1, 1, 4, 32, False, 0, b""], b"", 0,
                                     b""),
    "Setup.params no clients in the list (full graph)": with_field(1, 1, b""),
    "Setup.client_ids unsorted": with_field(1, 1, packed(2, 1, 3)),
    "Setup.client_ids duplicate": with_field(1, 1, packed(1, 1, 3)),
    "Setup.client_ids id > MAX_ID": with_field(1, 1, packed(1, 2, MAX_ID + 1)),
    "Setup.client_ids as a list (unpacked form)": with_field(1, 1, [1, 2, 3]),
    "Setup.client_ids 11 bytes": with_field(1, 1, packed(1, 2, 3)[:-1]),
    "Setup.client_ids above MAX_CLIENTS": with_field(1, 1, packed(*range(MAX_CLIENTS + 1))),
    # members: the count of the list; members_root: its 32-byte Merkle root
    "Setup.params members 4 of 3 listed (degree 3: the list counts, degree too high)": with_members(4, 3),
    "Setup.params members 2 of 3 listed (degree 1: the list counts, odd degree)": with_members(2, 1),
    "Setup.params members 4 of 3 listed (degree 2: SecAgg+, with a list)": with_params(2, 4),
    "Setup.params members 0 of 3 listed": with_params(2, 0),
    "Setup.params members > MAX_CLIENTS": with_params(2, MAX_CLIENTS + 1),
    "Setup.params members bool": with_params(2, True),
    "Setup.params members as bin": with_params(2, b"\x03"),
    "Setup.params members_root 31 bytes": with_params(3, ROOT123[:31]),
    "Setup.params members_root 33 bytes": with_params(3, ROOT123 + b"\x00"),
    "Setup.params members_root empty (full graph)": with_params(3, b""),
    "Setup.params members_root as a list": with_params(3, [ROOT123]),
    "Setup.params members_root of another list (full graph)": with_params(3, members_root((1, 2, 4))),
    "Setup.params members_root of the list unsorted": with_params(3, members_root((2, 1, 3))),
    "Setup.params members_root zero (full graph)": with_params(3, bytes(32)),
    "Setup.params members_root flipped (full graph)": with_params(3, bytes([ROOT123[0] ^ 1]) + ROOT123[1:]),
    "Setup list of another member set than the root": with_field(1, 1, packed(1, 2, 4)),
    "Setup list one member short of the root (members 3)": with_field(1, 1, packed(1, 2)),
    "Setup.params members 5 beside a (SecAgg+) list of 6": MEMBERS_5_OF_6,
    "Setup list and root one member longer than members": frame(
        1, [0, b"", 3, members_root((1, 2, 3, 4)), 2, 2, 4, 32, False, 0, b""], packed(1, 2, 3, 4), 0, b""),
    # a SecAgg+ Setup: members and root only, the recipient's index and proof
    "Setup sparse without a members_root": with_sparse_params(3, b""),
    "Setup sparse members_root 31 bytes": with_sparse_params(3, SPARSE_ROOT[:31]),
    "Setup sparse members 1": with_sparse_params(2, 1),
    "Setup sparse members 0": with_sparse_params(2, 0),
    "Setup sparse members > MAX_CLIENTS": with_sparse_params(2, MAX_CLIENTS + 1),
    "Setup sparse members 3 (degree 2 = n - 1: a full graph with an index and proof)":
        with_sparse_params(2, 3),
    "Setup sparse, a list of another member set": with_sparse(1, packed(1, 2, 3, 4, 5, 7)),
    "Setup sparse, with its own member list (sent on the full graph only)":
        with_sparse(1, packed(*SPARSE_IDS)),
    "Setup sparse members 3 (the full graph), no list, no index or proof": frame(
        1, [0, b"", 3, SPARSE_ROOT, 2, 2, 4, 32, False, 0, b""], b"", 0, b""),
    "Setup sparse, a list one member short": with_sparse(1, packed(*SPARSE_IDS[:-1])),
    "Setup.index MAX_CLIENTS": with_sparse(2, MAX_CLIENTS),
    "Setup.index 2**32": with_sparse(2, 2**32),
    "Setup.index 2**64 - 1": with_sparse(2, 2**64 - 1),
    "Setup.index bool": with_sparse(2, True),
    "Setup.index as bin": with_sparse(2, b"\x04"),
    "Setup.index float": with_sparse(2, 4.0),
    "Setup.proof 33 bytes": with_sparse(3, bytes(33)),
    "Setup.proof 31 bytes": with_sparse(3, bytes(31)),
    "Setup.proof one hash and a byte": with_sparse(3, SPARSE_FIELDS[3] + b"\x00"),
    "Setup.proof one byte short": with_sparse(3, SPARSE_FIELDS[3][:-1]),
    "Setup.proof past MAX_PROOF_BYTES": with_sparse(3, bytes(MAX_PROOF_BYTES + 32)),
    "Setup.proof as a list of hashes": with_sparse(3, [K, K, K]),
    "Setup.proof 33 bytes (full graph)": with_field(1, 3, bytes(33)),
    # the full graph sends the list: no index and no proof
    "Setup full graph with an index": with_field(1, 2, 2),
    "Setup full graph with index 1": with_field(1, 2, 1),
    "Setup full graph with a proof": with_field(1, 3, K),
    "Setup full graph with an index and a proof": frame(1, VALID_FIELDS[1][0], packed(1, 2, 3), 1, K + K),
    "Setup sparse in the v2 3-field form (no proof)": frame(1, *SPARSE_FIELDS[:3]),
    "Setup.params threshold 0": with_params(4, 0),
    "Setup.params threshold > degree + 1": with_params(4, 4),
    "Setup.params threshold bool": with_params(4, True),
    "Setup.params degree 0": setup_frame([1, 2, 3], 1, 0),
    "Setup.params degree 0 (the list sent on a graph that is not full)": with_params(5, 0),
    "Setup.params degree 3 of 3 clients": setup_frame([1, 2, 3], 2, 3),
    "Setup.params degree 3 of 3 clients (the list sent on a graph that is not full)": with_params(5, 3),
    "Setup.params degree bool": with_params(5, True),
    "Setup.params vector_length 0": with_params(6, 0),
    "Setup.params vector_length > MAX": with_params(6, MAX_VECTOR_LENGTH + 1),
    "Setup.params bits 0": with_params(7, 0),
    "Setup.params bits 33": with_params(7, 33),
    "Setup.params bits float": with_params(7, 32.0),
    "Setup.params odd degree below n - 1": setup_frame(range(1, 6), 2, 3),
    "Setup.params sparse degree 6 of 6 members": with_sparse_params(5, 6),
    # malicious: a real msgpack bool, nothing that merely compares equal to one
    "Setup.params malicious 1": with_params(8, 1),
    "Setup.params malicious 0": with_params(8, 0),
    "Setup.params malicious 1 (malicious base)": with_malicious_params(8, 1),
    "Setup.params malicious 1.0": with_params(8, 1.0),
    "Setup.params malicious nil": with_params(8, None),
    "Setup.params malicious str": with_params(8, "true"),
    "Setup.params malicious bin": with_params(8, b"\x01"),
    "Setup.params malicious list": with_params(8, [True]),
    # corrupt: an integer in [0, n - 1]; in malicious mode also 2t > n + corrupt on the full graph
    "Setup.params corrupt -1": with_params(9, -1),
    "Setup.params corrupt n": with_params(9, 3),
    "Setup.params corrupt > MAX_CLIENTS": with_params(9, MAX_CLIENTS + 1),
    "Setup.params corrupt 2**64 - 1": with_params(9, 2**64 - 1),
    "Setup.params corrupt bool": with_params(9, True),
    "Setup.params corrupt float": with_params(9, 0.0),
    "Setup.params corrupt nil": with_params(9, None),
    "Setup.params sparse corrupt n": with_sparse_params(9, 6),
    "Setup.params malicious, corrupt > n - 1": with_malicious_params(9, 3),
    "Setup.params malicious, corrupt = 2t - n": setup_frame([1, 2, 3], 2, 2, malicious=True, corrupt=1),
    "Setup.params malicious, t = n / 2": setup_frame([1, 2, 3, 4], 2, 3, malicious=True),
    "Setup.params nonce of 31 bytes": with_params(10, bytes(31)),
    "Setup.params nonce as int": with_params(10, 0),
    "Setup.params malicious, t <= (n + corrupt) / 2": with_malicious_params(4, 2),
    "Setup.params malicious sparse, t = degree / 2": setup_frame(range(1, 7), 2, 4, malicious=True),
    "Setup.params malicious sparse, t = degree + 1 (own share counted)": setup_frame(range(1, 7), 5, 4,
                                                                                      malicious=True),
    "Setup.params malicious sparse, corrupt above the finder's bound": setup_frame(range(1, 7), 3, 4,
                                                                                   malicious=True, corrupt=5),
})


def test_base_frames_are_valid() -> None:
    """The invalid cases below each change one thing in one of these valid frames."""
    assert sorted(VALID_FIELDS) == sorted(wire._SCHEMAS)
    for code, fields in VALID_FIELDS.items():
        message = decode(frame(code, *fields))
        assert type(message) is wire._SCHEMAS[code][0]
        assert encode(message) == frame(code, *fields)
    assert decode(frame(1, *VALID_FIELDS[1])) == Setup(SessionParams(0, b"", (1, 2, 3), 2, 2, 4, 32))
    assert decode(with_params(5, 2)) == Setup(SessionParams(0, b"", (1, 2, 3), 2, 2, 4, 32))
    assert decode(with_params(9, 2)) == Setup(SessionParams(0, b"", (1, 2, 3), 2, 2, 4, 32, corrupt=2))
    assert decode(frame(1, MALICIOUS_FIELDS, *VALID_FIELDS[1][1:])) == Setup(
        SessionParams(0, b"", (1, 2, 3), 3, 2, 4, 32, malicious=True, corrupt=2))
    assert setup_frame([1, 2, 3], 2, 2) == frame(1, *VALID_FIELDS[1])
    # one below the bound: t = 2 of 3 clients tolerates corrupt = 0 (2t = 4 > 3 + 0)
    assert decode(setup_frame([1, 2, 3], 2, 2, malicious=True)).params.malicious is True
    # the SecAgg+ base: the client's view (no list), its index and proof; that view round-trips
    base = decode(frame(1, *SPARSE_FIELDS))
    view = SessionParams(0, b"", (), 2, 2, 4, 32, members=6, members_root=SPARSE_ROOT)
    assert base == Setup(view, 4, SPARSE_FIELDS[3])
    assert base.params == client_view(SessionParams(0, b"", SPARSE_IDS, 2, 2, 4, 32))  # type: ignore[union-attr]
    assert decode(with_sparse(3, b"")) == Setup(view, 4)  # the proof is checked by the client
    assert decode(with_sparse(2, MAX_CLIENTS - 1)).index == MAX_CLIENTS - 1  # type: ignore[union-attr]
    # the sparse malicious bound: t = 3 > 4 / 2 for degree 4, and with corrupt claimed the finder's
    # secure threshold (here: no t <= 4 holds 5 corrupt of 6 clients off 2^-40)
    sparse = decode(setup_frame(range(1, 7), 3, 4, malicious=True))
    assert sparse == Setup(client_view(SessionParams(0, b"", tuple(range(1, 7)), 3, 4, 4, 32, True, 0)))
    with pytest.raises(WireError, match=r"corrupt=5 .*2\^-40"):
        decode(setup_frame(range(1, 7), 3, 4, malicious=True, corrupt=5))
    nonce = bytes(range(32))
    assert decode(with_params(10, nonce)).params.nonce == nonce  # type: ignore[union-attr]
    # the key directory: indices in any order below MAX_CLIENTS, a proof of whole hashes
    assert decode(frame(3, *VALID_FIELDS[3])) == KeyDirectory(
        (KeyEntry(1, K, K, bytes(64), b"", 0), KeyEntry(2, K, K, bytes(64), b"", 1)))
    unordered = key_directory(packed(1, 2), indices=packed(MAX_CLIENTS - 1, 0), proof=K + K)
    assert decode(unordered) == KeyDirectory(
        (KeyEntry(1, K, K, index=MAX_CLIENTS - 1), KeyEntry(2, K, K, index=0)), K + K)
    assert decode(frame(7, *VALID_FIELDS[7][:3], [])) == UnmaskRequest(SID, (1, 2), (3,))
    assert decode(frame(9, *VALID_FIELDS[9])) == ConsistencyRequest(SID, (1, 2), (3,))
    assert decode(frame(9, *VALID_FIELDS[9][:3], K, K + K)) == ConsistencyRequest(SID, (1, 2), (3,), K, K + K)
    assert decode(frame(10, *VALID_FIELDS[10])) == ConsistencySignature(5, SID, SIG)


def test_type_codes_of_the_new_messages() -> None:
    """Codes 1-10 are unchanged; version 3 adds the share check (11, 12), drops MaskedInput.refused
    (reported in ShareCheck now) and adds fields: Setup's member list, index and proof beside
    P(params), KeyDirectory's indices column and proof, ConsistencyRequest's status root and proof."""
    assert {code: cls for code, (cls, _) in wire._SCHEMAS.items()} == {
        1: Setup, 2: AdvertiseKeys, 3: KeyDirectory, 4: ShareKeys, 5: ForwardedShares, 6: MaskedInput,
        7: UnmaskRequest, 8: UnmaskResponse, 9: ConsistencyRequest, 10: ConsistencySignature,
        11: ShareCheck, 12: MaskRequest}
    # the share check: the refused senders, then the excluded neighbours (packed id lists)
    assert msgpack.unpackb(encode(ShareCheck(5, SID, (1, 2)))) == [MAGIC, VERSION, 11, 5, SID, packed(1, 2)]
    assert msgpack.unpackb(encode(MaskRequest(SID, (3,)))) == [MAGIC, VERSION, 12, SID, packed(3)]
    assert msgpack.unpackb(encode(MaskedInput(5, SID, bytes(8))))[3:] == [5, SID, bytes(8)]  # no refused
    assert VERSION == 4  # 4: MaskedInput.vector packed at the ring width (same fields)
    # any byte length decodes here: only the session knows its width, and its server checks it
    for size in (1, 3, 4001):
        assert decode(encode(MaskedInput(5, SID, bytes(size)))).vector == bytes(size)
    assert msgpack.unpackb(encode(ConsistencyRequest(SID, (1,), ())))[:3] == [MAGIC, VERSION, 9]
    assert msgpack.unpackb(encode(ConsistencySignature(1, SID, SIG)))[:3] == [MAGIC, VERSION, 10]
    assert len(msgpack.unpackb(encode(UnmaskRequest(SID, (1,), ())))) == 3 + 4
    # the id lists travel packed, like UnmaskRequest's; then the status root and proof
    encoded = msgpack.unpackb(encode(ConsistencyRequest(SID, (1, 2), (3,))))
    assert encoded[3:] == [SID, packed(1, 2), packed(3), b"", b""]
    encoded = msgpack.unpackb(encode(ConsistencyRequest(SID, (1, 2), (3,), K, bytes(64))))
    assert encoded[3:] == [SID, packed(1, 2), packed(3), K, bytes(64)]
    # the key directory: six packed columns, then the proof
    entries = (KeyEntry(1, K, b"\x01" * 32, SIG, b"\x02" * 32, 7), KeyEntry(9, K, K, SIG, K, 3))
    assert msgpack.unpackb(encode(KeyDirectory(entries, K)))[3:] == [
        [packed(1, 9), packed(7, 3), K + K, b"\x01" * 32 + K, SIG + SIG, b"\x02" * 32 + K], K]
    # Setup: P(params) (11 fields), the member list, index, proof
    ids = MALICIOUS_PARAMS.client_ids
    setup = msgpack.unpackb(encode(Setup(MALICIOUS_PARAMS)))
    assert len(setup) == 3 + 4 and setup[4:] == [packed(*ids), 0, b""]
    # malicious travels as a msgpack bool (0xc3), corrupt as an unsigned int
    fields = setup[3]
    assert len(fields) == 11 and fields[8] is True and fields[9] == 3 and fields[10] == b""
    assert fields[:8] == [7, b"v1", 4, members_root(ids), 4, 3, 5, 16]
    assert msgpack.unpackb(encode(Setup(PARAMS)))[3][8:] == [False, 0, b""]
    # SecAgg+: no list; the index and proof
    sparse = msgpack.unpackb(encode(Setup(SPARSE_PARAMS, 3, SPARSE_PROOF)))
    assert sparse[3][2:4] == [5, members_root(SPARSE_PARAMS.client_ids)]
    assert sparse[4:] == [b"", 3, SPARSE_PROOF]
    # the params hashed into the session id are P(params), without the list
    assert msgpack.unpackb(wire.encode_params(MALICIOUS_PARAMS)) == fields


@pytest.mark.parametrize("data", HEADER_AND_FRAMING_CASES.values(), ids=HEADER_AND_FRAMING_CASES.keys())
def test_invalid_framing_raises_wire_error(data: bytes) -> None:
    with pytest.raises(WireError):
        decode(data)


@pytest.mark.parametrize("data", FIELD_CASES.values(), ids=FIELD_CASES.keys())
def test_schema_invalid_fields_raise_wire_error(data: bytes) -> None:
    with pytest.raises(WireError):
        decode(data)


@pytest.mark.parametrize("which", ["magic", "version"])
def test_float_magic_or_version_is_refused(which: str) -> None:
    data = (frame(2, *VALID_FIELDS[2], magic=float(MAGIC)) if which == "magic"
            else frame(2, *VALID_FIELDS[2], version=float(VERSION)))
    with pytest.raises(WireError):
        decode(data)


@pytest.mark.parametrize("position", ["version", "type"])
def test_deeply_nested_header_field_raises_wire_error(position: str) -> None:
    deep = nested_arrays(1015)
    if position == "version":
        data = b"\x93" + msgpack.packb(MAGIC) + deep + b"\x02"
    else:
        data = b"\x93" + msgpack.packb(MAGIC) + V + deep
    with pytest.raises(WireError):
        decode(data)


def test_nesting_below_the_repr_limit_is_refused_cleanly() -> None:
    for depth in (1, 50, 500):
        with pytest.raises(WireError):
            decode(b"\x93" + msgpack.packb(MAGIC) + nested_arrays(depth) + b"\x02")
        with pytest.raises(WireError):
            decode(b"\x93" + msgpack.packb(MAGIC) + V + nested_arrays(depth))


@pytest.mark.parametrize("data", [
    flip(encode(AdvertiseKeys(200, K, K)), 8 * 7 + 7),                    # cc c8 -> cc 48
    frame(2, *VALID_FIELDS[2]).replace(b"\x05\xc4\x20", b"\xcd\x00\x05\xc4\x20", 1),  # 5 as uint16
    msgpack.packb([MAGIC, VERSION, 2, 5, K, K, b""], use_bin_type=True).replace(
        b"\xc4\x00", b"\xc5\x00\x00", 1),                                  # empty signature as bin16
], ids=["id 72 as uint8 (bit flip of 200)", "id 5 as uint16", "empty signature as bin16"])
def test_non_canonical_encodings_are_refused(data: bytes) -> None:
    """Each input decodes to a valid message today; exactly one encoding per message would refuse it."""
    assert canonical(data) != data
    result = decode_or_wire_error(data)
    assert result is None or encode(result) == data


# --- mutation fuzz over valid messages --------------------------------------------------------------

junk_leaf = st.one_of(
    st.none(), st.booleans(),
    st.integers(-(2**63), 2**64 - 1),
    # 1.0 and 24262.0 are the known float-for-int bug (test_float_magic_or_version_is_refused).
    st.floats(allow_nan=True).filter(lambda f: f not in (float(MAGIC), float(VERSION))),
    st.binary(max_size=80), st.text(max_size=3),
    st.builds(msgpack.ExtType, st.integers(0, 127), st.binary(max_size=4)),
    st.builds(msgpack.Timestamp, st.integers(0, 2**32 - 1)),
)
junk = st.recursive(junk_leaf, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.integers(0, 9), inner, max_size=2)), max_leaves=8)


@st.composite
def mutated_objects(draw: st.DrawFn) -> Any:
    """The msgpack value of a valid message with one node replaced, deleted or inserted."""
    obj = msgpack.unpackb(encode(draw(messages())), raw=False)
    node = obj
    while True:  # walk down to a random list
        children = [i for i, v in enumerate(node) if isinstance(v, list)]
        if not children or draw(st.booleans()):
            break
        node = node[draw(st.sampled_from(children))]
    op = draw(st.sampled_from(["replace", "delete", "insert"]))
    if op == "replace" and node:
        node[draw(st.integers(0, len(node) - 1))] = draw(junk)
    elif op == "delete" and node:
        del node[draw(st.integers(0, len(node) - 1))]
    else:
        node.insert(draw(st.integers(0, len(node))), draw(junk))
    return obj


@given(mutated_objects())
def test_mutated_messages_raise_wire_error_or_decode_faithfully(obj: Any) -> None:
    data = msgpack.packb(obj, use_bin_type=True)
    message = decode_or_wire_error(data)
    if message is not None:
        assert_faithful(data, message)


# ---------------------------------------------------------------------------------------------------
# Error messages name the field
# ---------------------------------------------------------------------------------------------------

FIELD_NAME_CASES: list[tuple[bytes, str | tuple[str, ...]]] = [
    (with_field(2, 1, bytes(31)), "AdvertiseKeys.enc_key"),
    (with_field(2, 2, bytes(33)), "AdvertiseKeys.mask_key"),
    (with_field(2, 3, bytes(10)), "AdvertiseKeys.signature"),
    (with_field(2, 0, -1), "AdvertiseKeys.sender"),
    (with_field(4, 1, bytes(31)), "ShareKeys.session_id"),
    (with_field(4, 2, [[1, CT], [7, CT[:-1]]]), "ShareKeys.shares[1].data"),
    (with_field(4, 2, [[1, CT], [MAX_ID + 1, CT]]), "ShareKeys.shares[1].id"),
    (with_field(4, 2, [[2, CT], [1, CT]]), "ShareKeys.shares"),
    (with_field(5, 0, True), "ForwardedShares.recipient"),
    (with_field(6, 2, [0, 0]), "MaskedInput.vector"),
    (with_field(7, 2, packed(4, 4)), "UnmaskRequest.dropped"),
    (with_field(7, 1, packed(1, MAX_ID + 1)), "UnmaskRequest.survivors"),
    (with_field(8, 3, [[1, SH], [2, SH[:-1]]]), "UnmaskResponse.mask_key_shares[1].data"),
    (with_field(8, 2, [[1, SH, SH]]), "UnmaskResponse.self_mask_shares[0]"),
    (key_directory(packed(1, 2), mask=bytes(63)), "KeyDirectory.entries.mask_keys"),
    (key_directory(packed(1, 2), enc=bytes(65)), "KeyDirectory.entries.enc_keys"),
    (key_directory(packed(1, 2), sigs=bytes(64)), "KeyDirectory.entries.signatures"),
    (key_directory(packed(1, 2), commits=bytes(31)), "KeyDirectory.entries.commitments"),
    (key_directory(packed(2, 1)), "KeyDirectory.entries.client_ids"),
    (key_directory(packed(1, 2), indices=packed(0)), "KeyDirectory.entries.indices: expected 8 bytes, got 4"),
    (key_directory(packed(1, 2), indices=packed(0, MAX_CLIENTS)), "KeyDirectory.entries.indices"),
    (frame(3, [packed(1, 2), bytes(64), bytes(64), b"", b""], b""),
     "KeyDirectory.entries: expected [ids, indices"),
    (key_directory(packed(1, 2), proof=bytes(33)),
     "KeyDirectory.proof: a Merkle proof is whole 32-byte hashes"),
    (frame(3, directory(packed(1, 2))), "KeyDirectory: expected 2 fields"),
    (with_params(7, 33), "Setup.params.bits"),
    (with_field(1, 1, packed(3, 2, 1)), "Setup.client_ids"),
    (setup_frame([1, 2, 3], 1, 0), "Setup.params: degree: must be >= 1"),
    (setup_frame([1, 2, 3], 2, 3), "Setup.params: degree: must be in [1, 2]"),
    (setup_frame(range(1, 6), 2, 3), "Setup.params: degree: must be even"),
    (frame(2, 5, K, K, b""), "AdvertiseKeys: expected 5 fields"),
    (with_params(8, 1), "Setup.params.malicious"),
    (with_params(8, None), "Setup.params.malicious"),
    (with_params(9, MAX_CLIENTS + 1), "Setup.params.corrupt"),
    (with_params(9, True), "Setup.params.corrupt"),
    (with_params(9, 3), "corrupt: must be <= 2"),
    (with_malicious_params(4, 2), "malicious mode needs t > (n + corrupt) / 2"),
    (setup_frame(range(1, 7), 2, 4, malicious=True),
     "malicious mode on a SecAgg+ graph needs degree / 2 < t <= degree (2 < t <= 4"),
    (setup_frame(range(1, 7), 5, 4, malicious=True),
     "a client's own share does not count), got t=5"),
    (with_params(10, bytes(33)), "Setup.params.nonce: expected at most 32 bytes, got 33"),
    (with_params(10, bytes(31)), "Setup.params.nonce: expected 0 or 32 bytes, got 31"),
    (with_field(1, 0, VALID_FIELDS[1][0][:7]), "Setup.params: expected 11 fields"),
    (frame(1, VALID_FIELDS[1][0]), "Setup: expected 4 fields"),
    (with_params(3, ROOT123[:31]), "Setup.params.members_root: expected 32 bytes, got 31"),
    (with_params(3, members_root((1, 2, 4))), ("Setup.params", "members_root")),
    (with_field(1, 1, packed(1, 2, 4)), ("Setup.params", "members_root")),
    (with_params(3, bytes(32)), ("Setup.params", "members_root")),
    (MEMBERS_5_OF_6, ("Setup.params", "member")),
    (with_field(1, 2, 1), "Setup.index: a full-graph Setup carries the member list"),
    (with_field(1, 3, K), "Setup.index: a full-graph Setup carries the member list"),
    (with_sparse(1, packed(*SPARSE_IDS)), "Setup.client_ids: a SecAgg+ Setup carries no member list"),
    (with_params(2, MAX_CLIENTS + 1), "Setup.params.members"),
    (with_sparse_params(3, b""), "Setup.params.members_root: expected 32 bytes, got 0"),
    (frame(1, [0, b"", 3, SPARSE_ROOT, 2, 2, 4, 32, False, 0, b""], b"", 0, b""),
     "Setup.params: client_ids: a full-graph session needs the list"),
    (with_sparse(2, MAX_CLIENTS), f"Setup.index: expected an integer in [0, {MAX_CLIENTS - 1}]"),
    (with_sparse(3, bytes(33)), "Setup.proof: a Merkle proof is whole 32-byte hashes, got 33 bytes"),
    (with_field(9, 3, bytes(31)), "ConsistencyRequest.status_root: expected 0 or 32 bytes, got 31"),
    (with_field(9, 4, bytes(40)), "ConsistencyRequest.proof: a Merkle proof is whole 32-byte hashes"),
    (frame(7, *VALID_FIELDS[7][:3]), "UnmaskRequest: expected 4 fields"),
    (with_field(7, 3, [[1, SIG], [2, SIG[:-1]]]), "UnmaskRequest.signatures[1].data"),
    (with_field(7, 3, [[1, SIG], [True, SIG]]), "UnmaskRequest.signatures[1].id"),
    (with_field(7, 3, [[2, SIG], [1, SIG]]), "UnmaskRequest.signatures"),
    (with_field(9, 1, packed(2, 1)), "ConsistencyRequest.survivors"),
    (with_field(9, 2, packed(MAX_ID + 1)), "ConsistencyRequest.dropped"),
    (with_field(9, 0, b""), "ConsistencyRequest.session_id"),
    (frame(9, *VALID_FIELDS[7]), "ConsistencyRequest: expected 5 fields"),
    (frame(9, *VALID_FIELDS[9][:3]), "ConsistencyRequest: expected 5 fields, got 3"),
    (with_field(10, 2, b""), "ConsistencySignature.signature"),
    (with_field(10, 0, -1), "ConsistencySignature.sender"),
    (with_field(10, 1, bytes(31)), "ConsistencySignature.session_id"),
    (frame(2, *VALID_FIELDS[2], version=1), "unsupported version 1"),
    (frame(2, *VALID_FIELDS[2], version=2), "unsupported version 2"),
    (frame(2, *VALID_FIELDS[2], version=3), "unsupported version 3"),
    (frame(2, *VALID_FIELDS[2], version=5), "unsupported version 5"),
    (frame(42, *VALID_FIELDS[2]), "unknown message type"),
]


@pytest.mark.parametrize(("data", "field"), FIELD_NAME_CASES,
                         ids=[f if isinstance(f, str) else " / ".join(f) for _, f in FIELD_NAME_CASES])
def test_error_messages_name_the_field(data: bytes, field: str | tuple[str, ...]) -> None:
    """``field`` (or each of several parts) appears in the error."""
    with pytest.raises(WireError) as info:
        decode(data)
    for part in (field,) if isinstance(field, str) else field:
        assert part in str(info.value)


# ---------------------------------------------------------------------------------------------------
# Size limits: refused without allocating what the header claims
# ---------------------------------------------------------------------------------------------------


def _refused_cheaply(data: Any, max_bytes: int = 1 << 20) -> None:
    tracemalloc.start()
    try:
        start = time.perf_counter()
        with pytest.raises(WireError):
            decode(data)
        elapsed = time.perf_counter() - start
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert elapsed < 1.0
    # decode may copy its (small) input once or twice; nothing near the claimed length.
    assert peak < max_bytes + (2 * len(data) if isinstance(data, bytes) else 0)


@pytest.mark.parametrize("claimed", [2**31, 2**32 - 1, 4 * MAX_VECTOR_LENGTH + 4, 4 * MAX_VECTOR_LENGTH])
def test_declared_bin_length_is_not_allocated(claimed: int) -> None:
    """A bin32 header claiming ``claimed`` bytes with only a few present: WireError, no allocation."""
    _refused_cheaply(bin32_header(claimed) + b"abc")
    # and inside an otherwise valid MaskedInput (current version, all four fields)
    data = (b"\x97" + msgpack.packb(MAGIC) + V + b"\x06\x05" + msgpack.packb(SID, use_bin_type=True)
            + bin32_header(claimed) + b"\x00" * 16)
    _refused_cheaply(data)


@pytest.mark.parametrize("claimed", [MAX_CLIENTS + 1, 2**31, 2**32 - 1])
def test_declared_array_length_above_the_limit_is_not_allocated(claimed: int) -> None:
    _refused_cheaply(array32_header(claimed) + b"\x00" * 16)
    _refused_cheaply(b"\x97" + msgpack.packb(MAGIC) + V + b"\x07" + array32_header(claimed) + b"\x01")


def test_oversized_input_is_refused_before_copying() -> None:
    big = np.zeros(wire.MAX_MESSAGE_BYTES + 1, dtype=np.uint8)  # calloc'd: pages never touched
    view = memoryview(big)
    assert len(view) > wire.MAX_MESSAGE_BYTES
    _refused_cheaply(view)
    with pytest.raises(WireError, match="limit"):
        decode(view)


def test_a_large_vector_is_accepted() -> None:
    """The limits are not so tight that a legitimate, moderately large message is refused."""
    message = MaskedInput(1, SID, bytes(4 * 100_000))
    assert decode(encode(message)) == message


# ---------------------------------------------------------------------------------------------------
# encode
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("value", [
    None, 5, b"bytes", "str", [1, 2], {"a": 1}, object(),
    PARAMS, KeyEntry(1, K, K),
], ids=lambda v: type(v).__name__)
def test_encode_of_a_non_message_raises_wire_error(value: Any) -> None:
    with pytest.raises(WireError):
        encode(value)


@pytest.mark.parametrize("message", [
    Setup(PARAMS, 0, bytes(33)),
    Setup(SPARSE_PARAMS, 3, SPARSE_PROOF[:-1]),
    Setup(SPARSE_PARAMS, MAX_CLIENTS, SPARSE_PROOF),
    Setup(SPARSE_PARAMS, -1, SPARSE_PROOF),
    KeyDirectory((KeyEntry(1, K, K, index=MAX_CLIENTS),)),
    KeyDirectory((KeyEntry(1, K, K),), bytes(31)),
    ConsistencyRequest(SID, (1,), (), bytes(31)),
    ConsistencyRequest(SID, (1,), (), K, bytes(33)),
], ids=["full-graph proof of 33 bytes", "sparse proof one byte short", "index MAX_CLIENTS", "index -1",
        "directory index MAX_CLIENTS", "directory proof of 31 bytes", "status root of 31 bytes",
        "consistency proof of 33 bytes"])
def test_encode_refuses_invalid_version_3_fields(message: Message) -> None:
    """The new fields get the receiver's checks on the sender's side too."""
    with pytest.raises(WireError):
        encode(message)


def test_the_member_list_travels_on_the_full_graph_only() -> None:
    """One message, one encoding: a SecAgg+ Setup with its (correct) member list, or a full-graph one
    with an index or proof, would be a second encoding of a message encode never sends that way."""
    for data in (with_sparse(1, packed(*SPARSE_IDS)), with_field(1, 2, 1), with_field(1, 3, K)):
        assert decode_or_wire_error(data) is None
    # and encode never sends the list of a SecAgg+ session (see test_encode_refuses_or_round_trips for
    # a full-graph Setup given an index or proof)
    assert encode(Setup(SPARSE_PARAMS, 3, SPARSE_PROOF)) == encode(Setup(client_view(SPARSE_PARAMS), 3,
                                                                          SPARSE_PROOF))


def test_encode_refuses_a_directory_with_mixed_signatures() -> None:
    """The packed directory has one signature column: all entries signed, or none."""
    mixed = KeyDirectory((KeyEntry(1, K, K, bytes(64)), KeyEntry(2, K, K, b"")))
    with pytest.raises(WireError, match="signed"):
        encode(mixed)


@pytest.mark.parametrize("message", [
    ConsistencySignature(1, SID, b""),
    ConsistencySignature(1, SID, bytes(63)),
    ConsistencySignature(-1, SID, SIG),
    ConsistencyRequest(SID, (2, 1), ()),
    ConsistencyRequest(SID, (1,), (1, 1)),
    ConsistencyRequest(bytes(31), (1,), ()),
    UnmaskRequest(SID, (1, 2), (), ((2, SIG), (1, SIG))),
    UnmaskRequest(SID, (1, 2), (), ((1, SIG), (1, SIG))),
    UnmaskRequest(SID, (1, 2), (), ((1, b""),)),
    UnmaskRequest(SID, (1, 2), (), ((1, bytes(65)),)),
    UnmaskRequest(SID, (1, 2), (), ((MAX_ID + 1, SIG),)),
], ids=["empty signature", "short signature", "negative sender", "unsorted survivors", "duplicate dropped",
        "short session id", "unsorted signers", "duplicate signer", "empty unmask signature",
        "long unmask signature", "signer > MAX_ID"])
def test_encode_refuses_invalid_consistency_fields(message: Message) -> None:
    """The sender runs the receiver's checks: what the decoder would refuse is never put on the wire."""
    with pytest.raises(WireError):
        encode(message)


@pytest.mark.parametrize("value", [1, 0, 1.0, None, "", b"\x01", np.True_], ids=repr)
def test_params_malicious_must_be_a_real_bool(value: Any) -> None:
    """``malicious`` is a bool on both sides: the constructor refuses 1/0 (ConfigError), the decoder too."""
    with pytest.raises(ConfigError, match="malicious"):
        SessionParams(0, b"", (1, 2, 3), 2, 2, 4, 32, malicious=value)
    if not isinstance(value, np.bool_):  # msgpack cannot carry a numpy bool
        with pytest.raises(WireError, match="malicious"):
            decode(with_params(8, value))


@given(corrupt=st.one_of(st.integers(-(2**63), 2**64 - 1), st.integers(-2, 6)), malicious=st.booleans())
def test_params_corrupt_range(corrupt: int, malicious: bool) -> None:
    """corrupt in [0, n - 1]; in malicious mode on the full graph, also 2t > n + corrupt.

    Five clients, t = 4: honest mode takes corrupt 0..4, malicious mode 0..2 (8 > 5 + 2, not 5 + 3).
    """
    data = setup_frame([1, 2, 3, 4, 5], 4, 4, malicious=malicious, corrupt=corrupt)
    valid = 0 <= corrupt <= (2 if malicious else 4)
    if valid:
        params = decode(data).params  # type: ignore[union-attr]
        assert (params.malicious, params.corrupt) == (malicious, corrupt)
        assert decode(encode(Setup(params))) == Setup(params)
        assert encode(Setup(params)) == data
    else:
        with pytest.raises(WireError, match="corrupt"):
            decode(data)
        if corrupt >= 0:
            with pytest.raises(ConfigError, match="corrupt"):
                SessionParams(0, b"", (1, 2, 3, 4, 5), 4, 4, 4, 32, malicious, corrupt)


def test_encode_of_a_message_subclass_raises_wire_error() -> None:
    class Sneaky(AdvertiseKeys):
        pass

    with pytest.raises(WireError):
        encode(Sneaky(1, K, K))


@pytest.mark.parametrize("message", [
    AdvertiseKeys(1, bytes(31), K),
    AdvertiseKeys(-1, K, K),
    UnmaskRequest(SID, (2, 1), ()),
    AdvertiseKeys(2**64, K, K),
    Setup(SPARSE_PARAMS, MAX_CLIENTS),
    Setup(SPARSE_PARAMS, 3, bytes(33)),
    Setup(PARAMS, 1),
    Setup(PARAMS, 0, K),
], ids=["short key", "negative id", "unsorted ids", "id 2**64", "sparse index MAX_CLIENTS",
        "sparse proof of 33 bytes", "full-graph index", "full-graph proof"])
def test_encode_refuses_or_round_trips(message: Message) -> None:
    try:
        data = encode(message)
    except WireError:
        return
    assert decode(data) == message
