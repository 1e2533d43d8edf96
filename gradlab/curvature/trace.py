"""Hutchinson and Hutch++ estimators of the Hessian's trace and diagonal.

References: Hutchinson (1990); Meyer, Musco, Musco, Woodruff, "Hutch++:
Optimal Stochastic Trace Estimation" (SOSA 2021).

The matvec forms (``trace``, ``diagonal``, ``hutch_plus_plus``) take any
symmetric linear map over pytrees; the loss forms (``hessian_trace``,
``hessian_diagonal``) are the same estimators on the Hessian's map from
``make_hvp``. Probes are evaluated ``probe_batch`` at a time with ``vmap`` (a
probe batch bounds memory: its activations are held at once) and the
batches one after another with ``lax.map``. Nothing is jitted inside: the
caller decides. A stream-backed matvec (``gradlab.curvature.dataset``, marked
``from_python``) gets the same probes, the same keys, one at a time in a
Python loop.

Which to use: Hutchinson (Rademacher) for indefinite Hessians and small
budgets; Hutch++ when the spectrum is dominated by a few large eigenvalues
(typical of trained networks' Hessians near a minimum) and the budget is
large enough to capture them (its error falls as 1/m instead of 1/sqrt(m)
for PSD matrices; on an indefinite 467-parameter Hessian it overtook
Hutchinson only from about 96 products).
"""

from __future__ import annotations

import math
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax.flatten_util import ravel_pytree

from gradlab import _checks
from gradlab.curvature.dataset import from_python, hessian_matvec, python_map
from gradlab.curvature.probes import Sampler, check_sampler, sampler_signs

Matvec = Callable[[Any], Any]


class TraceEstimate(NamedTuple):
  estimate: jax.Array  # the estimate of the trace
  stderr: jax.Array  # its standard error (from the spread of the probes)
  num_probes: int  # matrix-vector products used


class DiagonalEstimate(NamedTuple):
  estimate: Any  # pytree like params: the mean of v * (A v)
  stderr: Any  # pytree like params: per-entry standard errors
  num_probes: int


def _check_counts(num_probes: int, probe_batch: int) -> int:
  num_probes = _checks.integer("num_probes", num_probes, minimum=1)
  probe_batch = _checks.integer("probe_batch", probe_batch, minimum=1)
  return min(probe_batch, num_probes)


def _probe_values(
  fn: Callable[[Any], Any],
  like: Any,
  key: jax.Array,
  num_probes: int,
  probe_batch: int,
  sampler: Sampler,
  python: bool = False,
) -> Any:
  """``fn(v)`` for ``num_probes`` probes v, stacked on a leading axis (a Python loop if
  ``python``: the same keys, one probe at a time)."""
  check_sampler(sampler)
  pb = _check_counts(num_probes, probe_batch)
  num_chunks = math.ceil(num_probes / pb)
  keys = jax.random.split(key, num_chunks * pb)
  if python:
    return python_map(lambda k: fn(sampler(k, like)), keys[:num_probes])
  keys = keys.reshape(num_chunks, pb, *key.shape)

  def chunk(ks):
    return jax.vmap(lambda k: fn(sampler(k, like)))(ks)

  out = jax.lax.map(chunk, keys)
  # [chunks, pb, ...] -> [num_probes, ...]; a partial last chunk's extras are dropped
  return jax.tree.map(lambda x: x.reshape(num_chunks * pb, *x.shape[2:])[:num_probes], out)


def trace(
  matvec: Matvec,
  like: Any,
  key: jax.Array,
  *,
  num_probes: int,
  probe_batch: int = 1,
  sampler: Sampler = sampler_signs,
) -> TraceEstimate:
  """Hutchinson's ``tr A ~ mean_i v_i^T A v_i`` with its standard error."""
  values = _probe_values(
    lambda v: optax.tree.vdot(v, matvec(v)),
    like,
    key,
    num_probes,
    probe_batch,
    sampler,
    from_python(matvec),
  )
  stderr = (
    jnp.std(values, ddof=1) / math.sqrt(num_probes)
    if num_probes > 1
    else jnp.full((), jnp.inf, values.dtype)
  )
  return TraceEstimate(jnp.mean(values), stderr, num_probes)


def diagonal(
  matvec: Matvec,
  like: Any,
  key: jax.Array,
  *,
  num_probes: int,
  probe_batch: int = 1,
  sampler: Sampler = sampler_signs,
) -> DiagonalEstimate:
  """``diag A ~ mean_i v_i * (A v_i)`` entrywise, with per-entry standard errors."""
  values = _probe_values(
    lambda v: jax.tree.map(jnp.multiply, v, matvec(v)),
    like,
    key,
    num_probes,
    probe_batch,
    sampler,
    from_python(matvec),
  )
  mean = jax.tree.map(lambda x: jnp.mean(x, 0), values)
  if num_probes > 1:
    stderr = jax.tree.map(lambda x: jnp.std(x, 0, ddof=1) / math.sqrt(num_probes), values)
  else:
    stderr = jax.tree.map(lambda x: jnp.full(x.shape[1:], jnp.inf, x.dtype), values)
  return DiagonalEstimate(mean, stderr, num_probes)


def hessian_trace(
  loss_fn: Callable[[Any, Any], jax.Array],
  params: Any,
  batch: Any,
  key: jax.Array,
  *,
  num_probes: int,
  probe_batch: int = 1,
  sampler: Sampler = sampler_signs,
  micro_batch: int | None = None,
) -> TraceEstimate:
  """Hutchinson estimate of ``tr H`` of ``loss_fn(., batch)`` at ``params``.

  Args:
    loss_fn: pure ``(params, batch) -> scalar``.
    params, batch: the point and the data (the batch may be sharded).
    key: PRNG key of the probes.
    num_probes: m >= 1 Hessian-vector products; the standard error falls as
      1/sqrt(m).
    probe_batch: probes evaluated at once with ``vmap``. Memory grows
      linearly with it (``benchmarks/trace_memory.py``: +26 MiB a probe on a
      1.9M-parameter MLP at batch 256). The default 1 was fastest on a CPU
      for wide models (32 probes on that MLP: 607 ms at 1 against 1134 ms at
      32); on an accelerator a larger batch fills the device better.
    sampler: ``(key, like) -> probe``: ``sampler_signs`` (default) or
      ``sampler_normal`` (see ``gradlab.curvature.probes``).
    micro_batch: given (or with a ``curvature.batches`` stream as ``batch``),
      ``batch`` is a dataset and the map is ``dataset_hvp``'s: the Hessian of
      the mean loss over all of it, ``micro_batch`` examples at a time, each
      product recomputed (memory of one micro-batch). Default: ``make_hvp``,
      linearized once over the whole batch.
  """
  _check_counts(num_probes, probe_batch)
  return trace(
    hessian_matvec(loss_fn, params, batch, micro_batch),
    params,
    key,
    num_probes=num_probes,
    probe_batch=probe_batch,
    sampler=sampler,
  )


def hessian_diagonal(
  loss_fn: Callable[[Any, Any], jax.Array],
  params: Any,
  batch: Any,
  key: jax.Array,
  *,
  num_probes: int,
  probe_batch: int = 1,
  sampler: Sampler = sampler_signs,
  micro_batch: int | None = None,
) -> DiagonalEstimate:
  """Hutchinson estimate of ``diag H`` (a pytree like ``params``); arguments as
  :func:`hessian_trace`."""
  _check_counts(num_probes, probe_batch)
  return diagonal(
    hessian_matvec(loss_fn, params, batch, micro_batch),
    params,
    key,
    num_probes=num_probes,
    probe_batch=probe_batch,
    sampler=sampler,
  )


def hutch_plus_plus(
  matvec: Matvec, like: Any, key: jax.Array, *, num_matvecs: int, sampler: Sampler = sampler_signs
) -> TraceEstimate:
  """Hutch++ with ``num_matvecs`` products (a multiple of 3, at least 3).

  A third of the products sketch the range: ``Q = orth(A S)``; a third give
  ``tr(Q^T A Q)`` exactly; the last third estimate the trace of the deflated
  remainder ``(I - QQ^T) A (I - QQ^T)`` by Hutchinson, whose spread gives the
  standard error. Memory: n x num_matvecs/3 floats for the sketch.
  """
  check_sampler(sampler)
  num_matvecs = _checks.integer("num_matvecs", num_matvecs, minimum=3)
  if num_matvecs % 3:
    raise ValueError(f"num_matvecs: expected a positive multiple of 3, got {num_matvecs!r}")
  k = num_matvecs // 3
  flat, unravel = ravel_pytree(like)
  n = flat.shape[0]
  if k > n:
    raise ValueError(f"num_matvecs: {num_matvecs} // 3 = {k} exceeds the dimension {n}")
  mv = lambda x: ravel_pytree(matvec(unravel(x)))[0]
  mm = jax.vmap(mv, in_axes=1, out_axes=1)  # A @ X for X of shape [n, k]
  if from_python(matvec):
    mm = lambda x: python_map(mv, x.T).T  # noqa: E731
  ks, kg = jax.random.split(key)
  # k probes from the sampler, as the columns of an [n, k] matrix
  draw = lambda kk: jax.vmap(lambda ki: ravel_pytree(sampler(ki, like))[0], out_axes=1)(
    jax.random.split(kk, k)
  )  # noqa: E731
  q, _ = jnp.linalg.qr(mm(draw(ks)))
  top = jnp.trace(q.T @ mm(q))
  g = draw(kg)
  g = g - q @ (q.T @ g)
  values = jnp.sum(g * mm(g), axis=0)  # k Hutchinson samples of the deflated trace
  stderr = jnp.std(values, ddof=1) / math.sqrt(k) if k > 1 else jnp.full((), jnp.inf)
  return TraceEstimate(top + jnp.mean(values), stderr, num_matvecs)
