"""FedBN inside a real Flower app (Flower's simulation engine): each client keeps its own BatchNorm
arrays in its ``context.state``; the secure sum carries only the shared arrays, whose new value is
exactly the mean of the clients' changes, and the server's BatchNorm copy never changes."""

from __future__ import annotations

import numpy as np
from flower_sim import simulate
from flwr.app import Array, ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp

from secagg.aggregation import SecureSum
from secagg.integrations.flower import SecAggStrategy, secagg_mod

N, ROUNDS = 4, 2
RULE = SecureSum(value_range=4.0, weighted=False)


def shared_step(partition: int, round_index: int) -> np.ndarray:
    return np.full(3, 0.1 * (partition + 1) + 0.01 * round_index, dtype=np.float32)


def client_app() -> ClientApp:
    app = ClientApp(mods=[secagg_mod(RULE, local_arrays=("bn",))])

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        partition = int(context.node_config["partition-id"])
        round_index = int(msg.content["config"]["server-round"])
        arrays = msg.content["arrays"]
        # FedBN on the client: its own bn (the server's only before its first round), moved locally
        own = context.state.get("own-bn")
        bn = own["bn"].numpy() if isinstance(own, ArrayRecord) else arrays["bn"].numpy()
        bn = bn + np.float32(partition + 1)
        context.state["own-bn"] = ArrayRecord({"bn": Array(bn)})
        trained = ArrayRecord({"w": Array(arrays["w"].numpy() + shared_step(partition, round_index)),
                               "bn": Array(bn)})
        return Message(RecordDict({"arrays": trained, "metrics": MetricRecord({"num-examples": 10})}),
                       reply_to=msg)

    return app


def test_fedbn_through_flower_sends_only_the_shared_arrays_and_keeps_each_clients_bn():
    result: dict = {}
    strategy = SecAggStrategy(RULE, min_available_nodes=N, local_arrays=("bn",))
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        initial = ArrayRecord({"w": Array(np.zeros(3, dtype=np.float32)),
                               "bn": Array(np.zeros(2, dtype=np.float32))})
        out = strategy.start(grid=grid, initial_arrays=initial, num_rounds=ROUNDS)
        result["w"], result["bn"] = out.arrays["w"].numpy().copy(), out.arrays["bn"].numpy().copy()

    simulate(app, client_app(), N)
    expected = sum(np.mean([shared_step(p, r) for p in range(N)], axis=0) for r in range(1, ROUNDS + 1))
    np.testing.assert_allclose(result["w"], expected, atol=1e-5)
    assert np.array_equal(result["bn"], np.zeros(2, dtype=np.float32))
    assert strategy.layout is not None and strategy.layout.dim == 3
    assert all(len(r.survivors) == N and r.aborted is None for r in strategy.history)
