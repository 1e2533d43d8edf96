"""Adam with PyTorch's epsilon placement, the direction SPAM, diffGrad and SCALE share.

The official SPAM, diffGrad and SCALE code adds ``eps`` to the *uncorrected*
root and moves both bias corrections into the step size:
``m / (sqrt(v) + eps) * sqrt(1 - b2^t) / (1 - b1^t)``, that is
``m_hat / (sqrt(v_hat) + eps / sqrt(1 - b2^t))``, not optax's
``m_hat / (sqrt(v_hat) + eps)``. The two differ only where ``sqrt(v)`` is
comparable to ``eps``.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax.typing import ArrayLike

from gradlab import _checks
from gradlab.transforms import nonfinite


def torch_adam_direction(mu, nu, count, b1, b2, eps):
  """``m / (sqrt(v) + eps) * sqrt(1 - b2^t) / (1 - b1^t)`` per leaf."""

  def one(m, v):
    t = jnp.asarray(count).astype(m.dtype)
    step = jnp.sqrt(1.0 - b2**t) / (1.0 - b1**t)
    return (m / (jnp.sqrt(v) + eps) * step).astype(m.dtype)

  return jax.tree.map(one, mu, nu)


class TorchAdamState(NamedTuple):
  count: jax.Array
  mu: optax.Updates
  nu: optax.Updates


def check_adam(b1: ArrayLike, b2: ArrayLike, eps: ArrayLike) -> None:
  """Adam's hyperparameters, when concrete: decays in [0, 1), ``eps > 0`` (it divides)."""
  _checks.unit_interval("b1", b1)
  _checks.unit_interval("b2", b2)
  _checks.positive("eps", eps)


def torch_adam_moments(updates, mu, nu, b1, b2):
  """Adam's moment updates through ``optax.tree``."""
  return (
    optax.tree.update_moment(updates, mu, b1, 1),
    optax.tree.update_moment_per_elem_norm(updates, nu, b2, 2),
  )


def unguarded_torch_adam(b1, b2, eps):
  """``(init_fn, update_fn)`` of :func:`scale_by_torch_adam` without the non-finite guard."""

  def init_fn(params):
    return TorchAdamState(
      jnp.zeros([], jnp.int32), optax.tree.zeros_like(params), optax.tree.zeros_like(params)
    )

  def update_fn(updates, state, params=None):
    del params
    c = optax.safe_increment(state.count)
    mu, nu = torch_adam_moments(updates, state.mu, state.nu, b1, b2)
    return torch_adam_direction(mu, nu, c, b1, b2, eps), TorchAdamState(c, mu, nu)

  return init_fn, update_fn


def scale_by_torch_adam(
  b1: ArrayLike = 0.9, b2: ArrayLike = 0.999, eps: ArrayLike = 1e-8
) -> optax.GradientTransformation:
  """Adam with PyTorch's epsilon placement (``m / (sqrt(v) + eps)`` uncorrected).

  ``optax.scale_by_adam`` divides by ``sqrt(v_hat) + eps`` instead; this form
  is what SCALE's (and SPAM's, diffGrad's) official code runs.
  """
  check_adam(b1, b2, eps)
  init_fn, update_fn = unguarded_torch_adam(b1, b2, eps)
  return optax.GradientTransformation(init_fn, nonfinite.skip_nonfinite(update_fn))
