"""Data Shapley: exact by enumeration, TMC-Shapley, and KNN-Shapley's closed form.

A *game* is ``value_fn(mask) -> scalar`` over 0/1 membership masks ``[n]``
(e.g. the test accuracy of a model trained on the masked subset), traceable
by JAX. The Shapley value of player i is

    phi_i = sum_{S not containing i} |S|! (n - |S| - 1)! / n!  (v(S + i) - v(S)),

the average marginal contribution of i over the n! orderings.

* ``exact_shapley``: all ``2^n`` subsets in one ``vmap`` (n <= 20).
* ``tmc_shapley``: Ghorbani and Zou (2019), Truncated Monte Carlo: marginal
  contributions along random permutations, a permutation's scan truncated
  (remaining contributions 0, no more evaluations) once the prefix value is
  within ``tolerance * |v(N)|`` of the full value. Returns standard errors.
* ``knn_shapley``: Jia et al. (2019), the exact Shapley value of the K-nearest-
  neighbour utility ``U(S) = (1/K) sum_{k <= min(K, |S|)} 1[y_(k) = y_test]``
  by its recursion over train points sorted by distance, averaged over test
  points.
* ``g_shapley``: Ghorbani and Zou (2019), Gradient Shapley: per random
  permutation one SGD pass with one example per step, each example's marginal
  contribution the change in validation value its step makes. Its game is
  order-dependent (see ``g_shapley``); ``exact_g_shapley`` averages over all
  ``n!`` orderings (n <= 8); ``g_shapley_learning_rate`` picks the step size
  as the official code does.
"""

from __future__ import annotations

import itertools
import math
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from gradlab import _checks

Game = Callable[[jax.Array], jax.Array]


class ShapleyEstimate(NamedTuple):
  values: jax.Array  # [n] the estimate
  stderr: jax.Array  # [n] its standard error (sd of marginals / sqrt(permutations))
  evaluations: jax.Array  # scalar: value_fn calls made (truncation saves them)


def all_masks(n: int, dtype=jnp.float32) -> jax.Array:
  """``[2^n, n]``: row s is the binary expansion of s (bit i = player i)."""
  s = np.arange(2**n)[:, None]
  return jnp.asarray((s >> np.arange(n)[None, :]) & 1, dtype)


def exact_shapley(value_fn: Game, n: int) -> jax.Array:
  """``[n]`` exact Shapley values by enumerating the ``2^n`` subsets."""
  n = _checks.integer("n", n, minimum=1)
  if n > 20:
    raise ValueError(f"n: exact enumeration needs 2^n subsets; expected n <= 20, got {n}")
  masks = all_masks(n)
  v = jax.vmap(value_fn)(masks)
  if v.shape != (2**n,):
    raise ValueError(f"value_fn: expected a scalar per mask, got shape {v.shape[1:]}")
  s = np.arange(2**n)
  sizes = np.asarray(masks.sum(1), int)
  phi = []
  for i in range(n):
    without = s[(s >> i) & 1 == 0]
    k = sizes[without]
    w = np.array([math.factorial(j) * math.factorial(n - j - 1) for j in k]) / math.factorial(n)
    phi.append(jnp.sum(jnp.asarray(w, v.dtype) * (v[without | (1 << i)] - v[without])))
  return jnp.stack(phi)


def tmc_shapley(
  value_fn: Game,
  n: int,
  key: jax.Array,
  *,
  num_permutations: int,
  tolerance: Any = 0.0,
) -> ShapleyEstimate:
  """Truncated Monte Carlo Shapley values.

  Args:
    value_fn: the game, ``mask [n] -> scalar``.
    n: number of players.
    key: draws the permutations.
    num_permutations: permutations sampled (>= 2 for a standard error).
    tolerance: truncate a permutation once ``|v(N) - v(prefix)| <=
      tolerance * |v(N)|``; 0 truncates only at exact equality (unbiased).
  """
  n = _checks.integer("n", n, minimum=1)
  p = _checks.integer("num_permutations", num_permutations, minimum=2)
  _checks.is_key("key", key)
  _checks.positive("tolerance", tolerance, allow_zero=True)
  full = value_fn(jnp.ones((n,), jnp.float32))
  empty = value_fn(jnp.zeros((n,), jnp.float32))

  def one(k):
    perm = jax.random.permutation(k, n)

    def step(carry, i):
      mask, prev, calls = carry
      mask = mask.at[i].set(1.0)
      done = jnp.abs(full - prev) <= tolerance * jnp.abs(full)
      v = jax.lax.cond(done, lambda: prev, lambda: value_fn(mask))
      return (mask, v, calls + (~done).astype(jnp.int32)), v - prev

    init = (jnp.zeros((n,), jnp.float32), empty, jnp.zeros((), jnp.int32))
    (_, _, calls), marg = jax.lax.scan(step, init, perm)
    return jnp.zeros((n,), marg.dtype).at[perm].set(marg), calls

  marginals, calls = jax.lax.map(one, jax.random.split(key, p))
  sd = jnp.std(marginals, axis=0, ddof=1)
  return ShapleyEstimate(marginals.mean(0), sd / jnp.sqrt(p), jnp.sum(calls) + 2)


def knn_shapley(x_train: Any, y_train: Any, x_test: Any, y_test: Any, *, k: int) -> jax.Array:
  """``[n]`` exact KNN-Shapley values (Euclidean distance), averaged over test points.

  Sorted by distance to a test point (alpha_1 nearest), with ``m_j =
  1[y_alpha_j = y_test]``: ``s_N = m_N / N`` and
  ``s_j = s_{j+1} + (m_j - m_{j+1}) / K * min(K, j) / j``.
  """
  k = _checks.integer("k", k, minimum=1)
  xtr, xte = jnp.asarray(x_train), jnp.asarray(x_test)
  ytr, yte = jnp.asarray(y_train), jnp.asarray(y_test)
  if xtr.ndim != 2 or xtr.shape[0] == 0 or ytr.shape != xtr.shape[:1]:
    raise ValueError(
      f"x_train, y_train: expected [n, features] and [n], got {xtr.shape}, {ytr.shape}"
    )
  if xte.ndim != 2 or xte.shape[0] == 0 or yte.shape != xte.shape[:1]:
    raise ValueError(
      f"x_test, y_test: expected [t, features] and [t], got {xte.shape}, {yte.shape}"
    )
  if xte.shape[1] != xtr.shape[1]:
    raise ValueError(f"x_test: expected {xtr.shape[1]} features like x_train, got {xte.shape[1]}")
  n = xtr.shape[0]
  j = jnp.arange(1, n + 1, dtype=jnp.float32)

  def one(x, y):
    d = jnp.sum((xtr - x) ** 2, axis=1)
    order = jnp.argsort(d, stable=True)
    m = (ytr[order] == y).astype(jnp.float32)
    step = (m[:-1] - m[1:]) / k * jnp.minimum(k, j[:-1]) / j[:-1]
    s = m[-1] / n + jnp.concatenate([jnp.cumsum(step[::-1])[::-1], jnp.zeros(1)])
    return jnp.zeros(n).at[order].set(s)

  return jnp.mean(jax.vmap(one)(xte, yte), axis=0)


def knn_utility(x_train, y_train, x_test, y_test, *, k: int) -> Game:
  """The game ``knn_shapley`` values: mask -> mean over test points of the K-NN utility."""
  xtr, ytr = jnp.asarray(x_train), jnp.asarray(y_train)

  def value(mask):
    def one(x, y):
      d = jnp.sum((xtr - x) ** 2, axis=1)
      d = jnp.where(mask > 0, d, jnp.inf)
      order = jnp.argsort(d, stable=True)[:k]
      inside = jnp.isfinite(d[order])
      return jnp.sum(jnp.where(inside, ytr[order] == y, False)) / k

    return jnp.mean(jax.vmap(one)(jnp.asarray(x_test), jnp.asarray(y_test)))

  return value


def _example(train: Any, i: jax.Array) -> Any:
  return jax.tree.map(lambda x: x[i], train)


def _train_size(train: Any) -> int:
  sizes = {jnp.shape(x)[0] for x in jax.tree.leaves(train) if jnp.ndim(x) > 0}
  if len(sizes) != 1:
    raise ValueError(f"train: expected leaves with one common leading axis n, got sizes {sizes}")
  return sizes.pop()


def _one_pass(loss_fn, value_fn, params, train, learning_rate, reference, tolerance):
  """``perm -> (marginals [n] by player, value evaluations, final value)`` for one SGD pass."""
  grad = jax.grad(loss_fn)
  train = jax.tree.map(jnp.asarray, train)
  params = jax.tree.map(jnp.asarray, params)
  n = _train_size(train)
  v0 = value_fn(params)

  def sgd(p, i):
    return jax.tree.map(lambda a, g: a - learning_rate * g, p, grad(p, _example(train, i)))

  def run(perm):
    def step(carry, i):
      p, prev, calls = carry
      if tolerance is None:
        p = sgd(p, i)
        v, took = value_fn(p), jnp.ones((), jnp.int32)
      else:

        def take():
          q = sgd(p, i)
          return q, value_fn(q)

        done = jnp.abs(reference - prev) <= tolerance * jnp.abs(reference)
        p, v = jax.lax.cond(done, lambda: (p, prev), take)
        took = (~done).astype(jnp.int32)
      return (p, v, calls + took), v - prev

    init = (params, v0, jnp.zeros((), jnp.int32))
    (_, last, calls), marg = jax.lax.scan(step, init, perm)
    return jnp.zeros((n,), marg.dtype).at[perm].set(marg), calls, last

  return run


def g_shapley(
  loss_fn: Callable[[Any, Any], jax.Array],
  params: Any,
  train: Any,
  value_fn: Callable[[Any], jax.Array],
  key: jax.Array,
  *,
  num_permutations: int,
  learning_rate: Any,
  tolerance: Any = None,
) -> ShapleyEstimate:
  """Gradient Shapley (G-Shapley) values of the training examples.

  Ghorbani and Zou (2019), "Data Shapley: Equitable Valuation of Data for
  Machine Learning", Sec. 3.2; official code github.com/amiratag/DataShapley
  (``DShap.py`` ``DShap._g_shap``, ``Shapley.py`` ``ShapNN._one_epoch``). For a
  permutation pi of the n examples, start every pass from the same ``params``
  (the official model re-initializes with one fixed seed), take one SGD step
  per example in the order pi, ``theta_k = theta_{k-1} - lr grad
  loss_fn(theta_{k-1}, train[pi_k])``, and credit example pi_k with
  ``value_fn(theta_k) - value_fn(theta_{k-1})``; average over permutations.

  The game is *order-dependent*: the value after a prefix depends on the
  order its examples were stepped on, not only on which examples it holds, so
  it is a game in generalized characteristic function form (Nowak and Radzik
  1994), not a set function. What G-Shapley estimates is its Shapley value

      phi_i = (1/n!) sum_pi [v(pi up to and including i) - v(pi before i)],

  the average over all n! orderings of i's marginal contribution along that
  ordering, ``v(sequence) = value_fn(theta after SGD on the sequence)``
  (:func:`exact_g_shapley` computes that average). Along every pass the
  credits sum to ``v(pi) - v(())``. Only when the per-example gradient does
  not depend on the parameters (a loss linear in them) is ``theta_k`` a
  function of the prefix's set, and phi then equals :func:`exact_shapley` of
  the set game ``S -> value_fn(params - lr sum_{i in S} grad_i)``.

  Official-code differences: the first example of each pass gets no credit
  there (validation values are recorded after each step only, so
  ``v(theta_1) - v(theta_0)`` is dropped); here it gets it, so that the
  credits sum as above. The official ``_one_step_lr`` picks ``learning_rate``
  (:func:`g_shapley_learning_rate`).

  Args:
    loss_fn: one example's loss, ``(params, example) -> scalar``.
    params: the pass's starting parameters (a pytree).
    train: the n examples, a pytree with leading axis n.
    value_fn: ``params -> scalar`` validation performance, higher is better
      (accuracy, or minus the validation loss: the official ``metric='xe'``).
    key: draws the permutations.
    num_permutations: passes (>= 2 for a standard error).
    learning_rate: the SGD step.
    tolerance: ``None`` (default, the official behaviour): no truncation.
      Otherwise a pass stops stepping (remaining credits 0, no more
      evaluations) once ``|v_ref - v(prefix)| <= tolerance * |v_ref|``, with
      ``v_ref`` the value after one pass in index order; this biases the
      estimate toward the examples stepped on early.

  Returns:
    ``ShapleyEstimate``: the mean credits, their standard errors over
    permutations, and the ``value_fn`` evaluations made.
  """
  p = _checks.integer("num_permutations", num_permutations, minimum=2)
  _checks.is_key("key", key)
  _checks.positive("learning_rate", learning_rate)
  n = _train_size(train)
  reference, extra = jnp.zeros(()), 1
  if tolerance is not None:
    _checks.positive("tolerance", tolerance, allow_zero=True)
    passes = _one_pass(loss_fn, value_fn, params, train, learning_rate, None, None)
    reference = passes(jnp.arange(n))[2]
    extra += n + 1
  run = _one_pass(loss_fn, value_fn, params, train, learning_rate, reference, tolerance)
  marginals, calls, _ = jax.lax.map(
    lambda k: run(jax.random.permutation(k, n)), jax.random.split(key, p)
  )
  sd = jnp.std(marginals, axis=0, ddof=1)
  return ShapleyEstimate(marginals.mean(0), sd / jnp.sqrt(p), jnp.sum(calls) + extra)


def exact_g_shapley(
  loss_fn: Callable[[Any, Any], jax.Array],
  params: Any,
  train: Any,
  value_fn: Callable[[Any], jax.Array],
  *,
  learning_rate: Any,
) -> jax.Array:
  """``[n]`` the exact Shapley value of G-Shapley's order-dependent game: the
  mean over all ``n!`` orderings (n <= 8) of each example's credit along the
  one SGD pass in that ordering (see :func:`g_shapley`)."""
  _checks.positive("learning_rate", learning_rate)
  n = _train_size(train)
  if n > 8:
    raise ValueError(f"train: exact enumeration needs n! passes; expected n <= 8, got {n}")
  perms = jnp.asarray(list(itertools.permutations(range(n))), jnp.int32)
  run = _one_pass(loss_fn, value_fn, params, train, learning_rate, None, None)
  marginals, _, _ = jax.lax.map(run, perms, batch_size=min(len(perms), 720))
  return marginals.mean(0)


def g_shapley_learning_rate(
  loss_fn: Callable[[Any, Any], jax.Array],
  params: Any,
  train: Any,
  value_fn: Callable[[Any], jax.Array],
  key: jax.Array,
  *,
  candidates: Any = tuple(10.0 ** -np.arange(1, 5, 0.5)),
  repeats: int = 10,
) -> jax.Array:
  """The step of the official ``DShap._one_step_lr``: among ``candidates``
  (official ``10^-1, 10^-1.5, ..., 10^-4.5``) the one whose value after one SGD
  pass over a random permutation has the largest ``mean - std`` over
  ``repeats`` permutations."""
  r = _checks.integer("repeats", repeats, minimum=2)
  _checks.is_key("key", key)
  lrs = jnp.asarray(candidates, jnp.float32)
  if lrs.ndim != 1 or lrs.shape[0] == 0:
    raise ValueError(f"candidates: expected a non-empty list of steps, got shape {lrs.shape}")
  _checks.positive("candidates", lrs)
  n = _train_size(train)
  perms = jax.vmap(lambda k: jax.random.permutation(k, n))(jax.random.split(key, r))

  def final(lr, perm):
    return _one_pass(loss_fn, value_fn, params, train, lr, None, None)(perm)[2]

  values = jax.lax.map(lambda lr: jax.vmap(lambda pm: final(lr, pm))(perms), lrs)
  score = values.mean(1) - values.std(1)
  return lrs[jnp.argmax(score)]
