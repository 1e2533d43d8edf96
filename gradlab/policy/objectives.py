r"""Token-level policy-gradient objectives over ``[batch, group, time]`` log-probabilities.

Every loss returns a scalar to *minimize* built from the per-token loss
``\ell_{i,t}`` and an explicit aggregation (:func:`aggregate`):

==========================  ================================================
``"token_mean"``            ``\sum m\ell / \sum m`` over the batch (DAPO; verl's default)
``"seq_mean_token_mean"``   ``(1/N)\sum_i (\sum_t m\ell)/|y_i|`` (original GRPO)
``"seq_mean_token_sum"``    ``(1/N)\sum_i \sum_t m\ell`` (the unbiased sequence
                            sum; BNPO's runs)
``"constant"``              ``\sum m\ell / (N \cdot L)`` with a fixed ``L``
                            (Dr. GRPO; ``L`` defaults to the time axis)
==========================  ================================================

``N = batch * group`` responses. ``logp`` is the current policy's token
log-probability (differentiated), ``old_logp`` the policy that sampled
(``\pi_{old}``), ``rollout_logp`` the inference engine's (``\mu``) when it
differs from the trainer's.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from gradlab import _checks

AGGREGATIONS = ("token_mean", "seq_mean_token_mean", "seq_mean_token_sum", "constant")


def aggregate(token_loss, mask, *, mode: str, constant: float | None = None) -> jax.Array:
  """Reduces a per-token loss ``[batch, group, time]`` to a scalar; see the module table."""
  m = _checks.token_mask("mask", mask, ("token_loss", token_loss))
  lm = token_loss * m
  n = m.shape[0] * m.shape[1]
  if mode == "token_mean":
    return jnp.sum(lm) / jnp.maximum(jnp.sum(m), 1.0)
  if mode == "seq_mean_token_mean":
    return jnp.sum(jnp.sum(lm, -1) / jnp.maximum(jnp.sum(m, -1), 1.0)) / n
  if mode == "seq_mean_token_sum":
    return jnp.sum(lm) / n
  if mode == "constant":
    length = m.shape[-1] if constant is None else constant
    if length <= 0:
      raise ValueError(f"constant: expected a length > 0, got {length}")
    return jnp.sum(lm) / (n * length)
  raise ValueError(f"mode: expected one of {AGGREGATIONS}, got {mode!r}")


def truncated_is_weights(
  old_logp, rollout_logp, mask, *, cap: float = 2.0, level: str = "token", mode: str = "truncate"
) -> jax.Array:
  r"""Importance weights for a training/inference mismatch, ``w = \pi_{old}/\mu``, without gradient.

  ``level="token"``: ``w_t = \pi_{old}(y_t)/\mu(y_t)`` per token;
  ``"sequence"``: the product over the response's tokens, broadcast to its
  tokens. ``mode="truncate"``: ``\min(w, C)`` (TIS); ``"mask"``: ``w`` where
  ``w \le C`` else 0 (MIS). Default ``C = 2`` as verl. Token-level correction
  is biased (``O(T^2 \Delta)``, verl's rollout-correction notes), sequence-level
  unbiased but of higher variance. Qwen's "Stabilizing RL with LLMs" (Zheng et
  al. 2025, https://arxiv.org/abs/2512.01374) derives the token-level surrogate
  this corrects.
  """
  m = _checks.token_mask("mask", mask, ("old_logp", old_logp), ("rollout_logp", rollout_logp))
  if cap <= 0:
    raise ValueError(f"cap: expected a number > 0, got {cap}")
  log_w = (jnp.asarray(old_logp) - jnp.asarray(rollout_logp)) * m
  if level == "sequence":
    log_w = jnp.broadcast_to(jnp.sum(log_w, -1, keepdims=True), m.shape)
  elif level != "token":
    raise ValueError(f"level: expected 'token' or 'sequence', got {level!r}")
  w = jnp.exp(log_w)
  if mode == "truncate":
    w = jnp.minimum(w, cap)
  elif mode == "mask":
    w = jnp.where(w <= cap, w, 0.0)
  else:
    raise ValueError(f"mode: expected 'truncate' or 'mask', got {mode!r}")
  return jax.lax.stop_gradient(w * m)


def policy_gradient_loss(
  logp,
  advantages,
  mask,
  *,
  aggregation: str = "seq_mean_token_sum",
  behaviour_logp=None,
  is_cap: float | None = None,
  constant: float | None = None,
) -> jax.Array:
  r"""The token-level surrogate ``-\sum_t w_t A \rho_t`` whose gradient is ``-w_t A \nabla\log\pi``.

  On-policy (``behaviour_logp=None``) this is REINFORCE: ``\ell_t = -A\log\pi_t``.
  With the sampler's ``behaviour_logp`` it is Qwen's token-level IS surrogate
  ``J = E_{y\sim\mu}[\sum_t \frac{\pi_\theta(y_t)}{\mu(y_t)} A]`` (Zheng et al.
  2025, eq. for ``J_{token}``), the ratio truncated at ``is_cap`` when given
  (value and gradient use ``\min(\rho_t, C)``: the gradient
  ``-\min(\rho_t, C) A \nabla\log\pi_t``).
  """
  m = _checks.token_mask("mask", mask, ("logp", logp), ("behaviour_logp", behaviour_logp))
  a = _checks.advantages("advantages", advantages, m)
  logp = jnp.asarray(logp)
  if behaviour_logp is None:
    token_loss = -a * logp
  else:
    ratio = jnp.exp(logp - jnp.asarray(behaviour_logp))
    weight = 1.0 if is_cap is None else jax.lax.stop_gradient(jnp.minimum(ratio, is_cap) / ratio)
    token_loss = -a * weight * ratio
  return aggregate(token_loss, m, mode=aggregation, constant=constant)


def _ratio(logp, old_logp, log_ratio_clamp):
  log_ratio = jnp.asarray(logp) - jnp.asarray(old_logp)
  if log_ratio_clamp is not None:
    log_ratio = jnp.clip(log_ratio, -log_ratio_clamp, log_ratio_clamp)
  return jnp.exp(log_ratio)


def _clipped_surrogate(
  logp,
  old_logp,
  advantages,
  mask,
  *,
  eps_low,
  eps_high,
  dual_clip,
  aggregation,
  is_weights,
  constant,
  log_ratio_clamp,
  keep_clipped_gradient: bool,
) -> jax.Array:
  """PPO's clipped per-token loss, aggregated; GPPO when ``keep_clipped_gradient``."""
  m = _checks.token_mask(
    "mask", mask, ("logp", logp), ("old_logp", old_logp), ("is_weights", is_weights)
  )
  a = _checks.advantages("advantages", advantages, m)
  _checks.unit_interval("eps_low", eps_low)
  eps_high = eps_low if eps_high is None else eps_high
  _checks.positive("eps_high", eps_high, allow_zero=True)
  ratio = _ratio(logp, old_logp, log_ratio_clamp)
  # GPPO's bounds (1 -+ eps) rho / sg(rho) equal PPO's in value but carry rho's gradient.
  unit = ratio / jax.lax.stop_gradient(ratio) if keep_clipped_gradient else 1.0
  clipped = jnp.clip(ratio, (1 - eps_low) * unit, (1 + eps_high) * unit)
  token_loss = jnp.maximum(-a * ratio, -a * clipped)
  if dual_clip is not None:
    if dual_clip <= 1:
      raise ValueError(f"dual_clip: expected a number > 1, got {dual_clip}")
    token_loss = jnp.where(a < 0, jnp.minimum(token_loss, -a * dual_clip), token_loss)
  if is_weights is not None:
    token_loss = token_loss * jax.lax.stop_gradient(jnp.asarray(is_weights))
  return aggregate(token_loss, m, mode=aggregation, constant=constant)


def ppo_clip_loss(
  logp,
  old_logp,
  advantages,
  mask,
  *,
  eps_low: float = 0.2,
  eps_high: float | None = None,
  dual_clip: float | None = None,
  aggregation: str = "token_mean",
  is_weights=None,
  constant: float | None = None,
  log_ratio_clamp: float | None = 20.0,
) -> jax.Array:
  r"""PPO's clipped surrogate, with clip-higher and dual clip.

  ``\ell = \max(-A\rho, -A\,clip(\rho, 1-\epsilon_l, 1+\epsilon_h))`` and, when
  ``dual_clip = c`` is set, ``\min(\ell, -A c)`` for ``A < 0`` (Ye et al. 2020).
  ``eps_high`` defaults to ``eps_low``; DAPO recommends 0.28 ("clip-higher").
  ``is_weights`` (from :func:`truncated_is_weights`) multiply the per-token loss
  to correct ``\pi_{old}`` vs the rollout engine. The log-ratio is clamped to
  ``\pm 20`` as in verl. Schulman et al. 2017, https://arxiv.org/abs/1707.06347;
  DAPO https://arxiv.org/abs/2503.14476.
  """
  return _clipped_surrogate(
    logp,
    old_logp,
    advantages,
    mask,
    eps_low=eps_low,
    eps_high=eps_high,
    dual_clip=dual_clip,
    aggregation=aggregation,
    is_weights=is_weights,
    constant=constant,
    log_ratio_clamp=log_ratio_clamp,
    keep_clipped_gradient=False,
  )


def gppo_loss(
  logp,
  old_logp,
  advantages,
  mask,
  *,
  eps_low: float = 0.2,
  eps_high: float | None = None,
  dual_clip: float | None = None,
  aggregation: str = "token_mean",
  is_weights=None,
  constant: float | None = None,
) -> jax.Array:
  r"""GPPO (Klear-Reasoner, Su et al. 2025): PPO whose clipped tokens keep a gradient.

  The clip bounds become ``(1-\epsilon_l)\rho/sg(\rho)`` and
  ``(1+\epsilon_h)\rho/sg(\rho)``, equal to PPO's in value; so the loss value
  is clip-higher PPO's, and the per-token gradient of the loss is
  ``-A\rho\nabla\log\pi`` inside the trust region,
  ``-A(1+\epsilon_h)\nabla\log\pi`` for ``A>0, \rho>1+\epsilon_h`` and
  ``-A(1-\epsilon_l)\nabla\log\pi`` for ``A<0, \rho<1-\epsilon_l``, where PPO's
  is 0. The dual-clip branch still has no gradient, and the log-ratio is not
  clamped (as the official ``compute_gppo_loss``).
  https://arxiv.org/abs/2508.07629; official code
  ``suu990901/KlearReasoner: verl/trainer/ppo/core_algos.py``.
  """
  return _clipped_surrogate(
    logp,
    old_logp,
    advantages,
    mask,
    eps_low=eps_low,
    eps_high=eps_high,
    dual_clip=dual_clip,
    aggregation=aggregation,
    is_weights=is_weights,
    constant=constant,
    log_ratio_clamp=None,
    keep_clipped_gradient=True,
  )
