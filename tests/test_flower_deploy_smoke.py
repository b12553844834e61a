"""Smoke tests of ``tests/flower_deploy.py``: a trivial Message-API app on Flower's real deployment
engine (one SuperLink, three SuperNodes, real processes on 127.0.0.1).

The app: the ServerApp runs ``flwr.serverapp.strategy.FedAvg`` (training only) on a 10-float
``ArrayRecord`` starting at zeros; every ClientApp adds 1.0, so after ``r`` rounds every entry is
``r`` whichever nodes answered. The ServerApp writes the final arrays plus, per round, which nodes
were asked, which answered and which error replies came back, to ``result-path``. The ClientApp
touches ``<marker-dir>/marker-round{r}-node{partition-id}`` on receipt, and the node
``stall-node`` sleeps ``stall-seconds`` in round ``stall-round`` so that the test can kill it while
the round is in progress.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from flower_deploy import FlowerDeployment

# the harness's own checks (about 2.5 minutes); CI runs the harness through test_flower_deployment.py
pytestmark = pytest.mark.slow

PYPROJECT = """\
[build-system]
requires = ["hatchling"]
build-backend = "hatchling.build"

[project]
name = "deploysmoke"
version = "1.0.0"
description = "flower_deploy harness smoke app"
license = "Apache-2.0"
dependencies = ["numpy"]

[tool.flwr.app]
publisher = "secagg-tests"

[tool.flwr.app.components]
serverapp = "deploysmoke.server_app:app"
clientapp = "deploysmoke.client_app:app"

[tool.flwr.app.config]
num-server-rounds = 3
min-nodes = 3
round-timeout = 0.0  # seconds FedAvg waits for replies per round; 0 = its default (3600)
result-path = ""
marker-dir = ""
stall-round = -1
stall-node = -1
stall-seconds = 0.0
"""

SERVER_APP = '''\
import json
import time
from pathlib import Path

import numpy as np
from flwr.app import ArrayRecord, Context
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

app = ServerApp()


class RecordingFedAvg(FedAvg):
    """FedAvg that notes, per round, who was asked, who answered and which errors came back."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.rounds = []
        self._sent = []
        self._sent_at = 0.0

    def configure_train(self, server_round, arrays, config, grid):
        self._sent = list(super().configure_train(server_round, arrays, config, grid))
        self._sent_at = time.time()
        return self._sent

    def aggregate_train(self, server_round, replies):
        replies = list(replies)
        # push_messages fills in the ids of the very Message objects configure_train returned
        dst = {m.metadata.message_id: m.metadata.dst_node_id for m in self._sent}
        self.rounds.append({
            "round": server_round,
            "sent_at": self._sent_at,
            "returned_at": time.time(),
            "sampled": sorted(m.metadata.dst_node_id for m in self._sent),
            "ok": sorted(m.metadata.src_node_id for m in replies if not m.has_error()),
            "errors": [{"code": m.error.code, "reason": m.error.reason,
                        "src_node_id": m.metadata.src_node_id,
                        "lost_node_id": dst.get(m.metadata.reply_to_message_id)}
                       for m in replies if m.has_error()],
        })
        return super().aggregate_train(server_round, replies)


@app.main()
def main(grid: Grid, context: Context) -> None:
    cfg = context.run_config
    n = int(cfg["min-nodes"])
    strategy = RecordingFedAvg(fraction_train=1.0, fraction_evaluate=0.0,
                               min_train_nodes=n, min_available_nodes=n)
    timeout = float(cfg["round-timeout"]) or 3600.0
    result = strategy.start(grid=grid, initial_arrays=ArrayRecord([np.zeros(10)]),
                            num_rounds=int(cfg["num-server-rounds"]), timeout=timeout)
    Path(str(cfg["result-path"])).write_text(json.dumps({
        "arrays": [a.tolist() for a in result.arrays.to_numpy_ndarrays()],
        "rounds": strategy.rounds,
        "nodes_at_end": sorted(grid.get_node_ids()),
    }))
'''

CLIENT_APP = '''\
import time
from pathlib import Path

from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

app = ClientApp()


@app.train()
def train(msg: Message, context: Context) -> Message:
    rnd = int(msg.content["config"]["server-round"])
    pid = int(context.node_config["partition-id"])
    cfg = context.run_config
    if str(cfg["marker-dir"]):
        Path(str(cfg["marker-dir"]), f"marker-round{rnd}-node{pid}").touch()
    if rnd == int(cfg["stall-round"]) and pid == int(cfg["stall-node"]):
        time.sleep(float(cfg["stall-seconds"]))
    arrays = [a + 1.0 for a in msg.content["arrays"].to_numpy_ndarrays()]
    metrics = MetricRecord({"num-examples": 1, "partition-id": pid})
    return Message(RecordDict({"arrays": ArrayRecord(arrays), "metrics": metrics}), reply_to=msg)
'''

NODE_UNAVAILABLE = 5  # flwr.common.constant.ErrorCode.NODE_UNAVAILABLE
SUPERLINK_NODE_ID = 1  # flwr.common.constant.SUPERLINK_NODE_ID: the sender of SuperLink-made errors


def write_app(root: Path) -> Path:
    app = root / "deploysmoke-app"
    (app / "deploysmoke").mkdir(parents=True)
    (app / "pyproject.toml").write_text(PYPROJECT)
    (app / "deploysmoke" / "__init__.py").write_text("")
    (app / "deploysmoke" / "server_app.py").write_text(SERVER_APP)
    (app / "deploysmoke" / "client_app.py").write_text(CLIENT_APP)
    return app


def _run_with_kill(tmp_path: Path, round_timeout: float, run_timeout: float
                   ) -> tuple[dict[str, Any], dict[str, float]]:
    """Three nodes, three rounds; node 2 is SIGKILLed while it works on round 2."""
    app = write_app(tmp_path)
    result_path = tmp_path / "result.json"
    t0 = time.monotonic()
    with FlowerDeployment(tmp_path / "deploy", num_nodes=3) as dep:
        t_up = time.monotonic()
        ids = [dep.node_id(i) for i in range(3)]
        handle = dep.run_async(app, {
            "result-path": result_path, "marker-dir": dep.markers, "min-nodes": 2,
            "round-timeout": round_timeout, "stall-round": 2, "stall-node": 2,
            "stall-seconds": 600.0}, timeout=run_timeout)
        dep.wait_for_file(dep.markers / "marker-round2-node2", timeout=run_timeout, handle=handle)
        dep.kill_node(2)
        assert not dep.node_alive(2)
        res = handle.wait()
        assert res.ok, f"run {res.run_id}: {res.status} {res.details}\n{dep.logs()}"
        assert result_path.exists(), dep.logs()
        out = json.loads(result_path.read_text())
        out["node_ids"] = ids
        times = {"startup_s": t_up - t0, "run_s": res.seconds, "killed_at": dep.killed[2]}
        logs = dep.logs()
    times["total_s"] = time.monotonic() - t0
    summary = [(r["round"], round(r["returned_at"] - r["sent_at"], 1), len(r["sampled"]),
                len(r["ok"]), [e["code"] for e in r["errors"]]) for r in out["rounds"]]
    print(f"\n[flower_deploy] kill-node run (round-timeout={round_timeout}): "
          f"startup {times['startup_s']:.1f} s, run {times['run_s']:.1f} s, "
          f"total {times['total_s']:.1f} s; (round, s, sampled, ok, error codes): {summary}")
    out["logs"] = logs
    return out, times


def test_three_nodes_three_rounds(tmp_path: Path) -> None:
    app = write_app(tmp_path)
    result_path = tmp_path / "result.json"
    t0 = time.monotonic()
    with FlowerDeployment(tmp_path / "deploy", num_nodes=3) as dep:
        t_up = time.monotonic()
        ids = sorted(dep.node_id(i) for i in range(3))
        res = dep.run(app, {"result-path": result_path, "marker-dir": dep.markers}, timeout=120)
        assert res.ok, f"run {res.run_id}: {res.status} {res.details}\n{dep.logs()}"
        out = json.loads(result_path.read_text())
        assert out["arrays"] == [[3.0] * 10]
        assert [r["round"] for r in out["rounds"]] == [1, 2, 3]
        for r in out["rounds"]:
            assert r["sampled"] == ids and r["ok"] == ids and r["errors"] == [], r
        markers = sorted(p.name for p in dep.markers.iterdir())
        assert markers == sorted(f"marker-round{r}-node{i}" for r in (1, 2, 3) for i in range(3))
        # the app was installed from the FAB into each process's own FLWR_HOME, not into $HOME
        for role in ("superlink", "node-0", "node-1", "node-2"):
            assert list((dep.tmp / "flwr-home" / role / "apps").glob("secagg-tests.deploysmoke.*"))
    print(f"\n[flower_deploy] 3 nodes x 3 rounds: startup {t_up - t0:.1f} s, run {res.seconds:.1f} s,"
          f" total {time.monotonic() - t0:.1f} s")


def test_node_killed_mid_round_run_still_finishes(tmp_path: Path) -> None:
    """With a per-round timeout FedAvg carries on with the replies it has: the dead node's message
    is simply never answered (no error reply within the ~38-60 s it takes the SuperLink to notice)."""
    out, _ = _run_with_kill(tmp_path, round_timeout=15.0, run_timeout=120)
    ids = out["node_ids"]
    survivors = sorted(ids[:2])
    assert out["arrays"] == [[3.0] * 10], out["logs"]
    r1, r2, r3 = out["rounds"]
    assert r1["ok"] == sorted(ids) and r1["errors"] == []
    assert r2["sampled"] == sorted(ids) and r2["ok"] == survivors, r2
    assert r3["ok"] == survivors, r3
    for r in (r2, r3):  # if the SuperLink did notice in time, it says so with NODE_UNAVAILABLE
        for e in r["errors"]:
            assert e["code"] == NODE_UNAVAILABLE and e["lost_node_id"] == ids[2], e


@pytest.mark.slow
def test_dead_node_reported_as_node_unavailable(tmp_path: Path) -> None:
    """Without a round timeout, ``send_and_receive`` returns once the SuperLink declares the node
    offline (2 x 30 s after its last heartbeat), with a NODE_UNAVAILABLE error reply for it."""
    out, times = _run_with_kill(tmp_path, round_timeout=0.0, run_timeout=240)
    ids = out["node_ids"]
    survivors = sorted(ids[:2])
    assert out["arrays"] == [[3.0] * 10], out["logs"]
    _, r2, r3 = out["rounds"]
    assert r2["ok"] == survivors, r2
    assert len(r2["errors"]) == 1, r2
    err = r2["errors"][0]
    assert err["code"] == NODE_UNAVAILABLE and err["lost_node_id"] == ids[2], err
    assert err["src_node_id"] == SUPERLINK_NODE_ID, err
    delay = r2["returned_at"] - times["killed_at"]
    print(f"[flower_deploy] kill -> NODE_UNAVAILABLE reply after {delay:.1f} s")
    assert 30.0 <= delay <= 75.0, delay
    # by round 3 the SuperLink no longer lists the dead node
    assert r3["sampled"] == survivors and r3["ok"] == survivors and r3["errors"] == [], r3
    assert out["nodes_at_end"] == survivors
