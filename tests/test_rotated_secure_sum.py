"""Fewer bits on the wire: words packed at the ring width, and the rotated secure sum (rotation +
stochastic rounding + modular clipping, the quantum chosen so the sum does not wrap)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import make_dataset
from hypothesis import given, settings
from hypothesis import strategies as st

from dp import DPFedAvg
from secagg.aggregation import SecureSum, UpdateBatch
from secagg.errors import ConfigError, RemoteProtocolError, UpdateError
from secagg.protocol.packing import pack_words, packed_length, unpack_words
from secagg.rotated_quantize import RotatedQuantizer
from secagg.rotation import TRANSFORMS, pad_length, rotate, rotated_length, spread, unrotate


@settings(max_examples=200, deadline=None)
@given(bits=st.integers(1, 32), data=st.data())
def test_packing_is_the_little_endian_bit_stream_of_the_words(bits, data):
    words = data.draw(st.lists(st.integers(0, 2**bits - 1), max_size=40))
    packed = pack_words(np.array(words, dtype=np.uint32), bits)
    stream = sum(w << (i * bits) for i, w in enumerate(words))  # the specification, in Python ints
    assert packed == stream.to_bytes(packed_length(len(words), bits), "little")
    assert unpack_words(packed, bits, len(words)).tolist() == words


def test_packing_refuses_what_it_cannot_represent_and_a_peers_noncanonical_bytes():
    with pytest.raises(ConfigError, match="a value is >= 2\\^12"):
        pack_words(np.array([4096], dtype=np.uint32), 12)
    with pytest.raises(RemoteProtocolError, match="vector: 3 bytes, expected 2"):
        unpack_words(bytes(3), 12, 1)
    with pytest.raises(RemoteProtocolError, match="padding bits after the last word are not zero"):
        unpack_words(b"\x00\xf0", 12, 1)
    assert packed_length(4810, 8) * 4 == packed_length(4810, 32)


def _vectors(rng: np.random.Generator, n: int, d: int, norm: float) -> np.ndarray:
    x = rng.standard_normal((n, d))
    return x / np.linalg.norm(x, axis=1, keepdims=True) * norm


@settings(max_examples=25, deadline=None)
@given(bits=st.sampled_from([8, 12, 16, 24, 32]), n=st.integers(1, 30), d=st.integers(1, 600),
       seed=st.integers(0, 2**31), rotation_seed=st.integers(0, 2**31),
       transform=st.sampled_from(TRANSFORMS))
def test_the_rotated_sum_decodes_within_its_error_bound(bits, n, d, seed, rotation_seed, transform):
    rq = RotatedQuantizer(1.5, bits, d, n, transform=transform)
    rng = np.random.default_rng(seed)  # test data and a seeded dither (simulation only)
    x = _vectors(rng, n, d, 1.2)
    words = [rq.encode(row, rotation_seed, rng) for row in x]
    length = pad_length(d) if transform == "hadamard" else d
    assert all(w.shape == (length,) and int(w.max()) < 2**bits and not c for w, c in words)
    total = sum(w.astype(np.uint64) for w, _ in words)
    err = float(np.linalg.norm(rq.decode_sum(total, rotation_seed) - x.sum(axis=0)))
    assert err <= rq.error_norm_bound(n)
    assert rq.wrap_probability_bound(n) <= 1e-9 * (1 + 1e-9)


def test_stochastic_rounding_is_unbiased_and_clipping_is_counted():
    d, n, trials = 64, 4, 400
    rq = RotatedQuantizer(1.0, 8, d, n)
    rng = np.random.default_rng(5)  # test data and a seeded dither
    x = _vectors(rng, 1, d, 0.7)[0]
    mean = np.mean([rq.decode_sum(rq.encode(x, 3, rng)[0].astype(np.uint64), 3) for _ in range(trials)],
                   axis=0)
    # the per-coordinate rounding error is below one quantum gamma: its mean over trials shrinks as 1/sqrt
    assert float(np.abs(mean - x).max()) < 5 * rq.gamma / math.sqrt(trials) + 1e-12
    words, clipped = rq.encode(3.0 * x / np.linalg.norm(x), 3, rng)
    assert clipped
    decoded = rq.decode_sum(words.astype(np.uint64), 3)
    assert np.linalg.norm(decoded) == pytest.approx(1.0, abs=rq.error_norm_bound(1))
    words, _ = rq.encode(x, 3)  # the deployed path: the CSPRNG's dither
    assert np.linalg.norm(rq.decode_sum(words.astype(np.uint64), 3) - x) <= rq.error_norm_bound(1)


def test_the_quantum_is_chosen_so_the_sum_fits_and_too_few_bits_are_refused_by_name():
    rq = RotatedQuantizer(2.0, 8, 4810, 20)
    L, n, t = rq.length, 20, 127
    # k standard deviations of the worst-case sum fit: the Hoeffding + union bound at the chosen gamma
    var = (n * 2.0 / rq.gamma) ** 2 / L + n / 4
    assert 2 * L * math.exp(-t * t / (2 * var)) == pytest.approx(1e-9, rel=1e-6)
    assert RotatedQuantizer(2.0, 16, 4810, 20).gamma < rq.gamma / 200  # 8 more bits: 2^8 finer
    # the rounding alone needs T^2 > (n / 4) 2 ln(2 L / delta) = 5 * 60.8: T = 2^(b-1) - 1 >= 18, b >= 6
    with pytest.raises(ConfigError, match=r"bits: 4 bits cannot hold .* raise bits to >= 6"):
        RotatedQuantizer(1.0, 4, 4810, 20)
    with pytest.raises(ConfigError, match="bits: 5 bits"):
        RotatedQuantizer(1.0, 5, 4810, 20)
    assert RotatedQuantizer(1.0, 6, 4810, 20).gamma > 0
    with pytest.raises(UpdateError, match="must be finite"):
        rq.encode(np.full(4810, np.nan), 1)


def _batch(n: int, d: int, seed: int) -> UpdateBatch:
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(n, d, generator=g, dtype=torch.float64) * 0.05
    weights = torch.arange(1, n + 1, dtype=torch.float64) * 3
    return UpdateBatch(u, weights, tuple(range(n)), round=2, seed=seed)


@pytest.mark.parametrize("transform", TRANSFORMS)
@pytest.mark.parametrize("bits", [32, 16, 12, 8])
def test_a_rotated_secure_sum_is_the_weighted_mean_to_within_its_bound(bits, transform):
    batch = _batch(12, 300, 1)
    agg = SecureSum(bits=bits, rotation=True, clip_norm=2.0, transform=transform)
    out = agg.aggregate(batch, {})
    w = batch.weights / batch.weights.sum()
    exact = (w[:, None] * batch.updates).sum(0)
    # the decoded sum (in units of W = the largest count) is off by at most the norm bound; the mean
    # divides it by the decoded total weight
    bound = out.metrics["quantization_error_norm_bound"] / float(batch.weights.sum() / batch.weights.max())
    assert float(torch.linalg.vector_norm(out.update - exact)) <= 1.01 * bound + 1e-6
    assert out.metrics["wrap_probability"] <= 1e-9 * (1 + 1e-9) and out.metrics["clipped_fraction"] == 0
    # every client sends pad_length(d) + 1 words (DCT: d + 1) of `bits` bits in its masked input
    assert agg.words(300) == (513 if transform == "hadamard" else 301)


def test_rotation_sends_fewer_bytes_at_fewer_bits_and_beats_the_default_grid_at_8_bits():
    batch = _batch(10, 900, 3)
    w = batch.weights / batch.weights.sum()
    exact = (w[:, None] * batch.updates).sum(0)
    traffic, errors = {}, {}
    for bits in (32, 8):
        for mode, agg in (("grid", SecureSum(bits=bits, value_range=1.0)),
                          ("rotation", SecureSum(bits=bits, rotation=True, clip_norm=2.0))):
            out = agg.aggregate(batch, {})
            traffic[mode, bits] = out.metrics["client_bytes_mean"]
            errors[mode, bits] = float(torch.linalg.vector_norm(out.update - exact))
    for mode in ("grid", "rotation"):
        words = 901 if mode == "grid" else 1025
        # the masked input shrinks by 3 bytes a word; the rest of the session is unchanged
        assert traffic[mode, 32] - traffic[mode, 8] == pytest.approx(3 * words, abs=8)
    # at the flags' defaults (range 1 a coordinate, clip 2 in L2) the rotated quantum is about half the grid's
    assert errors["rotation", 8] < errors["grid", 8] / 1.5


@settings(max_examples=30, deadline=None)
@given(d=st.integers(1, 80), seed=st.integers(0, 2**31), transform=st.sampled_from(TRANSFORMS))
def test_each_rotation_is_orthogonal_and_spreads_as_its_bound_says(d, seed, transform):
    """The rotation matrix (the images of the unit vectors) is orthogonal, unrotate inverts it, and its
    largest squared entry is spread / L: the variance proxy the wrap bound uses."""
    m = rotate(np.eye(d), seed, transform)  # row k: the rotation of e_k
    length = rotated_length(d, transform)
    assert m.shape == (d, length)
    assert np.allclose(m @ m.T, np.eye(d), atol=1e-12)
    assert np.allclose(unrotate(m, seed, d, transform), np.eye(d), atol=1e-12)
    assert float((m**2).max()) * length <= spread(transform) * (1 + 1e-12)


def test_the_dct_halves_the_words_of_an_unlucky_length_for_half_a_bit():
    hadamard = RotatedQuantizer(2.0, 12, 4810, 20)
    dct = RotatedQuantizer(2.0, 12, 4810, 20, transform="dct")
    assert (hadamard.length, dct.length) == (8192, 4810)
    # gamma ~ sqrt(spread / L): sqrt(2 * 8192 / 4810) = 1.85x coarser a quantum, on 41% fewer words;
    # the error norm bound ~ gamma sqrt(L) grows by sqrt(2) only (up to the log in M)
    assert dct.gamma / hadamard.gamma == pytest.approx(math.sqrt(2 * 8192 / 4810), rel=0.02)
    assert dct.error_norm_bound(20) / hadamard.error_norm_bound(20) == pytest.approx(math.sqrt(2), rel=0.02)
    assert dct.wrap_probability_bound(20) <= 1e-9 * (1 + 1e-9)
    with pytest.raises(ConfigError, match="transform: must be one of hadamard, dct"):
        SecureSum(rotation=True, clip_norm=1.0, transform="fourier")
    with pytest.raises(ConfigError, match="transform: 'dct' is the rotation's"):
        SecureSum(transform="dct")


def test_rotation_is_configured_explicitly_and_central_dp_refuses_it():
    with pytest.raises(ConfigError, match="clip_norm: rotation clips"):
        SecureSum(rotation=True)
    with pytest.raises(ConfigError, match="clip_norm: only rotation uses it"):
        SecureSum(clip_norm=1.0)
    with pytest.raises(ConfigError, match=r"inner.rotation: .*distributed DP"):
        DPFedAvg(clip=1.0, noise_multiplier=1.0, inner=SecureSum(weighted=False, max_clients=10,
                                                                  rotation=True, clip_norm=1.0))
    again = SecureSum.from_dict(SecureSum(rotation=True, clip_norm=1.5, bits=12).to_dict())
    assert again.rotation and again.clip_norm == 1.5 and again.bits == 12


def test_the_flags_build_a_rotated_sum_and_refuse_mixed_ones(tmp_path, capsys):
    import json

    from secagg.cli import main

    assert main(["train", "--rounds", "1", "--clients", "4", "--secure", "--secure-rotation", "--secure-bits",
                 "12", "--out", str(tmp_path)]) == 0
    agg = json.loads((tmp_path / "results.json").read_text())["config"]["fedavg"]["aggregator"]
    assert agg["rotation"] is True and agg["clip_norm"] == 2.0 and agg["bits"] == 12
    for flags, message in ((["--secure-rotation"], "--secure-rotation: compresses the secure sum"),
                           (["--secure", "--secure-clip-norm", "1"],
                            "--secure-clip-norm: .*add --secure-rotation"),
                           (["--secure", "--secure-rotation", "--secure-range", "2"], "--secure-range:")):
        with pytest.raises(SystemExit) as exit_:
            main(["train", "--rounds", "1", *flags])
        assert exit_.value.code == 2
        assert any(part in capsys.readouterr().err for part in message.split(".*"))


def test_a_simulated_fedavg_run_over_the_rotated_sum_learns_at_8_bits():
    from secagg.fedavg import ClientConfig, FedAvg, FedAvgConfig
    from secagg.models import MLP

    data = make_dataset(8, 20, 4, (1, 4, 4))
    torch.manual_seed(0)
    model = MLP((1, 4, 4), 4, hidden=8)
    runs = {}
    for name, agg in (("plain", None), ("rotated", SecureSum(bits=8, rotation=True, clip_norm=2.0))):
        kw = {} if agg is None else {"aggregator": agg}
        config = FedAvgConfig(rounds=3, client=ClientConfig(epochs=1, batch_size=5), **kw)
        fedavg = FedAvg(config, model, data, seed=1)
        state = fedavg.initial_state()
        for _ in range(3):
            state = fedavg.run_round(state).state
        runs[name] = torch.cat([v.flatten() for v in state.model.values()])
    assert float(torch.linalg.vector_norm(runs["rotated"] - runs["plain"])) < 0.2 * float(
        torch.linalg.vector_norm(runs["plain"]))


@pytest.mark.slow
def test_a_real_deployment_sums_rotated_12_bit_words_exactly(deployment):
    """Real processes over TLS: every round's unmasked sum equals the sum of the survivors' recorded
    12-bit inputs, the server reads the rotated sum back, and training matches the simulation."""
    from secagg.experiment import ExperimentConfig, run_experiment
    from secagg.fedavg import FedAvgConfig
    from secagg.task import TaskConfig

    dep = deployment(4)
    dep.serve("--secure", "--secure-rotation", "--secure-bits", "12", rounds=2)
    for u in range(4):
        dep.client(u)
    rounds = dep.wait_server()["rounds"]
    assert [r["round"] for r in rounds] == [1, 2] and not any(r.get("aborted") for r in rounds)
    audit = dep.audited_rounds(bits=12)
    assert sorted(audit) == [1, 2] and all(a["exact"] for a in audit.values())
    assert all(r["agg/wrap_probability"] <= 1e-9 * (1 + 1e-9) for r in rounds)
    sim = run_experiment(ExperimentConfig(TaskConfig(num_clients=4), FedAvgConfig(
        rounds=2, aggregator=SecureSum(bits=12, rotation=True, clip_norm=2.0))))
    assert abs(rounds[-1]["accuracy"] - sim.history[-1]["accuracy"]) < 0.03
