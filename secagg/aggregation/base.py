"""The aggregator interface: how the server combines client updates into one update.

An aggregator is a *value*: a frozen dataclass that prints, compares and round-trips through
``to_dict``/``from_dict`` (and so JSON). Aggregators compose by nesting, the way TensorFlow
Federated's aggregation factories do: ``ClipNorm(max_norm=1.0, inner=Mean())`` clips every update,
then hands the clipped batch to the mean. Later wrappers (noise, secure sum, robust rules) plug in
the same way, e.g. ``ClipNorm(inner=GaussianNoise(inner=SecureSum()))``.

Anything an aggregator must remember between rounds (adaptive clip norms, momentum, ...) lives in an
explicit state object: a flat ``dict[str, Tensor]`` returned by :meth:`Aggregator.init_state`, passed
into and returned from every :meth:`Aggregator.aggregate` call, and saved in checkpoints. Wrappers
keep their inner aggregator's state under an ``"inner/"`` prefix. No aggregator keeps hidden state or
mutates its input.

Placement. Most rules run on the server (``placement = "server"``). A rule whose step belongs on
the client (local DP: each client noises its own update) says so with ``placement = "client"`` and
splits itself in two: :meth:`Aggregator.client_step` (one update, on the client, before it leaves)
and :meth:`Aggregator.aggregate_released` (the server's part, on the rows as the clients released
them). A per-update map that must run wherever the update is still in the clear (clipping) says
``placement = "update"``: over a secure sum it runs on the clients (:meth:`Aggregator.client_step`)
and the server finishes with :meth:`Wrapper.after_sum` on the sum; otherwise it runs on the server.
A client step may depend on public values the server holds in its state and sends with each round
(adaptive clipping's current clip norm: :meth:`Aggregator.round_public`), and may append
coordinates (the clip bit: :meth:`Aggregator.released_dim`).
``aggregate`` is always the composition of the parts, so the simulation and a deployment
(:mod:`secagg.placement`, which refuses a step placed where its trust model cannot hold) run one
pipeline.
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from secagg.errors import ConfigError, UpdateError
from secagg.layout import ParamLayout
from secagg.registry import Registered

AggState = dict[str, torch.Tensor]
#: where an aggregator's own step runs: see the module docstring
PLACEMENTS = ("server", "client", "update")


@dataclass(frozen=True)
class UpdateBatch:
    """The updates of one round: row ``i`` of ``updates`` came from ``client_ids[i]``.

    ``updates``: (n, d) float tensor, one flattened update (delta) per client.
    ``weights``: (n,) float64, the clients' example counts (or any non-negative weights).
    ``round``: the round index; ``seed``: root seed for any non-secret randomness the rule needs.
    ``layout``: how to unflatten a row into named tensors (for per-layer rules); ``None`` when the
    updates are plain vectors.
    ``reference``: (d,) the server's own update this round, trained from the same global model on the
    small root dataset the server holds (for rules that trust it, such as FLTrust: see
    :meth:`Aggregator.root_examples`); ``None`` when the rule needs none.
    ``global_model``: (d,) the flat global weights (layout order) every update was trained from, so
    that ``global_model + updates[i]`` is client i's model (for rules that compare the clients'
    models, such as FLAME: see :meth:`Aggregator.needs_global_model`); ``None`` when not given.
    """

    updates: torch.Tensor
    weights: torch.Tensor
    client_ids: tuple[int, ...]
    round: int = 0
    seed: int = 0
    layout: ParamLayout | None = None
    reference: torch.Tensor | None = None
    global_model: torch.Tensor | None = None

    def __post_init__(self) -> None:
        u, w = self.updates, self.weights
        if not isinstance(u, torch.Tensor) or u.dim() != 2:
            raise UpdateError("updates: expected a 2-D tensor (clients, dim)")
        if not u.is_floating_point():
            raise UpdateError(f"updates: expected a float tensor, got {u.dtype}")
        n = u.shape[0]
        if n < 1:
            raise UpdateError("updates: need at least 1 client update, got 0")
        if not isinstance(w, torch.Tensor) or tuple(w.shape) != (n,):
            raise UpdateError(f"weights: expected shape ({n},), got "
                              f"{tuple(w.shape) if isinstance(w, torch.Tensor) else type(w).__name__}")
        if self.layout is not None and self.layout.dim != u.shape[1]:
            raise UpdateError(f"updates: layout describes {self.layout.dim} coordinates, "
                              f"rows have {u.shape[1]}")
        if len(self.client_ids) != n:
            raise UpdateError(f"client_ids: expected {n} ids, got {len(self.client_ids)}")
        if not torch.isfinite(w).all() or (w < 0).any():
            raise UpdateError("weights: must be finite and >= 0")
        bad = _nonfinite_rows(u)
        if bad:
            ids = [self.client_ids[i] for i in bad]
            raise UpdateError(f"updates: non-finite values (NaN/Inf) from client(s) {ids}")
        ref = self.reference
        if ref is not None:
            if not isinstance(ref, torch.Tensor) or tuple(ref.shape) != (u.shape[1],):
                shape = tuple(ref.shape) if isinstance(ref, torch.Tensor) else type(ref).__name__
                raise UpdateError(f"reference: expected shape ({u.shape[1]},), got {shape}")
            if not bool(torch.isfinite(ref).all()):
                raise UpdateError("reference: the server's root-data update has non-finite values")
        model = self.global_model
        if model is not None:
            if not isinstance(model, torch.Tensor) or tuple(model.shape) != (u.shape[1],):
                shape = tuple(model.shape) if isinstance(model, torch.Tensor) else type(model).__name__
                raise UpdateError(f"global_model: expected shape ({u.shape[1]},), got {shape}")
            if not bool(torch.isfinite(model).all()):
                raise UpdateError("global_model: the global weights have non-finite values")

    @property
    def num_clients(self) -> int:
        return int(self.updates.shape[0])

    @property
    def dim(self) -> int:
        return int(self.updates.shape[1])

    def replace(self, **changes: Any) -> UpdateBatch:
        """A copy with some fields changed (validated again). Rows of another width (a client step
        that appends coordinates, such as adaptive clipping's bit) no longer line up with the global
        weights: unless given too, :attr:`global_model` is then dropped."""
        u = changes.get("updates")
        if (isinstance(u, torch.Tensor) and u.dim() == 2 and u.shape[1] != self.dim
                and "global_model" not in changes):
            changes["global_model"] = None
        return dataclasses.replace(self, **changes)


def _nonfinite_rows(u: torch.Tensor) -> list[int]:
    """Indices of the rows of ``u`` holding a NaN or an infinity.

    A NaN or infinity makes its row's sum non-finite, so only rows with a non-finite sum (those, or
    finite rows whose sum overflowed) are checked element by element: ``torch.isfinite`` on the
    whole stack would allocate temporaries of twice its size.
    """
    suspects = (~torch.isfinite(u.sum(dim=1))).nonzero().flatten().tolist()
    return [i for i in suspects if not bool(torch.isfinite(u[i]).all())]


@dataclass(frozen=True)
class Aggregate:
    """What an aggregator returns: the combined update (d,), its new state, and metrics to log."""

    update: torch.Tensor
    state: AggState = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)


class Aggregator(Registered, ABC, family="aggregator"):
    """Base class of every aggregation rule and wrapper.

    Subclasses are frozen dataclasses declared with a registry name::

        @dataclass(frozen=True)
        class MyRule(Aggregator, kind="my-rule"):
            f: int = 1
            def aggregate(self, batch, state): ...

    Fields must be JSON scalars or nested aggregators; validate them in ``__post_init__`` and raise
    :class:`~secagg.errors.ConfigError` naming the field and the bound. ``to_dict``/``from_dict``
    come from :class:`~secagg.registry.Registered`.

    ``placement`` (class attribute): ``"server"`` (the default: the whole rule runs on the server),
    ``"client"`` (always on the clients, see :meth:`client_step`) or ``"update"`` (on the clients when
    a secure sum follows, else on the server; see the module docstring).
    """

    placement: ClassVar[str] = "server"
    #: True for rules that are one secure-aggregation session (SecureSum, distributed DP): they offer
    #: ``secure_params``, ``session_input`` and ``session_result``, which a deployment drives
    is_session: ClassVar[bool] = False

    def init_state(self, dim: int) -> AggState:
        """The state before the first round, for updates of length ``dim`` (stateless: empty)."""
        return {}

    @abstractmethod
    def aggregate(self, batch: UpdateBatch, state: AggState) -> Aggregate:
        """Combine ``batch`` into one update of length ``batch.dim``; never mutate the inputs."""

    def check_deployable(self) -> None:
        """:class:`ConfigError` naming the field when this rule's guarantees cannot hold in a real
        deployment (checked by :func:`secagg.placement.place`); nothing by default."""

    #: how many public values this rule's client step takes from the server each round
    public_size: ClassVar[int] = 0

    def client_step(self, update: torch.Tensor, public: tuple[float, ...] = ()) -> torch.Tensor:
        """This rule's step on one client's flat update (d,), run on that client before the update
        leaves it; the identity for server-placed rules. Client-placed rules draw any noise here, from
        the OS CSPRNG. ``public``: this round's :meth:`round_public` values, as the server sent them
        (``public_size`` of them; :class:`ConfigError` naming the value when one is out of range)."""
        return update

    def round_public(self, state: AggState) -> tuple[float, ...]:
        """The public values (``public_size`` floats) the server sends every client with the round,
        read from this rule's ``state``: what its client step needs of the server's state. None by
        default."""
        return ()

    def released_dim(self, dim: int) -> int:
        """The length of what this rule's client step makes of a ``dim``-coordinate update (the
        secure sum below it sums that many coordinates): ``dim`` by default."""
        return dim

    def aggregate_released(self, batch: UpdateBatch, state: AggState) -> Aggregate:
        """The server's part: aggregate rows that already went through :meth:`client_step` on their
        clients. For a server-placed rule (nothing ran on the client) it is :meth:`aggregate`."""
        return self.aggregate(batch, state)

    def epsilon_after(self, rounds: int, dim: int | None = None) -> float | None:
        """The differential-privacy epsilon (at the mechanism's own delta) after ``rounds`` rounds of
        this aggregator on updates of ``dim`` coordinates (mechanisms whose sensitivity depends on
        the dimension need it), or ``None`` if it makes no DP guarantee (the default)."""
        return None

    def claims_dp(self) -> bool:
        """Whether this aggregator (or one nested in it) reports a DP epsilon: ``False`` by default.

        Wrappers that change the sensitivity of what they wrap use it to refuse a DP rule inside.
        """
        return False

    def privacy_budget(self) -> float | None:
        """The epsilon the run must not exceed (training stops before a round that would), or
        ``None`` for no budget (the default)."""
        return None

    def poisson_sample_rate(self) -> float | None:
        """The Poisson client-sampling rate q this aggregator's privacy accounting assumes (the server
        must then sample each client independently with probability q), or ``None`` (the default)."""
        return None

    def root_examples(self) -> int:
        """How many examples of a clean root dataset the server must hold to train the batch's
        :attr:`UpdateBatch.reference` each round (FLTrust); 0 (the default) when the rule needs none."""
        return 0

    def needs_global_model(self) -> bool:
        """Whether the rule reads :attr:`UpdateBatch.global_model` (it compares the clients' models,
        not only their updates: FLAME); False by default."""
        return False


class Wrapper(Aggregator):
    """An aggregator that transforms the batch and hands it to an ``inner`` aggregator.

    Subclasses declare the dataclass field ``inner: Aggregator`` and call ``super().__post_init__()``.
    The inner rule's state lives under ``inner/`` in the wrapper's state (so a wrapped stateful
    rule is checkpointed with the run), and its metrics are logged as ``inner/<name>``.

    Privacy: an inner DP rule's epsilon holds for what the wrapper releases only if the wrapper
    keeps that rule's sensitivity, i.e. each client still reaches the inner rule as (at most) one
    row that depends on its own update alone, so one client joining moves the inner input by one row
    (per-row maps such as clipping or local noise; extra rows that depend on no client). Such
    wrappers set the class attribute ``keeps_sensitivity = True``. The others (mixing rows,
    re-bucketing: every row may depend on every client) refuse a DP rule inside at construction
    (:class:`ConfigError` naming ``inner``), so they never pass an inner epsilon through.
    """

    inner: Aggregator
    #: True when one client added or removed changes at most one row of the inner rule's input,
    #: and that row depends on that client's update only (see the class docstring).
    keeps_sensitivity: ClassVar[bool] = False

    def __post_init__(self) -> None:
        if not isinstance(self.inner, Aggregator):
            raise ConfigError(f"inner: expected an Aggregator, got {type(self.inner).__name__}")
        if not self.keeps_sensitivity and self.inner.claims_dp():
            raise ConfigError(
                f"inner: {type(self).__name__} ({self.kind!r}) makes each row it hands on depend on "
                f"several clients, which changes the sensitivity the inner DP rule "
                f"{type(self.inner).__name__} is accounted for: its epsilon would not hold. Put the DP "
                f"rule outside (e.g. DP around the sum) or use a rule without a DP claim inside")

    def init_state(self, dim: int) -> AggState:
        return nest_state("inner", self.inner.init_state(dim))

    def claims_dp(self) -> bool:
        return self.inner.claims_dp()

    def epsilon_after(self, rounds: int, dim: int | None = None) -> float | None:
        # only reachable with keeps_sensitivity (the others refuse a DP inner at construction)
        return self.inner.epsilon_after(rounds, dim) if self.keeps_sensitivity else None

    def privacy_budget(self) -> float | None:
        return self.inner.privacy_budget()

    def poisson_sample_rate(self) -> float | None:
        return self.inner.poisson_sample_rate()

    def root_examples(self) -> int:
        return self.inner.root_examples()

    def needs_global_model(self) -> bool:
        return self.inner.needs_global_model()

    def after_sum(self, inner: Aggregate, state: AggState, *, num_clients: int, dtype: torch.dtype
                  ) -> Aggregate:
        """The server's part of a client- or update-placed wrapper over a secure sum: ``inner`` is what
        the sum below returned (its update, state and metrics) for rows that went through this
        wrapper's :meth:`Aggregator.client_step` on ``num_clients`` clients; ``state`` is this
        wrapper's. By default nothing of its own: ``inner`` nested as :meth:`run_inner` nests it, the
        update in ``dtype``."""
        return Aggregate(inner.update.to(dtype), nest_state("inner", inner.state),
                         {f"inner/{k}": v for k, v in inner.metrics.items()})

    def run_inner(self, batch: UpdateBatch, state: AggState, *, released: bool = False,
                  **metrics: float) -> Aggregate:
        """Aggregate ``batch`` with ``inner`` on its part of ``state``; ``metrics`` are the wrapper's own.
        ``released``: the rows already went through the inner rule's client step (the server's part,
        :meth:`Aggregator.aggregate_released`, runs instead of the whole rule)."""
        run = self.inner.aggregate_released if released else self.inner.aggregate
        inner = run(batch, unnest_state("inner", state))
        return Aggregate(inner.update, nest_state("inner", inner.state),
                         {**metrics, **{f"inner/{k}": v for k, v in inner.metrics.items()}})


def aggregator_kinds() -> tuple[str, ...]:
    """Names of every registered aggregator."""
    return Aggregator.kinds()


def nest_state(prefix: str, state: Mapping[str, torch.Tensor]) -> AggState:
    """Put an inner aggregator's state under ``prefix/`` inside its wrapper's state."""
    return {f"{prefix}/{k}": v for k, v in state.items()}


def unnest_state(prefix: str, state: Mapping[str, torch.Tensor]) -> AggState:
    """The part of a wrapper's state that belongs to the inner aggregator at ``prefix``."""
    p = f"{prefix}/"
    return {k[len(p):]: v for k, v in state.items() if k.startswith(p)}
