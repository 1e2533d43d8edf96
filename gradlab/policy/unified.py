r"""The unified policy gradient estimator (UPGE): SFT, PPO, GRPO and online DPO as one formula.

Lv et al. 2025, "Towards a Unified View of Large Language Model Post-Training"
(https://arxiv.org/abs/2509.04419; code ``TsinghuaC3I/Unify-Post-Training``,
whose README states the estimator; its table of instances is a figure, so the
instances below are derived here and each is tested against the loss it
claims to be) write the gradient of every post-training objective as

.. math::  grad_{uni} = \mathbb{1}_{stable}\,\frac{1}{\pi_{ref}}\,\hat A\,\nabla\pi_\theta
           = \mathbb{1}_{stable}\,\frac{\pi_\theta}{\pi_{ref}}\,\hat A\,\nabla\log\pi_\theta

per token, with four interchangeable parts: the **stabilization mask**
``1_stable`` (which tokens keep a gradient, e.g. PPO's clip), the
**reference-policy denominator** ``\pi_{ref}`` (the current policy for SFT,
the rollout policy ``\pi_{old}`` for PPO/GRPO), the **advantage estimate**
``\hat A`` and the **likelihood gradient** ``\nabla\pi_\theta``. A
:class:`UPGEParts` holds the first three, and :func:`upge_loss` is the
surrogate ``-sg(1_stable \hat A)\exp(\log\pi_\theta - sg(\log\pi_{ref}))``,
aggregated like every loss of ``gradlab.policy.objectives``, whose gradient is
exactly the formula above.

==============  =====================  ====================  ==================================
instance        stabilization mask     denominator           advantage
==============  =====================  ====================  ==================================
``upge_sft``    1                      ``\pi_\theta`` (sg)   1 on each demonstration token
``upge_ppo``    PPO's clip region      ``\pi_{old}``         given (GAE, ...)
``upge_grpo``   PPO's clip region      ``\pi_{old}``         ``grpo_advantages(rewards)``
``upge_dpo``    1                      ``\pi_\theta`` (sg)   ``\pm\beta\sigma(-\beta\Delta)``
==============  =====================  ====================  ==================================

``\Delta = [\log\pi(y_w) - \log\pi_{ref}(y_w)] - [\log\pi(y_l) - \log\pi_{ref}(y_l)]``
for online DPO's chosen (``y_w``, group index 0) and rejected (``y_l``,
index 1) responses: its loss ``-\log\sigma(\beta\Delta)`` has gradient
``-\beta\sigma(-\beta\Delta)(\nabla\log\pi(y_w) - \nabla\log\pi(y_l))``
(here DPO's KL anchor ``\pi_{ref}`` enters the advantage, not the
denominator).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from gradlab import _checks
from gradlab.policy.advantages import grpo_advantages
from gradlab.policy.objectives import aggregate


class UPGEParts(NamedTuple):
  """Three of UPGE's four parts, per token ``[batch, group, time]`` (no gradient flows through them)."""

  stable: jax.Array  # 0/1 stabilization mask
  ref_logp: jax.Array  # log pi_ref, the denominator
  advantages: jax.Array  # A-hat, broadcast over time


def upge_loss(
  logp, parts: UPGEParts, mask, *, aggregation: str = "token_mean", constant: float | None = None
) -> jax.Array:
  r"""The surrogate whose gradient is UPGE's ``-1_{stable}(\pi_\theta/\pi_{ref})\hat A\nabla\log\pi_\theta``.

  ``logp [batch, group, time]`` carries the gradient; ``aggregation`` and
  ``constant`` as :func:`gradlab.policy.aggregate`. The value is
  ``-\sum 1_{stable}\hat A\rho`` (aggregated), not any instance's loss value.
  """
  m = _checks.token_mask(
    "mask", mask, ("logp", logp), ("stable", parts.stable), ("ref_logp", parts.ref_logp)
  )
  a = _checks.advantages("advantages", parts.advantages, m)
  weight = jax.lax.stop_gradient(jnp.asarray(parts.stable) * a)
  ratio = jnp.exp(jnp.asarray(logp) - jax.lax.stop_gradient(jnp.asarray(parts.ref_logp)))
  return aggregate(-weight * ratio, m, mode=aggregation, constant=constant)


def ppo_stable_mask(
  logp,
  old_logp,
  advantages,
  mask,
  *,
  eps_low: float = 0.2,
  eps_high: float | None = None,
  dual_clip: float | None = None,
  log_ratio_clamp: float | None = 20.0,
) -> jax.Array:
  r"""PPO's stabilization mask: 1 where ``ppo_clip_loss`` has a gradient, else 0 (``[batch, group, time]``).

  0 where ``A > 0`` and ``\rho > 1+\epsilon_h``, where ``A < 0`` and
  ``\rho < 1-\epsilon_l``, where ``A < 0`` and ``\rho > c`` (dual clip), and
  where ``|\log\rho|`` exceeds ``log_ratio_clamp``, as
  :func:`gradlab.policy.ppo_clip_loss`.
  """
  m = _checks.token_mask("mask", mask, ("logp", logp), ("old_logp", old_logp))
  a = jnp.broadcast_to(_checks.advantages("advantages", advantages, m), m.shape)
  _checks.unit_interval("eps_low", eps_low)
  eps_high = eps_low if eps_high is None else eps_high
  _checks.positive("eps_high", eps_high, allow_zero=True)
  log_ratio = jax.lax.stop_gradient(jnp.asarray(logp) - jnp.asarray(old_logp))
  ratio = jnp.exp(log_ratio)
  clipped = ((a > 0) & (ratio > 1 + eps_high)) | ((a < 0) & (ratio < 1 - eps_low))
  if dual_clip is not None:
    if dual_clip <= 1:
      raise ValueError(f"dual_clip: expected a number > 1, got {dual_clip}")
    clipped = clipped | ((a < 0) & (ratio > dual_clip))
  if log_ratio_clamp is not None:
    clipped = clipped | (jnp.abs(log_ratio) > log_ratio_clamp)
  return jnp.where(clipped, 0.0, 1.0) * m


def upge_sft(logp, mask) -> UPGEParts:
  r"""SFT on demonstrations: mask 1, denominator ``\pi_\theta`` itself, ``\hat A = 1``.

  The gradient is ``\nabla\log\pi_\theta`` per token, the negative
  log-likelihood's (``aggregate(-logp, mask, ...)``).
  """
  m = _checks.token_mask("mask", mask, ("logp", logp))
  return UPGEParts(m, jax.lax.stop_gradient(jnp.asarray(logp)), jnp.ones_like(m))


def upge_ppo(
  logp,
  old_logp,
  advantages,
  mask,
  *,
  eps_low: float = 0.2,
  eps_high: float | None = None,
  dual_clip: float | None = None,
  log_ratio_clamp: float | None = 20.0,
) -> UPGEParts:
  """PPO: :func:`ppo_stable_mask`, denominator ``pi_old``, the given advantages."""
  m = _checks.token_mask("mask", mask, ("logp", logp), ("old_logp", old_logp))
  a = jnp.broadcast_to(_checks.advantages("advantages", advantages, m), m.shape)
  stable = ppo_stable_mask(
    logp,
    old_logp,
    advantages,
    m,
    eps_low=eps_low,
    eps_high=eps_high,
    dual_clip=dual_clip,
    log_ratio_clamp=log_ratio_clamp,
  )
  return UPGEParts(stable, jnp.asarray(old_logp), a)


def upge_grpo(
  logp,
  old_logp,
  rewards,
  mask,
  *,
  eps: float = 1e-6,
  eps_low: float = 0.2,
  eps_high: float | None = None,
  dual_clip: float | None = None,
  log_ratio_clamp: float | None = 20.0,
) -> UPGEParts:
  """GRPO: PPO's mask and denominator with ``grpo_advantages(rewards, eps=eps)``."""
  return upge_ppo(
    logp,
    old_logp,
    grpo_advantages(rewards, eps=eps),
    mask,
    eps_low=eps_low,
    eps_high=eps_high,
    dual_clip=dual_clip,
    log_ratio_clamp=log_ratio_clamp,
  )


def upge_dpo(logp, ref_logp, mask, *, beta: float = 0.1) -> UPGEParts:
  r"""Online DPO on pairs ``[batch, 2, time]`` (index 0 chosen, 1 rejected): mask 1,
  denominator ``\pi_\theta``, ``\hat A = (+1, -1)\,\beta\sigma(-\beta\Delta)``."""
  m = _checks.token_mask("mask", mask, ("logp", logp), ("ref_logp", ref_logp))
  if m.shape[1] != 2:
    raise ValueError(f"mask: expected pairs [batch, 2, time] (chosen, rejected), got {m.shape}")
  _checks.positive("beta", beta)
  lp = jax.lax.stop_gradient(jnp.asarray(logp))
  h = jnp.sum((lp - jnp.asarray(ref_logp)) * m, -1)  # [batch, 2]
  weight = beta * jax.nn.sigmoid(-beta * (h[:, 0] - h[:, 1]))
  a = jnp.stack([weight, -weight], 1)
  return UPGEParts(m, lp, jnp.broadcast_to(a[..., None], m.shape))
