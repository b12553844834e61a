"""Flower 1.42's own SecAgg+ (``SecAggPlusWorkflow`` + ``secaggplus_mod``), measured through Flower itself.

The baseline for "our SecAgg+ through Flower vs Flower's own": one federated round of Flower's legacy
SecAgg+ pipeline, run by Flower's simulation runtime (``flwr.simulation.run_simulation``, Ray backend,
2 CPUs, one CPU per ClientApp actor), so that Flower's messaging overhead (LinkState, Ray transfers of
every Message and Context) is in the figures exactly as it would be for any other aggregation run
through the same runtime.

What runs
    ServerApp: ``LegacyContext`` + ``DefaultWorkflow(fit_workflow=SecAggPlusWorkflow(...))`` over a
    legacy ``flwr.server.strategy.FedAvg`` (all n clients sampled, no federated evaluation, the global
    model a single float32 array of d zeros). ClientApp: ``ClientApp(client_fn, mods=[timing,
    secaggplus_mod])`` around a ``NumPyClient`` whose ``fit`` returns a fixed pseudo-random update in
    [-1, 1]^d (``default_rng([seed, partition_id])``, no training) with ``num_examples = 1``, so only
    aggregation is timed. Flower's defaults for quantization (clipping range 8, 2^22 levels, masks mod
    2^32); ``max_weight = 1`` so the weights use the full quantization range.

(k, t)
    Flower's ``num_shares`` counts the client's own share (each client shares among its k ring
    neighbours and itself), exactly like this library's SecAgg+ (``own_share_counts``), so Flower gets
    ``num_shares = k + 1`` and ``reconstruction_threshold = t`` with ``(k, t) =
    secaggplus_parameters(n, corrupt_fraction=0.2, dropout_fraction=0.1)`` -- what our library picks
    for the same n (n = 50: k = 16, t = 11; n = 100: k = 32, t = 21). The same (k, t) is used at 0% and
    10% dropout, so both runs have the same graph degree.

Dropout
    ``floor(dropout * n)`` clients (chosen by ``seed``) raise in ``fit``, i.e. inside
    ``secaggplus_mod``'s COLLECT_MASKED_VECTORS stage: they have advertised keys and sent their shares
    but never send a masked input. This is the dropout Flower's workflow recovers from (the server asks
    the survivors for the dropped clients' ``sk1`` shares). A client that drops earlier, after setup
    but before its shares are forwarded, makes Flower 1.42's round fail: the survivors are asked for an
    ``sk1`` share they never received (``secaggplus_mod._unmask``: ``state.sk1_share_dict[nid]``
    raises KeyError, the server then lacks shares and halts). ``drop_stage="share_keys"`` shows this:
    ``run_flower_secaggplus`` raises ``RuntimeError`` (round did not complete).

Warm-up
    Before the round the ServerApp sends every node one (untimed) GET_PROPERTIES message, so that the
    Ray actors have loaded the ClientApp: a cold start adds ~4 s to the first stage, which a running
    federation does not pay per round.

What is timed (``time.perf_counter``)
    client_s: per message, the time in the ClientApp's mod chain below an outermost timing mod
        (``secaggplus_mod`` + the NumPyClient conversion + ``fit``), summed over the round's four
        stages, averaged over the clients that finished the round. ``client_secagg_s`` subtracts the
        time spent in ``fit`` itself (generating the fixed update: the stand-in for training).
        ``client_cpu_s``: the same span in CPU time of the thread running the ClientApp
        (``time.thread_time``), which other load on the machine inflates far less than wall time.
    server stages: wall time of each of ``setup_stage``, ``share_keys_stage``,
        ``collect_masked_vectors_stage``, ``unmask_stage`` (a subclass of ``SecAggPlusWorkflow``).
        ``unmask_s`` is the whole unmask stage as Flower runs it: sending the survivor/dropped lists,
        waiting for the clients' shares (``unmask_wait_s``), Shamir reconstruction (``unmask_shamir_s``,
        time in ``combine_shares``), regenerating masks (``unmask_prg_s``, time in ``pseudo_rand_gen``
        and ``generate_shared_key``) and the strategy's ``aggregate_fit`` (``unmask_aggregate_fit_s``).
    round_s: the whole ``SecAggPlusWorkflow.__call__`` (all four stages, all messaging).
    sim_wall_s: the whole ``run_simulation`` call (Ray start-up and shut-down included).

How bytes are counted
    Every Message into and out of a client is serialized with Flower's own protobuf serde
    (``flwr.common.serde.message_to_proto(msg).ByteSize()``: metadata + RecordDict content, the form
    Flower 1.42's gRPC messages carry), in the timing mod, outside the timed section, the incoming one
    before ``secaggplus_mod`` mutates it. ``bytes_per_client`` is down + up summed over the four stages,
    averaged over the clients that finished the round; ``bytes_model_down`` is the part that is the
    global model in the FitIns (``array_record_to_proto(...).ByteSize()``), which any FedAvg round
    sends, and ``bytes_secagg_per_client`` the rest. Flower uploads the masked vector as int64
    (8 bytes per coordinate, ``np.save`` format) plus one masked weight.

Correctness: the released mean is compared with the mean of the survivors' updates (``max_abs_err``;
Flower's stochastic quantization error is below 2 * 8 / 2^22 = 3.8e-6 per coordinate).

    python benchmarks/flower_baseline.py --clients 50 --dims 100000 --dropout 0 0.1 --json flower.json

From another script (``benchmarks/`` on ``sys.path``)::

    from flower_baseline import run_flower_secaggplus
    figures = run_flower_secaggplus(n=50, d=100_000, dropout=0.1, seed=0)
    figures["client_s"], figures["unmask_s"], figures["bytes_per_client"]
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import shutil
import sys
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import numpy as np

DROP_MARK = "flower_baseline: simulated dropout"
STAGES = ("setup", "share_keys", "collect_masked_vectors", "unmask")
CORRUPT_FRACTION = 0.2  # the fraction our benchmarks size (k, t) for (benchmarks/secagg_speed.py default)
DESIGN_DROPOUT = 0.1  # (k, t) sized for 10% dropout, used at 0% and 10% alike
CLIPPING_RANGE = 8.0  # Flower's defaults
QUANTIZATION_RANGE = 1 << 22
MODULUS_RANGE = 1 << 32
MAX_WEIGHT = 1.0


def flower_parameters(n: int, corrupt_fraction: float = CORRUPT_FRACTION,
                      design_dropout: float = DESIGN_DROPOUT) -> tuple[int, int, int]:
    """``(k, num_shares, threshold)`` for Flower: our finder's (k, t), ``num_shares = k + 1``."""
    from secagg.protocol.finder import secaggplus_parameters

    k, t = secaggplus_parameters(n, corrupt_fraction, design_dropout)
    return k, k + 1, t


def dropped_partitions(n: int, dropout: float, seed: int) -> frozenset[int]:
    """The partition ids that drop (not secret: a benchmark's choice)."""
    m = math.floor(dropout * n + 1e-9)
    return frozenset(int(p) for p in np.random.default_rng([seed, n, 0xD10]).choice(n, m, replace=False))


def client_update(seed: int, partition: int, d: int) -> np.ndarray:
    """Client ``partition``'s fixed update: uniform in [-1, 1]^d, float32."""
    return np.random.default_rng([seed, partition]).uniform(-1.0, 1.0, d).astype(np.float32)


# ---------------------------------------------------------------------------------------------------
# ClientApp side (runs in the Ray actors)


def _make_client_app(d: int, seed: int, dropped: frozenset[int], drop_stage: str, record_dir: str) -> Any:
    from flwr.client import ClientApp, NumPyClient
    from flwr.client.mod import secaggplus_mod

    class FixedUpdateClient(NumPyClient):
        def __init__(self, partition: int) -> None:
            self.partition = partition

        def fit(self, parameters: list[np.ndarray], config: dict[str, Any]):
            if drop_stage == "collect_masked_vectors" and self.partition in dropped:
                raise RuntimeError(f"{DROP_MARK} (partition {self.partition})")
            start = time.perf_counter()
            update = client_update(seed, self.partition, d)
            return [update], 1, {"bench_fit_s": time.perf_counter() - start}

    def client_fn(context: Any) -> Any:
        return FixedUpdateClient(int(context.node_config["partition-id"])).to_client()

    def timing_mod(msg: Any, ctxt: Any, call_next: Callable[[Any, Any], Any]) -> Any:
        from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key
        from flwr.common.serde import array_record_to_proto, message_to_proto

        cfg = msg.content.config_records.get(RECORD_KEY_CONFIGS)
        stage = str(cfg[Key.STAGE]) if cfg is not None and Key.STAGE in cfg else msg.metadata.message_type
        bytes_in = message_to_proto(msg).ByteSize()
        model_in = sum(array_record_to_proto(r).ByteSize() for r in msg.content.array_records.values())
        row: dict[str, Any] = {"node": int(msg.metadata.dst_node_id),
                               "partition": int(ctxt.node_config["partition-id"]),
                               "group": msg.metadata.group_id, "stage": stage,
                               "bytes_in": bytes_in, "model_bytes_in": model_in}
        start, cpu = time.perf_counter(), time.thread_time()
        try:
            if stage == drop_stage and row["partition"] in dropped:
                raise RuntimeError(f"{DROP_MARK} (partition {row['partition']}, stage {stage})")
            out = call_next(msg, ctxt)
        except BaseException:
            row |= {"client_s": time.perf_counter() - start, "client_cpu_s": time.thread_time() - cpu,
                    "error": True, "bytes_out": 0, "fit_s": 0.0}
            _append(record_dir, row)
            raise
        row["client_s"], row["client_cpu_s"] = time.perf_counter() - start, time.thread_time() - cpu
        fit_s = 0.0
        for rec in out.content.metric_records.values():  # take our timing out of the reply
            if "bench_fit_s" in rec:
                fit_s = float(rec.pop("bench_fit_s"))
        for rec in out.content.config_records.values():
            if "bench_fit_s" in rec:
                fit_s = float(rec.pop("bench_fit_s"))
        row |= {"fit_s": fit_s, "error": out.has_error(), "bytes_out": message_to_proto(out).ByteSize()}
        _append(record_dir, row)
        return out

    return ClientApp(client_fn=client_fn, mods=[timing_mod, secaggplus_mod])


def _append(record_dir: str, row: dict[str, Any]) -> None:
    with open(os.path.join(record_dir, f"{os.getpid()}-{threading.get_ident()}.jsonl"), "a") as fh:
        fh.write(json.dumps(row) + "\n")


# ---------------------------------------------------------------------------------------------------
# ServerApp side (runs in a thread of this process)


class _GridTimer:
    """Delegates to a Grid and adds the time spent in ``send_and_receive`` to ``sink[key]``."""

    def __init__(self, grid: Any, sink: dict[str, float], key: str) -> None:
        self._grid, self._sink, self._key = grid, sink, key

    def send_and_receive(self, *args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return self._grid.send_and_receive(*args, **kwargs)
        finally:
            self._sink[self._key] = self._sink.get(self._key, 0.0) + time.perf_counter() - start

    def __getattr__(self, name: str) -> Any:
        return getattr(self._grid, name)


def _warm_up(grid: Any, n: int) -> None:
    """One GET_PROPERTIES message to every node before the round, so that the Ray actors have loaded
    the ClientApp (a cold start costs seconds, and is not what a running federation pays per round)."""
    from flwr.app import Message
    from flwr.common import GetPropertiesIns
    from flwr.common.constant import MessageTypeLegacy
    from flwr.compat.common import recorddict_compat as compat

    while len(nodes := list(grid.get_node_ids())) < n:
        time.sleep(0.1)
    grid.send_and_receive([Message(content=compat.getpropertiesins_to_recorddict(GetPropertiesIns({})),
                                   dst_node_id=nid, message_type=MessageTypeLegacy.GET_PROPERTIES,
                                   group_id="warm-up") for nid in nodes])


def _make_server_app(n: int, d: int, num_shares: int, threshold: int, rounds: int, warmup: bool,
                     sink: dict[str, Any]) -> Any:
    import flwr.server.workflow.secure_aggregation.secaggplus_workflow as sw
    from flwr.common import ndarrays_to_parameters, parameters_to_ndarrays
    from flwr.server import LegacyContext, ServerApp, ServerConfig
    from flwr.server.strategy import FedAvg
    from flwr.server.workflow import DefaultWorkflow, SecAggPlusWorkflow

    class TimedFedAvg(FedAvg):
        def aggregate_fit(self, server_round, results, failures):
            start = time.perf_counter()
            try:
                return super().aggregate_fit(server_round, results, failures)
            finally:
                sink["rounds"][-1]["unmask_aggregate_fit_s"] = time.perf_counter() - start
                sink["rounds"][-1]["results"] = len(results)
                sink["rounds"][-1]["failures"] = len(failures)

    def timed(fn: Callable[..., Any], row: dict[str, float], key: str) -> Callable[..., Any]:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                row[key] = row.get(key, 0.0) + time.perf_counter() - start
        return wrapper

    class TimedSecAggPlus(SecAggPlusWorkflow):
        def __call__(self, grid, context):
            sink["rounds"].append({"completed": False})
            start = time.perf_counter()
            super().__call__(grid, context)
            sink["rounds"][-1]["round_s"] = time.perf_counter() - start

        def _stage(self, name: str, fn: Callable[..., bool], grid: Any, context: Any, state: Any) -> bool:
            row = sink["rounds"][-1]
            start = time.perf_counter()
            ok = fn(_GridTimer(grid, row, f"{name}_wait_s"), context, state)
            row[f"{name}_s"] = time.perf_counter() - start
            row[f"{name}_active"] = len(state.active_node_ids)
            return ok

        def setup_stage(self, grid, context, state):
            return self._stage("setup", super().setup_stage, grid, context, state)

        def share_keys_stage(self, grid, context, state):
            return self._stage("share_keys", super().share_keys_stage, grid, context, state)

        def collect_masked_vectors_stage(self, grid, context, state):
            return self._stage("collect_masked_vectors", super().collect_masked_vectors_stage,
                               grid, context, state)

        def unmask_stage(self, grid, context, state):
            row = sink["rounds"][-1]
            row["unmask_dead"] = len(state.sampled_node_ids - state.active_node_ids)
            saved = sw.combine_shares, sw.pseudo_rand_gen, sw.generate_shared_key
            sw.combine_shares = timed(saved[0], row, "unmask_shamir_s")
            sw.pseudo_rand_gen = timed(saved[1], row, "unmask_prg_s")
            sw.generate_shared_key = timed(saved[2], row, "unmask_prg_s")
            try:
                ok = self._stage("unmask", super().unmask_stage, grid, context, state)
            finally:
                sw.combine_shares, sw.pseudo_rand_gen, sw.generate_shared_key = saved
            row["completed"] = bool(ok)
            return ok

    app = ServerApp()

    @app.main()
    def main(grid: Any, context: Any) -> None:
        strategy = TimedFedAvg(
            fraction_fit=1.0, fraction_evaluate=0.0, min_fit_clients=n, min_available_clients=n,
            initial_parameters=ndarrays_to_parameters([np.zeros(d, dtype=np.float32)]))
        legacy = LegacyContext(context=context, config=ServerConfig(num_rounds=rounds), strategy=strategy)
        workflow = TimedSecAggPlus(num_shares=num_shares, reconstruction_threshold=threshold,
                                   max_weight=MAX_WEIGHT, clipping_range=CLIPPING_RANGE,
                                   quantization_range=QUANTIZATION_RANGE, modulus_range=MODULUS_RANGE,
                                   timeout=None)
        if warmup:
            _warm_up(grid, n)
        DefaultWorkflow(fit_workflow=workflow)(grid, legacy)
        from flwr.compat.common import recorddict_compat as compat
        from flwr.server.workflow.constant import MAIN_PARAMS_RECORD

        params = compat.arrayrecord_to_parameters(legacy.state.array_records[MAIN_PARAMS_RECORD], True)
        sink["final"] = parameters_to_ndarrays(params)

    return app


# ---------------------------------------------------------------------------------------------------
# One measurement


class DropFilter(logging.Filter):
    """Hides the log lines of the simulated dropouts (the messages carrying ``mark``)."""

    def __init__(self, mark: str = DROP_MARK) -> None:
        super().__init__()
        self.mark = mark

    def filter(self, record: logging.LogRecord) -> bool:
        return self.mark not in record.getMessage()


def mean(xs: list[float]) -> float:
    """The mean of ``xs`` (NaN when empty)."""
    return float(np.mean(xs)) if xs else float("nan")


def client_figures(finished: dict[int, dict[str, dict[str, Any]]], ids: list[int], stages: tuple[str, ...],
                   released: np.ndarray, seed: int, d: int, where: str) -> dict[str, Any]:
    """One side's per-client figures of a round (means over the finishing clients ``ids`` of their
    per-stage rows in ``finished``) and the error of its ``released`` mean against the mean of their
    updates: :class:`RuntimeError` if that is not within the quantization error."""

    def total(p: int, field: str) -> float:
        return sum(finished[p][s][field] for s in stages)

    client_s = [total(p, "client_s") for p in ids]
    fit_s = [total(p, "fit_s") for p in ids]
    down = [total(p, "bytes_in") for p in ids]
    up = [total(p, "bytes_out") for p in ids]
    model = [total(p, "model_bytes_in") for p in ids]
    expected = np.mean([client_update(seed, p, d).astype(np.float64) for p in ids], axis=0)
    err = float(np.max(np.abs(np.asarray(released, dtype=np.float64) - expected)))
    if err > 1e-3:
        raise RuntimeError(f"{where} released a wrong mean: max abs error {err}")
    return {
        "clients_finished": len(ids),
        "client_s": mean(client_s), "client_s_max": float(max(client_s)),
        "client_secagg_s": mean([c - f for c, f in zip(client_s, fit_s, strict=True)]),
        "client_fit_s": mean(fit_s), "client_cpu_s": mean([total(p, "client_cpu_s") for p in ids]),
        "client_s_by_stage": {s: mean([finished[p][s]["client_s"] for p in ids]) for s in stages},
        "bytes_per_client": mean([a + b for a, b in zip(down, up, strict=True)]),
        "bytes_down_per_client": mean(down), "bytes_up_per_client": mean(up),
        "bytes_model_down": mean(model),
        "bytes_secagg_per_client": mean([a + b - m for a, b, m in zip(down, up, model, strict=True)]),
        "bytes_by_stage": {s: {"down": mean([finished[p][s]["bytes_in"] for p in ids]),
                               "up": mean([finished[p][s]["bytes_out"] for p in ids])} for s in stages},
        "max_abs_err": err,
    }


def run_flower_secaggplus(n: int, d: int, dropout: float, seed: int = 0, *,
                          corrupt_fraction: float = CORRUPT_FRACTION, design_dropout: float = DESIGN_DROPOUT,
                          rounds: int = 1, warmup: bool = True, cpus: int = 2,
                          drop_stage: str = "collect_masked_vectors", shares: tuple[int, int] | None = None,
                          verbose: bool = False) -> dict[str, Any]:
    """One run of Flower 1.42's SecAgg+ through ``run_simulation``; the figures of its last round.

    ``n`` clients, ``d`` float32 parameters, ``floor(dropout * n)`` clients dropping at the masked-input
    stage; Flower's ``num_shares = k + 1`` and ``reconstruction_threshold = t`` with
    ``(k, t) = secaggplus_parameters(n, corrupt_fraction, design_dropout)``. ``cpus`` Ray CPUs, one per
    ClientApp actor. ``warmup``: first send every node one GET_PROPERTIES message (untimed), so that
    the round is timed on a warm runtime. ``drop_stage``: where the dropped clients fail
    (``"share_keys"`` makes Flower 1.42's round fail: see the module docstring). ``shares``:
    ``(num_shares, threshold)`` for Flower instead of the finder's. Returns a flat dict (seconds,
    bytes; see the module docstring for what each is).
    Raises ``RuntimeError`` when the round did not complete or the released mean is wrong.
    """
    import flwr
    from flwr.simulation import run_simulation

    if drop_stage not in STAGES[1:3]:
        raise ValueError(f"drop_stage: one of {STAGES[1:3]}, got {drop_stage!r}")
    if shares is None:
        k, num_shares, threshold = flower_parameters(n, corrupt_fraction, design_dropout)
        note = (f"secaggplus_parameters({n}, {corrupt_fraction}, {design_dropout}) -> k={k}, t={threshold}; "
                f"Flower num_shares = k + 1 = {num_shares} (own share counted)")
    else:
        num_shares, threshold = shares
        k = num_shares - 1
        note = f"given: num_shares={num_shares}, threshold={threshold}"
    dropped = dropped_partitions(n, dropout, seed)
    record_dir = tempfile.mkdtemp(prefix="flower_baseline_")
    sink: dict[str, Any] = {"rounds": []}
    flwr_logger = logging.getLogger("flwr")
    drop_filter = DropFilter()
    flwr_logger.addFilter(drop_filter)
    if not verbose:
        level = flwr_logger.level
        flwr_logger.setLevel(logging.WARNING)
    backend_config = {"client_resources": {"num_cpus": 1, "num_gpus": 0.0},
                      "init_args": {"num_cpus": cpus, "num_gpus": 0, "include_dashboard": False,
                                    "log_to_driver": verbose}}
    try:
        start = time.perf_counter()
        run_simulation(server_app=_make_server_app(n, d, num_shares, threshold, rounds, warmup, sink),
                       client_app=_make_client_app(d, seed, dropped, drop_stage, record_dir),
                       num_supernodes=n, backend_name="ray", backend_config=backend_config,
                       verbose_logging=verbose)
        sim_wall = time.perf_counter() - start
        rows = []
        for name in os.listdir(record_dir):
            with open(os.path.join(record_dir, name)) as fh:
                rows += [json.loads(line) for line in fh if line.strip()]
    finally:
        flwr_logger.removeFilter(drop_filter)
        if not verbose:
            flwr_logger.setLevel(level)
        shutil.rmtree(record_dir, ignore_errors=True)

    if len(sink["rounds"]) != rounds or not sink["rounds"][-1].get("completed") or "final" not in sink:
        raise RuntimeError(f"Flower's SecAgg+ round did not complete (n={n}, d={d}, dropout={dropout}): "
                           f"{sink['rounds']}")
    server = sink["rounds"][-1]
    group = str(rounds)  # the legacy workflow's group_id is the round number
    rows = [r for r in rows if r["group"] == group and r["stage"] in STAGES]
    per_client: dict[int, dict[str, dict[str, Any]]] = defaultdict(dict)
    for r in rows:
        per_client[r["partition"]][r["stage"]] = r
    finished = {p: st for p, st in per_client.items()
                if all(s in st and not st[s]["error"] for s in STAGES)}
    if len(finished) != n - len(dropped) or any(p in dropped for p in finished):
        raise RuntimeError(f"expected the {n - len(dropped)} non-dropped clients to finish every stage, "
                           f"{len(finished)} did")

    ids = sorted(finished)
    figures = client_figures(finished, ids, STAGES, sink["final"][0], seed, d, "Flower's SecAgg+")

    out: dict[str, Any] = {
        "system": "flower-secaggplus", "flwr_version": flwr.__version__,
        "n": n, "d": d, "dropout": dropout, "dropped": len(dropped), "seed": seed,
        "dropout_stage": drop_stage,
        "k": k, "num_shares": num_shares, "threshold": threshold,
        "params_note": note,
        "clipping_range": CLIPPING_RANGE, "quantization_range": QUANTIZATION_RANGE,
        "modulus_range": MODULUS_RANGE, "max_weight": MAX_WEIGHT,
        "backend": f"ray, {cpus} CPUs, 1 CPU per ClientApp actor", "rounds": rounds,
        **figures,
        "round_s": server["round_s"], "sim_wall_s": sim_wall,
        "server_stage_s": {s: server[f"{s}_s"] for s in STAGES},
        "server_wait_s": {s: server.get(f"{s}_wait_s", 0.0) for s in STAGES},
        "unmask_s": server["unmask_s"], "unmask_wait_s": server.get("unmask_wait_s", 0.0),
        "unmask_shamir_s": server.get("unmask_shamir_s", 0.0),
        "unmask_prg_s": server.get("unmask_prg_s", 0.0),
        "unmask_aggregate_fit_s": server.get("unmask_aggregate_fit_s", 0.0),
        "unmask_dead": server["unmask_dead"],
    }
    out["unmask_compute_s"] = out["unmask_s"] - out["unmask_wait_s"]
    return out


# ---------------------------------------------------------------------------------------------------
# Command line


def _row(f: dict[str, Any]) -> str:
    return (f"{f['n']:>4} {f['d']:>8} {f['dropout']:>5.0%} {f['k']:>3} {f['num_shares']:>4} "
            f"{f['threshold']:>3} "
            f"{f['client_s']:>8.3f} {f['client_secagg_s']:>8.3f} {f['unmask_s']:>8.2f} "
            f"{f['unmask_shamir_s']:>7.2f} {f['unmask_prg_s']:>6.2f} {f['round_s']:>8.2f} "
            f"{f['bytes_per_client'] / 1e6:>8.2f} {f['bytes_secagg_per_client'] / 1e6:>8.2f} "
            f"{f['max_abs_err']:>8.1e}")


HEADER = (f"{'n':>4} {'d':>8} {'drop':>5} {'k':>3} {'shr':>4} {'t':>3} {'client_s':>8} {'cl_sa_s':>8} "
          f"{'unmask_s':>8} {'shamir':>7} {'prg':>6} {'round_s':>8} {'MB/cl':>8} {'MB_sa/cl':>8} "
          f"{'max_err':>8}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, nargs="+", default=[50, 100])
    parser.add_argument("--dims", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--dropout", type=float, nargs="+", default=[0.0, 0.1])
    parser.add_argument("--corrupt-fraction", type=float, default=CORRUPT_FRACTION,
                        help="corrupt fraction (k, t) are sized for (with 10%% design dropout)")
    parser.add_argument("--shares", type=int, nargs=2, metavar=("NUM_SHARES", "THRESHOLD"),
                        help="Flower's num_shares and reconstruction_threshold instead of the finder's")
    parser.add_argument("--rounds", type=int, default=1, help="rounds per run; the last one is reported")
    parser.add_argument("--cpus", type=int, default=2, help="Ray CPUs (one per ClientApp actor)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", metavar="OUT", help="write every configuration's figures here")
    parser.add_argument("--verbose", action="store_true", help="Flower's and Ray's logs")
    args = parser.parse_args(argv)

    results = []
    print("Flower 1.42 SecAggPlusWorkflow + secaggplus_mod through run_simulation; client_s: ClientApp "
          "time per round (cl_sa_s: without fit); unmask_s: server unmask stage (shamir, prg: parts)")
    print(HEADER, flush=True)
    for n in args.clients:
        for d in args.dims:
            for dropout in args.dropout:
                fig = run_flower_secaggplus(n, d, dropout, args.seed, corrupt_fraction=args.corrupt_fraction,
                                            rounds=args.rounds, cpus=args.cpus, verbose=args.verbose,
                                            shares=tuple(args.shares) if args.shares else None)
                results.append(fig)
                print(_row(fig), flush=True)
                if args.json:
                    with open(args.json, "w") as fh:
                        json.dump(results, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
