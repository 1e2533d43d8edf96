"""Winner-take-all column-row sampling (Liu et al. 2023, "Winner-Take-All Column Row
Sampling for Memory Efficient Adaptation of Language Model"; official code
zirui-ray-liu/WTACRS, ``approxlinear/functional.py``).

The weight gradient of a Dense layer ``y = x W + b`` is ``x^T dy``, a sum of
N outer products ``x_i^T dy_i`` over the rows (tokens, examples). Storing x
for the backward pass costs N rows of activations. Column-row sampling (CRS)
keeps k < N rows drawn with probabilities ``p_i`` (here proportional to
``|x_i|``, or to ``|x_i| * h_i`` with a hint h of the output-gradient norms,
which the official code takes from the previous step) and reweights them so
that the estimate is unbiased. WTA-CRS keeps the ``c`` most probable rows
deterministically (the winners) and samples the other ``s = k - c`` slots
with replacement from the rest:

    est = sum_{i in C} x_i^T dy_i + (1 - P_C) / s * sum_{j=1..s} x_{i_j}^T dy_{i_j} / p_{i_j},

with ``i_j ~ p_i / (1 - P_C)`` outside C, unbiased for ``x^T dy``. ``c`` is
chosen as the official ``k_adaptive``: with the top-k probabilities sorted,
``q_c`` their running sum, the score ``(1 - q_c) / (k - c)`` is minimized
over c, and c = 0 (plain CRS) when ``1 / k`` is below that minimum.

``wta_crs_dense`` is a Dense layer whose forward pass is exact and whose
``custom_vjp`` stores only the k kept rows (times their weights): the input
gradient ``dy W^T`` and the bias gradient are exact, the kernel gradient is
the estimate above. ``sampled_dense_layers`` routes every flax ``nn.Dense``
of a model through it.

It lives in ``gradstats`` because it is an estimator of a gradient, not a
model: ``x_i^T dy_i`` is row i's contribution to the kernel gradient (the
per-example Dense gradient of :mod:`gradlab.gradstats.dense_moments`), and
WTA-CRS importance-samples those contributions by norm, as
:mod:`gradlab.gradstats.sampling` does for examples. The row sampler
(``row_probabilities``, ``winners``, ``plan_rows``, ``estimate``) is public in
this module for tests and references, not re-exported from the package.
"""

from __future__ import annotations

import contextlib
import itertools
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from gradlab import _checks


class RowPlan(NamedTuple):
  indices: jax.Array  # [k] int32: the rows kept
  weights: jax.Array  # [k] the factor of each kept row's outer product


def row_probabilities(x: jax.Array, hint: jax.Array | None = None, eps: float = 1e-8) -> jax.Array:
  """``p_i = (|x_i| h_i + eps) / (sum + eps)`` over the rows of ``x [N, d]``."""
  norms = jnp.linalg.norm(x, axis=-1)
  mult = norms if hint is None else norms * hint
  return (mult + eps) / (jnp.sum(mult) + eps)


def winners(probs: jax.Array, k: int) -> jax.Array:
  """The number c of rows kept deterministically (the official ``k_adaptive``)."""
  top = jax.lax.top_k(probs, k)[0]  # descending
  q = jnp.cumsum(top)
  c = jnp.arange(1, k + 1)
  score = jnp.where(c < k, (1 - q) / jnp.maximum(k - c, 1), jnp.inf)
  best = jnp.argmin(score)
  return jnp.where(1.0 / k < score[best], 0, best + 1).astype(jnp.int32)


def plan_rows(probs: jax.Array, k: int, key: jax.Array, *, wta: bool = True) -> RowPlan:
  """The k rows to keep and their weights; ``wta=False`` gives plain CRS (all k sampled
  with replacement from ``probs``)."""
  n = probs.shape[0]
  order = jax.lax.top_k(probs, k)[1]
  c = winners(probs, k) if wta else jnp.zeros((), jnp.int32)
  slot = jnp.arange(k)
  chosen = jnp.zeros(n, bool).at[order].set(slot < c)
  p_c = jnp.sum(jnp.where(chosen, probs, 0.0))
  residual = jnp.where(chosen, 0.0, probs)
  s = jnp.maximum(k - c, 1)
  # inverse-CDF draws: O(n + k log n) memory and time (a Gumbel-max categorical
  # would build a [k, n] array, more than the rows it saves)
  cdf = jnp.cumsum(residual)
  u = jax.random.uniform(key, (k,), probs.dtype) * cdf[-1]
  draws = jnp.minimum(jnp.searchsorted(cdf, u, side="right"), n - 1)
  stoc_w = (1 - p_c) / (s * probs[draws])
  deter = slot < c
  indices = jnp.where(deter, order, draws).astype(jnp.int32)
  weights = jnp.where(deter, 1.0, stoc_w).astype(probs.dtype)
  return RowPlan(indices, weights)


def estimate(x: jax.Array, dy: jax.Array, plan: RowPlan) -> jax.Array:
  """``sum_j w_j x_{i_j}^T dy_{i_j}``: the sampled ``x^T dy``."""
  return (x[plan.indices] * plan.weights[:, None]).T @ dy[plan.indices]


def keep_count(n: int, keep_fraction: float) -> int:
  if not 0.0 < keep_fraction <= 1.0:
    raise ValueError(f"keep_fraction: expected a value in (0, 1], got {keep_fraction}")
  return max(1, min(n, int(n * keep_fraction)))


def wta_crs_dense(
  x: Any,
  kernel: Any,
  bias: Any,
  key: jax.Array,
  *,
  keep_fraction: float,
  wta: bool = True,
  hint: Any = None,
) -> jax.Array:
  """``x @ kernel + bias`` whose kernel gradient is WTA-CRS's estimate from the
  ``keep_fraction`` of the rows of ``x`` (``[..., d_in]``, rows = all leading axes).

  Args:
    key: draws the sampled rows (a new key per step).
    keep_fraction: k / N, the share of rows whose activations are stored.
    wta: False for plain column-row sampling.
    hint: optional ``[N]`` estimates of the output-gradient row norms (e.g.
      the previous step's), multiplied into the probabilities.
  """
  _checks.is_key("key", key)
  x = jnp.asarray(x)
  lead = x.shape[:-1]
  x2 = x.reshape(-1, x.shape[-1])
  n = x2.shape[0]
  k = keep_count(n, keep_fraction)
  if k == n:
    return x @ kernel + bias
  h = None if hint is None else jax.lax.stop_gradient(jnp.asarray(hint).reshape(-1))
  plan = plan_rows(row_probabilities(jax.lax.stop_gradient(x2), h), k, key, wta=wta)
  y = _sampled_dense(x2, kernel, bias, plan)
  return y.reshape(*lead, -1)


@jax.custom_vjp
def _sampled_dense(x, kernel, bias, plan):
  return x @ kernel + bias


def _fwd(x, kernel, bias, plan):
  kept = x[plan.indices] * plan.weights[:, None].astype(x.dtype)  # only k rows are stored
  return x @ kernel + bias, (kept, plan.indices, kernel)


def _bwd(res, dy):
  kept, indices, kernel = res
  dx = dy @ kernel.T
  dkernel = kept.T @ dy[indices]
  dbias = jnp.sum(dy, axis=0)
  return dx, dkernel, dbias, None  # the plan (indices, weights) gets no gradient


_sampled_dense.defvjp(_fwd, _bwd)


@contextlib.contextmanager
def sampled_dense_layers(key: jax.Array, *, keep_fraction: float, wta: bool = True):
  """Inside this context every flax ``nn.Dense`` call made by ``Module.apply`` runs
  through :func:`wta_crs_dense` (exact forward, sampled kernel gradient), each
  call with its own ``fold_in(key, i)``; initialization is untouched::

    with gradstats.sampled_dense_layers(key, keep_fraction=0.3):
      loss, grads = jax.value_and_grad(loss_fn)(params, batch)
  """
  _checks.is_key("key", key)
  keep_count(2, keep_fraction)  # validates the fraction
  counter = itertools.count()

  def interceptor(next_fun, args, kwargs, context):
    mod = context.module
    if not isinstance(mod, nn.Dense) or context.method_name != "__call__" or mod.is_initializing():
      return next_fun(*args, **kwargs)
    kernel = mod.get_variable("params", "kernel")
    bias = mod.get_variable("params", "bias")
    if bias is None:
      bias = jnp.zeros(kernel.shape[-1], kernel.dtype)
    k = jax.random.fold_in(key, next(counter))
    return wta_crs_dense(args[0], kernel, bias, k, keep_fraction=keep_fraction, wta=wta)

  with nn.intercept_methods(interceptor):
    yield
