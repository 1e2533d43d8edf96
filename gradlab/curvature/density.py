"""Stochastic Lanczos quadrature (SLQ) of the Hessian's eigenvalue density.

References: Lin, Saad, Yang, "Approximating spectral densities of large
matrices" (SIAM Review 2016); Ghorbani, Krishnan, Xiao, "An Investigation
into Neural Net Optimization via Hessian Eigenvalue Density" (ICML 2019);
PyHessian ``density``.

Each run starts Lanczos from a normalized random vector v; with T = U Θ U^T,
the nodes θ_k and weights τ_k = (e_1^T u_k)^2 form a Gauss quadrature of
v^T f(H) v / |v|^2, exact for polynomials f of degree < 2m, whose average over
runs estimates (1/n) tr f(H) = ∫ f dμ for the spectral measure μ. The
density is the quadrature smoothed by a Gaussian of width ``sigma``:
φ(t) = mean_runs sum_k τ_k N(t; θ_k, σ²). It integrates to 1 and its first
moments are the quadrature's (plus σ² in the second). The runs are a
``lax.map``, or a Python loop for a stream-backed matvec (marked
``from_python``, ``gradlab.curvature.dataset``).
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

from gradlab import _checks
from gradlab.curvature.dataset import from_python, hessian_matvec, python_map
from gradlab.curvature.lanczos import lanczos_tridiagonal, tridiagonal_matrix
from gradlab.curvature.probes import dimension


class SpectralDensity(NamedTuple):
  grid: jax.Array  # [grid_size] eigenvalue axis
  density: jax.Array  # [grid_size] smoothed density on the grid
  nodes: jax.Array  # [num_runs, m] quadrature nodes (Ritz values)
  weights: jax.Array  # [num_runs, m] quadrature weights (each run's sum to 1)
  sigma: jax.Array  # the Gaussian smoothing width


def quadrature(
  matvec: Callable[[Any], Any], like: Any, key: jax.Array, *, num_iterations: int, num_runs: int
) -> tuple[jax.Array, jax.Array]:
  """SLQ nodes and weights, [num_runs, num_iterations] each."""
  num_runs = _checks.integer("num_runs", num_runs, minimum=1)

  def one(k):
    t = lanczos_tridiagonal(matvec, like, k, num_iterations=num_iterations)
    theta, u = jnp.linalg.eigh(tridiagonal_matrix(t))
    return theta, u[0] ** 2

  keys = jax.random.split(key, num_runs)
  return python_map(one, keys) if from_python(matvec) else jax.lax.map(one, keys)


def spectral_density(
  matvec: Callable[[Any], Any],
  like: Any,
  key: jax.Array,
  *,
  num_iterations: int = 64,
  num_runs: int = 4,
  grid_size: int = 1000,
  sigma: float | None = None,
) -> SpectralDensity:
  """The smoothed SLQ eigenvalue density of a symmetric map.

  Args:
    num_iterations: Lanczos steps per run (capped at the dimension).
    num_runs: independent start vectors averaged.
    grid_size: points of the returned grid, which spans the nodes plus 6 sigma.
    sigma: smoothing width; default 1% of the nodes' range.
  """
  m = min(num_iterations, dimension(like))
  nodes, weights = quadrature(matvec, like, key, num_iterations=m, num_runs=num_runs)
  lo, hi = jnp.min(nodes), jnp.max(nodes)
  s = (
    jnp.maximum(0.01 * (hi - lo), 1e-6 * jnp.maximum(jnp.abs(hi), 1.0))
    if sigma is None
    else jnp.asarray(sigma, nodes.dtype)
  )
  grid = jnp.linspace(lo - 6 * s, hi + 6 * s, grid_size)
  kern = jnp.exp(-0.5 * ((grid[:, None, None] - nodes[None]) / s) ** 2) / (s * jnp.sqrt(2 * jnp.pi))
  density = jnp.mean(jnp.sum(kern * weights[None], axis=-1), axis=-1)
  return SpectralDensity(grid, density, nodes, weights, s)


def hessian_spectral_density(
  loss_fn: Callable[[Any, Any], jax.Array],
  params: Any,
  batch: Any,
  key: jax.Array,
  *,
  micro_batch: int | None = None,
  **kwargs,
) -> SpectralDensity:
  """``spectral_density`` of the Hessian of ``loss_fn(., batch)`` at ``params``.

  With ``micro_batch`` (or a ``curvature.batches`` stream as ``batch``) the
  Hessian is that of the mean loss over the dataset ``batch``, by
  ``dataset_hvp`` (see ``hessian_trace``).
  """
  matvec = hessian_matvec(loss_fn, params, batch, micro_batch)
  return spectral_density(matvec, params, key, **kwargs)


def count_outliers(eigenvalues: jax.Array, *, max_outliers: int) -> jax.Array:
  """The number of top eigenvalues above the spectrum's largest relative gap.

  Sorts descending and returns the i (1 <= i <= max_outliers) maximizing
  lambda_i / lambda_{i+1} over positive eigenvalues: the size of the group of
  outliers separated from the bulk (Sagun et al., 2017; Papyan, 2020).
  """
  if max_outliers < 1:
    raise ValueError(f"max_outliers: expected an integer >= 1, got {max_outliers}")
  ev = jnp.sort(jnp.asarray(eigenvalues))[::-1]
  if ev.shape[0] <= max_outliers:
    raise ValueError(f"eigenvalues: need more than max_outliers={max_outliers}, got {ev.shape[0]}")
  top = ev[: max_outliers + 1]
  tiny = jnp.finfo(top.dtype).tiny
  ratios = jnp.maximum(top[:-1], tiny) / jnp.maximum(top[1:], tiny)
  return jnp.argmax(ratios) + 1
