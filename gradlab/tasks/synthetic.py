"""Generated data: deterministic in their seed, no files, no network."""

from __future__ import annotations

import numpy as np

from gradlab.data.datasets import Dataset


def gaussian_blobs(
  *,
  num_classes: int,
  dim: int = 10,
  num_train: int = 1000,
  num_test: int = 500,
  separation: float = 3.0,
  seed: int = 0,
) -> Dataset:
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


def fibonacci_sequences(num: int, length: int, vocab: int, seed: int = 0) -> np.ndarray:
  """``[num, length]`` int32 sequences ``x_{t+1} = (x_t + x_{t-1}) mod vocab``.

  The first two tokens are uniform; every later token is determined by the
  two before it, so a model that has learned the rule predicts positions
  ``t >= 2`` with zero loss (and positions 0 and 1 at ``log(vocab)``).
  """
  if num < 1 or length < 3 or vocab < 2:
    raise ValueError(f"num, length, vocab: expected >= 1, >= 3, >= 2, got {num}, {length}, {vocab}")
  rng = np.random.default_rng(seed)
  out = np.zeros((num, length), np.int32)
  out[:, :2] = rng.integers(0, vocab, size=(num, 2))
  for t in range(2, length):
    out[:, t] = (out[:, t - 1] + out[:, t - 2]) % vocab
  return out
