r"""CISPO: REINFORCE weighted by a clipped, stop-gradient importance weight, on every token.

MiniMax-M1 (MiniMax 2025, https://arxiv.org/abs/2506.13585, eq. for
``J_{CISPO}``): with ``\rho_t = \pi_\theta(y_t)/\pi_{old}(y_t)``,

``\ell_t = -sg(clip(\rho_t, 1-\epsilon_l, 1+\epsilon_h))\,A_t\log\pi_\theta(y_t)``,

aggregated over all tokens (``token_mean``, the paper's ``1/\sum_i|y_i|``).
Unlike PPO's clip no token loses its gradient: the weight is clipped, not the
objective. The per-token gradient is
``-clip(\rho_t, 1-\epsilon_l, 1+\epsilon_h)A_t\nabla\log\pi_t``;
with no lower bound (the paper's choice: a large ``\epsilon_l``) it is
``-\min(\rho_t, 1+\epsilon_h)A_t\nabla\log\pi_t``, the truncated-IS REINFORCE
gradient of ``policy_gradient_loss(..., behaviour_logp=old_logp, is_cap=1+\epsilon_h)``.

Code: verl ``verl/trainer/ppo/core_algos.py`` ``compute_policy_loss_cispo``
(log-ratio clamped to ``\pm 20``; ``examples/cispo_trainer`` sets
``clip_ratio_low=10``, i.e. no lower bound, and ``clip_ratio_high=0.2``, our
defaults); TRL ``GRPOTrainer(loss_type="cispo")`` caps ``\rho`` at
``epsilon_high`` itself (ScaleRL's ``\epsilon_{max}``, 5.0 there), i.e. our
``eps_high = epsilon_high - 1``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from gradlab import _checks
from gradlab.policy.objectives import AGGREGATIONS, _ratio, aggregate


def cispo_loss(
  logp,
  old_logp,
  advantages,
  mask,
  *,
  eps_low: float | None = None,
  eps_high: float = 0.2,
  aggregation: str = "token_mean",
  constant: float | None = None,
  log_ratio_clamp: float | None = 20.0,
) -> jax.Array:
  r"""CISPO's loss ``-sg(clip(\rho, 1-\epsilon_l, 1+\epsilon_h)) A \log\pi``, aggregated.

  ``eps_low=None`` leaves the weight unbounded below (the paper's and verl's
  example setting); ``eps_low`` in ``[0, 1)`` bounds it at ``1 - eps_low``.
  """
  _checks.one_of("aggregation", aggregation, AGGREGATIONS)
  m = _checks.token_mask("mask", mask, ("logp", logp), ("old_logp", old_logp))
  a = _checks.advantages("advantages", advantages, m)
  if eps_low is not None:
    _checks.unit_interval("eps_low", eps_low)
  _checks.positive("eps_high", eps_high, allow_zero=True)
  if log_ratio_clamp is not None:
    _checks.positive("log_ratio_clamp", log_ratio_clamp)
  ratio = _ratio(logp, old_logp, log_ratio_clamp)
  lower = None if eps_low is None else 1 - eps_low
  weight = jax.lax.stop_gradient(jnp.clip(ratio, lower, 1 + eps_high))
  token_loss = -weight * a * jnp.asarray(logp)
  return aggregate(token_loss, m, mode=aggregation, constant=constant)
