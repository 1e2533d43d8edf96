"""Generated tasks: deterministic in their seed, no files, no network."""

from __future__ import annotations

import numpy as np

from gradlab.data.datasets import Dataset


def gaussian_blobs(*, num_classes: int, dim: int = 10, num_train: int = 1000,
                   num_test: int = 500, separation: float = 3.0, seed: int = 0) -> Dataset:
  """``num_classes`` isotropic unit Gaussians in R^dim with random means.

  The class means are drawn i.i.d. N(0, separation^2 / dim * I), so their
  pairwise distances are about ``separation * sqrt(2)`` whatever ``dim`` is.
  Labels are balanced. Features are float32 (not scaled to [0, 1]).
  """
  if num_classes < 2:
    raise ValueError(f"num_classes: expected an integer >= 2, got {num_classes}")
  if dim < 1:
    raise ValueError(f"dim: expected an integer >= 1, got {dim}")
  rng = np.random.default_rng(seed)
  means = rng.normal(scale=separation / np.sqrt(dim), size=(num_classes, dim))

  def draw(n):
    y = np.arange(n) % num_classes
    rng.shuffle(y)
    x = means[y] + rng.normal(size=(n, dim))
    return x.astype(np.float32), y.astype(np.int32)
  x_train, y_train = draw(num_train)
  x_test, y_test = draw(num_test)
  return Dataset(x_train, y_train, x_test, y_test, num_classes, (dim, 1))
