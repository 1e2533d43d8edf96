"""EK-FAC scores by the factored per-layer contraction: no per-example gradient is formed.

For a layer ``y_t = a_t W`` (flax Dense, DenseGeneral, Embed or Conv, with
the bias as W's last row and a 1 appended to ``a``), a train example's
gradient of W is ``G = sum_t a_t g_t^T`` (``a_t`` the layer's input rows,
``g_t`` the loss's gradients at its outputs, one row per token; see
:mod:`gradlab.curvature.capture`). EK-FAC's inverse is block diagonal by
layer, so a query preconditioned by it is one matrix ``Q_l`` per layer and
its score against the train example is

    s = sum_l <Q_l, G_l> = sum_l sum_t a_t^T Q_l g_t

(kronfluence's ``qio,bti,bto->qb``). The contraction is evaluated from the
captured rows in the cheapest order (``jnp.einsum`` picks it), so a chunk's
``[c, d]`` gradients never exist; the per-layer terms are the per-module scores.

**Low-rank queries.** With ``query_rank = r`` each ``Q_l`` is replaced by its
best rank-r approximation ``U_r S_r V_r^T`` (SVD), and the score by
``sum_t (a_t^T U_r S_r)(V_r^T g_t)``: ``r (d_in + d_out)`` numbers per query
and layer instead of ``d_in d_out``. The error of one score is bounded by
Cauchy-Schwarz: ``|<Q_l - Q_r, G_l>| <= ||Q_l - Q_r||_F ||G_l||_F``, with
``||Q_l - Q_r||_F = sqrt(sum_{k > r} sigma_k^2)``; :func:`low_rank_queries`
returns that relative truncation error ``||Q_l - Q_r||_F / ||Q_l||_F`` per
query and layer.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

from gradlab.curvature import capture
from gradlab.curvature.kronecker import KroneckerFactors, Spec, check_capture, per_example_rows
from gradlab.influence import stream


def layer_queries(factors: KroneckerFactors, params: Any, queries: jax.Array) -> dict:
  """Flat queries ``[m, d]`` as ``{layer: [m, d_in (+1), d_out]}`` (the bias as the last row)."""
  _, unravel = ravel_pytree(params)
  leaves = jax.tree.leaves(jax.vmap(unravel)(queries))
  out = {}
  for l in factors.layers:
    k = leaves[l.kernel_index]
    x = k.reshape(k.shape[0], l.d_in, l.d_out)
    if l.bias:
      x = jnp.concatenate([x, leaves[l.bias_index].reshape(-1, 1, l.d_out)], axis=1)
    out[l.name] = x
  return out


def low_rank_queries(q: dict, rank: int) -> tuple[dict, dict]:
  """Each layer's queries ``[m, i, o]`` at rank ``min(rank, i, o)``: ``({layer: (U S [m, i, r],
  V [m, o, r])}, {layer: relative Frobenius truncation error [m]})``."""
  factors, errors = {}, {}
  for name, x in q.items():
    u, s, vt = jnp.linalg.svd(x, full_matrices=False)
    r = min(rank, s.shape[-1])
    factors[name] = (u[..., :r] * s[..., None, :r], jnp.swapaxes(vt[..., :r, :], -1, -2))
    total = jnp.sum(s**2, -1)
    errors[name] = jnp.sqrt(jnp.sum(s[..., r:] ** 2, -1) / jnp.where(total > 0, total, 1))
  return factors, errors


def _spec(loss_fn: Callable, params: Any, example: Any, factors: KroneckerFactors) -> Spec:
  calls = capture.discover(loss_fn, params, example)
  names = tuple(l.name for l in factors.layers)
  keep = tuple(c.name in names for c in calls)
  missing = set(names) - {c.name for c in calls}
  if missing:
    raise ValueError(
      f"factors: layer {sorted(missing)[0]!r} is not called by loss_fn on the train examples"
    )
  return Spec(loss_fn, False, calls, keep, names, None, "expand")


def influence(
  loss_fn: Callable,
  params: Any,
  train: Any,
  factors: KroneckerFactors,
  queries: Callable[[], jax.Array],
  *,
  n: int,
  chunk_size: int,
  per_module: bool,
  query_rank: int | None,
  path: Any,
  callback: Callable[[int, int], None] | None,
  tag: str,
  identity: tuple,
) -> Any:
  """``influence(solver=ekfac_solver())``'s scores from the preconditioned flat ``queries()``."""
  first = jax.tree.map(lambda x: x[0], train)
  spec = _spec(loss_fn, params, first, factors)
  if not any(isinstance(x, jax.core.Tracer) for x in jax.tree.leaves((params, first))):
    check_capture(spec, factors.layers, params, first, None)  # eager only, as in the fit

  def split(p, flat):  # reads only the factors' layer layout, no array of theirs
    q = layer_queries(factors, p, flat)
    return q if query_rank is None else low_rank_queries(q, query_rank)[0]

  make = lambda: jax.jit(split)(params, queries())  # noqa: E731 - one program, not one per op

  def block(args, chunk):
    p, q = args
    rows = per_example_rows(spec, chunk, jnp.asarray(0), p, None)
    out = {}
    for name, (a, g, _) in rows.items():
      if query_rank is None:
        s = jnp.einsum("mio,cti,cto->cm", q[name], a, g, optimize=True)
      else:
        us, v = q[name]
        # the cheap order, spelled out: r (d_in + d_out) per token and query
        left = jnp.einsum("cti,mir->cmtr", a, us)
        right = jnp.einsum("cto,mor->cmtr", g, v)
        s = jnp.sum(left * right, axis=(2, 3))
      out[name] = s / n
    if per_module:
      return out
    return sum(out.values())

  return stream.run(
    block, params, make, train, chunk_size, path, f"factored|{query_rank}|{tag}",
    identity=identity, callback=callback,
  )  # fmt: skip
