"""Where each step of an aggregator runs in a deployment: on the clients, in a secure sum, on the server.

:func:`place` splits an aggregator into a :class:`Placement`:

* ``session``: the rule in the chain that is one secure-aggregation session (``is_session``: a
  :class:`~secagg.aggregation.SecureSum`, or distributed DP, whose clients add their integer noise
  inside it), when there is one (the secure mode: only the masked sum crosses to the server), else
  ``None`` (the plain mode);
* ``groups`` / ``combiners``: with secure bucketing, one session per bucket on the server; with the
  two-level sum (:class:`~secagg.aggregation.HierarchicalSecureSum`), one session per combiner in
  the combiner processes and one over the combiners on the server (:mod:`secagg.two_level`);
* ``client_steps``: the rules whose step each client applies to its own update before anything
  leaves it (:meth:`~secagg.aggregation.Aggregator.client_step`), outermost first. In secure mode
  every wrapper above the sum, each client- or update-placed (local DP's noise, DP-FedAvg's and
  ``ClipNorm``'s clipping); the server then finishes with their
  :meth:`~secagg.aggregation.Wrapper.after_sum`, innermost first (:meth:`Placement.finish`: DP-FedAvg's
  noise on the sum). In plain mode the client-placed rules at the top of the chain; the server runs
  :meth:`~secagg.aggregation.Aggregator.aggregate_released` of the whole aggregator on the released
  rows (update-placed clipping runs there, on the trusted server).

Refused, with a :class:`ConfigError` naming the step (``aggregator`` field): a client step below a
server step (the server would have to run it: noise that must be local would be added by the
server); a server rule above a secure sum (it needs the individual updates the sum hides); a rule
that runs secure-aggregation sessions of its own anywhere but as the session; simulation-only rules
(fake clients) and simulation-seeded noise. The simulation runs the same split in one process
(``Aggregator.aggregate`` is the composition of the parts).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch

from secagg.aggregation import Aggregate, Aggregator, AggState, UpdateBatch, Wrapper
from secagg.aggregation.base import unnest_state
from secagg.errors import ConfigError, RemoteProtocolError
from secagg.layout import ParamLayout
from secagg.protocol.messages import SessionParams
from secagg.transport.envelope import PlainUpdate

__all__ = ["Placement", "place", "released_batch"]

# aggregators that run secure-aggregation sessions of their own: over the network only a SecureSum
# directly below the client steps can run its session so far
SESSION_KINDS = ("secure-sum", "secure-bucketing", "distributed-dp", "hierarchical-secure-sum")


@dataclass(frozen=True)
class Placement:
    """An aggregator split by where its steps run (see the module docstring)."""

    aggregator: Aggregator
    client_steps: tuple[Aggregator, ...]
    session: Aggregator | None  # is_session: secure_params / session_input / session_result
    #: a rule that runs one ``session`` per group of the round's clients (secure bucketing: its
    #: ``secure``), then its server part over the groups' sums; ``None``: one session for everybody
    groups: Aggregator | None = None
    #: the two-level secure sum (:class:`~secagg.aggregation.HierarchicalSecureSum`): each combiner
    #: runs ``session`` over its clients, the server one top session over the combiners
    #: (:mod:`secagg.two_level`); ``None``: the server runs the sessions itself
    combiners: Aggregator | None = None

    @property
    def mode(self) -> str:
        """``"secure"`` (only a secure sum reaches the server) or ``"plain"`` (released rows do)."""
        return "plain" if self.session is None else "secure"

    def public(self, state: AggState) -> tuple[float, ...]:
        """The round's public values for the clients (the Work envelope's ``public``): every client
        step's :meth:`~secagg.aggregation.Aggregator.round_public` from its part of the aggregator's
        ``state``, outermost first."""
        out: list[float] = []
        for step, part in zip(self.client_steps, self._step_states(state)[:-1], strict=True):
            values = tuple(float(v) for v in step.round_public(part))
            assert len(values) == step.public_size, step.kind
            out.extend(values)
        return tuple(out)

    def release(self, update: torch.Tensor, public: tuple[float, ...] = ()) -> torch.Tensor:
        """One client's update (d,) after every client step: what leaves the client (plain mode)
        or enters its secure-sum encoding (secure mode); ``public``: the round's values from the
        server (:meth:`public`). They come from a peer: :class:`RemoteProtocolError` naming the step
        when their count is wrong or a step refuses its value."""
        want = sum(step.public_size for step in self.client_steps)
        if len(public) != want:
            raise RemoteProtocolError(f"public: the server sent {len(public)} round values, the client steps "
                                      f"({self.describe_steps()}) take {want}")
        at = 0
        for step in self.client_steps:
            values = tuple(public[at:at + step.public_size])
            at += step.public_size
            try:
                update = step.client_step(update, values)
            except ConfigError as exc:
                raise RemoteProtocolError(f"public: the server's round values for {step.kind!r}: "
                                          f"{exc}") from None
        return update

    def sum_dim(self, dim: int) -> int:
        """How many coordinates a released update of a ``dim``-coordinate model has (what the secure sum
        sums, before its own weight word): the client steps may append some (adaptive clipping's bit)."""
        for step in reversed(self.client_steps):  # innermost last: each appends after the outer's
            dim = step.released_dim(dim)
        return dim

    def session_params(self, client_ids: tuple[int, ...], dim: int, round_index: int) -> SessionParams:
        """Secure mode: the session of round ``round_index`` for these clients on a ``dim``-coordinate
        model (the released length :meth:`sum_dim`)."""
        assert self.session is not None
        return self.session.secure_params(client_ids, self.sum_dim(dim), round_index)

    def session_groups(self, client_ids: tuple[int, ...], round_seed: int) -> list[tuple[int, ...]]:
        """Secure mode: the clients of each session of the round (one group without ``groups``)."""
        if self.groups is None:
            return [tuple(client_ids)]
        return self.groups.session_groups(tuple(client_ids), round_seed)

    def check_group(self, client_ids: tuple[int, ...]) -> None:
        """On a client: :class:`RemoteProtocolError` when the server seated it in a session its
        configuration does not allow (a bucket below ``bucket_size``, a combiner's session below
        ``min_clients``)."""
        if self.combiners is not None:
            least = int(self.combiners.min_clients)
            if len(client_ids) < least:
                raise RemoteProtocolError(f"session: a combiner's session of {len(client_ids)} clients, "
                                          f"below min_clients={least} (its sum must hide each client "
                                          f"among others)")
        if self.groups is not None:
            try:
                self.groups.check_group(tuple(client_ids))
            except ConfigError as exc:
                raise RemoteProtocolError(f"session: {exc}") from None

    def aggregate_groups(self, sums: list[tuple[np.ndarray, SessionParams, int]], dim: int, round_index: int,
                         round_seed: int, state: AggState, dtype: torch.dtype,
                         layout: ParamLayout | None = None) -> Aggregate:
        """Secure mode, on the server: every session's ``(unmasked result, params, survivors)`` read by
        the session, the grouping rule's server part over them (when there are groups), then
        :meth:`finish`. :class:`AbortError` when a session refuses its sum."""
        if self.groups is None:
            (result, params, survivors), = sums
            return self.aggregate_sum(result, params, survivors, dim, round_seed, state, dtype)
        from secagg.aggregation.secure_bucketing import ServerView  # the one grouping rule so far

        assert self.session is not None
        means, totals, summed = [], [], []
        for result, params, survivors in sums:
            out = self.session.session_result(result, params, survivors, self.sum_dim(dim), round_seed)
            means.append(out.update.to(torch.float64))
            totals.append(out.metrics["total_weight"])
            summed.append(survivors)
        view = ServerView(torch.stack(means), torch.tensor(totals, dtype=torch.float64), tuple(summed), 0.0)
        group_state = self._step_states(state)[-1]  # below every client step's
        invited = sum(len(params.client_ids) for _, params, _ in sums)
        inner = self.groups.aggregate_groups(view, group_state, num_clients=invited, round_index=round_index,
                                             round_seed=round_seed, layout=layout)
        return self.finish(inner, state, num_clients=sum(summed), dtype=dtype)

    def describe_steps(self) -> str:
        return ", ".join(s.kind for s in self.client_steps) or "none"

    def _step_states(self, state: AggState) -> list[AggState]:
        """Each client step's part of the aggregator's ``state`` (step i's sits under i "inner/"),
        then the part of the rule below them (the session, or the grouping rule)."""
        states = [state]
        for _ in self.client_steps:
            states.append(unnest_state("inner", states[-1]))
        return states

    def finish(self, inner: Aggregate, state: AggState, *, num_clients: int, dtype: torch.dtype) -> Aggregate:
        """Secure mode, on the server: the client steps' :meth:`~secagg.aggregation.Wrapper.after_sum`,
        innermost first, over ``inner`` (what the secure sum decoded), with each step's part of the
        aggregator's ``state``; ``num_clients`` rows were summed."""
        states = self._step_states(state)[:-1]
        out = Aggregate(inner.update.to(dtype), inner.state, inner.metrics)
        for step, part in reversed(list(zip(self.client_steps, states, strict=True))):
            assert isinstance(step, Wrapper)
            out = step.after_sum(out, part, num_clients=num_clients, dtype=dtype)
        return out

    def aggregate_sum(self, result: np.ndarray, params: SessionParams, survivors: int, dim: int,
                      round_seed: int, state: AggState, dtype: torch.dtype) -> Aggregate:
        """Secure mode, on the server: the session's reading of its unmasked ``result`` (``survivors``
        of ``params.client_ids`` summed), then :meth:`finish`. :class:`AbortError` when the session
        refuses the sum (distributed DP with fewer survivors than its noise is planned for)."""
        assert self.session is not None
        summed = self.session.session_result(result, params, survivors, self.sum_dim(dim), round_seed)
        return self.finish(summed, state, num_clients=survivors, dtype=dtype)

    def describe(self) -> str:
        """One line for logs: which step runs where."""
        client = ", ".join(s.kind for s in self.client_steps) or "nothing"
        sums = "secure sum" if self.session is not None else f"plain {self.aggregator.kind!r} rows"
        if self.combiners is not None:
            sums = (f"secure sums of each of {self.combiners.combiners} combiners' clients, summed "
                    f"securely again at the top")
        return f"on the clients: {client}; crossing to the server: {sums}"


def released_batch(updates: Mapping[int, PlainUpdate], round_index: int, seed: int,
                   layout: ParamLayout | None = None) -> UpdateBatch:
    """Plain mode, on the server: the clients' released rows (decoded, checked envelopes) in
    client-id order, as the batch the aggregator's server part runs on; ``seed``: the round's public
    seed (:func:`secagg.seeding.round_seed`)."""
    ids = tuple(sorted(updates))
    rows = torch.stack([torch.from_numpy(np.frombuffer(updates[u].delta, dtype="<f4").copy()) for u in ids])
    counts = torch.tensor([updates[u].num_examples for u in ids], dtype=torch.float64)
    dtype = rows.dtype if layout is None else layout.dtype
    return UpdateBatch(rows.to(dtype), counts, ids, round_index, seed, layout)


def _chain(aggregator: Aggregator) -> list[Aggregator]:
    out, node = [], aggregator
    while isinstance(node, Aggregator):
        out.append(node)
        node = getattr(node, "inner", None)
    return out


def _combines(node: Aggregator) -> bool:
    """Whether ``node`` is the two-level secure sum (combiner sessions under a top session)."""
    return bool(getattr(node, "combines_sessions", False))


def _groups(node: Aggregator) -> bool:
    """Whether ``node`` runs one secure-aggregation session per group of clients (secure bucketing)."""
    return bool(getattr(node, "groups_sessions", False))


def place(aggregator: Aggregator) -> Placement:
    """Split ``aggregator`` for a deployment; :class:`ConfigError` naming the step that cannot be placed."""
    chain = _chain(aggregator)
    for node in chain:
        if getattr(node, "simulation_seed", None) is not None:
            raise ConfigError(f"aggregator: {node.kind!r} has simulation_seed set: its noise would be "
                              f"predictable, which is for benchmarks only, never a deployment")
        if getattr(node, "simulation_only", False):  # e.g. dp's CanaryAudit: it inserts fake clients
            raise ConfigError(f"aggregator: {node.kind!r} is for simulation only (secagg train/bench): "
                              f"a server inserting fake clients into a deployment is not supported")
    for node in chain:
        node.check_deployable()
    for node in chain:
        if node.kind in SESSION_KINDS and not (node.is_session or _groups(node) or _combines(node)):
            raise ConfigError(f"aggregator: {aggregator.kind!r} runs secure-aggregation sessions inside "
                              f"another rule ({node.kind!r}); over the network only one session (SecureSum "
                              "or distributed DP), secure bucketing or the two-level sum, under client "
                              "steps (local DP, DP-FedAvg, clipping) or alone, or a rule without sessions "
                              "is supported")
    session = next((i for i, node in enumerate(chain)
                    if node.is_session or _groups(node) or _combines(node)), None)
    if session is not None:
        below = [node.kind for node in chain[session + 1:] if node.kind in SESSION_KINDS]
        if below:
            raise ConfigError(f"aggregator: {chain[session].kind!r} has another secure-aggregation rule "
                              f"({below[0]!r}) inside it: one session layer per round is supported")
        for node in chain[:session]:
            if node.placement == "server" or not isinstance(node, Wrapper):
                raise ConfigError(
                    f"aggregator: {node.kind!r} runs on the server over individual updates (it has no "
                    f"client part), but it sits above the secure sum, which hides them from the server. "
                    f"Use it without --secure, or a rule with a client part (local DP, DP-FedAvg, "
                    f"clip-norm) above the secure sum")
        node = chain[session]
        if _groups(node):  # one session of its secure sum per group of clients
            return Placement(aggregator, tuple(chain[:session]), node.secure, groups=node)
        if _combines(node):  # the combiners' sessions, then the top's
            return Placement(aggregator, tuple(chain[:session]), node.secure, combiners=node)
        return Placement(aggregator, tuple(chain[:session]), node)
    top = 0
    while top < len(chain) and chain[top].placement == "client":
        top += 1
    steps, rest = tuple(chain[:top]), chain[top:]
    for i, node in enumerate(rest):
        if node.placement == "client":
            outer = rest[i - 1]  # i >= 1: a client step at rest[0] would have joined the steps
            raise ConfigError(
                f"aggregator: {node.kind!r} must run on the clients (placement 'client'), but it sits inside "
                f"{outer.kind!r}, which runs on the server: the server would run the client's step (for "
                f"local noise: the server would see the un-noised updates). Put {node.kind!r} outermost")
    return Placement(aggregator, steps, None)
