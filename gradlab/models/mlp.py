"""A flax MLP classifier."""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax


class MLP(nn.Module):
  """Dense layers with ReLU between them; returns logits.

  Attributes:
    features: the width of every layer, the last one being the output size
      (e.g. ``(256, 256, 10)``).
  """
  features: Sequence[int]

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    x = x.reshape(x.shape[0], -1)
    for i, width in enumerate(self.features):
      x = nn.Dense(width, name=f"dense_{i}")(x)
      if i < len(self.features) - 1:
        x = nn.relu(x)
    return x
