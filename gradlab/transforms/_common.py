"""What every gradlab transform shares: the non-finite policy and small helpers.

**Non-finite policy (every transform in ``gradlab.transforms``).** A step whose
incoming updates hold any NaN or Inf is *skipped*: the transform returns an
all-zero update and its state exactly as it was (step counters included), so
one bad batch can neither poison a moment estimate nor advance a schedule.
Inside a longer ``optax.chain`` the members after a gradlab transform then see
a zero update, which optax's own stateful members (``scale_by_adam``, ...)
would still fold into their moments; to skip a whole chain atomically, wrap it
in ``optax.apply_if_finite(chain, max_consecutive_errors)``, which also counts
the skipped steps.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax


def all_finite(tree: Any) -> jax.Array:
  """True iff every entry of every leaf is finite (a scalar bool)."""
  leaves = jax.tree.leaves(tree)
  if not leaves:
    return jnp.array(True)
  return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves]))


def skip_nonfinite(update_fn: Callable) -> Callable:
  """Wraps ``update_fn(updates, state, params=None, **extra)`` with the policy above."""

  @functools.wraps(update_fn)
  def guarded(updates, state, params=None, **extra):
    ok = all_finite(updates)

    def step(_):
      return update_fn(updates, state, params, **extra)

    def skip(_):
      shapes = jax.eval_shape(step, None)
      zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes[0])
      return zeros, state
    # lax.cond, not a select of both results: the update runs only when the
    # gradient is finite, and no pass over the state is spent on selecting
    # (under vmap, e.g. over seeds, JAX turns it into a select anyway).
    return jax.lax.cond(ok, step, skip, None)

  return guarded


def check_positive(name: str, value: Any, *, allow_zero: bool = False) -> None:
  ok = value >= 0 if allow_zero else value > 0
  if not ok:
    bound = ">= 0" if allow_zero else "> 0"
    raise ValueError(f"{name}: expected a number {bound}, got {value!r}")


def check_unit_interval(name: str, value: Any) -> None:
  if not 0.0 <= value < 1.0:
    raise ValueError(f"{name}: expected a number in [0, 1), got {value!r}")


def check_int(name: str, value: Any, *, minimum: int = 0) -> None:
  if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
    raise ValueError(f"{name}: expected an integer >= {minimum}, got {value!r}")


def torch_adam_direction(mu, nu, count, b1, b2, eps):
  """``m / (sqrt(v) + eps) * sqrt(1 - b2^t) / (1 - b1^t)``: the PyTorch-style step.

  The official SPAM, diffGrad and SCALE code adds ``eps`` to the *uncorrected*
  root and moves both bias corrections into the step size; that is
  ``m_hat / (sqrt(v_hat) + eps / sqrt(1 - b2^t))``, not optax's
  ``m_hat / (sqrt(v_hat) + eps)``. The two differ only where ``sqrt(v)`` is
  comparable to ``eps``.
  """
  def one(m, v):
    t = jnp.asarray(count).astype(m.dtype)
    step = jnp.sqrt(1.0 - b2 ** t) / (1.0 - b1 ** t)
    return m / (jnp.sqrt(v) + eps) * step
  return jax.tree.map(one, mu, nu)


def guarded_chain(*transforms: optax.GradientTransformation) -> optax.GradientTransformationExtraArgs:
  """``optax.chain(*transforms)`` with the non-finite policy applied to the whole chain.

  The optimizers (``spam``, ``diffgrad``, ``adam_8bit``, ``mars``, ``scale``)
  are built this way, so that on a skipped step weight decay does not move
  the parameters and no member's state (a partition's other branches
  included) changes.
  """
  tx = optax.chain(*transforms)
  return optax.GradientTransformationExtraArgs(tx.init, skip_nonfinite(tx.update))
