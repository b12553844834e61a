"""Coverage-guided fuzzing of the secure-aggregation wire format and state machines (atheris/libFuzzer).

Targets (``--target NAME``; ``all`` lets the first input byte pick one of the others):

``decode``   arbitrary bytes into :func:`secagg.protocol.wire.decode`.
``mutate``   structure-aware: a valid captured message, mutated under the fuzzer's choices (bit flips,
             truncation, splicing, msgpack-level field substitution and re-packing, type-code confusion),
             then decoded.
``server``   a :class:`Server` snapshot at each stage (deep-copied per input) receives the decoded input,
             then, if it accepted it, advances once.
``client``   a :class:`Client` snapshot at each phase handles the decoded input.

Oracles. Only :class:`secagg.errors.SecAggError` may escape the library; anything else propagates and
libFuzzer records the input as a crash. On top of that (each a documented guarantee):

* ``decode`` raises nothing but :class:`WireError`, and whatever it accepts re-encodes to the same bytes
  (one message, one encoding);
* ``Server.receive`` refuses with :class:`ProtocolError` only, leaving the server's state exactly as it
  was; ``Server.advance`` raises :class:`AbortError` (or :class:`ProtocolError`) only;
* ``Client.handle`` refuses with :class:`ProtocolError` only, and the client is then ``ABORTED``;
* every message a party emits after accepting fuzzed input can be encoded (else the transport could not
  send it: one hostile peer would stall the round);
* a client never reveals both the self-mask share and the mask-key share of one peer, across replies.

Seeds and snapshots come from real sessions run through :func:`secagg.protocol.runner.run_session`
with a recording ``tamper`` hook, with key generation and ``os.urandom`` made deterministic while they
run, so that the snapshots (session ids, keys) and hence saved crash inputs reproduce across processes.
Message types are enumerated from ``wire._SCHEMAS``; nothing here names a message class.

Run it (libFuzzer flags pass through; the generated seeds are written into the first corpus directory
given, or into a fresh temporary one)::

    .venv/bin/python fuzz/fuzz_secagg.py --target server -atheris_runs=20000
    .venv/bin/python fuzz/fuzz_secagg.py --target all -max_total_time=300 -artifact_prefix=fuzz/crashes/
    .venv/bin/python fuzz/fuzz_secagg.py --make-corpus fuzz/corpus     # write the seeds and exit
    .venv/bin/python fuzz/fuzz_secagg.py --target server fuzz/crashes/server-...  # replay one input
    .venv/bin/python fuzz/fuzz_secagg.py --target server --ignore "text of a known finding" ...

See fuzz/README.md.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import enum
import hashlib
import inspect
import os
import random
import sys
import tempfile
import types
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import msgpack
import numpy as np

try:
    import atheris
except ImportError:  # the target functions still work (tests/test_fuzz.py smoke-checks them without it)
    atheris = None

# Instrument the protocol code (and what it calls) for coverage feedback, only when run as the fuzzer.
_SECAGG_DIR = Path(__file__).resolve().parent.parent / "secagg"
_INSTRUMENTED = ("secagg.protocol", "secagg.crypto", "secagg.errors", "secagg.validation", "secagg.codec",
                 "secagg.transport.envelope")


def _uninstrumented_modules() -> list[str]:
    """Every secagg module outside the protocol path (atheris' include filter is per top-level package)."""
    out = []
    for path in _SECAGG_DIR.rglob("*.py"):
        parts = path.relative_to(_SECAGG_DIR.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        if not any(name == m or name.startswith(m + ".") for m in _INSTRUMENTED):
            out.append(name)
    return out


if atheris is not None and __name__ == "__main__":
    _instrumenting = atheris.instrument_imports(include=["secagg"], exclude=_uninstrumented_modules())
    if "secagg" not in sys.modules and not os.environ.get("SECAGG_FUZZ_FULL_IMPORT"):
        # secagg/__init__.py imports the whole library (torch: ~2 s per fuzzer start); the protocol
        # needs none of it, so the package is entered without running it
        _package = types.ModuleType("secagg")
        _package.__path__ = [str(_SECAGG_DIR)]
        sys.modules["secagg"] = _package
else:
    _instrumenting = contextlib.nullcontext()

with _instrumenting:
    from secagg.errors import AbortError, ProtocolError, SecAggError, WireError
    from secagg.protocol import runner as _runner
    from secagg.protocol import wire
    from secagg.protocol.client import Client
    from secagg.protocol.messages import SessionParams, Stage
    from secagg.protocol.server import Server
    from secagg.transport import envelope

TARGETS = ("decode", "mutate", "server", "client", "envelope")


class FuzzFinding(AssertionError):
    """A documented guarantee broke (not merely an unexpected exception type)."""


# -- the fuzzer's choices -----------------------------------------------------------------------------


class _Choices:
    """The subset of ``atheris.FuzzedDataProvider`` used here, for machines without atheris."""

    def __init__(self, data: bytes) -> None:
        self._data = data
        self._pos = 0

    def remaining_bytes(self) -> int:
        return len(self._data) - self._pos

    def ConsumeBytes(self, count: int) -> bytes:  # FuzzedDataProvider's spelling
        out = self._data[self._pos : self._pos + max(count, 0)]
        self._pos += len(out)
        return out

    def ConsumeIntInRange(self, low: int, high: int) -> int:
        span = high - low
        if span <= 0:
            return low
        raw = self.ConsumeBytes((span.bit_length() + 7) // 8)
        return low + int.from_bytes(raw, "little") % (span + 1)

    def ConsumeBool(self) -> bool:
        return bool(self.ConsumeIntInRange(0, 1))


def choices(data: bytes) -> Any:
    return atheris.FuzzedDataProvider(data) if atheris is not None else _Choices(data)


# -- deterministic sessions: the seed messages and the state-machine snapshots ------------------------


@dataclasses.dataclass
class Snapshot:
    """A party frozen just before it received ``pending`` in a real session (never mutated itself)."""

    label: str
    party: Any
    pending: bytes
    revealed: tuple[frozenset[int], frozenset[int]] = (frozenset(), frozenset())  # (b ids, s ids) so far
    auth: dict[str, int] | None = None  # receive()'s sender= keyword, once known


@dataclasses.dataclass
class World:
    seeds: list[bytes]                     # every distinct valid message seen in transit, in order
    servers: list[Snapshot]
    clients: list[Snapshot]
    ints: list[int]                        # leaf values of the seeds, for meaningful substitutions
    ids: list[int]                         # every invited client id
    blobs: dict[int, list[bytes]]          # bytes leaves by length
    by_code: dict[int, list[list[Any]]]    # unpacked seeds by message type code
    notes: list[str]


def _scenarios() -> list[tuple[str, SessionParams, dict[int, Any]]]:
    """(name, params, drop_before): small sessions, non-contiguous ids, dropouts where they matter."""
    stage = Stage
    ids5 = (3, 10, 17, 24, 31)
    ids6 = (2, 9, 16, 23, 30, 37)
    ids4 = (5, 12, 19, 26)
    return [
        ("full", SessionParams(1, b"fuzz", ids5, threshold=3, degree=4, vector_length=8), {}),
        ("plus-drop", SessionParams(2, b"fuzz", ids6, threshold=3, degree=4, vector_length=8),
         {ids6[1]: stage.MASKED_INPUT, ids6[4]: stage.SHARE_KEYS}),
        ("bits16-late-drop", SessionParams(3, b"fuzz", ids4, threshold=3, degree=3, vector_length=8,
                                           bits=16), {ids4[2]: stage.UNMASKING}),
    ]


def _inputs(params: SessionParams) -> dict[int, np.ndarray]:
    rng = np.random.default_rng(params.round)
    top = (1 << params.bits) - 1
    return {u: rng.integers(0, top, params.vector_length, dtype=np.uint64, endpoint=True).astype(np.uint32)
            for u in params.client_ids}


@contextlib.contextmanager
def _deterministic(label: str):
    """Key generation and ``os.urandom`` (nonces, seeds, Shamir coefficients) from a fixed stream."""
    from secagg.crypto import keys

    counter = [0]

    def stream(n: int) -> bytes:
        counter[0] += 1
        return hashlib.shake_256(f"secagg-fuzz/{label}/{counter[0]}".encode()).digest(n)

    patched: list[tuple[Any, str, Any]] = []

    def patch(owner: Any, name: str, value: Any) -> None:
        # a class's own attribute (the classmethod object itself), or a module's
        patched.append((owner, name, vars(owner)[name] if isinstance(owner, type) else getattr(owner, name)))
        setattr(owner, name, value)

    def fixed_generate(cls: type, original: Any, make: Callable[[bytes], Any]) -> Any:
        def generate(_cls: type) -> Any:
            try:
                return make(stream(32))
            except Exception:  # the class changed shape: fall back to real randomness
                return original.__get__(None, cls)()
        return classmethod(generate)

    dh = getattr(keys, "DHKeyPair", None)
    if dh is not None and "generate" in dh.__dict__ and hasattr(dh, "from_private_bytes"):
        patch(dh, "generate", fixed_generate(dh, dh.__dict__["generate"], dh.from_private_bytes))
    sk_cls = getattr(keys, "SigningKey", None)
    if sk_cls is not None and "generate" in sk_cls.__dict__:
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

        def make_signing(raw: bytes) -> Any:
            sk = Ed25519PrivateKey.from_private_bytes(raw)
            return sk_cls(sk, sk.public_key().public_bytes_raw())
        patch(sk_cls, "generate", fixed_generate(sk_cls, sk_cls.__dict__["generate"], make_signing))
    patch(os, "urandom", stream)
    patch(random, "_urandom", stream)  # secrets.randbelow -> SystemRandom -> random._urandom
    try:
        yield
    finally:
        for owner, name, value in reversed(patched):
            setattr(owner, name, value)


def _run_recorded(name: str, params: SessionParams, drop_before: dict[int, Any], world: World) -> None:
    """Run one session; snapshot the server missing one message of each stage, one client before each
    message it is sent, and both ends at the finish."""
    servers: list[Any] = []
    clients: list[Any] = []

    def recorder(cls: type, sink: list[Any]) -> Callable[..., Any]:
        def make(*args: Any, **kwargs: Any) -> Any:
            obj = cls(*args, **kwargs)
            sink.append(obj)
            return obj
        return make

    server_firsts: dict[Any, Any] = {}  # stage -> the server before the stage's first message
    stage_messages: dict[Any, list[bytes]] = {}
    client_snaps: dict[Any, Snapshot] = {}
    last_to_client: dict[int, bytes] = {}
    last_to_server: dict[int, bytes] = {}
    seen = set(world.seeds)

    def tamper(direction: str, u: int, stage: Any, data: bytes) -> bytes:
        if data not in seen:
            seen.add(data)
            world.seeds.append(data)
        tag = getattr(stage, "name", str(stage))
        if direction == "to_server":
            last_to_server[u] = data
            if servers and stage not in server_firsts:
                server_firsts[stage] = copy.deepcopy(servers[-1])
            stage_messages.setdefault(stage, []).append(data)
        else:
            last_to_client[u] = data
            party = next((c for c in clients if getattr(c, "id", None) == u), None)
            if party is not None and stage not in client_snaps:
                client_snaps[stage] = Snapshot(f"{name}/client/{tag}", copy.deepcopy(party), data)
        return data

    saved = {attr: getattr(_runner, attr) for attr in ("Server", "Client") if hasattr(_runner, attr)}
    for attr, cls, sink in (("Server", Server, servers), ("Client", Client, clients)):
        if attr in saved:
            setattr(_runner, attr, recorder(cls, sink))
    try:
        with _deterministic(name):
            _runner.run_session(params, _inputs(params), drop_before=drop_before, tamper=tamper)
    finally:
        for attr, value in saved.items():
            setattr(_runner, attr, value)
    for stage, base in server_firsts.items():
        # the server holding every message of the stage but the first one (the lowest id: the
        # client whose shares every reconstruction uses), which is then the pending message
        first, *others = stage_messages[stage]
        for data in others:
            base.receive(wire.decode(data))
        world.servers.append(Snapshot(f"{name}/server/{getattr(stage, 'name', stage)}", base, first))
    world.clients.extend(client_snaps.values())
    if servers and last_to_server:  # a finished server refuses everything
        world.servers.append(Snapshot(f"{name}/server/{servers[-1].phase.name}", copy.deepcopy(servers[-1]),
                                      next(reversed(last_to_server.values()))))
    for c in clients:  # a client that answered the unmask request may be asked again
        if c.phase.name == "DONE" and c.id in last_to_client and c.id in last_to_server:
            world.clients.append(Snapshot(f"{name}/client/DONE", copy.deepcopy(c), last_to_client[c.id],
                                          _revealed(wire.decode(last_to_server[c.id]))))
            break


def _revealed(reply: Any) -> tuple[frozenset[int], frozenset[int]]:
    """The peers whose self-mask share (b) and mask-key share (s) a reply reveals."""
    b = frozenset(v for v, _ in getattr(reply, "self_mask_shares", ()))
    s = frozenset(v for v, _ in getattr(reply, "mask_key_shares", ()))
    return b, s


def _leaves(obj: Any, ints: set[int], blobs: dict[int, set[bytes]]) -> None:
    if isinstance(obj, list):
        for item in obj:
            _leaves(item, ints, blobs)
    elif isinstance(obj, bytes):
        blobs.setdefault(len(obj), set()).add(obj)
        if len(obj) % 4 == 0 and len(obj) <= 64:  # maybe a packed id list
            ints.update(np.frombuffer(obj, dtype=">u4").tolist())
    elif type(obj) is int:
        ints.add(obj)


def build_world() -> World:
    """Run the scenarios once; deterministic, so the same bytes in every process."""
    world = World([], [], [], [], [], {}, {}, [])
    scenarios = _scenarios()
    field_names = {f.name for f in dataclasses.fields(SessionParams)}
    if "malicious" in field_names:  # the malicious-server mode, when this library version has it
        for name, params, drop_before in list(scenarios):
            try:
                malicious = dataclasses.replace(params, malicious=True)
                # one dropout: there the owner's own share does not count on a sparse graph, so two
                # dropouts among a client's four neighbours would leave fewer than t = 3 holders
                scenarios.append((f"{name}-malicious", malicious, dict(list(drop_before.items())[:1])))
            except (SecAggError, TypeError, ValueError) as exc:
                world.notes.append(f"scenario {name}-malicious skipped: {type(exc).__name__}: {exc}")
    for name, params, drop_before in scenarios:
        try:
            _run_recorded(name, params, drop_before, world)
        except (SecAggError, TypeError, ValueError, KeyError) as exc:
            if name == scenarios[0][0]:
                raise
            world.notes.append(f"scenario {name} skipped: {type(exc).__name__}: {exc}")
    ints: set[int] = set()
    blobs: dict[int, set[bytes]] = {}
    for data in world.seeds:
        obj = msgpack.unpackb(data, raw=False)
        world.by_code.setdefault(obj[2], []).append(obj)
        _leaves(obj[3:], ints, blobs)
    world.ints = sorted(ints)
    world.ids = sorted({u for _, params, _ in scenarios for u in params.client_ids})
    world.blobs = {n: sorted(v) for n, v in sorted(blobs.items())}
    return world


_WORLD: World | None = None


def world() -> World:
    global _WORLD
    if _WORLD is None:
        _WORLD = build_world()
    return _WORLD


# -- structure-aware mutation -------------------------------------------------------------------------

_BOUNDARY = (0, 1, 2, 3, 0x7F, 0x80, 0xFF, 0x100, 0xFFFF, 0x10000, (1 << 31) - 1, 1 << 31, (1 << 32) - 2,
             (1 << 32) - 1, 1 << 32, (1 << 63) - 1, (1 << 64) - 1, -1, -(1 << 63))
# X25519 points of small order (libsodium's list): all-zero shared secrets
_LOW_ORDER = tuple(bytes.fromhex(h) for h in (
    "00" * 32, "01" + "00" * 31,
    "e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800",
    "5f9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f1157",
    "ec" + "ff" * 30 + "7f", "ed" + "ff" * 30 + "7f", "ee" + "ff" * 30 + "7f"))
_ODD_VALUES: tuple[Any, ...] = (None, True, False, 1.0, 0.5, "", "x", [], [[]], {}, {1: 2}, b"", [b""] * 3)


def _nodes(obj: Any, out: list[tuple[list[Any], int]], depth: int = 0) -> list[tuple[list[Any], int]]:
    """Every (parent list, index) in the tree, depth-first."""
    if isinstance(obj, list) and depth < 8:
        for i, item in enumerate(obj):
            out.append((obj, i))
            _nodes(item, out, depth + 1)
    return out


def _rng(fdp: Any, low: int, high: int) -> int:
    """An int in [low, high] (low itself when the range is empty: no harness error on odd shapes)."""
    return fdp.ConsumeIntInRange(low, high) if high > low else low


def _pick(fdp: Any, items: Sequence[Any]) -> Any:
    return items[_rng(fdp, 0, len(items) - 1)]


def _mutate_int(value: int, fdp: Any, w: World) -> Any:
    how = _rng(fdp, 0, 3)
    if how == 0:
        return _pick(fdp, _BOUNDARY)
    if how == 1 and w.ints:
        return _pick(fdp, w.ints)
    if how == 2:
        return value + _rng(fdp, -2, 2)
    return _rng(fdp, 0, (1 << 64) - 1)


def _mutate_bytes(value: bytes, fdp: Any, w: World) -> Any:
    how = _rng(fdp, 0, 6)
    if how == 0 and value:  # flip one byte
        i = _rng(fdp, 0, len(value) - 1)
        return value[:i] + bytes([value[i] ^ (_rng(fdp, 1, 255))]) + value[i + 1 :]
    if how == 1 and w.blobs.get(len(value)):  # another key, session id, ciphertext... of this size
        if len(value) == 32 and _rng(fdp, 0, 3) == 0:
            return _pick(fdp, _LOW_ORDER)
        return _pick(fdp, w.blobs[len(value)])
    if how == 2:  # resize
        n = max(0, len(value) + _rng(fdp, -8, 8))
        return (value + bytes(n))[:n] if fdp.ConsumeBool() else (bytes(n) + value)[-n:] if n else b""
    if how == 3 and len(value) % 4 == 0:  # as a packed id list: edit one word
        words = np.frombuffer(value, dtype=">u4").tolist()
        op = _rng(fdp, 0, 4)
        if op == 0 or not words:
            new = _pick(fdp, w.ids) if fdp.ConsumeBool() else _mutate_int(0, fdp, w) & 0xFFFFFFFF
            words.insert(_rng(fdp, 0, len(words)), new)
            if fdp.ConsumeBool():
                words = sorted(set(words))
        elif op == 1:
            del words[_rng(fdp, 0, len(words) - 1)]
        elif op == 2:
            words.append(words[_rng(fdp, 0, len(words) - 1)])
            words.sort()
        elif op == 3:
            i = _rng(fdp, 0, len(words) - 1)
            words[i] = _mutate_int(words[i], fdp, w) & 0xFFFFFFFF
        else:
            words.reverse()
        return np.asarray(words, dtype=">u4").tobytes()
    if how == 4:
        return fdp.ConsumeBytes(_rng(fdp, 0, 80))
    if how == 5:
        return b""
    return value + value  # doubled (two signatures, two keys...)


def _mutate_list(value: list[Any], fdp: Any, w: World) -> Any:
    how = _rng(fdp, 0, 5)
    if not value or how == 0:
        return [*value, _pick(fdp, value)] if value else [_pick(fdp, _ODD_VALUES)]
    i = _rng(fdp, 0, len(value) - 1)
    if how == 1:
        return value[:i] + value[i + 1 :]
    if how == 2:  # duplicate in place (a repeated pair or id)
        return [*value[: i + 1], copy.deepcopy(value[i]), *value[i + 1 :]]
    if how == 3:
        j = _rng(fdp, 0, len(value) - 1)
        out = list(value)
        out[i], out[j] = out[j], out[i]
        return out
    if how == 4:
        return value[::-1]
    return []


def _mutate_node(value: Any, fdp: Any, w: World) -> Any:
    if _rng(fdp, 0, 7) == 0:
        return copy.deepcopy(_pick(fdp, _ODD_VALUES))
    if type(value) is int:
        return _mutate_int(value, fdp, w)
    if isinstance(value, bytes):
        return _mutate_bytes(value, fdp, w)
    if isinstance(value, list):
        return _mutate_list(value, fdp, w)
    return _pick(fdp, _BOUNDARY)


def _rows(column: bytes, n: int) -> list[bytes]:
    size = len(column) // n
    return [column[i * size : (i + 1) * size] for i in range(n)]


def _row_op(value: list[Any], fdp: Any) -> list[Any]:
    """Columns of one table (the key directory: ids, enc keys, mask keys, signatures, n rows each):
    drop one row from every column, swap two rows' keys under fixed ids (key substitution), or copy
    one row's key over another's (key replay)."""
    if len(value) < 2 or not all(isinstance(c, bytes) for c in value):
        return value
    if len(value[0]) < 8 or len(value[0]) % 4:
        return value
    n = len(value[0]) // 4
    if not all(len(c) % n == 0 for c in value):
        return value
    columns = [_rows(c, n) if c else [] for c in value]
    i, j = _rng(fdp, 0, n - 1), _rng(fdp, 0, n - 1)
    how = _rng(fdp, 0, 2)
    if how == 0:
        columns = [c[:i] + c[i + 1 :] for c in columns]
    elif how == 1:
        for c in columns[1 : 2 + _rng(fdp, 0, len(columns) - 2)]:
            if c:
                c[i], c[j] = c[j], c[i]
    else:
        c = columns[_rng(fdp, 1, len(columns) - 1)]
        if c:
            c[j] = c[i]
    return [b"".join(c) for c in columns]


def _move_id(obj: list[Any], fdp: Any) -> None:
    """Move one id between two packed id lists of a message (survivor -> dropped and the like)."""
    lists = [i for i in range(3, len(obj)) if isinstance(obj[i], bytes) and len(obj[i]) % 4 == 0
             and len(obj[i]) <= 4096]
    if len(lists) < 2:
        return
    src, dst = _pick(fdp, lists), _pick(fdp, lists)
    words = np.frombuffer(obj[src], dtype=">u4").tolist()
    if src == dst or not words:
        return
    moved = words.pop(_rng(fdp, 0, len(words) - 1))
    if fdp.ConsumeBool():  # or copy it: the same id in both lists
        obj[src] = np.asarray(words, dtype=">u4").tobytes()
    target = sorted({*np.frombuffer(obj[dst], dtype=">u4").tolist(), moved})
    obj[dst] = np.asarray(target, dtype=">u4").tobytes()


def _structured(data: bytes, fdp: Any, w: World) -> bytes:
    try:
        obj = msgpack.unpackb(data, raw=False, strict_map_key=False, max_array_len=4096, max_bin_len=1 << 16)
    except Exception:
        return data
    if not isinstance(obj, list):
        obj = [obj]
    try:
        obj = _restructure(obj, fdp, w)
        return msgpack.packb(obj, use_bin_type=True)
    except (OverflowError, TypeError, ValueError, RecursionError):  # too big, too deep: keep the bytes
        return data


def _restructure(obj: list[Any], fdp: Any, w: World) -> list[Any]:
    op = _rng(fdp, 0, 11)
    if op == 0 and len(obj) > 2:  # type confusion: the same fields under another type code
        obj[2] = _pick(fdp, [*sorted(wire._SCHEMAS), 0, 127, 128, 255, -1])
    elif op == 1 and len(obj) > 3 and type(obj[2]) is int and w.by_code.get(obj[2]):
        # field substitution: one field taken from another message of the same type
        other = _pick(fdp, w.by_code[obj[2]])
        i = _rng(fdp, 3, len(obj) - 1)
        if i < len(other):
            obj[i] = copy.deepcopy(other[i])
    elif op == 2:  # add or drop a trailing field
        obj = obj[:-1] if obj and fdp.ConsumeBool() else [*obj, copy.deepcopy(obj[-1]) if obj else 0]
    elif op == 3 and len(obj) > 4:  # one field copied onto another (the same key twice, ...)
        i, j = _rng(fdp, 3, len(obj) - 1), _rng(fdp, 3, len(obj) - 1)
        obj[j] = copy.deepcopy(obj[i])
    elif op == 4:
        tables = [(parent, i) for parent, i in _nodes(obj, []) if isinstance(parent[i], list)]
        if tables:
            parent, i = _pick(fdp, tables)
            parent[i] = _row_op(parent[i], fdp)
    elif op == 5:
        _move_id(obj, fdp)
    elif op == 6:  # a known client id added to an id list (a peer that never shared keys, ...)
        lists = [i for i in range(3, len(obj)) if isinstance(obj[i], bytes) and 0 < len(obj[i]) <= 4096
                 and len(obj[i]) % 4 == 0]
        if lists:
            i = _pick(fdp, lists)
            words = {*np.frombuffer(obj[i], dtype=">u4").tolist(), _pick(fdp, w.ids)}
            obj[i] = np.asarray(sorted(words), dtype=">u4").tobytes()
    else:
        nodes = _nodes(obj, [])
        if nodes:
            parent, i = _pick(fdp, nodes)
            parent[i] = _mutate_node(parent[i], fdp, w)
    return obj


def mutate(data: bytes, fdp: Any, w: World) -> bytes:
    """Apply 1-4 mutations chosen by ``fdp`` to the encoded message ``data``."""
    for _ in range(_rng(fdp, 1, 4)):
        if fdp.remaining_bytes() == 0:
            break
        op = _rng(fdp, 0, 9)
        if op <= 5:  # most mutations keep the msgpack structure valid, so the schema checks run
            data = _structured(data, fdp, w)
        elif op == 6 and data:  # bit flip
            i = _rng(fdp, 0, len(data) - 1)
            data = data[:i] + bytes([data[i] ^ (1 << _rng(fdp, 0, 7))]) + data[i + 1 :]
        elif op == 7:  # truncate
            data = data[: _rng(fdp, 0, len(data))]
        elif op == 8:  # splice with another seed
            other = _pick(fdp, w.seeds)
            data = data[: _rng(fdp, 0, len(data))] + other[_rng(fdp, 0, len(other)):]
        else:  # insert fuzzer bytes
            i = _rng(fdp, 0, len(data))
            data = data[:i] + fdp.ConsumeBytes(_rng(fdp, 1, 16)) + data[i:]
    return data


# -- oracles -------------------------------------------------------------------------------------------


def fingerprint(obj: Any, depth: int = 0) -> Any:
    """A hashable, comparable picture of an object's state (opaque objects by identity)."""
    if depth > 12:
        return ("deep", id(obj))
    if obj is None or isinstance(obj, bool | int | float | str | bytes | enum.Enum):
        return (type(obj).__name__, obj)
    if isinstance(obj, np.ndarray):
        return ("ndarray", obj.dtype.str, obj.shape, obj.tobytes())
    if isinstance(obj, dict):
        return ("dict", tuple((fingerprint(k, depth + 1), fingerprint(v, depth + 1)) for k, v in obj.items()))
    if isinstance(obj, set | frozenset):
        return ("set", frozenset(fingerprint(v, depth + 1) for v in obj))
    if isinstance(obj, list | tuple):
        return (type(obj).__name__, tuple(fingerprint(v, depth + 1) for v in obj))
    if hasattr(obj, "__dict__") and not callable(obj):
        return (type(obj).__name__, fingerprint(vars(obj), depth + 1))
    if hasattr(obj, "__slots__"):
        return (type(obj).__name__, tuple(fingerprint(getattr(obj, n, None), depth + 1)
                                          for n in obj.__slots__))
    return ("opaque", id(obj))


def _check_encodable(message: Any, who: str) -> None:
    try:
        wire.encode(message)
    except SecAggError as exc:
        raise FuzzFinding(f"{who} emitted a {type(message).__name__} that cannot be encoded: {exc}") from exc


def check_decode(data: bytes) -> Any:
    """decode() raises only WireError, and what it accepts re-encodes to exactly ``data``."""
    try:
        message = wire.decode(data)
    except WireError:
        return None
    try:
        again = wire.encode(message)
    except SecAggError as exc:
        raise FuzzFinding(f"decode accepted a {type(message).__name__} that encode refuses: {exc}") from exc
    if again != data:
        raise FuzzFinding(f"decode accepted a non-canonical {type(message).__name__} encoding")
    return message


def _authenticated_sender(snap: Snapshot) -> dict[str, int]:
    """``sender=`` as a transport passes it (who really sent the pending message), where supported."""
    if snap.auth is None:
        sender = getattr(wire.decode(snap.pending), "sender", None)
        takes = "sender" in inspect.signature(snap.party.receive).parameters
        snap.auth = {"sender": sender} if takes and type(sender) is int else {}
    return snap.auth


def feed_server(snap: Snapshot, data: bytes, authenticated: bool = False) -> None:
    """``receive`` the message, with the transport-authenticated ``sender`` if ``authenticated``."""
    message = check_decode(data)
    if message is None:
        return
    server = copy.deepcopy(snap.party)
    before = fingerprint(server)
    try:
        server.receive(message, **(_authenticated_sender(snap) if authenticated else {}))
    except SecAggError as exc:
        if not isinstance(exc, ProtocolError):  # "a message that breaks the protocol raises ProtocolError"
            raise FuzzFinding(f"{snap.label}: receive raised {type(exc).__name__} ({exc}), "
                              f"not ProtocolError") from exc
        if fingerprint(server) != before:
            raise FuzzFinding(f"{snap.label}: receive refused a message ({exc}) but changed the "
                              f"server's state") from exc
        return
    try:
        outgoing = server.advance()
    except (AbortError, ProtocolError):  # too few clients left / nothing to advance
        return
    except SecAggError as exc:
        raise FuzzFinding(f"{snap.label}: advance raised {type(exc).__name__} ({exc}), "
                          f"not AbortError") from exc
    for _, out in outgoing or ():
        _check_encodable(out, f"{snap.label}: server")


def feed_client(snap: Snapshot, data: bytes) -> None:
    message = check_decode(data)
    if message is None:
        return
    client = copy.deepcopy(snap.party)
    try:
        reply = client.handle(message)
    except ProtocolError as exc:
        if client.phase.name != "ABORTED":
            raise FuzzFinding(f"{snap.label}: ProtocolError ({exc}) but the client is "
                              f"{client.phase}, not ABORTED") from exc
        return
    except SecAggError as exc:  # "any violation raises ProtocolError and moves the client to ABORTED"
        raise FuzzFinding(f"{snap.label}: handle raised {type(exc).__name__} ({exc}), not ProtocolError, "
                          f"leaving the client {client.phase.name}") from exc
    _check_encodable(reply, f"{snap.label}: client")
    b, s = _revealed(reply)
    b, s = b | snap.revealed[0], s | snap.revealed[1]
    if b & s:
        raise FuzzFinding(f"{snap.label}: client revealed both shares of client(s) {sorted(b & s)}")


#: every transport envelope: (decoder, encoder); PlainUpdate is decoded for a 4-coordinate model
ENVELOPES: tuple[tuple[str, Callable[[bytes], Any], Callable[[Any], bytes]], ...] = (
    ("hello", envelope.decode_hello, envelope.encode_hello),
    ("challenge", envelope.decode_challenge, envelope.encode_challenge),
    ("login", envelope.decode_login, envelope.encode_login),
    ("welcome", envelope.decode_welcome, envelope.encode_welcome),
    ("poll", envelope.decode_poll, envelope.encode_poll),
    ("work", envelope.decode_work, envelope.encode_work),
    ("submit", envelope.decode_submit, envelope.encode_submit),
    ("update", lambda data: envelope.decode_update(data, 4), envelope.encode_update),
)


def check_envelope(index: int, data: bytes) -> Any:
    """An envelope decoder raises only WireError, and what it accepts re-encodes to exactly ``data``."""
    name, decode_one, encode_one = ENVELOPES[index % len(ENVELOPES)]
    try:
        message = decode_one(data)
    except WireError:
        return None
    if encode_one(message) != data:
        raise FuzzFinding(f"the {name} decoder accepted a non-canonical encoding")
    return message


def _envelope_seeds() -> list[bytes]:
    e = envelope
    values = [e.Hello(3), e.Challenge(bytes(32)), e.Login(3, bytes(32), bytes(64)),
              e.Welcome(bytes(32), "{}", "plain"), e.Poll(1, 0, 500),
              e.Work(e.WorkKind.TASK, 1, 0, b"w", b"", 10.0), e.Submit(1, 0, b"payload"),
              e.PlainUpdate(5, 0.25, bytes(16))]
    return [bytes([i]) + encode_one(v) for i, ((_, _, encode_one), v) in enumerate(zip(ENVELOPES, values,
                                                                                         strict=True))]


# -- the targets ---------------------------------------------------------------------------------------


def target_decode(data: bytes) -> None:
    check_decode(data)


def target_mutate(data: bytes) -> None:
    w = world()
    fdp = choices(data)
    check_decode(mutate(_pick(fdp, w.seeds), fdp, w))


def _party_input(data: bytes, snapshots: list[Snapshot]) -> tuple[Snapshot, bytes] | None:
    """Byte 0 picks the snapshot; byte 1 even: the rest is the message; odd: the rest steers mutations
    of the message that snapshot was really sent. (Bit 1 of byte 1: see :func:`target_server`.)"""
    if len(data) < 2 or not snapshots:
        return None
    snap = snapshots[data[0] % len(snapshots)]
    if data[1] % 2 == 0:
        return snap, data[2:]
    return snap, mutate(snap.pending, choices(data[2:]), world())


def target_server(data: bytes) -> None:
    """Bit 1 of byte 1 set: the transport authenticates the sender (``receive(..., sender=...)``)."""
    picked = _party_input(data, world().servers)
    if picked is not None:
        feed_server(*picked, authenticated=bool(data[1] & 2))


def target_client(data: bytes) -> None:
    picked = _party_input(data, world().clients)
    if picked is not None:
        feed_client(*picked)


def target_envelope(data: bytes) -> None:
    """Byte 0 picks the envelope type; byte 1 even: the rest is the input; odd: the rest steers
    mutations of a valid envelope of that type."""
    if len(data) < 2:
        return
    if data[1] % 2 == 0:
        check_envelope(data[0], data[2:])
        return
    seed = _envelope_seeds()[data[0] % len(ENVELOPES)][1:]
    check_envelope(data[0], mutate(seed, choices(data[2:]), world()))


TARGET_FUNCTIONS: dict[str, Callable[[bytes], None]] = {
    "decode": target_decode, "mutate": target_mutate, "server": target_server, "client": target_client,
    "envelope": target_envelope}


def target_all(data: bytes) -> None:
    if data:
        TARGET_FUNCTIONS[TARGETS[data[0] % len(TARGETS)]](data[1:])


TARGET_FUNCTIONS["all"] = target_all


def ignoring(target: Callable[[bytes], None], known: Sequence[str]) -> Callable[[bytes], None]:
    """``target``, except that findings whose message contains one of ``known`` pass (a bug already
    reported, so that a long run goes on looking for others)."""
    if not known:
        return target

    def run(data: bytes) -> None:
        try:
            target(data)
        except FuzzFinding as exc:
            if not any(k in str(exc) for k in known):
                raise
    return run


# -- seed corpus ---------------------------------------------------------------------------------------


def seed_corpus(target: str) -> list[bytes]:
    """Inputs that reach deep on the first try: valid messages (and the snapshot that expects them)."""
    w = world()
    noise = [hashlib.shake_256(f"noise/{i}".encode()).digest(24) for i in range(8)]
    if target == "decode":
        return list(w.seeds)
    if target == "mutate":
        return noise
    if target in ("server", "client"):
        snaps, modes = (w.servers, (0, 2)) if target == "server" else (w.clients, (0,))
        return ([bytes([i, mode]) + s.pending for i, s in enumerate(snaps) for mode in modes]
                + [bytes([i, mode + 1]) + noise[i % len(noise)] for i in range(len(snaps)) for mode in modes])
    if target == "envelope":
        return ([s[:1] + b"\x00" + s[1:] for s in _envelope_seeds()]
                + [bytes([i, 1]) + noise[i % len(noise)] for i in range(len(ENVELOPES))])
    if target == "all":
        return [bytes([i]) + seed for i, name in enumerate(TARGETS) for seed in seed_corpus(name)]
    raise ValueError(f"unknown target {target!r}; one of {', '.join(TARGET_FUNCTIONS)}")


def write_corpus(directory: Path, target: str) -> int:
    directory.mkdir(parents=True, exist_ok=True)
    seeds = seed_corpus(target)
    for seed in seeds:
        (directory / hashlib.sha1(seed).hexdigest()).write_bytes(seed)
    return len(seeds)


# -- command line ----------------------------------------------------------------------------------------


def _parse(argv: list[str]) -> tuple[dict[str, str], list[str]]:
    """Our ``--flags`` (``--ignore`` may repeat); the rest (``-runs=``, corpus dirs...) is libFuzzer's."""
    ours: dict[str, str] = {}
    rest = [argv[0]]
    args = iter(argv[1:])
    for arg in args:
        if arg.startswith("--") and arg[2:].split("=")[0] in ("target", "make-corpus", "ignore"):
            key, _, value = arg[2:].partition("=")
            value = value or next(args, "")
            ours[key] = f"{ours[key]}\n{value}" if key == "ignore" and key in ours else value
        else:
            rest.append(arg)
    return ours, rest


def main(argv: list[str]) -> None:
    ours, rest = _parse(argv)
    target = ours.get("target", "all")
    if target not in TARGET_FUNCTIONS:
        sys.exit(f"--target must be one of {', '.join(TARGET_FUNCTIONS)}, got {target!r}")
    w = world()
    sys.stderr.write(f"INFO: secagg fuzz target {target}: {len(w.seeds)} seed messages, "
                     f"{len(w.servers)} server and {len(w.clients)} client snapshots\n")
    for note in w.notes:
        sys.stderr.write(f"INFO: {note}\n")
    if "make-corpus" in ours:
        root = Path(ours["make-corpus"])
        names = TARGET_FUNCTIONS if "target" not in ours else [target]
        for name in names:
            print(f"{root / name}: {write_corpus(root / name, name)} seeds")
        return
    paths = [Path(a) for a in rest[1:] if not a.startswith("-")]
    if not any(p.is_file() for p in paths):  # not replaying inputs: the generated seeds join the corpus
        if paths:  # libFuzzer writes what it finds into the first directory: the seeds go there too
            write_corpus(paths[0], target)
        else:
            seeds = Path(tempfile.mkdtemp(prefix=f"secagg-fuzz-{target}-"))
            write_corpus(seeds, target)
            rest.append(str(seeds))
    known = [k for k in ours.get("ignore", "").split("\n") if k]
    atheris.Setup(rest, ignoring(TARGET_FUNCTIONS[target], known))
    atheris.Fuzz()


if __name__ == "__main__":
    if atheris is None:
        sys.exit("atheris is not installed: pip install 'atheris>=2.3' (or install the dev extra)")
    main(sys.argv)
