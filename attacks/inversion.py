"""Gradient inversion: what an honest-but-curious server recovers from a client's update.

Without secure aggregation the server sees each client's gradient (or multi-step FedAvg update) and
can reconstruct the client's training images from it. These attacks measure that leak, and how much
of it survives when the server only sees the *sum* of k clients' gradients (secure aggregation) or a
clipped, noised gradient (differential privacy):

* :func:`idlg_label`: analytic label recovery, iDLG (Zhao, Mopuri, Bilen 2020, "iDLG: Improved Deep
  Leakage from Gradients").
* :func:`dlg`: Deep Leakage from Gradients (Zhu, Liu, Han, NeurIPS 2019): L-BFGS (or Adam) on a dummy
  input (and soft label) minimising the squared L2 distance between gradients.
* :func:`analytic_first_layer`: closed-form recovery from a first fully connected layer (Phong et al.
  2018), what makes an MLP's single-example gradient leak its input exactly.
* :func:`inverting_gradients`: Geiping, Bauermeister, Droege, Moeller, NeurIPS 2020, "Inverting
  Gradients - How easy is it to break privacy in federated learning?": cosine gradient matching plus a
  total-variation prior, signed Adam steps, a box constraint to [0, 1] and restarts.

Gradients are lists of tensors in the order of ``model.parameters()`` (those with ``requires_grad``),
of the summed cross-entropy loss over the examples. The attacks never change the model's weights.
Every random draw (dummy initialisation, simulation noise) comes from :mod:`secagg.seeding`: seeded,
reproducible, not secret. Dummy images start as both papers do, from a standard normal
(``init="randn"``: ``torch.randn`` in DLG's code and in Geiping et al.'s
``inversefed``); ``init="uniform"`` (U[0, 1), the pixel range) is kept as an option.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from attacks.image_metrics import psnr
from secagg.errors import ConfigError
from secagg.seeding import torch_generator
from secagg.validation import check_choice, check_int, check_real

Grads = list[torch.Tensor]
INITS = ("randn", "uniform")


@dataclass(frozen=True)
class Reconstruction:
    """An attack's output.

    ``x``: (n, c, h, w) reconstructed images (detached). ``labels``: (n,) int64 labels used or
    recovered (argmax of the soft label when it was optimised). ``loss``: final gradient-matching loss
    (squared L2 for DLG, 1 - cosine for inverting gradients; best restart). ``iterations``: optimiser
    steps run (per restart for inverting gradients).
    """

    x: torch.Tensor
    labels: torch.Tensor
    loss: float
    iterations: int


def _params(model: nn.Module) -> list[nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


def _check_grads(model: nn.Module, grads: Sequence[torch.Tensor], field: str = "target_grads") -> Grads:
    params = _params(model)
    if len(grads) != len(params) or any(g.shape != p.shape for g, p in zip(grads, params, strict=False)):
        raise ConfigError(f"{field}: expected {len(params)} tensors shaped like model.parameters(), got "
                          f"{[tuple(g.shape) for g in grads]}")
    return [g.detach().to(p.dtype) for g, p in zip(grads, params, strict=True)]


def _check_input_shape(input_shape: Sequence[int]) -> tuple[int, ...]:
    shape = tuple(input_shape)
    if len(shape) != 3 or not all(isinstance(s, int) and s >= 1 for s in shape):
        raise ConfigError(f"input_shape: expected (channels, height, width) of positive ints, got {shape}")
    return shape


def _dummy(shape: tuple[int, ...], init: str, gen: torch.Generator, dtype: torch.dtype) -> torch.Tensor:
    """The starting dummy images: N(0, 1) (``"randn"``) or U[0, 1) (``"uniform"``) per pixel."""
    draw = torch.randn if init == "randn" else torch.rand
    return draw(shape, generator=gen, dtype=dtype)  # not secret: the attacker's own starting point


def single_example_gradient(model: nn.Module, x: torch.Tensor, y: torch.Tensor | int) -> Grads:
    """Gradient of the cross-entropy loss of one example ``x`` ((c, h, w) or (1, c, h, w)), label ``y``.

    What a client sends in FedSGD with batch size 1, and what the server sees without secure
    aggregation.
    """
    if x.dim() == 3:
        x = x.unsqueeze(0)
    if x.dim() != 4 or x.shape[0] != 1:
        raise ConfigError(f"x: expected one example (c, h, w) or (1, c, h, w), got {tuple(x.shape)}")
    y_t = torch.as_tensor(y, dtype=torch.long).reshape(1)
    return summed_gradient(model, x, y_t)


def summed_gradient(model: nn.Module, xs: torch.Tensor, ys: torch.Tensor) -> Grads:
    """Sum over the k examples ``xs`` (k, c, h, w) of their single-example gradients.

    This is what the server learns under secure aggregation of k clients that each send one
    example's gradient: only the sum (the gradient of the summed loss).
    """
    if xs.dim() != 4 or ys.dim() != 1 or xs.shape[0] != ys.shape[0] or xs.shape[0] < 1:
        raise ConfigError(f"xs, ys: expected (k, c, h, w) and (k,) with k >= 1, got {tuple(xs.shape)} "
                          f"and {tuple(ys.shape)}")
    params = _params(model)
    loss = F.cross_entropy(model(xs.to(params[0].dtype)), ys.long(), reduction="sum")
    return [g.detach() for g in torch.autograd.grad(loss, params)]


def grad_norm(grads: Sequence[torch.Tensor]) -> float:
    """L2 norm of the gradient flattened over all tensors."""
    return float(torch.sqrt(sum((g.double() ** 2).sum() for g in grads)))


def clip_and_noise(grads: Sequence[torch.Tensor], *, clip: float, noise_multiplier: float,
                   seed: int) -> Grads:
    """Clip the whole gradient to L2 norm ``clip`` (C), then add N(0, (z C)^2) to every coordinate.

    A *simulation* of the DP-SGD / DP-FedAvg defence for the attack benchmark: the noise comes from a
    seeded simulation generator (:func:`secagg.seeding.torch_generator`), reproducible and not secret.
    The library's real privacy noise is produced by :mod:`dp`, not here.
    """
    clip = check_real("clip", clip, gt=0.0)
    z = check_real("noise_multiplier", noise_multiplier, ge=0.0)
    check_int("seed", seed, minimum=0)
    scale = min(1.0, clip / max(grad_norm(grads), 1e-300))
    gen = torch_generator(seed, "inversion-dp-noise")
    out = []
    for g in grads:
        noise = torch.randn(g.shape, generator=gen, dtype=torch.float64) * (z * clip)
        out.append((g.double() * scale + noise).to(g.dtype))
    return out


def fedavg_update_target(model: nn.Module, update: Sequence[torch.Tensor] | torch.Tensor, *,
                         lr: float, steps: int) -> Grads:
    """Gradient proxy of a multi-step FedAvg update: ``-update / (lr * steps)``.

    ``update`` is the client's weight difference (new - old), as a list shaped like
    ``model.parameters()`` or one flat vector, after ``steps`` local SGD steps at learning rate ``lr``.
    The attacks match this proxy as if it were one gradient at the global weights (the simple proxy of
    Geiping et al. 2020, Sec. 5; local steps are *not* simulated), which is exact for ``steps = 1``
    and an average of gradients along the local trajectory otherwise.
    """
    lr = check_real("lr", lr, gt=0.0)
    steps = check_int("steps", steps, minimum=1)
    params = _params(model)
    if isinstance(update, torch.Tensor):
        total = sum(p.numel() for p in params)
        if update.dim() != 1 or update.numel() != total:
            raise ConfigError(f"update: a flat update must have {total} entries, got {tuple(update.shape)}")
        parts = list(torch.split(update, [p.numel() for p in params]))
        update = [u.reshape(p.shape) for u, p in zip(parts, params, strict=True)]
    ups = _check_grads(model, list(update), "update")
    return [-u / (lr * steps) for u in ups]


def idlg_label(last_layer_weight_grad: torch.Tensor) -> int:
    """iDLG label of a single example from the last linear layer's weight gradient (classes, features).

    With cross-entropy, that gradient is ``(softmax - onehot(y)) h^T`` with ``h >= 0`` (post-ReLU), so
    the true class's row is the only one with non-positive entries (Zhao et al. 2020). Returns the row
    with the smallest sum (the negative row). Only valid for one example's gradient.
    """
    g = last_layer_weight_grad
    if not isinstance(g, torch.Tensor) or g.dim() != 2 or g.shape[0] < 2:
        raise ConfigError(f"last_layer_weight_grad: expected a (classes >= 2, features) tensor, got "
                          f"{getattr(g, 'shape', type(g).__name__)}")
    sums = g.double().sum(1)
    if not bool((sums < 0).any()):
        raise ConfigError("last_layer_weight_grad: no row has a negative sum (all activations zero?); "
                          "the label cannot be recovered")
    return int(sums.argmin())


def last_weight_grad(model: nn.Module, grads: Grads) -> torch.Tensor:
    """The gradient of the model's last linear layer weight (the input of :func:`idlg_label`)."""
    for p, g in zip(reversed(_params(model)), reversed(grads), strict=True):
        if p.dim() == 2:
            return g
    raise ConfigError("model: no linear layer weight (2-D parameter) for iDLG label recovery")


def _matching_loss(dummy: Grads, target: Grads, kind: str) -> torch.Tensor:
    if kind == "l2":
        return sum(((d - t) ** 2).sum() for d, t in zip(dummy, target, strict=True))
    dot = sum((d * t).sum() for d, t in zip(dummy, target, strict=True))
    dn = sum((d * d).sum() for d in dummy)
    tn = sum((t * t).sum() for t in target)
    return 1.0 - dot / (dn.clamp_min(1e-30).sqrt() * tn.clamp_min(1e-30).sqrt())


def _labels_arg(label: int | Sequence[int] | torch.Tensor | None, n: int, num_classes: int,
                model: nn.Module, target: Grads) -> torch.Tensor | None:
    if label is None:
        return None
    if isinstance(label, str):
        check_choice("label", label, ("idlg",))
        if n != 1:
            raise ConfigError(f"label: 'idlg' recovers one example's label, needs num_images = 1, got {n}")
        return torch.tensor([idlg_label(last_weight_grad(model, target))])
    lab = torch.as_tensor(label, dtype=torch.long).reshape(-1)
    if lab.numel() != n or bool((lab < 0).any()) or bool((lab >= num_classes).any()):
        raise ConfigError(f"label: expected {n} label(s) in [0, {num_classes - 1}], got {lab.tolist()}")
    return lab


def dlg(model: nn.Module, target_grads: Sequence[torch.Tensor], input_shape: Sequence[int],
        num_classes: int, *, iterations: int = 100, lr: float = 1.0, seed: int = 0,
        label: int | Sequence[int] | str | None = None, num_images: int = 1,
        optimizer: str = "lbfgs", init: str = "randn") -> Reconstruction:
    """Deep Leakage from Gradients (Zhu et al. 2019).

    Optimises ``num_images`` dummy images (initialised from ``seed``: N(0, 1) per pixel as in the
    paper, or U[0, 1) with ``init="uniform"``) and, when ``label`` is None, soft-label logits
    (N(0, 1)), to minimise ``sum ||grad(dummy) - target||_2^2`` with L-BFGS
    (``iterations`` outer steps of at most 20 evaluations each, strong-Wolfe line search) or Adam.
    ``label`` may be fixed labels, or ``"idlg"`` to recover the single example's label first (iDLG).
    The image is not constrained to [0, 1] during the search, as in the paper; the returned ``x`` is
    projected to [0, 1] (the attacker knows the pixel range), ``loss`` is that of the unprojected one.
    """
    params = _params(model)
    target = _check_grads(model, target_grads)
    shape = _check_input_shape(input_shape)
    num_classes = check_int("num_classes", num_classes, minimum=2)
    iterations = check_int("iterations", iterations, minimum=1)
    lr = check_real("lr", lr, gt=0.0)
    check_int("seed", seed, minimum=0)
    n = check_int("num_images", num_images, minimum=1)
    optimizer = check_choice("optimizer", optimizer, ("lbfgs", "adam"))
    init = check_choice("init", init, INITS)
    fixed = _labels_arg(label, n, num_classes, model, target)

    dtype = params[0].dtype
    gen = torch_generator(seed, "dlg-init")
    x = _dummy((n, *shape), init, gen, dtype).requires_grad_(True)
    soft = torch.randn((n, num_classes), generator=gen, dtype=dtype).requires_grad_(fixed is None)
    variables = [x] if fixed is not None else [x, soft]

    def objective() -> torch.Tensor:
        out = model(x)
        if fixed is not None:
            loss = F.cross_entropy(out, fixed, reduction="sum")
        else:
            loss = -(F.softmax(soft, -1) * F.log_softmax(out, -1)).sum()
        dummy = torch.autograd.grad(loss, params, create_graph=True)
        return _matching_loss(list(dummy), target, "l2")

    if optimizer == "lbfgs":
        opt: torch.optim.Optimizer = torch.optim.LBFGS(variables, lr=lr, max_iter=20,
                                                       line_search_fn="strong_wolfe",
                                                       tolerance_grad=1e-12, tolerance_change=1e-16)
    else:
        opt = torch.optim.Adam(variables, lr=lr)

    def closure() -> torch.Tensor:
        opt.zero_grad()
        value = objective()
        value.backward()
        return value

    run = 0
    for run in range(1, iterations + 1):  # noqa: B007 - ``run`` is reported
        value = opt.step(closure)
        if not torch.isfinite(value.detach()) or float(value.detach()) == 0.0:
            break
    final = float(objective().detach())
    labels = fixed if fixed is not None else soft.detach().argmax(-1)
    return Reconstruction(x.detach().clamp(0.0, 1.0), labels.clone(), final, run)


def analytic_first_layer(model: nn.Module, target_grads: Sequence[torch.Tensor],
                         input_shape: Sequence[int]) -> Reconstruction:
    """Closed-form input recovery from a first fully connected layer with bias (no optimisation).

    For ``y = W x + b`` on the flattened input, one example's gradient is ``dW = delta x^T``,
    ``db = delta``, so ``x = dW[i] / db[i]`` for any unit ``i`` with ``db[i] != 0`` (Phong et al. 2018,
    "Privacy-preserving deep learning via additively homomorphic encryption"; Geiping et al. 2020,
    Prop. D.1). The unit with the largest ``|db[i]|`` is used. The same holds for a multi-step update
    of one example (each step adds ``delta_t x^T``). Summed over several examples the rows mix the
    inputs, except at units only one example activates. The model's first two parameters must be that
    layer's (out, in) weight and (out,) bias, ``in`` = prod(input_shape). ``labels``: the iDLG label,
    ``loss``: 0, ``iterations``: 0; ``x`` is projected to [0, 1].
    """
    params = _params(model)
    target = _check_grads(model, target_grads)
    shape = _check_input_shape(input_shape)
    features = shape[0] * shape[1] * shape[2]
    if len(params) < 2 or params[0].dim() != 2 or params[1].dim() != 1 or \
            params[0].shape[1] != features or params[1].shape[0] != params[0].shape[0]:
        raise ConfigError(f"model: first parameters must be a Linear({features}, out) weight and bias, got "
                          f"{[tuple(p.shape) for p in params[:2]]}")
    dw, db = target[0].double(), target[1].double()
    i = int(db.abs().argmax())
    if float(db[i]) == 0.0:
        raise ConfigError("target_grads: the first layer's bias gradient is zero; nothing to invert")
    x = (dw[i] / db[i]).reshape(1, *shape).clamp(0.0, 1.0).to(params[0].dtype)
    label = torch.tensor([idlg_label(last_weight_grad(model, target))])
    return Reconstruction(x, label, 0.0, 0)


def total_variation(x: torch.Tensor) -> torch.Tensor:
    """Anisotropic total variation per batch: mean absolute difference of neighbouring pixels."""
    return (x[..., 1:, :] - x[..., :-1, :]).abs().mean() + (x[..., :, 1:] - x[..., :, :-1]).abs().mean()


def inverting_gradients(model: nn.Module, target_grads: Sequence[torch.Tensor],
                        input_shape: Sequence[int], label: int | Sequence[int] | str, *,
                        iterations: int = 400, lr: float = 0.1, tv_weight: float = 1e-4,
                        restarts: int = 1, seed: int = 0, num_classes: int | None = None,
                        init: str = "randn") -> Reconstruction:
    """Inverting Gradients (Geiping et al. 2020).

    Minimises ``1 - cos(grad(dummy), target) + tv_weight * TV(dummy)`` over dummy images with Adam on
    the *sign* of the gradient (lr decayed x0.1 at 3/8, 5/8 and 7/8 of ``iterations``), projecting to
    [0, 1] after every step. ``restarts`` independent initialisations from ``seed`` (N(0, 1) per pixel
    as in the paper, or U[0, 1) with ``init="uniform"``); the one with the lowest final cosine
    matching loss (without TV) is returned. ``label``: known labels (one
    per image: the number of images is their count) or ``"idlg"`` (one image; needs ``num_classes``
    only for checking, defaults to the last layer's rows).
    """
    params = _params(model)
    target = _check_grads(model, target_grads)
    shape = _check_input_shape(input_shape)
    iterations = check_int("iterations", iterations, minimum=1)
    lr = check_real("lr", lr, gt=0.0)
    tv_weight = check_real("tv_weight", tv_weight, ge=0.0)
    restarts = check_int("restarts", restarts, minimum=1)
    check_int("seed", seed, minimum=0)
    init = check_choice("init", init, INITS)
    classes = int(last_weight_grad(model, target).shape[0]) if num_classes is None else \
        check_int("num_classes", num_classes, minimum=2)
    n = 1 if isinstance(label, str | int) else len(torch.as_tensor(label).reshape(-1))
    labels = _labels_arg(label, n, classes, model, target)
    assert labels is not None
    dtype = params[0].dtype
    milestones = [int(iterations * f) for f in (3 / 8, 5 / 8, 7 / 8)]

    def match(x: torch.Tensor, create_graph: bool) -> torch.Tensor:
        loss = F.cross_entropy(model(x), labels, reduction="sum")
        dummy = torch.autograd.grad(loss, params, create_graph=create_graph)
        return _matching_loss(list(dummy), target, "cos")

    best: tuple[float, torch.Tensor] | None = None
    for r in range(restarts):
        gen = torch_generator(seed, "ig-init", r)
        # as in inversefed, the box constraint first applies after the first step, not to the draw
        x = _dummy((n, *shape), init, gen, dtype).requires_grad_(True)
        opt = torch.optim.Adam([x], lr=lr)
        sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=milestones, gamma=0.1)
        for _ in range(iterations):
            opt.zero_grad()
            objective = match(x, True) + tv_weight * total_variation(x)
            (grad,) = torch.autograd.grad(objective, [x])
            x.grad = grad.sign()
            opt.step()
            sched.step()
            with torch.no_grad():
                x.clamp_(0.0, 1.0)
        final = float(match(x, False).detach())
        if best is None or final < best[0]:
            best = (final, x.detach().clone())
    assert best is not None
    return Reconstruction(best[1], labels.clone(), best[0], iterations)


def best_match_psnr(x: torch.Tensor, truth: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """For each reconstructed image in ``x`` (n, c, h, w), the PSNR (dB) against its closest image in
    ``truth`` (k, c, h, w): the attacker wins if it recovers *any* client's image."""
    if x.dim() != 4 or truth.dim() != 4 or x.shape[1:] != truth.shape[1:]:
        raise ConfigError(f"x, truth: expected (n, c, h, w) and (k, c, h, w), got {tuple(x.shape)} "
                          f"and {tuple(truth.shape)}")
    n, k = x.shape[0], truth.shape[0]
    a = x.repeat_interleave(k, 0)
    b = truth.repeat(n, 1, 1, 1)
    return psnr(a, b, data_range).reshape(n, k).max(1).values


def random_guess_psnr(x_true: torch.Tensor, seed: int, *, mean_image: torch.Tensor | None = None,
                      data_range: float = 1.0) -> torch.Tensor:
    """Baseline PSNR (dB) per true image of a guess made without the gradient.

    Without ``mean_image``: a uniform-random image in [0, data_range) per true image (seeded
    simulation randomness). With ``mean_image`` (c, h, w), e.g. the training-set mean: that image,
    the stronger baseline (it needs no seed).
    """
    check_int("seed", seed, minimum=0)
    if x_true.dim() != 4:
        raise ConfigError(f"x_true: expected (n, c, h, w), got {tuple(x_true.shape)}")
    if mean_image is not None:
        if tuple(mean_image.shape) != tuple(x_true.shape[1:]):
            raise ConfigError(f"mean_image: expected shape {tuple(x_true.shape[1:])}, got "
                              f"{tuple(mean_image.shape)}")
        guess = mean_image.to(x_true.dtype).expand_as(x_true)
    else:
        gen = torch_generator(seed, "inversion-random-guess")
        guess = torch.rand(x_true.shape, generator=gen, dtype=torch.float64) * data_range
    return psnr(guess, x_true, data_range)
