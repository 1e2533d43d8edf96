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
    activation: ``"relu"`` or ``"tanh"`` (the edge-of-stability studies use tanh).
  """

  features: Sequence[int]
  activation: str = "relu"

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    act = {"relu": nn.relu, "tanh": nn.tanh}.get(self.activation)
    if act is None:
      raise ValueError(f"activation: expected 'relu' or 'tanh', got {self.activation!r}")
    x = x.reshape(x.shape[0], -1)
    for i, width in enumerate(self.features):
      x = nn.Dense(width, name=f"dense_{i}")(x)
      if i < len(self.features) - 1:
        x = act(x)
    return x
