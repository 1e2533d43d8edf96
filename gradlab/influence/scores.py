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
  Both as mansheej/data_diet computes them (``data_diet/scores.py``
  ``get_lord_error_fn`` with ``ord=2``, ``get_grad_norm_fn``): at one early
  checkpoint of one run; the paper averages the scores over several
  initializations (``scripts/get_mean_score.py``), which the caller does.
* ``vog``: Agarwal et al. (2022), the variance of gradients across checkpoints:
  per input pixel, the standard deviation over K checkpoints of the gradient
  of the true class's logit with respect to the input, averaged over pixels,
  optionally normalized within each class (chirag126/VOG).
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


def vog(input_gradients: Any, labels: Any = None, *, num_classes: int | None = None) -> jax.Array:
  """``[n]``: Variance of Gradients from ``[K, n, ...]`` input gradients at K checkpoints.

  As the official code (chirag126/VOG, ``train_cifar/main.py`` and
  ``imagenet/train_visualize_grad.py``; the paper's eqs. 2-3) computes it,
  with ``S_k`` example j's input gradient at checkpoint k (of the true
  class's pre-softmax logit, :func:`input_gradients`) and N its pixels:

      VoG_j = (1/N) sum_pixels sqrt( (1/K) sum_k (S_k - mean_k S_k)^2 ),

  the per-pixel population standard deviation over checkpoints, averaged over
  pixels. With ``labels`` (``[n]`` integer classes), each score is normalized
  within its class, ``(VoG_j - mu_c) / sigma_c`` with the population mean and
  standard deviation over the class's examples (the paper's eq. 4,
  ``toy_script.py``'s ``--vog_cal=normalize``); a class whose scores are all
  equal (one example, say) gets 0 where the official code divides by zero.
  ``num_classes`` sizes the class statistics; it is read from ``labels`` when
  they are concrete and is needed under ``jit``. The official code averages a
  colour image's gradient over its channels first (``np.mean(grad, axis=-1)``):
  pass ``g.mean(-1)`` for that.
  """
  g = jnp.asarray(input_gradients)
  if g.ndim < 2 or g.shape[0] < 2:
    raise ValueError(f"input_gradients: expected [K >= 2 checkpoints, n, ...], got {g.shape}")
  if not jnp.issubdtype(g.dtype, jnp.floating):
    raise ValueError(f"input_gradients: expected a floating dtype, got {g.dtype}")
  sd = jnp.std(g, axis=0)
  scores = jnp.mean(sd.reshape(sd.shape[0], -1), axis=1)
  if labels is None:
    return scores
  y = jnp.asarray(labels)
  if y.shape != scores.shape or not jnp.issubdtype(y.dtype, jnp.integer):
    raise ValueError(
      f"labels: expected [{scores.shape[0]}] integer classes, got {y.dtype} of shape {y.shape}"
    )
  if num_classes is None:
    v = _checks.concrete(y)
    if v is None:
      raise ValueError("num_classes: expected an integer when labels are traced (under jit)")
    num_classes = int(v.max()) + 1 if v.size else 1
  c = _checks.integer("num_classes", num_classes, minimum=1)
  v = _checks.concrete(y)
  if v is not None and v.size and (v.min() < 0 or v.max() >= c):
    raise ValueError(f"labels: expected classes in [0, {c}), got [{v.min()}, {v.max()}]")
  onehot = jax.nn.one_hot(y, c, dtype=scores.dtype)  # [n, C]
  count = jnp.maximum(onehot.sum(0), 1.0)
  mu = (onehot.T @ scores) / count
  centred = scores - onehot @ mu
  sigma = jnp.sqrt((onehot.T @ centred**2) / count)
  s = onehot @ sigma
  return jnp.where(s > 0, centred / jnp.where(s > 0, s, 1.0), 0.0)


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
