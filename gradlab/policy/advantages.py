r"""Advantage estimators for group-sampled responses, ``rewards [batch, group]``.

With binary rewards every estimator here of the form ``A_i = h(k)(r_i - \bar r)``
(``k`` successes in the group) has expectation ``c(p, G) \nabla p`` for each
prompt, where ``c(p,G) = E_{k \sim Bin(G,p)}[h(k) k (G-k)] / (G^2 p(1-p))``
(see ``gradlab.policy.exact.group_scale``): RLOO has ``c = 1`` (unbiased), the
group-mean baseline ``(G-1)/G``, GRPO's std normalization a ``p``-dependent
``c`` that up-weights hard and easy prompts ("difficulty bias", Dr. GRPO).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from gradlab import _checks


def reinforce_advantages(
  rewards, *, baseline: str = "batch_loo", constant: float = 0.0, reward_range=None
) -> jax.Array:
  """REINFORCE: ``A_i = r_i - b_i``.

  ``baseline``: ``"none"`` (``b = 0``), ``"constant"`` (``b = constant``), or
  ``"batch_loo"``, the mean reward of the *other* ``N - 1`` responses in the
  whole batch (leave-one-out, so the estimator stays unbiased; a batch mean that
  includes ``r_i`` shrinks it by ``(N-1)/N``). Williams (1992).
  """
  r = _checks.rewards("rewards", rewards, reward_range=reward_range)
  if baseline == "none":
    return r
  if baseline == "constant":
    return r - constant
  if baseline == "batch_loo":
    n = r.size
    if n < 2:
      raise ValueError("rewards: the leave-one-out batch baseline needs at least 2 responses")
    return r - (jnp.sum(r) - r) / (n - 1)
  raise ValueError(f"baseline: expected 'none', 'constant' or 'batch_loo', got {baseline!r}")


def rloo_advantages(rewards, *, reward_range=None) -> jax.Array:
  r"""RLOO (Kool et al. 2019; Ahmadian et al. 2024): ``A_i = r_i - mean_{j \ne i} r_j``
  ``= G/(G-1) (r_i - \bar r)``. Unbiased; needs ``G >= 2``. Code: verl
  ``compute_rloo_outcome_advantage``, TRL ``RLOOTrainer``."""
  r = _checks.rewards("rewards", rewards, reward_range=reward_range, min_group=2)
  g = r.shape[1]
  return r - (jnp.sum(r, axis=1, keepdims=True) - r) / (g - 1)


def dr_grpo_advantages(rewards, *, reward_range=None) -> jax.Array:
  """Dr. GRPO (Liu et al. 2025): ``A_i = r_i - mean_group(r)``, no std division.
  Pair it with ``aggregate(..., mode="constant")``. https://arxiv.org/abs/2503.20783"""
  r = _checks.rewards("rewards", rewards, reward_range=reward_range)
  return r - jnp.mean(r, axis=1, keepdims=True)


def grpo_advantages(rewards, *, eps: float = 1e-6, reward_range=None) -> jax.Array:
  """GRPO (Shao et al. 2024): ``(r_i - mean_group) / (std_group + eps)``, Bessel's std.

  ``eps`` as verl (TRL uses 1e-4, OpenRLHF 1e-9). A group of one response gets
  advantage 0 (verl gives it mean 0 and std 1; ``r - r = 0`` either way).
  https://arxiv.org/abs/2402.03300
  """
  r = _checks.rewards("rewards", rewards, reward_range=reward_range)
  g = r.shape[1]
  centered = r - jnp.mean(r, axis=1, keepdims=True)
  if g == 1:
    return centered
  std = jnp.std(r, axis=1, keepdims=True, ddof=1)
  return centered / (std + eps)


class BNPOParams(NamedTuple):
  alpha: jax.Array
  beta: jax.Array


def bnpo_beta_params(p_hat: jax.Array) -> BNPOParams:
  r"""BNPO's adaptive Beta parameters from the prompts' success rates ``p_hat [batch]``.

  Method of moments on the batch: ``\mu = mean\,\hat p``, ``\sigma^2 = var\,\hat p``
  (unbiased), ``\nu = \mu(1-\mu)/\sigma^2 - 1``, ``a = \nu\mu``, ``b = \nu(1-\mu)``;
  then ``\alpha = \max(1, 1 + a/3)``, ``\beta = \max(1, 1 + b/3)`` (official
  ``compute_bnpo_outcome_advantage``). With a single prompt or zero variance
  across prompts there is nothing to fit and ``\alpha = \beta = 1`` (REINFORCE
  with the group-mean baseline): our choice, the official code divides by zero.
  """
  n = p_hat.shape[0]
  if n < 2:
    one = jnp.ones([], p_hat.dtype)
    return BNPOParams(one, one)
  mu = jnp.mean(p_hat)
  var = jnp.var(p_hat, ddof=1)
  ok = var > 0
  nu = mu * (1 - mu) / jnp.where(ok, var, 1.0) - 1
  alpha = jnp.where(ok, jnp.maximum(1.0, 1.0 + nu * mu / 3.0), 1.0)
  beta = jnp.where(ok, jnp.maximum(1.0, 1.0 + nu * (1 - mu) / 3.0), 1.0)
  return BNPOParams(alpha, beta)


def bnpo_advantages(
  rewards,
  *,
  reward_range=(0.0, 1.0),
  params: BNPOParams | None = None,
  max_inverse_density: float = 1e6,
) -> jax.Array:
  r"""BNPO (Xiao et al. 2025): ``A_i = (r_i - \hat p) / f_{Beta}(\hat p; \alpha, \beta)``.

  Rewards are rescaled to ``[0, 1]`` by the declared ``reward_range`` (the
  official code rescales by the batch's min and max, which equals this for
  binary rewards whenever both values occur); ``\hat p`` is the group mean;
  ``\alpha, \beta`` come from :func:`bnpo_beta_params` unless given; ``1/f`` is
  clamped to ``[0, max_inverse_density]``. ``\alpha = \beta = 1`` recovers the
  group-mean baseline, ``\alpha = \beta = 3/2`` GRPO's ``1/\sqrt{p(1-p)}`` as
  ``G \to \infty``.

  References: https://arxiv.org/abs/2506.02864; official code
  ``changyi7231/BNPO: recipe/bnpo/src/bnpo_ray_trainer.py``.
  """
  r = _checks.rewards("rewards", rewards, reward_range=reward_range)
  lo, hi = reward_range
  r = (r - lo) / (hi - lo)
  p_hat = jnp.mean(r, axis=1)
  if params is None:
    params = bnpo_beta_params(p_hat)
  density = jax.scipy.stats.beta.pdf(p_hat, params.alpha, params.beta)
  inv = jnp.clip(1.0 / density, 0.0, max_inverse_density)
  return (r - p_hat[:, None]) * inv[:, None]


def weighted_reinforce_advantages(
  rewards, *, positive_weight: float = 0.1, negative_weight: float = 1.0
) -> jax.Array:
  r"""W-REINFORCE (Zhu et al. 2025): ``A = \lambda`` for a correct response, ``-1`` for a wrong one.

  Binary rewards in {0, 1}; no group baseline. ``positive_weight=1,
  negative_weight=0`` is PSR (``A = r``), ``positive_weight=0,
  negative_weight=1`` is NSR (``A = r - 1``); the paper recommends
  ``\lambda = 0.1``. https://arxiv.org/abs/2506.01347; official code
  ``TianHongZXY/RLVR-Decomposed: verl/trainer/ppo/core_algos.py``.
  """
  r = _checks.rewards("rewards", rewards, reward_range=(0.0, 1.0))
  return positive_weight * r - negative_weight * (1.0 - r)


def psr_advantages(rewards) -> jax.Array:
  """Positive-sample reinforcement only: ``A = r``."""
  return weighted_reinforce_advantages(rewards, positive_weight=1.0, negative_weight=0.0)


def nsr_advantages(rewards) -> jax.Array:
  """Negative-sample reinforcement only: ``A = r - 1``."""
  return weighted_reinforce_advantages(rewards, positive_weight=0.0, negative_weight=1.0)


class SPOTracker(NamedTuple):
  """SPO's persistent per-prompt Beta tracker (one entry per prompt id)."""

  alpha: jax.Array  # [num_prompts]
  beta: jax.Array


def spo_init(successes, num_samples: int, *, rho_min: float = 0.875) -> SPOTracker:
  r"""Initial tracker from ``successes [num_prompts]`` out of ``num_samples`` offline samples:
  ``\alpha = N_0 (s + 1/2)/(N + 1)``, ``\beta = N_0 (N - s + 1/2)/(N + 1)``, ``N_0 = 1/(1-\rho_{min})``."""
  s = jnp.asarray(successes, jnp.float32)
  n0 = 1.0 / (1.0 - rho_min)
  return SPOTracker(
    n0 * (s + 0.5) / (num_samples + 1), n0 * (num_samples - s + 0.5) / (num_samples + 1)
  )


def spo_advantages(tracker: SPOTracker, prompt_ids, rewards, *, eps: float = 1e-8) -> jax.Array:
  r"""SPO (single-stream policy optimization): ``A = r - \hat p`` with ``\hat p = \alpha/(\alpha+\beta)``
  read *before* the update, then globally normalized over the batch,
  ``(A - mean A)/(std A + eps)`` (Bessel's std). ``rewards [batch, 1]``, one
  response per prompt; ``prompt_ids [batch]``. https://arxiv.org/abs/2509.13232
  (verl ``recipe/spo``)."""
  r = _checks.rewards("rewards", rewards, reward_range=(0.0, 1.0))
  ids = jnp.asarray(prompt_ids)
  if ids.shape != r.shape[:1]:
    raise ValueError(f"prompt_ids: expected shape {r.shape[:1]}, got {ids.shape}")
  p_hat = tracker.alpha[ids] / (tracker.alpha[ids] + tracker.beta[ids])
  a = r - p_hat[:, None]
  if a.size < 2:
    return a
  return (a - jnp.mean(a)) / (jnp.std(a, ddof=1) + eps)


def spo_update(
  tracker: SPOTracker,
  prompt_ids,
  rewards,
  kl=None,
  *,
  rho_min: float = 0.875,
  rho_max: float = 0.96,
  d_half: float = 0.06,
) -> SPOTracker:
  r"""``\alpha \leftarrow \rho\alpha + r``, ``\beta \leftarrow \rho\beta + (1 - r)`` with
  ``\rho = clip(2^{-D/D_{half}}, \rho_{min}, \rho_{max})`` and ``D`` the per-prompt
  policy change ``kl [batch]`` (the masked mean of ``|log pi_old - log pi|``
  on that prompt's last response; 0 gives ``\rho_{max}``)."""
  r = _checks.rewards("rewards", rewards, reward_range=(0.0, 1.0))[:, 0]
  ids = jnp.asarray(prompt_ids)
  d = jnp.zeros_like(r) if kl is None else jnp.asarray(kl, r.dtype)
  rho = jnp.clip(2.0 ** (-d / d_half), rho_min, rho_max)
  alpha = tracker.alpha.at[ids].set(rho * tracker.alpha[ids] + r)
  beta = tracker.beta.at[ids].set(rho * tracker.beta[ids] + (1.0 - r))
  return SPOTracker(alpha, beta)


def spo_sampling_weights(tracker: SPOTracker) -> jax.Array:
  r"""Prioritized prompt sampling: ``w \propto \sqrt{\hat p(1-\hat p)} + 0.05``, normalized."""
  p = tracker.alpha / (tracker.alpha + tracker.beta)
  w = jnp.sqrt(p * (1 - p)) + 0.05
  return w / jnp.sum(w)
