"""Server optimizers: how the server turns a round's aggregated update into the next global model.

The server treats the round's aggregate ``Δ_t`` (the weighted mean of the clients' deltas, local minus
global weights, over the parameter coordinates) as a pseudo-gradient *ascent* direction and steps
``x_{t+1} = x_t + (something computed from Δ_t and the optimizer's state)``. This is FedOpt (Reddi et
al., "Adaptive Federated Optimization", ICLR 2021, Algorithm 2). Every kind here reads only ``Δ_t``,
which is what a secure sum releases: each composes with secure aggregation, robust rules and DP
unchanged, and is post-processing of the released aggregate, so the DP accountant (client-level or
record-level) is unaffected by the choice.

Kinds (registered plug-ins, :class:`~secagg.registry.Registered`, ``{"kind": ..., **fields}`` in a
configuration):

* ``"sgd"`` (:class:`ServerSGD`): ``x += lr * Δ``, or with ``momentum = β > 0`` FedAvgM (Hsu et al.
  2019): ``u_t = β u_{t-1} + Δ_t``, ``x += lr * u_t``, ``u_{-1} = 0``. ``lr=1, momentum=0`` is plain
  FedAvg. This is the library's historical ``server_lr``/``server_momentum`` step, bit for bit.
* ``"adam"``, ``"yogi"``, ``"adagrad"`` (:class:`ServerAdam`, :class:`ServerYogi`,
  :class:`ServerAdagrad`: FedAdam, FedYogi, FedAdagrad), per coordinate, from ``m_{-1} = 0`` and
  ``v_{-1} = initial_v`` (default ``τ²``)::

      m_t = β1 m_{t-1} + (1 - β1) Δ_t
      v_t = v_{t-1} + Δ_t²                                   (adagrad)
      v_t = v_{t-1} - (1 - β2) Δ_t² sign(v_{t-1} - Δ_t²)     (yogi)
      v_t = β2 v_{t-1} + (1 - β2) Δ_t²                       (adam)
      x_{t+1} = x_t + η m_t / (sqrt(v_t) + τ)

  exactly the paper's Algorithm 2 (no bias correction). ``η`` is ``lr``; ``τ`` (``tau``) bounds the
  adaptivity (the paper finds ``τ = 1e-3`` good across tasks).

Where the references differ, the difference is a parameter (defaults follow the paper):

* ``initial_v``: the paper's ``v_{-1} >= τ²`` (default ``None`` = ``τ²``); Flower's
  ``FedAdam``/``FedYogi``/``FedAdagrad`` start from ``0``; TensorFlow Federated's ``build_yogi`` from
  ``1e-6`` and ``build_adagrad`` from ``0.1``.
* ``bias_correction`` (adam, yogi; default ``False`` as in the paper): Adam's correction in the
  "epsilon hat" form TensorFlow Federated's ``build_adam``/``build_yogi`` and Flower's ``FedAdam`` use,
  ``η_t = η sqrt(1 - β2^t) / (1 - β1^t)`` with ``t`` the 1-based count of steps taken. (Flower's
  ``FedAdam`` evaluates it at ``t = server_round + 1``, one more than the steps taken; not reproduced.
  Flower's ``FedYogi`` applies none.)
* ``beta1`` of adagrad: the paper's Algorithm 2 keeps the momentum for all three kinds; Flower's
  ``FedAdagrad`` and TensorFlow Federated's ``build_adagrad`` have none. Default ``0.0`` (no
  momentum, as both implementations); set it to use the paper's general form.
* ``tau``: default ``1e-3`` (the paper's recommendation; Flower's Message-API strategies' default).
  Flower's older ``flwr.server.strategy`` ``FedAdam``/``FedAdagrad`` default to ``1e-9``.
* ``lr`` defaults are Flower's: ``0.1`` for adam and adagrad, ``0.01`` for yogi (the paper tunes η per
  task over a grid).

The server applies the optimizer to the parameter coordinates only (FedAvg's aggregated buffers, see
:mod:`secagg.layout`, always move by the aggregate itself). Each optimizer is a pure function of its
inputs: :meth:`ServerOptimizer.step` returns the new parameters and a new state dict of tensors (never
modifying the old ones), which is what :class:`~secagg.fedavg.server.ServerState` stores and a checkpoint
saves.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, fields

import torch

from secagg.errors import ConfigError
from secagg.registry import Registered
from secagg.validation import check_real

__all__ = ["ServerAdagrad", "ServerAdam", "ServerOptimizer", "ServerSGD", "ServerYogi",
           "resolve_server_optimizer"]

#: the state entry that counts the steps taken (0-d int64), for bias correction
STEP = "step"


class ServerOptimizer(Registered, ABC, family="server_optimizer"):
    """Base of the server optimizers (frozen dataclasses declared with ``kind="..."``).

    Every kind has a learning rate ``lr`` (η, > 0). The state is a dict of tensors named by
    :meth:`state_keys`: each of shape ``(size,)`` in the parameters' dtype, except ``"step"`` (a 0-d
    int64 count of the steps taken).
    """

    lr: float

    @abstractmethod
    def state_keys(self) -> tuple[str, ...]:
        """The names of this optimizer's state tensors (empty: stateless)."""

    @abstractmethod
    def _step(self, params: torch.Tensor, update: torch.Tensor, state: Mapping[str, torch.Tensor]
              ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """:meth:`step` after the checks."""

    def init_state(self, size: int, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
        """The state before the first step, for ``size`` parameter coordinates of ``dtype``."""
        return {key: self._initial(key, size, dtype) for key in self.state_keys()}

    def _initial(self, key: str, size: int, dtype: torch.dtype) -> torch.Tensor:
        if key == STEP:
            return torch.zeros((), dtype=torch.int64)
        return torch.zeros(size, dtype=dtype)

    def step(self, params: torch.Tensor, update: torch.Tensor, state: Mapping[str, torch.Tensor]
             ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``(new params, new state)`` after applying the aggregated ``update`` (the pseudo-gradient
        ``Δ_t``: mean client delta, the direction the server moves *towards*) to ``params``.

        ``params`` and ``update`` are 1-D floating-point tensors of the same shape and dtype; ``state``
        is what :meth:`init_state` or the previous :meth:`step` returned. Neither ``params`` nor
        ``state`` is modified. :class:`ConfigError` for a shape, dtype or state mismatch."""
        if (not isinstance(params, torch.Tensor) or not isinstance(update, torch.Tensor)
                or params.dim() != 1 or params.shape != update.shape or params.dtype != update.dtype
                or not params.dtype.is_floating_point):
            raise ConfigError(f"server_optimizer: params and update must be 1-D floating-point tensors "
                              f"of one shape and dtype, got {_describe(params)} and {_describe(update)}")
        self.check_state(state, int(params.shape[0]), params.dtype)
        return self._step(params, update, state)

    def check_state(self, state: Mapping[str, torch.Tensor], size: int, dtype: torch.dtype | None = None,
                    *, where: str = "optimizer_state") -> None:
        """:class:`ConfigError` (naming ``where``) unless ``state`` is a state of this optimizer for
        ``size`` coordinates (of ``dtype``, when given): exactly the keys of :meth:`state_keys`, the
        shapes and dtypes above, finite values."""
        if not isinstance(state, Mapping):
            raise ConfigError(f"{where}: expected a mapping of tensors, got {type(state).__name__}")
        expected = set(self.state_keys())
        if set(state) != expected:
            raise ConfigError(f"{where}: server optimizer {self.describe()} keeps "
                              f"{sorted(expected) or 'no state'}, got {sorted(state) or 'none'}")
        for key in sorted(expected):
            value = state[key]
            if key == STEP:
                ok = (isinstance(value, torch.Tensor) and value.dtype == torch.int64 and value.dim() == 0
                      and int(value) >= 0)
                want = "a 0-d int64 tensor >= 0"
            else:
                ok = (isinstance(value, torch.Tensor) and value.dtype.is_floating_point
                      and tuple(value.shape) == (size,) and (dtype is None or value.dtype == dtype)
                      and bool(torch.isfinite(value).all()))
                want = f"a finite {'floating-point' if dtype is None else dtype} tensor of shape ({size},)"
            if not ok:
                raise ConfigError(f"{where}[{key!r}]: expected {want}, got {_describe(value)}")

    def describe(self) -> str:
        """``kind(field=value, ...)`` for logs."""
        args = ", ".join(f"{f.name}={getattr(self, f.name)!r}" for f in fields(self))  # type: ignore[arg-type]
        return f"{self.kind}({args})"


def _describe(value: object) -> str:
    if isinstance(value, torch.Tensor):
        return f"{value.dtype} of shape {tuple(value.shape)}"
    return type(value).__name__


@dataclass(frozen=True)
class ServerSGD(ServerOptimizer, kind="sgd"):
    """``x += lr * Δ``; with ``momentum`` β in (0, 1), FedAvgM: ``u = β u + Δ``, ``x += lr * u``.

    ``lr=1, momentum=0`` is plain FedAvg (McMahan et al. 2017). The momentum buffer (state
    ``"momentum"``) exists only when ``momentum > 0``.
    """

    lr: float = 1.0
    momentum: float = 0.0

    def __post_init__(self) -> None:
        check_real("server_optimizer.lr", self.lr, gt=0.0)
        check_real("server_optimizer.momentum", self.momentum, ge=0.0, lt=1.0)

    def state_keys(self) -> tuple[str, ...]:
        return ("momentum",) if self.momentum > 0 else ()

    def _step(self, params: torch.Tensor, update: torch.Tensor, state: Mapping[str, torch.Tensor]
              ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        # the same operations in the same order as the server step before server optimizers were
        # pluggable, so that runs and checkpoints of that time reproduce bit for bit
        step, new_state = update, {}
        if self.momentum > 0:
            step = self.momentum * state["momentum"] + update
            new_state = {"momentum": step}
        return params + self.lr * step, new_state


class _Adaptive(ServerOptimizer):
    """Shared part of FedAdam, FedYogi and FedAdagrad (Reddi et al. 2021, Algorithm 2)."""

    lr: float
    beta1: float
    tau: float
    initial_v: float | None

    def _check_common(self) -> None:
        check_real("server_optimizer.lr", self.lr, gt=0.0)
        check_real("server_optimizer.beta1", self.beta1, ge=0.0, lt=1.0)
        check_real("server_optimizer.tau", self.tau, gt=0.0)
        if self.initial_v is not None:
            check_real("server_optimizer.initial_v", self.initial_v, ge=0.0)
        if not isinstance(getattr(self, "bias_correction", False), bool):
            raise ConfigError(f"server_optimizer.bias_correction: must be a bool, got "
                              f"{self.bias_correction!r}")  # type: ignore[attr-defined]

    @property
    def v0(self) -> float:
        """``v_{-1}``: ``initial_v``, or the paper's ``τ²`` when it is ``None``."""
        return self.tau ** 2 if self.initial_v is None else float(self.initial_v)

    def state_keys(self) -> tuple[str, ...]:
        return ("m", "v", STEP) if getattr(self, "bias_correction", False) else ("m", "v")

    def _initial(self, key: str, size: int, dtype: torch.dtype) -> torch.Tensor:
        if key == "v":
            return torch.full((size,), self.v0, dtype=dtype)
        return super()._initial(key, size, dtype)

    @abstractmethod
    def _second_moment(self, v: torch.Tensor, squared: torch.Tensor) -> torch.Tensor:
        """``v_t`` from ``v_{t-1}`` and ``Δ_t²``."""

    def _step(self, params: torch.Tensor, update: torch.Tensor, state: Mapping[str, torch.Tensor]
              ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        m = self.beta1 * state["m"] + (1.0 - self.beta1) * update
        v = self._second_moment(state["v"], update * update)
        new_state = {"m": m, "v": v}
        lr = self.lr
        if getattr(self, "bias_correction", False):
            t = int(state[STEP]) + 1
            beta2 = getattr(self, "beta2", 0.0)
            lr = self.lr * math.sqrt(1.0 - beta2 ** t) / (1.0 - self.beta1 ** t)
            new_state[STEP] = torch.tensor(t, dtype=torch.int64)
        return params + lr * m / (torch.sqrt(v) + self.tau), new_state


@dataclass(frozen=True)
class _SecondMomentDecay(_Adaptive):
    """The fields FedAdam and FedYogi share: ``beta2`` (the decay of ``v``) and ``bias_correction``."""

    lr: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.99
    tau: float = 1e-3
    initial_v: float | None = None
    bias_correction: bool = False

    def __post_init__(self) -> None:
        self._check_common()
        check_real("server_optimizer.beta2", self.beta2, ge=0.0, lt=1.0)


@dataclass(frozen=True)
class ServerAdam(_SecondMomentDecay, kind="adam"):
    """FedAdam: ``v_t = β2 v_{t-1} + (1 - β2) Δ_t²`` (see the module docstring for the whole step and
    how ``initial_v``, ``bias_correction``, ``tau`` and the defaults relate to Flower and TFF)."""

    def _second_moment(self, v: torch.Tensor, squared: torch.Tensor) -> torch.Tensor:
        return self.beta2 * v + (1.0 - self.beta2) * squared


@dataclass(frozen=True)
class ServerYogi(_SecondMomentDecay, kind="yogi"):
    """FedYogi: ``v_t = v_{t-1} - (1 - β2) Δ_t² sign(v_{t-1} - Δ_t²)``: ``v`` moves towards ``Δ²`` by
    at most ``(1 - β2) Δ²`` per step (Zaheer et al. 2018), so it stays >= 0 from ``initial_v >= 0``
    (see the module docstring for the whole step and the defaults)."""

    lr: float = 0.01

    def _second_moment(self, v: torch.Tensor, squared: torch.Tensor) -> torch.Tensor:
        return v - (1.0 - self.beta2) * squared * torch.sign(v - squared)


@dataclass(frozen=True)
class ServerAdagrad(_Adaptive, kind="adagrad"):
    """FedAdagrad: ``v_t = v_{t-1} + Δ_t²`` (non-decreasing). ``beta1`` defaults to 0 (no momentum, as
    Flower and TFF); the paper's Algorithm 2 allows any β1 in [0, 1) (see the module docstring)."""

    lr: float = 0.1
    beta1: float = 0.0
    tau: float = 1e-3
    initial_v: float | None = None

    def __post_init__(self) -> None:
        self._check_common()

    def _second_moment(self, v: torch.Tensor, squared: torch.Tensor) -> torch.Tensor:
        return v + squared


def resolve_server_optimizer(server_lr: float, server_momentum: float,
                             server_optimizer: ServerOptimizer | None) -> ServerOptimizer:
    """The server optimizer a configuration means: ``server_optimizer``, or, when it is ``None``, the
    ``"sgd"`` kind with the older shorthand fields ``server_lr`` and ``server_momentum``.

    With ``server_optimizer`` given, the shorthands must be left at their defaults (``server_lr=1``,
    ``server_momentum=0``) or agree with it (the same ``lr``; the same momentum of an ``"sgd"`` kind):
    a :class:`ConfigError` naming both fields otherwise, rather than silently preferring one.
    """
    lr = check_real("server_lr", server_lr, gt=0.0)
    momentum = check_real("server_momentum", server_momentum, ge=0.0, lt=1.0)
    if server_optimizer is None:
        return ServerSGD(lr=lr, momentum=momentum)
    if not isinstance(server_optimizer, ServerOptimizer):
        raise ConfigError(f"server_optimizer: expected a ServerOptimizer or None, got "
                          f"{type(server_optimizer).__name__}")
    kind = server_optimizer.kind
    if lr != 1.0 and lr != server_optimizer.lr:
        raise ConfigError(f"server_lr: {server_lr} disagrees with server_optimizer.lr "
                          f"{server_optimizer.lr} ({kind!r}); give the server learning rate once, as "
                          f"server_optimizer.lr (server_lr is the 'sgd' shorthand used when "
                          f"server_optimizer is not set)")
    if momentum != 0.0:
        if not isinstance(server_optimizer, ServerSGD):
            raise ConfigError(f"server_momentum: {server_momentum} is the 'sgd' server optimizer's "
                              f"momentum (FedAvgM), but server_optimizer is {kind!r}, whose first-moment "
                              f"decay is server_optimizer.beta1; leave server_momentum at 0")
        if momentum != server_optimizer.momentum:
            raise ConfigError(f"server_momentum: {server_momentum} disagrees with "
                              f"server_optimizer.momentum {server_optimizer.momentum}; give it once")
    return server_optimizer
