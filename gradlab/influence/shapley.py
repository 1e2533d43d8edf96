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
"""

from __future__ import annotations

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
