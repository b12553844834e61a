"""A labelled dataset split across clients, with a held-out test set."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from secagg.errors import DataError


@dataclass(frozen=True)
class ClientData:
    """One client's local examples: ``x`` (n, *input_shape) float32, ``y`` (n,) int64."""

    x: torch.Tensor
    y: torch.Tensor

    def __len__(self) -> int:
        return int(self.y.shape[0])


@dataclass(frozen=True)
class FederatedDataset:
    """Train examples partitioned across clients (``partition[i]`` indexes client i's rows).

    ``test_site``: when the test set is split among the sites (a feature shift's ``test="sites"``),
    the client whose view each test example is shown through (int, one per test row); ``None`` when
    the test set belongs to no site."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    partition: tuple[np.ndarray, ...]
    num_classes: int
    test_site: np.ndarray | None = None

    def __post_init__(self) -> None:
        n = self.train_y.shape[0]
        if self.train_x.shape[0] != n or self.test_x.shape[0] != self.test_y.shape[0]:
            raise DataError("x and y must have the same number of rows")
        if self.train_x.shape[1:] != self.test_x.shape[1:]:
            raise DataError("train and test inputs must have the same shape")
        if self.test_site is not None and (
                self.test_site.shape != (self.test_y.shape[0],)
                or (self.test_site.size and not 0 <= self.test_site.min() <= self.test_site.max()
                    < len(self.partition))):
            raise DataError("test_site: needs one client index in [0, num_clients) per test example")
        for i, idx in enumerate(self.partition):
            if idx.size == 0:
                raise DataError(f"partition: client {i} has no examples")
            if idx.min() < 0 or idx.max() >= n:
                raise DataError(f"partition: client {i} has an index outside [0, {n})")

    @property
    def num_clients(self) -> int:
        return len(self.partition)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.train_x.shape[1:])

    def client(self, i: int) -> ClientData:
        """Client ``i``'s examples (new tensors: callers may not alter the dataset through them)."""
        if not 0 <= i < self.num_clients:
            raise DataError(f"client: must be in [0, {self.num_clients}), got {i}")
        idx = torch.from_numpy(self.partition[i])
        return ClientData(self.train_x[idx], self.train_y[idx])

    def client_sizes(self) -> list[int]:
        return [int(idx.size) for idx in self.partition]
