r"""Per-layer clipping, layer-wise normalization, and their differentially private form.

Pelikan et al. (2023) make DP federated learning work for speech recognition
with two per-layer devices: **per-layer clipping** (each layer's update gets
its own share of the clipping budget ``C``, so one layer's large gradient does
not shrink every other layer's) and **layer-wise gradient normalization**
(each layer's aggregated update is rescaled by its own norm: LAMB's trust
ratio on the server, ``optax.lamb`` / ``optax.scale_by_trust_ratio``).

The budgets follow McMahan et al. (2018) as optax's
``per_example_layer_norm_clip`` does: ``C_l = C / \sqrt{K}`` for ``K``
layers (``budget="uniform"``) or ``C_l = C \sqrt{d_l / d}`` for a layer of
``d_l`` of ``d`` parameters (``budget="size"``); either way
``\sum_l C_l^2 = C^2``, so a per-layer-clipped update has global norm at most
``C`` and the Gaussian mechanism's sensitivity is unchanged.

A "layer" is a leaf of the parameter tree.

Non-finite gradients: skipped (zero update; :func:`dp_per_layer_aggregate`
keeps its key, so the skipped step draws no noise).

References:
  Pelikan, Azam, Feldman, Honza, Talwar, Zhou. Enabling Differentially Private
  Federated Learning for Speech Recognition: Benchmarks, Adaptive Optimizers
  and Gradient Clipping. 2023. https://arxiv.org/abs/2310.00098
  McMahan, Ramage, Talwar, Zhang. Learning Differentially Private Recurrent
  Language Models. ICLR 2018. https://arxiv.org/abs/1710.06963
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from gradlab import _checks
from gradlab.transforms import nonfinite


def layer_budgets(tree, max_norm: float, budget: str = "uniform") -> list[float]:
  """The per-leaf clipping norms ``C_l`` (in ``jax.tree.leaves`` order)."""
  _checks.one_of("budget", budget, ("uniform", "size"))
  sizes = [math.prod(jnp.shape(x)) for x in jax.tree.leaves(tree)]
  if budget == "uniform":
    return [max_norm / math.sqrt(len(sizes))] * len(sizes)
  total = sum(sizes)
  return [max_norm * math.sqrt(d / total) for d in sizes]


def per_layer_clip(max_norm: float, *, budget: str = "uniform") -> optax.GradientTransformation:
  """Clips each leaf of the (aggregated) update to its budget ``C_l``.

  ``g_l <- g_l * min(1, C_l / ||g_l||)``. For per-*example* clipping before
  aggregation use :func:`dp_per_layer_aggregate` (or optax's
  ``per_example_layer_norm_clip``).
  """
  _checks.positive("max_norm", max_norm)
  _checks.one_of("budget", budget, ("uniform", "size"))

  def update_fn(updates, state, params=None):
    del params
    leaves, treedef = jax.tree.flatten(updates)
    budgets = layer_budgets(updates, max_norm, budget)
    norms = [jnp.sqrt(jnp.sum(jnp.square(g))) for g in leaves]
    # the non-finite policy read off the norms computed anyway (an overflowing norm
    # counts as non-finite) and selected in the scaling pass
    ok = jnp.all(jnp.isfinite(jnp.stack(norms))) if norms else jnp.asarray(True)
    out = []
    for g, c, norm in zip(leaves, budgets, norms):
      clipped = (g * jnp.minimum(1.0, c / norm)).astype(g.dtype)
      out.append(jnp.where(ok, clipped, jnp.zeros_like(clipped)))
    return jax.tree.unflatten(treedef, out), state

  return optax.GradientTransformation(optax.init_empty_state, update_fn)


def layerwise_normalize(eps: float = 1e-12) -> optax.GradientTransformation:
  """Rescales every leaf to unit norm: ``g_l <- g_l / (||g_l|| + eps)``, ``eps > 0``.

  Put a learning rate after it to give each layer the same step length; chain
  ``optax.scale_by_trust_ratio()`` instead for LAMB's ``||p_l|| / ||u_l||``.
  """
  _checks.positive("eps", eps)

  def update_fn(updates, state, params=None):
    del params
    leaves, treedef = jax.tree.flatten(updates)
    norms = [jnp.sqrt(jnp.sum(jnp.square(g))) for g in leaves]
    # the non-finite policy read off the norms (an overflowing norm counts as
    # non-finite) and selected in the same pass
    ok = jnp.all(jnp.isfinite(jnp.stack(norms))) if norms else jnp.asarray(True)
    out = [jnp.where(ok, g / (n + eps), jnp.zeros_like(g)) for g, n in zip(leaves, norms)]
    return jax.tree.unflatten(treedef, out), state

  return optax.GradientTransformation(optax.init_empty_state, update_fn)


class DPAggregateState(NamedTuple):
  key: jax.Array


def dp_per_layer_aggregate(
  l2_norm_clip: float, noise_multiplier: float, key: jax.Array, *, budget: str = "uniform"
) -> optax.GradientTransformation:
  """DP-SGD's aggregation with per-layer instead of flat clipping.

  Takes **per-example** gradients (every leaf with a leading batch axis ``B``,
  e.g. from ``gradlab.gradstats.per_example_grads``) and returns
  ``(sum_i clip_l(g_{i,l}) + N(0, (z C)^2 I)) / B`` per leaf, where ``clip_l``
  clips example ``i``'s leaf ``l`` to ``C_l`` (see the module docstring) and
  ``z`` is ``noise_multiplier``. Like optax's
  ``contrib.differentially_private_aggregate`` it must come first in a chain
  and does not work inside ``MultiSteps``. Privacy accounting (the ``(eps,
  delta)`` this spends) is the user's: the mechanism is the Gaussian one with
  sensitivity ``C`` and noise ``z C``, as for flat clipping.
  """
  _checks.positive("l2_norm_clip", l2_norm_clip)
  _checks.positive("noise_multiplier", noise_multiplier, allow_zero=True)
  _checks.one_of("budget", budget, ("uniform", "size"))
  _checks.is_key("key", key)

  def init_fn(params):
    del params
    return DPAggregateState(key=key)

  def update_fn(updates, state, params=None):
    del params
    leaves, treedef = jax.tree.flatten(updates)
    batch = leaves[0].shape[0]
    per_leaf_shape = jax.tree.unflatten(treedef, [x[0] for x in leaves])
    budgets = layer_budgets(per_leaf_shape, l2_norm_clip, budget)
    new_key, *keys = jax.random.split(state.key, len(leaves) + 1)
    out = []
    for g, c, k in zip(leaves, budgets, keys):
      norms = jnp.sqrt(jnp.sum(jnp.square(g.reshape(batch, -1)), axis=1))
      factor = jnp.minimum(1.0, c / norms).reshape((batch,) + (1,) * (g.ndim - 1))
      total = jnp.sum(g * factor, axis=0)
      noise = noise_multiplier * l2_norm_clip * jax.random.normal(k, total.shape, total.dtype)
      out.append((total + noise) / batch)
    return jax.tree.unflatten(treedef, out), DPAggregateState(key=new_key)

  def guarded(updates, state, params=None):
    leaves = jax.tree.leaves(updates)
    if not leaves or any(x.ndim == 0 for x in leaves):
      raise ValueError(
        "updates: dp_per_layer_aggregate expects per-example gradients, "
        "every leaf with a leading batch axis"
      )
    sizes = {x.shape[0] for x in leaves}
    if len(sizes) != 1:
      raise ValueError(
        f"updates: every leaf needs the same leading batch size, got {sorted(sizes)}"
      )
    return skipping_update(updates, state, params)

  skipping_update = nonfinite.skip_nonfinite(update_fn)
  return optax.GradientTransformation(init_fn, guarded)
