"""Gradient-similarity scores and per-example difficulty scores.

Attribution scores are ``[len(test), len(train)]``, positive where the train
example helps the test example (the sign of a removal effect):

* ``grad_dot``: ``g_test . g_train`` (one SGD step on j lowers test loss i by
  ``lr g_i . g_j`` to first order).
* ``grad_cos``: the same between unit-normalized gradients.
* ``tracin_cp``: Pruthi et al. (2020), ``sum_c lr_c g_train(theta_c) . g_test(theta_c)``
  over checkpoints.

Per-example scores over a training set (``[n]``, larger = harder / more
suspicious):

* ``el2n``: Paul et al. (2021), ``|softmax(logits) - onehot(y)|_2``.
* ``grand``: Paul et al. (2021), the per-example gradient norm ``|g_j|_2``.
* ``vog``: Agarwal et al. (2022), the variance of gradients across checkpoints:
  per input pixel, the variance over K checkpoints of the gradient of the
  true class's logit with respect to the input, averaged over pixels.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp

from gradlab import _checks
from gradlab.influence.features import (
  normalize_rows,
  per_example_gradients,
)
from gradlab.influence.functions import check_sets

ExampleFn = Callable[[Any, Any], jax.Array]


def _rows(name: str, x: Any) -> jax.Array:
  x = jnp.asarray(x)
  if x.ndim != 2 or x.shape[0] == 0:
    raise ValueError(f"{name}: expected a non-empty [examples, features] matrix, got {x.shape}")
  return x


def _pair(train_features: Any, test_features: Any) -> tuple[jax.Array, jax.Array]:
  a = _rows("train_features", train_features)
  b = _rows("test_features", test_features)
  if a.shape[1] != b.shape[1]:
    raise ValueError(
      f"test_features: expected {a.shape[1]} features like train_features, got {b.shape[1]}"
    )
  return a, b


def grad_dot(train_features: Any, test_features: Any) -> jax.Array:
  """``[t, n]``: inner products of test and train gradient rows."""
  a, b = _pair(train_features, test_features)
  return b @ a.T


def grad_cos(train_features: Any, test_features: Any) -> jax.Array:
  """``[t, n]``: cosines of test and train gradient rows."""
  a, b = _pair(train_features, test_features)
  return normalize_rows(b) @ normalize_rows(a).T


def tracin_cp(
  loss_fn: ExampleFn,
  checkpoints: Sequence[Any],
  learning_rates: Sequence[float] | jax.Array,
  train: Any,
  test: Any,
  *,
  chunk_size: int | None = None,
  project: Callable[[jax.Array], jax.Array] | None = None,
) -> jax.Array:
  """``[t, n]``: TracIn-CP, ``sum_c lr_c g_train(theta_c) . g_test(theta_c)``.

  Args:
    checkpoints: parameter pytrees saved during training (a list).
    learning_rates: the learning rate in force at each checkpoint.
    project: optional map of gradient rows ``[m, d] -> [m, k]`` (e.g. a
      ``functools.partial(features.project, key=..., dim=...)``) applied to both.
  """
  checkpoints = list(checkpoints)
  if not checkpoints:
    raise ValueError("checkpoints: expected at least one parameter pytree, got none")
  lrs = jnp.asarray(learning_rates)
  if lrs.shape != (len(checkpoints),):
    raise ValueError(
      f"learning_rates: expected one per checkpoint ({len(checkpoints)}), got shape {lrs.shape}"
    )
  n, _ = check_sets(train, test)  # one structure: train and test rows share one program
  prj = (lambda x: x) if project is None else project
  both = jax.tree.map(lambda a, b: jnp.concatenate([a, b]), train, test)
  stacked = jax.tree.map(lambda *leaves: jnp.stack(leaves), *checkpoints)

  def one(total, args):
    # one program for every checkpoint (a scan), and train and test rows together
    lr, params = args
    f = prj(per_example_gradients(loss_fn, params, both, chunk_size=chunk_size))
    return total + lr * (f[n:] @ f[:n].T), None

  t = jax.tree.leaves(test)[0].shape[0]
  dtype = jax.tree.leaves(checkpoints[0])[0].dtype
  total, _ = jax.lax.scan(one, jnp.zeros((t, n), dtype), (lrs.astype(dtype), stacked))
  return total


def el2n(logits: Any, labels: Any) -> jax.Array:
  """``[n]``: the L2 norm of ``softmax(logits) - onehot(labels)`` (average it over
  a few early checkpoints or seeds, as the paper does, by averaging the outputs)."""
  z = _checks.logits("logits", logits)
  y = jnp.asarray(labels)
  if y.shape != z.shape[:-1]:
    raise ValueError(f"labels: expected shape {z.shape[:-1]} to match logits, got {y.shape}")
  p = jax.nn.softmax(z, axis=-1)
  return jnp.linalg.norm(p - jax.nn.one_hot(y, z.shape[-1], dtype=p.dtype), axis=-1)


def grand(
  loss_fn: ExampleFn, params: Any, examples: Any, *, chunk_size: int | None = None
) -> jax.Array:
  """``[n]``: per-example gradient norms ``|grad loss_fn(params, example_j)|``."""
  g = per_example_gradients(loss_fn, params, examples, chunk_size=chunk_size)
  return jnp.linalg.norm(g, axis=1)


def vog(input_gradients: Any) -> jax.Array:
  """``[n]``: variance of gradients from ``[K, n, ...]`` input gradients at K checkpoints.

  Per pixel, the variance over checkpoints (population, as the paper's
  ``1/K sum (G - mu)^2``), then the mean over pixels.
  """
  g = jnp.asarray(input_gradients)
  if g.ndim < 2 or g.shape[0] < 2:
    raise ValueError(f"input_gradients: expected [K >= 2 checkpoints, n, ...], got {g.shape}")
  v = jnp.var(g, axis=0)
  return jnp.mean(v.reshape(v.shape[0], -1), axis=1)


def input_gradients(
  score_fn: Callable[[Any, Any, Any], jax.Array],
  checkpoints: Sequence[Any],
  inputs: Any,
  labels: Any,
) -> jax.Array:
  """``[K, n, ...]``: ``d score_fn(params, x, y) / dx`` per checkpoint and example
  (for VoG, ``score_fn`` returns the true class's logit)."""
  g = jax.vmap(jax.grad(score_fn, argnums=1), in_axes=(None, 0, 0))
  return jnp.stack([g(p, inputs, labels) for p in checkpoints])
