"""How attribution scores are judged against retraining.

* ``lds``: the linear datamodeling score (Ilyas et al. 2022; Park et al. 2023):
  for M random subsets S_m of the training set and each test example i, the
  Spearman correlation over m between the predicted ``sum_{j in S_m}
  tau[i, j]`` and the output of the model retrained on S_m (e.g. minus its
  test loss); averaged over test examples.
* ``loo_correlation``: per test example, the Pearson correlation over train
  examples between the scores and the leave-one-out effects; averaged.
* ``auroc``: the area under the ROC curve of a score that should rank the
  positives (e.g. mislabeled examples) first; ties count one half.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp


def rank(x: jax.Array) -> jax.Array:
  """Ranks 0..n-1 of a vector, ties given their average rank (scipy's ``rankdata`` - 1)."""
  x = jnp.asarray(x)
  dtype = x.dtype if jnp.issubdtype(x.dtype, jnp.floating) else jnp.float32
  s = jnp.sort(x)
  # equal values occupy ranks left..right-1; each gets their mean (O(n log n))
  left = jnp.searchsorted(s, x, side="left")
  right = jnp.searchsorted(s, x, side="right")
  return ((left + right - 1) / 2).astype(dtype)


def pearson(x: jax.Array, y: jax.Array) -> jax.Array:
  """The Pearson correlation of two vectors (NaN when one is constant)."""
  x = x - x.mean()
  y = y - y.mean()
  return jnp.sum(x * y) / jnp.sqrt(jnp.sum(x * x) * jnp.sum(y * y))


def spearman(x: jax.Array, y: jax.Array) -> jax.Array:
  """The Spearman rank correlation of two vectors."""
  return pearson(rank(x), rank(y))


def _matrix(name: str, x: Any, ndim: int = 2) -> jax.Array:
  x = jnp.asarray(x)
  if x.ndim != ndim or 0 in x.shape:
    raise ValueError(f"{name}: expected a non-empty {ndim}-d array, got shape {x.shape}")
  return x


def lds(scores: Any, masks: Any, outputs: Any) -> jax.Array:
  """The linear datamodeling score.

  Args:
    scores: ``[t, n]`` attributions.
    masks: ``[M, n]`` 0/1 membership of the train examples in each subset.
    outputs: ``[M, t]`` the retrained models' outputs on the test examples
      (higher = better supported, e.g. minus the loss).

  Returns:
    The mean over test examples of the Spearman correlation over subsets.
  """
  s = _matrix("scores", scores)
  m = _matrix("masks", masks)
  o = _matrix("outputs", outputs)
  if m.shape[1] != s.shape[1]:
    raise ValueError(f"masks: expected [M, {s.shape[1]}] like scores' train axis, got {m.shape}")
  if o.shape != (m.shape[0], s.shape[0]):
    raise ValueError(f"outputs: expected [M, t] = {(m.shape[0], s.shape[0])}, got {o.shape}")
  if m.shape[0] < 3:
    raise ValueError(f"masks: expected at least 3 subsets for a rank correlation, got {m.shape[0]}")
  predicted = m.astype(s.dtype) @ s.T  # [M, t]
  per_test = jax.vmap(spearman, in_axes=(1, 1))(predicted, o)
  return jnp.nanmean(per_test)


def loo_correlation(scores: Any, effects: Any) -> jax.Array:
  """Mean over test examples of the Pearson correlation of ``scores [t, n]`` with the
  leave-one-out ``effects [t, n]`` (loss without j minus loss with all)."""
  s = _matrix("scores", scores)
  e = _matrix("effects", effects)
  if s.shape != e.shape:
    raise ValueError(f"effects: expected the shape of scores {s.shape}, got {e.shape}")
  return jnp.nanmean(jax.vmap(pearson)(s, e))


def auroc(scores: Any, positives: Any) -> jax.Array:
  """Area under the ROC curve of ``scores [n]`` for the 0/1 labels ``positives [n]``."""
  s = _matrix("scores", scores, 1)
  p = jnp.asarray(positives).astype(bool)
  if p.shape != s.shape:
    raise ValueError(f"positives: expected shape {s.shape} like scores, got {p.shape}")
  r = rank(s) + 1.0
  n_pos = jnp.sum(p)
  n_neg = p.shape[0] - n_pos
  return (jnp.sum(jnp.where(p, r, 0.0)) - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)
