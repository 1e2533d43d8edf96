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
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp

from gradlab import _checks
from gradlab.influence.features import (
  ExampleFn,
  adam_transform,
  gradient_features,
  normalize_rows,
)
from gradlab.influence.functions import check_sets
from gradlab.influence.stream import check_chunk, run


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


def less_attribution(
  loss_fn: ExampleFn,
  checkpoints: Sequence[Any],
  adam_moments: Sequence[tuple[Any, Any]],
  train: Any,
  target: Any,
  key: jax.Array,
  *,
  dim: int,
  checkpoint_weights: Any,
  num_groups: int | None = None,
  chunk_size: int | None = None,
  path: Any = None,
  callback: Callable[[int, int], None] | None = None,
) -> Any:
  """``[n]`` LESS scores of the train pool, streamed: :func:`less_features` and
  :func:`less_scores` in one, the pool read ``chunk_size`` examples at a time (its
  ``[C, n, dim]`` features are never held; the target's are computed once).

  Args:
    checkpoints: parameter pytrees, one per checkpoint (C).
    adam_moments: ``(mu, nu)`` per checkpoint, the Adam moments the pool's
      features use (:func:`features.adam_transform`).
    key: projection key, shared by every checkpoint (as the official code's one
      projector), so pool and target features live in one space.
    checkpoint_weights, num_groups: as :func:`less_scores`.
    path, callback: write the scores to this ``.npy`` file block by block,
      resumably (see :func:`gradlab.influence.influence`).
  """
  checkpoints = list(checkpoints)
  moments = list(adam_moments)
  if not checkpoints or len(moments) != len(checkpoints):
    raise ValueError(
      f"adam_moments: expected one (mu, nu) per checkpoint ({len(checkpoints)}), got {len(moments)}"
    )
  n, t = check_sets(train, target)
  c = check_chunk(chunk_size, n)
  _checks.is_key("key", key)
  dtype = jax.tree.leaves(checkpoints[0])[0].dtype
  w = jnp.asarray(checkpoint_weights, dtype)
  if w.shape != (len(checkpoints),):
    raise ValueError(f"checkpoint_weights: expected shape ({len(checkpoints)},), got {w.shape}")
  _checks.positive("checkpoint_weights", w)
  groups = t if num_groups is None else _checks.integer("num_groups", num_groups, minimum=1)
  if t % groups:
    raise ValueError(f"num_groups: {groups} does not divide the {t} target examples")
  w = w / jnp.sum(w)

  def queries():
    ct = None if chunk_size is None else min(c, t)
    return jnp.stack(
      [less_features(loss_fn, p, target, key, dim=dim, chunk_size=ct) for p in checkpoints]
    )  # [C, t, k]

  def block(args, chunk):
    (ps, ms), q = args
    s = sum(
      w[i] * less_features(loss_fn, p, chunk, key, dim=dim, adam_moments=m) @ q[i].T
      for i, (p, m) in enumerate(zip(ps, ms))
    )  # [c, t]
    return s.reshape(s.shape[0], groups, -1).mean(-1).max(-1)

  seed = jax.random.key_data(key)
  tag = f"less|{dim}|{groups}"
  consts = (checkpoints, moments)
  return run(block, consts, queries, train, c, path, tag, identity=(target, seed, w),
             callback=callback)  # fmt: skip


def less_select(scores: Any, fraction: float) -> jax.Array:
  """Indices of the top ``ceil(fraction * n)`` scores, best first."""
  s = jnp.asarray(scores)
  if s.ndim != 1 or s.shape[0] == 0:
    raise ValueError(f"scores: expected a non-empty vector, got shape {s.shape}")
  if not 0.0 < fraction <= 1.0:
    raise ValueError(f"fraction: expected a value in (0, 1], got {fraction}")
  m = max(1, math.ceil(fraction * s.shape[0]))
  return jnp.argsort(-s, stable=True)[:m]
