"""Fixed-point quantization into Z_(2^bits): exact modular sums, unbiased rounding, capacity rule."""

from __future__ import annotations

import dataclasses
import json
import math
import re

import numpy as np
import pytest
import torch
from hypothesis import given, note
from hypothesis import strategies as st

from secagg.errors import ConfigError, UpdateError
from secagg.quantize import Quantizer


def _limit(bits: int) -> int:
    return 2 ** (bits - 1) - 1


def _passes(q: Quantizer, num_clients: int, headroom: int = 0) -> bool:
    try:
        q.check_capacity(num_clients, headroom)
    except ConfigError:
        return False
    return True


# --- modular sum round trip -------------------------------------------------------------------------


@given(n=st.integers(1, 40), d=st.integers(1, 50), clip=st.floats(1e-3, 1e3), bits=st.integers(8, 32),
       spread=st.floats(0.0, 3.0), offset=st.floats(-1.5, 1.5), seed=st.integers(0, 2**32 - 1))
def test_modular_sum_decodes_to_clipped_float_sum(n: int, d: int, clip: float, bits: int, spread: float,
                                                  offset: float, seed: int) -> None:
    q = Quantizer.for_sum(clip, n, bits=bits)
    gen = np.random.default_rng(seed)
    x = (offset + spread * gen.uniform(-1.0, 1.0, size=(n, d))) * clip  # beyond clip and negative too
    x[0, 0] = -clip  # exactly on the boundary: not clipped
    encoded = [q.encode(row, rng=gen) for row in x]
    stacked = np.stack([e for e, _ in encoded])
    assert stacked.dtype == np.uint32
    assert int(stacked.max()) < 2**bits

    total64 = stacked.astype(np.uint64).sum(axis=0) % np.uint64(2**bits)
    total32 = np.add.reduce(stacked, axis=0, dtype=np.uint32) & np.uint32(2**bits - 1)  # wraps mod 2**32
    np.testing.assert_array_equal(total64, total32)

    expected = np.clip(x, -clip, clip).sum(axis=0)
    tol = q.error_bound(n) + 1e-13 * n * clip  # float64 slack, far below one quantum (>= 2**-31 clip)
    for total in (total64, total32):
        decoded = q.decode_sum(total, n)
        assert decoded.dtype == np.float64
        err = np.abs(decoded - expected)
        note(f"scale={q.scale} max err={err.max()} tol={tol}")
        assert np.all(err <= tol)
        far = np.abs(expected) > tol
        np.testing.assert_array_equal(np.sign(decoded[far]), np.sign(expected[far]))
    assert sum(c for _, c in encoded) == np.count_nonzero(np.abs(x) > clip)


@pytest.mark.parametrize("bits", [8, 16, 32])
def test_negative_sum_comes_back_negative(bits: int) -> None:
    n = 40
    q = Quantizer.for_sum(1.0, n, bits=bits)
    gen = np.random.default_rng(0)
    rows = [q.encode(np.array([-0.9, -1.0, 0.9, -5.0]), rng=gen)[0] for _ in range(n)]
    total = np.add.reduce(np.stack(rows), axis=0, dtype=np.uint32) & np.uint32(q.modulus - 1)
    decoded = q.decode_sum(total, n)
    expected = np.array([-0.9, -1.0, 0.9, -1.0]) * n
    assert np.all(np.abs(decoded - expected) <= q.error_bound(n) + 1e-9)
    assert (decoded[[0, 1, 3]] < 0).all() and decoded[2] > 0


def test_single_vector_two_complement_and_decode() -> None:
    q = Quantizer(value_range=4.0, scale=1.0, bits=4)  # 4 * 1 <= 2**3 - 1
    enc, clipped = q.encode(np.array([-1.0, 3.0, -4.0, 0.0, -9.0]), rng=np.random.default_rng(0))
    np.testing.assert_array_equal(enc, np.array([15, 3, 12, 0, 12], dtype=np.uint32))
    assert clipped == 1
    np.testing.assert_array_equal(q.decode(enc), [-1.0, 3.0, -4.0, 0.0, -4.0])


# --- stochastic rounding ----------------------------------------------------------------------------


@pytest.mark.parametrize("value", [0.03, -0.037, 0.0149])
def test_stochastic_rounding_is_unbiased(value: float) -> None:
    q = Quantizer(value_range=1.0, scale=10.0, bits=16)  # fractional parts 0.3, 0.63 (negative), 0.149
    draws = 20_000
    enc, _ = q.encode(np.full(draws, value), rng=np.random.default_rng(1234))
    decoded = q.decode(enc)
    v = value * q.scale
    assert set(np.unique(decoded * q.scale).round().astype(int)) <= {math.floor(v), math.ceil(v)}
    p = v - math.floor(v)
    se = math.sqrt(p * (1 - p) / draws) / q.scale
    assert abs(decoded.mean() - value) < 5 * se
    # Round-to-nearest would be far off: the test can tell the difference.
    assert abs(round(v) / q.scale - value) > 5 * se


def test_rng_reproducible_and_default_is_fresh() -> None:
    q = Quantizer(value_range=1.0, scale=2.0, bits=16)
    x = np.full(1000, 0.25)  # v = 0.5: each coordinate is a fair coin
    a, _ = q.encode(x, rng=np.random.default_rng(7))
    b, _ = q.encode(x, rng=np.random.default_rng(7))
    np.testing.assert_array_equal(a, b)
    c, _ = q.encode(x)
    d, _ = q.encode(x)
    assert not np.array_equal(c, d)  # fails with probability 2**-1000 only if the default is random


# --- clipping -------------------------------------------------------------------------------------


def test_clip_count_and_clipped_values() -> None:
    q = Quantizer(value_range=0.5, scale=100.0, bits=16)
    x = np.array([0.5, -0.5, 0.51, -0.51, 7.0, -1e9, 0.2, 0.0, -0.49999])
    original = x.copy()
    enc, clipped = q.encode(x, rng=np.random.default_rng(0))
    assert clipped == int(np.count_nonzero(np.abs(x) > 0.5)) == 4
    np.testing.assert_array_equal(x, original)  # input untouched
    decoded = q.decode(enc)
    over = np.abs(x) > 0.5
    assert np.all(np.abs(decoded[over] - np.sign(x[over]) * 0.5) <= 1 / q.scale)
    assert np.all(np.abs(decoded[~over] - x[~over]) < 1 / q.scale)


# --- input validation -------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_input_names_first_index(bad: float) -> None:
    q = Quantizer(value_range=1.0, scale=10.0, bits=16)
    x = np.array([0.1, 0.2, 0.3, bad, 0.4, bad])
    with pytest.raises(UpdateError, match=r"x\[3\].*index 3"):
        q.encode(x, rng=np.random.default_rng(0))
    with pytest.raises(UpdateError, match=r"index 3"):
        q.encode(torch.tensor(x, dtype=torch.float32))


@pytest.mark.parametrize("x", [
    np.zeros((2, 3)),
    np.array(0.5),
    np.array([True, False]),
    np.array([1 + 1j]),
    [0.1, 0.2],
    torch.zeros(2, 2),
    torch.tensor([True]),
])
def test_encode_rejects_bad_input(x: object) -> None:
    with pytest.raises(UpdateError, match="x"):
        Quantizer(value_range=1.0, scale=10.0, bits=16).encode(x)  # type: ignore[arg-type]


def test_encode_rejects_non_generator_rng() -> None:
    with pytest.raises(ConfigError, match="rng"):
        Quantizer(value_range=1.0, scale=10.0).encode(np.zeros(3), rng=np.random.RandomState(0))  # type: ignore[arg-type]


def test_torch_input_matches_numpy() -> None:
    q = Quantizer(value_range=1.0, scale=1000.0, bits=24)
    x = np.random.default_rng(3).normal(size=64)
    ref = q.encode(x, rng=np.random.default_rng(5))
    for t in (torch.tensor(x, requires_grad=True), torch.tensor(x, dtype=torch.float32).double()):
        got = q.encode(t, rng=np.random.default_rng(5))
        np.testing.assert_array_equal(got[0], ref[0])
        assert got[1] == ref[1]
    bf, _ = q.encode(torch.tensor(x, dtype=torch.bfloat16), rng=np.random.default_rng(5))
    assert bf.dtype == np.uint32 and bf.shape == (64,)
    ints, _ = q.encode(np.array([0, 1, -1, 2]), rng=np.random.default_rng(0))
    np.testing.assert_array_equal(q.decode(ints), [0.0, 1.0, -1.0, 1.0])


@pytest.mark.parametrize("total", [
    np.zeros(3, dtype=np.int64),
    np.zeros(3, dtype=np.float64),
    np.zeros((2, 3), dtype=np.uint32),
    [0, 1, 2],
])
def test_decode_rejects_bad_total(total: object) -> None:
    with pytest.raises(UpdateError, match="total"):
        Quantizer(value_range=1.0, scale=10.0, bits=16).decode_sum(total, 2)  # type: ignore[arg-type]


def test_decode_reduces_mod_modulus() -> None:
    q = Quantizer(value_range=1.0, scale=1.0, bits=8)
    total = np.array([256 + 3, 2**32 - 1, 2**40 + 128], dtype=np.uint64)
    np.testing.assert_array_equal(q.decode_sum(total, 1), [3.0, -1.0, -128.0])


def test_encode_and_decode_refuse_overfull_configs() -> None:
    q = Quantizer(value_range=1.0, scale=32768.0, bits=16)  # one client alone can reach 32768 > 32767
    with pytest.raises(ConfigError, match="bits=16"):
        q.encode(np.zeros(3))
    ok = Quantizer(value_range=1.0, scale=4681.0, bits=16)
    with pytest.raises(ConfigError, match="8 clients"):
        ok.decode_sum(np.zeros(3, dtype=np.uint32), 8)


# --- capacity ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(("clip", "scale", "bits", "n", "headroom"), [
    (1.0, 4681.0, 16, 7, 0),           # 7 * 4681 = 32767
    (0.5, 9361.0, 16, 7, 0),           # ceil(4680.5) = 4681
    (2.0, 163.5, 16, 100, 67),         # 100 * 327 + 67 = 32767
    (1.0, 306783378.0, 32, 7, 1),      # 7 * 306783378 + 1 = 2**31 - 1
    (1.0, 1.0, 2, 1, 0),               # 1 = 2**1 - 1
])
def test_check_capacity_boundary(clip: float, scale: float, bits: int, n: int, headroom: int) -> None:
    q = Quantizer(value_range=clip, scale=scale, bits=bits)
    assert n * q.max_abs_quantized + headroom == _limit(bits)
    q.check_capacity(n, headroom)  # exactly at the limit: passes
    with pytest.raises(ConfigError, match=f"bits={bits}"):
        q.check_capacity(n, headroom + 1)  # == 2**(bits-1): fails
    with pytest.raises(ConfigError, match=f"bits={bits}"):
        q.check_capacity(n + 1, headroom)


def test_properties() -> None:
    q = Quantizer(value_range=0.5, scale=9361.0, bits=16)
    assert q.modulus == 65536
    assert q.max_abs_quantized == 4681
    assert Quantizer(value_range=1.0, scale=3.0).max_abs_quantized == 3
    assert q.error_bound(10) == 10 / 9361.0


def _suggestions(message: str) -> dict[str, float]:
    found = {}
    for name, pattern in [("bits", r"raise bits to >= (\d+)"), ("scale", r"lower scale to <= ([^,;\s]+)"),
                          ("value_range", r"lower value_range to <= ([^,;\s]+)"),
                          ("headroom", r"lower headroom to <= (\d+)"),
                          ("num_clients", r"lower num_clients to <= (\d+)")]:
        m = re.search(pattern, message)
        if m:
            found[name] = float(m.group(1))
    return found


def test_capacity_message_spec_example() -> None:
    q = Quantizer(value_range=100.0, scale=327.68, bits=16)
    with pytest.raises(ConfigError) as err:
        q.check_capacity(100)
    msg = str(err.value)
    assert "bits=16 cannot hold the sum of 100 clients" in msg
    assert "100 * 32768 + 0 > 32767" in msg
    assert "raise bits to >= 23" in msg and "lower scale to <= 3.27," in msg
    got = _suggestions(msg)
    assert set(got) >= {"bits", "scale", "value_range"}
    assert _passes(dataclasses.replace(q, value_range=got["value_range"]), 100)


@given(clip=st.floats(1e-3, 1e3), scale=st.floats(1e-2, 1e7), bits=st.integers(2, 32),
       n=st.integers(1, 1000), headroom=st.integers(0, 2**20))
def test_capacity_suggestions_pass_when_applied(clip: float, scale: float, bits: int, n: int,
                                               headroom: int) -> None:
    q = Quantizer(value_range=clip, scale=scale, bits=bits)
    limit = _limit(bits)
    if n * q.max_abs_quantized + headroom <= limit:
        q.check_capacity(n, headroom)
        return
    with pytest.raises(ConfigError) as err:
        q.check_capacity(n, headroom)
    msg = str(err.value)
    note(msg)
    assert f"bits={bits}" in msg and f"scale={scale!r}" in msg and f"value_range={clip!r}" in msg
    got = _suggestions(msg)
    if "bits" in got:
        b = int(got["bits"])
        assert b > bits
        assert _passes(dataclasses.replace(q, bits=b), n, headroom)
        assert b - 1 < 2 or not _passes(dataclasses.replace(q, bits=b - 1), n, headroom)  # minimal
    else:
        assert "no bits <= 32" in msg
        assert n * q.max_abs_quantized + headroom > _limit(32)
    if (limit - headroom) // n >= 1:
        s, c = got["scale"], got["value_range"]
        assert 0 < s < scale and 0 < c < clip
        assert _passes(dataclasses.replace(q, scale=s), n, headroom)
        assert _passes(dataclasses.replace(q, value_range=c), n, headroom)
        # ... and they are tight (6 significant digits, rounded down)
        assert not _passes(dataclasses.replace(q, scale=s * (1 + 2e-5)), n, headroom)
        assert not _passes(dataclasses.replace(q, value_range=c * (1 + 2e-5)), n, headroom)
    else:
        assert "scale" not in got and "value_range" not in got
        assert "no scale or value_range is enough" in msg
    if "headroom" in got:
        assert _passes(q, n, int(got["headroom"]))
        assert not _passes(q, n, int(got["headroom"]) + 1)
    if "num_clients" in got:
        k = int(got["num_clients"])
        assert _passes(q, k, headroom) and not _passes(q, k + 1, headroom)


@pytest.mark.parametrize(("n", "headroom"), [(0, 0), (-1, 0), (1.5, 0), (1, -1), (1, 0.5)])
def test_check_capacity_rejects_bad_arguments(n: object, headroom: object) -> None:
    with pytest.raises(ConfigError, match=r"num_clients|headroom"):
        Quantizer(value_range=1.0, scale=1.0).check_capacity(n, headroom)  # type: ignore[arg-type]


# --- for_sum ---------------------------------------------------------------------------------------


@given(clip=st.floats(1e-6, 1e6), n=st.integers(1, 10_000), bits=st.integers(2, 32),
       headroom=st.integers(0, 2**31))
def test_for_sum_scale_is_maximal(clip: float, n: int, bits: int, headroom: int) -> None:
    if (_limit(bits) - headroom) // n < 1:
        with pytest.raises(ConfigError, match=f"bits={bits}"):
            Quantizer.for_sum(clip, n, bits=bits, headroom=headroom)
        return
    q = Quantizer.for_sum(clip, n, bits=bits, headroom=headroom)
    assert (q.clip, q.bits) == (clip, bits)
    q.check_capacity(n, headroom)
    with pytest.raises(ConfigError):
        dataclasses.replace(q, scale=q.scale * (1 + 1e-9)).check_capacity(n, headroom)


def test_for_sum_examples() -> None:
    assert Quantizer.for_sum(1.0, 7, bits=16).scale == 4681.0
    assert Quantizer.for_sum(2.0, 100, bits=16, headroom=67).scale == 163.5
    with pytest.raises(ConfigError, match="raise bits to >= 9"):
        Quantizer.for_sum(1.0, 200, bits=8)
    with pytest.raises(ConfigError, match="value_range"):
        Quantizer.for_sum(0.0, 2)


# --- config -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("kwargs", "field"), [
    ({"bits": 1}, "bits"),
    ({"bits": 33}, "bits"),
    ({"bits": 16.0}, "bits"),
    ({"bits": True}, "bits"),
    ({"value_range": 0.0}, "value_range"),
    ({"value_range": -1.0}, "value_range"),
    ({"value_range": math.nan}, "value_range"),
    ({"value_range": math.inf}, "value_range"),
    ({"scale": -1.0}, "scale"),
    ({"scale": 0}, "scale"),
    ({"scale": math.nan}, "scale"),
    ({"scale": "2"}, "scale"),
    ({"value_range": 1e200, "scale": 1e200}, "value_range \\* scale"),
])
def test_config_errors_name_the_field(kwargs: dict, field: str) -> None:
    args = {"value_range": 1.0, "scale": 10.0, "bits": 16, **kwargs}
    with pytest.raises(ConfigError, match=f"^{field}"):
        Quantizer(**args)


def test_dict_round_trip() -> None:
    q = Quantizer.for_sum(0.25, 13, bits=20)
    d = json.loads(json.dumps(q.to_dict()))
    assert d == {"value_range": 0.25, "scale": q.scale, "bits": 20}
    assert Quantizer.from_dict(d) == q
    assert Quantizer.from_dict({"clip": 1, "scale": 2}) == Quantizer(value_range=1.0, scale=2.0, bits=32)
    assert Quantizer(value_range=0.5, scale=2.0).clip == 0.5  # the old name reads the range
    with pytest.raises(ConfigError, match="'clip' is the old name of 'value_range'"):
        Quantizer.from_dict({**d, "clip": 1.0})
    with pytest.raises(ConfigError, match=r"unknown field.*noise"):
        Quantizer.from_dict({**d, "noise": 1.0})
    with pytest.raises(ConfigError, match=r"missing.*scale"):
        Quantizer.from_dict({"clip": 1.0})
    with pytest.raises(ConfigError, match="bits"):
        Quantizer.from_dict({**d, "bits": 40})
    with pytest.raises(ConfigError, match="mapping"):
        Quantizer.from_dict([1, 2])
