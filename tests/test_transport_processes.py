"""End-to-end deployments with real processes on loopback: TLS, Ed25519 logins, SIGKILLed clients,
a hanging client, a reconnecting client, and a server killed and restarted between rounds.

Every round of every run is audited: the server's unmasked sum must equal the sum of the inputs
the surviving clients recorded, bit for bit. Each test is bounded (every wait has a timeout).
"""

from __future__ import annotations

import json
import signal

import pytest

from secagg.aggregation import SecureSum
from secagg.experiment import ExperimentConfig, run_experiment
from secagg.fedavg import FedAvgConfig
from secagg.task import TaskConfig

pytestmark = pytest.mark.slow


def test_ten_clients_two_killed_mid_round(deployment) -> None:
    """The acceptance run: 10 client processes, secure aggregation over TLS, 2 clients SIGKILLed after
    sharing their keys in round 2 (their pairwise masks must be reconstructed); training finishes
    with the accuracy of the same run in one process."""
    dep = deployment(10)
    dep.serve("--secure", rounds=3)
    for u in range(10):
        dep.client(u, *(["--fault", "kill@2:MASKED_INPUT"] if u >= 8 else []))
    results = dep.wait_server()
    rounds = results["rounds"]
    assert [r["round"] for r in rounds] == [1, 2, 3]
    assert not any(r.get("aborted") for r in rounds)
    audit = dep.audited_rounds()
    assert sorted(audit) == [1, 2, 3] and all(a["exact"] for a in audit.values())
    assert {8, 9} <= set(audit[2]["dropped"]) and not {8, 9} & set(audit[2]["survivors"])
    assert len(audit[2]["survivors"]) >= 6  # t = 6 of 10
    for u in (8, 9):
        assert dep.procs[f"client-{u}"].wait(5) == -signal.SIGKILL
    reference = run_experiment(ExperimentConfig(TaskConfig(num_clients=10), FedAvgConfig(
        rounds=3, fraction=1.0, aggregator=SecureSum())))
    expected = reference.history[-1]["accuracy"]
    assert rounds[-1]["accuracy"] >= 0.85
    assert abs(rounds[-1]["accuracy"] - expected) < 0.05, (rounds[-1]["accuracy"], expected)


def test_malicious_mode_with_a_client_killed_at_each_stage(deployment) -> None:
    """Malicious-server mode (signed keys, consistency round): one client SIGKILLed at a later stage
    in each round. Every round ends with the exact sum of its survivors; a client killed after its
    masked input was in is a survivor (its input counts, its self-mask is rebuilt from shares); one
    killed after sharing keys is dropped (its pairwise masks are rebuilt)."""
    dep = deployment(10)
    dep.serve("--secure", "--secure-malicious", rounds=4)
    kills = {9: "1:UNMASKING", 8: "2:CONSISTENCY_CHECK", 7: "3:MASKED_INPUT", 6: "4:SHARE_KEYS"}
    for u in range(10):
        dep.client(u, "--registry", "registry.json", *(["--fault", f"kill@{kills[u]}"] if u in kills else []))
    results = dep.wait_server()
    audit = dep.audited_rounds()
    assert sorted(audit) == [1, 2, 3, 4], [r.get("aborted") for r in results["rounds"]]
    assert all(a["exact"] for a in audit.values())
    assert 9 in audit[1]["survivors"] and 8 in audit[2]["survivors"]
    assert 7 in audit[3]["dropped"]
    assert 6 not in audit[4]["survivors"] + audit[4]["dropped"]  # advertised, never shared
    assert audit[4]["survivors"] == [0, 1, 2, 3, 4, 5]


def test_hanging_reconnecting_and_killed_clients(deployment) -> None:
    """A client that stops answering (connected, silent) is dropped at the deadline; one that drops
    its connection and comes back misses that round and is back in the next; one killed before it
    advertised its keys is simply absent."""
    dep = deployment(6)
    dep.serve("--secure", rounds=3)
    faults = {5: "hang@1:SHARE_KEYS", 4: "reconnect@2:MASKED_INPUT", 3: "kill@3:ADVERTISE_KEYS"}
    for u in range(6):
        dep.client(u, *(["--fault", faults[u]] if u in faults else []))
    results = dep.wait_server()
    audit = dep.audited_rounds()
    assert sorted(audit) == [1, 2, 3] and all(a["exact"] for a in audit.values())
    assert 5 in audit[1]["invited"] and 5 not in audit[1]["survivors"]
    assert 4 in audit[2]["dropped"]
    assert audit[3]["survivors"] == [0, 1, 2, 4]  # 4 reconnected; 3 killed; 5 still hangs
    assert results["rounds"][-1]["accuracy"] > 0.8


def test_server_killed_between_rounds_resumes(deployment) -> None:
    """SIGKILL the server after round 1 is committed; restarted with --resume it continues at round 2,
    the clients log in again by themselves, and round 1's committed record is unchanged."""
    dep = deployment(4)
    dep.serve("--secure", rounds=3)
    for u in range(4):
        dep.client(u)
    dep.wait_rounds(1)
    assert dep.server is not None
    dep.server.send_signal(signal.SIGKILL)
    dep.server.wait(10)
    first = json.loads((dep.out / "results.json").read_text())["rounds"]
    dep.serve("--secure", "--resume", rounds=3, port=dep.port)  # the address the clients know
    results = dep.wait_server()
    rounds = results["rounds"]
    assert [r["round"] for r in rounds] == [1, 2, 3]
    assert rounds[: len(first)] == first  # nothing committed was lost or rewritten
    assert all(a["exact"] for a in dep.audited_rounds().values())
    assert "logging in again" in dep.log("client-0")
    for u in range(4):
        assert dep.procs[f"client-{u}"].wait(30) == 0, dep.log(f"client-{u}")


@pytest.mark.parametrize("flags", [
    pytest.param(("--aggregator", "median"), id="plain-median"),
    pytest.param(("--secure", "--dp", "dpsgd", "--noise-multiplier", "1.0", "--clip", "1.0"),
                 id="secure-dpsgd"),
])
def test_robust_rule_and_client_side_dp_over_the_network(deployment, flags: tuple[str, ...]) -> None:
    """A robust rule runs on the server over plain updates, bit for bit as in simulation (every random
    choice is seeded the same way); DP-SGD runs on the clients under secure aggregation, and the
    server reports the record-level epsilon of each round as the simulation does."""
    from secagg.cli import main

    dep = deployment(4)
    dep.serve(*flags, rounds=2)
    for u in range(4):
        dep.client(u)
    rounds = dep.wait_server()["rounds"]
    assert [r["round"] for r in rounds] == [1, 2] and not any(r.get("aborted") for r in rounds)
    assert all(r["clients"] == 4 for r in rounds)
    out = dep.root / "sim"
    assert main(["train", *flags, "--clients", "4", "--fraction", "1", "--rounds", "2", "--out", str(out),
                 "--no-progress"]) == 0
    simulated = json.loads((out / "results.json").read_text())["rounds"]
    if "--dp" in flags:
        assert 0 < rounds[0]["epsilon"] < rounds[1]["epsilon"]
        assert [r["epsilon"] for r in rounds] == pytest.approx([r["epsilon"] for r in simulated])
        assert all(a["exact"] for a in dep.audited_rounds().values())
    else:
        assert rounds[-1]["accuracy"] > 0.8
        assert [r["accuracy"] for r in rounds] == [r["accuracy"] for r in simulated]
        assert [r["update_norm"] for r in rounds] == pytest.approx([r["update_norm"] for r in simulated],
                                                                   rel=1e-6)


def test_round_aborts_cleanly_and_training_goes_on(deployment) -> None:
    """Too many deaths for the threshold: round 1 aborts (one unmask response < t = 2) and changes
    nothing; round 2 has one live client, aborts at its deadline; the server still finishes."""
    dep = deployment(3)
    dep.serve("--secure", "--task-timeout", "8", rounds=2)
    faults = {1: "kill@1:UNMASKING", 2: "kill@1:MASKED_INPUT"}
    for u in range(3):
        dep.client(u, *(["--fault", faults[u]] if u in faults else []))
    rounds = dep.wait_server()["rounds"]
    assert [r["round"] for r in rounds] == [1, 2]
    assert "fewer than the threshold t=2" in rounds[0]["aborted"]
    assert "fewer than the threshold t=2" in rounds[1]["aborted"]
    assert rounds[0]["accuracy"] == rounds[1]["accuracy"]  # the initial model, untouched
    assert not dep.audited_rounds()
    assert dep.procs["client-0"].wait(30) == 0, dep.log("client-0")
