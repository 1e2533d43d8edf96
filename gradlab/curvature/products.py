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
* ``fisher_vp``: the true (Monte Carlo) Fisher, the same product with the
  gradients of losses at labels sampled from the model's own predictive
  distribution (``sampled_cross_entropy`` builds that loss for a classifier).
  Its expectation over the draws is the Fisher ``E_y~p[g g^T]``, which for
  softmax cross-entropy equals the GGN; the empirical Fisher (labels from the
  data) is biased for it away from a perfect fit (Kunstner, Balles, Hennig,
  "Limitations of the empirical Fisher approximation", NeurIPS 2019).

Over a whole dataset in micro-batches: ``gradlab.curvature.dataset``.

Sharding: with a batch split over a mesh (``gradlab.train``), a loss that is a
mean over the batch makes XLA reduce every product across the devices; run
these under ``jax.jit`` with the batch sharded as the train step has it.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax

from gradlab import _checks

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


def sampled_cross_entropy(
  logits_fn: Callable[[Any, Any], jax.Array],
) -> Callable[[Any, Any, jax.Array], jax.Array]:
  """A ``sampled_loss_fn`` for :func:`fisher_vp`: softmax cross-entropy at sampled labels.

  Label i is drawn with ``keys[i]`` from ``softmax(stop_gradient(z_i))``, z the
  logits, so the loss's gradient is ``J_i^T (softmax(z_i) - e_{y_i})`` and
  ``E_y[g g^T] = J_i^T (diag p_i - p_i p_i^T) J_i``: the Fisher, which for
  this loss is the GGN.

  Args:
    logits_fn: ``(params, batch) -> [B, C]`` logits.

  Returns:
    ``(params, batch, keys) -> [B]`` per-example losses, ``keys`` of shape [B].
  """
  if not callable(logits_fn):
    raise ValueError(f"logits_fn: expected a function (params, batch) -> [B, C], got {logits_fn!r}")

  def sampled_loss_fn(params: Any, batch: Any, keys: jax.Array) -> jax.Array:
    logits = logits_fn(params, batch)
    if jnp.ndim(logits) != 2 or logits.shape[0] != keys.shape[0]:
      raise ValueError(
        f"logits_fn: expected logits of shape [B, C] with B = {keys.shape[0]}, got shape "
        f"{jnp.shape(logits)}"
      )
    labels = jax.vmap(jax.random.categorical)(keys, jax.lax.stop_gradient(logits))
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels)

  return sampled_loss_fn


def _batch_size(batch: Any) -> int:
  leaves = jax.tree.leaves(batch)
  if not leaves or not jnp.ndim(leaves[0]):
    raise ValueError("batch: expected a pytree of stacked examples with a leading batch axis")
  return jnp.shape(leaves[0])[0]


def sample_keys(key: jax.Array, offset: Any, size: int, sample: Any) -> jax.Array:
  """``[size]`` keys ``fold_in(fold_in(key, offset + i), sample)``: example i's key of a draw."""
  index = offset + jnp.arange(size)
  return jax.vmap(lambda i: jax.random.fold_in(jax.random.fold_in(key, i), sample))(index)


def fisher_vp_at_offset(
  sampled_loss_fn: Callable[[Any, Any, jax.Array], jax.Array],
  params: Any,
  batch: Any,
  key: jax.Array,
  v: Any,
  offset: Any,
  num_samples: int,
) -> Any:
  """:func:`fisher_vp` for a batch whose first example is example ``offset`` of a dataset."""
  b = _batch_size(batch)
  out = jax.eval_shape(
    lambda p, bt, k: sampled_loss_fn(p, bt, sample_keys(k, 0, b, 0)), params, batch, key
  )
  if getattr(out, "shape", None) != (b,):
    shape = getattr(out, "shape", type(out).__name__)
    raise ValueError(
      f"sampled_loss_fn: expected per-example losses of shape [B] = ({b},), got {shape}"
    )

  def one(s):
    f = lambda p: sampled_loss_fn(p, batch, sample_keys(key, offset, b, s))
    _, gv = jax.jvp(f, (params,), (v,))  # g_is^T v for every example i
    return jax.vjp(f, params)[1](gv)[0]

  total = one(0)
  if num_samples > 1:
    add = lambda acc, s: (jax.tree.map(jnp.add, acc, one(s)), None)
    total = jax.lax.scan(add, total, jnp.arange(1, num_samples))[0]
  return jax.tree.map(lambda x: x / (b * num_samples), total)


def fisher_vp(
  sampled_loss_fn: Callable[[Any, Any, jax.Array], jax.Array],
  params: Any,
  batch: Any,
  key: jax.Array,
  v: Any,
  *,
  num_samples: int = 1,
) -> Any:
  """Monte Carlo Fisher product ``F v = (1/B) sum_i (1/S) sum_s g~_is (g~_is^T v)``.

  ``g~_is`` is the gradient of example i's negative log-likelihood at a label
  drawn from the model, so ``E[F v]`` is the true Fisher's product (for
  softmax cross-entropy: the GGN's, ``ggn_vp``). Each draw costs a forward
  and a reverse pass, as ``empirical_fisher_vp``; the S draws run one after
  another (``lax.scan``), so memory does not grow with them.

  Args:
    sampled_loss_fn: ``(params, batch, keys) -> [B]``: example i's loss at a
      label it samples with ``keys[i]`` from the stop-gradient of the model's
      output distribution (``sampled_cross_entropy(logits_fn)`` for a
      classifier).
    params, batch: the point and the data (B stacked examples).
    key: PRNG key of the draws: example i's key in draw s is
      ``fold_in(fold_in(key, i), s)``.
    v: a pytree like ``params``.
    num_samples: S >= 1 label draws per example; the product's Monte Carlo
      error falls as 1/sqrt(B S).
  """
  num_samples = _checks.integer("num_samples", num_samples, minimum=1)
  _checks.is_key("key", key)
  return fisher_vp_at_offset(sampled_loss_fn, params, batch, key, v, 0, num_samples)
