r"""AGVM: adaptive gradient variance modulation of module groups (Xue et al., NeurIPS 2022).

Large-batch training of dense-prediction models (detectors, segmenters) fails
when the gradient variance differs widely between module groups (backbone,
FPN, heads). AGVM estimates each group's variance as one minus the cosine
similarity of two gradients computed on the two halves of the batch, and
rescales the group's step so all groups see the reference group's variance:

.. math::
  \phi_k = 1 - \cos(g_k^A, g_k^B), \quad
  \hat\mu_k = \sqrt{\mathrm{clip}\big((\phi_{ref} + 10^{-6}) /
                                     (\phi_k + 10^{-6}), 0.5, 10\big)}, \quad
  \mu_k \leftarrow m \mu_k + (1 - m) \hat\mu_k .

Follows the official ``Sense-X/AGVM`` hook (``agvm_optimizer_hook.py``):
``\mu_k`` start at 1 and are refreshed every ``interval`` steps with
``start <= step <= stop``; within that window the group's learning rate is
multiplied by ``\mu_k`` (outside it, not at all). The reference group is the
official code's first parameter group, the backbone. Here the learning-rate
multiplication is a rescaling of the group's *update*, so put :func:`agvm`
after the base optimizer (for SGD or momentum the two are the same). The
official Adam variant preconditions ``g^A, g^B`` by Adam's second moment before
the cosine; this transform uses the raw gradients (the SGD path).

Extra argument ``split_grads``: the gradient tree with a leading axis of 2,
the mean gradients of the two halves of the batch; ``half_batch_grads``
builds the ``extra_args_fn`` for :func:`gradlab.train.make_train_step`.

Non-finite gradients: skipped (zero update, unchanged state).

References:
  Xue, Chen, Lin, Qiao, Zhang, Zhu, Dai, Liu, Luo. Large-batch Optimization for
  Dense Visual Predictions. NeurIPS 2022. https://arxiv.org/abs/2210.11078
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from gradlab import _checks
from gradlab.transforms import nonfinite


class AGVMState(NamedTuple):
  count: jax.Array
  scales: jax.Array  # one per group, in sorted label order
  variances: jax.Array  # the last measured 1 - cos per group (for logging)


def _resolve_labels(labels, params):
  return labels(params) if callable(labels) else labels


def agvm(
  labels: Any | Callable[[Any], Any],
  reference: Any,
  *,
  momentum: float = 0.97,
  interval: int = 5,
  start: int = 500,
  stop: int | None = None,
  clamp: tuple[float, float] = (0.5, 10.0),
) -> optax.GradientTransformationExtraArgs:
  """Rescales each module group's update by its AGVM factor. Defaults: the official hook's.

  Args:
    labels: a tree of group labels shaped like the params, or a function
      ``params -> labels`` (as in ``optax.partition``).
    reference: the label of the reference group (the backbone).
    momentum: EMA weight of the factors.
    interval, start, stop: refresh the factors on steps ``start <= t <= stop``
      with ``t % interval == 0``; scale updates only on ``start <= t <= stop``.
    clamp: bounds of the variance ratio before the square root.
  """
  _checks.unit_interval("momentum", momentum)
  _checks.integer("interval", interval, minimum=1)
  _checks.integer("start", start)
  stop_step = 10**9 if stop is None or stop <= start else stop

  def groups_of(params):
    tree = _resolve_labels(labels, params)
    flat = jax.tree.leaves(tree)
    names = sorted(set(flat), key=str)
    if reference not in names:
      raise ValueError(f"reference: {reference!r} is not one of the group labels {names}")
    return flat, names

  def init_fn(params):
    _, names = groups_of(params)
    ones = jnp.ones([len(names)], optax.tree.dtype(params, "highest"))  # the params' dtype
    return AGVMState(jnp.zeros([], jnp.int32), ones, jnp.zeros_like(ones))

  def update_fn(updates, state, params=None, *, split_grads=None, **extra):
    del extra
    if split_grads is None:
      raise ValueError(
        "split_grads: agvm needs the gradients of the two batch halves as the "
        "extra argument split_grads (use gradlab.transforms.half_batch_grads)"
      )
    flat_labels, names = groups_of(updates if params is None else params)
    halves = jax.tree.leaves(split_grads)
    variances = []
    for name in names:  # cosine of the group's concatenated halves, without concatenating
      pairs = [(h[0], h[1]) for h, l in zip(halves, flat_labels) if l == name]
      ab = sum(jnp.vdot(a, b) for a, b in pairs)
      aa = sum(jnp.vdot(a, a) for a, _ in pairs)
      bb = sum(jnp.vdot(b, b) for _, b in pairs)
      cos = ab / jnp.maximum(jnp.sqrt(aa) * jnp.sqrt(bb), 1e-8)
      variances.append(1.0 - cos)
    variances = jnp.stack(variances).astype(state.scales.dtype)
    ref = variances[names.index(reference)]
    fresh = jnp.sqrt(jnp.clip((ref + 1e-6) / (variances + 1e-6), *clamp))
    t = state.count
    in_window = (t >= start) & (t <= stop_step)
    refresh = in_window & (t % interval == 0) & nonfinite.all_finite(split_grads)
    scales = jnp.where(refresh, momentum * state.scales + (1 - momentum) * fresh, state.scales)
    applied = jnp.where(in_window, scales, 1.0)
    leaves, treedef = jax.tree.flatten(updates)
    out = [u * applied[names.index(l)].astype(u.dtype) for u, l in zip(leaves, flat_labels)]
    new_var = jnp.where(refresh, variances, state.variances)
    return jax.tree.unflatten(treedef, out), AGVMState(optax.safe_increment(t), scales, new_var)

  return optax.GradientTransformationExtraArgs(init_fn, nonfinite.skip_nonfinite(update_fn))


def half_batch_grads(loss_fn: Callable) -> Callable:
  """An ``extra_args_fn`` for ``make_train_step`` that supplies ``split_grads``.

  ``loss_fn(params, batch, key) -> (loss, aux)`` as the train step takes it;
  the batch's leading axis is cut into its first and second half (on a mesh,
  the first and second half of the devices, as in the official two rank
  groups).
  """
  grad = jax.grad(lambda p, b, k: loss_fn(p, b, k)[0])

  def extra_args_fn(params, batch, key, grad_fn):
    del grad_fn
    n = jax.tree.leaves(batch)[0].shape[0]
    if n % 2:
      raise ValueError(f"batch: AGVM splits the batch in two halves; its size {n} is odd")
    first = jax.tree.map(lambda x: x[: n // 2], batch)
    second = jax.tree.map(lambda x: x[n // 2 :], batch)
    ga, gb = grad(params, first, key), grad(params, second, key)
    return {"split_grads": jax.tree.map(lambda a, b: jnp.stack([a, b]), ga, gb)}

  return extra_args_fn
