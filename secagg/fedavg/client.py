"""Local training on one client: a pure function of its inputs.

``client_update`` depends only on (model architecture, global weights, client data, config, seed) and
touches no global state (torch's global RNG is forked inside), so the same call on another process or
machine returns the same update bit for bit. That is what lets later transports run it remotely.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn

from secagg.data.federated import ClientData
from secagg.errors import ConfigError, DataError, UpdateError
from secagg.layout import ParamLayout

if TYPE_CHECKING:  # config.py imports the trainers, which import this module
    from secagg.fedavg.config import ClientConfig


@dataclass(frozen=True)
class ClientUpdate:
    """What a client sends back: its delta (local minus global weights, in layout order) and its
    example count (the weight in FedAvg's mean). ``train_loss`` is the mean loss over local steps."""

    client_id: int
    delta: torch.Tensor
    num_examples: int
    train_loss: float


def client_update(model: nn.Module, global_state: Mapping[str, torch.Tensor], data: ClientData,
                  config: ClientConfig, layout: ParamLayout, *, seed: int,
                  client_id: int = 0, frozen: torch.Tensor | None = None) -> ClientUpdate:
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
    """
    n = len(data)
    if n == 0:
        raise DataError(f"client {client_id}: has no examples")
    local = copy.deepcopy(model)
    local.load_state_dict(global_state, strict=True)
    local.train()
    masks = frozen_masks(local, layout, frozen)
    anchors = proximal_anchors(local, config.proximal_mu)
    opt = torch.optim.SGD(local.parameters(), lr=config.lr, momentum=config.momentum,
                          weight_decay=config.weight_decay)
    order = torch.Generator().manual_seed(seed)
    batch = n if config.batch_size == 0 else config.batch_size
    losses = []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for _ in range(config.epochs):
            for idx in torch.randperm(n, generator=order).split(batch):
                loss = nn.functional.cross_entropy(local(data.x[idx]), data.y[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                add_proximal_gradient(anchors, config.proximal_mu)
                for param, mask, _ in masks:
                    if param.grad is not None:
                        param.grad.masked_fill_(mask, 0.0)
                opt.step()
                with torch.no_grad():
                    for param, mask, start in masks:
                        param.copy_(torch.where(mask, start, param))
                losses.append(loss.detach())
    delta = layout.flatten(local.state_dict()) - layout.flatten(global_state)
    if not torch.isfinite(delta).all():
        raise UpdateError(f"client {client_id}: local training produced NaN/Inf "
                          f"(lower client.lr, currently {config.lr})")
    return ClientUpdate(client_id, delta, n, float(torch.stack(losses).mean()))


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
