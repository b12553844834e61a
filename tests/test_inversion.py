"""Gradient inversion (DLG, iDLG, Inverting Gradients) on the digits MLP, and the image metrics."""

from __future__ import annotations

import copy
import importlib.util
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from attacks.image_metrics import psnr, ssim
from attacks.inversion import (
    analytic_first_layer,
    best_match_psnr,
    clip_and_noise,
    dlg,
    fedavg_update_target,
    grad_norm,
    idlg_label,
    inverting_gradients,
    random_guess_psnr,
    single_example_gradient,
    summed_gradient,
)
from secagg.errors import ConfigError
from secagg.seeding import torch_generator
from secagg.task import TaskConfig, build_task

SHAPE = (1, 8, 8)
# Single-example thresholds. Measured (seed 0 task, examples 0-3, 30 L-BFGS steps, the papers'
# N(0, 1) start): DLG with the iDLG label 150-157 dB, with a soft label 119-127 dB on examples 0-2
# (example 3's soft-label search stalls at 27 dB within 30 steps: DLG without the label is not
# guaranteed to converge); Inverting Gradients (200 signed-Adam steps) 75-79 dB, limited by its last
# step size (lr 1e-4 after the decays). The U[0, 1) start gives the same ranges (soft label 113-133).
# An MLP's first-layer gradient is delta x^T, so the input is determined exactly and only float32
# rounding (~140 dB) limits the match. The bars leave >= 14 dB of slack for BLAS/platform
# differences and are far above anything an uninformed guess reaches (< 20 dB on digits).
DLG_PSNR_DB = 80.0
IG_PSNR_DB = 60.0


@pytest.fixture(scope="module")
def task():
    saved = torch.get_num_threads()
    torch.set_num_threads(1)  # a 4810-parameter MLP: one thread is fastest on a shared machine
    yield build_task(TaskConfig(model="mlp"), seed=0)
    torch.set_num_threads(saved)


# ---------------------------------------------------------------- metrics


def _images(seed: int, n: int = 4, hi: float = 1.0) -> torch.Tensor:
    return torch.rand((n, 1, 8, 8), generator=torch_generator(seed, "test-img"), dtype=torch.float64) * hi


def test_psnr_known_values():
    x = _images(0, hi=0.9)
    assert torch.isinf(psnr(x, x)).all()
    assert psnr(x + 0.1, x).tolist() == pytest.approx([20.0] * 4, abs=1e-9)  # MSE 0.01
    assert psnr(2 * (x + 0.1), 2 * x, data_range=2.0).tolist() == pytest.approx([20.0] * 4, abs=1e-9)
    per_image = psnr(torch.cat([x[:1] + 0.1, x[1:2] + 0.01]), x[:2])
    assert per_image.tolist() == pytest.approx([20.0, 40.0], abs=1e-9)


def test_ssim_identical_symmetric_and_below_one():
    x, y = _images(1), _images(2)
    assert ssim(x, x).tolist() == pytest.approx([1.0] * 4, abs=1e-12)
    s = ssim(x, y)
    assert torch.allclose(s, ssim(y, x))
    assert bool((s < 1).all()) and bool((s >= -1).all())
    assert bool((ssim(x, (x + 0.05 * y).clamp(0, 1)) > s).all())  # closer image -> higher SSIM


def test_ssim_constant_images_closed_form():
    # Constant images: variances and covariance are 0, so SSIM = (2ab + C1) / (a^2 + b^2 + C1).
    a, b = 0.3, 0.7
    c1 = (0.01 * 1.0) ** 2
    f64 = torch.float64
    got = ssim(torch.full((1, 1, 8, 8), a, dtype=f64), torch.full((1, 1, 8, 8), b, dtype=f64))
    assert float(got) == pytest.approx((2 * a * b + c1) / (a * a + b * b + c1), rel=1e-9)


def test_ssim_matches_scipy_gaussian_reference():
    from scipy.ndimage import gaussian_filter

    x, y = _images(3, n=3), _images(4, n=3)
    c1, c2 = (0.01) ** 2, (0.03) ** 2
    expect = []
    for a, b in zip(x[:, 0].numpy(), y[:, 0].numpy(), strict=True):
        def f(t):
            return gaussian_filter(t, sigma=1.0, truncate=2.0)[2:-2, 2:-2]  # 5x5 window, valid part

        ma, mb = f(a), f(b)
        va, vb, cab = f(a * a) - ma**2, f(b * b) - mb**2, f(a * b) - ma * mb
        smap = (2 * ma * mb + c1) * (2 * cab + c2) / ((ma**2 + mb**2 + c1) * (va + vb + c2))
        expect.append(float(smap.mean()))
    assert ssim(x, y).tolist() == pytest.approx(expect, rel=1e-9)


@pytest.mark.skipif(importlib.util.find_spec("skimage") is None, reason="scikit-image not installed")
def test_ssim_matches_skimage():
    from skimage.metrics import structural_similarity

    x, y = _images(5, n=2), _images(6, n=2)
    expect = [structural_similarity(a[0].numpy(), b[0].numpy(), data_range=1.0, gaussian_weights=True,
                                    sigma=1.0, truncate=2.0, use_sample_covariance=False)
              for a, b in zip(x, y, strict=True)]
    assert ssim(x, y).tolist() == pytest.approx(expect, rel=1e-6)


# ---------------------------------------------------------------- attacks on one example


@pytest.mark.parametrize("i", range(6))
def test_idlg_recovers_the_label(task, i):
    x, y = task.data.train_x[i], int(task.data.train_y[i])
    grads = single_example_gradient(task.model, x, y)
    assert idlg_label(grads[-2]) == y
    # The true row is the only non-positive one (post-ReLU features are >= 0).
    assert bool((grads[-2][y] <= 0).all())


@pytest.mark.parametrize("i", range(3))
def test_dlg_reconstructs_a_single_example(task, i):
    x, y = task.data.train_x[i : i + 1], task.data.train_y[i : i + 1]
    grads = single_example_gradient(task.model, x, y)
    before = [p.detach().clone() for p in task.model.parameters()]
    rec = dlg(task.model, grads, SHAPE, 10, iterations=30, lr=1.0, seed=i, label="idlg")
    assert rec.labels.tolist() == y.tolist()
    assert float(psnr(rec.x, x)) > DLG_PSNR_DB
    assert float(ssim(rec.x, x)) > 0.999
    assert all(torch.equal(a, b) for a, b in zip(before, task.model.parameters(), strict=True))
    soft = dlg(task.model, grads, SHAPE, 10, iterations=30, lr=1.0, seed=i)  # label learned as well
    assert soft.labels.tolist() == y.tolist()
    assert float(psnr(soft.x, x)) > DLG_PSNR_DB


def test_dlg_is_reproducible(task):
    grads = single_example_gradient(task.model, task.data.train_x[0], int(task.data.train_y[0]))
    a = dlg(task.model, grads, SHAPE, 10, iterations=3, seed=7)
    b = dlg(task.model, grads, SHAPE, 10, iterations=3, seed=7)
    assert torch.equal(a.x, b.x) and a.loss == b.loss


def test_dummy_images_start_from_the_papers_standard_normal(task):
    # one Adam step of 1e-12 leaves the start in place: the returned x is the seeded draw projected to
    # [0, 1]. N(0, 1) puts half the pixels below 0 (projected to exactly 0) and 16% above 1; U[0, 1)
    # (the option) puts none at either end
    grads = single_example_gradient(task.model, task.data.train_x[0], int(task.data.train_y[0]))
    n = 64
    start = dlg(task.model, grads, SHAPE, 10, iterations=1, lr=1e-12, optimizer="adam", seed=5,
                num_images=n, label=[0] * n).x
    draw = torch.randn((n, *SHAPE), generator=torch_generator(5, "dlg-init"), dtype=start.dtype)
    torch.testing.assert_close(start, draw.clamp(0.0, 1.0), rtol=0, atol=1e-9)
    assert float((start == 0.0).double().mean()) == pytest.approx(0.5, abs=0.04)  # 4096 pixels: 5 sigma
    assert float((start == 1.0).double().mean()) == pytest.approx(0.1587, abs=0.03)
    uniform = dlg(task.model, grads, SHAPE, 10, iterations=1, lr=1e-12, optimizer="adam", seed=5,
                  num_images=n, label=[0] * n, init="uniform").x
    assert float(uniform.min()) > 0.0 and float(uniform.max()) < 1.0
    ig = inverting_gradients(task.model, grads, SHAPE, [0] * n, iterations=1, lr=1e-12, seed=5).x
    assert float((ig == 0.0).double().mean()) == pytest.approx(0.5, abs=0.04)


@pytest.mark.parametrize("i", range(2))
def test_inverting_gradients_reconstructs_a_single_example(task, i):
    x, y = task.data.train_x[i : i + 1], task.data.train_y[i : i + 1]
    grads = single_example_gradient(task.model, x, y)
    rec = inverting_gradients(task.model, grads, SHAPE, "idlg", iterations=200, lr=0.1, restarts=2, seed=i)
    assert rec.labels.tolist() == y.tolist()
    assert float(psnr(rec.x, x)) > IG_PSNR_DB
    assert float(rec.x.min()) >= 0.0 and float(rec.x.max()) <= 1.0  # box constraint


def test_fedavg_single_step_proxy_is_the_gradient(task):
    x, y = task.data.train_x[:1], task.data.train_y[:1]
    grads = single_example_gradient(task.model, x, y)
    local = copy.deepcopy(task.model)
    opt = torch.optim.SGD(local.parameters(), lr=0.05)
    F.cross_entropy(local(x), y, reduction="sum").backward()
    opt.step()
    pairs = zip(local.parameters(), task.model.parameters(), strict=True)
    update = [a.detach() - b.detach() for a, b in pairs]
    proxy = fedavg_update_target(task.model, update, lr=0.05, steps=1)
    assert all(torch.allclose(p, g, atol=1e-5) for p, g in zip(proxy, grads, strict=True))
    flat = fedavg_update_target(task.model, torch.cat([u.flatten() for u in update]), lr=0.05, steps=1)
    assert all(torch.equal(a, b) for a, b in zip(flat, proxy, strict=True))
    rec = dlg(task.model, proxy, SHAPE, 10, iterations=30, seed=0, label="idlg")
    assert float(psnr(rec.x, x)) > DLG_PSNR_DB


@pytest.mark.parametrize("steps", [1, 5])
def test_analytic_first_layer_recovers_one_example_from_a_multi_step_update(task, steps):
    # Each local step adds delta_t x^T to the first layer's weights and delta_t to its bias, so
    # dW[i] / db[i] = x however many steps (measured 136-163 dB: float rounding only).
    x, y = task.data.train_x[3:4], task.data.train_y[3:4]
    local = copy.deepcopy(task.model)
    opt = torch.optim.SGD(local.parameters(), lr=0.05)
    for _ in range(steps):
        opt.zero_grad()
        F.cross_entropy(local(x), y, reduction="sum").backward()
        opt.step()
    pairs = zip(local.parameters(), task.model.parameters(), strict=True)
    update = [a.detach() - b.detach() for a, b in pairs]
    proxy = fedavg_update_target(task.model, update, lr=0.05, steps=steps)
    rec = analytic_first_layer(task.model, proxy, SHAPE)
    assert float(psnr(rec.x, x)) > DLG_PSNR_DB
    assert rec.labels.tolist() == y.tolist()


def test_analytic_first_layer_needs_a_linear_first_layer():
    cnn = build_task(TaskConfig(model="cnn"), seed=0).model
    grads = [torch.zeros_like(p) for p in cnn.parameters()]
    with pytest.raises(ConfigError, match="model"):
        analytic_first_layer(cnn, grads, SHAPE)


# ---------------------------------------------------------------- secure aggregation of 8 clients


def _baseline(task, xs, trial):
    """Uninformed guesses vs the 8 truths (best match): the training-mean image (the MSE-optimal
    constant guess) and 16 random real training digits not among the clients'; the margin is the
    spread (std) of the latter's best-match PSNRs."""
    mean_db = float(best_match_psnr(task.data.train_x.mean(0, keepdim=True), xs))
    idx = torch.randint(100, len(task.data.train_x), (16,), generator=torch_generator(0, "guess", trial))
    guesses = best_match_psnr(task.data.train_x[idx], xs)
    return mean_db, float(guesses.std()), float(guesses.max())


@pytest.mark.parametrize("trial", range(3))
def test_sum_of_8_gradients_defeats_single_image_dlg(task, trial):
    xs, ys = task.data.train_x[8 * trial : 8 * trial + 8], task.data.train_y[8 * trial : 8 * trial + 8]
    summed = summed_gradient(task.model, xs, ys)
    expect = [sum(parts) for parts in zip(*(single_example_gradient(task.model, x, y)
                                             for x, y in zip(xs, ys, strict=True)), strict=True)]
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(summed, expect, strict=True))
    rec = dlg(task.model, summed, SHAPE, 10, iterations=30, seed=trial)
    got = float(best_match_psnr(rec.x, xs))
    mean_db, margin, _ = _baseline(task, xs, trial)
    uniform_db = float(best_match_psnr(torch.rand((1, *SHAPE), generator=torch_generator(trial, "u")), xs))
    assert mean_db > uniform_db  # the mean image is the stronger of the two baselines
    assert got <= mean_db + margin, (got, mean_db, margin)


@pytest.mark.parametrize("trial", range(2))
def test_sum_of_8_gradients_still_leaks_to_a_batch_attack(task, trial):
    # Secure aggregation alone is NOT enough on this MLP: an attacker that knows k = 8 and the labels
    # and reconstructs 8 images jointly recovers at least one client's digit far better than guessing.
    xs, ys = task.data.train_x[8 * trial : 8 * trial + 8], task.data.train_y[8 * trial : 8 * trial + 8]
    summed = summed_gradient(task.model, xs, ys)
    rec = inverting_gradients(task.model, summed, SHAPE, ys, iterations=300, seed=trial)
    mean_db, _, best_guess_db = _baseline(task, xs, trial)
    assert float(best_match_psnr(rec.x, xs).max()) > max(mean_db, best_guess_db) + 10.0


# ---------------------------------------------------------------- DP simulation, baselines


def test_clip_and_noise(task):
    grads = single_example_gradient(task.model, task.data.train_x[0], int(task.data.train_y[0]))
    norm = grad_norm(grads)
    same = clip_and_noise(grads, clip=2 * norm, noise_multiplier=0.0, seed=0)
    assert all(torch.allclose(a, b) for a, b in zip(same, grads, strict=True))
    clipped = clip_and_noise(grads, clip=norm / 4, noise_multiplier=0.0, seed=0)
    assert grad_norm(clipped) == pytest.approx(norm / 4, rel=1e-5)
    a = clip_and_noise(grads, clip=1.0, noise_multiplier=0.5, seed=3)
    b = clip_and_noise(grads, clip=1.0, noise_multiplier=0.5, seed=3)
    c = clip_and_noise(grads, clip=1.0, noise_multiplier=0.5, seed=4)
    assert all(torch.equal(u, v) for u, v in zip(a, b, strict=True))
    assert not torch.equal(a[0], c[0])
    base = clip_and_noise(grads, clip=1.0, noise_multiplier=0.0, seed=3)
    noise = torch.cat([(u - v).flatten() for u, v in zip(a, base, strict=True)]).double()
    assert float(noise.std()) == pytest.approx(0.5, rel=0.05)  # z * C, over 4810 coordinates
    assert abs(float(noise.mean())) < 0.05


def test_random_guess_baselines(task):
    xs = task.data.train_x[:8]
    uni = random_guess_psnr(xs, 0)
    assert torch.equal(uni, random_guess_psnr(xs, 0)) and uni.shape == (8,)
    # A uniform image has MSE ~ 1/3 - E[x] + E[x^2] against x: a few dB, nowhere near a reconstruction.
    expect = [10 * math.log10(1 / (1 / 3 - float(x.mean()) + float((x**2).mean()))) for x in xs]
    assert uni.tolist() == pytest.approx(expect, abs=1.5)
    mean_img = random_guess_psnr(xs, 0, mean_image=task.data.train_x.mean(0))
    assert bool((mean_img > uni).all())


# ---------------------------------------------------------------- bad settings


def test_bad_settings_raise_config_error_naming_the_field(task):
    m = task.model
    grads = single_example_gradient(m, task.data.train_x[0], int(task.data.train_y[0]))
    cases = {
        "iterations": lambda: dlg(m, grads, SHAPE, 10, iterations=0),
        "lr": lambda: dlg(m, grads, SHAPE, 10, lr=-1.0),
        "optimizer": lambda: dlg(m, grads, SHAPE, 10, optimizer="sgd"),
        "init": lambda: dlg(m, grads, SHAPE, 10, init="zeros"),
        "num_classes": lambda: dlg(m, grads, SHAPE, 1),
        "input_shape": lambda: dlg(m, grads, (64,), 10),
        "target_grads": lambda: dlg(m, grads[:-1], SHAPE, 10),
        "label": lambda: dlg(m, grads, SHAPE, 10, label=[10]),
        "tv_weight": lambda: inverting_gradients(m, grads, SHAPE, 0, tv_weight=-1.0),
        "restarts": lambda: inverting_gradients(m, grads, SHAPE, 0, restarts=0),
        "clip": lambda: clip_and_noise(grads, clip=0.0, noise_multiplier=1.0, seed=0),
        "noise_multiplier": lambda: clip_and_noise(grads, clip=1.0, noise_multiplier=-0.1, seed=0),
        "steps": lambda: fedavg_update_target(m, grads, lr=0.1, steps=0),
        "update": lambda: fedavg_update_target(m, torch.zeros(3), lr=0.1, steps=1),
        "last_layer_weight_grad": lambda: idlg_label(torch.zeros(10)),
        "data_range": lambda: psnr(torch.zeros(1, 1, 8, 8), torch.zeros(1, 1, 8, 8), data_range=0.0),
        "window": lambda: ssim(torch.zeros(1, 1, 8, 8), torch.zeros(1, 1, 8, 8), window=4),
        "x, ref": lambda: psnr(torch.zeros(1, 1, 8, 8), torch.zeros(2, 1, 8, 8)),
    }
    for field, call in cases.items():
        with pytest.raises(ConfigError, match=field):
            call()
    with pytest.raises(ConfigError, match="init: must be one of 'randn', 'uniform'"):
        inverting_gradients(m, grads, SHAPE, 0, init="zeros")


def test_metrics_are_numpy_free_of_nan_on_zero_variance():
    z = torch.zeros(2, 1, 8, 8)
    assert not bool(torch.isnan(ssim(z, z)).any())
    assert np.isinf(psnr(z, z).numpy()).all()
