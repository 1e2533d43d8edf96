"""Hessian-, Gauss-Newton- and empirical-Fisher-vector products over pytrees.

* ``hvp``: forward-over-reverse, ``jvp(grad(L))``; one product costs a small
  constant times a gradient (measured 2-3x; ``benchmarks/hvp_cost.py``).
* ``make_hvp``: ``jax.linearize`` of the gradient once, then each product is
  the linear map alone: the choice for many products at the same point
  (Hutchinson probes, Lanczos iterations).
* ``ggn_vp``: ``G v = J^T H_l J v`` for a loss written as ``l(model(params))``
  (positive semi-definite when l is convex in the outputs).
* ``empirical_fisher_vp``: ``F v = (1/N) sum_i g_i (g_i^T v)`` from a forward
  and a reverse pass over the per-example losses, never holding the N
  per-example gradients.

Sharding: with a batch split over a mesh (``gradlab.train``), a loss that is a
mean over the batch makes XLA reduce every product across the devices; run
these under ``jax.jit`` with the batch sharded as the train step has it.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp

LossFn = Callable[[Any, Any], jax.Array]


def check_scalar_loss(loss_fn: LossFn, params: Any, batch: Any, *, name: str = "loss_fn") -> None:
  """Raises ``ValueError`` unless ``loss_fn(params, batch)`` is a real scalar."""
  out = jax.eval_shape(loss_fn, params, batch)
  if not hasattr(out, "shape") or out.shape != ():
    shape = getattr(out, "shape", type(out).__name__)
    raise ValueError(
      f"{name}: expected a scalar loss, got {shape}; reduce over the batch (e.g. a mean) first"
    )
  if not jnp.issubdtype(out.dtype, jnp.floating):
    raise ValueError(f"{name}: expected a floating loss, got dtype {out.dtype}")


def _bind(loss_fn: LossFn, batch: Any) -> Callable[[Any], jax.Array]:
  return lambda p: loss_fn(p, batch)


def hvp(loss_fn: LossFn, params: Any, batch: Any, v: Any) -> Any:
  """The Hessian of ``loss_fn(., batch)`` at ``params`` times ``v`` (a pytree)."""
  check_scalar_loss(loss_fn, params, batch)
  return jax.jvp(jax.grad(_bind(loss_fn, batch)), (params,), (v,))[1]


def make_hvp(loss_fn: LossFn, params: Any, batch: Any) -> Callable[[Any], Any]:
  """``v -> H v`` at ``params``, linearized once for many products."""
  check_scalar_loss(loss_fn, params, batch)
  _, matvec = jax.linearize(jax.grad(_bind(loss_fn, batch)), params)
  return matvec


def ggn_vp(
  model_fn: Callable[[Any, Any], Any],
  output_loss_fn: Callable[[Any, Any], jax.Array],
  params: Any,
  batch: Any,
  v: Any,
) -> Any:
  """Generalized Gauss-Newton product ``J^T H_l J v``.

  Args:
    model_fn: ``(params, batch) -> outputs`` (e.g. logits).
    output_loss_fn: ``(outputs, batch) -> scalar`` loss of the outputs.
    params, batch: the point and the data.
    v: a pytree like ``params``.
  """
  check_scalar_loss(lambda p, b: output_loss_fn(model_fn(p, b), b), params, batch)
  outputs, jv = jax.jvp(lambda p: model_fn(p, batch), (params,), (v,))
  hjv = jax.jvp(jax.grad(lambda o: output_loss_fn(o, batch)), (outputs,), (jv,))[1]
  _, vjp = jax.vjp(lambda p: model_fn(p, batch), params)
  return vjp(hjv)[0]


def empirical_fisher_vp(
  per_example_loss_fn: Callable[[Any, Any], jax.Array], params: Any, batch: Any, v: Any
) -> Any:
  """Empirical Fisher product ``(1/N) sum_i g_i (g_i^T v)``, g_i the per-example gradients.

  Args:
    per_example_loss_fn: ``(params, batch) -> [N]`` losses, one per example.
  """
  out = jax.eval_shape(per_example_loss_fn, params, batch)
  if len(out.shape) != 1:
    raise ValueError(
      f"per_example_loss_fn: expected a vector of per-example losses [N], got shape {out.shape}"
    )
  f = lambda p: per_example_loss_fn(p, batch)
  _, gv = jax.jvp(f, (params,), (v,))  # g_i^T v for every i
  _, vjp = jax.vjp(f, params)
  return vjp(gv / out.shape[0])[0]
