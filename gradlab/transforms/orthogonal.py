"""The perpendicular gradient of Prieto et al. (2025), "Grokking at the Edge of
Numerical Stability" (their ``⊥Grad``).

For each parameter array w with gradient g (flattened):
``g_perp = g - (w . g / (w . w + 1e-30)) w``, rescaled to the norm of g:
``g_perp * |g| / (|g_perp| + 1e-30)``. The component along the weights, which
only scales the logits (naive loss minimization, the road to softmax
collapse), is removed; the step keeps its length. This is the official
``OrthogonalGradient`` wrapper's ``_orthogonalize_gradients``, per parameter
tensor, as an optax transformation to chain before any optimizer:
``optax.chain(orthogonal_gradient(), optax.adamw(...))``.

Non-finite policy: a step whose gradient holds a NaN or Inf gives a zero update
(the transform has no state to protect).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from gradlab.transforms.nonfinite import skip_nonfinite

EPS = 1e-30


def project_out_weights(g: jax.Array, w: jax.Array) -> jax.Array:
  """One parameter array's perpendicular gradient, rescaled to ``|g|``."""
  gf, wf = jnp.ravel(g), jnp.ravel(w).astype(g.dtype)
  proj = jnp.vdot(wf, gf) / (jnp.vdot(wf, wf) + EPS)
  perp = gf - proj * wf
  scaled = perp * (jnp.linalg.norm(gf) / (jnp.linalg.norm(perp) + EPS))
  return scaled.reshape(g.shape)


def orthogonal_gradient() -> optax.GradientTransformation:
  """A stateless transformation: each leaf of the update made orthogonal to the
  matching leaf of ``params`` and rescaled to its original norm (``update``
  needs ``params``)."""

  def update_fn(updates, state, params=None):
    if params is None:
      raise ValueError(
        "params: orthogonal_gradient projects out the weights, so update needs params "
        "(tx.update(grads, state, params))"
      )
    return jax.tree.map(project_out_weights, updates, params), state

  return optax.GradientTransformation(lambda params: optax.EmptyState(), skip_nonfinite(update_fn))
