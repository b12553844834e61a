"""The wire format: every message as a versioned msgpack array with a fixed schema per type.

``[MAGIC, VERSION, type code, field, field, ...]``; ids are unsigned ints, keys/ciphertexts/vectors
are msgpack ``bin``. :func:`decode` checks the magic, version, type, arity and every field (type,
range, exact or maximal length, sorted-unique id lists) and raises :class:`WireError` for anything
else, whatever the bytes: nothing executes on load and no other exception escapes. Checks that need
session state (is this id a neighbour? is the vector the session's length?) are the state
machines' job.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

import msgpack

from secagg.crypto.aead import OVERHEAD
from secagg.crypto.keys import PUBLIC_KEY_BYTES, SIGNATURE_BYTES
from secagg.crypto.shamir import SHARE_BYTES
from secagg.errors import ConfigError, WireError
from secagg.protocol.messages import (
    MAX_CLIENTS,
    MAX_ID,
    MAX_VECTOR_LENGTH,
    MODEL_VERSION_MAX_BYTES,
    AdvertiseKeys,
    ForwardedShares,
    KeyDirectory,
    KeyEntry,
    MaskedInput,
    Message,
    SessionParams,
    Setup,
    ShareKeys,
    UnmaskRequest,
    UnmaskResponse,
)

MAGIC = 0x5EC6
VERSION = 1
SESSION_ID_BYTES = 32
SHARE_PLAINTEXT_BYTES = 4 + 4 + 2 * SHARE_BYTES
SHARE_CIPHERTEXT_BYTES = SHARE_PLAINTEXT_BYTES + OVERHEAD
MAX_MESSAGE_BYTES = 4 * MAX_VECTOR_LENGTH + (1 << 16)

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


def _signature(v: Any, field: str) -> bytes:
    b = _bytes(maximum=SIGNATURE_BYTES)(v, field)
    if len(b) not in (0, SIGNATURE_BYTES):
        raise _fail(field, f"expected 0 or {SIGNATURE_BYTES} bytes, got {len(b)}")
    return b


def _list(v: Any, field: str, limit: int = MAX_CLIENTS) -> list:
    if not isinstance(v, list) or len(v) > limit:
        raise _fail(field, f"expected a list of at most {limit} items")
    return v


def _increasing(ids: list[int], field: str) -> None:
    if any(a >= b for a, b in itertools.pairwise(ids)):
        raise _fail(field, "ids must be sorted and unique (duplicate id)")


def _ids(v: Any, field: str) -> tuple[int, ...]:
    ids = [_id(x, f"{field}[{i}]") for i, x in enumerate(_list(v, field))]
    _increasing(ids, field)
    return tuple(ids)


def _pairs(payload: Reader) -> Reader:
    def read(v: Any, field: str) -> tuple[tuple[int, bytes], ...]:
        out = []
        for i, item in enumerate(_list(v, field)):
            if not isinstance(item, list) or len(item) != 2:
                raise _fail(f"{field}[{i}]", "expected [id, bytes]")
            out.append((_id(item[0], f"{field}[{i}].id"), payload(item[1], f"{field}[{i}].data")))
        _increasing([p[0] for p in out], field)
        return tuple(out)
    return read


def _params(v: Any, field: str) -> SessionParams:
    if not isinstance(v, list) or len(v) != 7:
        raise _fail(field, "expected 7 fields")
    try:
        return SessionParams(
            round=_uint((1 << 32) - 1)(v[0], f"{field}.round"),
            model_version=_bytes(maximum=MODEL_VERSION_MAX_BYTES)(v[1], f"{field}.model_version"),
            client_ids=_ids(v[2], f"{field}.client_ids"),
            threshold=_uint(MAX_CLIENTS)(v[3], f"{field}.threshold"),
            degree=_uint(MAX_CLIENTS)(v[4], f"{field}.degree"),
            vector_length=_uint(MAX_VECTOR_LENGTH)(v[5], f"{field}.vector_length"),
            bits=_uint(32)(v[6], f"{field}.bits"))
    except ConfigError as exc:
        raise _fail(field, str(exc)) from exc


def _entries(v: Any, field: str) -> tuple[KeyEntry, ...]:
    out = []
    for i, item in enumerate(_list(v, field)):
        f = f"{field}[{i}]"
        if not isinstance(item, list) or len(item) != 4:
            raise _fail(f, "expected [id, enc_key, mask_key, signature]")
        out.append(KeyEntry(_id(item[0], f"{f}.client_id"),
                            _bytes(PUBLIC_KEY_BYTES)(item[1], f"{f}.enc_key"),
                            _bytes(PUBLIC_KEY_BYTES)(item[2], f"{f}.mask_key"),
                            _signature(item[3], f"{f}.signature")))
    _increasing([e.client_id for e in out], field)
    return tuple(out)


def _vector(v: Any, field: str) -> bytes:
    b = _bytes(maximum=4 * MAX_VECTOR_LENGTH)(v, field)
    if len(b) % 4:
        raise _fail(field, f"length {len(b)} is not a whole number of uint32 words")
    return b


_session = _bytes(SESSION_ID_BYTES)
_key = _bytes(PUBLIC_KEY_BYTES)

# type code -> (class, [(field, reader)])
_SCHEMAS: dict[int, tuple[type, list[tuple[str, Reader]]]] = {
    1: (Setup, [("params", _params)]),
    2: (AdvertiseKeys, [("sender", _id), ("enc_key", _key), ("mask_key", _key),
                        ("signature", _signature)]),
    3: (KeyDirectory, [("entries", _entries)]),
    4: (ShareKeys, [("sender", _id), ("session_id", _session),
                    ("shares", _pairs(_bytes(SHARE_CIPHERTEXT_BYTES)))]),
    5: (ForwardedShares, [("recipient", _id), ("session_id", _session),
                          ("shares", _pairs(_bytes(SHARE_CIPHERTEXT_BYTES)))]),
    6: (MaskedInput, [("sender", _id), ("session_id", _session), ("vector", _vector)]),
    7: (UnmaskRequest, [("session_id", _session), ("survivors", _ids), ("dropped", _ids)]),
    8: (UnmaskResponse, [("sender", _id), ("session_id", _session),
                         ("self_mask_shares", _pairs(_bytes(SHARE_BYTES))),
                         ("mask_key_shares", _pairs(_bytes(SHARE_BYTES)))]),
}
_CODES = {cls: code for code, (cls, _) in _SCHEMAS.items()}


def _plain(value: Any) -> Any:
    if isinstance(value, SessionParams):
        return [value.round, value.model_version, list(value.client_ids), value.threshold,
                value.degree, value.vector_length, value.bits]
    if isinstance(value, KeyEntry):
        return [value.client_id, value.enc_key, value.mask_key, value.signature]
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    return value


def encode(message: Message) -> bytes:
    """The wire bytes of ``message``; the result always decodes back to an equal message."""
    code = _CODES.get(type(message))
    if code is None:
        raise WireError(f"cannot encode {type(message).__name__}: not a protocol message")
    fields = [_plain(getattr(message, name)) for name, _ in _SCHEMAS[code][1]]
    return msgpack.packb([MAGIC, VERSION, code, *fields], use_bin_type=True)


def encode_params(params: SessionParams) -> bytes:
    """Canonical bytes of the session parameters (hashed into the session id)."""
    return msgpack.packb(_plain(params), use_bin_type=True)


def _no_ext(code: int, data: bytes) -> Any:
    raise WireError("msgpack extension types are not part of the format")


def decode(data: bytes) -> Message:
    """Parse and validate wire bytes; :class:`WireError` for anything that is not a valid message."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise WireError(f"expected bytes, got {type(data).__name__}")
    if len(data) > MAX_MESSAGE_BYTES:
        raise WireError(f"message of {len(data)} bytes exceeds the {MAX_MESSAGE_BYTES}-byte limit")
    try:
        obj = msgpack.unpackb(bytes(data), raw=False, use_list=True, strict_map_key=True,
                              ext_hook=_no_ext,
                              max_str_len=0, max_map_len=0, max_ext_len=0,
                              max_bin_len=4 * MAX_VECTOR_LENGTH, max_array_len=MAX_CLIENTS)
    except WireError:
        raise
    except Exception as exc:  # msgpack raises many types (ExtraData, FormatError, ValueError, ...)
        raise WireError(f"not a msgpack message: {type(exc).__name__}: {exc}") from exc
    if not isinstance(obj, list) or len(obj) < 3:
        raise WireError("expected [magic, version, type, fields...]")
    if obj[0] != MAGIC or isinstance(obj[0], bool):
        raise WireError("wrong magic number: not a secagg message")
    if obj[1] != VERSION or isinstance(obj[1], bool):
        raise WireError(f"wire version {obj[1]!r} is not supported (this library speaks {VERSION})")
    schema = _SCHEMAS.get(obj[2]) if isinstance(obj[2], int) and not isinstance(obj[2], bool) else None
    if schema is None:
        raise WireError(f"unknown message type {obj[2]!r}")
    cls, fields = schema
    if len(obj) != 3 + len(fields):
        raise WireError(f"{cls.__name__}: expected {len(fields)} fields, got {len(obj) - 3}")
    values = {name: read(v, f"{cls.__name__}.{name}")
              for (name, read), v in zip(fields, obj[3:], strict=True)}
    return cls(**values)
