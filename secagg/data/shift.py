"""Feature shift: every client (site, hospital) sees the data through its own acquisition.

Hospitals differ not only in *what* they see but in *how*: scanners and protocols differ in
intensity, contrast, sharpness and patient positioning. FedBN (Li et al., ICLR 2021) names this
feature-shift non-IID; NIID-Bench (Li et al., ICDE 2022) simulates feature skew with a per-client
noise level. :class:`FeatureShift` simulates acquisitions instead: client ``i`` gets one seeded
:class:`SiteAcquisition`, applied to every one of its training images, in this order:

1. **rotation** by ``angle`` degrees about the image centre (bilinear, ``torch.nn.functional.
   affine_grid`` / ``grid_sample``, pixels that come from outside the image are 0; positive angles
   turn the image counter-clockwise as displayed with row 0 at the top, as ``torch.rot90`` with
   ``k=1`` does; aspect ratio kept for non-square images);
2. **blur**: a Gaussian of standard deviation ``sigma`` pixels (separable, kernel radius
   ``ceil(3 sigma)``, normalised to sum 1, edges replicated: a constant image stays constant);
3. **contrast and intensity**: ``x -> gain * x + offset`` (a detector's gain and offset, in the
   images' own units: [0, 1] for the built-in data sets). The result is not clipped, so the value
   range of a shifted site is not [0, 1] (an uncalibrated scanner's is not either).

Each site's parameters are uniform draws inside the strengths: ``offset`` in ``[-intensity,
intensity]``, ``gain`` in ``[1 - contrast, 1 + contrast]``, ``sigma`` in ``[0, blur]`` pixels and
``angle`` in ``[-rotation, rotation]`` degrees, from :func:`secagg.seeding.numpy_rng` with the run's
root seed and key ``("shift", "site", i)``: deterministic, and a site's acquisition does not depend on
how many clients there are. A strength of 0 is the identity, bit for bit (the step is skipped).

Tabular data (``(n, features)``, e.g. the bundled breast-cancer table) gets the per-site affine map
``gain * x + offset`` on every feature instead (a lab's calibration gain and offset); rotation and
blur have no meaning there and are not applied (so one configuration serves both kinds of data).
Other shapes (``(n, h, w)`` without a channel axis, sequences) or non-float data are a
:class:`ConfigError`: feature shift is defined for images and for tabular rows only.

The test set: with ``test="clean"`` (the default) the global test set is left as loaded, i.e. the
reference acquisition, which no site has exactly: it measures how well the federation's model
transfers to unshifted data. With ``test="sites"`` each test example is given to one site (uniformly
at random, seeded with key ``("shift", "test")``) and shown through that site's acquisition, so the
global accuracy is that over the sites' own acquisitions, every site weighted alike. To measure one
site on its own acquisition, apply ``shift.site(i, seed)`` to the (clean) test images
(:meth:`FeatureShift.site_test`).

:func:`secagg.task.build_task` (and a task factory's data, through :func:`secagg.task.make_task`)
applies ``TaskConfig.shift`` after partitioning, so a deployment's clients, which build the task from
the server's configuration and the run seed, hold exactly the shifted data the simulation would.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from secagg.data.federated import FederatedDataset
from secagg.errors import ConfigError
from secagg.seeding import numpy_rng
from secagg.validation import check_choice, check_int, check_keys, check_real

__all__ = ["FeatureShift", "SiteAcquisition", "adjust_intensity", "gaussian_blur", "rotate"]

TEST_SETS = ("clean", "sites")
MAX_BLUR = 10.0  # pixels
MAX_ROTATION = 180.0  # degrees
_CHUNK = 2048  # images per grid_sample call (bounds the sampling grid's memory)


def _check_images(x: torch.Tensor, what: str) -> None:
    if not isinstance(x, torch.Tensor) or x.ndim != 4 or not x.is_floating_point():
        raise ConfigError(f"shift.{what}: needs float images (n, c, h, w), got "
                          f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}")


def rotate(x: torch.Tensor, degrees: float) -> torch.Tensor:
    """Images ``x`` (n, c, h, w) rotated by ``degrees`` about their centre (counter-clockwise as
    displayed, bilinear, zeros from outside the image). ``degrees == 0`` returns ``x`` itself."""
    _check_images(x, "rotation")
    degrees = check_real("shift.rotation", degrees)
    if degrees == 0 or x.shape[0] == 0:
        return x
    n, _, h, w = x.shape
    rad = math.radians(degrees)
    cos, sin = math.cos(rad), math.sin(rad)
    # output -> input map in normalised coordinates ([-1, 1] along each axis): a pixel-space rotation
    theta = torch.tensor([[cos, -sin * h / w, 0.0], [sin * w / h, cos, 0.0]], dtype=x.dtype)
    out = torch.empty_like(x)
    for start in range(0, n, _CHUNK):
        part = x[start:start + _CHUNK]
        grid = F.affine_grid(theta.expand(part.shape[0], 2, 3), list(part.shape), align_corners=False)
        out[start:start + _CHUNK] = F.grid_sample(part, grid, mode="bilinear", padding_mode="zeros",
                                                  align_corners=False)
    return out


def _blur_matrix(size: int, kernel: torch.Tensor) -> torch.Tensor:
    """The (size, size) matrix of a 1-D convolution with ``kernel`` (odd length) whose edges are
    replicated: row ``i`` puts ``kernel[j]`` on ``clamp(i + j - radius, 0, size - 1)``, so every row
    sums to the kernel's sum."""
    radius = (kernel.numel() - 1) // 2
    rows = torch.arange(size).unsqueeze(1)
    cols = (rows + torch.arange(-radius, radius + 1).unsqueeze(0)).clamp(0, size - 1)
    matrix = torch.zeros(size, size, dtype=kernel.dtype)
    matrix.scatter_add_(1, cols, kernel.expand(size, -1).contiguous())
    return matrix


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Images ``x`` (n, c, h, w) blurred by a Gaussian of ``sigma`` pixels (separable, radius
    ``ceil(3 sigma)``, kernel sums to 1, edges replicated). ``sigma == 0`` returns ``x`` itself.

    Computed as ``B_h @ x @ B_w.T`` with the two 1-D blurs as (h, h) and (w, w) matrices (edge
    replication folded in), which is much faster on CPU than a depthwise ``conv2d``."""
    _check_images(x, "blur")
    sigma = check_real("shift.blur", sigma, ge=0)
    if sigma == 0 or x.shape[0] == 0:
        return x
    radius = max(1, math.ceil(3 * sigma))
    k = torch.arange(-radius, radius + 1, dtype=torch.float64)
    kernel = torch.exp(-0.5 * (k / sigma) ** 2)
    kernel = kernel / kernel.sum()
    rows = _blur_matrix(x.shape[2], kernel).to(x.dtype)
    cols = _blur_matrix(x.shape[3], kernel).to(x.dtype)
    return torch.matmul(torch.matmul(rows, x), cols.T)


def adjust_intensity(x: torch.Tensor, gain: float, offset: float) -> torch.Tensor:
    """``gain * x + offset`` (contrast and intensity; not clipped). ``gain == 1, offset == 0``
    returns ``x`` itself."""
    if gain == 1 and offset == 0:
        return x
    return x * gain + offset


@dataclass(frozen=True)
class SiteAcquisition:
    """One site's acquisition: ``offset`` (intensity, image units), ``gain`` (contrast, > 0),
    ``sigma`` (blur, pixels) and ``angle`` (rotation, degrees). Call it on images (n, c, h, w) or
    tabular rows (n, features), which get only ``gain`` and ``offset``; see the module docstring for
    the order."""

    offset: float = 0.0
    gain: float = 1.0
    sigma: float = 0.0
    angle: float = 0.0

    @property
    def is_identity(self) -> bool:
        return self.offset == 0 and self.gain == 1 and self.sigma == 0 and self.angle == 0

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.ndim not in (2, 4):
            raise ConfigError(f"shift: feature shift applies to float images (n, c, h, w) or tabular rows "
                              f"(n, features), got "
                              f"{(tuple(x.shape), str(x.dtype)) if isinstance(x, torch.Tensor) else type(x)}")
        if x.ndim == 2:  # tabular rows: gain and offset only (rotation and blur are for images)
            return adjust_intensity(x, self.gain, self.offset)
        return adjust_intensity(gaussian_blur(rotate(x, self.angle), self.sigma), self.gain, self.offset)

    def to_dict(self) -> dict[str, float]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class FeatureShift:
    """Per-site acquisition strengths (validated on construction; :class:`ConfigError` naming the
    field and the bound):

    * ``intensity`` in [0, 1]: sites' brightness offsets are uniform in ``[-intensity, intensity]``
      (image units; default 0.2);
    * ``contrast`` in [0, 1): gains uniform in ``[1 - contrast, 1 + contrast]`` (default 0.3);
    * ``blur`` in [0, 10] pixels: Gaussian blur sigmas uniform in ``[0, blur]`` (default 1.0);
    * ``rotation`` in [0, 180] degrees: angles uniform in ``[-rotation, rotation]`` (default 15);
    * ``test``: ``"clean"`` (default: the global test set as loaded) or ``"sites"`` (each test
      example shown through a seeded site's acquisition).

    See the module docstring for what each does and how the sites are drawn.
    """

    intensity: float = 0.2
    contrast: float = 0.3
    blur: float = 1.0
    rotation: float = 15.0
    test: str = "clean"

    def __post_init__(self) -> None:
        for name, bounds in (("intensity", {"ge": 0.0, "le": 1.0}), ("contrast", {"ge": 0.0, "lt": 1.0}),
                             ("blur", {"ge": 0.0, "le": MAX_BLUR}),
                             ("rotation", {"ge": 0.0, "le": MAX_ROTATION})):
            object.__setattr__(self, name, check_real(f"shift.{name}", getattr(self, name), **bounds))
        check_choice("shift.test", self.test, TEST_SETS)

    def site(self, client: int, seed: int) -> SiteAcquisition:
        """Site ``client``'s acquisition in the run seeded by ``seed`` (the run's root seed)."""
        client = check_int("client", int(client) if isinstance(client, np.integer) else client, minimum=0)
        seed = check_int("seed", seed, minimum=0)
        u = numpy_rng(seed, "shift", "site", client).random(4)
        # ``+ 0.0`` turns a zero strength's -0.0 into 0.0
        return SiteAcquisition(offset=float(self.intensity * (2 * u[0] - 1)) + 0.0,
                               gain=float(1.0 + self.contrast * (2 * u[1] - 1)),
                               sigma=float(self.blur * u[2]) + 0.0,
                               angle=float(self.rotation * (2 * u[3] - 1)) + 0.0)

    def sites(self, num_clients: int, seed: int) -> list[SiteAcquisition]:
        """Every client's acquisition, client 0 first."""
        check_int("num_clients", num_clients, minimum=1)
        return [self.site(i, seed) for i in range(num_clients)]

    def site_test(self, test_x: torch.Tensor, client: int, seed: int) -> torch.Tensor:
        """The (clean) test inputs ``test_x`` through site ``client``'s acquisition: its accuracy on its
        own acquisition."""
        return self.site(client, seed)(test_x)

    def test_sites(self, num_test: int, num_clients: int, seed: int) -> np.ndarray:
        """With ``test="sites"``, the site each of the ``num_test`` test examples is shown through."""
        return numpy_rng(seed, "shift", "test").integers(num_clients, size=num_test)

    def apply(self, data: FederatedDataset, seed: int) -> FederatedDataset:
        """``data`` with each client's training rows through its site's acquisition (and, with
        ``test="sites"``, each test example through its seeded site's). New tensors; ``data`` is not
        changed. Rows in no client's part (none, for this library's partitions) stay as they are."""
        sites = self.sites(data.num_clients, seed)
        train_x = data.train_x.clone()
        for site, rows in zip(sites, data.partition, strict=True):
            idx = torch.from_numpy(np.asarray(rows, dtype=np.int64))
            train_x[idx] = site(data.train_x[idx])
        test_x, owner = data.test_x, None
        if self.test == "sites":
            test_x = test_x.clone()
            owner = self.test_sites(int(test_x.shape[0]), data.num_clients, seed)
            for client in np.unique(owner):
                idx = torch.from_numpy(np.flatnonzero(owner == client))
                test_x[idx] = sites[int(client)](data.test_x[idx])
        return FederatedDataset(train_x, data.train_y, test_x, data.test_y, data.partition, data.num_classes,
                                owner)

    def summary(self, num_clients: int, seed: int) -> dict[str, Any]:
        """What a run reports of its feature shift: the strengths, and every site's parameters
        (``sites[i]``: client ``i``'s ``offset``, ``gain``, ``sigma`` and ``angle``; tabular data uses
        only ``offset`` and ``gain``)."""
        return {**self.to_dict(), "sites": [s.to_dict() for s in self.sites(num_clients, seed)]}

    def to_dict(self) -> dict[str, Any]:
        """Plain, JSON-serialisable dict of the fields."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FeatureShift:
        """Build from :meth:`to_dict` output; unknown keys raise :class:`ConfigError`."""
        return cls(**check_keys("shift", data, [f.name for f in dataclasses.fields(cls)]))
