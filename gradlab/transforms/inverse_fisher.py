"""M-FAC (Frantar, Kurtic, Alistarh 2021): matrix-free inverse empirical Fisher products.

For a window of m gradients ``G = [g_1; ...; g_m]`` (``[m, d]``) and damping
lambda, the empirical Fisher is ``F = lambda I + (1/m) sum_i g_i g_i^T``.
Its inverse is the result of m Sherman-Morrison steps from ``I / lambda``;
M-FAC computes ``F^-1 x`` without any ``d x d`` matrix from ``G``, the
``m x m`` Gram matrix ``G G^T`` and coefficients derived from it (the
official ``HInvFastUpMulti`` of IST-DASLab/M-FAC, line by line):

* setup: ``D = triu(LU(G G^T / lambda + m I) - m I)`` (LU without pivoting,
  computed here from the Cholesky factor, as the matrix is positive
  definite), ``denom = m + diag(D)``, and the lower-triangular ``B`` with
  ``B_ii = 1 / lambda`` and ``B[i, :i] = (-D[:i, i] / denom[:i]) B[:i, :i]``;
* product: ``q = G x / lambda``, then for i = 1..m-1 ``q[i:] -= D[i-1, i:]
  q[i-1] / denom[i-1]``, and ``F^-1 x = x / lambda - G^T ((q / denom) B)``.

O(m d) per product, O(m^3 + m d) per window update (the dynamic algorithm:
the oldest gradient leaves a ring buffer, one row and column of ``G G^T``
are recomputed, then the coefficients).

``scale_by_mfac`` is the optimizer's direction as an optax transformation
(the official ``MFAC.step``): the new gradient enters the window, its
inverse-Fisher product (with optional momentum ``v = mu v + (1 - mu) F^-1 g``)
is the update; ``mfac`` adds weight decay and the learning rate. Non-finite
policy: a NaN or Inf gradient is skipped (zero update, window untouched).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax.flatten_util import ravel_pytree

from gradlab import _checks
from gradlab.transforms.nonfinite import skip_nonfinite


class MFACCoefficients(NamedTuple):
  d: jax.Array  # [m, m] the upper-triangular D
  denom: jax.Array  # [m] m + diag(D)
  b: jax.Array  # [m, m] the lower-triangular B


def mfac_setup(dots: jax.Array, damping: Any) -> MFACCoefficients:
  """The coefficients from the Gram matrix ``G G^T`` (``[m, m]``)."""
  m = dots.shape[0]
  lambd = 1.0 / damping
  eye = jnp.eye(m, dtype=dots.dtype)
  a = lambd * dots + m * eye
  c = jnp.linalg.cholesky(a)  # a = C C^T; the unpivoted LU has U = diag(C) C^T
  u = jnp.diag(jnp.diag(c)) @ c.T
  d = jnp.triu(u - m * eye)
  denom = m + jnp.diag(d)
  tmp = -d.T / denom[None, :]

  def row(i, b):
    new = jnp.where(jnp.arange(m) < i, tmp[i] @ b, b[i])
    return b.at[i].set(new)

  b = jax.lax.fori_loop(1, m, row, lambd * eye)
  return MFACCoefficients(d, denom, b)


def mfac_product(
  grads: jax.Array,
  coef: MFACCoefficients,
  x: jax.Array,
  damping: Any,
  dots: jax.Array | None = None,
) -> jax.Array:
  """``F^-1 x`` for the window ``grads`` (``[m, d]``) and its coefficients."""
  m = grads.shape[0]
  lambd = 1.0 / damping
  q = lambd * (grads @ x if dots is None else dots)
  idx = jnp.arange(m)

  def step(i, q):
    return q - jnp.where(idx >= i, coef.d[i - 1] * q[i - 1] / coef.denom[i - 1], 0.0)

  q = jax.lax.fori_loop(1, m, step, q)
  return lambd * x - grads.T @ ((q / coef.denom) @ coef.b)


def inverse_fisher_product(grads: Any, x: Any, *, damping: Any) -> jax.Array:
  """``(damping I + (1/m) G^T G)^-1 x`` by M-FAC, for ``G`` ``[m, d]`` and ``x`` ``[d]``."""
  _checks.positive("damping", damping)
  g = jnp.asarray(grads)
  if g.ndim != 2 or g.shape[0] == 0:
    raise ValueError(f"grads: expected a non-empty [m, d] matrix, got shape {g.shape}")
  x = jnp.asarray(x, g.dtype)
  if x.shape != g.shape[1:]:
    raise ValueError(f"x: expected shape {g.shape[1:]}, got {x.shape}")
  return mfac_product(g, mfac_setup(g @ g.T, damping), x, damping)


class ScaleByMFACState(NamedTuple):
  grads: jax.Array  # [m, d] the window (a ring buffer)
  dots: jax.Array  # [m, m] its Gram matrix
  last: jax.Array  # int32: the slot the next gradient replaces
  momentum: jax.Array  # [d]


def window_update(state: ScaleByMFACState, g: jax.Array) -> tuple[ScaleByMFACState, jax.Array]:
  """The dynamic algorithm's step: ``g`` replaces the oldest gradient; returns the
  new state and ``G g`` (the new row of the Gram matrix)."""
  grads = state.grads.at[state.last].set(g)
  row = grads @ g
  dots = state.dots.at[state.last].set(row).at[:, state.last].set(row)
  m = grads.shape[0]
  return state._replace(grads=grads, dots=dots, last=(state.last + 1) % m), row


def scale_by_mfac(
  num_grads: int = 64, *, damping: Any = 1e-5, momentum: Any = 0.0
) -> optax.GradientTransformation:
  """The M-FAC direction ``F^-1 g`` over a sliding window of ``num_grads`` gradients."""
  m = _checks.integer("num_grads", num_grads, minimum=1)
  _checks.positive("damping", damping)
  _checks.unit_interval("momentum", momentum)

  def init_fn(params):
    flat, _ = ravel_pytree(params)
    return ScaleByMFACState(
      jnp.zeros((m, flat.shape[0]), flat.dtype),
      jnp.zeros((m, m), flat.dtype),
      jnp.zeros((), jnp.int32),
      jnp.zeros_like(flat),
    )

  def update_fn(updates, state, params=None):
    del params
    g, unravel = ravel_pytree(updates)
    g = g.astype(state.grads.dtype)
    state, row = window_update(state, g)
    direction = mfac_product(state.grads, mfac_setup(state.dots, damping), g, damping, dots=row)
    v = momentum * state.momentum + (1 - momentum) * direction
    return unravel(v.astype(g.dtype)), state._replace(momentum=v)

  return optax.GradientTransformation(init_fn, skip_nonfinite(update_fn))


def mfac(
  learning_rate: optax.ScalarOrSchedule,
  num_grads: int = 64,
  *,
  damping: Any = 1e-5,
  momentum: Any = 0.0,
  weight_decay: Any = 0.0,
) -> optax.GradientTransformation:
  """The M-FAC optimizer (the official ``MFAC``): weight decay added to the
  gradient, the M-FAC direction, then ``-learning_rate``."""
  _checks.positive("weight_decay", weight_decay, allow_zero=True)
  inner = optax.chain(
    optax.add_decayed_weights(weight_decay),
    scale_by_mfac(num_grads, damping=damping, momentum=momentum),
    optax.scale_by_learning_rate(learning_rate),
  )
  return optax.GradientTransformation(inner.init, skip_nonfinite(inner.update))
