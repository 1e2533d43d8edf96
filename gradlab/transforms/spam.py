r"""SPAM: spike-aware Adam with momentum reset (Huang et al., ICLR 2025).

Follows the official ``SPAM-Optimizer`` code (``TianjinYellow/SPAM-Optimizer``,
class ``AdamW``), which fixes what the paper's Algorithm 1 leaves open. With
``\tau`` the number of steps taken before this one and ``c = \tau + 1``:

1. **Momentum reset.** If ``c % reset_interval == 0`` both moments are set to
   zero. The bias-correction count is *not* reset (as in the official code).
2. **Spike-aware clipping.** Once ``c >= clip_after`` and, with resets on,
   ``c % reset_interval >= clip_after`` (no clipping right after a reset, when
   ``v`` is still ~0), every entry with ``g^2 > \theta v`` (``v`` the second
   moment *before* this step) becomes ``sign(g) \sqrt{\theta v}``.
3. Adam moments ``m, v`` with PyTorch's step: ``m / (\sqrt v + \epsilon)``
   times ``\sqrt{1 - \beta_2^c} / (1 - \beta_1^c)``.
4. **Warmup after each reset.** The step is multiplied by ``1 - d(s)``, where
   ``s`` counts steps since the last reset (``s = warmup_steps + 1 + \tau``
   before the first one) and ``d(s) = 0.99 (1 + \cos(\pi s / (W + 1))) / 2``
   for ``s < W`` (``W = warmup_steps``), else 0: torch's
   ``CosineAnnealingLR(T_max=W + 1)`` evaluated in closed form.

Weight decay: the official code applies ``p -= lr * wd * p`` *after* the
update; :func:`spam` uses ``optax.add_decayed_weights`` (decay on the pre-step
parameters), which differs by a term of order ``lr^2 wd``.

Non-finite gradients: see :mod:`gradlab.transforms._common` (the step is
skipped; the state, step count included, is left as it was).

References:
  Huang, Zhu, Jin, Liu, Wang, Liu. SPAM: Spike-Aware Adam with Momentum Reset
  for Stable LLM Training. ICLR 2025. https://arxiv.org/abs/2501.06842
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from gradlab.transforms import _common


class ScaleBySpamState(NamedTuple):
  count: jax.Array  # steps taken (int32)
  mu: optax.Updates
  nu: optax.Updates


def spam_warmup_factor(count, *, warmup_steps: int, reset_interval: int):
  """``1 - d(s)``, the step's warmup multiplier, for the step after ``count`` steps."""
  tau = jnp.asarray(count)
  if reset_interval > 0:
    since_reset = jnp.where(tau + 1 >= reset_interval, (tau + 1) % reset_interval,
                            warmup_steps + 1 + tau)
  else:
    since_reset = warmup_steps + 1 + tau
  s = since_reset.astype(jnp.result_type(float))
  decay = 0.99 * (1.0 + jnp.cos(jnp.pi * s / (warmup_steps + 1))) / 2.0
  return 1.0 - jnp.where(since_reset >= warmup_steps, 0.0, decay)


def scale_by_spam(b1: float = 0.9, b2: float = 0.999, eps: float = 1e-6, *,
                  threshold: float = 5000.0, reset_interval: int = 500,
                  warmup_steps: int = 150, clip_after: int = 20) -> optax.GradientTransformation:
  """SPAM's direction (no learning rate). Defaults are the official code's.

  Args:
    b1, b2, eps: Adam's moment decays and the denominator's epsilon.
    threshold: ``theta``; an entry is a spike when ``g^2 > theta * v``.
      0 turns spike clipping off.
    reset_interval: ``Delta T``, steps between momentum resets; 0 turns resets
      (and the warmup after them) off.
    warmup_steps: length of the cosine warmup after each reset.
    clip_after: no spike clipping during the first ``clip_after`` steps (and
      the first ``clip_after`` steps after each reset).
  """
  _common.check_unit_interval("b1", b1)
  _common.check_unit_interval("b2", b2)
  _common.check_positive("eps", eps, allow_zero=True)
  _common.check_positive("threshold", threshold, allow_zero=True)
  _common.check_int("reset_interval", reset_interval)
  _common.check_int("warmup_steps", warmup_steps)
  _common.check_int("clip_after", clip_after)

  def init_fn(params):
    return ScaleBySpamState(count=jnp.zeros([], jnp.int32),
                            mu=optax.tree.zeros_like(params), nu=optax.tree.zeros_like(params))

  def update_fn(updates, state, params=None):
    del params
    c = state.count + 1
    if reset_interval > 0:
      reset = c % reset_interval == 0
      mu = jax.tree.map(lambda m: jnp.where(reset, jnp.zeros_like(m), m), state.mu)
      nu = jax.tree.map(lambda v: jnp.where(reset, jnp.zeros_like(v), v), state.nu)
    else:
      mu, nu = state.mu, state.nu
    if threshold != 0:
      active = c >= clip_after
      if reset_interval > 0:
        active = active & (c % reset_interval >= clip_after)

      def clip(g, v):
        spike = active & (g * g > threshold * v)
        return jnp.where(spike, jnp.sign(g) * jnp.sqrt(v * threshold), g)
      updates = jax.tree.map(clip, updates, nu)
    mu = jax.tree.map(lambda m, g: b1 * m + (1 - b1) * g, mu, updates)
    nu = jax.tree.map(lambda v, g: b2 * v + (1 - b2) * g * g, nu, updates)
    direction = _common.torch_adam_direction(mu, nu, c, b1, b2, eps)
    factor = spam_warmup_factor(state.count, warmup_steps=warmup_steps,
                                reset_interval=reset_interval)
    out = jax.tree.map(lambda d: (d * factor.astype(d.dtype)), direction)
    return out, ScaleBySpamState(count=optax.safe_increment(state.count), mu=mu, nu=nu)

  return optax.GradientTransformation(init_fn, _common.skip_nonfinite(update_fn))


def spam(learning_rate: optax.ScalarOrSchedule, b1: float = 0.9, b2: float = 0.999,
         eps: float = 1e-6, weight_decay: float = 0.0, **kwargs) -> optax.GradientTransformation:
  """SPAM as an optimizer: ``scale_by_spam`` + decoupled weight decay + learning rate.

  ``kwargs`` go to :func:`scale_by_spam` (``threshold``, ``reset_interval``,
  ``warmup_steps``, ``clip_after``).
  """
  return _common.guarded_chain(scale_by_spam(b1, b2, eps, **kwargs),
                     optax.add_decayed_weights(weight_decay),
                     optax.scale_by_learning_rate(learning_rate))
