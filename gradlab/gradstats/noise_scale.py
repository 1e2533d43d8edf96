"""The gradient noise scale B_simple = tr(Sigma) / |G|^2.

Reference: McCandlish, Kaplan, Amodei, "An Empirical Model of Large-Batch
Training" (2018), Appendix A; gpt-neox ``gradient_noise_scale.py``.

With batch gradients of two sizes, ``E|G_B|^2 = |G|^2 + tr(Sigma) / B``, so

    |G|^2 ~ (B_big |G_big|^2 - B_small |G_small|^2) / (B_big - B_small)
    S     ~ (|G_small|^2 - |G_big|^2) / (1/B_small - 1/B_big)

are unbiased estimates of |G|^2 and tr Sigma; their ratio estimates B_simple
(the ratio of unbiased estimates is not itself unbiased: average numerator
and denominator over steps, e.g. by EMA, then divide, as the paper does).

Under data parallelism both sizes come free: each device's gradient is a
small batch (B / n_devices) and the all-reduced one the big batch (B).
``noise_scale_value_and_grad`` computes them inside the sharded train step
with ``shard_map``.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from gradlab import sharding as sharding_lib


class NoiseScaleEstimate(NamedTuple):
  g_sq: jax.Array  # unbiased |G|^2
  trace_sigma: jax.Array  # unbiased tr Sigma
  b_simple: jax.Array  # trace_sigma / g_sq


def two_batch_estimate(
  g_small_sq: jax.Array, g_big_sq: jax.Array, b_small: float, b_big: float
) -> NoiseScaleEstimate:
  """The unbiased |G|^2 and tr Sigma from squared gradient norms at two batch sizes.

  Args:
    g_small_sq: |G_small|^2, the squared norm of a batch-``b_small`` gradient
      (or the mean of several such).
    g_big_sq: |G_big|^2 at batch size ``b_big > b_small``.
  """
  if not b_big > b_small > 0:
    raise ValueError(f"b_small, b_big: expected 0 < b_small < b_big, got {b_small}, {b_big}")
  g_sq = (b_big * g_big_sq - b_small * g_small_sq) / (b_big - b_small)
  s = (g_small_sq - g_big_sq) / (1.0 / b_small - 1.0 / b_big)
  return NoiseScaleEstimate(g_sq, s, s / g_sq)


def noise_scale_value_and_grad(
  loss_fn: Callable[[Any, Any, jax.Array], tuple[jax.Array, Any]],
  mesh: Mesh,
  *,
  data_axis: str = sharding_lib.DATA_AXIS,
):
  """A ``value_and_grad`` for ``make_train_step(value_and_grad_fn=...)`` that
  also measures the noise scale from per-device and all-reduced gradients.

  Each device differentiates ``loss_fn`` on its shard (B / n examples; it
  folds its device index into the key, so per-example randomness differs
  across shards), then the gradients are averaged across the mesh, which is
  the ordinary data-parallel gradient. ``aux`` gains ``noise/g_small_sq``
  (the mean over devices of |G_small|^2), ``noise/g_big_sq``,
  ``noise/g_sq``, ``noise/trace_sigma`` and ``noise/b_simple`` (per step:
  noisy; average the first two over steps before dividing).

  Needs at least two devices on ``data_axis``, and ``aux`` a dict.
  """
  n = mesh.shape[data_axis]
  if n < 2:
    raise ValueError(f"mesh: the noise scale needs >= 2 devices on '{data_axis}', got {n}")
  vg = jax.value_and_grad(loss_fn, has_aux=True)

  def local(params, batch, key):
    key = jax.random.fold_in(key, jax.lax.axis_index(data_axis))
    (loss, aux), grads = vg(params, batch, key)
    g_small_sq = jax.lax.pmean(optax.tree.norm(grads, squared=True), data_axis)
    grads = jax.lax.pmean(grads, data_axis)
    loss, aux = jax.lax.pmean((loss, aux), data_axis)
    return (loss, aux, g_small_sq), grads

  sharded = jax.shard_map(
    local,
    mesh=mesh,
    in_specs=(P(), P(data_axis), P()),
    out_specs=((P(), P(), P()), P()),
    check_vma=False,
  )

  def value_and_grad(params, batch, key):
    (loss, aux, g_small_sq), grads = sharded(params, batch, key)
    b_big = jax.tree.leaves(batch)[0].shape[0]
    g_big_sq = optax.tree.norm(grads, squared=True)
    est = two_batch_estimate(g_small_sq, g_big_sq, b_big // n, b_big)
    aux = dict(aux or {})
    aux.update(
      {
        "noise/g_small_sq": g_small_sq,
        "noise/g_big_sq": g_big_sq,
        "noise/g_sq": est.g_sq,
        "noise/trace_sigma": est.trace_sigma,
        "noise/b_simple": est.b_simple,
      }
    )
    return (loss, aux), grads

  return value_and_grad


def ratio_of_means(g_sq: Any, trace_sigma: Any) -> jax.Array:
  """B_simple from many steps' unbiased components: mean(tr Sigma) / mean(|G|^2)."""
  return jnp.mean(jnp.asarray(trace_sigma)) / jnp.mean(jnp.asarray(g_sq))
