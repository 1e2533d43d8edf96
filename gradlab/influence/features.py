"""Gradient features: per-example gradients as rows, random projections, LESS's Adam features.

Everything here takes a per-example function ``fn(params, example)`` (a loss,
or a model output such as TRAK's margin) and ``examples``, a pytree of stacked
examples (leading axis N). Rows are computed ``chunk_size`` examples at a time
(``vmap`` inside, ``lax.map`` across chunks), so memory holds one chunk's
gradients, never N of them, when a projection or a reduction follows.

Projection (``project``) multiplies by a ``d x k`` random matrix that is never
held: it is regenerated from ``fold_in(key, block)`` one ``block_size x k``
block of rows at a time, as TRAK's and LESS's projectors do, so peak memory
is ``block_size * k`` (by default at most 2^24 entries: a small model's P is
one block and one matmul). The same key, k and block size give the same P, so
train and test rows projected in separate calls share one space. Entries are
Rademacher signs (from random bits, 32 per word) or standard normals
scaled by ``1 / sqrt(k)``, so ``E[(P^T x) . (P^T y)] = x . y`` and, by the
Johnson-Lindenstrauss lemma, inner products of unit vectors are kept within
``eps`` with probability ``1 - delta`` once ``k >= 8 log(2 m / delta) / eps^2``
for ``m`` pairs (the variance of one projected inner product of unit vectors
is at most ``2 / k`` for normals, less for signs).
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

from gradlab import _checks
from gradlab.curvature.dataset import num_examples
from gradlab.curvature.probes import rademacher

ExampleFn = Callable[[Any, Any], jax.Array]
PROJECTIONS = ("rademacher", "normal")


def _chunk(name: str, chunk_size: int | None, n: int) -> int:
  if chunk_size is None:
    return n
  return min(_checks.integer(name, chunk_size, minimum=1), n)


def map_chunks(chunk_fn: Callable[[Any], Any], examples: Any, chunk_size: int | None) -> Any:
  """``chunk_fn`` over ``examples`` cut into chunks of ``chunk_size`` (the last one
  padded by repeating its final example, whose rows are dropped); stacked rows."""
  n = num_examples("examples", examples)
  c = _chunk("chunk_size", chunk_size, n)
  pad = -n % c
  padded = jax.tree.map(lambda x: jnp.concatenate([x, jnp.repeat(x[-1:], pad, 0)]), examples)
  chunks = jax.tree.map(lambda x: x.reshape(-1, c, *x.shape[1:]), padded)
  out = jax.lax.map(chunk_fn, chunks)
  return jax.tree.map(lambda x: x.reshape(-1, *x.shape[2:])[:n], out)


def map_examples(f: Callable[[Any], Any], examples: Any, chunk_size: int | None) -> Any:
  """``vmap(f)`` over ``examples``, ``chunk_size`` at a time; stacked results."""
  return map_chunks(jax.vmap(f), examples, chunk_size)


def flat_grad_fn(fn: ExampleFn) -> Callable[[Any, Any], jax.Array]:
  """``(params, example) -> ravel(grad fn)``: one example's gradient as a flat vector."""
  g = jax.grad(fn)
  return lambda p, example: ravel_pytree(g(p, example))[0]


def per_example_gradients(
  fn: ExampleFn, params: Any, examples: Any, *, chunk_size: int | None = None
) -> jax.Array:
  """``[N, d]``: row i is the gradient of ``fn(params, example_i)``, flattened like
  ``jax.flatten_util.ravel_pytree(params)``."""
  g = flat_grad_fn(fn)
  return map_examples(lambda e: g(params, e), examples, chunk_size)


def _block(key: jax.Array, i: jax.Array, rows: int, k: int, kind: str, dtype) -> jax.Array:
  sub = jax.random.fold_in(key, i)
  if kind == "rademacher":
    return rademacher(sub, (rows, k), dtype)
  return jax.random.normal(sub, (rows, k), dtype)


BLOCK_ENTRIES = 2**24  # the default block of P: 64 MiB in float32


def check_projection(dim: int, kind: str, block_size: int | None) -> None:
  _checks.integer("dim", dim, minimum=1)
  _checks.one_of("kind", kind, PROJECTIONS)
  if block_size is not None:
    _checks.integer("block_size", block_size, minimum=1)


def project(
  x: jax.Array,
  key: jax.Array,
  dim: int,
  *,
  kind: str = "rademacher",
  block_size: int | None = None,
) -> jax.Array:
  """``x @ P / sqrt(dim)`` for a ``d x dim`` random ``P`` regenerated per block of rows.

  Args:
    x: ``[..., d]`` rows to project.
    key: the projection's key: the same key gives the same ``P`` for every
      call, so train and test rows projected separately live in one space.
    dim: the projected dimension k.
    kind: ``"rademacher"`` (+-1 entries) or ``"normal"``.
    block_size: rows of ``P`` generated at once; peak memory ``block_size * dim``
      entries. Default: all d rows when ``d * dim <= 2^24`` (one matmul),
      else ``2^24 // dim`` rows per block.
  """
  check_projection(dim, kind, block_size)
  _checks.is_key("key", key)
  x = jnp.asarray(x)
  d = x.shape[-1]
  b = min(d if d * dim <= BLOCK_ENTRIES else max(1, BLOCK_ENTRIES // dim), d)
  b = b if block_size is None else min(block_size, d)
  scale = jnp.sqrt(jnp.asarray(dim, x.dtype))
  if b == d:
    return (x @ _block(key, jnp.asarray(0), d, dim, kind, x.dtype)) / scale
  nblocks = -(-d // b)
  xp = jnp.pad(x, [(0, 0)] * (x.ndim - 1) + [(0, nblocks * b - d)])
  xb = jnp.moveaxis(xp.reshape(*x.shape[:-1], nblocks, b), -2, 0)  # [nblocks, ..., b]

  def body(acc, args):
    i, xi = args
    return acc + xi @ _block(key, i, b, dim, kind, x.dtype), None

  init = jnp.zeros((*x.shape[:-1], dim), x.dtype)
  out, _ = jax.lax.scan(body, init, (jnp.arange(nblocks), xb))
  return out / scale


def gradient_features(
  fn: ExampleFn,
  params: Any,
  examples: Any,
  *,
  key: jax.Array | None = None,
  dim: int | None = None,
  kind: str = "rademacher",
  chunk_size: int | None = None,
  block_size: int | None = None,
  transform: Callable[[jax.Array], jax.Array] | None = None,
) -> jax.Array:
  """Per-example gradients of ``fn``, optionally transformed and projected, chunk by chunk.

  Returns ``[N, d]`` without ``dim`` and ``[N, dim]`` with it; with ``dim``
  only one chunk's ``[chunk_size, d]`` gradients exist at a time.

  Args:
    transform: applied to each flat gradient before projection (e.g.
      :func:`adam_transform` for LESS).
  """
  if dim is not None:
    check_projection(dim, kind, block_size)
    if key is None:
      raise ValueError("key: expected a typed key from jax.random.key when dim is given, got None")
    _checks.is_key("key", key)
  g = flat_grad_fn(fn)
  tf = (lambda v: v) if transform is None else transform

  rows = jax.vmap(lambda example: tf(g(params, example)))
  if dim is None:
    return map_chunks(rows, examples, chunk_size)
  return map_chunks(
    lambda ch: project(rows(ch), key, dim, kind=kind, block_size=block_size), examples, chunk_size
  )


def adam_transform(
  mu: Any, nu: Any, *, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8
) -> Callable[[jax.Array], jax.Array]:
  """LESS's Adam feature of a flat gradient g at a checkpoint with Adam moments (mu, nu).

  ``m = b1 mu + (1 - b1) g``, ``v = b2 nu + (1 - b2) g^2``, feature
  ``m / sqrt(v + eps)``: the official ``obtain_gradients_with_adam`` (eps
  inside the square root, no bias correction). ``mu`` and ``nu`` are pytrees
  like the params (e.g. ``optax.ScaleByAdamState.mu / .nu``) or flat vectors.
  """
  m0 = ravel_pytree(mu)[0]
  v0 = ravel_pytree(nu)[0]

  def tf(g):
    m = b1 * m0 + (1 - b1) * g
    v = b2 * v0 + (1 - b2) * g * g
    return m / jnp.sqrt(v + eps)

  return tf


def normalize_rows(x: jax.Array, eps: float = 1e-12) -> jax.Array:
  """Rows scaled to unit norm (``torch.nn.functional.normalize(x, dim=1)``)."""
  return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), eps)
