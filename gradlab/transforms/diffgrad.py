r"""diffGrad: Adam whose step is damped by the change of the gradient (Dubey et al. 2019).

Follows the official ``diffGrad_v2.py`` (``shivram1987/diffGrad``; the v2
file fixes the paper code's bug that overwrote the previous gradient before
the difference was taken). Per coordinate, with ``g_{t-1} = 0`` at the start:

.. math::
  \xi_t = 1 / (1 + e^{-|g_{t-1} - g_t|}), \quad
  \Delta_t = \frac{\xi_t m_t}{\sqrt{v_t} + \epsilon}
             \frac{\sqrt{1 - \beta_2^t}}{1 - \beta_1^t}

with Adam's moments ``m_t, v_t``. The friction coefficient ``\xi_t`` lies in
``[1/2, 1)``: near 1/2 where the gradient barely changes (small steps near an
optimum), near 1 where it changes fast. The official weight decay is L2 added
to the gradient *before* everything (including the stored previous gradient);
:func:`diffgrad` reproduces it with ``optax.add_decayed_weights`` first.

Non-finite gradients: skipped (zero update, unchanged state).

References:
  Dubey, Chakraborty, Roy, Mukherjee, Singh, Chaudhuri. diffGrad: An
  Optimization Method for Convolutional Neural Networks. IEEE TNNLS 2020.
  https://arxiv.org/abs/1909.11015
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax.typing import ArrayLike

from gradlab.transforms import nonfinite, torch_adam


class ScaleByDiffGradState(NamedTuple):
  count: jax.Array
  mu: optax.Updates
  nu: optax.Updates
  prev_grad: optax.Updates


def _diffgrad_direction(b1, b2, eps):
  def init_fn(params):
    z = optax.tree.zeros_like(params)
    return ScaleByDiffGradState(jnp.zeros([], jnp.int32), z, z, z)

  def update_fn(updates, state, params=None, *, ok=None):
    """``ok``: the non-finite policy, selected inside each pass (``nonfinite.inline_guard``)."""
    del params
    c = optax.safe_increment(state.count)
    mu, nu = torch_adam.torch_adam_moments(updates, state.mu, state.nu, b1, b2)
    prev = updates
    if ok is not None:
      keep = lambda new, old: jnp.where(ok, new, old)  # noqa: E731
      mu = jax.tree.map(keep, mu, state.mu)
      nu = jax.tree.map(keep, nu, state.nu)
      prev = jax.tree.map(keep, updates, state.prev_grad)
      c = jnp.where(ok, c, state.count)

    def direction(m, v, prev, g):  # one fused pass: friction, damping and the step
      t = c.astype(m.dtype)
      friction = 1.0 / (1.0 + jnp.exp(-jnp.abs(prev - g)))
      out = friction * m / (jnp.sqrt(v) + eps) * (jnp.sqrt(1.0 - b2**t) / (1.0 - b1**t))
      return out if ok is None else jnp.where(ok, out, jnp.zeros_like(out))

    out = jax.tree.map(direction, mu, nu, state.prev_grad, updates)
    return out, ScaleByDiffGradState(c, mu, nu, prev)

  return init_fn, update_fn


def scale_by_diffgrad(
  b1: ArrayLike = 0.9, b2: ArrayLike = 0.999, eps: ArrayLike = 1e-8
) -> optax.GradientTransformation:
  """diffGrad's direction (no learning rate); ``eps > 0``."""
  torch_adam.check_adam(b1, b2, eps)
  init_fn, update_fn = _diffgrad_direction(b1, b2, eps)
  return optax.GradientTransformation(init_fn, nonfinite.inline_guard(update_fn))


def diffgrad(
  learning_rate: optax.ScalarOrSchedule,
  b1: ArrayLike = 0.9,
  b2: ArrayLike = 0.999,
  eps: ArrayLike = 1e-8,
  weight_decay: ArrayLike = 0.0,
) -> optax.GradientTransformationExtraArgs:
  """diffGrad as an optimizer, with the official code's L2 weight decay (applied first)."""
  torch_adam.check_adam(b1, b2, eps)
  return nonfinite.inline_guarded_chain(
    optax.add_decayed_weights(weight_decay),
    optax.GradientTransformation(*_diffgrad_direction(b1, b2, eps)),
    optax.scale_by_learning_rate(learning_rate),
    inline=1,
  )
