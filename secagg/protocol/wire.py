"""The wire format: every message as a versioned msgpack array with a fixed schema per type.

``[MAGIC, VERSION, type code, field, ...]``; single ids are unsigned ints; keys, ciphertexts and
vectors are msgpack ``bin``; id lists are packed big-endian uint32 ``bin`` and the key directory is
four packed columns (ids, encryption keys, mask keys, signatures), so a 1000-client directory decodes
with a handful of checks instead of thousands. :func:`decode` checks the magic, version, type,
arity and every field (type, range, exact or maximal length, sorted-unique id lists) and raises
:class:`WireError` for anything else, whatever the bytes: nothing executes on load and no other
exception escapes. Checks that need session state (is this id a neighbour? is the vector the
session's length?) are the state machines' job.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

import msgpack
import numpy as np

from secagg import codec
from secagg.crypto.aead import OVERHEAD
from secagg.crypto.keys import PUBLIC_KEY_BYTES, SIGNATURE_BYTES
from secagg.crypto.shamir import SHARE_BYTES
from secagg.errors import ConfigError, WireError
from secagg.protocol.messages import (
    COMMITMENT_BYTES,
    MAX_CLIENTS,
    MAX_ID,
    MAX_PROOF_BYTES,
    MAX_VECTOR_LENGTH,
    MODEL_VERSION_MAX_BYTES,
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
)

MAGIC = 0x5EC6
VERSION = 4  # 2: nonce, seed commitments, refused shares; 3: O(k) SecAgg+ (member root, proofs), ShareCheck;
# 4: masked words packed at the ring width (secagg.protocol.packing)
SESSION_ID_BYTES = 32
SHARE_PLAINTEXT_BYTES = 4 + 4 + 2 * SHARE_BYTES
SHARE_CIPHERTEXT_BYTES = SHARE_PLAINTEXT_BYTES + OVERHEAD
MAX_MESSAGE_BYTES = 4 * MAX_VECTOR_LENGTH + (1 << 16)
#: the caps the codec enforces while parsing (no strings or maps in the format at all)
LIMITS = codec.Limits(max_bytes=MAX_MESSAGE_BYTES, max_bin=4 * MAX_VECTOR_LENGTH, max_str=0,
                      max_array=MAX_CLIENTS)

Reader = Callable[[Any, str], Any]


def _fail(field: str, why: str) -> WireError:
    return WireError(f"{field}: {why}")


def _uint(bound: int) -> Reader:
    def read(v: Any, field: str) -> int:
        if not isinstance(v, int) or isinstance(v, bool) or not 0 <= v <= bound:
            raise _fail(field, f"expected an integer in [0, {bound}]")
        return v
    return read


_id = _uint(MAX_ID)


def _bytes(exact: int | None = None, maximum: int | None = None) -> Reader:
    def read(v: Any, field: str) -> bytes:
        if not isinstance(v, bytes):
            raise _fail(field, "expected bytes")
        if exact is not None and len(v) != exact:
            raise _fail(field, f"expected {exact} bytes, got {len(v)}")
        if maximum is not None and len(v) > maximum:
            raise _fail(field, f"expected at most {maximum} bytes, got {len(v)}")
        return v
    return read


def _empty_or(size: int) -> Reader:
    """Bytes of exactly ``size``, or none (a field that only some sessions or stages fill)."""
    def read(v: Any, field: str) -> bytes:
        b = _bytes(maximum=size)(v, field)
        if len(b) not in (0, size):
            raise _fail(field, f"expected 0 or {size} bytes, got {len(b)}")
        return b
    return read


_signature = _empty_or(SIGNATURE_BYTES)
_commitment = _empty_or(COMMITMENT_BYTES)


def _list(v: Any, field: str, limit: int = MAX_CLIENTS) -> list | tuple:
    # decoding yields lists only; tuples are what encode() checks before packing them as arrays
    if not isinstance(v, list | tuple) or len(v) > limit:
        raise _fail(field, f"expected a list of at most {limit} items")
    return v


def read_ids(v: Any, field: str) -> tuple[int, ...]:
    """A packed id list: big-endian uint32 words, strictly increasing, each <= MAX_ID."""
    b = _bytes(maximum=4 * MAX_CLIENTS)(v, field)
    if len(b) % 4:
        raise _fail(field, f"packed id list of {len(b)} bytes is not a whole number of uint32 ids")
    ids = np.frombuffer(b, dtype=">u4")
    if ids.size and int(ids.max()) > MAX_ID:
        raise _fail(field, f"expected ids in [0, {MAX_ID}]")
    if ids.size > 1 and not bool(np.all(ids[1:] > ids[:-1])):
        raise _fail(field, "ids must be sorted and unique (duplicate id)")
    return tuple(ids.tolist())


def _pack_ids(ids: tuple[int, ...]) -> bytes:
    return np.asarray(ids, dtype=">u4").tobytes()


def _pairs(size: int) -> Reader:
    """A list of ``[id, bytes of exactly size]``, ids strictly increasing.

    The common (valid) case is checked inline; field names are only built to report an error.
    """
    payload = _bytes(size)

    def read(v: Any, field: str) -> tuple[tuple[int, bytes], ...]:
        items = _list(v, field)
        # the valid case in bulk (a SecAgg+ round decodes millions of pairs); any doubt: item by item
        if all(type(item) in (list, tuple) and len(item) == 2 for item in items):
            ids = [item[0] for item in items]
            if (all(type(u) is int for u in ids)
                    and all(type(d) is bytes and len(d) == size for _, d in items)
                    and (not ids or (ids[0] >= 0 and ids[-1] <= MAX_ID))
                    and all(a < b for a, b in itertools.pairwise(ids))):
                return tuple([(item[0], item[1]) for item in items])
        out = []
        previous = -1
        for i, item in enumerate(items):
            if type(item) not in (list, tuple) or len(item) != 2:  # tuples when encoding
                raise _fail(f"{field}[{i}]", "expected [id, bytes]")
            u, data = item
            if type(u) is not int or not 0 <= u <= MAX_ID:
                _id(u, f"{field}[{i}].id")
                raise _fail(f"{field}[{i}].id", f"expected an integer in [0, {MAX_ID}]")
            if type(data) is not bytes or len(data) != size:
                payload(data, f"{field}[{i}].data")
            if u <= previous:
                raise _fail(field, "ids must be sorted and unique (duplicate id)")
            previous = u
            out.append((u, data))
        return tuple(out)
    return read


def _flag(v: Any, field: str) -> bool:
    if type(v) is not bool:
        raise _fail(field, "expected true or false")
    return v


_PARAM_FIELDS = 11


def _params(v: Any, field: str) -> dict[str, Any]:
    """The 11-field parameter array P(params) (the member list travels beside it, in Setup)."""
    if not isinstance(v, list) or len(v) != _PARAM_FIELDS:
        raise _fail(field, f"expected {_PARAM_FIELDS} fields")
    return dict(
        round=_uint((1 << 32) - 1)(v[0], f"{field}.round"),
        model_version=_bytes(maximum=MODEL_VERSION_MAX_BYTES)(v[1], f"{field}.model_version"),
        members=_uint(MAX_CLIENTS)(v[2], f"{field}.members"),
        members_root=_bytes(ROOT_BYTES)(v[3], f"{field}.members_root"),
        threshold=_uint(MAX_CLIENTS)(v[4], f"{field}.threshold"),
        degree=_uint(MAX_CLIENTS)(v[5], f"{field}.degree"),
        vector_length=_uint(MAX_VECTOR_LENGTH)(v[6], f"{field}.vector_length"),
        bits=_uint(32)(v[7], f"{field}.bits"),
        malicious=_flag(v[8], f"{field}.malicious"),
        corrupt=_uint(MAX_CLIENTS)(v[9], f"{field}.corrupt"),
        nonce=_empty_or(NONCE_BYTES)(v[10], f"{field}.nonce"))


def _setup(fields: dict[str, Any], client_ids: tuple[int, ...], index: int, proof: bytes) -> SessionParams:
    """The parameters a Setup carries: the list on the full graph, else only its count and root."""
    full = fields["degree"] == fields["members"] - 1
    if full and (index or proof):
        raise _fail("Setup.index", "a full-graph Setup carries the member list, not an index and proof")
    if not full and client_ids:
        raise _fail("Setup.client_ids", "a SecAgg+ Setup carries no member list (index and proof instead)")
    try:
        params = SessionParams(client_ids=client_ids, **fields)
    except ConfigError as exc:
        raise _fail("Setup.params", str(exc)) from exc
    if (params.members, params.members_root) != (fields["members"], fields["members_root"]):
        raise _fail("Setup.params.members_root", "the member count and Merkle root do not match the list")
    return params


def _proof(v: Any, field: str) -> bytes:
    b = _bytes(maximum=MAX_PROOF_BYTES)(v, field)
    if len(b) % ROOT_BYTES:
        raise _fail(field, f"a Merkle proof is whole {ROOT_BYTES}-byte hashes, got {len(b)} bytes")
    return b


def _entries(v: Any, field: str) -> tuple[KeyEntry, ...]:
    """Six packed columns: ids, indices (uint32 big-endian), 32-byte enc keys, 32-byte mask keys,
    64-byte signatures or none, 32-byte seed commitments or none."""
    if not isinstance(v, list) or len(v) != 6:
        raise _fail(field, "expected [ids, indices, enc_keys, mask_keys, signatures, commitments]")
    ids = read_ids(v[0], f"{field}.client_ids")
    n, k = len(ids), PUBLIC_KEY_BYTES
    packed = _bytes(4 * n)(v[1], f"{field}.indices")
    indices = np.frombuffer(packed, dtype=">u4").tolist()
    if n and max(indices) >= MAX_CLIENTS:
        raise _fail(f"{field}.indices", f"expected indices below {MAX_CLIENTS}")
    enc = _bytes(k * n)(v[2], f"{field}.enc_keys")
    mask = _bytes(k * n)(v[3], f"{field}.mask_keys")
    sigs = _bytes(maximum=SIGNATURE_BYTES * n)(v[4], f"{field}.signatures")
    if len(sigs) not in (0, SIGNATURE_BYTES * n):
        raise _fail(f"{field}.signatures", f"expected 0 or {SIGNATURE_BYTES * n} bytes, got {len(sigs)}")
    c = COMMITMENT_BYTES
    commits = _bytes(maximum=c * n)(v[5], f"{field}.commitments")
    if len(commits) not in (0, c * n):
        raise _fail(f"{field}.commitments", f"expected 0 or {c * n} bytes, got {len(commits)}")
    s = SIGNATURE_BYTES
    columns = zip(ids, [enc[i : i + k] for i in range(0, k * n, k)],
                  [mask[i : i + k] for i in range(0, k * n, k)],
                  [sigs[i : i + s] for i in range(0, s * n, s)] if sigs else [b""] * n,
                  [commits[i : i + c] for i in range(0, c * n, c)] if commits else [b""] * n,
                  indices, strict=True)
    return tuple([_new_tuple(KeyEntry, c) for c in columns])  # KeyEntry(*c), without __new__'s overhead


_new_tuple = tuple.__new__


def _pack_entries(entries: tuple[KeyEntry, ...]) -> list[bytes]:
    if len({len(e.signature) for e in entries}) > 1:
        raise WireError("KeyDirectory.entries: either every entry is signed or none is")
    if len({len(e.commitment) for e in entries}) > 1:
        raise WireError("KeyDirectory.entries: either every entry carries a commitment or none does")
    return [_pack_ids(tuple(e.client_id for e in entries)),
            np.asarray([e.index for e in entries], dtype=">u4").tobytes(),
            b"".join(e.enc_key for e in entries), b"".join(e.mask_key for e in entries),
            b"".join(e.signature for e in entries), b"".join(e.commitment for e in entries)]


def _vector(v: Any, field: str) -> bytes:
    # words packed at the session's ring width (secagg.protocol.packing): the state machine, which
    # knows the width, checks the exact length
    return _bytes(maximum=4 * MAX_VECTOR_LENGTH)(v, field)


_session = _bytes(SESSION_ID_BYTES)
_key = _bytes(PUBLIC_KEY_BYTES)

# type code -> (class, [(field, reader)])
_SCHEMAS: dict[int, tuple[type, list[tuple[str, Reader]]]] = {
    1: (Setup, [("params", _params), ("client_ids", read_ids), ("index", _uint(MAX_CLIENTS - 1)),
                ("proof", _proof)]),
    2: (AdvertiseKeys, [("sender", _id), ("enc_key", _key), ("mask_key", _key),
                        ("signature", _signature), ("commitment", _commitment)]),
    3: (KeyDirectory, [("entries", _entries), ("proof", _proof)]),
    4: (ShareKeys, [("sender", _id), ("session_id", _session),
                    ("shares", _pairs(SHARE_CIPHERTEXT_BYTES))]),
    5: (ForwardedShares, [("recipient", _id), ("session_id", _session),
                          ("shares", _pairs(SHARE_CIPHERTEXT_BYTES))]),
    6: (MaskedInput, [("sender", _id), ("session_id", _session), ("vector", _vector)]),
    7: (UnmaskRequest, [("session_id", _session), ("survivors", read_ids), ("dropped", read_ids),
                        ("signatures", _pairs(SIGNATURE_BYTES))]),
    8: (UnmaskResponse, [("sender", _id), ("session_id", _session),
                         ("self_mask_shares", _pairs(SHARE_BYTES)),
                         ("mask_key_shares", _pairs(SHARE_BYTES))]),
}
_SCHEMAS[9] = (ConsistencyRequest, [("session_id", _session), ("survivors", read_ids), ("dropped", read_ids),
                                     ("status_root", _empty_or(ROOT_BYTES)), ("proof", _proof)])
_SCHEMAS[10] = (ConsistencySignature, [("sender", _id), ("session_id", _session),
                                       ("signature", _bytes(SIGNATURE_BYTES))])
_SCHEMAS[11] = (ShareCheck, [("sender", _id), ("session_id", _session), ("refused", read_ids)])
_SCHEMAS[12] = (MaskRequest, [("session_id", _session), ("excluded", read_ids)])
_CODES = {cls: code for code, (cls, _) in _SCHEMAS.items()}


def _plain(value: Any) -> Any:
    """Session parameters as their 11-field array; anything else as is (msgpack packs tuples as arrays)."""
    if isinstance(value, SessionParams):
        return [value.round, value.model_version, value.members, value.members_root, value.threshold,
                value.degree, value.vector_length, value.bits, value.malicious, value.corrupt, value.nonce]
    return value


def _setup_fields(message: Setup) -> dict[str, Any]:
    """Setup's wire fields: P(params), then the member list (full graph only), index, proof."""
    p = message.params
    return {"params": _plain(p), "client_ids": _pack_ids(p.client_ids if p.full_graph else ()),
            "index": message.index, "proof": message.proof}


# fields whose wire form is not the generic one
_WRITERS: dict[tuple[type, str], Callable[[Any], Any]] = {
    (KeyDirectory, "entries"): _pack_entries,
    (UnmaskRequest, "survivors"): _pack_ids,
    (UnmaskRequest, "dropped"): _pack_ids,
    (ConsistencyRequest, "survivors"): _pack_ids,
    (ConsistencyRequest, "dropped"): _pack_ids,
    (ShareCheck, "refused"): _pack_ids,
    (MaskRequest, "excluded"): _pack_ids,
}




def encode(message: Message) -> bytes:
    """The canonical wire bytes of ``message``; :class:`WireError` if a field is invalid.

    Every field is checked by the same readers :func:`decode` uses, so whatever ``encode`` returns
    decodes back to an equal message.
    """
    cls = type(message)
    if cls not in _CODES:
        raise WireError(f"cannot encode {cls.__name__}: not a protocol message")
    code = _CODES[cls]
    try:
        if cls is Setup:
            setup = _setup_fields(message)  # type: ignore[arg-type]
            fields = [setup[name] for name, _ in _SCHEMAS[code][1]]
        else:
            fields = [_WRITERS.get((cls, name), _plain)(getattr(message, name))
                      for name, _ in _SCHEMAS[code][1]]
    except WireError:
        raise
    except (OverflowError, TypeError, ValueError) as exc:  # e.g. a negative or 2^64 id
        raise WireError(f"cannot encode {cls.__name__}: {type(exc).__name__}: {exc}") from exc
    read_back = [read(value, f"{cls.__name__}.{name}")  # the receiver's checks, on the sender's side
                 for (name, read), value in zip(_SCHEMAS[code][1], fields, strict=True)]
    if cls is Setup:
        _setup(*read_back)  # and the checks across Setup's fields (list xor index and proof)
    return codec.pack(MAGIC, VERSION, code, *fields)


def encode_params(params: SessionParams) -> bytes:
    """Canonical bytes of the session parameters (hashed into the session id)."""
    return msgpack.packb(_plain(params), use_bin_type=True)


def decode(data: bytes) -> Message:
    """Parse and validate wire bytes; :class:`WireError` for anything that is not a valid message."""
    # the shared strict codec: length caps, no extensions, exact-int magic and version
    obj = codec.unpack(data, what="secagg message", magic=MAGIC, version=VERSION, limits=LIMITS, min_fields=1)
    schema = _SCHEMAS.get(obj[2]) if type(obj[2]) is int else None
    if schema is None:
        raise WireError(f"unknown message type {obj[2] if type(obj[2]) is int else type(obj[2]).__name__}")
    cls, fields = schema
    if len(obj) != 3 + len(fields):
        raise WireError(f"{cls.__name__}: expected {len(fields)} fields, got {len(obj) - 3}")
    values = {name: read(v, f"{cls.__name__}.{name}")
              for (name, read), v in zip(fields, obj[3:], strict=True)}
    # one message, one encoding: no malleable non-shortest forms (matters once bytes are signed)
    codec.check_canonical(obj, data, cls.__name__)
    if cls is Setup:
        values["params"] = _setup(values["params"], values.pop("client_ids"), values["index"],
                                  values["proof"])
    return cls(**values)
