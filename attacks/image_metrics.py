"""Image-similarity metrics for judging reconstructions: PSNR and SSIM, batched per image.

Both take ``(n, c, h, w)`` tensors (the image being judged ``x`` and the truth ``ref``) and return an
``(n,)`` float64 tensor, one value per image. ``data_range`` is the span of the pixel scale (1.0 for
images in [0, 1]); values outside that range are not clipped.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from secagg.errors import ConfigError
from secagg.validation import check_int, check_real

# SSIM window for 8x8 images: a 5x5 Gaussian with sigma = 1.0 (scipy's ``gaussian_filter`` with
# ``truncate=2.0``), weights normalised to sum 1, applied without padding ("valid"), so an 8x8 image
# has 4x4 local windows. Wang et al.'s 11x11, sigma 1.5 window does not fit an 8x8 image.
SSIM_WINDOW = 5
SSIM_SIGMA = 1.0
SSIM_K1 = 0.01  # C1 = (K1 * data_range)^2, Wang et al. 2004
SSIM_K2 = 0.03  # C2 = (K2 * data_range)^2


def _check_pair(x: torch.Tensor, ref: torch.Tensor) -> None:
    if not isinstance(x, torch.Tensor) or not isinstance(ref, torch.Tensor):
        raise ConfigError("x, ref: must be tensors")
    if x.dim() != 4 or x.shape != ref.shape:
        raise ConfigError(f"x, ref: expected two (n, c, h, w) tensors of the same shape, got "
                          f"{tuple(x.shape)} and {tuple(ref.shape)}")


def psnr(x: torch.Tensor, ref: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """Peak signal-to-noise ratio in dB per image: ``10 log10(data_range^2 / MSE)``.

    The MSE is over each image's channels and pixels. Identical images give ``inf``.
    """
    _check_pair(x, ref)
    data_range = check_real("data_range", data_range, gt=0.0)
    mse = (x.double() - ref.double()).pow(2).flatten(1).mean(1)
    with torch.no_grad():
        out = 10.0 * torch.log10(data_range**2 / mse)
    return torch.where(mse == 0, torch.full_like(mse, math.inf), out)


def _gaussian_window(size: int, sigma: float) -> torch.Tensor:
    r = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(r**2) / (2 * sigma**2))
    g = g / g.sum()
    return torch.outer(g, g)


def ssim(x: torch.Tensor, ref: torch.Tensor, data_range: float = 1.0, *,
         window: int = SSIM_WINDOW, sigma: float = SSIM_SIGMA) -> torch.Tensor:
    """Structural similarity (Wang, Bovik, Sheikh, Simoncelli 2004) per image, in [-1, 1].

    Local means, variances and covariance are Gaussian-weighted (``window`` x ``window``, ``sigma``
    pixels; default 5x5, sigma 1 for 8x8 images) over the valid region, with the population
    (weights-sum-to-one) moments of the paper; ``C1 = (0.01 L)^2``, ``C2 = (0.03 L)^2`` with
    ``L = data_range``. The SSIM map is averaged over positions and channels. Identical images give 1.
    Matches ``skimage.metrics.structural_similarity(gaussian_weights=True, sigma=1.0,
    use_sample_covariance=False, data_range=L)`` with ``truncate=2`` (5x5 window).
    """
    _check_pair(x, ref)
    data_range = check_real("data_range", data_range, gt=0.0)
    check_int("window", window, minimum=1)
    sigma = check_real("sigma", sigma, gt=0.0)
    if window % 2 == 0 or window > min(x.shape[-2:]):
        raise ConfigError(f"window: must be odd and <= min(h, w) = {min(x.shape[-2:])}, got {window}")
    c = x.shape[1]
    kernel = _gaussian_window(window, sigma).expand(c, 1, window, window)
    a, b = x.double(), ref.double()

    def blur(t: torch.Tensor) -> torch.Tensor:
        return F.conv2d(t, kernel, groups=c)

    mu_a, mu_b = blur(a), blur(b)
    var_a = blur(a * a) - mu_a**2
    var_b = blur(b * b) - mu_b**2
    cov = blur(a * b) - mu_a * mu_b
    c1, c2 = (SSIM_K1 * data_range) ** 2, (SSIM_K2 * data_range) ** 2
    smap = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return smap.flatten(1).mean(1)
