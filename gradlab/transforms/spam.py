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

Non-finite gradients: see :mod:`gradlab.transforms.nonfinite` (the step is
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
from jax.typing import ArrayLike

from gradlab import _checks
from gradlab.transforms import nonfinite, torch_adam


class ScaleBySpamState(NamedTuple):
  count: jax.Array  # steps taken (int32)
  mu: optax.Updates
  nu: optax.Updates


def spam_warmup_factor(count, *, warmup_steps: ArrayLike, reset_interval: ArrayLike):
  """``1 - d(s)``, the step's warmup multiplier, for the step after ``count`` steps."""
  tau = jnp.asarray(count)
  resets = jnp.asarray(reset_interval) > 0
  interval = jnp.maximum(jnp.asarray(reset_interval), 1)
  since_reset = jnp.where(
    resets & (tau + 1 >= interval), (tau + 1) % interval, warmup_steps + 1 + tau
  )
  s = since_reset.astype(jnp.result_type(float))
  decay = 0.99 * (1.0 + jnp.cos(jnp.pi * s / (warmup_steps + 1))) / 2.0
  return 1.0 - jnp.where(since_reset >= warmup_steps, 0.0, decay)


def _check_spam(b1, b2, eps, threshold, reset_interval, warmup_steps, clip_after):
  torch_adam.check_adam(b1, b2, eps)
  _checks.positive("threshold", threshold, allow_zero=True)
  _checks.count("reset_interval", reset_interval)
  _checks.count("warmup_steps", warmup_steps)
  _checks.count("clip_after", clip_after)


def _spam_direction(b1, b2, eps, threshold, reset_interval, warmup_steps, clip_after):
  """SPAM's raw ``(init_fn, update_fn)``, without the non-finite guard.

  Every hyperparameter may be a traced array (``optax.inject_hyperparams``):
  resets and clipping are switched off by value (``reset_interval = 0``,
  ``threshold = 0``) with ``jnp.where``, not by Python branches.
  """

  def init_fn(params):
    return ScaleBySpamState(
      count=jnp.zeros([], jnp.int32),
      mu=optax.tree.zeros_like(params),
      nu=optax.tree.zeros_like(params),
    )

  def update_fn(updates, state, params=None, *, ok=None):
    """``ok`` (a scalar bool, the gradient's finiteness) folds the non-finite
    policy into each pass: where it is False the moments, the count and the
    (zero) update are selected elementwise, inside the same fused loops, with no
    ``lax.cond`` and no copy of the state (see ``nonfinite.inline_guarded_chain``)."""
    del params
    keep_all = jnp.asarray(True) if ok is None else ok
    c = optax.safe_increment(state.count)
    resets = jnp.asarray(reset_interval) > 0
    interval = jnp.maximum(jnp.asarray(reset_interval), 1)
    keep = ~(resets & (c % interval == 0))  # False: this step resets both moments
    active = (
      (jnp.asarray(threshold) != 0) & (c >= clip_after) & (~resets | (c % interval >= clip_after))
    )

    # One pass per output, written so that XLA fuses each into one loop: the
    # clipped gradient's square is min(g^2, theta v) (no square root to share
    # between the moments, which XLA would otherwise materialize), and the
    # reset is a select folded into each moment's update.
    def first(g, m, v):
      spike = active & (g * g > threshold * v)
      g = jnp.where(spike, jnp.sign(g) * jnp.sqrt(v * threshold), g)
      new = jnp.where(keep, b1 * m, 0.0).astype(m.dtype) + (1 - b1) * g
      return new if ok is None else jnp.where(keep_all, new, m)

    def second(g, v):
      g2 = jnp.where(active, jnp.minimum(g * g, threshold * v), g * g)
      new = jnp.where(keep, b2 * v, 0.0).astype(v.dtype) + (1 - b2) * g2
      return new if ok is None else jnp.where(keep_all, new, v)

    mu = jax.tree.map(first, updates, state.mu, state.nu)
    nu = jax.tree.map(second, updates, state.nu)
    factor = spam_warmup_factor(
      state.count, warmup_steps=warmup_steps, reset_interval=reset_interval
    )

    def direction(m, v):
      t = c.astype(m.dtype)
      step = factor.astype(m.dtype) * jnp.sqrt(1.0 - b2**t) / (1.0 - b1**t)
      out = m / (jnp.sqrt(v) + eps) * step
      return out if ok is None else jnp.where(keep_all, out, jnp.zeros_like(out))

    out = jax.tree.map(direction, mu, nu)
    count = c if ok is None else jnp.where(keep_all, c, state.count)
    return out, ScaleBySpamState(count=count, mu=mu, nu=nu)

  return init_fn, update_fn


def scale_by_spam(
  b1: ArrayLike = 0.9,
  b2: ArrayLike = 0.999,
  eps: ArrayLike = 1e-6,
  *,
  threshold: ArrayLike = 5000.0,
  reset_interval: ArrayLike = 500,
  warmup_steps: ArrayLike = 150,
  clip_after: ArrayLike = 20,
) -> optax.GradientTransformation:
  """SPAM's direction (no learning rate). Defaults are the official code's.

  Args:
    b1, b2, eps: Adam's moment decays and the denominator's epsilon (> 0).
    threshold: ``theta``; an entry is a spike when ``g^2 > theta * v``.
      0 turns spike clipping off.
    reset_interval: ``Delta T``, steps between momentum resets; 0 turns resets
      (and the warmup after them) off.
    warmup_steps: length of the cosine warmup after each reset.
    clip_after: no spike clipping during the first ``clip_after`` steps (and
      the first ``clip_after`` steps after each reset).
  """
  args = (b1, b2, eps, threshold, reset_interval, warmup_steps, clip_after)
  _check_spam(*args)
  init_fn, update_fn = _spam_direction(*args)
  return optax.GradientTransformation(init_fn, nonfinite.inline_guard(update_fn))


def spam(
  learning_rate: optax.ScalarOrSchedule,
  b1: ArrayLike = 0.9,
  b2: ArrayLike = 0.999,
  eps: ArrayLike = 1e-6,
  weight_decay: ArrayLike = 0.0,
  *,
  threshold: ArrayLike = 5000.0,
  reset_interval: ArrayLike = 500,
  warmup_steps: ArrayLike = 150,
  clip_after: ArrayLike = 20,
) -> optax.GradientTransformationExtraArgs:
  """SPAM as an optimizer: ``scale_by_spam`` + decoupled weight decay + learning rate.

  The hyperparameters are :func:`scale_by_spam`'s; all may be scheduled or
  injected (``optax.inject_hyperparams(spam)(learning_rate=1e-3)``). The
  non-finite policy guards the whole chain once, folded into SPAM's own passes
  (``nonfinite.inline_guarded_chain``).
  """
  args = (b1, b2, eps, threshold, reset_interval, warmup_steps, clip_after)
  _check_spam(*args)
  return nonfinite.inline_guarded_chain(
    optax.GradientTransformation(*_spam_direction(*args)),
    optax.add_decayed_weights(weight_decay),
    optax.scale_by_learning_rate(learning_rate),
    inline=0,
  )
