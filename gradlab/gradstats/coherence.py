"""Gradient coherence (Chatterjee 2020; Zielinski et al. 2020): do the examples agree?

With per-example gradients g_1..g_B,

    alpha = |(1/B) sum_i g_i|^2 / ((1/B) sum_i |g_i|^2),

in [0, 1]: 1 for identical gradients, 1/B for pairwise orthogonal gradients
of equal norm (every example pulls its own way, as when memorizing random
labels), 0 for gradients that cancel.
``per_layer_coherence`` is the same ratio per leaf. Both read the moments
that :func:`gradstats.gradient_moments` accumulates chunk by chunk, so the
per-example gradients are never all held at once.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp

from gradlab.gradstats.per_example import GradientMoments, gradient_moments


def coherence(moments: GradientMoments) -> jax.Array:
  """``alpha = |mean g|^2 / mean |g_i|^2`` over all parameters."""
  num = sum(jnp.sum(m * m) for m in jax.tree.leaves(moments.mean))
  den = jnp.mean(sum(jax.tree.leaves(moments.sq_norms)))
  return num / den


def per_layer_coherence(moments: GradientMoments) -> Any:
  """``alpha`` per leaf: a pytree like the params of scalars."""
  return jax.tree.map(lambda m, n: jnp.sum(m * m) / jnp.mean(n), moments.mean, moments.sq_norms)


def coherence_instrument(
  train_loss_fn: Callable[[Any, Any, jax.Array], tuple[jax.Array, Any]],
  *,
  chunk_size: int | None = None,
):
  """``(params, batch, key) -> {"coherence": alpha}`` for ``gradlab.train.fit``, on the
  step's batch (the loss must be a mean over the batch)."""

  def instrument(params, batch, key):
    loss = lambda p, b: train_loss_fn(p, b, key)[0]
    return {"coherence": coherence(gradient_moments(loss, params, batch, chunk_size=chunk_size))}

  return instrument
