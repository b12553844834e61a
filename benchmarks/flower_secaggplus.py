"""Our SecAgg+ through Flower vs Flower 1.42's own SecAgg+, side by side, both run by Flower itself.

For each configuration (n clients, d float32 parameters, 0% or 10% dropout) this script runs, in one
process and one after the other, two federated rounds on Flower's simulation runtime
(``flwr.simulation.run_simulation``, Ray backend, 2 CPUs, one CPU per ClientApp actor):

* **ours**: this library's SecAgg+ as a Flower app: ``SecAggStrategy(SecureSum(value_range=1.0,
  graph="secaggplus", corrupt_fraction=0.2, dropout_fraction=0.1, weighted=False))`` in the
  ServerApp (Flower's Message API), ``ClientApp(mods=[timing, secagg_mod(same aggregator)])`` with an
  ordinary ``@app.train()`` function (:func:`run_ours_through_flower`);
* **Flower's**: ``SecAggPlusWorkflow`` + ``secaggplus_mod`` over a legacy ``FedAvg``
  (:func:`flower_baseline.run_flower_secaggplus`, see ``benchmarks/flower_baseline.py``).

Both sides get the same clients and the same work: client ``p``'s update is the fixed draw
``flower_baseline.client_update(seed, p, d)`` (uniform in [-1, 1]^d, float32, no training), its
example count 1 (an unweighted mean), the same ``floor(dropout * n)`` clients drop
(``flower_baseline.dropped_partitions``), and both released means are checked against the mean of the
survivors' updates (:class:`RuntimeError` otherwise).

(k, t)
    ``SecureSum(graph="secaggplus", corrupt_fraction=0.2, dropout_fraction=0.1)`` takes the Harary
    degree ``k`` and threshold ``t`` from ``secaggplus_parameters(n, 0.2, 0.1)`` (n = 50: k = 16,
    t = 11; n = 100: k = 32, t = 21; checked here against ``SecureSum.session_params``). In honest
    mode our threshold counts the client's own share (``SessionParams.own_share_counts``: each client
    holds one share of its own secrets, so ``k + 1`` holders, ``t`` of them needed). Flower's
    ``num_shares`` counts the client itself the same way, so Flower runs with ``num_shares = k + 1``
    and ``reconstruction_threshold = t``: the same graph degree and threshold on both sides, at 0% and
    at 10% dropout.

Dropout
    The dropped clients raise at the masked-input stage on both sides: after sharing their keys,
    before sending a masked input. Ours: in the ClientApp's timing mod, on receiving the
    ``MaskRequest`` (their error reply is Flower's report of a failed ClientApp; the survivors then
    reveal the dropped clients' mask-key shares). Flower's: in ``fit``, inside ``secaggplus_mod``'s
    COLLECT_MASKED_VECTORS stage.

Warm-up (both sides alike)
    The Ray actors are loaded with the ClientApp before the timed round by one small untimed
    message to every node: Flower's side sends GET_PROPERTIES (``flower_baseline``); our strategy's
    first round starts with its roster exchange (``hello``: every node answers its client id), which
    happens before the round's first stage and is not in its timings. ``--rounds R`` runs R rounds on
    both sides and reports the last.

What is timed (``time.perf_counter``), on both sides the same way
    client_s: per message, the time inside the outermost ClientApp mod (a timing mod), i.e. the
        secure-aggregation mod, the training function and everything below them, summed over the
        round's messages (ours: the task message and four protocol messages; Flower's: its four
        stages) and averaged over the clients that finished the round. ``client_secagg_s`` subtracts
        the time spent drawing the fixed update (the stand-in for training); ``client_cpu_s`` is the
        same span in CPU time of the thread running the ClientApp (``time.thread_time``), which other
        load on the machine inflates far less than wall time. Flower's own per-message
        work outside the mods (loading the app, (de)serializing Message and Context, Ray transfers)
        is in neither; it is in the server's exchange times.
    unmask_s: ours: the last exchange (``"unmasking"``): ``exchange_s`` (``grid.send_and_receive``
        of the unmask requests: Flower's messaging, the survivors' work, waiting for the last reply)
        plus ``server_s`` (decoding the replies, Shamir reconstruction of the survivors' self-mask
        seeds and the dropped clients' mask keys, regenerating and removing the masks, decoding the
        sum to the mean: the aggregator's server part). Flower's: the whole ``unmask_stage``
        (building and sending the requests, waiting for the shares, ``combine_shares``, regenerating
        the masks, dequantization and the strategy's ``aggregate_fit``). On both sides the masked
        inputs are summed as they arrive, in the stage before. ``unmask_wait_s`` is the messaging
        part, ``unmask_shamir_s`` / ``unmask_prg_s`` the time in Shamir reconstruction / in mask
        regeneration (ours: ``reconstruct`` / ``accumulate_masks`` and the dropped clients' key
        agreements; Flower's: ``combine_shares`` / ``pseudo_rand_gen`` and ``generate_shared_key``).
        Our timings leave out building the unmask requests (done in the stage before) and the
        server's model step after the aggregate (one vector add); both are milliseconds.
    round_s: ours: the round's exchanges and server work (the sum of its timings); Flower's: the
        whole ``SecAggPlusWorkflow`` call.

Bytes
    Every Message into and out of a client is serialized with Flower's own protobuf serde
    (``flwr.common.serde.message_to_proto(msg).ByteSize()``: metadata and RecordDict), in the timing
    mod, outside the timed section. ``bytes_per_client``: down + up over the round's messages,
    averaged over the clients that finished it; ``bytes_model_down``: the global model's ArrayRecord
    in the round's first message (ours: the task message; Flower's: the FitIns), which any FedAvg
    round sends; ``bytes_secagg_per_client``: the rest. Our masked input is d 32-bit words; Flower's
    d int64 values. Not in these figures, but moved by Flower with every message (Ray, between the
    server and the actor running the ClientApp): the node's ``Context``; ours keeps the client's session
    snapshot there (``context_state_bytes``: about 4 d bytes from the first message on, the quantized
    input), while Flower's mod keeps only keys and shares there (its ``fit`` runs at the masked-input
    stage, so the vector never waits between messages). That transfer is part of each exchange's time.

Caveats
    Flower's in-memory grid polls for replies every 0.1 s, so every exchange time on both sides is
    rounded up to a multiple of about 0.1 s (it matters at toy sizes only). The machine's load
    (``os.getloadavg``) before, between and after the
    two sides' runs goes into the JSON: on a shared machine, prefer ``client_cpu_s`` for the clients.

    python benchmarks/flower_secaggplus.py --clients 50 100 --dims 100000 1000000 --dropout 0 0.1 \\
        --json docs/figures/flower_secaggplus.json --plot docs/figures/flower_secaggplus.png
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shutil
import sys
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))  # flower_baseline, beside this script

from flower_baseline import (
    CORRUPT_FRACTION,
    DESIGN_DROPOUT,
    DropFilter,
    client_figures,
    client_update,
    dropped_partitions,
    flower_parameters,
    mean,
    run_flower_secaggplus,
)

DROP_MARK = "flower_secaggplus: simulated dropout"
#: the exchanges of one honest-mode round of ours, named as ``RoundReport.timings`` names them
STAGES = ("advertise_keys", "share_keys", "share_check", "masked_input", "unmasking")
#: the message a client receives -> the stage its reply answers
_STAGE_OF = {"KeyDirectory": "share_keys", "ForwardedShares": "share_check", "MaskRequest": "masked_input",
             "ConsistencyRequest": "consistency_check", "UnmaskRequest": "unmasking"}
DROP_STAGE = "masked_input"


def our_aggregator(corrupt_fraction: float = CORRUPT_FRACTION, design_dropout: float = DESIGN_DROPOUT):
    """Our side's aggregator: SecAgg+ sized for ``corrupt_fraction`` and ``design_dropout``, unweighted."""
    from secagg.aggregation import SecureSum

    return SecureSum(value_range=1.0, graph="secaggplus", corrupt_fraction=corrupt_fraction,
                     dropout_fraction=design_dropout, weighted=False)


def parameters(n: int, corrupt_fraction: float = CORRUPT_FRACTION,
               design_dropout: float = DESIGN_DROPOUT) -> dict[str, Any]:
    """The (k, t) both sides use at ``n`` clients; :class:`RuntimeError` if ours and Flower's differ."""
    session = our_aggregator(corrupt_fraction, design_dropout).session_params(tuple(range(n)), 1)
    k, num_shares, threshold = flower_parameters(n, corrupt_fraction, design_dropout)
    if (session.degree, session.threshold) != (k, threshold) or not session.own_share_counts:
        raise RuntimeError(f"n={n}: our SecureSum uses k={session.degree}, t={session.threshold} "
                           f"(own share counted: {session.own_share_counts}); Flower is given "
                           f"num_shares={num_shares}, threshold={threshold}")
    return {"k": k, "t": threshold, "flower_num_shares": num_shares, "own_share_counts": True}


# ---------------------------------------------------------------------------------------------------
# Our ClientApp (runs in the Ray actors)


def _stage_of(msg: Any) -> tuple[str | None, int | None]:
    """(stage, round) of one of our strategy's messages to a client; (None, None) for another."""
    from secagg.integrations.flower.records import RECORD
    from secagg.protocol.wire import decode

    record = msg.content.get(RECORD)
    if record is None:
        return None, None
    kind, round_index = str(record["stage"]), int(record["round"])
    if kind == "task":
        return "advertise_keys", round_index
    if kind != "protocol":
        return kind, round_index  # "hello"
    name = type(decode(record["data"])).__name__
    return _STAGE_OF.get(name, name), round_index


def _make_our_client_app(aggregator: Any, n: int, d: int, seed: int, dropped: frozenset[int],
                         drop_rounds: tuple[int, ...], record_dir: str) -> Any:
    from flwr.app import Array, ArrayRecord, Message, MetricRecord, RecordDict
    from flwr.clientapp import ClientApp

    from secagg.integrations.flower import secagg_mod
    from secagg.integrations.flower.records import STATE

    fit_box = [0.0]  # the training function's time in this message (one ClientApp object per message)

    def timing_mod(msg: Any, ctxt: Any, call_next: Callable[[Any, Any], Any]) -> Any:
        from flwr.common.serde import array_record_to_proto, message_to_proto

        stage, round_index = _stage_of(msg)
        partition = int(ctxt.node_config["partition-id"])
        row: dict[str, Any] = {"partition": partition, "stage": stage, "round": round_index,
                               "bytes_in": message_to_proto(msg).ByteSize(),
                               "model_bytes_in": sum(array_record_to_proto(r).ByteSize()
                                                     for r in msg.content.array_records.values())}
        fit_box[0] = 0.0
        start, cpu = time.perf_counter(), time.thread_time()
        try:
            if stage == DROP_STAGE and partition in dropped and round_index in drop_rounds:
                raise RuntimeError(f"{DROP_MARK} (partition {partition}, stage {stage})")
            out = call_next(msg, ctxt)
        except BaseException:
            row |= {"client_s": time.perf_counter() - start, "client_cpu_s": time.thread_time() - cpu,
                    "error": True, "bytes_out": 0, "fit_s": fit_box[0]}
            _append(record_dir, row)
            raise
        row["client_s"], row["client_cpu_s"] = time.perf_counter() - start, time.thread_time() - cpu
        row |= {"fit_s": fit_box[0], "error": out.has_error(), "bytes_out": message_to_proto(out).ByteSize()}
        saved = ctxt.state.get(STATE)  # the client's session snapshot, kept in the node's Context
        row["state_bytes"] = len(saved["client"]) if saved is not None and "client" in saved else 0
        _append(record_dir, row)
        return out

    app = ClientApp(mods=[timing_mod, secagg_mod(aggregator)])

    @app.train()
    def train(msg: Any, context: Any) -> Any:
        partition = int(context.node_config["partition-id"])
        start = time.perf_counter()
        update = client_update(seed, partition, d)  # the stand-in for training, as Flower's side's fit
        fit_box[0] = time.perf_counter() - start
        w = msg.content["arrays"]["w"].numpy()
        content = RecordDict({"arrays": ArrayRecord({"w": Array(w + update)}),
                              "metrics": MetricRecord({"num-examples": 1})})
        return Message(content, reply_to=msg)

    return app


def _append(record_dir: str, row: dict[str, Any]) -> None:
    with open(os.path.join(record_dir, f"{os.getpid()}-{threading.get_ident()}.jsonl"), "a") as fh:
        fh.write(json.dumps(row) + "\n")


# ---------------------------------------------------------------------------------------------------
# Our ServerApp (a thread of this process)


def _timed(fn: Callable[..., Any], sink: dict[str, Any], key: str) -> Callable[..., Any]:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            parts = sink["parts"]
            parts[key] = parts.get(key, 0.0) + time.perf_counter() - start
    return wrapper


class _ServerProbes:
    """While in use: the time this process spends in Shamir reconstruction and in mask regeneration
    (our server's unmasking; the clients run in other processes), into ``sink["parts"]``."""

    def __init__(self, sink: dict[str, Any]) -> None:
        self.sink = sink

    def __enter__(self) -> _ServerProbes:
        import secagg.protocol.server as server
        from secagg.crypto.keys import DHKeyPair

        self.saved = server.reconstruct, server.accumulate_masks, DHKeyPair.agree
        server.reconstruct = _timed(self.saved[0], self.sink, "unmask_shamir_s")
        server.accumulate_masks = _timed(self.saved[1], self.sink, "unmask_prg_s")
        DHKeyPair.agree = _timed(self.saved[2], self.sink, "unmask_prg_s")
        return self

    def __exit__(self, *exc: Any) -> None:
        import secagg.protocol.server as server
        from secagg.crypto.keys import DHKeyPair

        server.reconstruct, server.accumulate_masks, DHKeyPair.agree = self.saved


def _make_our_server_app(aggregator: Any, n: int, d: int, rounds: int, sink: dict[str, Any]) -> Any:
    from flwr.app import Array, ArrayRecord
    from flwr.serverapp import ServerApp

    from secagg.integrations.flower import SecAggStrategy

    class Strategy(SecAggStrategy):
        def configure_train(self, server_round, arrays, config, grid):
            sink["parts"] = sink["by_round"][server_round] = {}  # the probes' figures of this round
            return super().configure_train(server_round, arrays, config, grid)

    app = ServerApp()

    @app.main()
    def main(grid: Any, context: Any) -> None:
        strategy = Strategy(aggregator, fraction_train=1.0, fraction_evaluate=0.0, min_train_nodes=n,
                            min_available_nodes=n, stage_timeout=3600.0)
        sink["strategy"] = strategy
        result = strategy.start(grid=grid, initial_arrays=ArrayRecord({"w": Array(np.zeros(d, np.float32))}),
                                num_rounds=rounds, timeout=3600.0)
        if "w" in result.arrays:
            sink["final"] = result.arrays["w"].numpy().copy()

    return app


# ---------------------------------------------------------------------------------------------------
# One measurement of ours


def _backend_config(cpus: int, verbose: bool) -> dict[str, Any]:
    """The Ray backend of ``flower_baseline.run_flower_secaggplus`` (the same on both sides)."""
    return {"client_resources": {"num_cpus": 1, "num_gpus": 0.0},
            "init_args": {"num_cpus": cpus, "num_gpus": 0, "include_dashboard": False,
                          "log_to_driver": verbose}}


def run_ours_through_flower(n: int, d: int, dropout: float, seed: int = 0, *,
                            corrupt_fraction: float = CORRUPT_FRACTION,
                            design_dropout: float = DESIGN_DROPOUT, rounds: int = 1, cpus: int = 2,
                            drop_rounds: tuple[int, ...] | None = None, verbose: bool = False
                            ) -> dict[str, Any]:
    """One run of our SecAgg+ through ``run_simulation`` (``SecAggStrategy`` + ``secagg_mod``); the
    figures of its last round, in the shape of ``flower_baseline.run_flower_secaggplus``'s (and those
    of the earlier rounds in ``"earlier_rounds"``).

    ``n`` clients, ``d`` float32 parameters, ``floor(dropout * n)`` clients dropping at the
    masked-input stage of each round in ``drop_rounds`` (default: every round);
    ``SecureSum(graph="secaggplus")`` sized for ``corrupt_fraction`` and ``design_dropout``. Raises
    ``RuntimeError`` when a round did not complete, the wrong clients survived, or a released mean is
    wrong.
    """
    from flwr.simulation import run_simulation

    aggregator = our_aggregator(corrupt_fraction, design_dropout)
    session = aggregator.session_params(tuple(range(n)), d)
    dropped = dropped_partitions(n, dropout, seed)
    drop_rounds = tuple(range(1, rounds + 1)) if drop_rounds is None else tuple(drop_rounds)
    record_dir = tempfile.mkdtemp(prefix="flower_secaggplus_")
    sink: dict[str, Any] = {"parts": {}, "by_round": {}}
    flwr_logger = logging.getLogger("flwr")
    drop_filter = DropFilter(DROP_MARK)
    flwr_logger.addFilter(drop_filter)
    level = flwr_logger.level
    if not verbose:
        flwr_logger.setLevel(logging.WARNING)
    try:
        start = time.perf_counter()
        with _ServerProbes(sink):
            run_simulation(server_app=_make_our_server_app(aggregator, n, d, rounds, sink),
                           client_app=_make_our_client_app(aggregator, n, d, seed, dropped, drop_rounds,
                                                           record_dir),
                           num_supernodes=n, backend_name="ray",
                           backend_config=_backend_config(cpus, verbose), verbose_logging=verbose)
        sim_wall = time.perf_counter() - start
        rows = []
        for name in os.listdir(record_dir):
            with open(os.path.join(record_dir, name)) as fh:
                rows += [json.loads(line) for line in fh if line.strip()]
    finally:
        flwr_logger.removeFilter(drop_filter)
        flwr_logger.setLevel(level)
        shutil.rmtree(record_dir, ignore_errors=True)

    strategy = sink.get("strategy")
    history = strategy.history if strategy is not None else []
    if len(history) != rounds:
        raise RuntimeError(f"our SecAgg+ run stopped after {len(history)} of {rounds} rounds")
    common = {"n": n, "d": d, "dropout": dropout, "seed": seed, "dropout_stage": DROP_STAGE,
              "k": session.degree, "threshold": session.threshold,
              "own_share_counts": session.own_share_counts,
              "holders": session.degree + 1 if session.own_share_counts else session.degree,
              "params_note": (f"SecureSum(graph='secaggplus', corrupt_fraction={corrupt_fraction}, "
                              f"dropout_fraction={design_dropout}).session_params -> k={session.degree}, "
                              f"t={session.threshold}, own share "
                              f"{'counted (k + 1 holders)' if session.own_share_counts else 'not counted'}"),
              "bits": session.bits, "value_range": aggregator.value_range,
              "backend": f"ray, {cpus} CPUs, 1 CPU per ClientApp actor", "rounds": rounds,
              "sim_wall_s": sim_wall}
    figures = [common | _round_figures(report, rows, sink["by_round"].get(report.round, {}), n, d, seed,
                                       dropped if report.round in drop_rounds else frozenset())
               for report in history]
    return figures[-1] | {"earlier_rounds": figures[:-1]}


def _round_figures(report: Any, rows: list[dict[str, Any]], parts: dict[str, float], n: int, d: int,
                   seed: int, dropped: frozenset[int]) -> dict[str, Any]:
    """One round's figures from the strategy's report, the clients' timing rows and the server probes;
    :class:`RuntimeError` if the round is not the expected one or its released mean is wrong."""
    import flwr

    where = f"our SecAgg+ round {report.round} (n={n}, d={d}, {len(dropped)} dropped)"
    if report.aborted is not None or report.update is None:
        raise RuntimeError(f"{where} did not complete: {report.aborted}; failed: {report.failed}")
    want = tuple(p for p in range(n) if p not in dropped)
    if tuple(report.survivors) != want or set(report.dropped) | set(report.failed) != set(dropped):
        raise RuntimeError(f"{where}: expected survivors {want} and dropped {sorted(dropped)}, got "
                           f"{report.survivors}, dropped {report.dropped}, failed {sorted(report.failed)}")
    timing = {row["stage"]: row for row in report.timings}
    if tuple(timing) != STAGES:
        raise RuntimeError(f"{where}: unexpected exchanges {tuple(timing)} (expected {STAGES})")

    per_client: dict[int, dict[str, dict[str, Any]]] = defaultdict(dict)
    for r in rows:
        if r["round"] == report.round and r["stage"] in STAGES:
            per_client[r["partition"]][r["stage"]] = r
    finished = {p: st for p, st in per_client.items() if all(s in st and not st[s]["error"] for s in STAGES)}
    if tuple(sorted(finished)) != want:
        raise RuntimeError(f"{where}: expected the {len(want)} non-dropped clients to finish every stage, "
                           f"{len(finished)} did")

    ids = list(want)
    figures = client_figures(finished, ids, STAGES, report.update.double().numpy(), seed, d, where)
    out: dict[str, Any] = {
        "system": "ours-secaggplus", "flwr_version": flwr.__version__, "round": report.round,
        "dropped": len(dropped), **figures,
        "context_state_bytes": mean([max(finished[p][s]["state_bytes"] for s in STAGES) for p in ids]),
        "payload_bytes_per_client": mean([report.bytes_to.get(p, 0) + report.bytes_from.get(p, 0)
                                           for p in ids]),
        "round_s": float(sum(r["exchange_s"] + r["server_s"] for r in report.timings)),
        "server_stage_s": {s: timing[s]["exchange_s"] + timing[s]["server_s"] for s in STAGES},
        "server_wait_s": {s: timing[s]["exchange_s"] for s in STAGES},
        "unmask_s": timing["unmasking"]["exchange_s"] + timing["unmasking"]["server_s"],
        "unmask_wait_s": timing["unmasking"]["exchange_s"],
        "unmask_shamir_s": parts.get("unmask_shamir_s", 0.0),
        "unmask_prg_s": parts.get("unmask_prg_s", 0.0),
        "unmask_dead": len(set(report.dropped) | set(report.failed)),
    }
    out["unmask_compute_s"] = out["unmask_s"] - out["unmask_wait_s"]
    return out


# ---------------------------------------------------------------------------------------------------
# Both sides, the table, the JSON, the plot


def _load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def compare(n: int, d: int, dropout: float, seed: int = 0, *, rounds: int = 1, cpus: int = 2,
            corrupt_fraction: float = CORRUPT_FRACTION, verbose: bool = False) -> dict[str, Any]:
    """Both sides for one configuration (ours first, then Flower's), with the ratios Flower / ours."""
    params = parameters(n, corrupt_fraction)
    load_before = _load()
    ours = run_ours_through_flower(n, d, dropout, seed, corrupt_fraction=corrupt_fraction, rounds=rounds,
                                   cpus=cpus, verbose=verbose)
    load_between = _load()
    flower = run_flower_secaggplus(n, d, dropout, seed, corrupt_fraction=corrupt_fraction, rounds=rounds,
                                   cpus=cpus, verbose=verbose)
    load_after = _load()
    return side_by_side(ours, flower, params) | {
        "loadavg": {"before": load_before, "between": load_between, "after": load_after}}


def side_by_side(ours: dict[str, Any], flower: dict[str, Any], params: dict[str, Any] | None = None
                 ) -> dict[str, Any]:
    """One configuration's row: both sides' figures and the ratios Flower / ours."""
    keys = ("client_s", "client_secagg_s", "client_cpu_s", "unmask_s", "unmask_compute_s", "round_s",
            "bytes_per_client", "bytes_secagg_per_client")
    params = params or {"k": ours["k"], "t": ours["threshold"], "flower_num_shares": flower["num_shares"]}
    return {"n": ours["n"], "d": ours["d"], "dropout": ours["dropout"], "dropped": ours["dropped"], **params,
            "ours": ours, "flower": flower,
            "ratio_flower_over_ours": {key: flower[key] / ours[key] if ours[key] else float("nan")
                                       for key in keys}}


def _dim(d: int) -> str:
    e = round(np.log10(d))
    return f"10^{e}" if 10**e == d else str(d)


def table(results: list[dict[str, Any]]) -> str:
    """The markdown table: both sides and the ratios Flower / ours."""
    lines = ["| n | d | dropout | k | t | client s/round: ours | Flower | × | unmask s: ours | Flower | × "
             "| MB/client: ours | Flower | × | of which model MB |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        o, f, x = r["ours"], r["flower"], r["ratio_flower_over_ours"]
        lines.append(
            f"| {r['n']} | {_dim(r['d'])} | {r['dropout']:.0%} | {r['k']} | {r['t']} "
            f"| {o['client_s']:.3g} | {f['client_s']:.3g} | {x['client_s']:.1f} "
            f"| {o['unmask_s']:.3g} | {f['unmask_s']:.3g} | {x['unmask_s']:.1f} "
            f"| {o['bytes_per_client'] / 1e6:.3g} | {f['bytes_per_client'] / 1e6:.3g} "
            f"| {x['bytes_per_client']:.2f} | {o['bytes_model_down'] / 1e6:.3g} |")
    return "\n".join(lines)


def detail_table(results: list[dict[str, Any]]) -> str:
    """Where the time goes: the clients' CPU time and wall time without the stand-in training, the
    unmask stage split into messaging (waiting for the survivors' shares) and the server's own work,
    with its Shamir and mask-regeneration parts; the secure-aggregation bytes without the model (ours /
    Flower's)."""
    lines = ["| n | d | dropout | client CPU s | client s w/o training | unmask wait s | unmask server s "
             "| of which Shamir s | of which masks s | round s | secagg MB/client |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]

    def pair(key: str, scale: float = 1.0) -> str:
        return f"{r['ours'][key] / scale:.3g} / {r['flower'][key] / scale:.3g}"

    for r in results:
        lines.append(f"| {r['n']} | {_dim(r['d'])} | {r['dropout']:.0%} | {pair('client_cpu_s')} "
                     f"| {pair('client_secagg_s')} "
                     f"| {pair('unmask_wait_s')} | {pair('unmask_compute_s')} | {pair('unmask_shamir_s')} "
                     f"| {pair('unmask_prg_s')} | {pair('round_s')} "
                     f"| {pair('bytes_secagg_per_client', 1e6)} |")
    return "\n".join(lines)


def plot(results: list[dict[str, Any]], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"n={r['n']}\nd={_dim(r['d'])}\n{r['dropout']:.0%} drop" for r in results]
    x = np.arange(len(results))
    fig, axes = plt.subplots(2, 1, figsize=(max(7.0, 1.3 * len(results)), 8.0))
    for ax, key, title in ((axes[0], "client_s", "client time per round (s, mean over clients)"),
                           (axes[1], "unmask_s", "server unmask stage (s)")):
        ours = [r["ours"][key] for r in results]
        flower = [r["flower"][key] for r in results]
        ax.bar(x - 0.2, ours, 0.4, label="ours (SecAggStrategy + secagg_mod)", color="tab:blue")
        ax.bar(x + 0.2, flower, 0.4, label="Flower 1.42 (SecAggPlusWorkflow + secaggplus_mod)",
               color="tab:orange")
        for i, (a, b) in enumerate(zip(ours, flower, strict=True)):
            ax.text(i, max(a, b) * 1.15, f"×{b / a:.0f}" if b / a >= 10 else f"×{b / a:.1f}", ha="center",
                    fontsize=8)
        ax.set_yscale("log")
        ax.set_xticks(x, labels, fontsize=7)
        ax.set_title(title, fontsize=10)
        ax.grid(axis="y", which="both", alpha=0.3)
        ax.set_ylim(min(*ours, *flower) / 2, max(*ours, *flower) * 3)
    axes[0].legend(fontsize=7, loc="upper left")
    fig.suptitle("SecAgg+ through Flower's simulation runtime (Ray, 2 CPUs): ours vs Flower's own",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, nargs="+", default=[50, 100])
    parser.add_argument("--dims", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--dropout", type=float, nargs="+", default=[0.0, 0.1])
    parser.add_argument("--rounds", type=int, default=1,
                        help="rounds per run (both sides); the last is reported")
    parser.add_argument("--cpus", type=int, default=2, help="Ray CPUs (one per ClientApp actor)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", metavar="OUT", help="write every configuration's figures here")
    parser.add_argument("--plot", metavar="PNG", help="bar chart of client and unmask time (log scale)")
    parser.add_argument("--verbose", action="store_true", help="Flower's and Ray's logs")
    args = parser.parse_args(argv)

    import flwr

    for n in args.clients:
        p = parameters(n)
        print(f"n={n}: k={p['k']}, t={p['t']} (secaggplus_parameters({n}, {CORRUPT_FRACTION}, "
              f"{DESIGN_DROPOUT}); our threshold counts the client's own share: k + 1 = {p['k'] + 1} "
              f"holders; Flower num_shares = {p['flower_num_shares']}, reconstruction_threshold = {p['t']})",
              flush=True)
    meta = {"flwr_version": flwr.__version__, "python": platform.python_version(),
            "machine": platform.machine(), "cpu_count": os.cpu_count(), "ray_cpus": args.cpus,
            "rounds": args.rounds, "seed": args.seed, "loadavg_start": _load(),
            "note": "ratios are Flower / ours; each configuration runs ours first, then Flower's, in one "
                    "process; loadavg is os.getloadavg() (1, 5, 15 min) before, between and after"}
    results: list[dict[str, Any]] = []
    for n in args.clients:
        for d in args.dims:
            for dropout in args.dropout:
                r = compare(n, d, dropout, args.seed, rounds=args.rounds, cpus=args.cpus,
                            verbose=args.verbose)
                results.append(r)
                o, f = r["ours"], r["flower"]
                print(f"n={n} d={d} dropout={dropout:.0%}: "
                      f"client {o['client_s']:.3f} vs {f['client_s']:.3f} s, "
                      f"unmask {o['unmask_s']:.3f} vs {f['unmask_s']:.3f} s, "
                      f"{o['bytes_per_client'] / 1e6:.2f} vs {f['bytes_per_client'] / 1e6:.2f} MB/client "
                      f"(ours vs Flower; load {r['loadavg']['after'][0]})", flush=True)
                if args.json:
                    meta["loadavg_end"] = _load()
                    Path(args.json).write_text(json.dumps({"meta": meta, "results": results}, indent=1))
    print()
    print(table(results))
    print()
    print("ours / Flower's:")
    print(detail_table(results))
    if args.plot and results:
        plot(results, args.plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
