"""Sparse projectors (SJLT, random masks) and LoGra's Kronecker-projected gradient features.

Every projector here is deterministic in its key: the same key, input width
and output width give the same map, so train and test rows projected in
separate calls share one space, and each works under ``jit`` (the widths are
static). Each keeps inner products unbiased, ``E[<Px, Py>] = <x, y>``.

* :func:`sjlt`: the sparse Johnson-Lindenstrauss transform in Kane and
  Nelson's block construction ("Sparser Johnson-Lindenstrauss Transforms",
  2014): the ``dim`` outputs are cut into ``s = nonzeros`` blocks and every
  input coordinate is added, with a random sign and scaled by ``1 / sqrt(s)``,
  to one uniformly drawn bucket of each block. The ``d x dim`` matrix is never
  formed: each block is one scatter-add of the signed rows into their hashed
  buckets, from one random 32-bit word per input coordinate regenerated from
  ``fold_in(key, block)`` (its low bit the sign, the other 31 bits modulo the
  block's size ``m`` the bucket: uniform up to a relative ``m / 2^31``, which
  cannot bias inner products, only the signs enter the mean), so the cost is
  ``s`` passes over the rows, not ``dim``. With blocks of equal size
  ``dim / s`` the projected inner product of ``x`` and ``y`` has variance
  ``(|x|^2 |y|^2 + (x . y)^2 - 2 sum_j x_j^2 y_j^2) / dim``, at most ``2 / dim``
  for unit vectors (a dense Gaussian projection's is the same without the
  ``-2 sum`` term); with unequal blocks (``s`` not dividing ``dim``) it is that
  numerator times ``sum_b (1 / m_b) / s^2`` for blocks of sizes ``m_b``.
* :func:`random_mask`: ``dim`` of the ``d`` coordinates drawn uniformly
  without replacement, scaled by ``sqrt(d / dim)``. The projected inner product
  has variance ``(d - dim) / (dim (d - 1)) (d sum_j x_j^2 y_j^2 - (x . y)^2)``
  (a without-replacement sample mean), which is small for vectors spread over
  many coordinates and as large as ``(d - dim) / dim`` for a coordinate vector:
  no Johnson-Lindenstrauss guarantee, but no arithmetic beyond a gather.
* LoGra (Choe et al., "What is Your Data Worth to GPT? LLM-Scale Data Valuation
  with Influence Functions", 2024): the gradient of a layer ``y = a W (+ b)``
  on one example is ``G = sum_t a_t g_t^T`` (``[d_in (+1), d_out]``, the bias
  as the last row; ``gradlab.curvature.capture``), and LoGra projects it by
  the Kronecker product of two small Gaussian matrices, ``P_in^T G P_out``,
  computed as ``(A P_in)^T (S P_out)`` from the per-token rows so the layer's
  gradient is never formed. :func:`logra_features` concatenates the layers'
  ``r_in r_out`` numbers per example; :func:`logra` scores with the projected
  empirical Fisher.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

from gradlab import _checks
from gradlab.curvature import capture
from gradlab.curvature import kronecker as _kron
from gradlab.curvature.dataset import num_examples
from gradlab.influence.features import map_chunks
from gradlab.influence.functions import check_example_loss, check_sets

ExampleLoss = Callable[[Any, Any], jax.Array]


def _rows(name: str, x: Any) -> jax.Array:
  x = jnp.asarray(x)
  if x.ndim == 0:
    raise ValueError(f"{name}: expected rows of shape [..., d], got a scalar")
  if not jnp.issubdtype(x.dtype, jnp.inexact):
    x = x.astype(jnp.result_type(float))
  return x


def sjlt(x: Any, key: jax.Array, dim: int, *, nonzeros: int = 4) -> jax.Array:
  """``[..., d] -> [..., dim]``: a sparse Johnson-Lindenstrauss transform of the rows of ``x``.

  Output block ``b`` (of ``nonzeros`` blocks, the outputs
  ``[b dim // s, (b + 1) dim // s)``) receives every input coordinate ``j`` in
  one bucket drawn uniformly in the block, with a random sign; the sum is
  scaled by ``1 / sqrt(nonzeros)``, so the result is ``x @ S`` for a
  ``d x dim`` matrix ``S`` whose every row has exactly ``nonzeros`` entries
  ``+-1 / sqrt(nonzeros)``, one per block. Buckets and signs come from
  ``fold_in(key, b)``; ``S`` is never formed (one scatter-add per block).
  Inner products are unbiased, with variance at most ``2 / dim`` for unit
  vectors (the module docstring has the exact formula); ``nonzeros=1`` is the
  CountSketch.

  Args:
    x: ``[..., d]`` rows (any leading shape).
    key: a typed key from ``jax.random.key``; the same key (with the same
      ``d``, ``dim`` and ``nonzeros``) gives the same map in every call.
    dim: the projected dimension.
    nonzeros: nonzero entries per input coordinate, at most ``dim``.
  """
  dim = _checks.integer("dim", dim, minimum=1)
  s = _checks.integer("nonzeros", nonzeros, minimum=1)
  if s > dim:
    raise ValueError(f"nonzeros: expected an integer <= dim ({dim}), got {s}")
  _checks.is_key("key", key)
  return _sjlt(_rows("x", x), key, dim=dim, nonzeros=s)


@functools.partial(jax.jit, static_argnames=("dim", "nonzeros"))
def _sjlt(x: jax.Array, key: jax.Array, *, dim: int, nonzeros: int) -> jax.Array:
  d, s = x.shape[-1], nonzeros

  def block(b, out):  # a loop, not unrolled: one sampler to compile, O(d) indices at a time
    lo, hi = b * dim // s, (b + 1) * dim // s
    bits = jax.random.bits(jax.random.fold_in(key, b), (d,), jnp.uint32)
    bucket = lo + ((bits >> 1) % (hi - lo).astype(jnp.uint32)).astype(jnp.int32)
    sign = 1 - 2 * (bits & 1).astype(x.dtype)
    return out.at[..., bucket].add(x * sign)

  out = jax.lax.fori_loop(0, s, block, jnp.zeros((*x.shape[:-1], dim), x.dtype))
  return out / jnp.sqrt(jnp.asarray(s, x.dtype))


def random_mask(x: Any, key: jax.Array, dim: int) -> jax.Array:
  """``[..., d] -> [..., dim]``: ``dim`` coordinates drawn uniformly without replacement
  (in increasing order), scaled by ``sqrt(d / dim)`` so inner products are unbiased.

  The same key (and ``d``, ``dim``) keeps the same coordinates in every call. The
  variance of a projected inner product is in the module docstring: small for
  spread-out vectors, up to ``(d - dim) / dim`` for a vector on one coordinate.

  Args:
    x: ``[..., d]`` rows.
    key: a typed key from ``jax.random.key``.
    dim: coordinates kept, at most ``d``.
  """
  dim = _checks.integer("dim", dim, minimum=1)
  _checks.is_key("key", key)
  x = _rows("x", x)
  d = x.shape[-1]
  if dim > d:
    raise ValueError(f"dim: expected an integer <= d = {d} (the last axis of x), got {dim}")
  return _random_mask(x, key, dim=dim)


@functools.partial(jax.jit, static_argnames=("dim",))
def _random_mask(x: jax.Array, key: jax.Array, *, dim: int) -> jax.Array:
  d = x.shape[-1]
  idx = jnp.sort(jax.random.choice(key, d, (dim,), replace=False))
  return x[..., idx] * jnp.sqrt(jnp.asarray(d / dim, x.dtype))


def _rank(rank: Any) -> tuple[int, int]:
  if isinstance(rank, (tuple, list)):
    if len(rank) != 2:
      raise ValueError(f"rank: expected an integer >= 1 or a pair (r_in, r_out), got {rank!r}")
    return _checks.integer("rank", rank[0], minimum=1), _checks.integer("rank", rank[1], minimum=1)
  r = _checks.integer("rank", rank, minimum=1)
  return r, r


def _matrices(key: jax.Array, d_in: int, d_out: int, rank: tuple[int, int], dtype) -> tuple:
  """``P_in [d_in, r_in]`` and ``P_out [d_out, r_out]`` with independent normal entries of
  variance ``1 / r``: one draw of ``d_in r_in + d_out r_out`` normals from ``key`` (one
  sampler per layer: each is a sizeable program to compile), ``P_in`` its first
  ``d_in r_in`` entries row-major, ``P_out`` the rest."""
  r_in, r_out = rank
  z = jax.random.normal(key, (d_in * r_in + d_out * r_out,), dtype)
  p_in = z[: d_in * r_in].reshape(d_in, r_in) / jnp.sqrt(jnp.asarray(r_in, dtype))
  p_out = z[d_in * r_in :].reshape(d_out, r_out) / jnp.sqrt(jnp.asarray(r_out, dtype))
  return p_in, p_out


def _kron_project(a: jax.Array, g: jax.Array, p_in: jax.Array, p_out: jax.Array) -> jax.Array:
  u = a @ p_in.astype(a.dtype)  # [..., T, r_in]
  v = g @ p_out.astype(g.dtype)  # [..., T, r_out]
  f = jnp.einsum("...ti,...to->...io", u, v)
  return f.reshape(*f.shape[:-2], -1)


def logra_project(a: Any, g: Any, key: jax.Array, *, rank: Any = 16) -> jax.Array:
  """One layer's LoGra feature from its per-token rows: ``vec(P_in^T (a^T g) P_out)``.

  ``a [..., T, d_in]`` and ``g [..., T, d_out]`` are the rows of
  ``gradlab.curvature.capture.rows`` (the layer's gradient is ``a^T g``);
  ``P_in [d_in, r_in]`` and ``P_out [d_out, r_out]`` have independent
  ``N(0, 1 / r)`` entries (one draw of ``d_in r_in + d_out r_out`` normals from
  ``key``: ``P_in`` its first ``d_in r_in`` entries row-major, ``P_out`` the rest),
  so ``E[(P_in (x) P_out)(P_in (x) P_out)^T] = I`` and inner products of the
  features are unbiased estimates of those of the gradients. Computed as
  ``(a P_in)^T (g P_out)``, never forming ``a^T g``; the ``r_in x r_out`` result
  is flattened row-major, which is ``(P_in (x) P_out)^T vec(a^T g)`` for the
  row-major ``vec``. Returns ``[..., r_in * r_out]``.

  Args:
    rank: ``r`` (both sides) or a pair ``(r_in, r_out)``.
  """
  ranks = _rank(rank)
  _checks.is_key("key", key)
  a, g = _rows("a", a), _rows("g", g)
  if a.ndim < 2 or a.shape[:-1] != g.shape[:-1]:
    raise ValueError(
      f"g: expected [..., T, d_out] rows with the tokens of a {a.shape[:-1]}, got {g.shape}"
    )
  return _logra_project(a, g, key, rank=ranks)


@functools.partial(jax.jit, static_argnames=("rank",))
def _logra_project(a: jax.Array, g: jax.Array, key: jax.Array, *, rank: tuple) -> jax.Array:
  p_in, p_out = _matrices(key, a.shape[-1], g.shape[-1], rank, jnp.result_type(a, g))
  return _kron_project(a, g, p_in, p_out)


class _Plan(NamedTuple):
  spec: _kron.Spec
  layers: tuple[_kron.Layer, ...]  # the kept layers, in call order
  index: tuple[int, ...]  # each kept layer's index among all the covered layers loss_fn calls


def _check_uncovered(params: Any, layers: tuple[_kron.Layer, ...], uncovered: str) -> None:
  leaves, _ = jax.tree_util.tree_flatten_with_path(params)
  used = {i for l in layers for i in (l.kernel_index, l.bias_index) if i >= 0}
  rest = [i for i in range(len(leaves)) if i not in used]
  if rest and uncovered == "error":
    shown = "/".join(_kron.key_path(leaves[rest[0]][0])) or "a bare array"
    more = f" and {len(rest) - 1} more" if len(rest) > 1 else ""
    raise ValueError(
      f"params: LoGra covers the flax Dense, DenseGeneral, Embed and Conv layers loss_fn calls; "
      f"{shown!r}{more} is outside them (uncovered='ignore' leaves such parameters out of the "
      "features)"
    )


def _plan(
  loss_fn: ExampleLoss, params: Any, examples: Any, layers: Any, uncovered: str, name: str
) -> _Plan:
  _checks.one_of("uncovered", uncovered, ("error", "ignore"))
  num_examples(name, examples)
  example = jax.tree.map(lambda x: x[0], examples)
  check_example_loss(loss_fn, params, examples, name)
  calls = capture.discover(loss_fn, params, example)
  if not calls:
    raise ValueError(
      "loss_fn: no flax.linen Dense, DenseGeneral, Embed or Conv call was seen; LoGra projects "
      "the gradients of those layers (gradlab.curvature.capture)"
    )
  capture.check_shapes(calls)
  found = tuple(dict.fromkeys(c.name for c in calls))
  if layers is None:
    names = found
  else:
    wanted = (layers,) if isinstance(layers, str) else tuple(layers)
    missing = [n for n in wanted if n not in found]
    if missing:
      raise ValueError(
        f"layers: {missing[0]!r} is not a covered layer; loss_fn calls {list(found)}"
      )
    names = tuple(n for n in found if n in wanted)
    if not names:
      raise ValueError("layers: expected at least one layer name, got none")
  keep = tuple(c.name in names for c in calls)
  spec = _kron.Spec(loss_fn, False, calls, keep, names, None, "expand")
  mapped = _kron.map_layers(params, calls, names, "ignore")
  _check_uncovered(params, mapped, uncovered)
  plan = _Plan(spec, mapped, tuple(found.index(n) for n in names))
  if not any(isinstance(x, jax.core.Tracer) for x in jax.tree.leaves((params, example))):
    _kron.check_capture(
      plan.spec, plan.layers, params, example, None, "LoGra would project the wrong gradient"
    )
  return plan


def _plan_matrices(plan: _Plan, key: jax.Array, rank: tuple[int, int]) -> dict:
  out = {}
  dtype = jnp.result_type(float)  # the captured rows' dtype (gradlab.curvature.capture)
  for l, i in zip(plan.layers, plan.index):
    out[l.name] = _matrices(jax.random.fold_in(key, i), l.d_in + l.bias, l.d_out, rank, dtype)
  return out


def _features_of(plan: _Plan, params: Any, examples: Any, mats: dict, chunk_size) -> jax.Array:
  def chunk_fn(batch):
    rows = _kron.per_example_rows(plan.spec, batch, jnp.asarray(0), params, None)
    blocks = [_kron_project(rows[n][0], rows[n][1], *mats[n]) for n in plan.spec.names]
    return jnp.concatenate(blocks, axis=-1)

  return map_chunks(chunk_fn, examples, chunk_size)


@functools.partial(jax.jit, static_argnames=("plan", "rank"))
def _projection_pass(key, *, plan, rank):
  mats = _plan_matrices(plan, key, rank)
  return tuple(mats[l.name] for l in plan.layers)  # a dict would come back sorted by name


@functools.partial(jax.jit, static_argnames=("plan", "rank", "chunk_size"))
def _features_pass(examples, params, key, *, plan, rank, chunk_size):
  return _features_of(plan, params, examples, _plan_matrices(plan, key, rank), chunk_size)


@functools.partial(jax.jit, static_argnames=("plan", "rank", "chunk_size"))
def _logra_pass(train, test, params, key, damping, *, plan, rank, chunk_size):
  mats = _plan_matrices(plan, key, rank)
  phi = _features_of(plan, params, train, mats, chunk_size)  # [n, k]
  f_test = _features_of(plan, params, test, mats, chunk_size)  # [t, k]
  n, k = phi.shape
  fisher = phi.T @ phi / n
  if damping is None:
    damping = 0.1 * jnp.trace(fisher) / k  # 0.1 x the mean eigenvalue
  damped = fisher + jnp.asarray(damping, fisher.dtype) * jnp.eye(k, dtype=fisher.dtype)
  x = jax.scipy.linalg.solve(damped, f_test.T, assume_a="pos")  # [k, t]
  return x.T @ phi.T / n


def _chunk_size(chunk_size: int | None) -> int | None:
  if chunk_size is None:
    return None
  return _checks.integer("chunk_size", chunk_size, minimum=1)


_LAYER_ARGS = """
    loss_fn: ``(params, example) -> scalar``, one example's loss (no batch axis),
      as for ``gradlab.curvature.ekfac``; the flax.linen Dense, DenseGeneral,
      Embed and Conv layers it calls are captured (``gradlab.curvature.capture``).
      A layer called several times (shared weights) sums the tokens of every call.
    params: the point (the model's variables as ``loss_fn`` takes them).
    key: a typed key from ``jax.random.key``. The layer called ``i``-th (in
      the order ``loss_fn`` first calls the covered layers, kept or not) draws
      its matrices from ``fold_in(key, i)``, so a layer's block of features does
      not depend on which other layers are kept.
    rank: ``r`` or a pair ``(r_in, r_out)``: each layer's feature has ``r_in * r_out``
      entries (``P_in [d_in (+1), r_in]``, ``P_out [d_out, r_out]``, normal entries
      of variance ``1 / r``; any ``r >= 1``, larger than the layer too).
    layers: the layer names to keep (e.g. ``"block_0/attn/query"``; default all).
    uncovered: ``"error"`` (default) refuses parameters outside the kept layers;
      ``"ignore"`` leaves them out of the features.
"""


def logra_projection(
  loss_fn: ExampleLoss,
  params: Any,
  examples: Any,
  key: jax.Array,
  *,
  rank: Any = 16,
  layers: Any = None,
  uncovered: str = "error",
) -> dict[str, tuple[jax.Array, jax.Array]]:
  """The explicit matrices of :func:`logra_features`: ``{layer: (P_in, P_out)}``.

  In the order of the feature blocks: the block of layer ``l`` is
  ``vec(P_in^T G_l P_out)`` (row-major, ``r_in * r_out`` columns), ``G_l`` the
  example's ``[d_in (+1), d_out]`` gradient of the layer's kernel
  (``kernel.reshape(d_in, d_out)``) with the bias gradient as its last row.
  """
  ranks = _rank(rank)
  _checks.is_key("key", key)
  plan = _plan(loss_fn, params, examples, layers, uncovered, "examples")
  mats = _projection_pass(key, plan=plan, rank=ranks)
  return {l.name: m for l, m in zip(plan.layers, mats)}


def logra_features(
  loss_fn: ExampleLoss,
  params: Any,
  examples: Any,
  key: jax.Array,
  *,
  rank: Any = 16,
  chunk_size: int | None = None,
  layers: Any = None,
  uncovered: str = "error",
) -> jax.Array:
  """``[N, sum_l r_in r_out]``: LoGra's Kronecker-projected per-example gradients.

  Per example and kept layer, ``vec(P_in^T G P_out)`` computed as
  ``(A P_in)^T (S P_out)`` from the layer's captured input rows ``A [T, d_in (+1)]``
  and output-gradient rows ``S [T, d_out]`` (:func:`logra_projection` gives the
  matrices; ``G = A^T S`` is never formed); the layers' blocks concatenated in
  call order (layer ``i``'s block is :func:`logra_project` of its rows with key
  ``fold_in(key, i)``). Inner products of features are unbiased estimates of those of
  the kept layers' gradients. Computed ``chunk_size`` examples at a time (one
  chunk's layer rows in memory; default all at once). Called eagerly, it first
  checks on one example that the captured ``A^T S`` is each layer's gradient,
  so a weight also used outside its layer's call is refused.
  """
  ranks = _rank(rank)
  _checks.is_key("key", key)
  chunk_size = _chunk_size(chunk_size)
  plan = _plan(loss_fn, params, examples, layers, uncovered, "examples")
  return _features_pass(examples, params, key, plan=plan, rank=ranks, chunk_size=chunk_size)


def logra(
  loss_fn: ExampleLoss,
  params: Any,
  train: Any,
  test: Any,
  key: jax.Array,
  *,
  rank: Any = 16,
  damping: Any = None,
  chunk_size: int | None = None,
  layers: Any = None,
  uncovered: str = "error",
) -> jax.Array:
  """``[len(test), len(train)]``: LoGra's influence on the projected gradients.

  ``(1/n) f_test (F + damping I)^-1 Phi^T`` with ``Phi [n, k]`` the train
  features and ``f_test [t, k]`` the test features of :func:`logra_features`
  (one key, so one space), and ``F = Phi^T Phi / n`` the projected empirical
  Fisher, in full (``k x k`` across layers; it is ``(P^T G^T G P) / n`` for
  the block-diagonal Kronecker projection ``P``). Positive where the train
  example helps the test example, as every score in ``gradlab.influence``.
  With square projections (``r_in = d_in (+1)`` and ``r_out = d_out`` for
  every kept layer, e.g. one layer kept with ``rank=(d_in + 1, d_out)``) and
  ``damping=0`` the projection cancels: the scores are the unprojected
  empirical-Fisher influence ``(1/n) g_test (G^T G / n)^-1 g_train^T`` on the
  kept layers' parameters, whatever the key.
  """
  ranks = _rank(rank)
  _checks.is_key("key", key)
  if damping is not None:
    _checks.positive("damping", damping, allow_zero=True)
  chunk_size = _chunk_size(chunk_size)
  check_sets(train, test)
  plan = _plan(loss_fn, params, train, layers, uncovered, "train")
  return _logra_pass(
    train, test, params, key, damping, plan=plan, rank=ranks, chunk_size=chunk_size
  )


def _args(*extra: str) -> str:
  return "\n  Args:" + _LAYER_ARGS + "".join(f"    {e}\n" for e in extra) + "  "


logra_projection.__doc__ += _args(
  "examples: stacked examples (leading axis N); only their shapes are read."
)
logra_features.__doc__ += _args(
  "examples: stacked examples (a pytree, leading axis N).",
  "chunk_size: examples per step (default all at once).",
)
logra.__doc__ += _args(
  "train: stacked train examples (leading axis n).",
  "test: stacked test examples, structured and shaped like ``train``'s.",
  "damping: added to F's diagonal. Default (``None``): 0.1 x the mean eigenvalue of F,\n"
  "      ``0.1 trace(F) / k`` (the heuristic of ``KroneckerFactors.default_damping``, here\n"
  "      over the whole projected Fisher). ``0`` needs F nonsingular (``n >= k`` features\n"
  "      that span).",
  "chunk_size: examples per step of the feature passes (default all at once).",
)
