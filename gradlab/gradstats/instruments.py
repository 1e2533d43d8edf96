"""Cockpit-style gradient instruments for ``gradlab.train.fit``.

Cockpit (Schneider, Dangel, Hennig, NeurIPS 2021) tracks, every few steps,
cheap functions of the per-example gradients. This instrument computes, on
the step's batch: the gradient norm, the distance from initialization, the
norm test and the inner-product test (both < 1 mean the batch is large
enough for the gradient's direction/length to be trusted), the mean GSNR
and the one-batch noise scale. The update-to-gradient ratio is in the train
step's own metrics (``update_norm / grad_norm``).
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax

from gradlab.gradstats import per_example


def gradient_statistics_instrument(
  train_loss_fn: Callable[[Any, Any, jax.Array], tuple[jax.Array, Any]],
  *,
  init_params: Any = None,
  chunk_size: int | None = None,
):
  """``(params, batch, key) -> {name: scalar}`` for ``train.Instrument``.

  Args:
    train_loss_fn: the train step's ``(params, batch, rng) -> (loss, aux)``.
    init_params: if given, ``distance_from_init`` = |params - init_params|.
    chunk_size: per-example gradients computed this many at a time.
  """
  if init_params is not None:
    # A copy: the caller's arrays are usually the initial state's, which the
    # train step donates (deletes) on its first call.
    init_params = jax.tree.map(jnp.copy, init_params)

  def instrument(params, batch, key):
    loss = lambda p, b: train_loss_fn(p, b, key)[0]
    m = per_example.gradient_moments(loss, params, batch, chunk_size=chunk_size)
    out = {
      "grad_norm": jnp.sqrt(per_example.mean_sq_norm(m)),
      "norm_test": per_example.norm_test(m),
      "inner_product_test": per_example.inner_product_test(
        loss, params, batch, chunk_size=chunk_size, mean=m.mean
      ),
      "mean_gsnr": per_example.mean_gsnr(m),
      "noise_scale_simple": per_example.noise_scale_simple(m),
      # unbiased components, to average over steps before dividing
      "trace_sigma": per_example.trace_covariance(m),
      "g_sq": per_example.mean_sq_norm(m) - per_example.trace_covariance(m) / m.count,
    }
    if init_params is not None:
      out["distance_from_init"] = optax.tree.norm(optax.tree.sub(params, init_params))
    return out

  return instrument
