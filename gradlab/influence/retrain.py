"""Ground truth by retraining: many copies of a small model at once, under ``vmap``.

A copy is defined by a 0/1 mask over the training set and a key; the copies
share the initial parameters and, with equal keys, every random choice, so
they differ only by the data. ``train_on_subset`` is one copy; ``loo_retrain``
and ``subset_retrain`` ``vmap`` it over masks.

* Full batch (``batch_size=None``): gradient steps on the mask-weighted mean
  loss ``sum_j m_j l_j / sum_j m_j`` with any optax optimizer; for a strongly
  convex loss, ``newton_fit`` reaches the minimizer to machine precision,
  the reference that leave-one-out influence is checked against.
* Minibatches: each step draws ``batch_size`` indices uniformly (with
  replacement) from the copy's own subset.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.flatten_util import ravel_pytree

from gradlab import _checks

ExampleLoss = Callable[[Any, Any], jax.Array]


def weighted_loss(loss_fn: ExampleLoss, examples: Any, weights: jax.Array) -> Callable:
  """``p -> sum_j w_j loss_fn(p, e_j) / sum_j w_j``."""
  return lambda p: (
    jnp.sum(weights * jax.vmap(loss_fn, in_axes=(None, 0))(p, examples)) / jnp.sum(weights)
  )


def train_on_subset(
  loss_fn: ExampleLoss,
  params: Any,
  train: Any,
  mask: jax.Array,
  key: jax.Array,
  *,
  optimizer: optax.GradientTransformation,
  steps: int,
  batch_size: int | None = None,
  segments: int = 1,
) -> Any:
  """Parameters after ``steps`` optimizer steps on the examples with ``mask = 1``.

  With ``segments = K > 1``, the parameters at the end of each of K equal
  stretches (checkpoints, e.g. for TracIn-CP), stacked ``[K, ...]``; ``steps``
  must be a multiple of K.
  """
  steps = _checks.integer("steps", steps, minimum=1)
  segments = _checks.integer("segments", segments, minimum=1)
  if steps % segments:
    raise ValueError(f"segments: {segments} does not divide steps={steps}")
  n = mask.shape[0]
  mask = mask.astype(jnp.float32)

  def step(carry, k):
    p, state = carry
    if batch_size is None:
      loss = weighted_loss(loss_fn, train, mask)
    else:
      idx = jax.random.choice(k, n, (batch_size,), p=mask / jnp.sum(mask))
      batch = jax.tree.map(lambda x: x[idx], train)
      loss = weighted_loss(loss_fn, batch, jnp.ones((batch_size,), jnp.float32))
    g = jax.grad(loss)(p)
    updates, state = optimizer.update(g, state, p)
    return (optax.apply_updates(p, updates), state), None

  keys = jax.random.split(key, steps).reshape(segments, steps // segments)

  def segment(carry, ks):
    carry, _ = jax.lax.scan(step, carry, ks)
    return carry, carry[0]

  (p, _), stacked = jax.lax.scan(segment, (params, optimizer.init(params)), keys)
  return p if segments == 1 else stacked


def newton_fit(
  loss_fn: ExampleLoss, params: Any, train: Any, mask: jax.Array, *, steps: int = 20
) -> Any:
  """The minimizer of the mask-weighted mean loss by Newton's method (dense Hessian;
  for small, strongly convex problems, where it converges quadratically)."""
  flat, unravel = ravel_pytree(params)
  f = lambda x: weighted_loss(loss_fn, train, mask.astype(flat.dtype))(unravel(x))

  def step(x, _):
    return x - jnp.linalg.solve(jax.hessian(f)(x), jax.grad(f)(x)), None

  x, _ = jax.lax.scan(step, flat, None, length=steps)
  return unravel(x)


def random_subsets(key: jax.Array, n: int, num_subsets: int, fraction: float = 0.5) -> jax.Array:
  """``[M, n]`` masks, each keeping ``round(fraction * n)`` examples chosen at random."""
  n = _checks.integer("n", n, minimum=1)
  m = _checks.integer("num_subsets", num_subsets, minimum=1)
  if not 0.0 < fraction < 1.0:
    raise ValueError(f"fraction: expected a value in (0, 1), got {fraction}")
  size = max(1, int(round(fraction * n)))
  keys = jax.random.split(key, m)
  order = jax.vmap(lambda k: jax.random.permutation(k, n))(keys)
  return (jnp.argsort(order, axis=1) < size).astype(jnp.float32)


def loo_masks(n: int, indices: Any) -> jax.Array:
  """``[len(indices), n]`` masks, each leaving out one of ``indices``."""
  n = _checks.integer("n", n, minimum=1)
  idx = np.asarray(indices)
  if idx.ndim != 1 or idx.size == 0 or idx.min() < 0 or idx.max() >= n:
    raise ValueError(
      f"indices: expected a non-empty vector of train indices in [0, {n}), got {idx}"
    )
  return 1.0 - jax.nn.one_hot(jnp.asarray(idx), n, dtype=jnp.float32)


def subset_retrain(
  train_fn: Callable[[jax.Array, jax.Array], Any],
  masks: jax.Array,
  key: jax.Array,
  *,
  seeds: int = 1,
) -> Any:
  """Parameters of ``train_fn(mask, key)`` for every mask and ``seeds`` keys, stacked
  ``[seeds, M, ...]``; every mask sees the same ``seeds`` keys."""
  seeds = _checks.integer("seeds", seeds, minimum=1)
  keys = jax.random.split(key, seeds)
  return jax.vmap(lambda k: jax.vmap(lambda m: train_fn(m, k))(masks))(keys)


def loo_retrain(
  train_fn: Callable[[jax.Array, jax.Array], Any],
  n: int,
  indices: Any,
  key: jax.Array,
  *,
  seeds: int = 1,
) -> tuple[Any, Any]:
  """``(full, without)``: ``train_fn`` on all n examples and on each leave-one-out set
  for ``indices``, ``[seeds, ...]`` and ``[seeds, len(indices), ...]``, same keys."""
  masks = jnp.concatenate([jnp.ones((1, n), jnp.float32), loo_masks(n, indices)])
  out = subset_retrain(train_fn, masks, key, seeds=seeds)
  return jax.tree.map(lambda x: x[:, 0], out), jax.tree.map(lambda x: x[:, 1:], out)
