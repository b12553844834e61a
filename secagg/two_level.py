"""The two-level secure sum in a deployment: the top server's round and a combiner's, as bytes in and out.

:class:`~secagg.aggregation.HierarchicalSecureSum` placed for a deployment
(:func:`secagg.placement.place`) runs on three kinds of machine, each with the same
:class:`~secagg.backend.Pipeline`:

* a **client** connects to its combiner (client ``c`` belongs to combiner ``c mod m``, public) and
  answers it exactly as it would a one-level server, except that it encodes its update on the grid
  of the *whole* round: the first message says how many clients the round has in all (``planned``
  in the :class:`~secagg.transport.envelope.Work` envelope), so that the sum of every combiner's
  sum still fits the ring;
* a **combiner** (:class:`CombinerRound`, ``secagg serve --combiner``) is a client of the top server
  and a server for its clients. The top's first message names the round's clients under it
  (``members``); it runs one ordinary session over them
  (:meth:`~secagg.backend.Pipeline.combiner_server`) and learns only their sum ``S_j`` in
  ``Z_(2^bits)``; then it answers the top with ``[S_j, |survivors_j|]`` as its session input;
* the **top server** (:class:`TopRound`, ``secagg serve`` with ``--combiners``) samples the round's
  clients, groups them by combiner, and runs one session over the combiners. It unmasks
  ``sum_j [S_j, |survivors_j|]`` only: the sum of every surviving client's encoded update and how
  many clients that is (the count its decoding needs, and no more than a one-level server learns),
  never a client's update nor a combiner's sum.

Dropout at both levels is the protocol's own: a client lost inside a combiner's session is dropped
there; a combiner whose session aborts (below its threshold) sits the top session out; a combiner
lost in the top session is dropped there, its masks reconstructed by the others. The result is the
exact sum of the surviving clients of the surviving combiners, or an abort.

Trust. Each combiner is a server for its own clients, with a server's view: the sum of at least
``min_clients`` of them (refused below that, on the client too). The top trusts the combiners'
counts only within bounds it can check: a total outside [the surviving combiners' session
thresholds, the clients seated under them] is a :class:`RemoteProtocolError`, never a silently wrong
mean; a combiner that lies within those bounds, or sums something other than its clients' inputs,
corrupts the round's aggregate as a dishonest one-level server would (integrity, not privacy: as
with any honest-but-curious server).
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import numpy as np
import torch

from secagg.aggregation import Aggregate, AggState
from secagg.backend import ClientRound, ServerRound
from secagg.errors import ConfigError, RemoteProtocolError
from secagg.layout import ParamLayout
from secagg.protocol.messages import SessionParams, Setup
from secagg.protocol.wire import decode
from secagg.transport.envelope import MAX_PLANNED, Work, WorkKind

if TYPE_CHECKING:
    from secagg.aggregation import HierarchicalSecureSum, SecureSum
    from secagg.backend import Pipeline
    from secagg.crypto.keys import SigningKey

__all__ = ["CombinerRound", "TopRound"]


def _parts(pipeline: Pipeline) -> tuple[HierarchicalSecureSum, SecureSum, int]:
    """The two-level sum, its SecureSum, and the words a client's encoded update has."""
    placement = pipeline.placement
    if placement.combiners is None or placement.session is None:
        raise ConfigError(f"aggregator: {pipeline.aggregator.kind!r} is not a two-level secure sum")
    secure = placement.session
    return placement.combiners, secure, secure.words(placement.sum_dim(pipeline.dim))  # type: ignore[attr-defined,return-value]


class TopRound(ServerRound):
    """The top server's side of a two-level round over the sampled ``client_ids``: one session over the
    combiners that hold any of them (``client_ids`` of this round object are those combiners), each
    told its members and the round's client count in its first message. :class:`ConfigError` (from
    :meth:`~secagg.aggregation.HierarchicalSecureSum.groups`) when a combiner would sum fewer than
    ``min_clients`` or fewer than 2 combiners have clients."""

    def __init__(self, pipeline: Pipeline, round_index: int, client_ids: tuple[int, ...], weight_bound: float,
                 public: tuple[float, ...] = (), model_version: bytes | None = None) -> None:
        hier, secure, words = _parts(pipeline)
        groups = hier.groups(tuple(client_ids))
        secure.check_plan(len(client_ids), pipeline.placement.sum_dim(pipeline.dim))  # here, not on clients
        top = hier.top_params(tuple(groups), words + 1, round_index)
        if model_version is not None:
            top = dataclasses.replace(top, model_version=model_version)
        super().__init__(pipeline, round_index, top.client_ids, weight_bound, public, [top],
                         planned=len(client_ids), members=groups)
        #: the sampled clients, and each combiner's (the round's public seating)
        self.invited: tuple[int, ...] = tuple(sorted(client_ids))
        self.groups: dict[int, tuple[int, ...]] = groups
        self.words = words

    @property
    def summed(self) -> int:
        """Once done: how many clients' updates the top sum covers (the count word the combiners added)."""
        if not self.done:
            return 0
        return int(self._servers[0].result[-1])  # type: ignore[index]

    @property
    def seated(self) -> tuple[int, ...]:
        """Once done: the clients seated under the surviving combiners (the survivors are among them)."""
        return tuple(sorted(u for j in self.survivors for u in self.groups[j]))

    def finish(self, state: AggState, layout: ParamLayout | None = None, *,
               reference: torch.Tensor | None = None, global_model: torch.Tensor | None = None) -> Aggregate:
        """The round's aggregate from the top sum (see :meth:`ServerRound.finish`);
        :class:`RemoteProtocolError` when the combiners' counts add up to a number no honest set of
        combiners can report (fewer than their sessions' thresholds, more than their seated clients)."""
        if not self.done:
            raise ConfigError("finish: the round is not done (advance until it returns {})")
        _, secure, words = _parts(self.pipeline)
        placement, pipeline = self.pipeline.placement, self.pipeline
        total = self._servers[0].result
        assert total is not None
        count, combiners = self.summed, self.survivors
        least = sum(placement.session_params(self.groups[j], pipeline.dim, self.round).threshold
                    for j in combiners)
        most = sum(len(self.groups[j]) for j in combiners)
        if not least <= count <= most:
            raise RemoteProtocolError(
                f"round {self.round}: the surviving combiners {list(combiners)} report {count} summed "
                f"clients in all, outside [{least}, {most}] (their sessions' thresholds, their seated "
                f"clients): a combiner misreported its survivors")
        n = len(self.invited)
        # the reading of the whole round's sum: one session of every sampled client, count of them summed
        whole = SessionParams(round=self.round, model_version=b"", client_ids=self.invited, threshold=1,
                              degree=n - 1, vector_length=words, bits=secure.bits)
        dtype = torch.float32 if layout is None else layout.dtype
        out = placement.aggregate_sum(total[:-1], whole, count, pipeline.dim, pipeline.round_seed(self.round),
                                      state, dtype)
        metrics = {**out.metrics, "combiners": float(len(self.groups)),
                   "combiners_summed": float(len(combiners))}
        return Aggregate(out.update, out.state, metrics)


class CombinerRound(ClientRound):
    """Combiner ``client_id``'s side of a two-level round towards the top server: :meth:`open` reads the
    top's first message (its members and the round's plan, checked), the combiner runs its own session
    over the members, :meth:`answer` joins the top session with that session's sum, and
    :meth:`~secagg.backend.ClientRound.handle` answers the top's later messages."""

    def __init__(self, pipeline: Pipeline, client_id: int, identity: SigningKey | None,
                 model_version: bytes | None) -> None:
        super().__init__(pipeline, client_id, torch.zeros(0, dtype=torch.float64), 0, 0.0,
                         identity, model_version)
        self._setup: Setup | None = None
        #: the round's clients under this combiner, and the client count the round's grid is planned for
        self.members: tuple[int, ...] = ()
        self.planned = 0

    def start(self, work: Work) -> bytes:
        raise ConfigError("start: a combiner answers the top's first message with open() and answer()")

    def open(self, work: Work) -> tuple[tuple[int, ...], int]:
        """Check the top's first message; ``(members, planned)``: the clients to run this round's session
        over and the round's client count. :class:`RemoteProtocolError` for a session that does not fit
        this pipeline (threshold, length, mode, model version) or members that are not this
        combiner's (another combiner's client, too few to hide one among others)."""
        if self._setup is not None or self._session is not None:
            raise RemoteProtocolError(f"combiner {self.id}: the round has already started")
        if work.kind is not WorkKind.TASK or not work.message:
            raise RemoteProtocolError(f"combiner {self.id}: expected the top's first message with its Setup")
        hier, secure, words = _parts(self.pipeline)
        setup = decode(work.message)
        if not isinstance(setup, Setup):
            raise RemoteProtocolError(f"combiner {self.id}: expected a Setup, got {type(setup).__name__}")
        params = setup.params
        combiners = params.client_ids or tuple(range(params.members))
        try:
            want = hier.top_params(combiners, words + 1, params.round)
        except ConfigError as exc:
            raise RemoteProtocolError(f"combiner {self.id}: the top session does not fit: {exc}") from exc
        if params.vector_length != want.vector_length or params.bits != want.bits:
            raise RemoteProtocolError(f"combiner {self.id}: the top session sums {params.vector_length} "
                                      f"words of {params.bits} bits, this pipeline's need "
                                      f"{want.vector_length} of {want.bits}")
        if params.threshold < want.threshold or (want.malicious and not params.malicious):
            raise RemoteProtocolError(f"combiner {self.id}: the top session's threshold "
                                      f"{params.threshold} is below this pipeline's ({want.threshold}"
                                      f"{', malicious mode' if want.malicious else ''})")
        if self.model_version is not None and params.model_version != self.model_version:
            raise RemoteProtocolError(f"combiner {self.id}: the top session's model version is not the "
                                      f"expected one")
        members = work.members
        strangers = [u for u in members if hier.combiner_of(u) != self.id]
        if strangers:
            raise RemoteProtocolError(f"combiner {self.id}: the top seated clients {strangers[:5]} here, but "
                                      f"they belong to other combiners (client c to combiner c mod "
                                      f"{hier.combiners})")
        self.pipeline.placement.check_group(members)
        if not len(members) <= work.planned <= MAX_PLANNED:
            raise RemoteProtocolError(f"combiner {self.id}: a round planned for {work.planned} clients, but "
                                      f"this combiner alone seats {len(members)}")
        try:
            secure.check_plan(work.planned, self.pipeline.placement.sum_dim(self.pipeline.dim))
        except ConfigError as exc:
            raise RemoteProtocolError(f"combiner {self.id}: the round's plan of {work.planned} clients does "
                                      f"not fit this pipeline: {exc}") from None
        if len(members) >= 1 << params.bits:
            raise RemoteProtocolError(f"combiner {self.id}: {len(members)} clients do not fit the count word "
                                      f"of a {params.bits}-bit ring")
        self._setup, self.members, self.planned = setup, members, work.planned
        return members, work.planned

    def answer(self, total: np.ndarray, count: int) -> bytes:
        """Join the top session with this combiner's session sum ``total`` (its ring words) over
        ``count`` surviving clients: the reply to the top's first message."""
        if self._setup is None or self._session is not None:
            raise ConfigError("answer: open() the top's first message first, and answer it once")
        _, _, words = _parts(self.pipeline)
        total = np.asarray(total)
        if total.dtype != np.uint32 or total.shape != (words,):
            raise ConfigError(f"total: expected {words} uint32 words (the combiner session's sum)")
        if not 0 <= count <= len(self.members):
            raise ConfigError(f"count: expected 0..{len(self.members)} surviving clients, got {count}")
        return self._join(self._setup, np.concatenate([total, np.array([count], dtype=np.uint32)]))
