"""Losses that are themselves the object of study.

* ``stablemax_cross_entropy``: Prieto et al., "Grokking at the Edge of
  Numerical Stability" (2025). StableMax replaces softmax's ``exp`` by
  ``s(x) = x + 1`` for ``x >= 0`` and ``1 / (1 - x)`` for ``x < 0``,
  normalized: ``StableMax(x)_i = s(x_i) / sum_j s(x_j)``. It grows linearly,
  not exponentially, so a confident prediction does not round to an exact
  one-hot in float32 (softmax collapse) and its gradient does not vanish.
  The official code computes the log-probabilities in float64; here they are
  computed as ``log s(x_y) - log sum_j s(x_j)`` in the logits' dtype (with
  ``jax_enable_x64`` and float64 logits, exactly as the official code).
* ``softmax_collapse_fraction``: the share of examples whose float32 softmax
  is an exact one-hot at the label, so that their cross-entropy gradient
  ``softmax - onehot`` is exactly zero: the instrument for the collapse.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from gradlab import _checks


def stablemax_s(x: jax.Array) -> jax.Array:
  """``s(x) = x + 1`` for ``x >= 0``, ``1 / (1 - x)`` for ``x < 0`` (positive, continuous,
  with a continuous first derivative at 0)."""
  neg = jnp.minimum(x, 0.0)  # keeps the untaken branch finite for the gradient
  return jnp.where(x >= 0, x + 1.0, 1.0 / (1.0 - neg))


def log_stablemax(logits: Any, axis: int = -1) -> jax.Array:
  """``log StableMax(logits)`` along ``axis``."""
  s = stablemax_s(jnp.asarray(logits))
  return jnp.log(s) - jnp.log(jnp.sum(s, axis=axis, keepdims=True))


def _labels(logits: jax.Array, labels: Any) -> jax.Array:
  y = jnp.asarray(labels)
  if y.shape != logits.shape[:-1]:
    raise ValueError(f"labels: expected shape {logits.shape[:-1]} to match logits, got {y.shape}")
  if not jnp.issubdtype(y.dtype, jnp.integer):
    raise ValueError(f"labels: expected integer class indices, got dtype {y.dtype}")
  v = _checks.concrete(y)
  if v is not None and v.size and (v.min() < 0 or v.max() >= logits.shape[-1]):
    raise ValueError(
      f"labels: expected class indices in [0, {logits.shape[-1]}), got min {v.min()} max {v.max()}"
    )
  return y


def stablemax_cross_entropy(logits: Any, labels: Any) -> jax.Array:
  """Mean over the batch of ``-log StableMax(logits)[label]``.

  Args:
    logits: ``[..., K]`` real logits.
    labels: ``[...]`` integer labels in ``[0, K)``.
  """
  z = _checks.logits("logits", logits)
  y = _labels(z, labels)
  logp = jnp.take_along_axis(log_stablemax(z), y[..., None], axis=-1)[..., 0]
  return -jnp.mean(logp)


def softmax_collapse_fraction(logits: Any, labels: Any) -> jax.Array:
  """The fraction of examples whose float32 softmax is exactly ``onehot(label)``.

  Those examples' cross-entropy gradient with respect to the logits is
  exactly zero: they no longer train (Prieto et al. 2025, section 3).
  """
  z = jnp.asarray(logits)
  if z.ndim < 1 or z.shape[-1] < 2:
    raise ValueError(f"logits: expected shape [..., K >= 2], got {z.shape}")
  y = _labels(z, labels)
  p = jax.nn.softmax(z.astype(jnp.float32), axis=-1)
  onehot = jax.nn.one_hot(y, z.shape[-1], dtype=jnp.float32)
  return jnp.mean(jnp.all(p == onehot, axis=-1).astype(jnp.float32))


def softmax_collapse_instrument(logits_fn, *, label_key: str = "y"):
  """An instrument ``(params, batch, key) -> {"collapse_fraction": scalar}`` for
  ``gradlab.train.fit``: :func:`softmax_collapse_fraction` of
  ``logits_fn(params, batch)`` against ``batch[label_key]``."""
  if not callable(logits_fn):
    raise ValueError(f"logits_fn: expected a function (params, batch) -> logits, got {logits_fn!r}")

  def instrument(params, batch, key):
    del key
    return {
      "collapse_fraction": softmax_collapse_fraction(logits_fn(params, batch), batch[label_key])
    }

  return instrument
