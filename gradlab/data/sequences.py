"""Generated sequence tasks (no download): a next-token language-modelling task."""

from __future__ import annotations

import numpy as np


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
