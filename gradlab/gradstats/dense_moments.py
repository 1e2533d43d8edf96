"""Per-example gradient moments of flax ``Dense`` layers without per-example gradients.

The trick of BackPACK's first-order extensions (Dangel, Kunstner, Hennig,
ICLR 2020): for a dense layer z_i = W x_i + b, example i's weight gradient is
the outer product x_i delta_i^T with delta_i = d l_i / d z_i, so

    sum_i g_i     = X^T Delta,          sum_i g_i^2 = (X * X)^T (Delta * Delta),

one matmul each, never the B per-example gradients (B x |W| numbers) that
``gradient_moments`` materializes. The layer inputs and output gradients are
read by intercepting every ``flax.linen.Dense`` call: the input is recorded
and a zero perturbation is added to the output, whose gradient is Delta / B
for a loss that is a mean over the batch.

Exact (to float rounding) for models whose parameters all belong to ``Dense``
layers applied to [B, features] inputs (MLPs); refuses anything else rather
than return a wrong answer. Use ``gradient_moments`` for other models.
"""

from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax.core import unfreeze

from gradlab.gradstats.per_example import GradientMoments


def _interceptor(next_fun, args, kwargs, context):
  if isinstance(context.module, nn.Dense) and context.method_name == "__call__":
    x = args[0]
    if x.ndim != 2:
      raise ValueError(
        f"model: Dense layer {context.module.name!r} sees input of shape "
        f"{x.shape}; dense_gradient_moments needs [B, features] inputs"
      )
    context.module.sow("intermediates", "dense_input", x)
    return context.module.perturb("dense_output", next_fun(*args, **kwargs))
  return next_fun(*args, **kwargs)


def dense_gradient_moments(
  module: nn.Module,
  params: Any,
  inputs: jax.Array,
  loss_of_outputs: Callable[[jax.Array], jax.Array],
) -> GradientMoments:
  """``GradientMoments`` of the per-example gradients of an all-Dense flax model.

  Args:
    module: the flax module (e.g. ``gradlab.models.MLP``).
    params: its variables, ``{"params": ...}``.
    inputs: [B, features].
    loss_of_outputs: ``outputs -> scalar``, a mean over the batch of
      per-example losses (e.g. cross-entropy against fixed labels).
  """
  b = inputs.shape[0]
  with nn.intercept_methods(_interceptor):
    _, state = module.apply(params, inputs, mutable=["perturbations", "intermediates"])
  perturbations = state["perturbations"]
  xs = state["intermediates"]

  def loss(perturbations):
    with nn.intercept_methods(_interceptor):
      out, _ = module.apply(
        {**params, "perturbations": perturbations}, inputs, mutable=["intermediates"]
      )
    return loss_of_outputs(out)

  deltas = jax.grad(loss)(perturbations)  # Delta / B per layer

  def layer(path_params, x, d):
    delta = d * b  # per-example output gradients
    kernel_mean = x.T @ delta / b
    kernel_sq = (x * x).T @ (delta * delta) / b
    out = {"kernel": (kernel_mean, kernel_sq)}
    if "bias" in path_params:
      out["bias"] = (jnp.mean(delta, 0), jnp.mean(delta * delta, 0))
    d2 = jnp.sum(delta * delta, 1)
    norms = {"kernel": jnp.sum(x * x, 1) * d2}  # |x_i delta_i^T|_F^2 = |x_i|^2 |delta_i|^2
    if "bias" in path_params:
      norms["bias"] = d2
    return out, norms

  p = unfreeze(params["params"])
  mean, sq, sq_norms = {}, {}, {}

  def walk(p_sub, x_sub, d_sub, m_out, s_out, n_out):
    for name, sub in p_sub.items():
      if (
        isinstance(sub, dict)
        and "kernel" in sub
        and not any(isinstance(v, dict) for v in sub.values())
      ):
        if name not in x_sub or name not in d_sub:
          raise ValueError(f"model: parameters {name!r} are not a Dense layer's")
        extra = set(sub) - {"kernel", "bias"}
        if extra:
          raise ValueError(
            f"model: layer {name!r} has parameters {sorted(extra)} "
            "beyond a Dense layer's kernel and bias"
          )
        out, norms = layer(sub, x_sub[name]["dense_input"][0], d_sub[name]["dense_output"])
        m_out[name] = {k: v[0] for k, v in out.items()}
        s_out[name] = {k: v[1] for k, v in out.items()}
        n_out[name] = norms
      elif isinstance(sub, dict):
        m_out[name], s_out[name], n_out[name] = {}, {}, {}
        walk(sub, x_sub.get(name, {}), d_sub.get(name, {}), m_out[name], s_out[name], n_out[name])
      else:
        raise ValueError(f"model: parameter {name!r} is not inside a Dense layer")

  walk(p, unfreeze(xs), unfreeze(deltas), mean, sq, sq_norms)
  return GradientMoments({"params": mean}, {"params": sq}, b, {"params": sq_norms})
