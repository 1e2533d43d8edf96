r"""Rollout allocation: how many responses each prompt gets, from per-prompt statistics.

Both schemes are Neyman-type allocations (sample where the gradient estimate
is noisiest per unit budget) and pure functions of statistics the trainer
already has.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from gradlab import _checks


def round_preserving_sum(shares, budget: int, *, minimum: int = 0) -> jax.Array:
  """Integer counts ``>= minimum`` summing to ``budget``, proportional to ``shares``
  (largest remainders get the leftover units)."""
  shares = jnp.asarray(shares, jnp.float32)
  n = shares.shape[0]
  if budget < minimum * n:
    raise ValueError(f"budget: {budget} cannot give {n} prompts at least {minimum} each")
  free = budget - minimum * n
  ideal = shares / jnp.sum(shares) * free
  base = jnp.floor(ideal).astype(jnp.int32)
  left = free - jnp.sum(base)
  order = jnp.argsort(-(ideal - base))
  bonus = jnp.zeros(n, jnp.int32).at[order].set((jnp.arange(n) < left).astype(jnp.int32))
  return base + bonus + minimum


def gvm_allocation(
  accept_rates, grad_norms, budget: int, *, alpha: float = 1e-3, beta: float = 2.0, minimum: int = 0
) -> jax.Array:
  r"""GVM-RAFT's variance-minimizing budgets: ``n_x \propto G_x / \sqrt{p_x + \alpha / p_x^{\beta-1}}``.

  ``accept_rates [P]``: each prompt's success rate ``p_x`` from a first,
  uniform round; ``grad_norms [P]``: the mean norm of ``\nabla\log\pi(y|x)``
  over its accepted samples (``G_x``). Normalized to ``budget`` and rounded
  preserving the sum. The ``\alpha`` term starves prompts with ``p_x \to 0``
  (``\beta = 2``: ``\sqrt{p + \alpha/p}``). Yao et al. 2025,
  https://arxiv.org/abs/2505.02391; official code
  ``RLHFlow/GVM: em/stage_2_calc_sample_size.py``.
  """
  p = jnp.asarray(accept_rates, jnp.float32)
  g = jnp.asarray(grad_norms, jnp.float32)
  if p.shape != g.shape or p.ndim != 1:
    raise ValueError(
      f"accept_rates, grad_norms: expected two [num_prompts] arrays, got {p.shape}, {g.shape}"
    )
  _checks.probabilities("accept_rates", p)
  _checks.positive("grad_norms", g, allow_zero=True)
  safe_p = jnp.maximum(p, 1e-12)
  shares = g / jnp.sqrt(safe_p + alpha / safe_p ** (beta - 1))
  shares = jnp.where(p > 0, shares, 0.0)
  shares = jnp.where(jnp.sum(shares) > 0, shares, jnp.ones_like(shares))
  return round_preserving_sum(shares, budget, minimum=minimum)


def reinforce_ada_done(positives, negatives, *, keep: int, mode: str = "balanced") -> jax.Array:
  r"""Reinforce-Ada's exit test per prompt: ``[P]`` bool, True when the prompt needs no more rounds.

  ``"balanced"``: at least ``keep/2`` correct *and* ``keep/2`` wrong responses
  so far; ``"positive"``: at least one correct. Xiong et al. 2025,
  https://arxiv.org/abs/2510.04996 (``_generate_multi_round_adaptive_downsampling``).
  """
  pos, neg = jnp.asarray(positives), jnp.asarray(negatives)
  if mode == "balanced":
    half = keep // 2
    return (pos >= half) & (neg >= keep - half)
  if mode == "positive":
    return pos >= 1
  raise ValueError(f"mode: expected 'balanced' or 'positive', got {mode!r}")


def reinforce_ada_select(rewards, valid, *, keep: int, threshold: float = 0.7) -> jax.Array:
  r"""Which of each prompt's sampled responses to keep: ``[P, R]`` bool, ``keep`` per row.

  Balanced where possible: up to ``keep/2`` correct (``r > threshold``) and the
  rest wrong, topping up from the other class when one runs short; the
  earliest-sampled responses first. ``valid [P, R]`` marks responses actually
  sampled (rows with fewer than ``keep`` keep all of theirs).
  """
  r, v = jnp.asarray(rewards), jnp.asarray(valid, bool)
  if r.shape != v.shape or r.ndim != 2:
    raise ValueError(
      f"rewards, valid: expected two [prompts, responses] arrays, got {r.shape}, {v.shape}"
    )
  pos = (r > threshold) & v
  neg = (~(r > threshold)) & v
  n_pos, n_neg = pos.sum(1), neg.sum(1)
  half = keep // 2
  want_pos = jnp.minimum(n_pos, jnp.maximum(half, keep - n_neg))
  want_neg = jnp.minimum(n_neg, keep - want_pos)
  rank_pos = jnp.cumsum(pos, 1) - 1
  rank_neg = jnp.cumsum(neg, 1) - 1
  return (pos & (rank_pos < want_pos[:, None])) | (neg & (rank_neg < want_neg[:, None]))


def reinforce_ada_sample(
  key,
  sample_rewards,
  num_prompts: int,
  *,
  round_size: int = 8,
  max_rounds: int = 4,
  keep: int = 4,
  mode: str = "balanced",
  threshold: float = 0.7,
):
  """The successive-elimination loop: rounds of ``round_size`` samples for every
  prompt not yet done, at most ``max_rounds``; then :func:`reinforce_ada_select`.

  ``sample_rewards(key, active [P]) -> rewards [P, round_size]`` draws a round
  (the entries of inactive prompts are ignored). Returns ``(rewards [P, R],
  valid [P, R], kept [P, R], samples_used)`` with ``R = round_size * max_rounds``.
  """
  rs, vs = [], []
  active = jnp.ones(num_prompts, bool)
  pos = jnp.zeros(num_prompts, jnp.int32)
  neg = jnp.zeros(num_prompts, jnp.int32)
  used = 0
  for k in jax.random.split(key, max_rounds):
    r = sample_rewards(k, active)
    rs.append(r)
    vs.append(jnp.broadcast_to(active[:, None], r.shape))
    used = used + jnp.sum(active) * round_size
    pos = pos + jnp.sum((r > threshold) & active[:, None], 1)
    neg = neg + jnp.sum((r <= threshold) & active[:, None], 1)
    active = active & ~reinforce_ada_done(pos, neg, keep=keep, mode=mode)
  rewards, valid = jnp.concatenate(rs, 1), jnp.concatenate(vs, 1)
  return rewards, valid, reinforce_ada_select(rewards, valid, keep=keep, threshold=threshold), used


def reinforce_ada_advantages(rewards, valid, *, eps: float = 1e-6) -> jax.Array:
  r"""Reinforce-Ada's advantages with global statistics: ``(r - \mu_x)/(s_x + \epsilon)``, ``[P, R]``.

  ``\mu_x`` and ``s_x`` (Bessel's std) are over *every* response of prompt ``x``
  sampled in the adaptive phase (``valid``), not only the kept ones, as the
  paper's "baselines from global statistics" (its verl fork passes the
  per-prompt positive/negative counts to the GRPO advantage; Bessel's std here
  as :func:`gradlab.policy.grpo_advantages`). 0 where not ``valid``, and for a
  prompt with a single response.
  """
  r, v = jnp.asarray(rewards, jnp.float32), jnp.asarray(valid, bool)
  if r.shape != v.shape or r.ndim != 2:
    raise ValueError(
      f"rewards, valid: expected two [prompts, responses] arrays, got {r.shape}, {v.shape}"
    )
  _checks.positive("eps", eps, allow_zero=True)
  vf = v.astype(jnp.float32)
  n = jnp.sum(vf, 1, keepdims=True)
  mean = jnp.sum(r * vf, 1, keepdims=True) / jnp.maximum(n, 1.0)
  var = jnp.sum(((r - mean) * vf) ** 2, 1, keepdims=True) / jnp.maximum(n - 1, 1.0)
  return jnp.where(v & (n > 1), (r - mean) / (jnp.sqrt(var) + eps), 0.0)
