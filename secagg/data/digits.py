"""scikit-learn's handwritten digits (1,797 real 8x8 images, 10 classes), shipped with the package.

No download: the data lives inside scikit-learn. Pixels (0..16) are scaled to [0, 1] and shaped
(1, 8, 8) so both MLPs and CNNs (and pixel-trigger backdoors) can use them.
"""

from __future__ import annotations

import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from secagg.validation import check_real


def load_digits_split(test_fraction: float = 0.2, *, seed: int = 0
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Stratified train/test split of digits: ``(train_x, train_y, test_x, test_y)``.

    ``x`` is float32 (n, 1, 8, 8) in [0, 1]; ``y`` is int64 (n,) in 0..9.
    """
    check_real("test_fraction", test_fraction, gt=0.0, lt=1.0)
    bunch = load_digits()
    x = (bunch.data.astype(np.float32) / 16.0).reshape(-1, 1, 8, 8)
    y = bunch.target.astype(np.int64)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=test_fraction, random_state=seed,
                                              stratify=y)
    return (torch.from_numpy(x_tr), torch.from_numpy(y_tr),
            torch.from_numpy(x_te), torch.from_numpy(y_te))
