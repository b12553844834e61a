"""Secure aggregation end to end: exact sums under any dropout schedule, aborts, and the PRG."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from secagg.crypto.prg import CHUNK_WORDS, accumulate_masks, expand
from secagg.errors import AbortError
from secagg.protocol.messages import SessionParams, Stage
from secagg.protocol.runner import run_session
from secagg.protocol.server import Server
from secagg.protocol.session import session_id
from secagg.quantize import Quantizer

NONCE = bytes(range(32))  # a fixed session nonce for hand-built setups (a Server draws a fresh one)

STAGES = list(Stage)


@st.composite
def sessions(draw, max_n: int = 40, full_graph: bool | None = None):
    """Random session parameters, inputs and a dropout schedule (any schedule, valid or not)."""
    n = draw(st.integers(2, max_n))
    ids = tuple(sorted(draw(st.sets(st.integers(0, 10_000), min_size=n, max_size=n))))
    full = draw(st.booleans()) if full_graph is None else full_graph
    degree = n - 1 if full or n < 4 else draw(st.sampled_from(list(range(2, n - 1, 2))))
    threshold = draw(st.integers(1, degree + 1))
    d = draw(st.integers(1, 24))
    bits = draw(st.sampled_from([8, 16, 31, 32]))
    params = SessionParams(round=draw(st.integers(0, 5)), model_version=b"v1", client_ids=ids,
                           threshold=threshold, degree=degree, vector_length=d, bits=bits, nonce=NONCE)
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    inputs = {u: rng.integers(0, 2**bits, d, dtype=np.uint64).astype(np.uint32) for u in ids}
    drop_rate = draw(st.sampled_from([0.0, 0.1, 0.3, 0.6]))
    schedule = {u: STAGES[int(rng.integers(len(STAGES)))] for u in ids if rng.random() < drop_rate}
    return params, inputs, schedule


def _expected(inputs, survivors, bits):
    total = np.zeros_like(next(iter(inputs.values())))
    for u in survivors:
        total += inputs[u]  # uint32 wraps mod 2^32
    return total & np.uint32((1 << bits) - 1) if bits < 32 else total


def _alive(params, schedule, stage):
    return [u for u in params.client_ids if u not in schedule or schedule[u] > stage]


@settings(max_examples=60)
@given(sessions(full_graph=True))
def test_full_graph_sum_is_exact_iff_t_clients_remain_at_every_stage(case):
    params, inputs, schedule = case
    enough = all(len(_alive(params, schedule, s)) >= params.threshold for s in Stage)
    if not enough:
        with pytest.raises(AbortError, match="fewer than the threshold"):
            run_session(params, inputs, drop_before=schedule)
        return
    report = run_session(params, inputs, drop_before=schedule)
    assert report.survivors == tuple(_alive(params, schedule, Stage.MASKED_INPUT))
    assert np.array_equal(report.result, _expected(inputs, report.survivors, params.bits))
    assert not report.client_aborts and not report.rejected


@settings(max_examples=60)
@given(sessions(full_graph=False))
def test_any_graph_gives_the_exact_sum_or_a_typed_abort(case):
    params, inputs, schedule = case
    server = Server(params)
    try:
        report = run_session(params, inputs, drop_before=schedule, server=server)
    except AbortError as exc:
        assert "threshold" in str(exc)
        return
    assert np.array_equal(report.result, _expected(inputs, report.survivors, params.bits))
    dropped_after_sharing = {u for u, s in schedule.items() if s in (Stage.SHARE_CHECK, Stage.MASKED_INPUT)}
    assert set(report.dropped) <= dropped_after_sharing | set(report.client_aborts)
    # taken out by the share check: left with fewer than t holders, in no sum
    assert not set(report.excluded) & set(report.survivors + report.dropped)


@settings(max_examples=25)
@given(sessions(full_graph=False, max_n=30))
def test_without_dropouts_every_graph_completes(case):
    params, inputs, _ = case
    report = run_session(params, inputs)
    assert report.survivors == params.client_ids
    assert np.array_equal(report.result, _expected(inputs, params.client_ids, params.bits))


@settings(max_examples=30)
@given(n=st.integers(2, 12), d=st.integers(1, 40), clip=st.floats(0.01, 100),
       seed=st.integers(0, 2**32 - 1), drop=st.integers(0, 3))
def test_dequantized_secure_sum_is_within_the_quantization_bound(n, d, clip, seed, drop):
    rng = np.random.default_rng(seed)
    x = rng.normal(scale=clip, size=(n, d))
    q = Quantizer.for_sum(clip, n, bits=32)
    inputs = {u: q.encode(x[u], rng=rng)[0] for u in range(n)}
    dropped = set(range(min(drop, n - 1)))
    threshold = max(1, (n - len(dropped)) // 2)
    params = SessionParams(0, b"", tuple(range(n)), threshold, n - 1, d, 32, nonce=NONCE)
    report = run_session(params, inputs, drop_before=dict.fromkeys(dropped, Stage.MASKED_INPUT))
    survivors = list(report.survivors)
    assert survivors == [u for u in range(n) if u not in dropped]
    decoded = q.decode_sum(report.result, len(survivors))
    expected = np.clip(x[survivors], -clip, clip).sum(axis=0)
    assert np.all(np.abs(decoded - expected) <= q.error_bound(len(survivors)) + 1e-9 * clip * n)


def test_negative_sums_come_back_negative():
    q = Quantizer.for_sum(1.0, 3, bits=16)
    rng = np.random.default_rng(0)
    x = np.array([[-0.5, 0.25], [-0.25, -0.75], [-0.1, 0.1]])
    inputs = {u: q.encode(x[u], rng=rng)[0] for u in range(3)}
    report = run_session(SessionParams(0, b"", (0, 1, 2), 2, 2, 2, 16, nonce=NONCE), inputs)
    decoded = q.decode_sum(report.result, 3)
    assert decoded[0] == pytest.approx(-0.85, abs=q.error_bound(3))
    assert decoded[1] == pytest.approx(-0.40, abs=q.error_bound(3))


def test_traffic_is_counted_and_grows_with_the_vector():
    ids = tuple(range(6))
    small = run_session(SessionParams(0, b"", ids, 3, 5, 10,

                                      nonce=NONCE), {u: np.zeros(10, np.uint32) for u in ids})
    large = run_session(SessionParams(0, b"", ids, 3, 5, 1000, nonce=NONCE),
                        {u: np.zeros(1000, np.uint32) for u in ids})
    for u in ids:
        # only the masked input grows (plus at most 4 bytes of msgpack length header)
        assert 4 * 990 <= large.bytes_sent[u] - small.bytes_sent[u] <= 4 * 990 + 4
    assert small.server_bytes_received == sum(small.bytes_sent.values())
    assert small.server_bytes_sent == sum(small.bytes_received.values())


# -- the PRG --------------------------------------------------------------------------------------

def test_prg_matches_nist_sp800_38a_ctr_aes128_vector():
    key = bytes.fromhex("2b7e151628aed2a6abf7158809cf4f3c")
    counter = bytes.fromhex("f0f1f2f3f4f5f6f7f8f9fafbfcfdfeff")
    plaintext = bytes.fromhex("6bc1bee22e409f96e93d7e117393172aae2d8a571e03ac9c9eb76fac45af8e51"
                              "30c81c46a35ce411e5fbc1191a0a52eff69f2445df4f9b17ad2b417be66c3710")
    ciphertext = bytes.fromhex("874d6191b620e3261bef6864990db6ce9806f66b7970fdff8617187bb9fffdff"
                               "5ae4df3edbd5d35e5b4f09020db03eab1e031dda2fbe03d1792170a0f3009cee")
    keystream = expand(key + counter, 16).astype("<u4").tobytes()
    assert bytes(a ^ b for a, b in zip(plaintext, keystream, strict=True)) == ciphertext


@given(st.binary(min_size=32, max_size=32), st.binary(min_size=32, max_size=32),
       st.integers(1, 3 * CHUNK_WORDS + 7))
def test_prg_is_deterministic_and_seed_sensitive(seed_a, seed_b, length):
    a = expand(seed_a, length)
    assert np.array_equal(a, expand(seed_a, length))
    assert np.array_equal(expand(seed_a, length + 5)[:length], a), "a prefix of a longer expansion"
    if seed_a != seed_b and length >= 4:
        assert not np.array_equal(a, expand(seed_b, length))


@given(st.lists(st.tuples(st.binary(min_size=32, max_size=32), st.sampled_from([1, -1])), max_size=5),
       st.integers(1, 2 * CHUNK_WORDS + 3), st.integers(0, 2**32 - 1))
def test_fused_accumulation_equals_separate_expansions(masks, length, seed):
    base = np.random.default_rng(seed).integers(0, 2**32, length, dtype=np.uint64).astype(np.uint32)
    fused = base.copy()
    accumulate_masks(fused, masks, chunk_words=1024)
    separate = base.copy()
    for s, sign in masks:
        separate = separate + expand(s, length) if sign > 0 else separate - expand(s, length)
    assert np.array_equal(fused, separate)
    accumulate_masks(fused, [(s, -sign) for s, sign in masks])
    assert np.array_equal(fused, base), "adding then subtracting the same masks is the identity"


def test_session_id_binds_every_parameter_and_the_nonce():
    base = SessionParams(3, b"model-1", (0, 1, 2), 2, 2, 100, 32, nonce=NONCE)
    sid = session_id(base)
    variants = [SessionParams(4, b"model-1", (0, 1, 2), 2, 2, 100, 32, nonce=NONCE),
                SessionParams(3, b"model-2", (0, 1, 2), 2, 2, 100, 32, nonce=NONCE),
                SessionParams(3, b"model-1", (0, 1, 3), 2, 2, 100, 32, nonce=NONCE),
                SessionParams(3, b"model-1", (0, 1, 2), 1, 2, 100, 32, nonce=NONCE),
                SessionParams(3, b"model-1", (0, 1, 2), 2, 2, 101, 32, nonce=NONCE),
                SessionParams(3, b"model-1", (0, 1, 2), 2, 2, 100, 31, nonce=NONCE),
                SessionParams(3, b"model-1", (0, 1, 2), 2, 2, 100, 32, nonce=bytes(32))]
    assert len({sid, *(session_id(v) for v in variants)}) == 1 + len(variants)
    # a SecAgg+ client's view (count and root, no list) derives the server's id
    big = SessionParams(3, b"model-1", tuple(range(0, 40, 3)), 2, 4, 100, 32, nonce=NONCE)
    view = dataclasses.replace(big, client_ids=())
    assert view.members == big.members and session_id(view) == session_id(big)
    assert session_id(dataclasses.replace(view, members_root=bytes(32))) != session_id(big)


@given(st.binary(min_size=32, max_size=32), st.binary(min_size=32, max_size=32),
       st.integers(0, 2**32 - 2), st.integers(0, 2**32 - 2), st.integers(0, 2**32 - 2))
def test_pair_seeds_are_symmetric_and_bound_to_session_and_pair(secret, sid, u, v, w):
    from secagg.protocol.session import mask_seed, share_key

    seed = mask_seed(secret, sid, u, v)
    assert seed == mask_seed(secret, sid, v, u), "both ends of a pair derive the same seed"
    assert seed != share_key(secret, sid, u, v), "mask seeds and share keys are domain-separated"
    other_sid = bytes([sid[0] ^ 1]) + sid[1:]
    assert seed != mask_seed(secret, other_sid, u, v), "another session (round, model, keys) -> other mask"
    if {u, v} != {u, w}:
        assert seed != mask_seed(secret, sid, u, w), "another pair -> another mask"
