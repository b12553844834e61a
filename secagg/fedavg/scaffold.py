"""SCAFFOLD's control variates (Karimireddy et al., ICML 2020, Algorithm 1 with option II).

The server keeps a control variate ``c`` and every client ``i`` its own ``c_i``, one value per model
parameter. A client trains from the global model ``x`` with the corrected step
``y <- y - lr (g(y) - c_i + c)`` for its ``K`` local steps, then sets
``c_i+ = c_i - c + (x - y) / (K lr)`` (option II) and sends ``(y - x, c_i+ - c_i)``; the server moves
``x`` by the aggregate of the first half (through the server optimizer, like any update) and
``c <- c + (|S| / N) * aggregate of the second half``.

**Units.** Controls are stored, broadcast and sent multiplied by the client learning rate ``lr``
(the displacement the correction makes in one local step: ``lr c``), which is public and fixed for
the run. Then option II reads ``c~_i+ = c~_i - c~ - (y - x) / K`` with no learning rate in it, the
control half of an update is on the scale of one local step of the model half (``1 / K`` of it), and
a clip or a secure sum's range that fits the model change fits the control change too.

**What travels.** Both halves go in one vector (:meth:`~secagg.layout.ParamLayout.with_controls`),
so a secure sum, a robust rule or DP clipping and noise treat them together: the server sees only
the aggregate of the ``c_i`` changes, never one client's ``c_i``. Under client-level DP the
sensitivity is the clip of the whole vector, so the printed epsilon covers the control half too.
``c`` goes to the clients in the same broadcast as the model (entries named ``control/<parameter>``).

**The weights.** The server averages the control changes with the run's aggregator, i.e. with the
same client weights as the model changes (examples, for the default weighted mean); the paper's
uniform mean is the special case of equal weights (``Mean(weighted=False)``, or every DP mean).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from secagg.errors import RemoteProtocolError, UpdateError
from secagg.layout import CONTROL_PREFIX, ParamLayout

__all__ = ["control_corrections", "control_step", "initial_controls", "local_control", "new_local_control",
           "split_controls"]


def initial_controls(layout: ParamLayout) -> dict[str, torch.Tensor]:
    """``c = 0`` for every control entry of ``layout`` (``{}`` without SCAFFOLD)."""
    return {s.name: torch.zeros(s.shape, dtype=s.dtype) for s in layout.specs if s.kind == "control"}


def _controls(layout: ParamLayout, entries: Mapping[str, torch.Tensor], what: str,
              error: type[Exception]) -> torch.Tensor:
    """The flat control half of ``layout`` read from ``entries`` (checked names, shapes, finiteness)."""
    parts = []
    for s in layout.specs:
        if s.kind != "control":
            continue
        t = entries.get(s.name)
        if not isinstance(t, torch.Tensor) or tuple(t.shape) != s.shape or not t.is_floating_point():
            raise error(f"{what}: control entry {s.name!r} missing or not a float tensor of shape {s.shape}")
        parts.append(t.detach().reshape(-1).to(layout.dtype))
    flat = torch.cat(parts) if parts else torch.zeros(0, dtype=layout.dtype)
    if not torch.isfinite(flat).all():
        raise error(f"{what}: control entries are not finite")
    return flat


def local_control(layout: ParamLayout, global_state: Mapping[str, torch.Tensor],
                  local_state: Mapping[str, torch.Tensor] | None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(c~, c~_i)``, flat over the parameters: the server's control from the broadcast
    ``global_state`` (a broken one is the server's fault: :class:`RemoteProtocolError`) and this
    client's own from ``local_state`` (zero before its first round; a broken one is an
    :class:`UpdateError`: the client's own store is damaged)."""
    server = _controls(layout, global_state, "global state", RemoteProtocolError)
    if local_state is None or not any(k.startswith(CONTROL_PREFIX) for k in local_state):
        return server, torch.zeros_like(server)
    return server, _controls(layout, local_state, "client state", UpdateError)


def control_corrections(model: nn.Module, layout: ParamLayout, server: torch.Tensor, own: torch.Tensor,
                        lr: float) -> list[tuple[nn.Parameter, torch.Tensor]]:
    """``(parameter, (c~ - c~_i) / lr)`` for each parameter: what each local step adds to its gradient
    (``c - c_i`` in the paper's units). Empty when the correction is zero everywhere (the first round:
    plain SGD, bit for bit)."""
    diff = (server - own) / lr
    if not bool((diff != 0).any()):
        return []
    params = dict(model.named_parameters())
    out = []
    for s in layout.specs:
        if s.kind == "control":
            name = s.name.removeprefix(CONTROL_PREFIX)
            param = params[name]
            offset = s.offset - layout.model_dim
            out.append((param, diff[offset:offset + s.numel].reshape(s.shape).to(param.dtype)))
    return out


def new_local_control(layout: ParamLayout, server: torch.Tensor, own: torch.Tensor,
                      model_change: torch.Tensor, steps: int) -> torch.Tensor:
    """Option II: ``c~_i+ = c~_i - c~ - (y - x) / K``, flat over the parameters, from the client's
    parameter change ``y - x`` (the first :attr:`~secagg.layout.ParamLayout.num_parameters`
    coordinates of its model change) after ``K = steps`` local steps."""
    if steps < 1:
        raise UpdateError(f"SCAFFOLD: needs at least one local step, got {steps}")
    p = layout.num_parameters
    return own - server - model_change[:p].to(own.dtype) / steps


def control_step(layout: ParamLayout, controls: Mapping[str, torch.Tensor], aggregate: torch.Tensor,
                 clients: int, num_clients: int) -> dict[str, torch.Tensor]:
    """The server's new controls ``c~ + (|S| / N) * aggregate`` (``aggregate``: the control half of the
    round's aggregate, flat; ``|S| = clients`` aggregated out of ``N = num_clients``)."""
    current = _controls(layout, controls, "server state", UpdateError)
    return split_controls(layout, current + (clients / num_clients) * aggregate.to(current.dtype))


def split_controls(layout: ParamLayout, flat: torch.Tensor) -> dict[str, torch.Tensor]:
    """The flat control half ``flat`` split into ``layout``'s ``control/...`` entries (new tensors)."""
    out, offset = {}, 0
    for s in layout.specs:
        if s.kind == "control":
            out[s.name] = flat[offset:offset + s.numel].reshape(s.shape).clone()
            offset += s.numel
    return out
