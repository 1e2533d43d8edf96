r"""CoPG: contrastive policy gradient, off-policy and KL-regularized.

Contrastive Policy Gradient (Flet-Berliac et al. 2024, https://arxiv.org/abs/2406.19185)
scores every response ``y`` by its *regularized* reward

.. math::  R_\beta^\pi(y) = r(y) - \beta \log\frac{\pi(y)}{\pi_{ref}(y)}

and, for ``k`` responses of a prompt drawn from *any* distribution (off-policy,
no importance weights), minimizes

.. math::  \ell = \frac{1}{2\beta}\,\frac{1}{k-1}\sum_{i<j}\big(R_\beta^\pi(y_i) - R_\beta^\pi(y_j)\big)^2 .

Its gradient is ``-\sum_i A_i \nabla\log\pi(y_i)`` with
``A_i = R_\beta^\pi(y_i) - \frac{1}{k-1}\sum_{j\ne i} R_\beta^\pi(y_j)``: a policy
gradient on the regularized reward with the other responses' mean as the
baseline (RLOO when on-policy), which pushes up the better of two responses
and down the worse. Every pair's loss is zero exactly when
``R_\beta^\pi`` is constant, i.e. at ``\pi^* \propto \pi_{ref} \exp(r/\beta)``,
the optimum of ``E_\pi[r] - \beta KL(\pi \| \pi_{ref})``, whatever distribution
the responses came from (as long as it covers the responses ``\pi^*`` puts
mass on). The ``1/(2\beta)`` scale is ours, so that the gradient is exactly
the policy-gradient form above.

``logp`` and ``ref_logp`` are *sequence* log-probabilities ``[batch, group]``
(the sum of the response's token log-probabilities), or token log-probabilities
``[batch, group, time]`` with a ``mask``, summed here.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from gradlab import _checks


def _sequence_logp(name, logp, mask, shape):
  x = jnp.asarray(logp)
  if x.ndim == 3:
    if mask is None:
      raise ValueError(f"{name}: token log-probabilities [batch, group, time] need a mask")
    m = _checks.token_mask("mask", mask, (name, x))
    x = jnp.sum(x * m, -1)
  if x.shape != shape:
    raise ValueError(f"{name}: expected shape {shape} (or [*{shape}, time]), got {x.shape}")
  return x


def regularized_rewards(rewards, logp, ref_logp, *, beta, mask=None) -> jax.Array:
  r"""``R_\beta^\pi(y) = r - \beta(\log\pi(y) - \log\pi_{ref}(y))``, ``[batch, group]``."""
  r = _checks.rewards("rewards", rewards)
  _checks.positive("beta", beta, allow_zero=True)
  lp = _sequence_logp("logp", logp, mask, r.shape)
  lr = _sequence_logp("ref_logp", ref_logp, mask, r.shape)
  return r - beta * (lp - lr)


def copg_advantages(rewards, logp, ref_logp, *, beta, mask=None) -> jax.Array:
  r"""CoPG's advantages ``A_i = R_i - mean_{j \ne i} R_j`` of the regularized reward, ``[batch, group]``.

  ``logp`` enters through ``stop_gradient``: pair them with
  ``policy_gradient_loss`` (sequence-summed) for CoPG's gradient. ``beta = 0``
  gives RLOO. Needs ``group >= 2``.
  """
  r = _checks.rewards("rewards", rewards, min_group=2)
  big_r = jax.lax.stop_gradient(regularized_rewards(r, logp, ref_logp, beta=beta, mask=mask))
  g = r.shape[1]
  return big_r - (jnp.sum(big_r, 1, keepdims=True) - big_r) / (g - 1)


def copg_loss(rewards, logp, ref_logp, *, beta, mask=None) -> jax.Array:
  r"""CoPG's loss, ``(1/2\beta)(1/(k-1)) \sum_{i<j} (R_i - R_j)^2`` averaged over prompts.

  Differentiate it with respect to the policy parameters through ``logp``
  (``ref_logp`` is treated as fixed). ``beta > 0`` (the KL weight); ``group >= 2``.
  """
  r = _checks.rewards("rewards", rewards, min_group=2)
  _checks.positive("beta", beta)
  big_r = regularized_rewards(r, logp, jax.lax.stop_gradient(ref_logp), beta=beta, mask=mask)
  g = r.shape[1]
  # sum_{i<j} (R_i - R_j)^2 = g * sum_i (R_i - mean R)^2
  centred = big_r - jnp.mean(big_r, 1, keepdims=True)
  pairs = g * jnp.sum(centred**2, 1)
  return jnp.mean(pairs / (g - 1)) / (2 * beta)


def regularized_optimum(ref_logits, rewards, *, beta) -> jax.Array:
  r"""``\pi^* \propto \pi_{ref}\exp(r/\beta)`` over a finite set: ``[..., n]`` probabilities.

  The optimum of ``E_\pi[r] - \beta KL(\pi \| \pi_{ref})`` (and of CoPG) for a
  policy over ``n`` responses with reference logits ``ref_logits [..., n]``.
  """
  _checks.positive("beta", beta)
  return jax.nn.softmax(jnp.asarray(ref_logits) + jnp.asarray(rewards) / beta, -1)
