"""Per-example gradients and the statistics built on them.

``loss_fn(params, batch)`` is a mean over the batch's leading axis; the
per-example gradient of example i is the gradient of ``loss_fn`` on the
batch made of example i alone. They are computed ``chunk_size`` examples at
a time (``vmap`` inside, ``lax.map`` across chunks), so memory holds one
chunk's activations and per-example gradients, never all B of them when a
summary is wanted (``gradient_moments`` accumulates sums across chunks).

Conventions: with
per-example gradients g_i, i = 1..B, mean g = (1/B) sum g_i, and per-parameter
unbiased variance s^2 = sum (g_i - g)^2 / (B - 1). BackPACK's ``BatchGrad``
returns g_i / B for a mean loss (multiply by B to compare), and Cockpit's
GSNR uses the biased variance.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

from gradlab import _checks

LossFn = Callable[[Any, Any], jax.Array]


def _batch_size(batch: Any) -> int:
  sizes = {jnp.shape(x)[0] for x in jax.tree.leaves(batch) if jnp.ndim(x) > 0}
  if len(sizes) != 1:
    raise ValueError(f"batch: expected leaves with one common leading axis, got sizes {sizes}")
  return sizes.pop()


def _check_chunk(chunk_size: int | None, batch_size: int) -> int:
  if chunk_size is None:
    return batch_size
  chunk_size = _checks.integer("chunk_size", chunk_size, minimum=1)
  if batch_size % chunk_size:
    raise ValueError(f"chunk_size: {chunk_size} does not divide the batch size {batch_size}")
  return chunk_size


def _chunks(batch: Any, chunk_size: int) -> Any:
  return jax.tree.map(lambda x: x.reshape(-1, chunk_size, *x.shape[1:]), batch)


def _example_grad_fn(loss_fn: LossFn):
  grad = jax.grad(loss_fn)
  return lambda params, example: grad(params, jax.tree.map(lambda x: x[None], example))


def per_example_grads(
  loss_fn: LossFn, params: Any, batch: Any, *, chunk_size: int | None = None
) -> Any:
  """Per-example gradients: a pytree like ``params`` with a leading axis B.

  Args:
    loss_fn: pure ``(params, batch) -> scalar``, a mean over the batch.
    chunk_size: examples per ``vmap`` (must divide B); default all at once.
  """
  b = _batch_size(batch)
  c = _check_chunk(chunk_size, b)
  g = jax.vmap(_example_grad_fn(loss_fn), in_axes=(None, 0))
  out = jax.lax.map(lambda chunk: g(params, chunk), _chunks(batch, c))
  return jax.tree.map(lambda x: x.reshape(b, *x.shape[2:]), out)


class GradientMoments(NamedTuple):
  mean: Any  # (1/B) sum_i g_i, pytree like params
  sq_mean: Any  # (1/B) sum_i g_i^2 (elementwise)
  count: int  # B
  # [B] per-example squared norms, per leaf (a pytree like params of [B] vectors)
  sq_norms: Any


def gradient_moments(
  loss_fn: LossFn, params: Any, batch: Any, *, chunk_size: int | None = None
) -> GradientMoments:
  """First and second moments of the per-example gradients, chunk by chunk.

  Holds one chunk of per-example gradients at a time; the per-example,
  per-leaf squared norms (B numbers per leaf) are kept for the norm-based
  statistics.
  """
  b = _batch_size(batch)
  c = _check_chunk(chunk_size, b)
  g = jax.vmap(_example_grad_fn(loss_fn), in_axes=(None, 0))

  def body(carry, chunk):
    s1, s2 = carry
    gs = g(params, chunk)
    s1 = jax.tree.map(lambda a, x: a + jnp.sum(x, 0), s1, gs)
    s2 = jax.tree.map(lambda a, x: a + jnp.sum(x * x, 0), s2, gs)
    norms = jax.tree.map(lambda x: jnp.sum(x.reshape(x.shape[0], -1) ** 2, 1), gs)
    return (s1, s2), norms

  zeros = jax.tree.map(jnp.zeros_like, params)
  (s1, s2), norms = jax.lax.scan(body, (zeros, zeros), _chunks(batch, c))
  norms = jax.tree.map(lambda x: x.reshape(b), norms)
  return GradientMoments(
    jax.tree.map(lambda x: x / b, s1), jax.tree.map(lambda x: x / b, s2), b, norms
  )


def _need_two(count: int, what: str) -> None:
  if count < 2:
    raise ValueError(f"batch: {what} needs at least 2 examples, got {count}")


def variance(moments: GradientMoments) -> Any:
  """Per-parameter unbiased variance of the per-example gradients."""
  _need_two(moments.count, "a variance")
  b = moments.count
  return jax.tree.map(
    lambda m, s: jnp.maximum(s - m * m, 0.0) * b / (b - 1), moments.mean, moments.sq_mean
  )


def gsnr(moments: GradientMoments, *, eps: float = 0.0) -> Any:
  """Per-parameter gradient signal-to-noise ratio ``mean^2 / (variance + eps)``
  (Liu et al., "Understanding Why Neural Networks Generalize Well Through
  GSNR of Parameters", ICLR 2020), with the unbiased variance. Cockpit's
  ``MeanGSNR`` uses the biased variance and eps = 1e-5."""
  return jax.tree.map(lambda m, v: m * m / (v + eps), moments.mean, variance(moments))


def mean_gsnr(moments: GradientMoments, *, eps: float = 1e-5) -> jax.Array:
  """The GSNR averaged over all parameters."""
  ratios = gsnr(moments, eps=eps)
  return optax.tree.sum(ratios) / sum(x.size for x in jax.tree.leaves(ratios))


def per_layer_norms(moments: GradientMoments) -> Any:
  """Per-example gradient norms of each leaf: a pytree of [B] vectors."""
  return jax.tree.map(jnp.sqrt, moments.sq_norms)


def trace_covariance(moments: GradientMoments) -> jax.Array:
  """tr Sigma-hat: the sum of the per-parameter unbiased variances."""
  return optax.tree.sum(variance(moments))


def mean_sq_norm(moments: GradientMoments) -> jax.Array:
  return optax.tree.norm(moments.mean, squared=True)


def norm_test(moments: GradientMoments) -> jax.Array:
  """Byrd et al. (2012) norm test, as Cockpit's ``NormTest``:
  ``sqrt( sum_i |g_i - g|^2 / (B - 1) / (B |g|^2) )`` = sqrt(tr Sigma-hat / (B |g|^2))."""
  _need_two(moments.count, "the norm test")
  return jnp.sqrt(trace_covariance(moments) / (moments.count * mean_sq_norm(moments)))


def noise_scale_simple(moments: GradientMoments) -> jax.Array:
  """B_simple = tr Sigma / |G|^2 (McCandlish et al., 2018) from one batch, with
  the unbiased ``|G|^2 ~ |g|^2 - tr Sigma-hat / B`` in the denominator."""
  _need_two(moments.count, "the noise scale")
  tr = trace_covariance(moments)
  return tr / (mean_sq_norm(moments) - tr / moments.count)


def inner_product_test(
  loss_fn: LossFn, params: Any, batch: Any, *, chunk_size: int | None = None, mean: Any = None
) -> jax.Array:
  """Bollapragada et al. (2018) inner-product test, as Cockpit's ``InnerTest``:
  ``sqrt( Var_i(g_i^T g) / B ) / |g|^2`` with the unbiased variance.

  Needs the mean gradient before the inner products: pass ``mean`` when it
  is at hand (e.g. ``gradient_moments(...).mean``), else it is computed.
  """
  b = _batch_size(batch)
  _need_two(b, "the inner-product test")
  c = _check_chunk(chunk_size, b)
  if mean is None:
    mean = jax.grad(loss_fn)(params, batch)
  g = jax.vmap(_example_grad_fn(loss_fn), in_axes=(None, 0))
  dots = jax.lax.map(
    lambda chunk: jax.vmap(lambda gi: optax.tree.vdot(gi, mean))(g(params, chunk)),
    _chunks(batch, c),
  ).reshape(b)
  return jnp.sqrt(jnp.var(dots, ddof=1) / b) / optax.tree.norm(mean, squared=True)
