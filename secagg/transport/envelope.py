"""What travels in the gRPC payloads: versioned msgpack arrays with a fixed, checked schema each.

The secure-aggregation messages themselves keep their own wire format (:mod:`secagg.protocol.wire`)
and ride inside these envelopes as ``bin`` fields. Every ``decode_*`` function checks magic, version,
arity, types and bounds and raises :class:`WireError` naming the field for anything else: a peer's
bytes never reach the state machines unchecked, and nothing executes on load.

Client -> server: ``Hello`` (ask for a login challenge), ``Login`` (signed challenge), ``Poll`` (the
next work item after a position), ``Submit`` (a reply for one stage of one round). Server -> client:
``Challenge``, ``Welcome`` (bearer token + run configuration), ``Work`` (wait / task / protocol
message / done), and an empty acknowledgement.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

import numpy as np

from secagg import codec
from secagg.crypto.keys import SIGNATURE_BYTES
from secagg.errors import WireError
from secagg.protocol.messages import MAX_ID

MAGIC = 0x5EC7
VERSION = 3  # 2: Work carries the round's public values; 3: and a two-level round's plan and members
NONCE_BYTES = 32
TOKEN_BYTES = 32
MAX_ROUND = (1 << 31) - 1
MAX_STEP = 64
MAX_PUBLIC = 8  # public round values in one Work item (below the array cap)
MAX_PLANNED = (1 << 32) - 1  # a round's planned client count (ids are below 2^32 - 1)
MAX_WAIT_MS = 60_000
MAX_CONFIG_BYTES = 1 << 20
#: one envelope, at most: a model's weights or update (a 2^28-coordinate float32 model, as the wire
#: format's vectors) plus the fields; gRPC's own per-deployment message limit is usually far lower
MAX_ENVELOPE_BYTES = (1 << 30) + (1 << 20)
#: the codec's caps; a string may reach twice the config bound so that the field reader names it
LIMITS = codec.Limits(max_bytes=MAX_ENVELOPE_BYTES, max_bin=1 << 30, max_str=2 * MAX_CONFIG_BYTES,
                      max_array=16)
UPDATE_STAGE = 100  # a plain (not secure) update; the secure stages are secagg.protocol.Stage values


class WorkKind(IntEnum):
    WAIT = 0      # nothing for this client yet: poll again
    TASK = 1      # a round starts: global weights (+ the session's Setup in secure mode)
    PROTOCOL = 2  # the next secure-aggregation message of the round
    DONE = 3      # training is over: exit


@dataclass(frozen=True)
class Hello:
    client_id: int


@dataclass(frozen=True)
class Challenge:
    nonce: bytes


@dataclass(frozen=True)
class Login:
    client_id: int
    nonce: bytes
    signature: bytes


@dataclass(frozen=True)
class Welcome:
    token: bytes
    config: str  # the run's ExperimentConfig as JSON (what to train, and how)
    mode: str    # "secure" or "plain"


@dataclass(frozen=True)
class Poll:
    """Ask for the first work item after position ``(after_round, after_step)``; block up to ``wait_ms``."""

    after_round: int
    after_step: int
    wait_ms: int


@dataclass(frozen=True)
class Work:
    """``kind`` at position ``(round, step)``. TASK: ``model`` (safetensors bytes of the global
    model's state dict), ``message`` (the wire-encoded Setup, secure mode; else empty),
    ``weight_bound`` (public W).
    ``public``: the round's public values for the client steps (adaptive clipping's clip norm; see
    :meth:`secagg.placement.Placement.public`), at most ``MAX_PUBLIC`` finite floats.
    A two-level round (:mod:`secagg.two_level`): ``planned``, how many clients the whole round's
    encoding is planned for (every combiner's; 0 in a one-level round: the session's own count), and,
    in the top server's TASK to a combiner, ``members``: the round's clients under that combiner
    (sorted, distinct; travels as little-endian uint32 words).
    PROTOCOL: ``message`` (a wire-encoded server message)."""

    kind: WorkKind
    round: int = 0
    step: int = 0
    model: bytes = b""
    message: bytes = b""
    weight_bound: float = 0.0
    public: tuple[float, ...] = ()
    planned: int = 0
    members: tuple[int, ...] = ()


@dataclass(frozen=True)
class Submit:
    """A client's reply for ``stage`` of training round ``round``: a wire-encoded protocol message
    (secure mode) or an encoded :class:`PlainUpdate` (``stage == UPDATE_STAGE``)."""

    round: int
    stage: int
    payload: bytes


@dataclass(frozen=True)
class PlainUpdate:
    """A client's update in the clear (plain mode, for robust rules and server-side DP)."""

    num_examples: int
    train_loss: float
    delta: bytes  # little-endian float32, one per coordinate of the layout


# -- field readers -------------------------------------------------------------------------------

def _uint(v: Any, field: str, bound: int) -> int:
    if type(v) is not int or not 0 <= v <= bound:
        raise WireError(f"{field}: expected an integer in [0, {bound}]")
    return v


def _bin(v: Any, field: str, *, exact: int | None = None, maximum: int | None = None) -> bytes:
    if type(v) is not bytes:
        raise WireError(f"{field}: expected bytes")
    if exact is not None and len(v) != exact:
        raise WireError(f"{field}: expected {exact} bytes, got {len(v)}")
    if maximum is not None and len(v) > maximum:
        raise WireError(f"{field}: expected at most {maximum} bytes, got {len(v)}")
    return v


def _float(v: Any, field: str) -> float:
    if type(v) is not float or not math.isfinite(v) or v < 0:
        raise WireError(f"{field}: expected a finite float >= 0")
    return v


def _floats(v: Any, field: str, maximum: int) -> tuple[float, ...]:
    if type(v) is not list or len(v) > maximum:
        raise WireError(f"{field}: expected a list of at most {maximum} floats")
    if any(type(x) is not float or not math.isfinite(x) for x in v):
        raise WireError(f"{field}: expected finite floats")
    return tuple(v)


def _str(v: Any, field: str, maximum: int) -> str:
    if type(v) is not str or len(v) > maximum:
        raise WireError(f"{field}: expected a string of at most {maximum} characters")
    return v


def _pack(*fields: Any) -> bytes:
    return codec.pack(MAGIC, VERSION, *fields)


def _unpack(data: bytes, what: str, arity: int) -> list[Any]:
    """The ``arity`` fields of envelope ``what``: the shared strict codec (length caps, no extensions,
    exact-int magic and version), exactly ``arity`` fields, and the one canonical encoding."""
    value = codec.unpack(data, what=what, magic=MAGIC, version=VERSION, limits=LIMITS)
    if len(value) != 2 + arity:
        raise WireError(f"{what}: expected {arity} fields, got {len(value) - 2}")
    codec.check_canonical(value, data, what)
    return value[2:]


# -- codecs --------------------------------------------------------------------------------------

def encode_hello(m: Hello) -> bytes:
    return _pack(m.client_id)


def decode_hello(data: bytes) -> Hello:
    (client_id,) = _unpack(data, "Hello", 1)
    return Hello(_uint(client_id, "Hello.client_id", MAX_ID))


def encode_challenge(m: Challenge) -> bytes:
    return _pack(m.nonce)


def decode_challenge(data: bytes) -> Challenge:
    (nonce,) = _unpack(data, "Challenge", 1)
    return Challenge(_bin(nonce, "Challenge.nonce", exact=NONCE_BYTES))


def encode_login(m: Login) -> bytes:
    return _pack(m.client_id, m.nonce, m.signature)


def decode_login(data: bytes) -> Login:
    client_id, nonce, signature = _unpack(data, "Login", 3)
    return Login(_uint(client_id, "Login.client_id", MAX_ID), _bin(nonce, "Login.nonce", exact=NONCE_BYTES),
                 _bin(signature, "Login.signature", exact=SIGNATURE_BYTES))


def encode_welcome(m: Welcome) -> bytes:
    return _pack(m.token, m.config, m.mode)


def decode_welcome(data: bytes) -> Welcome:
    token, config, mode = _unpack(data, "Welcome", 3)
    mode = _str(mode, "Welcome.mode", 16)
    if mode not in ("secure", "plain"):
        raise WireError(f"Welcome.mode: expected 'secure' or 'plain', got {mode!r}")
    return Welcome(_bin(token, "Welcome.token", exact=TOKEN_BYTES),
                   _str(config, "Welcome.config", MAX_CONFIG_BYTES), mode)


def encode_poll(m: Poll) -> bytes:
    return _pack(m.after_round, m.after_step, m.wait_ms)


def decode_poll(data: bytes) -> Poll:
    r, step, wait = _unpack(data, "Poll", 3)
    return Poll(_uint(r, "Poll.after_round", MAX_ROUND), _uint(step, "Poll.after_step", MAX_STEP),
                _uint(wait, "Poll.wait_ms", MAX_WAIT_MS))


def encode_work(m: Work) -> bytes:
    return _pack(int(m.kind), m.round, m.step, m.model, m.message, float(m.weight_bound),
                 [float(v) for v in m.public], m.planned, np.asarray(m.members, dtype="<u4").tobytes())


def _members(v: Any, field: str) -> tuple[int, ...]:
    raw = _bin(v, field)
    if len(raw) % 4:
        raise WireError(f"{field}: expected uint32 words, got {len(raw)} bytes")
    ids = np.frombuffer(raw, dtype="<u4")
    if ids.size and (ids.max() > MAX_ID or not bool(np.all(ids[1:] > ids[:-1]))):
        raise WireError(f"{field}: expected sorted, distinct client ids <= {MAX_ID}")
    return tuple(int(u) for u in ids)


def decode_work(data: bytes) -> Work:
    kind, r, step, model, message, bound, public, planned, members = _unpack(data, "Work", 9)
    try:
        kind = WorkKind(_uint(kind, "Work.kind", max(WorkKind)))
    except ValueError:
        raise WireError("Work.kind: unknown work kind") from None
    return Work(kind, _uint(r, "Work.round", MAX_ROUND), _uint(step, "Work.step", MAX_STEP),
                _bin(model, "Work.model"), _bin(message, "Work.message"),
                _float(bound, "Work.weight_bound"), _floats(public, "Work.public", MAX_PUBLIC),
                _uint(planned, "Work.planned", MAX_PLANNED), _members(members, "Work.members"))


def encode_submit(m: Submit) -> bytes:
    return _pack(m.round, m.stage, m.payload)


def decode_submit(data: bytes) -> Submit:
    r, stage, payload = _unpack(data, "Submit", 3)
    return Submit(_uint(r, "Submit.round", MAX_ROUND), _uint(stage, "Submit.stage", UPDATE_STAGE),
                  _bin(payload, "Submit.payload"))


def encode_update(m: PlainUpdate) -> bytes:
    return _pack(m.num_examples, float(m.train_loss), m.delta)


def decode_update(data: bytes, dim: int) -> PlainUpdate:
    """Decode a plain update whose delta must have exactly ``dim`` finite float32 coordinates."""
    n, loss, delta = _unpack(data, "PlainUpdate", 3)
    update = PlainUpdate(_uint(n, "PlainUpdate.num_examples", MAX_ROUND),
                         _float(loss, "PlainUpdate.train_loss"),
                         _bin(delta, "PlainUpdate.delta", exact=4 * dim))
    if not np.isfinite(np.frombuffer(update.delta, dtype="<f4")).all():
        raise WireError("PlainUpdate.delta: has NaN or infinite coordinates")
    return update


def encode_ack() -> bytes:
    return _pack()
