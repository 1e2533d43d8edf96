r"""PACS: RLVR as supervised learning of the reward from the policy's log-ratio.

PACS (Li et al. 2025, "Implicit Actor Critic Coupling via a Supervised
Learning Framework for RLVR", https://arxiv.org/abs/2509.02522; official code
``ritzz-ai/PACS: src/pacs/pacs_core_algos.py``, ``compute_pacs_loss``) treats
the verifiable reward ``r \in \{0, 1\}`` of a response as a label and predicts
it from a score built out of the policy itself,

.. math::  \hat r(y) = \beta \log\frac{\pi_\theta(y)}{\pi_{ref}(y)}, \qquad
           \ell = -w\,[r \log\sigma(\psi) + (1-r)\log(1-\sigma(\psi))],

with the sequence log-ratio (the sum over the response's tokens) and ``\psi``
either ``\hat r`` itself (``baseline="none"``, the official ``"naive"``) or its
RLOO-centred form ``\psi_i = \hat r_i - mean_{j \ne i} \hat r_j`` (``"rloo"``,
the official scripts' choice). In the official code ``\pi_{ref}`` is the
rollout policy ``\pi_{old}`` (``old_log_prob``), so the score starts at 0 on
every batch; the loss is the mean over the ``N = batch * group`` responses.

The gradient is a policy gradient whose critic is implicit (hand-derived,
``d\ell/d\psi = w(\sigma(\psi) - r)``):

.. math::  \nabla_\theta L = -\frac{1}{N}\sum_i A_i \nabla_\theta\log\pi_\theta(y_i), \quad
           A_i = \beta\,u_i \;(\text{none}), \quad
           A_i = \beta\,(u_i - mean_{j\ne i} u_j) \;(\text{rloo}),

with the residual ``u_i = w_i (r_i - \sigma(\psi_i))``: the reward minus the
policy's own prediction of it. ``sigma(psi)`` plays the critic's part, and it
moves with the same parameters as the actor. ``pacs_advantages`` returns those
``A`` (without gradient), so that
``policy_gradient_loss(logp, pacs_advantages(...), mask)`` with the
``"seq_mean_token_sum"`` aggregation has exactly PACS's gradient.

``balance=True`` is the official ``use_weight`` / ``weight_mode="question"``:
in a group with both labels each class gets sklearn's ``"balanced"`` weight
``G / (2 n_c)``; a group with one label keeps weight 1. It needs binary rewards.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from gradlab import _checks
from gradlab.policy.contrastive import _sequence_logp

BASELINES = ("rloo", "none")


def _rloo(x):
  g = x.shape[1]
  return x - (jnp.sum(x, 1, keepdims=True) - x) / (g - 1)


def _labels(rewards, logp):
  r = _checks.rewards("rewards", rewards, reward_range=(0.0, 1.0))
  if jnp.shape(logp)[:2] != r.shape:
    raise ValueError(
      f"logp: expected shape {r.shape} (or [*{r.shape}, time]), got {jnp.shape(logp)}"
    )
  return r


def pacs_weights(rewards) -> jax.Array:
  """The official per-group class-balanced weights ``[batch, group]`` for binary rewards."""
  r = _checks.rewards("rewards", rewards, reward_range=(0.0, 1.0))
  v = _checks.concrete(r)
  if v is not None and not ((v == 0) | (v == 1)).all():
    raise ValueError("rewards: balance=True expects binary rewards in {0, 1}")
  g = r.shape[1]
  pos = jnp.sum(r, 1, keepdims=True)
  mixed = (pos > 0) & (pos < g)
  w = jnp.where(r > 0.5, g / (2 * jnp.maximum(pos, 1)), g / (2 * jnp.maximum(g - pos, 1)))
  return jnp.where(mixed, w, 1.0)


def pacs_scores(logp, ref_logp, *, beta, mask=None, baseline: str = "rloo") -> jax.Array:
  r"""The logits ``\psi [batch, group]``: ``\beta`` times the sequence log-ratio, RLOO-centred
  for ``baseline="rloo"``. ``logp`` carries the gradient; ``ref_logp`` is held fixed."""
  _checks.positive("beta", beta)
  _checks.one_of("baseline", baseline, BASELINES)
  shape = jnp.shape(logp)[:2]
  if baseline == "rloo" and (len(shape) < 2 or shape[1] < 2):
    raise ValueError(f"logp: the 'rloo' baseline needs groups of at least 2, got {jnp.shape(logp)}")
  lp = _sequence_logp("logp", logp, mask, shape)
  lr = jax.lax.stop_gradient(_sequence_logp("ref_logp", ref_logp, mask, shape))
  h = beta * (lp - lr)
  return _rloo(h) if baseline == "rloo" else h


def pacs_loss(
  rewards,
  logp,
  ref_logp,
  *,
  beta: float = 1.0,
  mask=None,
  baseline: str = "rloo",
  balance: bool = False,
) -> jax.Array:
  r"""PACS's loss: the (weighted) binary cross-entropy of ``r`` against ``\sigma(\psi)``, mean over responses.

  Args:
    rewards: ``[batch, group]`` labels in ``[0, 1]`` (binary for ``balance``).
    logp: the policy's sequence log-probabilities ``[batch, group]``, or token
      log-probabilities ``[batch, group, time]`` with ``mask`` (summed here).
    ref_logp: the same for ``\pi_{ref}`` (the official code: the rollout
      policy ``\pi_{old}``); held fixed.
    beta: the score scale ``\beta > 0`` (official scripts: 1 and 2).
    baseline: ``"rloo"`` (official default) or ``"none"``.
    balance: the official per-group class weights (:func:`pacs_weights`).
  """
  r = _labels(rewards, logp)
  psi = pacs_scores(logp, ref_logp, beta=beta, mask=mask, baseline=baseline)
  # BCE with logits, written stably: softplus(psi) - r psi
  bce = jax.nn.softplus(psi) - r * psi
  w = pacs_weights(r) if balance else 1.0
  return jnp.mean(w * bce)


def pacs_advantages(
  rewards,
  logp,
  ref_logp,
  *,
  beta: float = 1.0,
  mask=None,
  baseline: str = "rloo",
  balance: bool = False,
) -> jax.Array:
  r"""The implicit policy-gradient advantages ``A [batch, group]`` of :func:`pacs_loss` (no gradient).

  ``A = \beta u`` (``"none"``) or ``\beta(u_i - mean_{j \ne i} u_j)`` (``"rloo"``) with
  ``u = w (r - \sigma(\psi))``; see the module docstring.
  """
  r = _labels(rewards, logp)
  psi = jax.lax.stop_gradient(pacs_scores(logp, ref_logp, beta=beta, mask=mask, baseline=baseline))
  w = pacs_weights(r) if balance else 1.0
  u = w * (r - jax.nn.sigmoid(psi))
  return beta * (_rloo(u) if baseline == "rloo" else u)
