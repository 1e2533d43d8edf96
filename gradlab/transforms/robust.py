"""Robust aggregation of per-example gradients: suppress the weak directions.

Chatterjee (2020) and Zielinski et al. (2020) argue that directions supported
by many examples (strong) generalize and directions supported by few (weak)
memorize; aggregating per-example gradients robustly keeps the first and
drops the second, and slows the fitting of random labels far more than of
real ones.

* ``winsorized_mean(c)``: per coordinate, the per-example values are clipped
  to the c-th smallest and c-th largest of the batch, then averaged
  (winsorized gradient descent, Chatterjee 2020, section 5).
* ``median_of_means(k)``: the batch is split into k equal groups, each group
  averaged, and the coordinate-wise median of the k means taken (M3,
  Zielinski et al. 2020).

Both are optax transformations whose input is a pytree of *per-example*
gradients (leading axis B, as ``gradstats.per_example_grads`` returns and as
``optax.per_example_global_norm_clip`` takes) and whose output has the
params' shape: chain them before any optimizer. Non-finite policy: a step
with a NaN or Inf anywhere gives a zero update (they are stateless).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from gradlab import _checks
from gradlab.transforms.nonfinite import skip_nonfinite


def _batch(updates) -> int:
  sizes = {x.shape[0] if x.ndim else None for x in jax.tree.leaves(updates)}
  if None in sizes or len(sizes) != 1:
    raise ValueError(
      f"updates: expected per-example gradients with one common leading axis B, got sizes {sizes}"
    )
  return sizes.pop()


def winsorize(x: jax.Array, c: int) -> jax.Array:
  """``[B, ...] -> [...]``: clip each coordinate to its c-th smallest and c-th largest
  values across the batch (1-based; c = 1 clips nothing), then average."""
  s = jnp.sort(x, axis=0)
  lo, hi = s[c - 1], s[x.shape[0] - c]
  return jnp.mean(jnp.clip(x, lo, hi), axis=0)


def winsorized_mean(c: int) -> optax.GradientTransformation:
  """Winsorized mean of per-example gradients with clipping rank ``c >= 1``."""
  c = _checks.integer("c", c, minimum=1)

  def update_fn(updates, state, params=None):
    del params
    b = _batch(updates)
    if 2 * c > b + 1:
      raise ValueError(f"c: expected 2c - 1 <= the batch of {b} per-example gradients, got {c}")
    return jax.tree.map(lambda x: winsorize(x, c), updates), state

  return optax.GradientTransformation(lambda params: optax.EmptyState(), skip_nonfinite(update_fn))


def median_of_means(num_groups: int) -> optax.GradientTransformation:
  """Coordinate-wise median of the means of ``num_groups`` equal consecutive groups."""
  k = _checks.integer("num_groups", num_groups, minimum=1)

  def update_fn(updates, state, params=None):
    del params
    b = _batch(updates)
    if b % k:
      raise ValueError(f"num_groups: {k} does not divide the batch of {b} per-example gradients")
    agg = lambda x: jnp.median(x.reshape(k, b // k, *x.shape[1:]).mean(1), axis=0)
    return jax.tree.map(agg, updates), state

  return optax.GradientTransformation(lambda params: optax.EmptyState(), skip_nonfinite(update_fn))
