r"""A population of tabular prompts for bias/variance studies of group estimators.

Each prompt is a softmax over ``outcomes`` answers, the first ``correct`` of
them right, with success rate ``p_x``. With binary rewards and the softmax
parameterization the per-prompt score is ``e_y - \pi_x``, so an estimator's
batch gradient is ``(1/N) \sum_{x,i} A_{x,i} (e_{y_{x,i}} - \pi_x)`` and the
exact gradient of ``J = mean_x p_x`` is known in closed form.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np


class Population(NamedTuple):
  logits: jax.Array  # [P, outcomes]
  p: jax.Array  # [P] success rates
  correct: int


def beta_population(
  num_prompts: int, a: float, b: float, *, outcomes: int = 4, correct: int = 2
) -> Population:
  """Prompts at the ``(i + 1/2)/P`` quantiles of ``Beta(a, b)``, spread evenly over the answers."""
  from scipy import stats

  p = stats.beta.ppf((np.arange(num_prompts) + 0.5) / num_prompts, a, b)
  p = np.clip(p, 1e-4, 1 - 1e-4)
  probs = np.concatenate(
    [
      np.repeat(p[:, None] / correct, correct, 1),
      np.repeat((1 - p[:, None]) / (outcomes - correct), outcomes - correct, 1),
    ],
    1,
  )
  return Population(jnp.asarray(np.log(probs), jnp.float32), jnp.asarray(p, jnp.float32), correct)


def exact_gradient(pop: Population) -> jax.Array:
  """``d mean_x p_x / d logits``, flattened ``[P * outcomes]``."""

  def j(logits):
    return jnp.mean(jnp.sum(jax.nn.softmax(logits)[:, : pop.correct], -1))

  return jax.grad(j)(pop.logits).ravel()


def sample_estimates(
  pop: Population,
  adv_fn: Callable,
  group: int,
  key: jax.Array,
  num_batches: int,
  *,
  with_logp: bool = False,
) -> jax.Array:
  """``[num_batches, P * outcomes]`` estimates ``(1/G) sum_i A_{x,i}(e_y - pi_x)`` per prompt,
  averaged over prompts (the gradient of the mean success rate). ``with_logp``:
  ``adv_fn(rewards, logp)`` also gets the responses' log-probabilities ``[P, G]``
  (for CoPG's regularized reward). The same ``key`` gives every estimator the same draws."""
  probs = jax.nn.softmax(pop.logits)
  num_prompts, outcomes = pop.logits.shape

  def one(k):
    y = jax.random.categorical(k, pop.logits, shape=(group, num_prompts)).T  # [P, G]
    r = (y < pop.correct).astype(jnp.float32)
    adv = adv_fn(r, jnp.take_along_axis(jnp.log(probs), y, 1)) if with_logp else adv_fn(r)
    score = jax.nn.one_hot(y, outcomes) - probs[:, None]
    return (jnp.einsum("pg,pgk->pk", adv, score) / (group * num_prompts)).ravel()

  return jax.lax.map(one, jax.random.split(key, num_batches), batch_size=1024)


def bias_and_variance(estimates: jax.Array, truth: jax.Array) -> dict[str, float]:
  """Relative bias ``||E g - grad J|| / ||grad J||``, cosine to ``grad J``, relative
  variance ``tr Cov / ||E g||^2`` and the variance per sample ``tr Cov``."""
  mean = jnp.mean(estimates, 0)
  tr_cov = jnp.sum(jnp.var(estimates, 0, ddof=1))
  return {
    "relative bias": float(jnp.linalg.norm(mean - truth) / jnp.linalg.norm(truth)),
    "cosine": float(jnp.dot(mean, truth) / (jnp.linalg.norm(mean) * jnp.linalg.norm(truth))),
    "relative variance": float(tr_cov / jnp.sum(mean**2)),
    "scale": float(jnp.dot(mean, truth) / jnp.dot(truth, truth)),
    "trace covariance": float(tr_cov),
  }


def raft_estimates(pop: Population, counts, key: jax.Array, num_batches: int) -> jax.Array:
  r"""RAFT's (rejection-sampling fine-tuning) estimate of ``(1/P) \sum_x \nabla \log p_x`` with
  ``counts[x]`` samples for prompt ``x``: the mean score of its *accepted* samples (0 when none
  is), ``[num_batches, P * outcomes]``. The estimator GVM-RAFT allocates for."""
  probs = jax.nn.softmax(pop.logits)
  num_prompts, outcomes = pop.logits.shape
  parts = []
  for x in range(num_prompts):
    n = int(counts[x])

    def one(k, x=x, n=n):
      y = jax.random.categorical(k, pop.logits[x], shape=(n,))
      r = (y < pop.correct).astype(jnp.float32)
      score = jax.nn.one_hot(y, outcomes) - probs[x]
      return jnp.sum(r[:, None] * score, 0) / jnp.maximum(jnp.sum(r), 1.0)

    parts.append(
      jax.lax.map(one, jax.random.split(jax.random.fold_in(key, x), num_batches), batch_size=1024)
      / num_prompts
    )
  return jnp.concatenate(parts, axis=1)


def raft_target(pop: Population) -> jax.Array:
  """``d (1/P) sum_x log p_x / d logits``, flattened."""

  def j(logits):
    return jnp.mean(jnp.log(jnp.sum(jax.nn.softmax(logits)[:, : pop.correct], -1)))

  return jax.grad(j)(pop.logits).ravel()


def _count_vectors(group: int, outcomes: int) -> np.ndarray:
  """Every ``[outcomes]`` vector of non-negative counts summing to ``group``."""
  out = []
  for cut in itertools.combinations(range(group + outcomes - 1), outcomes - 1):
    edges = (-1, *cut, group + outcomes - 1)
    out.append([edges[i + 1] - edges[i] - 1 for i in range(outcomes)])
  return np.asarray(out, np.int64)


def exact_moments(pop: Population, adv_fn: Callable, group: int) -> tuple[jax.Array, jax.Array]:
  r"""The exact mean ``[P * outcomes]`` and ``tr Cov`` of :func:`sample_estimates`' estimator.

  For estimators computed prompt by prompt from the group's rewards (every
  ``adv_fn`` here but the batch-baselined REINFORCE, and BNPO only with its
  ``params`` fixed): a group's estimate depends only on its multinomial count
  vector, so the moments are sums over the ``C(G + K - 1, K - 1)`` count vectors
  with their multinomial probabilities, no Monte Carlo error.
  """
  num_prompts, outcomes = pop.logits.shape
  counts = _count_vectors(group, outcomes)  # [M, K]
  ys = jnp.asarray(np.stack([np.repeat(np.arange(outcomes), c) for c in counts]))  # [M, G]
  log_coef = np.asarray(
    [math.lgamma(group + 1) - sum(math.lgamma(c + 1) for c in row) for row in counts], np.float32
  )
  counts_f = jnp.asarray(counts, jnp.float32)

  @jax.jit
  def moments(logits):
    probs = jax.nn.softmax(logits)
    r = (ys < pop.correct).astype(jnp.float32)
    adv = adv_fn(r)  # [M, G]: one group per row
    onehot = jax.nn.one_hot(ys, outcomes)  # [M, G, K]

    def one(pi):
      w = jnp.exp(log_coef + counts_f @ jnp.log(pi))
      g = jnp.einsum("mg,mgk->mk", adv, onehot - pi) / (group * num_prompts)
      mean = w @ g
      return mean, w @ jnp.sum(g**2, 1) - jnp.sum(mean**2)

    return jax.vmap(one)(probs)

  means, variances = moments(pop.logits)
  return means.ravel(), jnp.sum(variances)
