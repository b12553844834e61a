"""A two-level deployment with real processes on loopback: a top server, 3 combiner processes
(``secagg serve --combiner``) and 12 client processes, TLS and Ed25519 logins at both levels.

A client under one combiner is SIGKILLed in round 1 and a whole combiner in round 2 (just before its
masked input reaches the top; it stays dead in round 3). Every round is audited along the whole
chain: each combiner's unmasked sum equals the sum of the inputs its surviving clients recorded, and
the top's unmasked sum equals the sum of the surviving combiners' sums plus their survivor count,
bit for bit; the released mean is the weighted mean of exactly those clients' updates.
"""

from __future__ import annotations

import json
import signal

import numpy as np
import pytest

from secagg.experiment import ExperimentConfig
from secagg.task import make_task

pytestmark = pytest.mark.slow

M, N = 3, 12


def _chain(dep, r: int) -> dict:
    """Round ``r``'s audit along the chain (clients -> combiners -> top), with ``exact`` per level."""
    top = json.loads((dep.audit / f"round-{r}.json").read_text())
    total = np.load(dep.audit / f"round-{r}-sum.npy").astype(np.uint64)
    modulus = np.uint64(1 << 32)
    combiners, summed = {}, []
    for j in range(M):
        meta_path = dep.audit / f"combiner-{j}-round-{r}.json"
        if not meta_path.exists():
            continue
        meta = json.loads(meta_path.read_text())
        if meta["aborted"] is None:
            s = np.load(dep.audit / f"combiner-{j}-round-{r}-sum.npy").astype(np.uint64)
            inputs = sum(np.load(dep.audit / f"client-{u}-round-{r}.npy").astype(np.uint64)
                         for u in meta["survivors"])
            meta["exact"] = bool(np.array_equal(inputs % modulus, s))
            meta["sum"] = s
        combiners[j] = meta
    want = np.zeros(total.shape, dtype=np.uint64)
    for j in top["combiners_survived"]:
        want[:-1] += combiners[j]["sum"]
        want[-1] += len(combiners[j]["survivors"])
        summed += combiners[j]["survivors"]
    top["exact"] = bool(np.array_equal(want % modulus, total))
    top["clients_summed"] = sorted(summed)
    return {"top": top, "combiners": combiners}


def test_three_combiners_twelve_clients_a_client_and_a_combiner_killed(deployment) -> None:
    dep = deployment(N)
    dep.combiners(M)
    # the top's first stage spans a combiner's whole session: a longer deadline than the combiners'
    # and once 2 of 3 combiners answered, it waits longer for the third than a stage's grace (a combiner
    # whose own session lost a client is late by its own grace, 2 s here), unless the third has made no
    # call for 15 s (a live combiner polls the top every 5 s, also while its own session runs)
    dep.serve("--secure", "--combiners", str(M), "--task-timeout", "150", "--wait-clients", str(M),
              "--stage-timeout", "30", "--task-grace", "40", "--liveness", "15", rounds=3,
              registry="combiners/registry.json")
    ports = {j: dep.combiner(j, *(["--fault", "kill@2:MASKED_INPUT"] if j == 2 else [])) for j in range(M)}
    for u in range(N):
        dep.client(u, *(["--fault", "kill@1:MASKED_INPUT"] if u == 4 else []), port=ports[u % M])
    results = dep.wait_server(timeout=420)
    rounds = results["rounds"]
    assert [r["round"] for r in rounds] == [1, 2, 3]
    assert not any(r.get("aborted") for r in rounds), [r.get("aborted") for r in rounds]

    chain = {r: _chain(dep, r) for r in (1, 2, 3)}
    for r, c in chain.items():
        assert c["top"]["exact"], r
        assert all(meta.get("exact", True) for meta in c["combiners"].values()), r
        assert c["top"]["invited"] == list(range(N))
        assert c["top"]["combiners"] == {str(j): list(range(j, N, M)) for j in range(M)}
        assert c["top"]["summed"] == len(c["top"]["clients_summed"]) == rounds[r - 1]["clients"]
    # round 1: client 4 killed inside combiner 1's session: dropped there, nowhere in the sum
    assert chain[1]["combiners"][1]["survivors"] == [1, 7, 10] and 4 in chain[1]["combiners"][1]["dropped"]
    assert chain[1]["top"]["combiners_survived"] == [0, 1, 2]
    assert chain[1]["top"]["clients_summed"] == [u for u in range(N) if u != 4]
    # round 2: combiner 2 summed its clients, then died before its masked input reached the top:
    # the top reconstructs its masks and sums the other two combiners' clients only
    assert chain[2]["combiners"][2]["survivors"] == [2, 5, 8, 11]
    assert chain[2]["top"]["combiners_survived"] == [0, 1] and chain[2]["top"]["combiners_dropped"] == [2]
    assert chain[2]["top"]["clients_summed"] == [0, 1, 3, 6, 7, 9, 10]
    # round 3: combiner 2 is gone; its clients cannot be summed, the rest are
    assert 2 not in chain[3]["combiners"]
    assert chain[3]["top"]["combiners_survived"] == [0, 1]
    assert dep.procs["combiner-2"].wait(5) == -signal.SIGKILL
    assert dep.procs["client-4"].wait(5) == -signal.SIGKILL
    for name in ("combiner-0", "combiner-1", *(f"client-{u}" for u in (0, 1, 3, 6, 7, 9, 10))):
        assert dep.procs[name].wait(30) == 0, dep.log(name)

    # what the top released is the weighted mean of exactly the summed clients' updates
    config = ExperimentConfig.from_dict(results["config"])
    examples = [len(part) for part in make_task(config.task, seed=config.seed).data.partition]
    for r, c in chain.items():
        ids = c["top"]["clients_summed"]
        w = np.array([examples[u] for u in ids], dtype=np.float64)
        rows = np.stack([np.load(dep.audit / f"client-{u}-round-{r}-released.npy") for u in ids])
        mean = (w[:, None] * rows).sum(0) / w.sum()
        aggregate = np.load(dep.audit / f"round-{r}-aggregate.npy")
        assert np.abs(aggregate - mean).max() < 1e-4, r
    assert rounds[-1]["accuracy"] > 0.5
