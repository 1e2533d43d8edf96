"""The digit-sum verifiable task: a prompt asks for three digits with a given sum.

A prompt is a pair ``(t, f)``: the three digits must sum to ``t`` in ``0..27``
and, when ``f >= 0``, none of them may be the forbidden digit ``f`` (``f = -1``:
no constraint). Its tokens are ``10 + t`` and ``38 + f`` (``48`` for no
constraint); the response is three digit tokens ``0..9``; the reward is 1 iff
the response satisfies the prompt. Every prompt has ``10^3`` possible
responses, so a policy's exact success rate ``p_x``, ``pass@k = 1 - (1 -
p_x)^k`` and the exact objective come from batched forward passes over all of
them. :func:`all_prompts` gives the 28 plain prompts, or those plus every
constrained prompt that has a correct answer (300 in all), for a held-out
split (:func:`split_prompts`).
"""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np

NUM_DIGITS, RESPONSE_LEN, NUM_TARGETS = 10, 3, 28
PROMPT_LEN = 2
VOCAB = NUM_DIGITS + NUM_TARGETS + NUM_DIGITS + 1  # digits, targets, forbidden digits, "none"
RESPONSES = np.array(list(itertools.product(range(NUM_DIGITS), repeat=RESPONSE_LEN)), np.int32)


def correct_mask(prompts) -> np.ndarray:
  """``[P, 1000]`` bool: which of the 1000 responses satisfy each prompt ``[P, 2]``."""
  p = np.asarray(prompts)
  ok = RESPONSES.sum(1)[None, :] == p[:, :1]
  forbidden = (RESPONSES[None, :, :] == p[:, 1:2, None]).any(-1)
  return ok & ~forbidden


def all_prompts(constrained: bool = False) -> np.ndarray:
  """``[P, 2]`` int32 prompts ``(t, f)``: the 28 plain ones, plus (``constrained``)
  every ``(t, f)`` with at least one correct answer."""
  plain = np.stack([np.arange(NUM_TARGETS), -np.ones(NUM_TARGETS, int)], 1)
  if not constrained:
    return plain.astype(np.int32)
  pairs = np.array([(t, f) for t in range(NUM_TARGETS) for f in range(NUM_DIGITS)])
  pairs = pairs[correct_mask(pairs).any(1)]
  return np.concatenate([plain, pairs]).astype(np.int32)


def split_prompts(prompts, held_out: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
  """A random ``(train, held_out)`` split of ``prompts [P, 2]``."""
  if not 0 < held_out < 1:
    raise ValueError(f"held_out: expected a fraction in (0, 1), got {held_out}")
  p = np.asarray(prompts)
  order = np.random.default_rng(seed).permutation(len(p))
  n = int(round(held_out * len(p)))
  return p[np.sort(order[n:])], p[np.sort(order[:n])]


def prompt_tokens(prompts) -> jax.Array:
  """``[..., 2]`` prompts -> their two tokens."""
  p = jnp.asarray(prompts, jnp.int32)
  f = jnp.where(p[..., 1] >= 0, NUM_DIGITS + NUM_TARGETS + p[..., 1], VOCAB - 1)
  return jnp.stack([NUM_DIGITS + p[..., 0], f], -1)


def rewards(prompts, responses) -> jax.Array:
  """``[...]`` 0/1 for ``prompts [..., 2]`` and ``responses [..., 3]``."""
  p = jnp.asarray(prompts)
  ok = jnp.sum(responses, -1) == p[..., 0]
  forbidden = jnp.any(responses == p[..., 1:2], -1)
  return (ok & ~forbidden).astype(jnp.float32)


def response_logp(apply_fn, params, prompts, responses) -> jax.Array:
  """Token log-probabilities ``[..., 3]`` of ``responses`` under the policy, digits only."""
  shape = responses.shape[:-1]
  seq = jnp.concatenate(
    [
      prompt_tokens(jnp.broadcast_to(prompts, (*shape, PROMPT_LEN))).reshape(-1, PROMPT_LEN),
      responses.reshape(-1, RESPONSE_LEN),
    ],
    1,
  )
  logits = apply_fn(params, seq[:, :-1])[:, PROMPT_LEN - 1 :, :NUM_DIGITS]
  logp = jax.nn.log_softmax(logits, -1)
  out = jnp.take_along_axis(logp, seq[:, PROMPT_LEN:, None], -1)[..., 0]
  return out.reshape(*shape, RESPONSE_LEN)


def sample(apply_fn, params, key, prompts, num: int) -> jax.Array:
  """``num`` responses per prompt of ``prompts [P, 2]``: ``[P, num, 3]``."""
  p = jnp.repeat(jnp.asarray(prompts), num, axis=0)
  seq = prompt_tokens(p)
  for k in jax.random.split(key, RESPONSE_LEN):
    logits = apply_fn(params, seq)[:, -1, :NUM_DIGITS]
    seq = jnp.concatenate([seq, jax.random.categorical(k, logits)[:, None]], 1)
  return seq[:, PROMPT_LEN:].reshape(p.shape[0] // num, num, RESPONSE_LEN)


def success_rates(apply_fn, params, prompts=None, *, chunk: int = 32) -> jax.Array:
  """Exact ``p_x`` ``[P]`` (all 1000 responses of each prompt; the 28 plain ones by default),
  ``chunk`` prompts per forward pass."""
  prompts = all_prompts() if prompts is None else prompts
  p = jnp.asarray(prompts, jnp.int32)
  correct = jnp.asarray(correct_mask(prompts))
  resp = jnp.asarray(RESPONSES)

  def one(args):
    prompt, ok = args
    logp = response_logp(apply_fn, params, prompt[None], resp).sum(-1)
    return jnp.sum(jnp.exp(logp) * ok)

  return jax.lax.map(one, (p, correct), batch_size=chunk)


def pass_at_k(p_x, ks) -> dict[int, float]:
  """Exact mean ``pass@k = 1 - (1 - p_x)^k`` over prompts."""
  p = np.asarray(p_x, np.float64)
  return {int(k): float(np.mean(1 - (1 - p) ** k)) for k in ks}
