r"""Variance-aware prompt selection: which prompts to roll out next.

A group estimator's gradient for a prompt vanishes when all its responses get
the same reward, which happens with probability ``p^G + (1-p)^G``; both schemes
here steer the batch towards prompts whose reward variance ``p(1-p)`` is high.

* **VAS** (MMR1, Leng et al. 2025, https://arxiv.org/abs/2509.21268; official
  code ``LengSicong/MMR1: verl/curriculum``): every ``T_update`` steps each
  prompt gets ``n`` fresh rollouts, its *variance promotion score*
  ``VPS = w_o OVS + w_t TDS`` (outcome variance ``\hat p(1-\hat p)``, the
  official "learnability", and a trajectory-diversity score such as distinct-3),
  min-max normalized over the dataset and optionally averaged with the previous
  scores by ``momentum``; each batch then mixes ``mixture_ratio`` prompts drawn
  with replacement in proportion to the scores with uniformly drawn ones
  (``MixedCurriculumSampler``). The official recipe uses learnability alone,
  ratio 0.5, momentum 0, 8 rollouts, updates every 4 steps.
* **VADE** (Hu et al. 2025, https://arxiv.org/abs/2511.18902): a Beta posterior
  over every prompt's success rate, updated from the rollouts the training
  step makes anyway (no extra rollouts); Thompson sampling ``\tilde p \sim
  Beta(\alpha, \beta)`` and the batch is the prompts with the largest
  information-gain score ``\tilde p(1-\tilde p)``; old evidence decays towards
  the prior on two time scales, a global one every step (the policy moves for
  all prompts) and a stronger one applied to a prompt's old counts when it is
  seen again. No code was published; the decay's form and constants here are
  ours (stated in :func:`vade_update`), the conjugate update is the paper's.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from gradlab import _checks


def outcome_variance(rewards) -> jax.Array:
  r"""MMR1's outcome variance score ``\hat p(1-\hat p)`` per prompt from binary ``rewards [P, n]``."""
  r = _checks.rewards("rewards", rewards, reward_range=(0.0, 1.0))
  p = jnp.mean(r, 1)
  return p * (1 - p)


def distinct_n(tokens, n: int = 3, *, mask=None) -> jax.Array:
  """Trajectory diversity: distinct n-grams / all n-grams over a prompt's responses.

  ``tokens [P, R, T]`` integer responses (``R`` per prompt); ``mask [P, R, T]``
  marks real tokens (an n-gram counts only when all its tokens are real).
  Returns ``[P]`` in ``(0, 1]`` (0 when a prompt has no n-gram), MMR1's
  ``calculate_distinct_n`` over each prompt's group.
  """
  t = jnp.asarray(tokens)
  if t.ndim != 3 or not jnp.issubdtype(t.dtype, jnp.integer):
    raise ValueError(f"tokens: expected integer tokens [prompts, responses, time], got {t.shape}")
  n = _checks.integer("n", n, minimum=1)
  if n > t.shape[2]:
    raise ValueError(f"n: expected at most the response length {t.shape[2]}, got {n}")
  m = jnp.ones(t.shape, bool) if mask is None else jnp.asarray(mask, bool)
  if m.shape != t.shape:
    raise ValueError(f"mask: expected the shape of tokens {t.shape}, got {m.shape}")
  span = t.shape[2] - n + 1
  grams = jnp.stack([t[..., i : i + span] for i in range(n)], -1)  # [P, R, span, n]
  ok = jnp.all(jnp.stack([m[..., i : i + span] for i in range(n)], -1), -1)
  grams = grams.reshape(t.shape[0], -1, n)
  ok = ok.reshape(t.shape[0], -1)

  def one(g, valid):
    # invalid n-grams are sorted last and never counted
    keys = jnp.where(valid[:, None], g, jnp.iinfo(g.dtype).max)
    order = jnp.lexsort(tuple(keys[:, j] for j in reversed(range(n))))
    s, v = keys[order], valid[order]
    new = jnp.concatenate([jnp.ones(1, bool), jnp.any(s[1:] != s[:-1], -1)])
    total = jnp.sum(valid)
    return jnp.where(total > 0, jnp.sum(new & v) / jnp.maximum(total, 1), 0.0)

  return jax.vmap(one)(grams, ok)


def vas_scores(
  rewards, diversity=None, *, weights=(1.0, 0.0), previous=None, momentum: float = 0.0
) -> jax.Array:
  r"""MMR1's variance promotion scores ``[P]`` in ``[0, 1]``.

  ``VPS = w_o \hat p(1-\hat p) + w_t\,diversity`` from ``rewards [P, n]`` (binary) and
  ``diversity [P]`` (e.g. :func:`distinct_n`; required when ``w_t != 0``),
  min-max normalized (``(s - min)/(max - min + 1e-8)``), then
  ``momentum * previous + (1 - momentum) * new`` when ``previous`` is given.
  """
  wo, wt = weights
  s = wo * outcome_variance(rewards)
  if wt != 0:
    if diversity is None:
      raise ValueError("diversity: required when the trajectory weight (weights[1]) is not 0")
    d = jnp.asarray(diversity)
    if d.shape != s.shape:
      raise ValueError(f"diversity: expected shape {s.shape}, got {d.shape}")
    s = s + wt * d
  s = (s - jnp.min(s)) / (jnp.max(s) - jnp.min(s) + 1e-8)
  if previous is None:
    return s
  _checks.unit_interval("momentum", momentum, closed=True)
  prev = jnp.asarray(previous)
  if prev.shape != s.shape:
    raise ValueError(f"previous: expected shape {s.shape}, got {prev.shape}")
  return momentum * prev + (1 - momentum) * s


def vas_sample(key, scores, batch_size: int, *, mixture_ratio: float = 0.5) -> jax.Array:
  """A batch of prompt indices ``[batch_size]``: ``int(batch_size * mixture_ratio)``
  drawn with replacement in proportion to ``scores``, the rest uniformly without
  replacement (MMR1's ``MixedCurriculumSampler``). All-zero scores fall back to uniform."""
  _checks.is_key("key", key)
  s = jnp.asarray(scores, jnp.float32)
  if s.ndim != 1 or s.shape[0] == 0:
    raise ValueError(f"scores: expected [num_prompts] with at least one prompt, got {s.shape}")
  batch_size = _checks.integer("batch_size", batch_size, minimum=1)
  _checks.unit_interval("mixture_ratio", mixture_ratio, closed=True)
  _checks.positive("scores", s, allow_zero=True)
  n_weighted = int(batch_size * mixture_ratio)
  n_uniform = batch_size - n_weighted
  if n_uniform > s.shape[0]:
    raise ValueError(
      f"batch_size: {n_uniform} uniform draws without replacement exceed the "
      f"{s.shape[0]} prompts; lower batch_size or raise mixture_ratio"
    )
  kw, ku = jax.random.split(key)
  p = jnp.where(jnp.sum(s) > 0, s / jnp.maximum(jnp.sum(s), 1e-30), 1.0 / s.shape[0])
  weighted = jax.random.choice(kw, s.shape[0], (n_weighted,), replace=True, p=p)
  uniform = jax.random.choice(ku, s.shape[0], (n_uniform,), replace=False)
  return jnp.concatenate([weighted, uniform])


class VADEState(NamedTuple):
  """Per-prompt Beta posteriors over the success rate, and the prior they decay to."""

  alpha: jax.Array  # [num_prompts]
  beta: jax.Array
  prior_alpha: jax.Array  # []
  prior_beta: jax.Array


def vade_init(num_prompts: int, *, prior=(1.0, 1.0)) -> VADEState:
  """Every prompt at the prior ``Beta(prior)`` (uniform by default)."""
  num_prompts = _checks.integer("num_prompts", num_prompts, minimum=1)
  a0, b0 = prior
  _checks.positive("prior", jnp.asarray([a0, b0]))
  a0, b0 = jnp.float32(a0), jnp.float32(b0)
  return VADEState(jnp.full(num_prompts, a0), jnp.full(num_prompts, b0), a0, b0)


def vade_update(
  state: VADEState,
  prompt_ids,
  successes,
  trials,
  *,
  global_decay: float = 1.0,
  revisit_decay: float = 1.0,
) -> VADEState:
  r"""The posterior after a step's rollouts: ``successes`` out of ``trials`` for ``prompt_ids [B]``.

  First every prompt's evidence decays towards the prior,
  ``\alpha \leftarrow \alpha_0 + \gamma_g(\alpha - \alpha_0)`` (the slow, global
  scale); then each visited prompt's old evidence decays by ``\gamma_r`` (the
  fast scale: its last estimate was made under an older policy) and the new
  counts are added, ``\alpha \leftarrow \alpha_0 + \gamma_r(\alpha - \alpha_0) + s``,
  ``\beta \leftarrow \beta_0 + \gamma_r(\beta - \beta_0) + (n - s)``. With both
  decays 1 this is the conjugate Beta-Binomial update,
  ``Beta(\alpha_0 + \sum s, \beta_0 + \sum (n - s))``. ``prompt_ids`` must not repeat.
  """
  ids = jnp.asarray(prompt_ids)
  s = jnp.asarray(successes, jnp.float32)
  n = jnp.asarray(trials, jnp.float32) * jnp.ones_like(s)
  if ids.ndim != 1 or s.shape != ids.shape:
    raise ValueError(
      f"prompt_ids, successes: expected two [batch] arrays, got {ids.shape}, {s.shape}"
    )
  _checks.unit_interval("global_decay", global_decay, closed=True)
  _checks.unit_interval("revisit_decay", revisit_decay, closed=True)
  _checks.positive("trials", n)
  sv, nv = _checks.concrete(s), _checks.concrete(n)
  if sv is not None and nv is not None and ((sv < 0).any() or (sv > nv).any()):
    raise ValueError("successes: expected counts in [0, trials]")
  a0, b0 = state.prior_alpha, state.prior_beta
  alpha = a0 + global_decay * (state.alpha - a0)
  beta = b0 + global_decay * (state.beta - b0)
  alpha = alpha.at[ids].set(a0 + revisit_decay * (alpha[ids] - a0) + s)
  beta = beta.at[ids].set(b0 + revisit_decay * (beta[ids] - b0) + (n - s))
  return VADEState(alpha, beta, a0, b0)


def vade_select(key, state: VADEState, batch_size: int) -> tuple[jax.Array, jax.Array]:
  r"""Thompson-sampled selection: ``\tilde p \sim Beta(\alpha, \beta)`` per prompt, the
  ``batch_size`` prompts with the largest ``\tilde p(1-\tilde p)``.
  Returns ``(indices [batch_size], scores [num_prompts])``."""
  _checks.is_key("key", key)
  batch_size = _checks.integer("batch_size", batch_size, minimum=1)
  if batch_size > state.alpha.shape[0]:
    raise ValueError(
      f"batch_size: expected at most the {state.alpha.shape[0]} prompts, got {batch_size}"
    )
  p = jax.random.beta(key, state.alpha, state.beta)
  score = p * (1 - p)
  return jax.lax.top_k(score, batch_size)[1], score
