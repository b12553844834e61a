"""Secure aggregation that spans machines: combiners under a top-level server (two-level SecAgg).

One aggregation server does not scale to every client of a large federation; platforms built for
scale put *combiners* under a reducer (FEDn). Here every level is a secure sum:

Level 1 (each combiner). Client ``c`` belongs to combiner ``c mod combiners`` (public and fixed, so a
    deployment's client knows where to connect). Every client encodes its weighted update exactly as
    :class:`SecureSum` does, on the grid planned for the *whole* round (all combiners' clients: the
    total must fit the ring), and the combiner runs one SecAgg/SecAgg+ session (``secure``'s graph,
    threshold, malicious mode) over its sampled clients. The combiner learns only its clients' sum
    ``S_j`` in ``Z_(2^bits)`` (never one client's words: each session is the ordinary protocol).
Level 2 (top). The combiners are the clients of one more session, with ``S_j`` as their inputs, at the
    same ring width; the top server unmasks ``sum_j S_j`` only, and decodes it as :class:`SecureSum`
    would the flat round's sum. Neither level's server sees a single client's update, and the top
    does not see a combiner's sum either.

Dropout is handled at both levels by the protocol itself: a client that vanishes inside a combiner's
session is dropped there (the combiner's sum covers its survivors; below its threshold the combiner's
session aborts and that combiner sits the top session out), and a combiner that vanishes in the top
session is dropped there (its masks are reconstructed by the other combiners). The result is the exact
sum of the surviving clients of the surviving combiners, or, when fewer than the top threshold of
combiners remain, a clean abort (:class:`~secagg.errors.AbortError`).

What a combiner's sum hides: a combiner is a server for its clients, so as in secure bucketing its sum
hides an honest client only behind other honest ones: ``min_clients`` (default 3) is the fewest
sampled clients a combiner may sum; a round with a combiner below it is refused
(:class:`ConfigError`) rather than run with a weak sum.

Deployed (:mod:`secagg.two_level`, ``secagg serve --combiners M`` and ``secagg serve --combiner J``),
the combiners are processes of their own and each adds its survivors' count to its sum as one more
word, so that the top learns the count the decoding needs; here, in one process, the survivors are
known directly. The two give the same sums.

Costs. A client's work and traffic are those of a SecAgg+ session of its combiner's size; a
combiner's are a server's of that size plus one client's of the top session (``m`` members); the top
server's are a server's of ``m`` members. ``benchmarks/hierarchical_scale.py`` measures them against
one flat session of the same clients.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import torch

from secagg.aggregation.base import Aggregate, Aggregator, AggState, UpdateBatch
from secagg.aggregation.secure import SecureSum, simulated_dropouts
from secagg.errors import AbortError, ConfigError
from secagg.parallel import ClientExecutor, LocalExecutor
from secagg.protocol.messages import SessionParams, Stage
from secagg.protocol.runner import SessionReport, run_session
from secagg.seeding import derive_seed, numpy_rng
from secagg.validation import check_int, check_real

__all__ = ["HierarchicalSecureSum", "TwoLevelReport", "combiner_session"]


def combiner_session(job: tuple[int, SessionParams, dict[int, np.ndarray], dict[int, Stage]]
                     ) -> tuple[int, SessionReport | None, float]:
    """One combiner's session (module level, so an executor can run it in another process):
    ``(combiner, its report or None when it aborted below its threshold, wall seconds)``."""
    j, params, inputs, drop = job
    start = time.perf_counter()
    try:
        report: SessionReport | None = run_session(params, inputs, drop_before=drop)
    except AbortError:
        report = None
    return j, report, time.perf_counter() - start


@dataclass(frozen=True)
class TwoLevelReport:
    """One two-level round: the top sum (words mod 2^bits), who it covers, and what each level moved."""

    total: np.ndarray
    combiner_sums: dict[int, np.ndarray]
    survivors: tuple[int, ...]  # the clients whose input is in ``total``
    combiners: tuple[int, ...]  # the combiners whose sum is in ``total``
    client_bytes: list[int]  # sent + received, per client that completed its combiner's session
    combiner_bytes: dict[int, int]  # per combiner: its session as a server + its top session as a client
    top_bytes: int
    #: wall seconds: ``combiner_J`` (its whole session, its clients' work included, where it ran),
    #: ``level1`` (all combiners, as the executor ran them) and ``top`` (in this process)
    seconds: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class HierarchicalSecureSum(Aggregator, kind="hierarchical-secure-sum"):
    """The (weighted) mean through ``combiners`` combiner sessions and one top session (see the module
    docstring). ``secure``: the encoding and the sessions' parameters (graph, threshold, malicious mode,
    simulated client ``dropout``); ``combiner_dropout``: fraction of the combiners that vanish before
    their top-level masked input (simulation); ``min_clients``: the fewest sampled clients a combiner
    may sum."""

    combiners: int = 10
    secure: SecureSum = field(default_factory=SecureSum)
    combiner_dropout: float = 0.0
    min_clients: int = 3

    def __post_init__(self) -> None:
        check_int("combiners", self.combiners, minimum=2)
        check_real("combiner_dropout", self.combiner_dropout, ge=0.0, lt=1.0)
        check_int("min_clients", self.min_clients, minimum=2)
        if not isinstance(self.secure, SecureSum):
            raise ConfigError(f"secure: expected a SecureSum, got {type(self.secure).__name__}")

    #: a deployment runs each combiner's session in a combiner process (:mod:`secagg.two_level`,
    #: ``secagg serve --combiner``) and the top session on the server (see :func:`secagg.placement.place`)
    combines_sessions: ClassVar[bool] = True

    def combiner_of(self, client_id: int) -> int:
        """The combiner client ``client_id`` belongs to (public, fixed for the run)."""
        return int(client_id) % self.combiners

    def groups(self, client_ids: tuple[int, ...]) -> dict[int, tuple[int, ...]]:
        """Combiner -> its sampled clients (sorted), for the combiners with any; :class:`ConfigError`
        when one holds fewer than ``min_clients``."""
        out: dict[int, list[int]] = {}
        for c in sorted(client_ids):
            out.setdefault(self.combiner_of(c), []).append(c)
        small = {j: len(m) for j, m in out.items() if len(m) < self.min_clients}
        if small:
            sizes = sorted(set(small.values()))
            raise ConfigError(f"min_clients: combiners {sorted(small)} would sum {sizes} "
                              f"client(s), below min_clients={self.min_clients} (a combiner's sum must hide "
                              f"each client among others); sample more clients per round or use fewer "
                              f"combiners")
        if len(out) < 2:
            raise ConfigError("combiners: the round's clients sit under fewer than 2 combiners; the top "
                              "session needs 2")
        return {j: tuple(m) for j, m in out.items()}

    def top_params(self, combiner_ids: tuple[int, ...], words: int, round_index: int) -> SessionParams:
        """The top session of a round over these combiners, on ``words`` words each (a deployment's
        combiners add one: their survivors' count, see :mod:`secagg.two_level`)."""
        return self.secure.session_params(tuple(sorted(combiner_ids)), words, round_index)

    def run(self, inputs: dict[int, np.ndarray], words: int, round_index: int, seed: int,
            executor: ClientExecutor | None = None) -> TwoLevelReport:
        """Both levels over the clients' encoded ``inputs`` (``words`` uint32 words each); the exact
        sum of the surviving clients of the surviving combiners, or :class:`AbortError`.
        ``executor``: where the combiners' sessions run (default: one after the other in this process;
        a :class:`~secagg.parallel.RayExecutor` runs each combiner, with its clients, as a Ray task,
        side by side on a cluster); the sums do not depend on it."""
        sums: dict[int, np.ndarray] = {}
        survivors: dict[int, tuple[int, ...]] = {}
        client_bytes: list[int] = []
        combiner_bytes: dict[int, int] = {}
        seconds: dict[str, float] = {}
        started = time.perf_counter()
        jobs = []
        for j, members in self.groups(tuple(inputs)).items():
            drop = simulated_dropouts(members, self.secure.dropout,
                                      numpy_rng(seed, "hierarchical-client-dropout", j))
            jobs.append((j, self.secure.session_params(members, words, round_index),
                         {u: inputs[u] for u in members}, drop))
        for j, report, took in (executor or LocalExecutor()).map(combiner_session, jobs):
            seconds[f"combiner_{j}"] = took
            if report is None:
                continue  # below its threshold: this combiner sits the top session out
            assert report.result is not None
            sums[j], survivors[j] = report.result, report.survivors
            client_bytes += [report.bytes_sent[u] + report.bytes_received[u] for u in report.survivors]
            combiner_bytes[j] = report.server_bytes_sent + report.server_bytes_received
        level1 = time.perf_counter() - started
        if len(sums) < 2:
            raise AbortError(f"only {len(sums)} combiner(s) completed their session; the top needs 2")
        ids = tuple(sorted(sums))
        top_params = self.top_params(ids, words, round_index)
        drop = simulated_dropouts(ids, self.combiner_dropout,
                                  numpy_rng(seed, "hierarchical-combiner-dropout"))
        top: SessionReport = run_session(top_params, sums, drop_before={j: Stage.MASKED_INPUT for j in drop})
        assert top.result is not None
        for j in ids:
            combiner_bytes[j] += top.bytes_sent[j] + top.bytes_received[j]
        covered = tuple(sorted(u for j in top.survivors for u in survivors[j]))
        seconds.update(level1=level1, top=time.perf_counter() - started - level1)
        return TwoLevelReport(top.result, sums, covered, tuple(top.survivors), client_bytes, combiner_bytes,
                              top.server_bytes_sent + top.server_bytes_received, seconds)

    def aggregate(self, batch: UpdateBatch, state: AggState) -> Aggregate:
        secure = self.secure
        inputs, clipped_fraction = secure.encode_batch(batch)  # on the whole round's grid: the total fits
        n, d = batch.updates.shape
        rotation = secure.rotation_seed(batch.seed, batch.round)
        report = self.run(inputs, secure.words(d), batch.round, derive_seed(batch.seed, "hierarchical"))
        mean, _ = secure.decode_sum(report.total, n, len(report.survivors), d, rotation)
        metrics = {
            "survivors": float(len(report.survivors)), "dropped": float(n - len(report.survivors)),
            "combiners": float(len(report.combiner_sums)), "combiners_summed": float(len(report.combiners)),
            "clipped_fraction": clipped_fraction,
            "client_bytes_mean": float(np.mean(report.client_bytes)),
            "client_bytes_max": float(np.max(report.client_bytes)),
            "combiner_bytes_max": float(max(report.combiner_bytes.values())),
            "top_bytes": float(report.top_bytes),
            **secure.error_metrics(d, n, len(report.survivors)),
        }
        return Aggregate(torch.from_numpy(mean).to(batch.updates.dtype), dict(state), metrics)
