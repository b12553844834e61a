"""Fault injection on the in-process runner: clients that drop, crash, send garbage or send twice.

Any client may misbehave at any stage, in honest and in malicious mode. Garbage is random bytes (the
runner's ``Fault(kind="garbage")``), or, through the ``tamper`` hook, a truncated or bit-flipped copy
of the client's real reply, a valid message of the wrong type, a replay of its reply from an earlier
stage, or its real reply carrying another session id. The properties:

1. the outcome is either the exact sum (mod 2^bits) over ``report.survivors``, which are exactly the
   clients whose masked input the server accepted, or an :class:`AbortError`; nothing else escapes;
2. a duplicate is counted once and shows up in ``report.rejected``;
3. garbage never enters the sum nor crashes the server; garbage at MASKED_INPUT makes its sender a
   dropped non-survivor;
4. on the full graph the outcome is predictable: success iff at every stage at least t clients behave;
5. the server's retained memory does not grow with the number or size of refused messages;
6. a crash looks exactly like a drop from the server's side.

Three defects these tests found are fixed and kept as regressions at the end: a message claiming
another client's id (now refused against the transport-authenticated sender), a corrupted
self-mask share among spare shares (now caught by a second reconstruction), and an out-of-range
interpolation escaping as :class:`ProtocolError` (now an :class:`AbortError`). The bit-flip fuzzing
in property 1 still steers around sender renames and self-mask share edits, whose outcome (refusal,
or an abort when exactly t shares leave nothing to compare) is tested separately below.
"""

from __future__ import annotations

import dataclasses
import gc
import itertools
import os
import sys
import tracemalloc
import types

import numpy as np
import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from secagg.crypto.keys import PUBLIC_KEY_BYTES, SIGNATURE_BYTES, SigningKey
from secagg.crypto.shamir import SHARE_BYTES, P, lagrange_at_zero
from secagg.errors import AbortError, WireError
from secagg.protocol.messages import (
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
    Stage,
    UnmaskRequest,
    UnmaskResponse,
)
from secagg.protocol.runner import Fault, SessionReport, run_session
from secagg.protocol.server import Server, ServerPhase
from secagg.protocol.session import share_point
from secagg.protocol.wire import SHARE_CIPHERTEXT_BYTES, decode, encode

NONCE = bytes(range(32))  # a fixed session nonce for hand-built setups (a Server draws a fresh one)

HONEST_STAGES = tuple(s for s in Stage if s is not Stage.CONSISTENCY_CHECK)
MALICIOUS_STAGES = tuple(Stage)
EXPECTED_TYPE: dict[Stage, type] = {
    Stage.ADVERTISE_KEYS: AdvertiseKeys, Stage.SHARE_KEYS: ShareKeys, Stage.SHARE_CHECK: ShareCheck,
    Stage.MASKED_INPUT: MaskedInput,
    Stage.CONSISTENCY_CHECK: ConsistencySignature, Stage.UNMASKING: UnmaskResponse}

RUNNER_KINDS = ("drop", "crash", "duplicate")
# garbage the server must refuse whatever it contains ("random" goes through the runner's Fault)
REFUSED_GARBAGE = ("random", "truncate", "wrong_type", "replay", "wrong_session")
ALL_GARBAGE = (*REFUSED_GARBAGE, "bitflip")
ABSENT_KINDS = frozenset({"drop", "crash", *ALL_GARBAGE})  # a client with one of these is gone from its stage


def stages_of(params: SessionParams) -> tuple[Stage, ...]:
    return MALICIOUS_STAGES if params.malicious else HONEST_STAGES


@dataclasses.dataclass(frozen=True)
class Plan:
    """One client's misbehaviour: ``kind`` at ``stage``.

    ``pick`` chooses the details (cut point, bit, replacement message); ``data`` is the payload of a
    ``random`` fault (empty: the runner sends ``os.urandom`` of the real reply's length).
    """

    stage: Stage
    kind: str
    pick: int = 0
    data: bytes = b""


class Injector:
    """The ``tamper`` hook that garbles the planned replies, and a record of what went on the wire."""

    def __init__(self, params: SessionParams, plans: dict[int, Plan]) -> None:
        self.params = params
        self.plans = plans
        self.original: dict[tuple[int, Stage], bytes] = {}  # the reply as the runner handed it over
        self.sent: dict[tuple[int, Stage], bytes] = {}      # what actually went to the server
        self.history: dict[int, list[bytes]] = {}           # each client's earlier replies (for replays)

    def faults(self) -> dict[int, Fault]:
        runner_kind = {"drop": "drop", "crash": "crash", "duplicate": "duplicate", "random": "garbage"}
        return {u: Fault(p.stage, runner_kind[p.kind], p.data if p.kind == "random" else b"")
                for u, p in self.plans.items() if p.kind in runner_kind}

    def __call__(self, direction: str, u: int, stage: Stage, data: bytes) -> bytes:
        if direction != "to_server":
            return data
        plan = self.plans.get(u)
        out = data
        if plan is not None and plan.stage == stage and plan.kind in ALL_GARBAGE and plan.kind != "random":
            out = getattr(self, f"_{plan.kind}")(u, stage, data, plan.pick)
            assert out != data
        self.original[(u, stage)] = data
        self.sent[(u, stage)] = out
        self.history.setdefault(u, []).append(data)
        return out

    # -- garbage variants ---------------------------------------------------------------------------

    def _truncate(self, u: int, stage: Stage, data: bytes, pick: int) -> bytes:
        return data[: pick % len(data)]

    def _bitflip(self, u: int, stage: Stage, data: bytes, pick: int) -> bytes:
        """Flip one bit, skipping flips that rename the sender or alter a self-mask share.

        Those two edits have their own regression tests below; every
        other flip must be refused or leave the round exact (a flipped masked-input word is a
        different input, accounted for by :meth:`masked_delta`).
        """
        original = decode(data)
        size = 8 * len(data)
        for i in range(size):
            pos = (pick + i) % size
            flipped = bytearray(data)
            flipped[pos // 8] ^= 1 << (pos % 8)
            out = bytes(flipped)
            try:
                message = decode(out)
            except WireError:
                return out
            if getattr(message, "sender", u) != u:
                continue
            if isinstance(message, UnmaskResponse) and isinstance(original, UnmaskResponse) and (
                    message.self_mask_shares != original.self_mask_shares):
                continue
            return out
        raise AssertionError("no usable bit flip")  # pragma: no cover - every message has header bits

    def _wrong_type(self, u: int, stage: Stage, data: bytes, pick: int) -> bytes:
        p = self.params
        sid = getattr(decode(data), "session_id", bytes(32))
        key_a, key_b = b"\x09" + bytes(PUBLIC_KEY_BYTES - 1), b"\x0a" + bytes(PUBLIC_KEY_BYTES - 1)
        other = next(v for v in p.client_ids if v != u)
        candidates: list[Message] = [
            AdvertiseKeys(u, key_a, key_b),
            ShareKeys(u, sid, ((other, bytes(SHARE_CIPHERTEXT_BYTES)),)),
            ShareCheck(u, sid, ()),
            MaskedInput(u, sid, bytes(4 * p.vector_length)),
            ConsistencySignature(u, sid, bytes(SIGNATURE_BYTES)),
            UnmaskResponse(u, sid, (), ()),
            Setup(p),
            KeyDirectory((KeyEntry(u, key_a, key_b),)),
            ForwardedShares(u, sid, ()),
            MaskRequest(sid, ()),
            ConsistencyRequest(sid, (u,), ()),
            UnmaskRequest(sid, (u,), ()),
        ]
        candidates = [m for m in candidates if not isinstance(m, EXPECTED_TYPE[stage])]
        return encode(candidates[pick % len(candidates)])

    def _replay(self, u: int, stage: Stage, data: bytes, pick: int) -> bytes:
        earlier = self.history.get(u, [])  # one reply per earlier stage, each of another type
        if not earlier:
            return self._wrong_type(u, stage, data, pick)
        return earlier[pick % len(earlier)]

    def _wrong_session(self, u: int, stage: Stage, data: bytes, pick: int) -> bytes:
        message = decode(data)
        if not hasattr(message, "session_id"):  # AdvertiseKeys precedes the session id
            return self._wrong_type(u, stage, data, pick)
        sid = bytearray(message.session_id)
        sid[pick % len(sid)] ^= 1 << (pick % 8)
        return encode(dataclasses.replace(message, session_id=bytes(sid)))

    # -- the oracle ---------------------------------------------------------------------------------

    def masked_delta(self, u: int) -> np.ndarray | None:
        """What client ``u`` added to the sum beyond its input, or None if its masked input must be refused.

        Decided from the bytes alone, without asking the server: the reply that went out must decode
        to a MaskedInput from ``u`` for the real session, of the right length and below 2^bits. A
        bit-flipped word is still accepted (it is just another input): its difference is returned. The
        words are read as docs/protocol.md writes them (:func:`spec_words`), not with the library's
        unpacking.
        """
        sent = self.sent.get((u, Stage.MASKED_INPUT))
        if sent is None:
            return None
        try:
            message, original = decode(sent), decode(self.original[(u, Stage.MASKED_INPUT)])
        except WireError:
            return None
        if not isinstance(message, MaskedInput) or not isinstance(original, MaskedInput):
            return None
        if (message.sender, message.session_id, len(message.vector)) != (u, original.session_id,
                                                                          len(original.vector)):
            return None
        y = spec_words(message.vector, self.params.bits, self.params.vector_length)
        if y is None:
            return None
        before = spec_words(original.vector, self.params.bits, self.params.vector_length)
        assert before is not None
        return y - before  # wraps mod 2^32


class SpyServer(Server):
    """An honest server that also logs every message it accepted: (stage, type, sender)."""

    def __init__(self, params: SessionParams, registry: dict[int, bytes] | None = None) -> None:
        super().__init__(params, registry)
        self.accepted: list[tuple[Stage, str, int]] = []

    def receive(self, message: Message, *, sender: int | None = None) -> None:
        stage = self.stage
        super().receive(message, sender=sender)
        self.accepted.append((stage, type(message).__name__, message.sender))


# -- helpers ----------------------------------------------------------------------------------------


def spec_words(vector: bytes, bits: int, count: int) -> np.ndarray | None:
    """The ``count`` words of ``bits`` bits a MaskedInput carries, read from its little-endian bit stream
    as the written protocol says; ``None`` for a wrong length or a set padding bit (a refused input)."""
    if len(vector) != (count * bits + 7) // 8:
        return None
    stream = int.from_bytes(vector, "little")
    if stream >> (count * bits):
        return None
    mask = (1 << bits) - 1
    return np.array([(stream >> (i * bits)) & mask for i in range(count)], dtype=np.uint32)


def spec_vector(words: np.ndarray, bits: int) -> bytes:
    """The inverse of :func:`spec_words`: ``words`` packed as the little-endian bit stream."""
    stream = sum(int(w) << (i * bits) for i, w in enumerate(words))
    return stream.to_bytes((len(words) * bits + 7) // 8, "little")


def exact_sum(params: SessionParams, inputs: dict[int, np.ndarray], members, deltas=()) -> np.ndarray:
    """``sum(inputs[u] for u in members) + sum(deltas)`` with uint32 wrap-around, reduced mod 2^bits."""
    total = np.zeros(params.vector_length, dtype=np.uint32)
    for u in members:
        np.add(total, inputs[u], out=total)
    for delta in deltas:
        np.add(total, delta, out=total)
    if params.bits < 32:
        np.bitwise_and(total, np.uint32((1 << params.bits) - 1), out=total)
    return total


def assert_exact(params: SessionParams, report: SessionReport, inputs: dict[int, np.ndarray],
                 members, deltas=()) -> None:
    assert report.result is not None
    assert report.result.dtype == np.uint32 and report.result.shape == (params.vector_length,)
    np.testing.assert_array_equal(report.result, exact_sum(params, inputs, members, deltas))


def make_inputs(params: SessionParams, seed: int) -> dict[int, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {u: rng.integers(0, 1 << params.bits, params.vector_length, dtype=np.uint64).astype(np.uint32)
            for u in params.client_ids}


def play(params: SessionParams, inputs: dict[int, np.ndarray], plans: dict[int, Plan], *,
         spy: bool = False) -> tuple[SessionReport | AbortError, Injector, SpyServer | None]:
    """Run one session with ``plans`` injected: (report, or the AbortError it raised), hook, server.

    Without ``spy`` the runner builds the server and, in malicious mode, the identities itself.
    Any exception other than :class:`AbortError` propagates (and fails the calling test).
    """
    injector = Injector(params, plans)
    kwargs: dict = {}
    server = None
    if spy:
        identities = ({u: SigningKey.generate() for u in params.client_ids} if params.malicious else None)
        registry = {u: k.public for u, k in identities.items()} if identities else None
        server = SpyServer(params, registry)
        kwargs = {"server": server, "identities": identities}
    try:
        report = run_session(params, inputs, faults=injector.faults(), tamper=injector, **kwargs)
    except AbortError as exc:
        return exc, injector, server
    return report, injector, server


def four_clients(malicious: bool, bits: int = 32) -> tuple[SessionParams, dict[int, np.ndarray]]:
    params = SessionParams(round=1, model_version=b"four", client_ids=(0, 1, 2, 3), threshold=3, degree=3,
                           vector_length=8, bits=bits, malicious=malicious, corrupt=1 if malicious else 0,
                           nonce=NONCE)
    return params, make_inputs(params, 3)


def edit_reply(target: int, stage: Stage, change):
    """A tamper hook applying ``change(message) -> message`` to ``target``'s reply at ``stage``."""
    def tamper(direction: str, u: int, s: Stage, data: bytes) -> bytes:
        if (direction, u, s) == ("to_server", target, stage):
            return encode(change(decode(data)))
        return data
    return tamper


def rejections(report: SessionReport) -> dict[int, list[str]]:
    out: dict[int, list[str]] = {}
    for u, why in report.rejected:
        out.setdefault(u, []).append(why)
    return out


# spread over all positions (hypothesis favours small integers, which would only ever hit message headers)
PICKS = st.integers(0, 2**16).map(lambda x: x * 40503 % 2**16)


@st.composite
def scenarios(draw, kinds: tuple[str, ...], *, min_n: int = 3, max_n: int = 10, full_graph: bool = False,
              malicious: bool | None = None):
    """Parameters (honest: any graph unless ``full_graph``; malicious: full graph, 2t > n + corrupt),
    inputs, and a plan for a random subset of the clients."""
    mal = draw(st.booleans()) if malicious is None else malicious
    n = draw(st.integers(min_n, max_n))
    first = draw(st.integers(0, 100))
    gaps = draw(st.lists(st.integers(1, 60), min_size=n - 1, max_size=n - 1))
    ids = tuple(itertools.accumulate(gaps, initial=first))  # sorted, unique
    corrupt = 0
    if mal:
        corrupt = draw(st.integers(0, n - 1))
        degree = n - 1
        threshold = draw(st.integers((n + corrupt) // 2 + 1, n))
    else:
        full = full_graph or n < 4 or draw(st.booleans())
        degree = n - 1 if full else draw(st.sampled_from(list(range(2, n - 1, 2))))
        threshold = draw(st.integers(1, degree + 1))
    params = SessionParams(round=draw(st.integers(0, 3)), model_version=b"fault-injection", client_ids=ids,
                           threshold=threshold, degree=degree, vector_length=draw(st.integers(1, 32)),
                           bits=draw(st.sampled_from([8, 16, 31, 32])), malicious=mal, corrupt=corrupt,
                           nonce=NONCE)
    inputs = make_inputs(params, draw(st.integers(0, 2**32 - 1)))
    faulty = draw(st.sets(st.sampled_from(ids), max_size=n))
    plans = {}
    for u in sorted(faulty):
        kind = draw(st.sampled_from(kinds))
        plans[u] = Plan(stage=draw(st.sampled_from(stages_of(params))), kind=kind,
                        pick=draw(PICKS),
                        data=draw(st.binary(max_size=48)) if kind == "random" else b"")
    return params, inputs, plans


# -- 1. exact sum of the survivors, or a typed abort ---------------------------------------------------


@settings(max_examples=300)
@given(scenarios(RUNNER_KINDS + ALL_GARBAGE))
def test_outcome_is_the_exact_sum_of_the_accepted_clients_or_an_abort_error(case) -> None:
    params, inputs, plans = case
    outcome, injector, _ = play(params, inputs, plans)  # anything but AbortError escapes and fails here
    event(f"outcome: {type(outcome).__name__}")
    if isinstance(outcome, AbortError):
        return
    report = outcome
    deltas = {u: injector.masked_delta(u) for u in params.client_ids}
    accepted = tuple(u for u in params.client_ids if deltas[u] is not None)
    if any(deltas[u].any() for u in accepted):
        event("a bit-flipped masked input was accepted (a different input)")
    assert report.survivors == accepted
    assert_exact(params, report, inputs, accepted, [deltas[u] for u in accepted])
    shared = {u for u in params.client_ids if (u, Stage.SHARE_KEYS) in injector.sent}
    assert not set(report.dropped) & set(report.survivors)
    assert set(report.dropped) <= shared
    # only misbehaving clients get refused, each at most once (its one bad or duplicated message)
    refused = rejections(report)
    assert set(refused) <= set(plans)
    for u, reasons in refused.items():
        assert len(reasons) == 1, (u, plans[u], reasons)


@settings(max_examples=30)
@given(malicious=st.booleans(), bits=st.sampled_from([8, 12, 16, 31, 32]), word=st.integers(0, 7),
       bit=st.integers(0, 31))
def test_flipped_bit_in_a_masked_word_is_another_input_or_refused(malicious: bool, bits: int, word: int,
                                                                  bit: int) -> None:
    """Property 1's bit-flip case pinned down: inside the ring it is another input; a word beyond the
    ring cannot be written in the packed form, so the attempt (the old 32-bit word) is refused."""
    params, inputs = four_clients(malicious, bits)
    seen: list[tuple[np.ndarray, np.ndarray]] = []

    def flip(message: MaskedInput) -> MaskedInput:
        y = spec_words(message.vector, bits, params.vector_length)
        assert y is not None
        flipped = y.copy()
        flipped[word] ^= np.uint32(1 << bit)
        seen.append((y, flipped))
        if bit < bits:
            return dataclasses.replace(message, vector=spec_vector(flipped, bits))
        return dataclasses.replace(message, vector=flipped.astype("<u4").tobytes())
    report = run_session(params, inputs, tamper=edit_reply(0, Stage.MASKED_INPUT, flip))
    ((y, flipped),) = seen
    if bit < bits or bits == 32:
        assert report.survivors == params.client_ids and not report.rejected
        assert_exact(params, report, inputs, params.client_ids, [flipped - y])
    else:
        assert (report.survivors, report.dropped) == ((1, 2, 3), (0,))
        assert [u for u, _ in report.rejected] == [0]
        assert_exact(params, report, inputs, (1, 2, 3))


# -- 2. duplicates ----------------------------------------------------------------------------------


@settings(max_examples=60)
@given(scenarios(("duplicate",)))
def test_duplicates_are_counted_once_and_reported(case) -> None:
    params, inputs, plans = case
    outcome, _, server = play(params, inputs, plans, spy=True)
    assert isinstance(outcome, SessionReport), outcome  # nobody is missing: the round must complete
    assert server is not None and server.phase is ServerPhase.DONE
    assert outcome.survivors == params.client_ids and outcome.dropped == ()
    assert_exact(params, outcome, inputs, params.client_ids)
    refused = rejections(outcome)
    assert set(refused) == set(plans)
    for reasons in refused.values():
        assert len(reasons) == 1 and "duplicate" in reasons[0], reasons
    # the server accepted exactly one message per client per stage
    for stage in stages_of(params):
        senders = [s for st_, _, s in server.accepted if st_ == stage]
        assert sorted(senders) == list(params.client_ids), stage


@pytest.mark.parametrize("malicious", [False, True], ids=["honest", "malicious"])
def test_every_client_sending_its_masked_input_twice_still_sums_exactly(malicious: bool) -> None:
    params = SessionParams(round=1, model_version=b"dup", client_ids=(2, 3, 5, 7, 11), threshold=4, degree=4,
                           vector_length=16, bits=32, malicious=malicious, corrupt=2 if malicious else 0,
                           nonce=NONCE)
    inputs = make_inputs(params, 5)
    plans = {u: Plan(Stage.MASKED_INPUT, "duplicate") for u in params.client_ids}
    outcome, _, _ = play(params, inputs, plans)
    assert isinstance(outcome, SessionReport)
    assert_exact(params, outcome, inputs, params.client_ids)
    assert sorted(u for u, _ in outcome.rejected) == list(params.client_ids)
    assert all("duplicate MaskedInput" in why for _, why in outcome.rejected)


# -- 3. garbage ---------------------------------------------------------------------------------------


@st.composite
def garbage_at_masked_input(draw):
    params, inputs, _ = draw(scenarios(("random",), full_graph=True))
    n, t = params.num_clients, params.threshold
    senders = draw(st.sets(st.sampled_from(params.client_ids), min_size=0, max_size=n - t))
    plans = {u: Plan(Stage.MASKED_INPUT, draw(st.sampled_from(REFUSED_GARBAGE)), draw(PICKS),
                     draw(st.binary(max_size=48))) for u in sorted(senders)}
    return params, inputs, plans


@settings(max_examples=60)
@given(garbage_at_masked_input())
def test_garbage_masked_input_is_refused_and_its_sender_dropped(case) -> None:
    params, inputs, plans = case
    outcome, _, server = play(params, inputs, plans, spy=True)
    assert isinstance(outcome, SessionReport), outcome  # at least t clients still send a valid input
    assert server is not None and server.phase is ServerPhase.DONE
    honest = tuple(u for u in params.client_ids if u not in plans)
    assert outcome.survivors == honest
    assert outcome.dropped == tuple(sorted(plans))
    assert_exact(params, outcome, inputs, honest)
    assert sorted(u for u, _ in outcome.rejected) == sorted(plans)
    assert not [entry for entry in server.accepted if entry[1] == "MaskedInput" and entry[2] in plans]


@pytest.mark.parametrize(("malicious", "stage"),
                         [(False, s) for s in HONEST_STAGES] + [(True, s) for s in MALICIOUS_STAGES],
                         ids=lambda v: v.name if isinstance(v, Stage) else ("malicious" if v else "honest"))
def test_random_garbage_of_every_length_never_crashes_the_server(malicious: bool, stage: Stage) -> None:
    params = SessionParams(round=0, model_version=b"junk", client_ids=tuple(range(6)), threshold=4, degree=5,
                           vector_length=8, malicious=malicious, corrupt=1 if malicious else 0, nonce=NONCE)
    inputs = make_inputs(params, 1)
    rng = np.random.default_rng(int(stage))
    sizes = (1, 7, 200, 5000)
    plans = {u: Plan(stage, "random", data=rng.bytes(size)) for u, size in enumerate(sizes)}
    outcome, _, server = play(params, inputs, plans, spy=True)
    assert server is not None
    assert isinstance(outcome, AbortError)  # 4 of 6 clients garbled at one stage: 2 < t = 4 remain
    assert "threshold" in str(outcome) and server.phase is ServerPhase.ABORTED
    assert not [entry for entry in server.accepted if entry[0] == stage and entry[2] in plans]


# -- 4. the full graph's outcome is predictable ------------------------------------------------------------


ABORT_WORDS = {Stage.ADVERTISE_KEYS: "advertised keys", Stage.SHARE_KEYS: "shared keys",
               Stage.SHARE_CHECK: "checked their shares", Stage.MASKED_INPUT: "sent masked inputs",
               Stage.CONSISTENCY_CHECK: "signed the survivor set",
               Stage.UNMASKING: "answered the unmask request"}


def behaving(params: SessionParams, plans: dict[int, Plan], stage: Stage) -> list[int]:
    """Clients taking part at ``stage``: any fault but a duplicate removes a client from its stage on."""
    return [u for u in params.client_ids
            if not (u in plans and plans[u].kind in ABSENT_KINDS and plans[u].stage <= stage)]


@settings(max_examples=300)
@given(scenarios(RUNNER_KINDS + REFUSED_GARBAGE, min_n=3, max_n=14, full_graph=True))
def test_full_graph_succeeds_exactly_when_t_clients_behave_at_every_stage(case) -> None:
    params, inputs, plans = case
    enough = all(len(behaving(params, plans, s)) >= params.threshold for s in stages_of(params))
    outcome, _, _ = play(params, inputs, plans)
    event(f"predicted: {'success' if enough else 'abort'}")
    if not enough:
        assert isinstance(outcome, AbortError), "the round completed with fewer than t clients at some stage"
        # the server aborts at the first stage short of t, counting exactly the clients that behaved there
        stage = next(s for s in stages_of(params) if len(behaving(params, plans, s)) < params.threshold)
        assert str(outcome).startswith(f"only {len(behaving(params, plans, stage))} clients "
                                       f"{ABORT_WORDS[stage]}, fewer than the threshold t={params.threshold}")
        return
    assert isinstance(outcome, SessionReport), f"aborted although enough clients behaved: {outcome}"
    survivors = tuple(behaving(params, plans, Stage.MASKED_INPUT))
    shared = behaving(params, plans, Stage.SHARE_KEYS)
    assert outcome.survivors == survivors
    assert outcome.dropped == tuple(u for u in shared if u not in survivors)
    assert_exact(params, outcome, inputs, survivors)
    crashed = {u for u, p in plans.items() if p.kind == "crash"}
    assert set(outcome.client_aborts) == crashed
    noisy = {u for u, p in plans.items() if p.kind in ("duplicate", *REFUSED_GARBAGE)}
    assert {u for u, _ in outcome.rejected} == noisy and len(outcome.rejected) == len(noisy)


# -- 5. refused messages are not retained ---------------------------------------------------------------


def retained_bytes(root: object) -> int:
    """Bytes reachable from ``root``: sys.getsizeof over the object graph, numpy buffers included.

    Types, modules and functions are shared with the rest of the process and not counted.
    """
    skip = (type, types.ModuleType, types.FunctionType, types.BuiltinFunctionType, types.MethodType)
    seen: set[int] = set()
    stack = [root]
    total = 0
    while stack:
        obj = stack.pop()
        if id(obj) in seen or isinstance(obj, skip):
            continue
        seen.add(id(obj))
        total += sys.getsizeof(obj)
        if isinstance(obj, np.ndarray):
            if obj.base is not None:
                stack.append(obj.base)
            continue
        stack.extend(gc.get_referents(obj))
    return total


MEMORY_N, MEMORY_T, MEMORY_D = 12, 5, 4096
GARBLERS = (0, 1, 2, 3, 4, 5)  # send garbage instead of their masked input, in both runs
BLOB = 1 << 20


def _memory_run(many: bool) -> tuple[SessionReport, Server, int, int, int]:
    """One session where GARBLERS refuse to send a valid masked input.

    ``many=False``: one 16-byte random blob each. ``many=True``: each sends a well-formed 1 MiB
    MaskedInput for the real session (it reaches ``Server.receive`` and fails the length check), twice,
    and every other client duplicates its reply at some stage. The server's legitimate state is the
    same in both runs. Returns (report, server, retained server bytes, retained traced bytes, peak).
    """
    params = SessionParams(round=9, model_version=b"memory", client_ids=tuple(range(MEMORY_N)),
                           threshold=MEMORY_T, degree=MEMORY_N - 1, vector_length=MEMORY_D, nonce=NONCE)
    inputs = make_inputs(params, 9)
    blob_vector = bytes(BLOB)
    faults: dict[int, Fault] = {}
    if many:
        faults = {u: Fault(Stage.MASKED_INPUT, "duplicate") for u in GARBLERS}
        for u in params.client_ids[len(GARBLERS):]:
            faults[u] = Fault(HONEST_STAGES[u % len(HONEST_STAGES)], "duplicate")

    def tamper(direction: str, u: int, stage: Stage, data: bytes) -> bytes:
        if direction != "to_server" or stage is not Stage.MASKED_INPUT or u not in GARBLERS:
            return data
        if not many:
            return os.urandom(16)
        return encode(dataclasses.replace(decode(data), vector=blob_vector))

    server = Server(params)
    gc.collect()
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        report = run_session(params, inputs, faults=faults, tamper=tamper, server=server)
        gc.collect()
        current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert_exact(params, report, inputs, params.client_ids[len(GARBLERS):])
    return report, server, retained_bytes(server), current - base, peak - base


def test_server_memory_does_not_grow_with_refused_messages() -> None:
    few_report, few_server, few_kept, few_traced, few_peak = _memory_run(many=False)
    many_report, many_server, many_kept, many_traced, many_peak = _memory_run(many=True)
    n, k, d = MEMORY_N, MEMORY_N - 1, MEMORY_D
    garbage_bytes = 2 * len(GARBLERS) * BLOB
    assert len(few_report.rejected) == len(GARBLERS)
    assert len(many_report.rejected) == 2 * len(GARBLERS) + (n - len(GARBLERS))
    assert many_report.server_bytes_received - few_report.server_bytes_received > garbage_bytes
    # the legitimate state is the same: what the server keeps must be the same, whatever it refused
    assert (few_server.survivors, few_server.dropped) == (many_server.survivors, many_server.dropped)
    assert abs(many_kept - few_kept) <= 1024, (few_kept, many_kept)
    # and it is O(n * (k * ciphertext + 4d)): far below one of the refused blobs
    bound = 2 * n * (k * SHARE_CIPHERTEXT_BYTES + 4 * d)
    assert many_kept <= bound < BLOB, (many_kept, bound)
    # nothing else in the process holds on to the garbage either (the report's reasons are short strings)
    assert abs(many_traced - few_traced) <= 64 * 1024, (few_traced, many_traced)
    # the transient peak is a few copies of one blob (the hook's encode, the runner's decode and the
    # codec's canonical re-encode, with msgpack's growing buffers), not all of them at once
    assert many_peak - few_peak <= 6 * BLOB < garbage_bytes, (few_peak, many_peak)


# -- 6. a crash is a drop, seen from the server ------------------------------------------------------------


@settings(max_examples=60)
@given(scenarios(("crash",), max_n=9, full_graph=True))
def test_crash_looks_like_a_drop_to_the_server(case) -> None:
    params, inputs, plans = case
    crashed, crash_hook, crash_server = play(params, inputs, plans, spy=True)
    dropped_plans = {u: dataclasses.replace(p, kind="drop") for u, p in plans.items()}
    dropped, _, drop_server = play(params, inputs, dropped_plans, spy=True)
    assert crash_server is not None and drop_server is not None
    assert type(crashed) is type(dropped)
    assert crash_server.phase is drop_server.phase
    assert crash_server.accepted == drop_server.accepted  # same messages, same senders, same order
    if isinstance(crashed, AbortError):
        assert str(crashed) == str(dropped)
        return
    assert isinstance(dropped, SessionReport)
    assert (crashed.survivors, crashed.dropped) == (dropped.survivors, dropped.dropped)
    assert_exact(params, crashed, inputs, crashed.survivors)
    np.testing.assert_array_equal(crashed.result, dropped.result)
    assert crashed.server_bytes_received == dropped.server_bytes_received
    assert crashed.rejected == dropped.rejected == []
    # the crashed clients computed their reply (and are reported), the dropped ones never saw the request
    assert set(crashed.client_aborts) <= set(plans) and not dropped.client_aborts
    assert all("crashed before sending" in why for why in crashed.client_aborts.values())
    assert set(crashed.client_aborts) == set(plans)  # the round went on, so each reached its stage
    assert not [key for key in crash_hook.sent if key[0] in plans and key[1] >= plans[key[0]].stage]


# -- defects found by these tests (fixed; kept as regressions) --------------------------------------


@pytest.mark.parametrize("stage", [Stage.MASKED_INPUT, Stage.UNMASKING], ids=["masked", "unmask"])
@pytest.mark.parametrize("malicious", [False, True], ids=["honest", "malicious"])
def test_message_claiming_another_clients_id_is_refused(stage: Stage, malicious: bool) -> None:
    params, inputs = four_clients(malicious)
    tamper = edit_reply(0, stage, lambda m: dataclasses.replace(m, sender=1))
    try:
        report = run_session(params, inputs, tamper=tamper)
    except AbortError:
        return
    assert_exact(params, report, inputs, report.survivors)
    assert [u for u, _ in report.rejected] == [0]


@pytest.mark.parametrize("malicious", [False, True], ids=["honest", "malicious"])
def test_corrupted_self_mask_share_with_spare_shares_is_not_silently_summed(malicious: bool) -> None:
    params, inputs = four_clients(malicious)

    def corrupt(message: UnmaskResponse) -> UnmaskResponse:
        (owner, share), *rest = message.self_mask_shares
        return dataclasses.replace(message, self_mask_shares=((owner, share[:-1] + bytes([share[-1] ^ 1])),
                                                               *rest))
    try:
        report = run_session(params, inputs, tamper=edit_reply(0, Stage.UNMASKING, corrupt))
    except AbortError:
        return
    assert_exact(params, report, inputs, report.survivors)


def test_share_interpolating_out_of_range_aborts_with_abort_error() -> None:
    params = SessionParams(round=1, model_version=b"defect", client_ids=(0, 1, 2), threshold=3, degree=2,
                           vector_length=4, nonce=NONCE)
    inputs = make_inputs(params, 4)
    responses: dict[int, UnmaskResponse] = {}

    def tamper(direction: str, u: int, stage: Stage, data: bytes) -> bytes:
        if direction != "to_server" or stage is not Stage.UNMASKING:
            return data
        responses[u] = decode(data)
        if u != 2:
            return data
        # the last of the t responders picks its share of client 0's seed so the secret becomes 2^256
        ys = [int.from_bytes(dict(responses[r].self_mask_shares)[0], "big") for r in (0, 1, 2)]
        lam = lagrange_at_zero(tuple(share_point(r) for r in (0, 1, 2)))
        secret = sum(c * y for c, y in zip(lam, ys, strict=True)) % P
        forged = (ys[2] + ((1 << 256) - secret) * pow(lam[2], -1, P)) % P
        shares = tuple((v, forged.to_bytes(SHARE_BYTES, "big") if v == 0 else b)
                       for v, b in responses[2].self_mask_shares)
        return encode(dataclasses.replace(responses[2], self_mask_shares=shares))

    with pytest.raises(AbortError):
        run_session(params, inputs, tamper=tamper)
