"""Where each step of an aggregator runs in a deployment: on the clients, in a secure sum, on the server.

:func:`place` splits an aggregator into a :class:`Placement`:

* ``client_steps``: the client-placed rules at the top of the chain (``placement = "client"``, e.g.
  :class:`~dp.local.LocalDP`), outermost first. Each client applies their
  :meth:`~secagg.aggregation.Aggregator.client_step` to its own update before anything leaves it;
* ``session``: the :class:`~secagg.aggregation.SecureSum` directly below them, when there is one (the
  secure mode: only the masked sum crosses to the server), else ``None`` (the plain mode: the
  clients' released rows cross, and the server runs
  :meth:`~secagg.aggregation.Aggregator.aggregate_released` of the whole aggregator on them).

Refused, with a :class:`ConfigError` naming the step (``aggregator`` field): a client step below a
server step (the server would have to run it: noise that must be local would be added by the
server); a rule that runs secure-aggregation sessions of its own anywhere but as the session;
simulation-only rules (fake clients) and simulation-seeded noise. The simulation runs the same split
in one process (``Aggregator.aggregate`` is the composition of the two parts).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from secagg.aggregation import Aggregator, SecureSum
from secagg.errors import ConfigError

__all__ = ["Placement", "place"]

# aggregators that run secure-aggregation sessions of their own: over the network only a SecureSum
# directly below the client steps can run its session so far
SESSION_KINDS = ("secure-sum", "secure-bucketing", "distributed-dp")


@dataclass(frozen=True)
class Placement:
    """An aggregator split by where its steps run (see the module docstring)."""

    aggregator: Aggregator
    client_steps: tuple[Aggregator, ...]
    session: SecureSum | None

    @property
    def mode(self) -> str:
        """``"secure"`` (only a secure sum reaches the server) or ``"plain"`` (released rows do)."""
        return "plain" if self.session is None else "secure"

    def release(self, update: torch.Tensor) -> torch.Tensor:
        """One client's update (d,) after every client step: what leaves the client (plain mode)
        or enters its secure-sum encoding (secure mode)."""
        for step in self.client_steps:
            update = step.client_step(update)
        return update

    def describe(self) -> str:
        """One line for logs: which step runs where."""
        client = ", ".join(s.kind for s in self.client_steps) or "nothing"
        sums = "secure sum" if self.session is not None else f"plain {self.aggregator.kind!r} rows"
        return f"on the clients: {client}; crossing to the server: {sums}"


def _chain(aggregator: Aggregator) -> list[Aggregator]:
    out, node = [], aggregator
    while isinstance(node, Aggregator):
        out.append(node)
        node = getattr(node, "inner", None)
    return out


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
    if rest and isinstance(rest[0], SecureSum):
        return Placement(aggregator, steps, rest[0])
    for node in rest:
        if node.kind in SESSION_KINDS:
            raise ConfigError(f"aggregator: {aggregator.kind!r} runs secure-aggregation sessions inside "
                              f"another rule ({node.kind!r}); over the network only a SecureSum (--secure), "
                              f"optionally under client steps such as local DP, or a rule without sessions "
                              f"is supported so far")
    return Placement(aggregator, steps, None)
