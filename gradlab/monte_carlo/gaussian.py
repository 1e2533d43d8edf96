"""The diagonal Gaussian that the Monte Carlo estimators differentiate through.

Port of optax's ``optax._src.utils.MultiNormalDiagFromLogScale`` and
``multi_normal`` (google-deepmind/optax, removed with ``optax.monte_carlo`` in
November 2025, commit ca35e20b): a Gaussian with mean ``loc`` and diagonal
standard deviation ``exp(log_scale)``, parameterized by ``(loc, log_scale)``.

Deviation: a ``NamedTuple`` (a pytree, so it passes through ``jit`` and
``vmap``) instead of a class; ``sample`` and ``log_prob`` compute the same
numbers as optax's for the same key (``normal(key, shape) * scale + loc``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp


class MultiNormalDiagFromLogScale(NamedTuple):
  """``N(loc, diag(exp(log_scale))^2)``; ``loc`` and ``log_scale`` broadcast together."""

  loc: jax.Array
  log_scale: jax.Array

  @property
  def scale(self) -> jax.Array:
    return jnp.exp(self.log_scale)

  @property
  def param_shape(self) -> tuple[int, ...]:
    return jax.lax.broadcast_shapes(jnp.shape(self.loc), jnp.shape(self.log_scale))

  @property
  def params(self) -> list[jax.Array]:
    """``[loc, log_scale]``, the parameters the estimators differentiate."""
    return [self.loc, self.log_scale]

  def sample(self, shape: Sequence[int], key: jax.Array) -> jax.Array:
    """Samples of shape ``shape + param_shape``: ``loc + exp(log_scale) * eps``."""
    sample_shape = tuple(shape) + self.param_shape
    return jax.random.normal(key, shape=sample_shape) * self.scale + self.loc

  def log_prob(self, x: jax.Array) -> jax.Array:
    """The log density of ``x [..., *param_shape]``, summed over the parameter axes."""
    log_prob = jax.scipy.stats.norm.logpdf(x, loc=self.loc, scale=self.scale)
    axes = tuple(range(-len(self.param_shape), 0))
    return jnp.sum(log_prob, axis=axes)


def multi_normal(loc: jax.Array, log_scale: jax.Array) -> MultiNormalDiagFromLogScale:
  """The ``dist_builder`` of every estimator: ``multi_normal(*params)``."""
  return MultiNormalDiagFromLogScale(loc=jnp.asarray(loc), log_scale=jnp.asarray(log_scale))
