"""LESS (Xia et al. 2024): select training data by gradient similarity to a target set.

Official code: princeton-nlp/LESS, ``collect_grad_reps.py`` and ``matching.py``.

* Train features at each checkpoint: the Adam feature ``m / sqrt(v + eps)`` of
  each example's gradient with the checkpoint's Adam moments
  (:func:`features.adam_transform`), randomly projected and normalized to
  unit length.
* Target features: plain (SGD) gradients, projected and normalized.
* Score of train example j: ``sum_c w_c  <f_c(j), f_c(target)>`` with the
  checkpoint weights w (the learning rates, renormalized to sum 1), averaged
  over the target examples of each group (subtask) and maximized over the
  groups; with one group per target example this is the max over target
  examples.
* Selection: the top ``fraction`` of the pool by score.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp

from gradlab import _checks
from gradlab.influence.features import (
  ExampleFn,
  adam_transform,
  gradient_features,
  normalize_rows,
)


def less_features(
  loss_fn: ExampleFn,
  params: Any,
  examples: Any,
  key: jax.Array,
  *,
  dim: int,
  adam_moments: tuple[Any, Any] | None = None,
  chunk_size: int | None = None,
) -> jax.Array:
  """``[N, dim]`` unit-norm projected features; Adam features when ``adam_moments =
  (mu, nu)`` is given (train pool), plain gradients otherwise (target set)."""
  tf = None if adam_moments is None else adam_transform(*adam_moments)
  f = gradient_features(
    loss_fn, params, examples, key=key, dim=dim, chunk_size=chunk_size, transform=tf
  )
  return normalize_rows(f)


def less_scores(
  train_features: Any,
  target_features: Any,
  checkpoint_weights: Any,
  *,
  num_groups: int | None = None,
) -> jax.Array:
  """``[n]`` LESS scores from per-checkpoint features ``[C, n, k]`` and ``[C, t, k]``.

  Args:
    checkpoint_weights: ``[C]`` (e.g. the average learning rate of each
      epoch); renormalized to sum 1 as the official ``matching.py`` does.
    num_groups: target examples form this many equal consecutive groups
      (subtasks): the mean within a group, the max over groups. Default: t
      groups of one, the max over target examples.
  """
  a = jnp.asarray(train_features)
  b = jnp.asarray(target_features)
  if a.ndim != 3 or b.ndim != 3 or a.shape[0] != b.shape[0] or a.shape[2] != b.shape[2]:
    raise ValueError(
      f"target_features: expected [C, t, k] matching train_features [C, n, k], got "
      f"{b.shape} and {a.shape}"
    )
  w = jnp.asarray(checkpoint_weights, a.dtype)
  if w.shape != (a.shape[0],):
    raise ValueError(f"checkpoint_weights: expected shape ({a.shape[0]},), got {w.shape}")
  _checks.positive("checkpoint_weights", w)
  w = w / jnp.sum(w)
  s = jnp.einsum("c,cnk,ctk->nt", w, a, b)
  t = b.shape[1]
  groups = t if num_groups is None else _checks.integer("num_groups", num_groups, minimum=1)
  if t % groups:
    raise ValueError(f"num_groups: {groups} does not divide the {t} target examples")
  return s.reshape(s.shape[0], groups, -1).mean(-1).max(-1)


def less_select(scores: Any, fraction: float) -> jax.Array:
  """Indices of the top ``ceil(fraction * n)`` scores, best first."""
  s = jnp.asarray(scores)
  if s.ndim != 1 or s.shape[0] == 0:
    raise ValueError(f"scores: expected a non-empty vector, got shape {s.shape}")
  if not 0.0 < fraction <= 1.0:
    raise ValueError(f"fraction: expected a value in (0, 1], got {fraction}")
  m = max(1, math.ceil(fraction * s.shape[0]))
  return jnp.argsort(-s, stable=True)[:m]
