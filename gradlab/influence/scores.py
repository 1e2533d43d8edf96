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
  check_projection,
  map_chunks,
  normalize_rows,
  num_examples,
  per_example_gradients,
)
from gradlab.influence.features import project as project_rows
from gradlab.influence.functions import check_sets
from gradlab.influence.stream import check_chunk, run

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


def _checkpoints(checkpoints: Sequence[Any], learning_rates: Any) -> tuple[Any, jax.Array]:
  checkpoints = list(checkpoints)
  if not checkpoints:
    raise ValueError("checkpoints: expected at least one parameter pytree, got none")
  lrs = jnp.asarray(learning_rates)
  if lrs.shape != (len(checkpoints),):
    raise ValueError(
      f"learning_rates: expected one per checkpoint ({len(checkpoints)}), got shape {lrs.shape}"
    )
  stacked = jax.tree.map(lambda *leaves: jnp.stack(leaves), *checkpoints)
  dtype = jax.tree.leaves(checkpoints[0])[0].dtype
  return stacked, lrs.astype(dtype)


def tracin_cp(
  loss_fn: ExampleFn,
  checkpoints: Sequence[Any],
  learning_rates: Sequence[float] | jax.Array,
  train: Any,
  test: Any,
  *,
  chunk_size: int | None = None,
  project: Callable[[jax.Array], jax.Array] | None = None,
  measurement_fn: ExampleFn | None = None,
  path: Any = None,
  callback: Callable[[int, int], None] | None = None,
) -> Any:
  """``[t, n]``: TracIn-CP, ``sum_c lr_c g_train(theta_c) . g_test(theta_c)``.

  The test gradients at every checkpoint are computed once; the train set is
  then streamed ``chunk_size`` examples at a time, each chunk's gradients taken
  at every checkpoint (a scan) and dotted with them, so no ``[n, d]`` array is
  held (:mod:`gradlab.influence.stream`).

  Args:
    checkpoints: parameter pytrees saved during training (a list).
    learning_rates: the learning rate in force at each checkpoint.
    project: optional map of gradient rows ``[m, d] -> [m, k]`` (e.g. a
      ``functools.partial(features.project, key=..., dim=...)``) applied to both.
    measurement_fn: the test side's function (default ``loss_fn``).
    path, callback: write the scores to this ``.npy`` file block by block,
      resumably (see :func:`gradlab.influence.influence`).
  """
  stacked, lrs = _checkpoints(checkpoints, learning_rates)
  n, t = check_sets(train, test)
  c = check_chunk(chunk_size, n)
  prj = (lambda x: x) if project is None else project
  measure = loss_fn if measurement_fn is None else measurement_fn

  def queries():
    ct = None if chunk_size is None else min(c, t)
    return jax.lax.map(
      lambda p: prj(per_example_gradients(measure, p, test, chunk_size=ct)), stacked
    )  # [C, t, k]

  def block(args, chunk):
    (ckpts, lr), q = args

    def one(total, xs):
      params, lr_c, q_c = xs
      f = prj(per_example_gradients(loss_fn, params, chunk))
      return total + lr_c * (f @ q_c.T), None

    zeros = jnp.zeros((num_examples("chunk", chunk), t), lr.dtype)
    return jax.lax.scan(one, zeros, (ckpts, lr, q))[0]

  tag = f"tracin|{project is not None}|{measurement_fn is not None}"
  return run(
    block, (stacked, lrs), queries, train, c, path, tag, identity=(test,), callback=callback
  )


def grad_similarity(
  fn: ExampleFn,
  params: Any,
  train: Any,
  test: Any,
  *,
  cosine: bool = False,
  key: jax.Array | None = None,
  dim: int | None = None,
  chunk_size: int | None = None,
  measurement_fn: ExampleFn | None = None,
  path: Any = None,
  callback: Callable[[int, int], None] | None = None,
) -> Any:
  """``[t, n]``: Grad-Dot (``cosine=False``) or Grad-Cos of the test and train gradients
  of ``fn``, optionally projected to ``dim`` (``features.project`` with ``key``), the
  train set streamed ``chunk_size`` examples at a time (no ``[n, d]`` array held);
  :func:`grad_dot` / :func:`grad_cos` on the rows, without holding them.

  ``measurement_fn`` is the test side's function (default ``fn``); ``path`` and
  ``callback`` write the scores to disk resumably, as in ``influence``.
  """
  n, t = check_sets(train, test)
  c = check_chunk(chunk_size, n)
  if dim is not None:
    check_projection(dim, "rademacher", None)
    if key is None:
      raise ValueError("key: expected a typed key from jax.random.key when dim is given, got None")
    _checks.is_key("key", key)
  measure = fn if measurement_fn is None else measurement_fn

  def rows(f, p, examples):
    g = per_example_gradients(f, p, examples)
    g = g if dim is None else project_rows(g, key, dim)
    return normalize_rows(g) if cosine else g

  def queries():
    ct = None if chunk_size is None else min(c, t)
    return map_chunks(lambda ch: rows(measure, params, ch), test, ct)

  def block(args, chunk):
    p, q = args
    return rows(fn, p, chunk) @ q.T

  tag = f"gradsim|{cosine}|{dim}|{measurement_fn is not None}"
  seed = None if key is None else jax.random.key_data(key)
  return run(block, params, queries, train, c, path, tag, identity=(test, seed), callback=callback)


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
