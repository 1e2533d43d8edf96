r"""What enters the loss: reward shaping, response and group filters, token selection.

The pieces large RL trainers (verl, TRL, OpenRLHF) put around a policy loss,
each a pure function with static shapes (a filter returns a mask, never a
smaller array, so a step compiles once):

* DAPO (Yu et al. 2025, https://arxiv.org/abs/2503.14476; official code verl
  ``recipe/dapo`` and ``verl/workers/reward_manager/dapo.py``):
  :func:`overlong_penalty` (soft overlong punishment), :func:`mask_truncated`
  (overlong filtering), :func:`dynamic_sampling` (drop groups whose rewards are
  all equal). Clip-higher is ``ppo_clip_loss(..., eps_high=0.28)``; DAPO's
  aggregation is ``"token_mean"``.
* Batch-level reward scaling: :func:`batch_std_advantages` (group mean, batch
  std) and :func:`reinforce_pp_advantages` (REINFORCE++'s token whitening).
* High-entropy token selection (Wang et al. 2025, "Beyond the 80/20 Rule",
  https://arxiv.org/abs/2506.01939): :func:`token_entropy`,
  :func:`high_entropy_mask`.

With ``token_mean`` a loss over a filtered mask equals the loss over the
physically smaller batch; the ``seq_mean_*`` modes still count filtered
responses in ``N`` (as TRL; verl's ``agg_loss`` leaves empty responses out of
its sequence count), so select with ``dynamic_sampling(...).index`` to keep a
full batch of valid groups, as DAPO does.

Trainers' aggregations in ``aggregate``'s names (nothing is missing; verl's
``seq-mean-token-sum-norm`` is ``N`` times ``"constant"``, a fixed rescale):

====================================================  ===========================
verl ``loss_agg_mode`` / TRL ``loss_type``            ``aggregate(mode=...)``
====================================================  ===========================
``token-mean`` / ``bnpo``, ``dapo``, ``cispo``         ``"token_mean"``
``seq-mean-token-mean`` / ``grpo``                     ``"seq_mean_token_mean"``
``seq-mean-token-sum``                                 ``"seq_mean_token_sum"``
``seq-mean-token-sum-norm`` / ``dr_grpo``              ``"constant"`` (verl's: times ``N``)
====================================================  ===========================
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from gradlab import _checks


def overlong_penalty(
  lengths, *, max_length: int, cache_length: int, penalty_factor: float = 1.0
) -> jax.Array:
  r"""DAPO's soft overlong punishment, a reward to add: ``0`` up to ``L_{max} - L_{cache}`` tokens,
  then ``-(|y| - (L_{max} - L_{cache}))/L_{cache}`` times ``penalty_factor``, down to
  ``-penalty_factor`` at ``L_{max}`` and beyond (DAPO eq. 13).

  ``lengths`` are the responses' token counts (e.g. ``mask.sum(-1)``, any
  shape). verl's reward manager computes
  ``min(-(L - (max_resp_len - overlong_buffer.len))/overlong_buffer.len * penalty_factor, 0)``,
  the same for every length it can produce (``\le L_{max}``); the DAPO recipe
  uses ``L_{max} = 20480``, ``L_{cache} = 4096``, factor 1.
  """
  max_length = _checks.integer("max_length", max_length, minimum=1)
  cache_length = _checks.integer("cache_length", cache_length, minimum=1)
  if cache_length > max_length:
    raise ValueError(f"cache_length: expected at most max_length={max_length}, got {cache_length}")
  _checks.positive("penalty_factor", penalty_factor, allow_zero=True)
  length = jnp.asarray(lengths, jnp.float32)
  exceed = length - (max_length - cache_length)
  penalty = jnp.minimum(-exceed / cache_length * penalty_factor, 0.0)
  return jnp.maximum(penalty, -penalty_factor)


def mask_truncated(mask, truncated) -> jax.Array:
  """DAPO's overlong filtering: ``mask`` with the ``truncated [batch, group]`` responses zeroed.

  A response is truncated when it reached the length limit without an end
  token (TRL's ``mask_truncated_completions``); when responses are padded to
  the limit ``T``, ``mask.sum(-1) >= T`` without an EOS is that test.
  """
  m = _checks.token_mask("mask", mask)
  t = jnp.asarray(truncated)
  if t.shape != m.shape[:2]:
    raise ValueError(f"truncated: expected shape {m.shape[:2]}, got {t.shape}")
  return m * (1.0 - t.astype(jnp.float32))[..., None]


class DynamicSample(NamedTuple):
  keep: jax.Array  # [batch] bool: the group's rewards are not all equal
  index: jax.Array  # [size] int32: kept groups first, in batch order, then the others
  valid: jax.Array  # [size] bool: index[j] is a kept group


def dynamic_sampling(rewards, *, size: int | None = None) -> DynamicSample:
  r"""DAPO's dynamic sampling: keep the groups whose rewards are not all equal.

  ``keep`` marks them (a group of one response is always kept, as verl);
  ``index`` selects ``size`` groups (default: all), the kept ones first in
  batch order, so ``rewards[index]`` with ``valid`` is the recipe's batch:
  oversample, filter, take the first ``train_batch_size`` kept prompts. Zero
  ``valid`` entries mean too few kept groups (verl samples another batch).
  Official rule: ``np.std(group) > 0 or len(group) == 1`` in
  ``recipe/dapo/dapo_ray_trainer.py``; here "not all equal" (``max > min``),
  which is the same but for round-off in ``np.std`` of equal non-binary values.
  """
  r = _checks.rewards("rewards", rewards)
  n = r.shape[0]
  size = n if size is None else _checks.integer("size", size, minimum=1)
  if size > n:
    raise ValueError(f"size: expected at most the batch {n}, got {size}")
  keep = jnp.max(r, 1) > jnp.min(r, 1) if r.shape[1] > 1 else jnp.ones((n,), bool)
  order = jnp.argsort(jnp.where(keep, 0, 1), stable=True)[:size].astype(jnp.int32)
  return DynamicSample(keep, order, keep[order])


def batch_std_advantages(rewards, *, eps: float = 1e-4, reward_range=None) -> jax.Array:
  r"""Group-mean baseline, *batch* std: ``A_i = (r_i - mean_{group}\,r)/(std_{batch}(r) + eps)``.

  One scale for the whole batch, so the prompts keep Dr. GRPO's relative
  weights (``dr_grpo_advantages / (std + eps)``, no per-prompt difficulty
  reweighting) while the advantage's size stays normalized. Bessel's std over
  all ``batch * group`` rewards. Lite PPO (Liu et al. 2025, "Part I: Tricks or
  Traps? A Deep Dive into RL for LLM Reasoning", https://arxiv.org/abs/2508.08221);
  code TRL ``GRPOTrainer(scale_rewards="batch")`` (``eps = 1e-4``).
  """
  r = _checks.rewards("rewards", rewards, reward_range=reward_range)
  _checks.positive("eps", eps, allow_zero=True)
  centered = r - jnp.mean(r, axis=1, keepdims=True)
  std = jnp.std(r, ddof=1) if r.size > 1 else jnp.zeros([], r.dtype)
  return centered / (std + eps)


def reinforce_pp_advantages(rewards, mask, *, baseline: str = "group", eps: float = 1e-8):
  r"""REINFORCE++: outcome rewards whitened over the batch's tokens, ``[batch, group, time]``.

  ``x_i = r_i - mean_{group}\,r`` (``baseline="group"``, REINFORCE++-baseline;
  a group of one keeps ``r_i``, as verl) or ``x_i = r_i`` (``"none"``,
  REINFORCE++ with ``\gamma = 1`` and no KL in the reward), broadcast to the
  response's tokens, then ``(x - \mu)/\sqrt{\sigma^2 + eps}`` with the masked
  token mean ``\mu`` and Bessel variance ``\sigma^2`` (so long responses weigh
  more); zero off the mask. Needs two or more tokens in the batch. Hu et al.
  2025, https://arxiv.org/abs/2501.03262; verl
  ``compute_reinforce_plus_plus_baseline_outcome_advantage`` and
  ``verl_F.masked_whiten``.
  """
  r = _checks.rewards("rewards", rewards)
  m = _checks.token_mask("mask", mask)
  if m.shape[:2] != r.shape:
    raise ValueError(f"mask: expected shape {r.shape} + (time,), got {m.shape}")
  _checks.one_of("baseline", baseline, ("group", "none"))
  _checks.positive("eps", eps, allow_zero=True)
  x = r - jnp.mean(r, axis=1, keepdims=True) if baseline == "group" and r.shape[1] > 1 else r
  x = jnp.broadcast_to(x[..., None], m.shape)
  n = jnp.sum(m)
  mean = jnp.sum(x * m) / n
  var = jnp.sum(jnp.square(x - mean) * m) / (n - 1)
  return (x - mean) * jax.lax.rsqrt(var + eps) * m


def token_entropy(logits, *, temperature: float = 1.0) -> jax.Array:
  r"""``H_t = -\sum_v p_v\log p_v``, ``p = softmax(logits / temperature)`` on the last axis."""
  z = _checks.logits("logits", logits)
  _checks.positive("temperature", temperature)
  z = z / temperature
  return jax.nn.logsumexp(z, -1) - jnp.sum(jax.nn.softmax(z, -1) * z, -1)


def high_entropy_mask(
  entropy, mask, *, top_fraction: float = 0.2, method: str = "top_k"
) -> jax.Array:
  r"""Keeps the gradient on the batch's top-``\rho`` fraction of tokens by entropy: a 0/1 mask.

  Multiply it into the loss mask (the official code aggregates over
  ``response_mask * entropy_top_mask``). ``method="top_k"`` (the paper's code,
  ``get_global_entropy_top_mask`` in ``Shenzhi-Wang/Beyond-the-80-20-Rule-RLVR:
  verl/trainer/ppo/core_algos.py``): the ``k = \max(1, \lceil\rho n\rceil)``
  highest of the ``n`` valid tokens (ties by position); ``"quantile"`` (TRL's
  ``top_entropy_quantile``): every valid token with entropy at or above the
  ``1-\rho`` quantile (linear interpolation, so ties may add tokens). The paper
  uses ``\rho = 0.2``. No gradient flows through the mask.
  """
  m = _checks.token_mask("mask", mask, ("entropy", entropy))
  _checks.unit_interval("top_fraction", top_fraction, closed=True)
  h = jax.lax.stop_gradient(jnp.asarray(entropy, jnp.float32))
  valid = m > 0
  if method == "top_k":
    n = jnp.sum(m)
    # int(n * rho + 0.9999), the official code's ceiling
    k = jnp.maximum(1.0, jnp.floor(n * top_fraction + 0.9999))
    flat = jnp.where(valid, h, -jnp.inf).reshape(-1)
    order = jnp.argsort(-flat, stable=True)
    rank = jnp.zeros(flat.shape, jnp.int32).at[order].set(jnp.arange(flat.size, dtype=jnp.int32))
    keep = (rank.reshape(m.shape) < k) & valid
  elif method == "quantile":
    threshold = jnp.nanquantile(jnp.where(valid, h, jnp.nan), 1.0 - top_fraction)
    keep = (h >= threshold) & valid
  else:
    raise ValueError(f"method: expected 'top_k' or 'quantile', got {method!r}")
  return keep.astype(jnp.float32)
