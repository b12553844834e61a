"""Robust aggregation that keeps secure aggregation (Velicheti et al. 2021; Karimireddy et al. 2022).

Each round the sampled clients are shuffled into buckets (seeded, fresh every round). Inside each
bucket the clients run a real secure-aggregation session (:class:`SecureSum`), so the server learns
only the bucket's weighted mean and total weight; a robust rule then aggregates the bucket means.
A minority of attackers can spoil only the buckets they sit in, which the robust rule filters.

What a bucket hides. Secure aggregation must hold against clients colluding with the server, and a
bucket sum hides an honest client's update only if at least one *other honest* client is in it: the
colluders subtract their own updates from the sum. A bucket of ``s`` clients therefore tolerates
``s - 2`` colluders, and a bucket of 2 tolerates none: one colluding client plus the server recover the
other's update exactly (mean times total weight, minus its own weighted update). Even with no collusion
a sum of 2 is a weak shield (DLG gradient inversion on the secure sum of 2 clients still reaches 21.4 dB
PSNR in the default ``secagg bench`` grid). So the rule states its ``threat_model`` and enforces it:

* ``"colluding-clients"`` (default): up to ``floor(secure.corrupt_fraction * n)`` of a round's ``n``
  clients collude with the server, the same assumption the :class:`SecureSum` sessions are sized for.
  The server assigns the buckets, so it can seat every colluder in one bucket: each round needs its
  smallest bucket to hold ``>= floor(corrupt_fraction * n) + 2`` clients, else :class:`ConfigError`
  names ``bucket_size`` and that bound. Construction refuses what cannot hold in general:
  ``bucket_size < 3`` (with any ``corrupt_fraction > 0`` a round of ``>= 1 / corrupt_fraction`` clients
  holds a colluder) and ``corrupt_fraction == 0`` (that is the other threat model; say so).
* ``"honest-but-curious-server"``: the server follows the protocol and colludes with no client; it sees
  only sums of >= 2 updates (with what a sum of 2 still leaks, above). The explicit opt-in for buckets
  of 2.

Every bucket holds at least ``bucket_size`` clients (a short last bucket joins the one before, so a
round of fewer than ``2 * bucket_size`` clients is one bucket). Each round reports
``bucket_collusion_tolerance`` (the colluders the weakest bucket tolerates: the clients its sum covers,
minus 2) and ``assumed_colluders``. Dropouts shrink what a bucket sums (a session completes with as few
as its threshold): the check uses the planned sizes and the metric the clients actually summed, so leave
room for dropouts in ``bucket_size`` where the threat model needs it.

Trade-off: bigger buckets hide each client among more peers and average out more noise, but leave
fewer bucket means for the robust rule (with ``b`` buckets, ``f`` attackers can spoil up to ``f`` of
them, so the rule needs ``f`` well below ``b / 2``, i.e. bucket size ``s < n / (2f)``). Measured by
``benchmarks/secure_bucketing_tradeoff.py`` (n = 40, 4 far-away attackers, median across buckets):
relative error 0.24 at s = 2, 0.34 at s = 3, 0.87 at s = 5, against 1.10 for the secure mean and
0.18 for the median of individual (unprotected) updates.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import ClassVar

import torch

from secagg.aggregation.base import Aggregate, Aggregator, AggState, UpdateBatch, Wrapper
from secagg.aggregation.bucketing import Bucketing
from secagg.aggregation.median import CoordinateMedian
from secagg.aggregation.secure import SecureSum
from secagg.errors import ConfigError, UpdateError
from secagg.layout import ParamLayout
from secagg.seeding import derive_seed
from secagg.validation import check_choice, check_int

#: who may collude with the server: clients (up to ``secure.corrupt_fraction``), or nobody
THREAT_MODELS = ("colluding-clients", "honest-but-curious-server")


@dataclass(frozen=True)
class ServerView:
    """What the server learns from one round of secure bucketing, and nothing else.

    ``means``: (buckets, d) each bucket's weighted mean; ``totals``: (buckets,) each bucket's total
    weight (the secure sum's weight coordinate); ``summed``: how many clients each bucket's sum covers.
    """

    means: torch.Tensor
    totals: torch.Tensor
    summed: tuple[int, ...]
    client_bytes_mean: float


@dataclass(frozen=True)
class SecureBucketing(Wrapper, kind="secure-bucketing"):
    """Secure aggregation inside buckets of at least ``bucket_size`` clients, ``inner`` across bucket means.

    ``threat_model``: ``"colluding-clients"`` (default; needs ``bucket_size >= 3`` and, each round of n
    clients, buckets of ``>= floor(secure.corrupt_fraction * n) + 2``) or ``"honest-but-curious-server"``
    (no client colludes; the opt-in for buckets of 2). See the module docstring.
    """

    bucket_size: int = 5
    inner: Aggregator = field(default_factory=CoordinateMedian)
    secure: SecureSum = field(default_factory=SecureSum)
    threat_model: str = "colluding-clients"

    def __post_init__(self) -> None:
        check_int("bucket_size", self.bucket_size, minimum=2)
        check_choice("threat_model", self.threat_model, THREAT_MODELS)
        super().__post_init__()
        if not isinstance(self.secure, SecureSum):
            raise ConfigError(f"secure: expected a SecureSum, got {type(self.secure).__name__}")
        if self.threat_model != "colluding-clients":
            return
        if self.secure.corrupt_fraction == 0.0:
            raise ConfigError("threat_model: 'colluding-clients' with secure.corrupt_fraction = 0 assumes no "
                              "client colludes; that is threat_model='honest-but-curious-server', say so")
        if self.bucket_size < 3:
            raise ConfigError(
                f"bucket_size: must be >= 3 under threat_model='colluding-clients', got {self.bucket_size}: "
                f"a bucket of s clients tolerates s - 2 colluders, so in a bucket of 2 one client colluding "
                f"with the server (secure.corrupt_fraction={self.secure.corrupt_fraction:g}) recovers the "
                f"other's update exactly. Use bucket_size >= 3 (and >= floor(corrupt_fraction * n) + 2 "
                f"for rounds of n clients), or state threat_model='honest-but-curious-server'")

    def assumed_colluders(self, num_clients: int) -> int:
        """Clients of a round of ``num_clients`` that may collude with the server: SecureSum's
        ``floor(corrupt_fraction * n)`` under ``"colluding-clients"``, 0 under the honest server."""
        n = check_int("num_clients", num_clients, minimum=0)
        if self.threat_model == "honest-but-curious-server":
            return 0
        return math.floor(self.secure.corrupt_fraction * n + 1e-9)  # SecureSum's own rounding

    def check_collusion(self, num_clients: int) -> int:
        """The colluders a round of ``num_clients`` tolerates (smallest bucket - 2); :class:`ConfigError`
        naming ``bucket_size`` and the bound when it is below :meth:`assumed_colluders`."""
        n = check_int("num_clients", num_clients, minimum=2)
        # buckets() cuts n into buckets of bucket_size, the short last one joining the one before
        smallest = n if n < 2 * self.bucket_size else self.bucket_size
        colluders = self.assumed_colluders(n)
        if smallest - 2 < colluders:
            raise ConfigError(
                f"bucket_size: must be >= {colluders + 2} for a round of {n} clients under "
                f"threat_model='colluding-clients', got {self.bucket_size}"
                + (f" ({n} clients make one bucket)" if smallest == n else "")
                + f": secure.corrupt_fraction={self.secure.corrupt_fraction:g} lets {colluders} of them "
                f"collude with the server, which assigns the buckets and can seat them all in one, and a "
                f"bucket of {smallest} tolerates {smallest - 2}. Raise bucket_size, sample fewer clients per "
                f"round, or lower secure.corrupt_fraction")
        return smallest - 2

    def buckets(self, batch: UpdateBatch) -> list[torch.Tensor]:
        """This round's buckets: a seeded partition into buckets of at least ``bucket_size`` clients
        (a short last bucket joins the one before: fewer than ``2 * bucket_size`` make one bucket)."""
        if batch.num_clients < 2:
            raise UpdateError("updates: secure bucketing needs at least 2 clients")
        groups = Bucketing(bucket_size=self.bucket_size).buckets(batch)
        if len(groups) > 1 and len(groups[-1]) < self.bucket_size:
            groups = [*groups[:-2], torch.cat(groups[-2:])]
        return groups

    # -- one session per bucket, as a deployment drives them (secagg.placement) ----------------------

    #: this rule runs one secure-aggregation session (its ``secure``) per group of clients
    groups_sessions: ClassVar[bool] = True

    def session_groups(self, client_ids: tuple[int, ...], round_seed: int) -> list[tuple[int, ...]]:
        """The round's buckets of ``client_ids`` (in the order given; the partition :meth:`buckets`
        makes of a batch of them with seed ``round_seed``), each sorted; :class:`ConfigError` when the
        round's smallest bucket cannot hide a client from the colluders the threat model assumes."""
        n = len(client_ids)
        self.check_collusion(n)
        placeholder = UpdateBatch(torch.zeros(n, 1), torch.ones(n, dtype=torch.float64), tuple(client_ids),
                                  0, round_seed)
        return [tuple(sorted(client_ids[i] for i in idx.tolist())) for idx in self.buckets(placeholder)]

    def check_group(self, client_ids: tuple[int, ...]) -> None:
        """A client's own check of the bucket the server seated it in: :class:`ConfigError` for fewer
        than ``bucket_size`` clients (every bucket has at least that many)."""
        if len(client_ids) < self.bucket_size:
            raise ConfigError(f"bucket_size: the server seated this client in a bucket of {len(client_ids)}, "
                              f"below bucket_size={self.bucket_size}: its sum would hide too little")

    def aggregate_groups(self, view: ServerView, state: AggState, *, num_clients: int, round_index: int,
                         round_seed: int, layout: ParamLayout | None = None) -> Aggregate:
        """The server's part after the buckets' sessions: ``inner`` over the bucket means (weighted by
        the buckets' total weights) of a round of ``num_clients``."""
        inner_batch = UpdateBatch(view.means, view.totals, tuple(range(len(view.summed))),
                                  round_index, round_seed, layout)
        return self.run_inner(inner_batch, state, buckets=float(len(view.summed)),
                              client_bytes_mean=view.client_bytes_mean,
                              bucket_collusion_tolerance=float(min(view.summed) - 2),
                              assumed_colluders=float(self.assumed_colluders(num_clients)))

    def server_view(self, batch: UpdateBatch) -> ServerView:
        """Run one secure-aggregation session per bucket; what the server learns from them."""
        means, totals, summed, traffic = [], [], [], []
        for b, idx in enumerate(self.buckets(batch)):
            rows = idx.tolist()
            sub = UpdateBatch(batch.updates[idx], batch.weights[idx],
                              tuple(batch.client_ids[i] for i in rows), batch.round,
                              derive_seed(batch.seed, "secure-bucket", b), batch.layout)
            result = self.secure.aggregate(sub, {})
            means.append(result.update)
            # the bucket's total weight is what the secure sum's weight coordinate reveals
            totals.append(batch.weights[idx].sum())
            summed.append(int(result.metrics["survivors"]))
            traffic.append(result.metrics["client_bytes_mean"])
        return ServerView(torch.stack(means), torch.stack(totals), tuple(summed),
                          float(sum(traffic) / len(traffic)))

    def aggregate(self, batch: UpdateBatch, state: AggState) -> Aggregate:
        if batch.num_clients < 2:
            raise UpdateError("updates: secure bucketing needs at least 2 clients")
        self.check_collusion(batch.num_clients)  # before any session runs: refuse, do not report after
        view = self.server_view(batch)
        return self.aggregate_groups(view, state, num_clients=batch.num_clients, round_index=batch.round,
                                     round_seed=batch.seed, layout=batch.layout)
