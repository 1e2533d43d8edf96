"""The MLP-classification problem the benchmarks share: a random MNIST-shaped batch."""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from gradlab import models


class MLPProblem(NamedTuple):
  model: models.MLP
  params: Any
  x: np.ndarray  # [batch, 784] float32 in [0, 1)
  y: np.ndarray  # [batch] int32 labels in [0, 10)
  batch: dict  # {"x", "y"} as device arrays
  loss: Callable  # (params, batch) -> mean softmax cross-entropy
  num_params: int


def mlp_problem(width: int, batch_size: int, *, seed: int = 0) -> MLPProblem:
  """MLP 784-width-width-10 on a random MNIST-shaped batch."""
  model = models.MLP((width, width, 10))
  rng = np.random.default_rng(seed)
  x = rng.random((batch_size, 784), np.float32)
  y = rng.integers(0, 10, batch_size).astype(np.int32)
  params = model.init(jax.random.key(seed), jnp.zeros((1, 784)))

  def loss(p, b):
    return optax.softmax_cross_entropy_with_integer_labels(model.apply(p, b["x"]), b["y"]).mean()

  return MLPProblem(
    model,
    params,
    x,
    y,
    {"x": jnp.asarray(x), "y": jnp.asarray(y)},
    loss,
    sum(a.size for a in jax.tree.leaves(params)),
  )
