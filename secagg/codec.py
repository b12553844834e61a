"""Strict msgpack: the one codec layer under the protocol wire format and the transport envelopes.

Every encoded object is a msgpack array ``[magic, version, ...fields]``. :func:`unpack` is the only
place untrusted bytes are parsed: bytes only, a total length cap, per-object length caps handed to
msgpack (so a hostile length prefix allocates nothing), no extension types, exact ``int`` magic
and version (a float ``1.0`` or a bool is not ``1``), and untrusted values are never ``repr``-ed (a
deeply nested one would blow the recursion limit). :func:`check_canonical` then requires the one
shortest encoding of what was decoded: a message has exactly one byte string, so signed or hashed
bytes cannot be re-encoded into a different but equal-looking form.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgpack

from secagg.errors import WireError

__all__ = ["Limits", "check_canonical", "pack", "unpack"]


@dataclass(frozen=True)
class Limits:
    """Length caps for one format: the whole input (bytes), and each ``bin``, ``str`` (characters),
    array and map inside it (elements)."""

    max_bytes: int
    max_bin: int
    max_str: int
    max_array: int
    max_map: int = 0


def pack(magic: int, version: int, *fields: Any) -> bytes:
    """``[magic, version, *fields]`` in msgpack's shortest form (``bin`` for bytes)."""
    return msgpack.packb([magic, version, *fields], use_bin_type=True)


def _no_ext(code: int, data: bytes) -> Any:
    raise WireError(f"msgpack extension type {code} is not allowed")


def unpack(data: Any, *, what: str, magic: int, version: int, limits: Limits,
           min_fields: int = 0) -> list[Any]:
    """The array of ``data`` after its magic and version; :class:`WireError` for anything else (bytes
    that are not one msgpack array within ``limits``, another magic, another version, fewer than
    ``min_fields`` fields). ``what`` names the format in the messages."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise WireError(f"{what}: expected bytes, got {type(data).__name__}")
    if len(data) > limits.max_bytes:
        raise WireError(f"{what}: {len(data)} bytes exceed the {limits.max_bytes}-byte limit")
    try:
        value = msgpack.unpackb(bytes(data), raw=False, use_list=True, strict_map_key=True, ext_hook=_no_ext,
                                max_bin_len=limits.max_bin, max_str_len=limits.max_str,
                                max_array_len=limits.max_array, max_map_len=limits.max_map,
                                max_ext_len=64)  # small: enough for the hook to name the refused type
    except WireError:
        raise
    except Exception as exc:  # msgpack raises many unrelated types (ExtraData, FormatError, ValueError...)
        raise WireError(f"{what}: not a valid msgpack object ({type(exc).__name__})") from None
    if type(value) is not list or len(value) < 2 + min_fields:
        raise WireError(f"{what}: expected a msgpack array [magic, version, ...]")
    if type(value[0]) is not int or value[0] != magic:
        raise WireError(f"{what}: bad magic number")
    if type(value[1]) is not int or value[1] != version:
        shown = value[1] if type(value[1]) is int else type(value[1]).__name__
        raise WireError(f"{what}: unsupported version {shown} (this build speaks {version})")
    return value


def check_canonical(value: list[Any], data: bytes | bytearray | memoryview, what: str) -> None:
    """:class:`WireError` unless ``data`` is the shortest encoding of the decoded ``value``."""
    if msgpack.packb(value, use_bin_type=True) != bytes(data):
        raise WireError(f"{what}: non-canonical encoding (not the shortest msgpack form)")
