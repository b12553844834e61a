"""Local training on one client: a pure function of its inputs.

``client_update`` depends only on (model architecture, global weights, client data, config, seed) and
touches no global state (torch's global RNG is forked inside), so the same call on another process or
machine returns the same update bit for bit. That is what lets later transports run it remotely.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
from torch import nn

from secagg.data.federated import ClientData
from secagg.errors import ConfigError, DataError, UpdateError
from secagg.fedavg.scaffold import control_corrections, local_control, new_local_control, split_controls
from secagg.layout import CONTROL_PREFIX, ParamLayout

if TYPE_CHECKING:  # config.py imports the trainers, which import this module
    from secagg.fedavg.config import ClientConfig


@dataclass(frozen=True)
class ClientUpdate:
    """What a client sends back: its delta (local minus global weights, in layout order; with
    SCAFFOLD followed by its control change) and its example count (the weight in FedAvg's mean).
    ``train_loss`` is the mean loss over local steps.

    ``local_state`` is not sent: what the client keeps on its own device for its next round (FedBN's
    BatchNorm entries, SCAFFOLD's ``control/...`` entries; empty for plain FedAvg)."""

    client_id: int
    delta: torch.Tensor
    num_examples: int
    train_loss: float
    local_state: dict[str, torch.Tensor] = field(default_factory=dict)


def client_update(model: nn.Module, global_state: Mapping[str, torch.Tensor], data: ClientData,
                  config: ClientConfig, layout: ParamLayout, *, seed: int,
                  client_id: int = 0, frozen: torch.Tensor | None = None,
                  local_state: Mapping[str, torch.Tensor] | None = None) -> ClientUpdate:
    """Train a copy of ``model`` loaded with ``global_state`` on ``data`` and return its delta.

    ``model`` supplies the architecture only; neither it nor ``global_state`` is modified. The data
    order of each epoch and any randomness inside the model (dropout) come from ``seed``. Raises
    :class:`UpdateError` if training produced NaN/Inf, before anything leaves the client.

    ``frozen``: a bool tensor over the layout's ``num_parameters`` flat parameter coordinates; those
    set stay at their global value through every local step (projected gradient descent onto the
    other coordinates: the gradient is zeroed there before each step and the values are restored
    after it, so momentum and weight decay cannot move them either), and their delta is exactly 0.

    ``config.proximal_mu`` = mu > 0: FedProx (Li et al., MLSys 2020). The local objective is the data
    loss plus ``(mu / 2) ||w - w_global||^2`` over the trainable parameters, applied as its exact
    gradient ``mu (w - w_global)`` added to each step's data gradient (before momentum and weight
    decay, which act on the total gradient as on any loss term). The reported ``train_loss`` stays the
    data loss alone. ``mu = 0`` skips the term: the same update, bit for bit, as without FedProx.

    ``local_state``: what this client kept from its last round (``ClientUpdate.local_state``; ``None``
    or empty before its first). FedBN (``layout.local``): the client's own values of those entries
    replace the global ones before training. SCAFFOLD (``layout.has_controls``; ``global_state`` then
    also holds the server's ``control/...`` entries): every step's gradient gets ``c - c_i`` added
    (before momentum and weight decay, as FedProx's term), and the delta is followed by the control
    change of option II (:mod:`secagg.fedavg.scaffold`, which also gives the units).
    """
    n = len(data)
    if n == 0:
        raise DataError(f"client {client_id}: has no examples")
    local = copy.deepcopy(model)
    model_state = {k: v for k, v in global_state.items() if not k.startswith(CONTROL_PREFIX)}
    local.load_state_dict({**model_state, **own_entries(layout, local_state, model_state)}, strict=True)
    local.train()
    masks = frozen_masks(local, layout, frozen)
    anchors = proximal_anchors(local, config.proximal_mu)
    if layout.has_controls:
        server_control, own_control = local_control(layout, global_state, local_state)
        corrections = control_corrections(local, layout, server_control, own_control, config.lr)
    else:
        corrections = []
    opt = torch.optim.SGD(local.parameters(), lr=config.lr, momentum=config.momentum,
                          weight_decay=config.weight_decay)
    order = torch.Generator().manual_seed(seed)
    batch = n if config.batch_size == 0 else config.batch_size
    single = not any(isinstance(m, nn.BatchNorm1d) for m in local.modules())
    losses = []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for _ in range(config.epochs):
            for idx in local_batches(torch.randperm(n, generator=order), batch, single):
                loss = nn.functional.cross_entropy(local(data.x[idx]), data.y[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                add_proximal_gradient(anchors, config.proximal_mu)
                add_gradients(corrections)
                for param, mask, _ in masks:
                    if param.grad is not None:
                        param.grad.masked_fill_(mask, 0.0)
                opt.step()
                with torch.no_grad():
                    for param, mask, start in masks:
                        param.copy_(torch.where(mask, start, param))
                losses.append(loss.detach())
    trained = local.state_dict()
    delta = layout.model.flatten(trained) - layout.model.flatten(model_state)
    kept = {name: trained[name].detach().clone() for name in layout.local}
    if layout.has_controls:
        control = new_local_control(layout, server_control, own_control, delta, len(losses))
        kept.update(split_controls(layout, control))
        delta = torch.cat([delta, control - own_control])
    if not torch.isfinite(delta).all():
        raise UpdateError(f"client {client_id}: local training produced NaN/Inf "
                          f"(lower client.lr, currently {config.lr})")
    return ClientUpdate(client_id, delta, n, float(torch.stack(losses).mean()), kept)


def local_batches(order: torch.Tensor, batch: int, singles: bool = True) -> list[torch.Tensor]:
    """``order`` split into batches of ``batch`` indices (the last one shorter). ``singles=False``: a
    last batch of one example joins the one before it, since BatchNorm1d cannot normalise a batch of
    one in training (a client of one example is then a :class:`DataError`)."""
    parts = list(order.split(batch))
    if not singles and parts[-1].numel() == 1:
        if len(parts) == 1:
            raise DataError("client: has 1 example; a model with BatchNorm1d needs at least 2 per batch")
        parts[-2:] = [torch.cat(parts[-2:])]
    return parts


def own_entries(layout: ParamLayout, local_state: Mapping[str, torch.Tensor] | None,
                model_state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The client's own values of the entries it keeps (``layout.local``, FedBN) from ``local_state``,
    checked against the global model's entries; ``{}`` before its first round (it starts from the
    global values). A kept entry of another shape or dtype is an :class:`UpdateError` (the client's
    store does not belong to this model)."""
    if not layout.local or not local_state or not any(name in local_state for name in layout.local):
        return {}
    out = {}
    for name in layout.local:
        if name not in local_state:
            raise UpdateError(f"client state: lacks the local entry {name!r}")
        mine, ref = local_state[name], model_state[name]
        if not isinstance(mine, torch.Tensor) or mine.shape != ref.shape or mine.dtype != ref.dtype:
            raise UpdateError(f"client state: local entry {name!r} is not a {tuple(ref.shape)} "
                              f"{str(ref.dtype).removeprefix('torch.')} tensor")
        out[name] = mine
    return out


def add_gradients(terms: list[tuple[nn.Parameter, torch.Tensor]]) -> None:
    """Add each fixed ``term`` to its parameter's ``.grad`` in place (a missing ``.grad`` counts as 0)."""
    with torch.no_grad():
        for param, term in terms:
            if param.grad is None:
                param.grad = term.clone()
            else:
                param.grad.add_(term)


def proximal_anchors(model: nn.Module, mu: float) -> list[tuple[nn.Parameter, torch.Tensor]]:
    """``(parameter, its value now)`` for each trainable parameter of ``model`` when FedProx's
    ``mu > 0`` (the anchors ``w_global`` of :func:`add_proximal_gradient`), else ``[]``."""
    if mu == 0:
        return []
    return [(p, p.detach().clone()) for p in model.parameters() if p.requires_grad]


def add_proximal_gradient(anchors: list[tuple[nn.Parameter, torch.Tensor]], mu: float) -> None:
    """Add FedProx's proximal gradient ``mu (w - w_global)`` (the gradient of ``(mu / 2) ||w -
    w_global||^2``) to each anchored parameter's ``.grad`` in place (a missing ``.grad`` counts as 0).
    A no-op without anchors (``mu = 0``)."""
    with torch.no_grad():
        for param, anchor in anchors:
            pull = mu * (param - anchor)
            if param.grad is None:
                param.grad = pull
            else:
                param.grad.add_(pull)


def frozen_masks(model: nn.Module, layout: ParamLayout, frozen: torch.Tensor | None,
                 ) -> list[tuple[nn.Parameter, torch.Tensor, torch.Tensor]]:
    """``(parameter, mask, value)`` for each of ``model``'s parameters with a coordinate set in the flat
    ``frozen`` mask (see :func:`client_update`); ``value`` is a copy of the parameter now."""
    if frozen is None:
        return []
    p = layout.num_parameters
    if not isinstance(frozen, torch.Tensor) or frozen.dtype != torch.bool or tuple(frozen.shape) != (p,):
        got = (f"{frozen.dtype} of shape {tuple(frozen.shape)}" if isinstance(frozen, torch.Tensor)
               else type(frozen).__name__)
        raise ConfigError(f"frozen: expected a bool tensor of shape ({p},) (the layout's parameter "
                          f"coordinates), got {got}")
    params = dict(model.named_parameters())
    out = []
    for spec in layout.specs:
        if spec.kind != "parameter":
            continue
        mask = frozen[spec.offset:spec.offset + spec.numel].reshape(spec.shape)
        if bool(mask.any()):
            param = params[spec.name]
            out.append((param, mask.to(param.device), param.detach().clone()))
    return out
