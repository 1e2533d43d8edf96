"""The digit-sum verifiable task: a prompt is a target sum, a response three digits.

Prompt ``t`` in ``0..27`` is token ``10 + t``; the response is three digit
tokens ``0..9``; the reward is 1 iff the digits sum to ``t``. Every prompt has
``10^3`` possible responses, so a policy's exact success rate ``p_x``, its
``pass@k = 1 - (1 - p_x)^k`` and the exact objective come from one batched
forward pass over all 28,000 sequences.
"""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np

NUM_DIGITS, RESPONSE_LEN, NUM_TARGETS = 10, 3, 28
VOCAB = NUM_DIGITS + NUM_TARGETS
RESPONSES = np.array(list(itertools.product(range(NUM_DIGITS), repeat=RESPONSE_LEN)), np.int32)
CORRECT = RESPONSES.sum(1)[None, :] == np.arange(NUM_TARGETS)[:, None]  # [28, 1000]


def prompt_tokens(targets) -> jax.Array:
  return jnp.asarray(targets, jnp.int32) + NUM_DIGITS


def rewards(targets, responses) -> jax.Array:
  """``[...]`` 0/1 for ``targets [...]`` and ``responses [..., 3]``."""
  return (jnp.sum(responses, -1) == jnp.asarray(targets)).astype(jnp.float32)


def response_logp(apply_fn, params, targets, responses) -> jax.Array:
  """Token log-probabilities ``[..., 3]`` of ``responses`` under the policy, digits only."""
  shape = responses.shape[:-1]
  seq = jnp.concatenate(
    [prompt_tokens(targets).reshape(-1, 1), responses.reshape(-1, RESPONSE_LEN)], 1
  )
  logits = apply_fn(params, seq[:, :-1])[..., :NUM_DIGITS]
  logp = jax.nn.log_softmax(logits, -1)
  out = jnp.take_along_axis(logp, seq[:, 1:, None], -1)[..., 0]
  return out.reshape(*shape, RESPONSE_LEN)


def sample(apply_fn, params, key, targets, num: int) -> jax.Array:
  """``num`` responses per target: ``[len(targets), num, 3]``."""
  t = jnp.repeat(jnp.asarray(targets), num)
  seq = prompt_tokens(t)[:, None]
  for k in jax.random.split(key, RESPONSE_LEN):
    logits = apply_fn(params, seq)[:, -1, :NUM_DIGITS]
    seq = jnp.concatenate([seq, jax.random.categorical(k, logits)[:, None]], 1)
  return seq[:, 1:].reshape(len(targets), num, RESPONSE_LEN)


def success_rates(apply_fn, params) -> jax.Array:
  """Exact ``p_x`` for the 28 prompts (enumerating all 1000 responses each)."""
  targets = jnp.repeat(jnp.arange(NUM_TARGETS), RESPONSES.shape[0])
  resp = jnp.tile(jnp.asarray(RESPONSES), (NUM_TARGETS, 1))
  logp = response_logp(apply_fn, params, targets, resp).sum(-1).reshape(NUM_TARGETS, -1)
  return jnp.sum(jnp.exp(logp) * jnp.asarray(CORRECT), -1)


def pass_at_k(p_x, ks) -> dict[int, float]:
  """Exact mean ``pass@k = 1 - (1 - p_x)^k`` over prompts."""
  p = np.asarray(p_x, np.float64)
  return {int(k): float(np.mean(1 - (1 - p) ** k)) for k in ks}
