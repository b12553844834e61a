"""The network transport's pure parts, without a network: envelopes, login, TLS material, coordinator.

Envelopes: every message type round-trips, arbitrary bytes only ever raise :class:`WireError`, and each
malformed case names its field. Login: the Ed25519 challenge is one-time, expires, binds the client id,
and a new login revokes the old token. TLS: the CA really signs the server certificate, which carries the
requested names. Coordinator: real :class:`secagg.protocol.Client` objects run whole secure rounds through
it over the real wire format with fake clocks (exact sums over the survivors, deadline and grace rules,
aborts), and every refused submission leaves the state unchanged.
"""

from __future__ import annotations

import contextlib
import dataclasses
import ipaddress
import json
import math
import stat
import struct
from pathlib import Path

import msgpack
import numpy as np
import pytest
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import given, settings
from hypothesis import strategies as st

from secagg.aggregation import Mean, SecureSum
from secagg.backend import Pipeline, ServerRound
from secagg.crypto.keys import SIGNATURE_BYTES, SigningKey
from secagg.errors import ConfigError, ProtocolError, WireError
from secagg.protocol import wire
from secagg.protocol.client import Client
from secagg.protocol.messages import MAX_ID, AdvertiseKeys, MaskedInput, SessionParams, Stage
from secagg.protocol.runner import REPLY_STAGE
from secagg.transport import envelope as env
from secagg.transport.auth import (
    Authenticator,
    AuthError,
    load_identity,
    load_registry,
    login_message,
    save_identity,
    save_registry,
)
from secagg.transport.coordinator import Coordinator, Rejected, RoundOutcome
from secagg.transport.envelope import (
    MAGIC,
    MAX_CONFIG_BYTES,
    MAX_ROUND,
    MAX_STEP,
    MAX_WAIT_MS,
    NONCE_BYTES,
    TOKEN_BYTES,
    UPDATE_STAGE,
    VERSION,
    Challenge,
    Hello,
    Login,
    PlainUpdate,
    Poll,
    Submit,
    Welcome,
    Work,
    WorkKind,
)
from secagg.transport.tls import make_tls_files

FAST = settings(max_examples=40, deadline=None)

# == envelopes ====================================================================================

ids = st.integers(0, MAX_ID)
rounds = st.integers(0, MAX_ROUND)
finite = st.floats(min_value=0.0, allow_nan=False, allow_infinity=False)


def _round_trip(encode, decode, message, *args) -> None:
    data = encode(message)
    assert isinstance(data, bytes)
    assert decode(data, *args) == message
    assert decode(bytearray(data), *args) == message
    assert decode(memoryview(data), *args) == message


@FAST
@given(ids)
def test_hello_round_trip(client_id: int) -> None:
    _round_trip(env.encode_hello, env.decode_hello, Hello(client_id))


@FAST
@given(st.binary(min_size=NONCE_BYTES, max_size=NONCE_BYTES))
def test_challenge_round_trip(nonce: bytes) -> None:
    _round_trip(env.encode_challenge, env.decode_challenge, Challenge(nonce))


@FAST
@given(ids, st.binary(min_size=NONCE_BYTES, max_size=NONCE_BYTES),
       st.binary(min_size=SIGNATURE_BYTES, max_size=SIGNATURE_BYTES))
def test_login_round_trip(client_id: int, nonce: bytes, signature: bytes) -> None:
    _round_trip(env.encode_login, env.decode_login, Login(client_id, nonce, signature))


@FAST
@given(st.binary(min_size=TOKEN_BYTES, max_size=TOKEN_BYTES), st.text(max_size=200),
       st.sampled_from(["secure", "plain"]))
def test_welcome_round_trip(token: bytes, config: str, mode: str) -> None:
    _round_trip(env.encode_welcome, env.decode_welcome, Welcome(token, config, mode))


@FAST
@given(rounds, st.integers(0, MAX_STEP), st.integers(0, MAX_WAIT_MS))
def test_poll_round_trip(after_round: int, after_step: int, wait_ms: int) -> None:
    _round_trip(env.encode_poll, env.decode_poll, Poll(after_round, after_step, wait_ms))


@FAST
@given(st.sampled_from(list(WorkKind)), rounds, st.integers(0, MAX_STEP), st.binary(max_size=64),
       st.binary(max_size=64), finite, st.integers(0, (1 << 32) - 1),
       st.sets(st.integers(0, MAX_ID), max_size=20))
def test_work_round_trip(kind: WorkKind, r: int, step: int, weights: bytes, message: bytes,
                         bound: float, planned: int, members: set[int]) -> None:
    work = Work(kind, r, step, weights, message, bound, (), planned, tuple(sorted(members)))
    _round_trip(env.encode_work, env.decode_work, work)
    assert type(env.decode_work(env.encode_work(work)).kind) is WorkKind


@FAST
@given(rounds, st.integers(0, UPDATE_STAGE), st.binary(max_size=128))
def test_submit_round_trip(r: int, stage: int, payload: bytes) -> None:
    _round_trip(env.encode_submit, env.decode_submit, Submit(r, stage, payload))


@FAST
@given(st.integers(0, MAX_ROUND), finite, st.integers(0, 16).flatmap(
    lambda d: st.tuples(st.just(d), st.binary(min_size=4 * d, max_size=4 * d))))
def test_plain_update_round_trip(n: int, loss: float, dim_delta: tuple[int, bytes]) -> None:
    """A finite update round-trips; one NaN or infinite coordinate is refused by the codec itself."""
    dim, delta = dim_delta
    update = PlainUpdate(n, loss, delta)
    if np.isfinite(np.frombuffer(delta, dtype="<f4")).all():
        _round_trip(env.encode_update, env.decode_update, update, dim)
    else:
        with pytest.raises(WireError, match=r"PlainUpdate\.delta: has NaN or infinite coordinates"):
            env.decode_update(env.encode_update(update), dim)


def test_ack_is_an_empty_envelope() -> None:
    assert msgpack.unpackb(env.encode_ack()) == [MAGIC, VERSION]


DECODERS = {"Hello": env.decode_hello, "Challenge": env.decode_challenge, "Login": env.decode_login,
            "Welcome": env.decode_welcome, "Poll": env.decode_poll, "Work": env.decode_work,
            "Submit": env.decode_submit, "PlainUpdate": lambda data: env.decode_update(data, 2)}


@settings(max_examples=60, deadline=None)
@given(st.sampled_from(sorted(DECODERS)), st.binary(max_size=200))
def test_arbitrary_bytes_only_raise_wire_error(name: str, data: bytes) -> None:
    with contextlib.suppress(WireError):
        DECODERS[name](data)


msgpack_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(1 << 63), (1 << 64) - 1) | st.floats() | st.text(max_size=8)
    | st.binary(max_size=40),
    lambda inner: st.lists(inner, max_size=4), max_leaves=12)


@settings(max_examples=80, deadline=None)
@given(st.sampled_from(sorted(DECODERS)), st.lists(msgpack_values, max_size=7))
def test_well_framed_envelopes_with_arbitrary_fields_only_raise_wire_error(name: str, fields: list) -> None:
    """Past the msgpack layer: right magic and version, arbitrary field values of any type."""
    try:
        DECODERS[name](msgpack.packb([MAGIC, VERSION, *fields], use_bin_type=True))
    except WireError as exc:
        assert str(exc).startswith(name)


def _packed(*fields) -> bytes:
    return msgpack.packb([MAGIC, VERSION, *fields], use_bin_type=True)


NONCE, SIG, TOKEN = b"n" * NONCE_BYTES, b"s" * SIGNATURE_BYTES, b"t" * TOKEN_BYTES


@pytest.mark.parametrize(("decode", "data", "message"), [
    (env.decode_hello, b"\xc1", "Hello: not a valid msgpack object"),
    # maps are in no envelope: the codec refuses them while parsing (a map length cap of 0)
    (env.decode_hello, msgpack.packb({"a": 1}), r"Hello: not a valid msgpack object \(ValueError\)"),
    (env.decode_hello, msgpack.packb([MAGIC]), r"Hello: expected a msgpack array"),
    (env.decode_hello, msgpack.packb([0x1234, VERSION, 1]), "Hello: bad magic number"),
    (env.decode_hello, msgpack.packb([float(MAGIC), VERSION, 1]), "Hello: bad magic number"),
    (env.decode_hello, msgpack.packb([MAGIC, 1, 1]),
     rf"Hello: unsupported version 1 \(this build speaks {VERSION}\)"),
    (env.decode_hello, msgpack.packb([MAGIC, True, 1]), "Hello: unsupported version bool"),
    (env.decode_hello, _packed(1, 2), "Hello: expected 1 fields, got 2"),
    (env.decode_hello, _packed(), "Hello: expected 1 fields, got 0"),
    (env.decode_hello, _packed(MAX_ID + 1), rf"Hello.client_id: expected an integer in \[0, {MAX_ID}\]"),
    (env.decode_hello, _packed(-1), "Hello.client_id: expected an integer"),
    (env.decode_hello, _packed(True), "Hello.client_id: expected an integer"),
    (env.decode_hello, _packed(1.0), "Hello.client_id: expected an integer"),
    (env.decode_challenge, _packed(b"x" * 31), "Challenge.nonce: expected 32 bytes, got 31"),
    (env.decode_challenge, _packed("x" * 32), "Challenge.nonce: expected bytes"),
    (env.decode_login, _packed(1, b"x" * 33, SIG), "Login.nonce: expected 32 bytes, got 33"),
    (env.decode_login, _packed(1, NONCE, SIG[:-1]), "Login.signature: expected 64 bytes, got 63"),
    (env.decode_login, _packed(1, NONCE), "Login: expected 3 fields, got 2"),
    (env.decode_welcome, _packed(TOKEN, "{}", "open"),
     "Welcome.mode: expected 'secure' or 'plain', got 'open'"),
    (env.decode_welcome, _packed(TOKEN[:-1], "{}", "plain"), "Welcome.token: expected 32 bytes, got 31"),
    (env.decode_welcome, _packed(TOKEN, "x" * (MAX_CONFIG_BYTES + 1), "plain"),
     "Welcome.config: expected a string"),
    (env.decode_poll, _packed(MAX_ROUND + 1, 0, 0), "Poll.after_round: expected an integer"),
    (env.decode_poll, _packed(0, MAX_STEP + 1, 0), "Poll.after_step: expected an integer"),
    (env.decode_poll, _packed(0, 0, MAX_WAIT_MS + 1), "Poll.wait_ms: expected an integer"),
    (env.decode_work, _packed(4, 0, 0, b"", b"", 0.0, [], 0, b""), "Work.kind: expected an integer in"),
    (env.decode_work, _packed(1, 0, 0, b"", b"", -1.0, [], 0, b""),
     r"Work.weight_bound: expected a finite float >= 0"),
    (env.decode_work, _packed(1, 0, 0, b"", b"", math.inf, [], 0, b""),
     "Work.weight_bound: expected a finite float"),
    (env.decode_work, _packed(1, 0, 0, b"", b"", 1, [], 0, b""),
     "Work.weight_bound: expected a finite float"),
    (env.decode_work, _packed(1, 0, 0, "w", b"", 0.0, [], 0, b""), "Work.model: expected bytes"),
    (env.decode_work, _packed(1, 0, 0, b"", b"", 0.0, [1], 0, b""), "Work.public: expected finite floats"),
    (env.decode_work, _packed(1, 0, 0, b"", b"", 0.0, [math.nan], 0, b""),
     "Work.public: expected finite floats"),
    (env.decode_work, _packed(1, 0, 0, b"", b"", 0.0, 0.5, 0, b""),
     "Work.public: expected a list of at most 8"),
    (env.decode_work, _packed(1, 0, 0, b"", b"", 0.0, [0.5] * 9, 0, b""),
     "Work.public: expected a list of at most 8 floats"),
    (env.decode_work, _packed(1, 0, 0, b"", b"", 0.0, [], 0), "Work: expected 9 fields, got 8"),
    (env.decode_work, _packed(1, 0, 0, b"", b"", 0.0, [], -1, b""), "Work.planned: expected an integer"),
    (env.decode_work, _packed(1, 0, 0, b"", b"", 0.0, [], 1 << 32, b""), "Work.planned: expected an integer"),
    (env.decode_work, _packed(1, 0, 0, b"", b"", 0.0, [], 0, b"\x01\x00\x00"),
     "Work.members: expected uint32 words, got 3 bytes"),
    (env.decode_work, _packed(1, 0, 0, b"", b"", 0.0, [], 0, [1, 2]), "Work.members: expected bytes"),
    (env.decode_work, _packed(1, 0, 0, b"", b"", 0.0, [], 0, b"\x02\0\0\0\x01\0\0\0"),
     "Work.members: expected sorted, distinct"),
    (env.decode_work, _packed(1, 0, 0, b"", b"", 0.0, [], 0, b"\x01\0\0\0\x01\0\0\0"),
     "Work.members: expected sorted, distinct"),
    (env.decode_work, _packed(1, 0, 0, b"", b"", 0.0, [], 0, b"\xff\xff\xff\xff"),
     "Work.members: expected sorted, distinct client ids <="),
    (env.decode_submit, _packed(-1, 0, b""), "Submit.round: expected an integer"),
    (env.decode_submit, _packed(MAX_ROUND + 1, 0, b""), "Submit.round: expected an integer"),
    (env.decode_submit, _packed(1, UPDATE_STAGE + 1, b""),
     rf"Submit.stage: expected an integer in \[0, {UPDATE_STAGE}\]"),
    (env.decode_submit, _packed(1, 0, None), "Submit.payload: expected bytes"),
])
def test_malformed_envelope_names_the_field(decode, data: bytes, message: str) -> None:
    with pytest.raises(WireError, match=message):
        decode(data)


def test_plain_update_delta_must_hold_exactly_dim_floats() -> None:
    delta = struct.pack("<3f", 1.0, 2.0, 3.0)
    assert env.decode_update(env.encode_update(PlainUpdate(5, 0.25, delta)), 3).delta == delta
    for dim, got in ((2, 12), (4, 12)):
        with pytest.raises(WireError, match=f"PlainUpdate.delta: expected {4 * dim} bytes, got {got}"):
            env.decode_update(env.encode_update(PlainUpdate(5, 0.25, delta)), dim)


@pytest.mark.parametrize("loss", [math.nan, math.inf, -math.inf, -0.5])
def test_plain_update_train_loss_must_be_finite_and_non_negative(loss: float) -> None:
    with pytest.raises(WireError, match=r"PlainUpdate.train_loss: expected a finite float >= 0"):
        env.decode_update(env.encode_update(PlainUpdate(5, loss, b"\0" * 4)), 1)


def test_extension_types_are_refused() -> None:
    data = msgpack.packb([MAGIC, VERSION, msgpack.ExtType(5, b"x")], use_bin_type=True)
    with pytest.raises(WireError, match="extension type 5 is not allowed"):
        env.decode_hello(data)


def test_deeply_nested_version_field_raises_wire_error_not_recursion_error() -> None:
    """Regression: the unsupported-version message used to repr the peer's value, and a value nested
    ~1000 deep (still under msgpack's own stack limit) raised RecursionError instead of WireError."""
    data = b"\x93\xcd" + MAGIC.to_bytes(2, "big") + b"\x91" * 1000 + b"\x90" + b"\x01"
    with pytest.raises(WireError, match=rf"Hello: unsupported version list \(this build speaks {VERSION}\)"):
        env.decode_hello(data)
    huge = b"\x93\xcd" + MAGIC.to_bytes(2, "big") + b"\xdb" + (1 << 20).to_bytes(4, "big") + b"a" * (1 << 20)
    with pytest.raises(WireError) as info:
        env.decode_hello(huge + b"\x01")
    assert len(str(info.value)) < 100  # the peer's megabyte is not echoed back


def test_decoding_a_non_bytes_object_is_a_wire_error() -> None:
    with pytest.raises(WireError, match="Poll: expected bytes"):
        env.decode_poll("not bytes")  # type: ignore[arg-type]


# == authentication ===============================================================================

@pytest.fixture
def keys() -> dict[int, SigningKey]:
    return {u: SigningKey.generate() for u in (3, 7, 11)}


@pytest.fixture
def auth(keys: dict[int, SigningKey]) -> Authenticator:
    return Authenticator({u: k.public for u, k in keys.items()}, challenge_seconds=30.0)


def _signed_login(auth: Authenticator, key: SigningKey, u: int, now: float = 0.0) -> tuple[bytes, bytes]:
    nonce = auth.challenge(u, now)
    return nonce, key.sign(login_message(nonce, u))


def test_login_happy_path(auth: Authenticator, keys: dict[int, SigningKey]) -> None:
    nonce = auth.challenge(7, 100.0)
    assert len(nonce) == NONCE_BYTES
    assert login_message(nonce, 7) == b"secagg/v1/login" + nonce + b"\x00\x00\x00\x07"
    token = auth.login(7, nonce, keys[7].sign(login_message(nonce, 7)), 129.0)
    assert len(token) == TOKEN_BYTES
    assert auth.client_of(token) == 7
    assert auth.logged_in() == 1
    other = auth.login(3, *_signed_login(auth, keys[3], 3, 130.0), 130.0)
    assert auth.client_of(other) == 3 and other != token
    assert auth.logged_in() == 2


def test_challenges_are_fresh(auth: Authenticator) -> None:
    assert len({auth.challenge(3, 0.0) for _ in range(20)}) == 20


def test_unknown_client_gets_no_challenge_and_cannot_log_in(auth: Authenticator) -> None:
    with pytest.raises(AuthError, match="client 5 is not in the registry"):
        auth.challenge(5, 0.0)
    with pytest.raises(AuthError, match="client 5: no such outstanding challenge"):
        auth.login(5, b"\0" * NONCE_BYTES, b"\0" * SIGNATURE_BYTES, 0.0)
    assert auth.logged_in() == 0


def test_signature_by_another_clients_key_is_refused(auth: Authenticator,
                                                     keys: dict[int, SigningKey]) -> None:
    nonce = auth.challenge(3, 0.0)
    with pytest.raises(AuthError, match="signature of client 3 does not verify"):
        auth.login(3, nonce, keys[7].sign(login_message(nonce, 3)), 1.0)
    assert auth.logged_in() == 0
    # the failed attempt spent the challenge: the right signature over it no longer helps
    with pytest.raises(AuthError, match="no such outstanding challenge"):
        auth.login(3, nonce, keys[3].sign(login_message(nonce, 3)), 1.0)


def test_signature_for_another_client_id_is_refused(auth: Authenticator, keys: dict[int, SigningKey]) -> None:
    """Client 7 signs its own message but presents it as client 3's login: the id is bound in."""
    nonce = auth.challenge(3, 0.0)
    with pytest.raises(AuthError, match="signature of client 3 does not verify"):
        auth.login(3, nonce, keys[3].sign(login_message(nonce, 7)), 1.0)


def test_wrong_nonce_is_refused(auth: Authenticator, keys: dict[int, SigningKey]) -> None:
    auth.challenge(3, 0.0)
    forged = b"\x01" * NONCE_BYTES
    with pytest.raises(AuthError, match="client 3: no such outstanding challenge"):
        auth.login(3, forged, keys[3].sign(login_message(forged, 3)), 1.0)


def test_replayed_challenge_is_refused(auth: Authenticator, keys: dict[int, SigningKey]) -> None:
    nonce, signature = _signed_login(auth, keys[11], 11)
    token = auth.login(11, nonce, signature, 1.0)
    with pytest.raises(AuthError, match="client 11: no such outstanding challenge"):
        auth.login(11, nonce, signature, 2.0)
    assert auth.client_of(token) == 11  # the replay did not disturb the live session


def test_strangers_asking_for_challenges_cannot_lock_a_client_out(auth: Authenticator,
                                                                   keys: dict[int, SigningKey]) -> None:
    """Anyone may call Hello for any registered id; the client's own challenge survives a few such
    requests (the newest MAX_CHALLENGES are kept), and beyond that the oldest is dropped, not all."""
    from secagg.transport.auth import MAX_CHALLENGES

    first, signature = _signed_login(auth, keys[3], 3)
    for _ in range(MAX_CHALLENGES - 1):
        auth.challenge(3, 0.0)  # a stranger's requests
    assert auth.client_of(auth.login(3, first, signature, 1.0)) == 3
    oldest, signature = _signed_login(auth, keys[3], 3)
    for _ in range(MAX_CHALLENGES):
        auth.challenge(3, 0.0)
    with pytest.raises(AuthError, match="no such outstanding challenge"):
        auth.login(3, oldest, signature, 1.0)
    assert sum(len(p) for p in auth._challenges.values()) <= MAX_CHALLENGES * len(auth.registry)


def test_expired_challenge_is_refused(auth: Authenticator, keys: dict[int, SigningKey]) -> None:
    nonce, signature = _signed_login(auth, keys[3], 3, now=10.0)
    with pytest.raises(AuthError, match="client 3: the challenge expired"):
        auth.login(3, nonce, signature, 40.001)
    assert auth.logged_in() == 0
    nonce, signature = _signed_login(auth, keys[3], 3, now=10.0)
    assert auth.client_of(auth.login(3, nonce, signature, 40.0)) == 3  # exactly at expiry: still valid


def test_new_login_revokes_the_old_token(auth: Authenticator, keys: dict[int, SigningKey]) -> None:
    old = auth.login(3, *_signed_login(auth, keys[3], 3), 0.0)
    new = auth.login(3, *_signed_login(auth, keys[3], 3), 1.0)
    assert new != old
    assert auth.client_of(new) == 3
    with pytest.raises(AuthError, match="unknown token"):
        auth.client_of(old)
    assert auth.logged_in() == 1


@pytest.mark.parametrize(("token", "message"), [
    (None, "missing or malformed token"), (b"", "missing or malformed token"),
    (b"x" * (TOKEN_BYTES - 1), "missing or malformed token"),
    (b"x" * (TOKEN_BYTES + 1), "missing or malformed token"),
    (b"x" * TOKEN_BYTES, "unknown token"),
])
def test_client_of_bad_tokens(auth: Authenticator, token: bytes | None, message: str) -> None:
    with pytest.raises(AuthError, match=message):
        auth.client_of(token)


def test_auth_error_is_a_protocol_error() -> None:
    assert issubclass(AuthError, ProtocolError)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_identity_round_trip(tmp_path: Path) -> None:
    key = SigningKey.generate()
    path = tmp_path / "ids" / "client.pem"
    save_identity(path, key)
    assert _mode(path) == 0o600
    loaded = load_identity(path)
    assert loaded.public == key.public
    assert loaded.sign(b"m") == key.sign(b"m")  # Ed25519 is deterministic: the same private key


def test_save_identity_tightens_an_existing_files_mode(tmp_path: Path) -> None:
    path = tmp_path / "client.pem"
    path.write_text("old")
    path.chmod(0o644)
    save_identity(path, SigningKey.generate())
    assert _mode(path) == 0o600


def test_registry_round_trip(tmp_path: Path) -> None:
    registry = {u: SigningKey.generate().public for u in (12, 0, 5, MAX_ID)}
    save_registry(tmp_path / "registry.json", registry)
    data = json.loads((tmp_path / "registry.json").read_text())
    assert list(data["clients"]) == ["0", "5", "12", str(MAX_ID)]
    assert load_registry(tmp_path / "registry.json") == registry


@pytest.mark.parametrize(("text", "message"), [
    ("{not json", "is not valid JSON"),
    ("[]", "must hold"),
    ('{"clients": []}', "must hold"),
    ('{"clients": {}}', "lists no client"),
    ('{"clients": {"1": "abcd"}}', "entry '1' needs an id >= 0 and a 32-byte key"),
    ('{"clients": {"-1": "' + "00" * 32 + '"}}', "entry '-1' needs an id >= 0"),
    ('{"clients": {"one": "' + "00" * 32 + '"}}', "entry 'one' is not an integer id with a hex key"),
    ('{"clients": {"1.5": "' + "00" * 32 + '"}}', "entry '1.5' is not an integer id"),
    ('{"clients": {"1": "zz"}}', "entry '1' is not an integer id with a hex key"),
    ('{"clients": {"1": 7}}', "entry '1' is not an integer id with a hex key"),
])
def test_load_registry_errors(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "registry.json"
    path.write_text(text)
    with pytest.raises(ConfigError, match=f"registry: .*{message}"):
        load_registry(path)


def test_load_identity_refuses_other_keys_and_garbage(tmp_path: Path) -> None:
    files = make_tls_files(tmp_path)
    with pytest.raises(ConfigError, match=r"holds a \w+, expected an Ed25519 key"):
        load_identity(files.server_key)
    (tmp_path / "junk.pem").write_bytes(b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")
    with pytest.raises(ConfigError, match="is not an unencrypted PEM private key"):
        load_identity(tmp_path / "junk.pem")
    with pytest.raises(ConfigError, match="is not an unencrypted PEM private key"):
        load_identity(files.ca_cert)  # a certificate is not a private key


# == TLS material =================================================================================

def _verify_issued_by(cert: x509.Certificate, ca: x509.Certificate) -> None:
    public = ca.public_key()
    assert isinstance(public, ec.EllipticCurvePublicKey)
    assert cert.signature_hash_algorithm is not None
    public.verify(cert.signature, cert.tbs_certificate_bytes, ec.ECDSA(cert.signature_hash_algorithm))


def test_tls_files_are_a_ca_and_a_server_certificate_it_signed(tmp_path: Path) -> None:
    files = make_tls_files(tmp_path / "tls", ("example.org", "10.1.2.3", "fd00::7"), days=3)
    ca = x509.load_pem_x509_certificate(files.ca_cert.read_bytes())
    cert = x509.load_pem_x509_certificate(files.server_cert.read_bytes())
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is True
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    assert cert.issuer == ca.subject
    _verify_issued_by(ca, ca)  # self-signed
    _verify_issued_by(cert, ca)
    other = x509.load_pem_x509_certificate(make_tls_files(tmp_path / "other").ca_cert.read_bytes())
    with pytest.raises(InvalidSignature):
        _verify_issued_by(cert, other)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["example.org"]
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("10.1.2.3"),
                                                       ipaddress.ip_address("fd00::7")]
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert 3 * 86400 <= lifetime.total_seconds() <= 3 * 86400 + 600
    # the key file holds the private half of the certificate's key, readable by its owner only
    key = serialization.load_pem_private_key(files.server_key.read_bytes(), password=None)
    assert key.public_key().public_numbers() == cert.public_key().public_numbers()  # type: ignore[union-attr]
    assert _mode(files.server_key) == 0o600
    assert not (tmp_path / "tls" / "ca.key").exists()
    assert sorted(p.name for p in (tmp_path / "tls").iterdir()) == ["ca.pem", "server.key", "server.pem"]


def test_tls_default_hosts(tmp_path: Path) -> None:
    cert = x509.load_pem_x509_certificate(make_tls_files(tmp_path).server_cert.read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["localhost"]
    assert set(san.get_values_for_type(x509.IPAddress)) == {ipaddress.ip_address("127.0.0.1"),
                                                            ipaddress.ip_address("::1")}


def test_tls_keep_ca_key(tmp_path: Path) -> None:
    files = make_tls_files(tmp_path, keep_ca_key=True)
    ca_key = serialization.load_pem_private_key((tmp_path / "ca.key").read_bytes(), password=None)
    ca = x509.load_pem_x509_certificate(files.ca_cert.read_bytes())
    assert ca_key.public_key().public_numbers() == ca.public_key().public_numbers()  # type: ignore[union-attr]
    assert _mode(tmp_path / "ca.key") == 0o600


def test_tls_overwrite_tightens_key_mode(tmp_path: Path) -> None:
    (tmp_path / "server.key").write_text("old")
    (tmp_path / "server.key").chmod(0o644)
    make_tls_files(tmp_path)
    assert _mode(tmp_path / "server.key") == 0o600


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"days": 0}, "days: must be >= 1, got 0"), ({"hosts": ()}, "hosts: the server certificate needs")])
def test_tls_bad_arguments(tmp_path: Path, kwargs: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        make_tls_files(tmp_path, **kwargs)
    assert not list(tmp_path.iterdir())


# == coordinator: secure rounds ===================================================================

D = 3  # model coordinates; the session vector has one more word (the weight)


class Fleet:
    """Real protocol clients talking to a coordinator through its poll/submit interface and the wire codec."""

    def __init__(self, coordinator: Coordinator, invited: tuple[int, ...], round_index: int, *,
                 bits: int = 32, seed: int = 0, params=None) -> None:
        self.coordinator = coordinator
        self.round = round_index
        self.params = params or SecureSum(bits=bits).session_params(invited, D + 1, round_index)
        rng = np.random.default_rng(seed)
        self.inputs = {u: rng.integers(0, 1 << self.params.bits, D + 1, dtype=np.uint64).astype(np.uint32)
                       for u in invited}
        self.clients = {u: Client(u, self.inputs[u]) for u in invited}
        self.position = dict.fromkeys(invited, (0, 0))
        self.silent: dict[int, Stage] = {}  # client -> the first stage it does not answer
        self.replies: dict[int, list[tuple[int, bytes]]] = {u: [] for u in invited}

    def begin(self, now: float, weights: bytes = b"weights") -> None:
        self.coordinator.begin_round(_server_round(self.params), weights, now)

    def fetch(self, u: int) -> tuple[int, bytes] | None:
        """Client ``u`` polls and computes (without sending) its reply: (stage, payload), or None."""
        item = self.coordinator.poll(u, *self.position[u])
        if item is None:
            return None
        work = env.decode_work(item.data)
        assert work.round == self.round
        self.position[u] = (work.round, work.step)
        if work.kind is WorkKind.TASK:
            assert work.step == 0 and work.model == b"weights" and work.weight_bound == 4.0
        else:
            assert work.kind is WorkKind.PROTOCOL and work.model == b""
        message = wire.decode(work.message)
        reply = self.clients[u].handle(message)
        return int(REPLY_STAGE[type(message)]), wire.encode(reply)

    def step(self, now: float, only: tuple[int, ...] | None = None) -> int:
        """Every (or each of ``only``) client polls and answers; how many answered."""
        answered = 0
        for u in only if only is not None else self.params.client_ids:
            stage_now = self.coordinator.stage_name()
            if u in self.silent and stage_now in {s.name for s in Stage if s >= self.silent[u]}:
                continue
            got = self.fetch(u)
            if got is None:
                continue
            stage, payload = got
            self.coordinator.submit(u, self.round, stage, payload, now)
            self.replies[u].append((stage, payload))
            answered += 1
        return answered

    def run(self, now: float = 0.0) -> tuple[RoundOutcome, float]:
        """Drive the round to its end; a stage closes when due, or else at its deadline."""
        for _ in range(20):
            self.step(now)
            if not self.coordinator.due(now):
                now = self.coordinator.deadline
                assert self.coordinator.due(now)
            outcome = self.coordinator.advance(now)
            if outcome is not None:
                return outcome, now
        raise AssertionError("the round did not end")

    def expected_sum(self, survivors: tuple[int, ...]) -> np.ndarray:
        total = sum((self.inputs[u].astype(np.uint64) for u in survivors), np.zeros(D + 1, np.uint64))
        return (total % (1 << self.params.bits)).astype(np.uint32)


def _secure(**kwargs) -> Coordinator:
    kwargs = {"task_seconds": 100.0, "stage_seconds": 10.0, "grace_seconds": 5.0} | kwargs
    return Coordinator("secure", **kwargs)


def _server_round(*sessions: SessionParams, weight_bound: float = 4.0) -> ServerRound:
    """A secure round of the aggregation backend over ``sessions`` (side by side when several) on a
    ``D``-coordinate model: what ``secagg serve`` hands the coordinator."""
    ids = tuple(sorted(u for params in sessions for u in params.client_ids))
    pipeline = Pipeline(SecureSum(bits=sessions[0].bits), D)
    return ServerRound(pipeline, sessions[0].round, ids, weight_bound, sessions=list(sessions))


@settings(max_examples=6, deadline=None)
@given(st.lists(st.integers(0, 1000), min_size=3, max_size=5, unique=True).map(lambda x: tuple(sorted(x))),
       st.sampled_from([8, 16, 32]), st.integers(0, 2**32 - 1))
def test_full_secure_round_gives_the_exact_sum(invited: tuple[int, ...], bits: int, seed: int) -> None:
    coordinator = _secure()
    fleet = Fleet(coordinator, invited, 1, bits=bits, seed=seed)
    fleet.begin(0.0)
    assert coordinator.stage_name() == "ADVERTISE_KEYS"
    outcome, now = fleet.run(0.0)
    assert now == 0.0  # every stage closed because everyone answered, not by a deadline
    assert outcome.aborted is None and outcome.rejected == []
    assert outcome.round == 1 and outcome.invited == invited
    assert outcome.survivors == invited and outcome.dropped == ()
    assert outcome.result is not None
    np.testing.assert_array_equal(outcome.result, fleet.expected_sum(invited))
    assert coordinator.stage_name() == "none" and not coordinator.due(1e9)
    with pytest.raises(ProtocolError, match="no round is open"):
        coordinator.advance(0.0)


def test_client_silent_after_share_keys_is_dropped_at_the_deadline() -> None:
    coordinator = _secure(stage_seconds=10.0, grace_seconds=1000.0)  # only the deadline closes stages
    invited = (2, 4, 6, 8, 10)
    fleet = Fleet(coordinator, invited, 1, seed=3)
    fleet.silent[6] = Stage.MASKED_INPUT
    fleet.begin(0.0)
    assert fleet.step(0.0) == 5 and coordinator.due(0.0)
    assert coordinator.advance(0.0) is None
    assert fleet.step(1.0) == 5 and coordinator.due(1.0)  # ShareKeys from everyone
    assert coordinator.advance(1.0) is None
    assert fleet.step(1.5) == 5 and coordinator.due(1.5)  # ShareCheck from everyone (6 too, still there)
    assert coordinator.advance(1.5) is None
    assert coordinator.stage_name() == "MASKED_INPUT" and coordinator.deadline == 11.5
    assert fleet.step(2.0) == 4
    assert not coordinator.due(2.0) and not coordinator.due(11.499)
    assert coordinator.due(11.5)
    assert coordinator.advance(11.5) is None
    outcome, _ = fleet.run(12.0)
    assert outcome.survivors == (2, 4, 8, 10) and outcome.dropped == (6,)
    np.testing.assert_array_equal(outcome.result, fleet.expected_sum((2, 4, 8, 10)))
    assert fleet.expected_sum((2, 4, 8, 10)).tolist() != fleet.expected_sum(invited).tolist()


def test_grace_period_after_quorum() -> None:
    """Once t clients answered a stage, it closes grace_seconds later even though a client is missing."""
    coordinator = _secure(task_seconds=100.0, grace_seconds=5.0)
    invited = (1, 2, 3, 4, 5)
    fleet = Fleet(coordinator, invited, 1, seed=4)
    assert fleet.params.threshold == 3
    fleet.silent[5] = Stage.ADVERTISE_KEYS
    fleet.begin(0.0)
    assert fleet.step(0.0, only=(1, 2)) == 2
    assert not coordinator.due(50.0)  # two answers: below the quorum, the deadline still rules
    assert fleet.step(60.0, only=(3,)) == 1  # the t-th answer: quorum at 60
    assert not coordinator.due(60.0) and not coordinator.due(64.999)
    assert fleet.step(62.0, only=(4,)) == 1  # later answers do not move the quorum time
    assert not coordinator.due(64.999)
    assert coordinator.due(65.0)
    assert coordinator.advance(65.0) is None
    assert coordinator.deadline == 75.0 and not coordinator.due(65.0)  # the grace clock restarts
    outcome, _ = fleet.run(65.0)
    assert outcome.survivors == (1, 2, 3, 4) and outcome.dropped == ()
    np.testing.assert_array_equal(outcome.result, fleet.expected_sum((1, 2, 3, 4)))


def test_grace_ignores_refused_messages() -> None:
    coordinator = _secure(grace_seconds=5.0)
    fleet = Fleet(coordinator, (1, 2, 3, 4), 1)
    assert fleet.params.threshold == 3
    fleet.begin(0.0)
    stage, payload = fleet.fetch(1)  # type: ignore[misc]
    coordinator.submit(1, 1, stage, payload, 0.0)
    for _ in range(3):
        with pytest.raises(Rejected):
            coordinator.submit(1, 1, stage, payload, 0.0)
    fleet.step(1.0, only=(2,))
    assert not coordinator.due(99.0)


def test_too_few_clients_aborts_the_round_with_an_outcome() -> None:
    coordinator = _secure()
    invited = (1, 2, 3, 4)
    fleet = Fleet(coordinator, invited, 1)
    assert fleet.params.threshold == 3
    fleet.silent[3] = fleet.silent[4] = Stage.ADVERTISE_KEYS
    fleet.begin(0.0)
    assert fleet.step(0.0) == 2
    assert not coordinator.due(99.9) and coordinator.due(100.0)
    outcome = coordinator.advance(100.0)
    assert outcome is not None and outcome.result is None
    assert outcome.aborted == "only 2 clients advertised keys, fewer than the threshold t=3: round aborted"
    assert coordinator.stage_name() == "none"
    # the next round can start
    Fleet(coordinator, invited, 2).begin(200.0)
    assert coordinator.stage_name() == "ADVERTISE_KEYS"


def test_dropout_below_threshold_mid_round_aborts() -> None:
    coordinator = _secure()
    fleet = Fleet(coordinator, (1, 2, 3, 4), 1)
    fleet.silent[1] = fleet.silent[2] = Stage.MASKED_INPUT
    fleet.begin(0.0)
    outcome, _ = fleet.run(0.0)
    assert outcome.aborted is not None and "fewer than the threshold t=3" in outcome.aborted
    assert outcome.result is None


def test_polling_positions() -> None:
    coordinator = _secure()
    fleet = Fleet(coordinator, (1, 2, 3), 1)
    assert coordinator.poll(1, 0, 0) is None  # nothing before a round
    fleet.begin(0.0)
    task = coordinator.poll(1, 0, 0)
    assert task is not None and (task.round, task.step) == (1, 0)
    assert env.decode_work(task.data).kind is WorkKind.TASK
    assert coordinator.poll(1, 1, 0) is None  # handled it: wait
    assert coordinator.poll(99, 0, 0) is None  # not invited: nothing
    assert coordinator.poll(1, 0, 5) == task  # the first item after the position, whatever the step
    fleet.step(0.0)
    coordinator.advance(0.0)
    directory = coordinator.poll(1, 1, 0)
    assert directory is not None
    work = env.decode_work(directory.data)
    assert (work.kind, work.round, work.step) == (WorkKind.PROTOCOL, 1, 1)
    assert coordinator.poll(2, 1, 0) is directory  # type: ignore[union-attr] - one broadcast
    assert coordinator.poll(1, 1, 1) is None
    coordinator.finish()
    assert env.decode_work(coordinator.poll(1, 1, 1).data) == Work(WorkKind.DONE, 1)  # type: ignore[union-attr]
    assert env.decode_work(coordinator.poll(42, 0, 0).data) == Work(WorkKind.DONE, 1)  # type: ignore[union-attr]


# -- refusals leave the state unchanged ------------------------------------------------------------

@pytest.fixture
def opened() -> Fleet:
    """Round 1 open for clients 1..4 at ADVERTISE_KEYS; nobody has answered yet."""
    coordinator = _secure()
    fleet = Fleet(coordinator, (1, 2, 3, 4), 1)
    fleet.begin(0.0)
    return fleet


def _advertisement(fleet: Fleet, u: int) -> bytes:
    got = fleet.fetch(u)
    assert got is not None and got[0] == Stage.ADVERTISE_KEYS
    return got[1]


def _still_accepts(fleet: Fleet, u: int, payload: bytes) -> None:
    session = fleet.coordinator.server_round.sessions[0]
    assert session is not None
    before = set(session.keys)
    fleet.coordinator.submit(u, fleet.round, int(Stage.ADVERTISE_KEYS), payload, 0.0)
    assert set(session.keys) == before | {u}


def _refused(fleet: Fleet, code: str, message: str, client: int, round_index: int, stage: int,
             payload: bytes) -> None:
    coordinator = fleet.coordinator
    session = coordinator.server_round.sessions[0]
    assert session is not None
    keys_before, phase_before, rejected_before = dict(session.keys), session.phase, len(coordinator._rejected)
    with pytest.raises(Rejected, match=message) as info:
        coordinator.submit(client, round_index, stage, payload, 0.0)
    assert info.value.code == code
    assert session.keys == keys_before and session.phase is phase_before
    assert coordinator._rejected[rejected_before:] == [(client, str(info.value))]
    assert coordinator._quorum_at is None or len(keys_before) >= session.params.threshold


@pytest.mark.parametrize("round_index", [0, 2, MAX_ROUND])
def test_wrong_round_is_refused(opened: Fleet, round_index: int) -> None:
    payload = _advertisement(opened, 1)
    _refused(opened, "precondition", f"message for round {round_index}, but round 1 is open: late or early",
             1, round_index, int(Stage.ADVERTISE_KEYS), payload)
    _still_accepts(opened, 1, payload)


def test_late_message_for_the_previous_round_is_refused() -> None:
    coordinator = _secure()
    first = Fleet(coordinator, (1, 2, 3), 1, seed=1)
    first.begin(0.0)
    late = _advertisement(first, 3)  # client 3 computes its reply but sends it only after round 1
    first.silent[3] = Stage.ADVERTISE_KEYS
    outcome, now = first.run(0.0)
    assert outcome.survivors == (1, 2)
    np.testing.assert_array_equal(outcome.result, first.expected_sum((1, 2)))
    with pytest.raises(Rejected, match="message for round 1, but round 1 is closed: late or early") as info:
        coordinator.submit(3, 1, int(Stage.ADVERTISE_KEYS), late, now)
    assert info.value.code == "precondition"
    second = Fleet(coordinator, (1, 2, 3), 2, seed=2)
    second.begin(now + 1)
    _refused(second, "precondition", "message for round 1, but round 2 is open: late or early",
             3, 1, int(Stage.ADVERTISE_KEYS), late)
    # the round-1 advertisement is not valid for round 2 either (other session parameters)
    outcome, _ = second.run(now + 1)
    np.testing.assert_array_equal(outcome.result, second.expected_sum((1, 2, 3)))
    assert outcome.rejected == [(3, "message for round 1, but round 2 is open: late or early, refused")]


@pytest.mark.parametrize(("stage", "name"), [(Stage.SHARE_KEYS, "SHARE_KEYS"), (Stage.UNMASKING, "UNMASKING"),
                                              (UPDATE_STAGE, str(UPDATE_STAGE)), (77, "77")])
def test_wrong_stage_is_refused(opened: Fleet, stage: int, name: str) -> None:
    payload = _advertisement(opened, 2)
    _refused(opened, "precondition", f"a {name} message during stage ADVERTISE_KEYS: refused", 2, 1,
             int(stage), payload)
    _still_accepts(opened, 2, payload)


def test_message_of_another_type_for_the_stage_is_refused(opened: Fleet) -> None:
    """The envelope says ADVERTISE_KEYS but the payload is another message type."""
    payload = _advertisement(opened, 2)
    advert = wire.decode(payload)
    assert isinstance(advert, AdvertiseKeys)
    other = wire.encode(MaskedInput(2, b"\0" * 32, b"\0" * 4 * (D + 1)))
    _refused(opened, "precondition", "MaskedInput received during stage ADVERTISE_KEYS", 2, 1,
             int(Stage.ADVERTISE_KEYS), other)
    _still_accepts(opened, 2, payload)


def test_client_not_invited_is_refused(opened: Fleet) -> None:
    payload = _advertisement(opened, 1)
    _refused(opened, "precondition", "client 9 is not taking part in round 1", 9, 1,
             int(Stage.ADVERTISE_KEYS), payload)
    _still_accepts(opened, 1, payload)


@pytest.mark.parametrize(("garbage", "message"), [
    (b"", "secagg message: not a valid msgpack object"),
    (b"\xc1", "secagg message: not a valid msgpack object"),
    (b"\xff" * 64, r"secagg message: not a valid msgpack object \(ExtraData\)"),
    (b"\x00", r"secagg message: expected a msgpack array \[magic, version"),
    (msgpack.packb([1, 2, 3]), "secagg message: bad magic number"),
], ids=["empty", "reserved-byte", "trailing-data", "not-a-list", "bad-magic"])
def test_garbage_payload_is_invalid(opened: Fleet, garbage: bytes, message: str) -> None:
    payload = _advertisement(opened, 4)
    _refused(opened, "invalid", message, 4, 1, int(Stage.ADVERTISE_KEYS), garbage)
    _still_accepts(opened, 4, payload)


def test_message_claiming_another_sender_is_refused(opened: Fleet) -> None:
    theirs = _advertisement(opened, 2)
    ours = _advertisement(opened, 1)
    _refused(opened, "precondition", "a message from client 1 claims to come from client 2", 1, 1,
             int(Stage.ADVERTISE_KEYS), theirs)
    _still_accepts(opened, 2, theirs)
    _still_accepts(opened, 1, ours)


def test_duplicate_submission_is_refused(opened: Fleet) -> None:
    payload = _advertisement(opened, 3)
    _still_accepts(opened, 3, payload)
    _refused(opened, "precondition", "duplicate AdvertiseKeys from client 3", 3, 1, int(Stage.ADVERTISE_KEYS),
             payload)
    # the round goes on as if the duplicate had never come
    outcome, _ = opened.run(0.0)
    np.testing.assert_array_equal(outcome.result, opened.expected_sum((1, 2, 3, 4)))
    assert outcome.rejected == [(3, "server: duplicate AdvertiseKeys from client 3")]


def test_after_finish_everything_is_refused(opened: Fleet) -> None:
    payload = _advertisement(opened, 1)
    opened.coordinator.finish()
    with pytest.raises(Rejected, match="training is over") as info:
        opened.coordinator.submit(1, 1, int(Stage.ADVERTISE_KEYS), payload, 0.0)
    assert info.value.code == "precondition"
    assert not opened.coordinator.due(1e9)


def test_begin_round_checks() -> None:
    coordinator = _secure()
    fleet = Fleet(coordinator, (1, 2, 3), 1)
    with pytest.raises(ConfigError, match="mode: must be one of secure, plain"):
        Coordinator("open")
    with pytest.raises(ConfigError, match="grace_seconds: must be > 0 seconds, got 0"):
        Coordinator("secure", grace_seconds=0)
    fleet.begin(0.0)
    with pytest.raises(ProtocolError, match="coordinator: round 1 is still open"):
        fleet.begin(0.0)
    fleet.run(0.0)
    with pytest.raises(ProtocolError, match="coordinator: round 1 does not follow round 1"):
        fleet.begin(0.0)


# == coordinator: plain rounds ====================================================================

def _delta(*values: float) -> bytes:
    return struct.pack(f"<{len(values)}f", *values)


@pytest.fixture
def plain() -> Coordinator:
    coordinator = Coordinator("plain", task_seconds=100.0, grace_seconds=5.0)
    coordinator.begin_round(ServerRound(Pipeline(Mean(), D), 1, (1, 2, 3), 2.5), b"w", 0.0)
    return coordinator


def test_plain_round(plain: Coordinator) -> None:
    task = plain.poll(2, 0, 0)
    assert task is not None and env.decode_work(task.data) == Work(WorkKind.TASK, 1, 0, b"w", b"", 2.5)
    assert plain.stage_name() == "UPDATES"
    updates = {u: PlainUpdate(10 * u, 0.5 * u, _delta(u, -u, 0.25)) for u in (1, 2, 3)}
    for u, update in updates.items():
        assert not plain.due(0.0)
        plain.submit(u, 1, UPDATE_STAGE, env.encode_update(update), 0.0)
    assert plain.due(0.0)
    outcome = plain.advance(0.0)
    assert outcome is not None
    assert outcome.updates == updates and outcome.result is None and outcome.aborted is None
    assert plain.stage_name() == "none"
    plain.finish()
    assert env.decode_work(plain.poll(1, 1, 0).data) == Work(WorkKind.DONE, 1)  # type: ignore[union-attr]


@pytest.mark.parametrize(("payload", "code", "message"), [
    (env.encode_update(PlainUpdate(1, 0.1, _delta(1.0, math.nan, 0.0))), "invalid",
     "PlainUpdate.delta: has NaN or infinite coordinates"),
    (env.encode_update(PlainUpdate(1, 0.1, _delta(math.inf, 0.0, 0.0))), "invalid", "NaN or infinite"),
    (env.encode_update(PlainUpdate(1, 0.1, _delta(1.0, 2.0))), "invalid",
     "PlainUpdate.delta: expected 12 bytes, got 8"),
    (env.encode_update(PlainUpdate(1, 0.1, _delta(1.0, 2.0, 3.0, 4.0))), "invalid",
     "PlainUpdate.delta: expected 12 bytes, got 16"),
    (env.encode_update(PlainUpdate(1, math.nan, _delta(1.0, 2.0, 3.0))), "invalid",
     "PlainUpdate.train_loss: expected a finite float"),
    (b"garbage", "invalid", "PlainUpdate: not a valid msgpack object"),
])
def test_plain_bad_updates_are_refused(plain: Coordinator, payload: bytes, code: str, message: str) -> None:
    with pytest.raises(Rejected, match=message) as info:
        plain.submit(1, 1, UPDATE_STAGE, payload, 0.0)
    assert info.value.code == code
    assert plain.server_round.updates == {}
    good = PlainUpdate(1, 0.1, _delta(1.0, 2.0, 3.0))
    plain.submit(1, 1, UPDATE_STAGE, env.encode_update(good), 0.0)
    assert plain.server_round.updates == {1: good}


def test_plain_refusals(plain: Coordinator) -> None:
    good = env.encode_update(PlainUpdate(4, 0.0, _delta(0.0, 0.0, 0.0)))
    with pytest.raises(Rejected, match=r"stage 0: this server runs plain rounds and expects an update"):
        plain.submit(1, 1, int(Stage.ADVERTISE_KEYS), good, 0.0)
    with pytest.raises(Rejected, match="client 7 is not taking part in round 1"):
        plain.submit(7, 1, UPDATE_STAGE, good, 0.0)
    with pytest.raises(Rejected, match="late or early"):
        plain.submit(1, 0, UPDATE_STAGE, good, 0.0)
    plain.submit(1, 1, UPDATE_STAGE, good, 0.0)
    other = env.encode_update(PlainUpdate(4, 0.0, _delta(9.0, 9.0, 9.0)))
    with pytest.raises(Rejected, match="duplicate update from client 1") as info:
        plain.submit(1, 1, UPDATE_STAGE, other, 0.0)
    assert info.value.code == "precondition"
    assert plain.server_round.updates[1].delta == _delta(0.0, 0.0, 0.0)  # the first update stands
    outcome = plain.advance(50.0)
    assert outcome is not None and set(outcome.updates) == {1}
    assert [message for _, message in outcome.rejected] == [
        "stage 0: this server runs plain rounds and expects an update (stage 100)",
        "client 7 is not taking part in round 1",
        "message for round 0, but round 1 is open: late or early, refused",
        "duplicate update from client 1"]


def test_plain_grace_after_a_majority(plain: Coordinator) -> None:
    update = env.encode_update(PlainUpdate(1, 0.0, _delta(1.0, 1.0, 1.0)))
    plain.submit(1, 1, UPDATE_STAGE, update, 10.0)
    assert not plain.due(80.0)  # 1 of 3: no quorum yet
    plain.submit(3, 1, UPDATE_STAGE, update, 81.0)  # 2 of 3: a majority
    assert not plain.due(85.999) and plain.due(86.0)
    outcome = plain.advance(86.0)
    assert outcome is not None and sorted(outcome.updates) == [1, 3]


def test_network_mode_refuses_nested_sessions_and_simulation_noise() -> None:
    from dp.central import DPFedAvg
    from secagg.aggregation import CoordinateMedian, SecureBucketing, SecureSum
    from secagg.transport.serve import network_mode

    assert network_mode(SecureSum()) == "secure"
    assert network_mode(CoordinateMedian()) == "plain"
    assert network_mode(DPFedAvg()) == "plain"
    from dp.local import LocalDP

    # local noise is placed on the clients: plain rows, or a secure sum of noisy rows
    assert network_mode(LocalDP()) == "plain" and network_mode(LocalDP(inner=SecureSum())) == "secure"
    # secure bucketing: one secure session per bucket
    assert network_mode(SecureBucketing(bucket_size=3, inner=CoordinateMedian())) == "secure"
    with pytest.raises(ConfigError, match="has another secure-aggregation rule"):
        network_mode(SecureBucketing(bucket_size=3, inner=SecureSum()))
    with pytest.raises(ConfigError, match="simulation_seed"):
        network_mode(DPFedAvg(simulation_seed=0))


def test_dp_fedavg_simulation_seed_makes_noise_reproducible_per_round() -> None:
    import torch

    from dp.central import DPFedAvg
    from secagg.aggregation import UpdateBatch

    def batch(seed: int) -> UpdateBatch:
        return UpdateBatch(torch.zeros(3, 50), torch.ones(3, dtype=torch.float64), (0, 1, 2), 1, seed)

    seeded = DPFedAvg(simulation_seed=7)
    a, b = (seeded.aggregate(batch(11), {}).update for _ in range(2))
    assert torch.equal(a, b) and a.abs().sum() > 0
    assert not torch.equal(a, seeded.aggregate(batch(12), {}).update)  # another round, other noise
    fresh = DPFedAvg()
    assert not torch.equal(fresh.aggregate(batch(11), {}).update, fresh.aggregate(batch(11), {}).update)


def test_the_round_task_is_encoded_once_for_every_client() -> None:
    """The TASK carries the global weights: polled by n clients, it is built and encoded once."""
    from secagg.aggregation import SecureSum
    from secagg.transport.coordinator import Coordinator

    ids = (0, 1, 2, 3)
    coordinator = Coordinator("secure")
    pipeline = Pipeline(SecureSum(), 10)
    coordinator.begin_round(pipeline.server(1, ids, weight_bound=1.0), b"w" * 1000, 0.0)
    items = [coordinator.poll(u, 0, 0) for u in ids]
    assert all(item is items[0] for item in items)
    assert all(item.data is items[0].data for item in items)  # type: ignore[union-attr]
    assert env.decode_work(items[0].data).model == b"w" * 1000  # type: ignore[union-attr]


def _grouped(invited: tuple[int, ...], groups: list[tuple[int, ...]]) -> tuple[Coordinator, Fleet, list]:
    coordinator = _secure()
    fleet = Fleet(coordinator, invited, 1)
    params = [SecureSum().session_params(g, D + 1, 1) for g in groups]
    coordinator.begin_round(_server_round(*params), b"weights", 0.0)
    return coordinator, fleet, params


def test_several_sessions_run_side_by_side_each_giving_its_groups_exact_sum() -> None:
    """Secure bucketing's round: one session per bucket in one coordinator round; a dropout in one
    bucket is recovered inside that bucket, the other's sum is untouched."""
    invited = (0, 1, 2, 3, 4, 5)
    groups = [(0, 2, 4), (1, 3, 5)]
    _, fleet, params = _grouped(invited, groups)
    fleet.silent[5] = Stage.MASKED_INPUT
    outcome, _ = fleet.run(0.0)
    assert outcome.aborted is None and len(outcome.sums) == 2
    # each session's parameters, with the nonce its server drew (fresh for each)
    assert [dataclasses.replace(one.params, nonce=b"") for one in outcome.sums] == params
    assert len({one.params.nonce for one in outcome.sums}) == 2
    assert outcome.sums[0].survivors == (0, 2, 4) and outcome.sums[1].survivors == (1, 3)
    assert outcome.dropped == (5,) and outcome.survivors == (0, 1, 2, 3, 4)
    for one in outcome.sums:
        np.testing.assert_array_equal(one.result, fleet.expected_sum(one.survivors))
    assert outcome.result is None  # no single sum for a round of several sessions


def test_one_sessions_abort_aborts_the_round_naming_its_clients() -> None:
    _, fleet, _ = _grouped((0, 1, 2, 3, 4, 5), [(0, 2, 4), (1, 3, 5)])
    fleet.silent[3] = fleet.silent[5] = Stage.MASKED_INPUT  # below the second bucket's threshold
    outcome, _ = fleet.run(0.0)
    assert outcome.aborted is not None and "(the session of clients [1, 3, 5])" in outcome.aborted
    assert outcome.sums == []


def test_sessions_must_partition_the_invited_clients() -> None:
    for groups in ([(0, 1, 2)], [(0, 1, 2), (2, 3, 4, 5)], [(0, 1, 2), (3, 4, 5, 6)]):
        params = [SecureSum().session_params(g, D + 1, 1) for g in groups]
        with pytest.raises(ConfigError, match="clients are exactly the invited clients, each in one session"):
            ServerRound(Pipeline(SecureSum(), D), 1, (0, 1, 2, 3, 4, 5), 1.0, sessions=params)


def test_a_client_refuses_a_global_model_that_is_not_the_configured_one() -> None:
    """The TASK's model bytes come from the server: garbage, or tensors of other names, shapes or dtypes,
    are the server's fault (RemoteProtocolError naming Work.model), never trained on."""
    import safetensors.torch
    import torch

    from secagg.errors import RemoteProtocolError
    from secagg.experiment import ExperimentConfig
    from secagg.task import TaskConfig, make_task
    from secagg.transport.node import NetworkClient

    config = ExperimentConfig(task=TaskConfig(num_clients=2))
    client = NetworkClient("127.0.0.1:1", 0, SigningKey.generate())
    client._setup(config.to_json())
    try:
        good = make_task(config.task, seed=config.seed).model.state_dict()
        update = client.train(Work(WorkKind.TASK, 1, 0, safetensors.torch.save(good)))
        assert update.delta.numel() == sum(v.numel() for v in good.values())
        name = next(iter(good))
        bad = [b"", b"not safetensors",
               safetensors.torch.save({**good, "extra": torch.zeros(1)}),
               safetensors.torch.save({**good, name: torch.zeros(3)}),
               safetensors.torch.save({**good, name: good[name].double()})]
        for model in bad:
            with pytest.raises(RemoteProtocolError, match=r"Work\.model"):
                client.train(Work(WorkKind.TASK, 1, 0, model))
    finally:
        client.close()
