r"""Linear mode connectivity: metrics along the straight line between two networks, and the barrier.

References:

* Frankle, Dziugaite, Roy & Carbin, "Linear mode connectivity and the lottery
  ticket hypothesis", ICML 2020, Section 2: with ``E_sup = sup_alpha
  E(alpha W_1 + (1 - alpha) W_2)`` and ``E_bar = mean(E(W_1), E(W_2))`` the
  *error barrier height* is ``E_sup - E_bar`` (30 evenly spaced ``alpha``).
* Ainsworth, Hayase & Srinivasa, "Git Re-Basin", ICLR 2023, and its official
  code (samuela/git-re-basin, ``src/utils.py::lerp`` and the barrier in
  ``src/cifar10_mlp_barrier_vs_epoch_plot.py``): the same definition on the
  loss, ``max(loss_interp) - 0.5 * (loss_interp[0] + loss_interp[-1])`` over
  ``linspace(0, 1, 25)``, with ``lerp(lam, a, b) = (1 - lam) a + lam b``.
* Entezari, Sedghi, Saukh & Neyshabur, "The role of permutation invariance in
  linear mode connectivity", ICLR 2022, subtract instead the linear
  interpolation of the endpoint values *at the same* ``alpha``:
  ``max_alpha [L(alpha) - ((1 - alpha) L(0) + alpha L(1))]``
  (``reference="interpolation"`` here).

The two definitions agree when the endpoints have equal values and both are
0 for two identical networks. Here ``alpha = 0`` is the first network and
``alpha = 1`` the second, as in ``lerp`` (Frankle et al. weigh ``W_1`` by
``alpha``; the barrier is symmetric, so this only orders the curve).
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from gradlab import _checks

REFERENCES = ("mean", "interpolation")


class PathBarrier(NamedTuple):
  """A metric along the linear path and its barrier.

  Attributes:
    alphas: ``[A]`` the interpolation weights, from 0 (network a) to 1 (b).
    values: the metric at each alpha, a pytree like ``metric_fn``'s output
      with a leading ``[A]`` axis.
    barrier: the barrier of every leaf of ``values`` (see :func:`barrier`).
  """

  alphas: jax.Array
  values: Any
  barrier: Any


def interpolate(params_a: Any, params_b: Any, alpha) -> Any:
  """``(1 - alpha) params_a + alpha params_b``, leaf by leaf (Git Re-Basin's ``lerp``)."""
  sa, sb = jax.tree.structure(params_a), jax.tree.structure(params_b)
  if sa != sb:
    raise ValueError(f"params_b: expected the structure of params_a {sa}, got {sb}")
  return jax.tree.map(
    lambda a, b: ((1 - alpha) * a + alpha * b).astype(jnp.result_type(a, b)), params_a, params_b
  )


def linear_path(
  metric_fn: Callable[[Any], Any], params_a: Any, params_b: Any, alphas: jax.Array
) -> Any:
  """``metric_fn`` at ``interpolate(params_a, params_b, alpha)`` for each alpha, vmapped.

  ``metric_fn(params)`` returns a scalar or a pytree of scalars (e.g.
  ``{"loss": ..., "error": ...}``); the result has a leading ``[A]`` axis.
  Nothing is jitted inside: jit the call, or ``vmap`` it over pairs.
  """
  alphas = jnp.asarray(alphas)
  if alphas.ndim != 1 or alphas.shape[0] < 2:
    raise ValueError(f"alphas: expected a 1-D array of at least 2 weights, got {alphas.shape}")
  return jax.vmap(lambda a: metric_fn(interpolate(params_a, params_b, a)))(alphas)


def barrier(values: jax.Array, alphas: jax.Array | None = None, *, reference: str = "mean"):
  """The barrier of ``values`` ``[..., A]`` measured along ``alphas`` ``[A]`` (0 first, 1 last).

  ``reference="mean"`` (Frankle et al. 2020; Git Re-Basin):
  ``max_alpha v(alpha) - (v(0) + v(1)) / 2``. ``reference="interpolation"``
  (Entezari et al. 2022): ``max_alpha [v(alpha) - ((1 - alpha) v(0) + alpha
  v(1))]``, which needs ``alphas`` (default ``linspace(0, 1, A)``). Both are
  over the last axis; both are ``>= 0`` under ``"interpolation"`` and may be
  slightly negative under ``"mean"`` when the path dips below the endpoints'
  mean everywhere (e.g. unequal endpoints on a convex path).
  """
  _checks.one_of("reference", reference, REFERENCES)
  v = jnp.asarray(values)
  if v.ndim < 1 or v.shape[-1] < 2:
    raise ValueError(f"values: expected shape [..., A] with A >= 2, got {v.shape}")
  if reference == "mean":
    return jnp.max(v, axis=-1) - 0.5 * (v[..., 0] + v[..., -1])
  a = jnp.linspace(0.0, 1.0, v.shape[-1]) if alphas is None else jnp.asarray(alphas)
  if a.shape != (v.shape[-1],):
    raise ValueError(f"alphas: expected shape ({v.shape[-1]},) to match values, got {a.shape}")
  known = _checks.concrete(a)
  if known is not None and not (known[0] == 0 and known[-1] == 1):
    raise ValueError(f"alphas: expected to start at 0 and end at 1, got {known[0]}..{known[-1]}")
  line = (1 - a) * v[..., :1] + a * v[..., -1:]
  return jnp.max(v - line, axis=-1)


def linear_path_barrier(
  metric_fn: Callable[[Any], Any],
  params_a: Any,
  params_b: Any,
  *,
  num_points: int = 25,
  reference: str = "mean",
) -> PathBarrier:
  """The metric on ``num_points`` evenly spaced alphas in ``[0, 1]`` and its barrier.

  25 points is Git Re-Basin's ``linspace(0, 1, 25)``; Frankle et al. use 30.
  A barrier found on a grid is a lower bound on the true supremum.
  """
  m = _checks.integer("num_points", num_points, minimum=2)
  _checks.one_of("reference", reference, REFERENCES)
  alphas = jnp.asarray(np.linspace(0.0, 1.0, m), jnp.result_type(float))
  values = linear_path(metric_fn, params_a, params_b, alphas)
  heights = jax.tree.map(lambda v: barrier(v, alphas, reference=reference), values)
  return PathBarrier(alphas, values, heights)
