"""The exact gradient of ``E_{D ~ Cat(softmax(theta))}[f(D)]`` by enumeration.

For logits [..., K] with L = prod(batch shape) independent categoricals,
every one of the K^L configurations is enumerated (capped at
``max_configurations``), which makes the oracle exact for small models and
the ground truth the estimators are tested against.

``expected_estimate`` applies the same enumeration to an estimator whose
backward is deterministic given its sample (ST, ReinMax): the estimator's
exact expectation, hence its exact bias, with no Monte Carlo error.
"""

from __future__ import annotations

import itertools
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from gradlab import _checks


def _configurations(batch_shape: tuple[int, ...], k: int, max_configurations: int) -> np.ndarray:
  n = int(np.prod(batch_shape, dtype=np.int64))
  if k**n > max_configurations:
    raise ValueError(
      f"logits: {k}^{n} = {k**n} configurations exceed max_configurations={max_configurations}"
    )
  idx = np.array(list(itertools.product(range(k), repeat=n)), np.int32).reshape(-1, *batch_shape)
  return np.eye(k, dtype=np.float32)[idx]  # [C, ..., K]


def _log_probs(logits: jax.Array, configs: jax.Array) -> jax.Array:
  log_p = jax.nn.log_softmax(logits, axis=-1)
  return jnp.sum(configs * log_p, axis=tuple(range(1, configs.ndim)))


def exact_expectation(
  f: Callable[[jax.Array], jax.Array], logits: jax.Array, *, max_configurations: int = 1 << 16
) -> jax.Array:
  """``sum_D p(D) f(D)``, differentiable in ``logits`` (and in f's parameters)."""
  logits = _checks.logits("logits", logits)
  configs = jnp.asarray(
    _configurations(logits.shape[:-1], logits.shape[-1], max_configurations), logits.dtype
  )
  return jnp.sum(jnp.exp(_log_probs(logits, configs)) * jax.vmap(f)(configs))


def exact_gradient(
  f: Callable[[jax.Array], jax.Array], logits: jax.Array, *, max_configurations: int = 1 << 16
) -> tuple[jax.Array, jax.Array]:
  """``(E[f(D)], d E[f(D)] / d logits)`` by enumeration."""
  return jax.value_and_grad(
    lambda t: exact_expectation(f, t, max_configurations=max_configurations)
  )(logits)


def expected_estimate(
  estimator_from_sample: Callable[[jax.Array, jax.Array], jax.Array],
  f: Callable[[jax.Array], jax.Array],
  logits: jax.Array,
  *,
  max_configurations: int = 1 << 16,
) -> jax.Array:
  """``sum_D p(D) grad_estimate(D)`` for ``estimator_from_sample(sample, logits)``
  (e.g. ``functools.partial(reinmax_from_sample, temperature=1.0)``)."""
  logits = _checks.logits("logits", logits)
  configs = jnp.asarray(
    _configurations(logits.shape[:-1], logits.shape[-1], max_configurations), logits.dtype
  )
  probs = jnp.exp(_log_probs(logits, configs))
  grads = jax.vmap(lambda d: jax.grad(lambda t: f(estimator_from_sample(d, t)))(logits))(configs)
  return jnp.tensordot(probs, grads, axes=1)
