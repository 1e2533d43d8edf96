r"""CurES: prompt sampling and rollout allocation from the policy gradient's variance.

Zeng et al. 2025, "CurES: From Gradient Analysis to Efficient Curriculum
Learning for Reasoning LLMs" (https://arxiv.org/abs/2510.01037; official code
``ZexuSun/CurES``: ``epic/stage_0_init_difficulty_sample_size.py`` and
``epic/epic_sampler.py``). Each prompt ``x`` has a success rate ``p_x``,
tracked as the mean of a Beta posterior (uniform prior) over the rollouts seen:
``\hat p_x = (s_x + 1)/(n_x + 2)`` (:func:`cures_accuracy`).

**Prompt sampling.** Prompts are drawn with probabilities
``q_x \propto \exp(\sqrt{\hat p_x(1-\hat p_x)}/\tau_x)``, favouring prompts of
medium difficulty (:func:`cures_sampling_probs`). The official sampler uses
``\tau_x = (s_x + 1)/0.01``, the default here.

**Rollout allocation.** One rollout's contribution to prompt ``x``'s gradient
is ``(r - p_x)\nabla\log\pi(y|x)``, with variance

.. math::  \sigma_x^2 = p q^2\,E[|g|^2 \mid c] + p^2 q\,E[|g|^2 \mid w]
           - p^2 q^2\,|E[g \mid c] - E[g \mid w]|^2

(``q = 1-p``; ``c``/``w``: correct/wrong; the last term is ``|\nabla p_x|^2``,
since ``E[g] = 0`` gives ``\nabla p = pq(E[g|c] - E[g|w])``;
:func:`cures_variance`). The official code feeds it the norms of the
per-response gradients, ``E[|g|^2|c] \approx mean |g_c|^2`` and
``|E[g|c] - E[g|w]|^2 \approx (mean|g_c| - mean|g_w|)^2``. With ``n_x``
rollouts the batch gradient ``(1/P)\sum_x \bar g_x`` has variance
``(1/P^2)\sum_x \sigma_x^2/n_x``; :func:`cures_allocation` minimizes
``\sum_x \sigma_x^2/n_x`` over integers ``n_x \ge`` ``minimum`` summing to the
budget. The continuous optimum is ``n_x \propto \sigma_x`` (Neyman; the
official code rounds ``budget \cdot \sigma_x/\sum\sigma``, which need not sum to
the budget: ``rounding="proportional"`` rounds preserving the sum); the default
``rounding="exact"`` finds the integer optimum by greedy marginal allocation,
exact for a separable convex objective (each next rollout goes where it cuts
``\sigma_x^2/n - \sigma_x^2/(n+1)`` most).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from gradlab import _checks
from gradlab.policy.allocation import round_preserving_sum


def cures_accuracy(successes, trials) -> jax.Array:
  r"""The posterior-mean success rate ``(s + 1)/(n + 2)`` (Beta(1, 1) prior), ``[P]``."""
  s, n = jnp.asarray(successes, jnp.float32), jnp.asarray(trials, jnp.float32)
  if s.shape != n.shape:
    raise ValueError(f"successes, trials: expected equal shapes, got {s.shape}, {n.shape}")
  _checks.positive("successes", s, allow_zero=True)
  sv, nv = _checks.concrete(s), _checks.concrete(n)
  if sv is not None and nv is not None and (nv < sv).any():
    raise ValueError("trials: expected trials >= successes for every prompt")
  return (s + 1.0) / (n + 2.0)


def cures_sampling_probs(successes, trials, *, temperature=None) -> jax.Array:
  r"""CurES's prompt distribution ``q \propto \exp(\sqrt{\hat p(1-\hat p)}/\tau)``, ``[P]``.

  ``temperature``: a scalar or ``[P]`` array ``> 0``; ``None`` is the official
  code's ``\tau_x = (s_x + 1)/0.01`` (which keeps ``q`` close to uniform).
  """
  p = cures_accuracy(successes, trials)
  if temperature is None:
    tau = (jnp.asarray(successes, jnp.float32) + 1.0) / 1e-2
  else:
    _checks.positive("temperature", temperature)
    tau = jnp.asarray(temperature, jnp.float32)
  return jax.nn.softmax(jnp.sqrt(p * (1 - p)) / tau)


def cures_variance(accept_rates, sq_norm_correct, sq_norm_wrong, mean_gap_sq) -> jax.Array:
  r"""``\sigma_x^2`` of one rollout's gradient ``(r - p)\nabla\log\pi`` (module docstring), ``[P]``.

  ``sq_norm_correct``/``sq_norm_wrong``: ``E[|\nabla\log\pi|^2]`` over correct /
  wrong responses; ``mean_gap_sq``: ``|E[g|c] - E[g|w]|^2``. The result is
  clipped at 0 (the official code's norm proxy can make it negative).
  """
  p = jnp.asarray(accept_rates, jnp.float32)
  arrays = [jnp.asarray(x, jnp.float32) for x in (sq_norm_correct, sq_norm_wrong, mean_gap_sq)]
  for name, x in zip(("sq_norm_correct", "sq_norm_wrong", "mean_gap_sq"), arrays):
    if x.shape != p.shape:
      raise ValueError(f"{name}: expected the shape of accept_rates {p.shape}, got {x.shape}")
    _checks.positive(name, x, allow_zero=True)
  _checks.probabilities("accept_rates", p)
  ec, ew, gap = arrays
  q = 1 - p
  return jnp.maximum(p * q**2 * ec + p**2 * q * ew - p**2 * q**2 * gap, 0.0)


def cures_allocation(
  variances, budget: int, *, minimum: int = 1, rounding: str = "exact"
) -> jax.Array:
  r"""Rollouts per prompt ``[P]`` (int32, ``>= minimum``, summing to ``budget``) minimizing ``\sum_x \sigma_x^2/n_x``.

  ``variances [P]``: ``\sigma_x^2`` (:func:`cures_variance`). ``rounding="exact"``:
  the integer optimum (greedy marginal allocation; ties go to the lower
  index); ``"proportional"``: ``n_x \propto \sigma_x`` rounded preserving the sum.
  """
  v = jnp.asarray(variances, jnp.float32)
  if v.ndim != 1:
    raise ValueError(f"variances: expected shape [num_prompts], got {v.shape}")
  _checks.positive("variances", v, allow_zero=True)
  budget = _checks.integer("budget", budget, minimum=0)
  minimum = _checks.integer("minimum", minimum, minimum=1)
  n = v.shape[0]
  if budget < minimum * n:
    raise ValueError(f"budget: {budget} cannot give {n} prompts at least {minimum} each")
  if rounding == "proportional":
    sigma = jnp.sqrt(v)
    shares = jnp.where(jnp.sum(sigma) > 0, sigma, jnp.ones_like(sigma))
    return round_preserving_sum(shares, budget, minimum=minimum)
  if rounding != "exact":
    raise ValueError(f"rounding: expected 'exact' or 'proportional', got {rounding!r}")

  def add_one(_, counts):
    c = counts.astype(jnp.float32)
    gain = v / (c * (c + 1))  # sigma^2/n - sigma^2/(n + 1)
    return counts.at[jnp.argmax(gain)].add(1)

  start = jnp.full(n, minimum, jnp.int32)
  return jax.lax.fori_loop(0, budget - minimum * n, add_one, start)
