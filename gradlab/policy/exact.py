r"""Exact oracles for policy gradients on small sequence policies.

A *tabular autoregressive* policy over sequences of ``length`` tokens from a
``vocab``: token ``t`` is drawn from ``softmax(theta_t[prefix])``, one row of
logits per prefix, so every sequence's probability, the objective
``J = \sum_y \pi(y) r(y)`` and its exact gradient come from enumerating the
``vocab ** length`` sequences. ``expected_group_estimate`` enumerates every
ordered group of ``G`` sequences as well, giving an estimator's *exact*
expectation (no Monte Carlo error) for small ``vocab ** (length * G)``.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np


def all_sequences(vocab: int, length: int) -> np.ndarray:
  """Every sequence, ``[vocab ** length, length]`` int32, in lexicographic order."""
  return np.array(list(itertools.product(range(vocab), repeat=length)), np.int32)


def init_tabular(key: jax.Array, vocab: int, length: int, scale: float = 1.0) -> list[jax.Array]:
  """Logit tables ``theta_t`` of shape ``[vocab ** t, vocab]``."""
  keys = jax.random.split(key, length)
  return [scale * jax.random.normal(k, (vocab**t, vocab)) for t, k in enumerate(keys)]


def tabular_token_logp(params: list[jax.Array], seqs: jax.Array) -> jax.Array:
  """``log pi(y_t | y_<t)`` for ``seqs [..., length]`` -> ``[..., length]``."""
  vocab = params[0].shape[-1]
  out = []
  prefix = jnp.zeros(seqs.shape[:-1], jnp.int32)
  for t, theta in enumerate(params):
    logp = jax.nn.log_softmax(theta[prefix], axis=-1)
    out.append(jnp.take_along_axis(logp, seqs[..., t : t + 1], axis=-1)[..., 0])
    prefix = prefix * vocab + seqs[..., t]
  return jnp.stack(out, -1)


def exact_objective(params, seqs, rewards) -> jax.Array:
  """``J = sum_y pi(y) r(y)`` over all ``seqs`` with ``rewards [num_seqs]``."""
  return jnp.sum(jnp.exp(jnp.sum(tabular_token_logp(params, seqs), -1)) * rewards)


def sample_sequences(key, params, shape) -> jax.Array:
  """Samples ``shape + (length,)`` sequences from the tabular policy."""
  vocab = params[0].shape[-1]
  prefix = jnp.zeros(shape, jnp.int32)
  toks = []
  for theta, k in zip(params, jax.random.split(key, len(params))):
    y = jax.random.categorical(k, theta[prefix])
    toks.append(y)
    prefix = prefix * vocab + y
  return jnp.stack(toks, -1)


def expected_group_estimate(
  estimate: Callable[[jax.Array], object],
  num_seqs: int,
  probs,
  group: int,
  *,
  max_groups: int = 200_000,
):
  """``E[estimate(idx)]`` over ordered groups ``idx [group]`` of i.i.d. sequence
  indices with probabilities ``probs [num_seqs]``, by enumeration."""
  total = num_seqs**group
  if total > max_groups:
    raise ValueError(f"group: {num_seqs}^{group} = {total} groups exceed max_groups={max_groups}")
  idx = jnp.asarray(np.array(list(itertools.product(range(num_seqs), repeat=group)), np.int32))
  weights = jnp.prod(jnp.asarray(probs)[idx], axis=-1)
  values = jax.lax.map(estimate, idx, batch_size=512)
  return jax.tree.map(lambda v: jnp.tensordot(weights, v, axes=1), values)


def group_scale(h: Callable[[int], float], p: float, group: int) -> float:
  r"""``c(p, G) = E_{k \sim Bin(G,p)}[h(k) k (G-k)] / (G^2 p (1-p))``.

  For binary rewards, an advantage ``A_i = h(k)(r_i - \bar r)`` (``k``
  successes) has ``E[\sum_i A_i \nabla\log\pi(y_i)] = G\,c(p,G)\,\nabla p``:
  ``h = 1`` (group mean) gives ``(G-1)/G``, RLOO's ``h = G/(G-1)`` gives 1.
  """
  if not 0 < p < 1:
    raise ValueError(f"p: expected a success rate in (0, 1), got {p}")
  total = 0.0
  for k in range(group + 1):
    total += math.comb(group, k) * p**k * (1 - p) ** (group - k) * h(k) * k * (group - k)
  return total / (group**2 * p * (1 - p))


def grpo_h(group: int, eps: float = 1e-6) -> Callable[[int], float]:
  """GRPO's ``h(k) = 1 / (std + eps)``, Bessel's std of ``k`` ones among ``group``."""

  def h(k):
    if group < 2:
      return 0.0
    return 1.0 / (math.sqrt(k * (group - k) / (group * (group - 1))) + eps)

  return h
