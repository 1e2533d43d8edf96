"""Z0-Inf: zeroth-order influence from loss changes across checkpoints (facebookresearch/z0inf).

At checkpoint e with weights ``w_e``, the gradient of an example's loss is
estimated from its loss changes toward neighbouring checkpoints a:

    g_hat_e = (1/K) sum_a (l(w_a) - l(w_e)) (w_a - w_e) / |w_a - w_e|^2

(the official ``z_self_inf_finite_diff``). Train-test influence is the mean
over checkpoints of ``g_hat_e(train) . g_hat_e(test)``, computed from the
checkpoint Gram matrix alone, never a per-example gradient; self-influence
is ``mean_e |g_hat_e|^2``.

Departures from the official code, which we read as bugs: its neighbour range
``range(max(0, epochs - K//2), min(epochs, epochs + K//2))`` uses the number
of epochs where the current epoch is meant (so every epoch uses the last K/2
checkpoints); here the neighbours of e are the K nearest indices around e.
Its train-test form also divides by the squared distances twice; here both
forms use the single division above, so that with one neighbour the score is
the product of two exact directional finite differences. ``center`` and
``weight_by_correlation`` are the official options (center each example's
losses over checkpoints; multiply by the Spearman correlation of the train
and test loss trajectories).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from gradlab import _checks
from gradlab.influence.metrics import rank


def stack_checkpoints(checkpoints: Any) -> jax.Array:
  """``[K, d]`` flat weights from a list of parameter pytrees."""
  checkpoints = list(checkpoints)
  if len(checkpoints) < 2:
    raise ValueError(f"checkpoints: expected at least 2 parameter pytrees, got {len(checkpoints)}")
  return jnp.stack([ravel_pytree(p)[0] for p in checkpoints])


def _losses(name: str, x: Any, k: int) -> jax.Array:
  x = jnp.asarray(x)
  if x.ndim != 2 or x.shape[0] != k or x.shape[1] == 0:
    raise ValueError(f"{name}: expected [{k} checkpoints, examples >= 1], got {x.shape}")
  return x


def _neighbour_weights(weights: jax.Array, neighbors: int) -> tuple[jax.Array, jax.Array]:
  """``C [K, K]`` with ``g_hat_e = sum_a C[e, a] (l_a - l_e) (w_a - w_e)``, and the Gram
  matrix of the differences needed for inner products."""
  k = weights.shape[0]
  neighbors = _checks.integer("neighbors", neighbors, minimum=1)
  if neighbors > k - 1:
    raise ValueError(f"neighbors: {neighbors} exceeds the {k - 1} other checkpoints")
  idx = np.arange(k)
  coef = np.zeros((k, k))
  for e in range(k):
    order = sorted((j for j in idx if j != e), key=lambda j: (abs(j - e), j))[:neighbors]
    coef[e, order] = 1.0 / neighbors
  gram = weights @ weights.T
  sq = jnp.diag(gram)[:, None] + jnp.diag(gram)[None, :] - 2 * gram
  c = jnp.asarray(coef, weights.dtype) / jnp.where(sq > 0, sq, 1.0)
  return c, gram


def _gradient_coefficients(c: jax.Array, losses: jax.Array) -> jax.Array:
  """``[K, K, m]``: the coefficient of ``(w_a - w_e)`` in ``g_hat_e`` of each example."""
  diff = losses[None, :, :] - losses[:, None, :]  # [e, a, m] = l_a - l_e
  return c[:, :, None] * diff


def z0_influence(
  checkpoints: Any,
  train_losses: Any,
  test_losses: Any,
  *,
  neighbors: int = 4,
  center: bool = False,
  weight_by_correlation: bool = False,
) -> jax.Array:
  """``[t, n]``: zeroth-order train-test influence from ``[K, n]`` and ``[K, t]`` losses
  at K checkpoints (a list of parameter pytrees, or ``[K, d]`` flat weights)."""
  w = checkpoints if isinstance(checkpoints, jax.Array) else stack_checkpoints(checkpoints)
  if w.ndim != 2 or w.shape[0] < 2:
    raise ValueError(f"checkpoints: expected [K >= 2, d] weights, got {w.shape}")
  k = w.shape[0]
  ltr = _losses("train_losses", train_losses, k)
  lte = _losses("test_losses", test_losses, k)
  if center:
    ltr = ltr - ltr.mean(0, keepdims=True)
    lte = lte - lte.mean(0, keepdims=True)
  c, gram = _neighbour_weights(w, neighbors)
  a_tr = _gradient_coefficients(c, ltr)  # [e, a, n]
  a_te = _gradient_coefficients(c, lte)  # [e, b, t]
  # (w_a - w_e) . (w_b - w_e) = G_ab - G_ae - G_eb + G_ee
  g = jnp.diag(gram)
  inner = gram[None, :, :] - gram[:, :, None] - gram[:, None, :] + g[:, None, None]  # [e, a, b]
  scores = jnp.einsum("ean,eab,ebt->tn", a_tr, inner, a_te) / k
  if weight_by_correlation:
    scores = scores * spearman_columns(lte, ltr)
  return scores


def z0_self_influence(checkpoints: Any, losses: Any, *, neighbors: int = 4) -> jax.Array:
  """``[n]``: ``mean_e |g_hat_e|^2`` from ``[K, n]`` losses (the official finite-difference
  self-influence, divided by K)."""
  w = checkpoints if isinstance(checkpoints, jax.Array) else stack_checkpoints(checkpoints)
  k = w.shape[0]
  l = _losses("losses", losses, k)
  c, gram = _neighbour_weights(w, neighbors)
  a = _gradient_coefficients(c, l)
  g = jnp.diag(gram)
  inner = gram[None, :, :] - gram[:, :, None] - gram[:, None, :] + g[:, None, None]
  return jnp.einsum("ean,eab,ebn->n", a, inner, a) / k


def spearman_columns(x: jax.Array, y: jax.Array) -> jax.Array:
  """``[t, n]``: Spearman correlation between column i of ``x [K, t]`` and column j of
  ``y [K, n]`` (ranks over the K rows)."""
  rx = jax.vmap(rank, in_axes=1, out_axes=1)(x)
  ry = jax.vmap(rank, in_axes=1, out_axes=1)(y)
  rx = rx - rx.mean(0)
  ry = ry - ry.mean(0)
  cov = rx.T @ ry
  return cov / jnp.outer(jnp.linalg.norm(rx, axis=0), jnp.linalg.norm(ry, axis=0))
