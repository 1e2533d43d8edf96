r"""GSPO: the PPO clip on a length-normalized *sequence* importance ratio.

Zheng et al. 2025, "Group Sequence Policy Optimization",
https://arxiv.org/abs/2507.18071. With ``|y_i|`` response ``i``'s token count,

``s_i = (\pi_\theta(y_i)/\pi_{old}(y_i))^{1/|y_i|}
= \exp(\frac{1}{|y_i|}\sum_t \log\frac{\pi_\theta(y_{i,t})}{\pi_{old}(y_{i,t})})``

and the per-token loss
``\ell_{i,t} = \max(-A_{i,t}s_i, -A_{i,t}\,clip(s_i, 1-\epsilon_l, 1+\epsilon_h))``.
GSPO-token replaces ``s_i`` by ``s_{i,t} = sg(s_i)\,\pi_\theta(y_{i,t})/sg(\pi_\theta(y_{i,t}))``:
the same value, and the gradient ``s_i\nabla\log\pi(y_{i,t})`` per token.

Hand-derived gradients (``N = batch \cdot group``, the paper's aggregation
``seq_mean_token_mean``, advantages per response): GSPO's loss is
``(1/N)\sum_i \ell_i``, so ``\partial/\partial\log\pi_{i,t} = -A_i s_i/(N|y_i|)``
for an unclipped response (0 when ``A_i > 0, s_i > 1+\epsilon_h`` or
``A_i < 0, s_i < 1-\epsilon_l``). At ``\pi_\theta = \pi_{old}`` (``s = 1``) this
is the sequence-mean policy gradient ``-(1/N)\sum_i A_i \frac{1}{|y_i|}\sum_t\nabla\log\pi_{i,t}``.
GSPO-token's per-token gradient is ``-A_{i,t}s_i/(N|y_i|)``: equal to GSPO's
whenever the advantages are constant over each response.

Code: verl ``verl/trainer/ppo/core_algos.py`` ``compute_policy_loss_gspo``
(always the token form, ``log s_{i,t}`` clamped above at 10, aggregation forced
to ``seq-mean-token-mean``; its GSPO run scripts use ``\epsilon_l = 3\cdot10^{-4}``,
``\epsilon_h = 4\cdot10^{-4}``, the paper's); TRL ``GRPOTrainer`` with
``importance_sampling_level="sequence"`` (the sequence form, no clamp).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from gradlab import _checks
from gradlab.policy.objectives import AGGREGATIONS, aggregate


def sequence_log_ratio(logp, old_logp, mask) -> jax.Array:
  r"""``\log s_i = \frac{1}{|y_i|}\sum_t m_t(\log\pi_\theta - \log\pi_{old})``, ``[batch, group]``
  (0 for an empty response)."""
  m = _checks.token_mask("mask", mask, ("logp", logp), ("old_logp", old_logp))
  log_ratio = (jnp.asarray(logp) - jnp.asarray(old_logp)) * m
  return jnp.sum(log_ratio, -1) / jnp.maximum(jnp.sum(m, -1), 1.0)


def gspo_loss(
  logp,
  old_logp,
  advantages,
  mask,
  *,
  eps_low: float = 3e-4,
  eps_high: float | None = 4e-4,
  token_level: bool = False,
  aggregation: str = "seq_mean_token_mean",
  constant: float | None = None,
  log_ratio_clamp: float | None = 10.0,
) -> jax.Array:
  r"""GSPO's clipped sequence-ratio surrogate (``token_level=True``: GSPO-token).

  ``advantages`` per response ``[batch, group]`` or per token (GSPO-token's
  use). ``eps_high`` defaults to ``eps_low`` when ``None``; the defaults are
  the paper's. ``log_ratio_clamp`` caps ``\log s`` from above, as verl (beyond
  it the ratio has no gradient); ``None`` turns it off.
  """
  _checks.one_of("aggregation", aggregation, AGGREGATIONS)
  m = _checks.token_mask("mask", mask, ("logp", logp), ("old_logp", old_logp))
  a = _checks.advantages("advantages", advantages, m)
  _checks.unit_interval("eps_low", eps_low)
  eps_high = eps_low if eps_high is None else eps_high
  _checks.positive("eps_high", eps_high, allow_zero=True)
  if log_ratio_clamp is not None:
    _checks.positive("log_ratio_clamp", log_ratio_clamp)
  log_s = sequence_log_ratio(logp, old_logp, m)[..., None]
  if token_level:
    logp = jnp.asarray(logp)
    log_s = jax.lax.stop_gradient(log_s) + logp - jax.lax.stop_gradient(logp)
  if log_ratio_clamp is not None:
    log_s = jnp.minimum(log_s, log_ratio_clamp)
  s = jnp.broadcast_to(jnp.exp(log_s), m.shape)
  token_loss = jnp.maximum(-a * s, -a * jnp.clip(s, 1 - eps_low, 1 + eps_high))
  return aggregate(token_loss, m, mode=aggregation, constant=constant)
