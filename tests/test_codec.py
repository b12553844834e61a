"""The one strict codec under the wire format and the transport envelopes: hostile bytes give a
``WireError`` or a message whose encoding is exactly those bytes; length caps hold while parsing."""

from __future__ import annotations

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from secagg import codec
from secagg.errors import WireError
from secagg.protocol import wire
from secagg.transport import envelope as env

DECODERS = {
    "hello": (env.decode_hello, env.encode_hello), "challenge": (env.decode_challenge, env.encode_challenge),
    "login": (env.decode_login, env.encode_login), "welcome": (env.decode_welcome, env.encode_welcome),
    "poll": (env.decode_poll, env.encode_poll), "work": (env.decode_work, env.encode_work),
    "submit": (env.decode_submit, env.encode_submit),
    "update": (lambda data: env.decode_update(data, 2), env.encode_update),
}

_leaf = st.one_of(st.integers(-2**63, 2**64 - 1), st.floats(allow_nan=True), st.binary(max_size=70),
                  st.text(max_size=8), st.booleans(), st.none())
_objects = st.recursive(_leaf, lambda inner: st.lists(inner, max_size=8), max_leaves=20)


def _framed(fields: list) -> bytes:
    return msgpack.packb([env.MAGIC, env.VERSION, *fields], use_bin_type=True)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(sorted(DECODERS)), st.one_of(st.binary(max_size=200), _objects.map(
    lambda o: _framed(o if isinstance(o, list) else [o]))))
def test_any_bytes_give_a_wire_error_or_their_own_canonical_message(name, data):
    decode, encode = DECODERS[name]
    try:
        message = decode(data)
    except WireError:
        return
    assert encode(message) == data


@pytest.mark.parametrize("name, value", [
    ("hello", env.Hello(3)), ("poll", env.Poll(1, 0, 500)), ("submit", env.Submit(1, 2, b"x")),
])
def test_a_non_shortest_encoding_of_a_valid_envelope_is_refused(name, value):
    decode, encode = DECODERS[name]
    data = encode(value)
    assert decode(data) == value
    # the same array with its first field's small int re-packed as a uint16 (0xcd): equal value,
    # different bytes; before the shared codec the envelopes accepted it
    fields = msgpack.unpackb(data)[2:]
    loose = bytes([0x90 | (2 + len(fields))]) + msgpack.packb(env.MAGIC) + msgpack.packb(env.VERSION)
    loose += b"\xcd" + fields[0].to_bytes(2, "big") + b"".join(msgpack.packb(f, use_bin_type=True)
                                                                for f in fields[1:])
    assert msgpack.unpackb(loose) == msgpack.unpackb(data) and loose != data
    with pytest.raises(WireError, match="non-canonical encoding"):
        decode(loose)


@pytest.mark.parametrize("header", [b"\xdd\xff\xff\xff\xff",  # array32 of 2^32 - 1 elements
                                    b"\xc6\xff\xff\xff\xff",  # bin32 of 4 GiB
                                    b"\xdb\xff\xff\xff\xff"])  # str32 of 4 GiB
def test_hostile_length_prefixes_are_refused_without_allocating(header):
    for decode in (env.decode_hello, wire.decode):
        with pytest.raises(WireError):
            decode(header + b"\x00" * 8)


def test_both_formats_use_the_same_codec_caps():
    assert wire.LIMITS.max_str == 0 and wire.LIMITS.max_map == 0  # no strings or maps in the protocol
    assert env.LIMITS.max_map == 0 and env.LIMITS.max_array == 16
    with pytest.raises(WireError, match=r"message: \d+ bytes exceed the"):
        codec.unpack(b"\x00" * 33, what="message", magic=1, version=1,
                     limits=codec.Limits(max_bytes=32, max_bin=8, max_str=8, max_array=8))
