"""Local DP deployed with real ``secagg serve`` / ``secagg client`` processes: the noise is drawn on
the clients, never on the server.

Plain mode: every row the server held (its audit) is bit for bit the row its client released, that
row is the client's clipped update plus noise of the accounted spread, and the server's aggregate is
the weighted mean of the held rows (the server adds nothing). Secure mode: the same releases go
into the secure sum, whose unmasked result is exactly the sum of the clients' session inputs.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from dp.accounting import local_gaussian_epsilon

pytestmark = pytest.mark.slow

CLIP, Z = 0.5, 1.0


def _noise(audit: Path, u: int, r: int) -> np.ndarray:
    """Client u's round-r release minus its clipped update (both from its own audit)."""
    update = np.load(audit / f"client-{u}-round-{r}-update.npy").astype(np.float64)
    released = np.load(audit / f"client-{u}-round-{r}-released.npy").astype(np.float64)
    clipped = update * min(1.0, CLIP / float(np.linalg.norm(update)))
    return released - clipped


def _check_noise(noise: np.ndarray) -> None:
    # the accounted spread z C per coordinate; float32 rounding of the release is ~1e-7
    assert noise.std() == pytest.approx(Z * CLIP, rel=0.05)
    assert abs(noise.mean()) < 5 * Z * CLIP / np.sqrt(noise.size)


def test_local_dp_plain_noise_is_drawn_on_the_clients(deployment) -> None:
    import json

    dep = deployment(4)
    dep.serve("--dp", "local", "--clip", str(CLIP), "--noise-multiplier", str(Z), rounds=2)
    for u in range(4):
        dep.client(u)
    rounds = dep.wait_server()["rounds"]
    assert [r["round"] for r in rounds] == [1, 2] and not any(r.get("aborted") for r in rounds)
    for record in rounds:
        r = record["round"]
        held = np.load(dep.audit / f"round-{r}-updates.npy")
        meta = json.loads((dep.audit / f"round-{r}-updates.json").read_text())
        assert meta["clients"] == [0, 1, 2, 3]
        for row, u in zip(held, meta["clients"], strict=True):
            released = np.load(dep.audit / f"client-{u}-round-{r}-released.npy")
            assert np.array_equal(row, released), "the server holds exactly what the client released"
            _check_noise(_noise(dep.audit, u, r))
        w = np.asarray(meta["examples"], dtype=np.float64)
        mean = (w[:, None] * held.astype(np.float64)).sum(axis=0) / w.sum()
        assert record["update_norm"] == pytest.approx(float(np.linalg.norm(mean)), rel=1e-4), \
            "the server aggregated the held rows and added no noise of its own"
        assert record["epsilon"] == pytest.approx(local_gaussian_epsilon(Z, r, 1e-5))


def test_local_dp_over_secure_aggregation_noises_before_masking(deployment) -> None:
    dep = deployment(4)
    dep.serve("--secure", "--dp", "local", "--clip", str(CLIP), "--noise-multiplier", str(Z), rounds=2)
    for u in range(4):
        dep.client(u)
    rounds = dep.wait_server()["rounds"]
    assert [r["round"] for r in rounds] == [1, 2] and not any(r.get("aborted") for r in rounds)
    audit = dep.audited_rounds()
    assert sorted(audit) == [1, 2] and all(a["exact"] for a in audit.values())
    assert not list(dep.audit.glob("round-*-updates.npy")), "no individual update reached the server"
    for r, meta in audit.items():
        for u in meta["survivors"]:
            _check_noise(_noise(dep.audit, u, r))
    assert rounds[-1]["epsilon"] == pytest.approx(local_gaussian_epsilon(Z, 2, 1e-5))


@pytest.mark.parametrize("malicious", [False, True], ids=["honest", "malicious"])
def test_central_dp_over_secure_aggregation_clips_on_the_clients_and_noises_only_the_sum(
        deployment, malicious: bool) -> None:
    """DP-FedAvg over SecureSum deployed (honest and malicious-server mode): each client clips its own
    update (the server cannot: it never sees one), the server decodes the exact secure sum and adds
    N(0, (z C)^2) to it, nothing else."""
    import json

    from secagg.experiment import ExperimentConfig

    dep = deployment(4)
    mode = ("--secure-malicious",) if malicious else ()
    dep.serve("--secure", *mode, "--dp", "central", "--clip", "1.0", "--noise-multiplier", "1.0", rounds=2)
    for u in range(4):
        dep.client(u, *(("--registry", "registry.json") if malicious else ()))
    results = dep.wait_server()
    rounds = results["rounds"]
    assert [r["round"] for r in rounds] == [1, 2] and not any(r.get("aborted") for r in rounds)
    rule = ExperimentConfig.from_json(json.dumps(results["config"])).fedavg.aggregator
    audit = dep.audited_rounds()
    assert sorted(audit) == [1, 2] and all(a["exact"] for a in audit.values())
    assert not list(dep.audit.glob("round-*-updates.npy")), "no individual update reached the server"
    for r, meta in audit.items():
        for u in meta["survivors"]:
            released = np.load(dep.audit / f"client-{u}-round-{r}-released.npy")
            assert float(np.linalg.norm(released.astype(np.float64))) <= 1.0 + 1e-6  # clipped on the client
        mean, _ = rule.inner.decode_sum(np.load(dep.audit / f"round-{r}-sum.npy"), len(meta["invited"]),
                                        len(meta["survivors"]))
        total = mean * len(meta["survivors"])
        released = np.load(dep.audit / f"round-{r}-aggregate.npy")
        noise = released * rule.expected_clients - total
        assert noise.std() == pytest.approx(rule.noise_multiplier * rule.clip, rel=0.05)
        assert abs(noise.mean()) < 5 / np.sqrt(noise.size)
        assert rounds[r - 1]["epsilon"] == pytest.approx(rule.epsilon_after(r))


def test_adaptive_clipping_over_secure_aggregation_sends_the_clip_and_sums_the_clip_bits(deployment) -> None:
    """Adaptive clipping over SecureSum deployed: the server sends each round's clip norm (its state),
    each client clips to it and appends its centred clip bit before masking, the unmasked sum holds the
    clipped updates and the bit count exactly, and the server's next clip follows from the noisy count."""
    import json
    import math

    from dp.adaptive import BIT_RANGE
    from secagg.experiment import ExperimentConfig

    dep = deployment(4)
    dep.serve("--secure", "--dp", "adaptive", "--clip", "0.05", "--noise-multiplier", "1.0", rounds=3)
    for u in range(4):
        dep.client(u)
    results = dep.wait_server()
    rounds = results["rounds"]
    assert [r["round"] for r in rounds] == [1, 2, 3] and not any(r.get("aborted") for r in rounds), rounds
    rule = ExperimentConfig.from_json(json.dumps(results["config"])).fedavg.aggregator
    assert rule.kind == "dp-fedavg-adaptive"
    audit = dep.audited_rounds()
    assert sorted(audit) == [1, 2, 3] and all(a["exact"] for a in audit.values())
    assert not list(dep.audit.glob("round-*-updates.npy")), "no individual update reached the server"
    clip = rule.initial_clip
    for record in rounds:
        r = record["round"]
        assert record["agg/clip"] == pytest.approx(clip), "the clients were sent the server's current clip"
        meta = audit[r]
        bits = 0.0
        for u in meta["survivors"]:
            update = np.load(dep.audit / f"client-{u}-round-{r}-update.npy").astype(np.float64)
            released = np.load(dep.audit / f"client-{u}-round-{r}-released.npy").astype(np.float64)
            assert released.shape == (update.size + 1,)
            assert np.linalg.norm(released[:-1]) <= clip * (1 + 1e-6)
            bit = float(np.linalg.norm(update) <= clip)
            assert released[-1] == pytest.approx(bit - BIT_RANGE, abs=1e-6)
            bits += bit
        b = record["agg/noisy_unclipped_fraction"]
        assert abs(b - bits / rule.expected_clients) < 6 * rule.sigma_b / rule.expected_clients
        clip = clip * math.exp(-rule.learning_rate * (b - rule.target_quantile))
        assert record["agg/next_clip"] == pytest.approx(clip)
        assert record["epsilon"] == pytest.approx(rule.epsilon_after(r))


@pytest.mark.parametrize("mechanism", ["ddg", "skellam"])
def test_distributed_dp_noise_is_drawn_by_the_clients_inside_the_secure_sum(deployment, mechanism) -> None:
    """DDG and Skellam deployed: each client adds its integer noise share before masking; the server's
    unmasked ring sum is exactly the sum of the clients' inputs, and its released aggregate is the sum
    of the clients' clipped updates plus noise of standard deviation z c, which the server never added."""
    import json

    from secagg.experiment import ExperimentConfig

    dep = deployment(4)
    dep.serve("--dp", "distributed", "--dp-mechanism", mechanism, "--clip", "1.0",
              "--noise-multiplier", "1.0", rounds=2)
    for u in range(4):
        dep.client(u)
    results = dep.wait_server()
    rounds = results["rounds"]
    assert [r["round"] for r in rounds] == [1, 2] and not any(r.get("aborted") for r in rounds), rounds
    rule = ExperimentConfig.from_json(json.dumps(results["config"])).fedavg.aggregator
    for r in (1, 2):
        meta = json.loads((dep.audit / f"round-{r}.json").read_text())
        assert meta["survivors"] == [0, 1, 2, 3]
        total = sum(np.load(dep.audit / f"client-{u}-round-{r}.npy").astype(np.int64) for u in range(4))
        ring = np.load(dep.audit / f"round-{r}-sum.npy").astype(np.int64)
        assert np.array_equal(total % (1 << rule.bits), ring), "the unmasked sum is exactly the inputs' sum"
        clipped = 0.0
        for u in range(4):
            update = np.load(dep.audit / f"client-{u}-round-{r}-update.npy").astype(np.float64)
            clipped = clipped + update * min(1.0, rule.clip / float(np.linalg.norm(update)))
        released = np.load(dep.audit / f"round-{r}-aggregate.npy")
        noise = released * rule.expected_clients - clipped
        assert noise.std() == pytest.approx(rule.noise_multiplier * rule.clip, rel=0.1)
        assert rounds[r - 1]["epsilon"] == pytest.approx(rule.epsilon_after(r, noise.size))


def test_secure_bucketing_runs_one_secure_session_per_bucket_and_the_robust_rule_across_them(
        deployment) -> None:
    """SecureBucketing with the median deployed: the server seats the round's clients in the buckets the
    simulation would (same public seed), runs one secure session per bucket side by side, holds only the
    buckets' sums (each exactly its survivors' inputs), and releases the median of the bucket means."""
    import json

    from secagg.experiment import ExperimentConfig
    from secagg.seeding import round_seed

    dep = deployment(6)
    dep.serve("--secure", "--aggregator", "median", "--bucketing", "3", rounds=2)
    for u in range(6):
        dep.client(u)
    results = dep.wait_server()
    rounds = results["rounds"]
    assert [r["round"] for r in rounds] == [1, 2] and not any(r.get("aborted") for r in rounds), rounds
    config = ExperimentConfig.from_json(json.dumps(results["config"]))
    rule = config.fedavg.aggregator
    assert rule.kind == "secure-bucketing"
    audit = dep.audited_rounds()
    assert sorted(audit) == [1, 2] and all(a["exact"] for a in audit.values())
    assert not list(dep.audit.glob("round-*-updates.npy")), "no individual update reached the server"
    for r, meta in audit.items():
        invited = tuple(meta["invited"])
        assert meta["groups"] == [list(g) for g in rule.session_groups(invited, round_seed(config.seed, r))]
        assert sorted(u for g in meta["groups"] for u in g) == list(invited) and len(meta["groups"]) == 2
        sums = np.load(dep.audit / f"round-{r}-sum.npy")
        means = []
        for row, group, alive in zip(sums, meta["groups"], meta["group_survivors"], strict=True):
            mean, _ = rule.secure.decode_sum(row, len(group), len(alive))
            means.append(mean)
        released = np.load(dep.audit / f"round-{r}-aggregate.npy")
        # the median of two bucket means is their midpoint (float32 release)
        assert np.allclose(released, np.median(np.stack(means), axis=0), atol=1e-6)
        assert rounds[r - 1]["agg/buckets"] == 2.0


def test_clip_norm_over_secure_aggregation_clips_on_the_clients(deployment) -> None:
    """ClipNorm over SecureSum deployed: each client clips its own update to the norm before it is
    quantized and masked; the server holds only the exact sum of the clipped releases, and its
    aggregate matches the simulation's within the quantization error (only the dither differs)."""
    import json

    from secagg.cli import main

    dep = deployment(4)
    dep.serve("--secure", "--clip-norm", "0.05", rounds=2)
    for u in range(4):
        dep.client(u)
    rounds = dep.wait_server()["rounds"]
    assert [r["round"] for r in rounds] == [1, 2] and not any(r.get("aborted") for r in rounds), rounds
    audit = dep.audited_rounds()
    assert sorted(audit) == [1, 2] and all(a["exact"] for a in audit.values())
    assert not list(dep.audit.glob("round-*-updates.npy")), "no individual update reached the server"
    clipped = 0
    for r, meta in audit.items():
        for u in meta["survivors"]:
            update = np.load(dep.audit / f"client-{u}-round-{r}-update.npy").astype(np.float64)
            released = np.load(dep.audit / f"client-{u}-round-{r}-released.npy").astype(np.float64)
            norm = float(np.linalg.norm(update))
            clipped += norm > 0.05
            np.testing.assert_allclose(released, update * min(1.0, 0.05 / norm), rtol=1e-6, atol=1e-9)
    assert clipped > 0, "the test's clip norm must bind for some client"
    out = dep.root / "sim"
    assert main(["train", "--secure", "--clip-norm", "0.05", "--clients", "4", "--fraction", "1",
                 "--rounds", "2", "--out", str(out), "--no-progress"]) == 0
    simulated = json.loads((out / "results.json").read_text())["rounds"]
    for d, s in zip(rounds, simulated, strict=True):
        assert d["update_norm"] == pytest.approx(s["update_norm"], rel=1e-3)
        assert abs(d["accuracy"] - s["accuracy"]) <= 0.02
