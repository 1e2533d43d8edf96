r"""Score-function, pathwise and measure-valued Jacobians of Gaussian expectations.

Each estimator approximates, for a cost ``f`` that does not depend on the
parameters,

    eta = grad_theta E_{p(x; theta)} f(x),    theta = (mean, log_scale),

and returns one estimate *per sample*: a list ``[d/d mean, d/d log_scale]``
of arrays ``[num_samples, *param_shape]``. Their mean over the sample axis is
the gradient to learn with; their spread is the estimator's variance.

* ``score_function_jacobians``: ``f(x) grad_theta log p(x; theta)``. Any
  ``f`` (not differentiable, a black box); the most variance, growing with
  the size of ``f`` (subtract a baseline: ``control_variates``).
* ``pathwise_jacobians``: ``grad_theta f(mean + exp(log_scale) eps)``. Needs
  a differentiable ``f``; the least variance for smooth, slowly varying
  costs, but its variance grows with ``|f'|`` (a cost like ``cos(kx)`` with a
  large ``k`` makes it the worst of the three).
* ``measure_valued_jacobians``: the derivative of the Gaussian density
  written as a difference of two densities (Weibull for the mean,
  double-sided Maxwell against the Gaussian for the scale), ``2 D`` cost
  evaluations per sample. Any ``f``; with coupling, low variance.

Reference: Mohamed, Rosca, Figurnov & Mnih, "Monte Carlo Gradient Estimation
in Machine Learning", JMLR 21(132), 2020 (sections 4-6; Table 1 for the
measure-valued decompositions). Ported line by line from optax's
``optax/monte_carlo/stochastic_gradient_estimators.py`` (google-deepmind/optax
v0.2.6; the module was removed in commit ca35e20b, November 2025), itself from
the paper's code, google-deepmind/mc_gradients. For the same key the samples,
and so the numbers, are optax's (checked against optax 0.2.6 in a scratch
install: equal to the last bit).

Deviations from optax (the math is unchanged):

* Signature: ``f(function, params, key, *, num_samples, dist_builder=multi_normal)``
  instead of ``f(function, params, dist_builder, rng, num_samples)``: gradlab
  puts the data first, then the key, then keyword-only hyperparameters, and
  the diagonal Gaussian is the distribution every estimator here supports,
  so it is the default. ``key`` must be a typed key (``jax.random.key``).
* Bad input raises a one-line ``ValueError`` naming the argument (optax:
  chex assertion errors or errors from inside XLA).
* The result is always a ``list`` (optax returned ``jacfwd``'s container,
  the type of ``params``); no deprecation warnings.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from gradlab import _checks
from gradlab.monte_carlo.gaussian import MultiNormalDiagFromLogScale, multi_normal

Function = Callable[[jax.Array], Any]


def _check_params(params: Any, *, vector: bool) -> list[jax.Array]:
  """``[mean, log_scale]`` of one shape, floating and finite; ``[D]`` vectors when ``vector``."""
  if not isinstance(params, (list, tuple)) or len(params) != 2:
    raise ValueError(
      f"params: expected a pair [mean, log_scale] of arrays, got {type(params).__name__}"
      + (f" of length {len(params)}" if isinstance(params, (list, tuple)) else "")
    )
  mean, log_scale = (jnp.asarray(p) for p in params)
  if mean.shape != log_scale.shape:
    raise ValueError(
      f"params: expected mean and log_scale of one shape, got {mean.shape} and {log_scale.shape}"
    )
  if vector and mean.ndim != 1:
    raise ValueError(f"params: expected mean and log_scale of shape [D], got {mean.shape}")
  for name, p in (("params[0] (mean)", mean), ("params[1] (log_scale)", log_scale)):
    if not jnp.issubdtype(p.dtype, jnp.floating):
      raise ValueError(f"{name}: expected a floating dtype, got {p.dtype}")
    _checks.finite(name, p)
  return [mean, log_scale]


def _check_function(function: Any, dist: Any, key: jax.Array) -> None:
  """``function`` maps one sample to a scalar (checked on shapes only, so it is free)."""
  if not callable(function):
    raise ValueError(f"function: expected a callable f(x) -> scalar, got {function!r}")
  one = jax.eval_shape(lambda k: dist.sample((1,), key=k)[0], key)
  out = jax.eval_shape(function, one)
  if not hasattr(out, "shape") or out.shape != ():
    shape = getattr(out, "shape", type(out).__name__)
    raise ValueError(
      f"function: expected a scalar f(x) for one sample x of shape {one.shape}, got {shape}"
    )


def _check_inputs(
  function: Any,
  params: Any,
  key: Any,
  num_samples: Any,
  dist_builder: Any,
  *,
  vector: bool = False,
) -> tuple[list[jax.Array], int]:
  """The arguments every estimator takes, checked; ``(params as a list, num_samples)``."""
  _checks.is_key("key", key)
  n = _checks.integer("num_samples", num_samples, minimum=1)
  if not callable(dist_builder):
    raise ValueError(f"dist_builder: expected a callable, got {dist_builder!r}")
  if dist_builder is multi_normal:
    params = _check_params(params, vector=vector)
  elif not isinstance(params, (list, tuple)):
    raise ValueError(f"params: expected a list of arrays, got {type(params).__name__}")
  _check_function(function, dist_builder(*params), key)
  return list(params), n


def score_function_jacobians(
  function: Function,
  params: Sequence[jax.Array],
  key: jax.Array,
  *,
  num_samples: int,
  dist_builder: Callable[..., Any] = multi_normal,
) -> list[jax.Array]:
  r"""Score-function (REINFORCE, likelihood-ratio) Jacobians, one per sample.

  ``f(x_n) grad_theta log p(x_n; theta)`` for ``x_n ~ p(x; theta)``: unbiased
  because ``E_p[f grad log p] = grad E_p[f]`` (the paper's eq. 13).

  Args:
    function: ``f(x) -> scalar`` for one sample ``x`` (it is vmapped over the
      samples, so it need not be vectorized). Not differentiated.
    params: ``[mean, log_scale]`` for the default ``dist_builder``.
    key: a typed PRNG key.
    num_samples: the number of samples ``N``.
    dist_builder: ``dist_builder(*params)`` gives a distribution with
      ``sample(shape, key)`` and ``log_prob(x)``.

  Returns:
    ``[d/d params[0], d/d params[1]]``, each ``[N, *param.shape]``.
  """
  params, n = _check_inputs(function, params, key, num_samples, dist_builder)

  def surrogate(params):
    dist = dist_builder(*params)
    one_sample_surrogate_fn = lambda x: function(x) * dist.log_prob(x)
    samples = jax.lax.stop_gradient(dist.sample((n,), key=key))
    # vmapped over the samples, so that f need not be vectorized
    return jax.vmap(one_sample_surrogate_fn)(samples)

  return list(jax.jacfwd(surrogate)(params))


def pathwise_jacobians(
  function: Function,
  params: Sequence[jax.Array],
  key: jax.Array,
  *,
  num_samples: int,
  dist_builder: Callable[..., Any] = multi_normal,
) -> list[jax.Array]:
  r"""Pathwise (reparameterization) Jacobians, one per sample.

  ``grad_theta f(g(eps_n; theta))`` with ``x = g(eps; theta)`` the sampler,
  here ``mean + exp(log_scale) eps`` (the paper's eq. 35). ``f`` must be
  differentiable; ``dist_builder(*params).sample`` must be differentiable in
  ``params``.

  Args and Returns as :func:`score_function_jacobians`.
  """
  params, n = _check_inputs(function, params, key, num_samples, dist_builder)

  def surrogate(params):
    dist = dist_builder(*params)
    return jax.vmap(function)(dist.sample((n,), key=key))

  return list(jax.jacfwd(surrogate)(params))


def _replace_each_coordinate(
  function: Function, samples: jax.Array, values: jax.Array
) -> jax.Array:
  """``out[n, d] = f(samples[n] with its coordinate d set to values[n, d])``, ``[N, D]``.

  optax builds the same ``[N, D, D]`` batch with ``tile_second_to_last_dim``
  and ``set_diags``; ``where`` on the identity gives the same numbers.
  """
  eye = jnp.eye(samples.shape[-1], dtype=bool)
  x = jnp.where(eye[None], values[:, :, None], samples[:, None, :])
  return jax.vmap(jax.vmap(function))(x)


def _check_gaussian(dist: Any, key: Any, num_samples: Any, function: Any) -> int:
  if not isinstance(dist, MultiNormalDiagFromLogScale):
    raise ValueError(
      f"dist: expected a gradlab.monte_carlo.multi_normal distribution, got {type(dist).__name__}"
    )
  _check_params(dist.params, vector=True)
  _checks.is_key("key", key)
  n = _checks.integer("num_samples", num_samples, minimum=1)
  _check_function(function, dist, key)
  return n


def measure_valued_estimation_mean(
  function: Function,
  dist: MultiNormalDiagFromLogScale,
  key: jax.Array,
  *,
  num_samples: int,
  coupling: bool = True,
) -> jax.Array:
  r"""Measure-valued Jacobian of ``E_{N(mean, sigma^2)} f`` in the mean, ``[N, D]``.

  ``d/d mu_d N(x; mu, sigma) = (W+(x) - W-(x)) / (sqrt(2 pi) sigma)``, with
  ``W+-`` the densities of ``mu_d +- sigma_d w``, ``w ~ Weibull(sqrt 2, 2)``
  (density ``w exp(-w^2 / 2)``; the paper's eq. 46 and Table 1). Coordinate
  ``d`` of row ``n`` replaces ``x_n[d]`` by ``mu_d +- sigma_d w_nd`` and keeps
  the other coordinates of the Gaussian sample ``x_n``. With ``coupling`` the
  two Weibull draws are one (the paper's section 7.2), which removes the
  variance that the two sides share.
  """
  n = _check_gaussian(dist, key, num_samples, function)
  mean, log_std = dist.params
  std = jnp.exp(log_std)
  dist_samples = dist.sample((n,), key=key)
  pos_key, neg_key = jax.random.split(key)
  pos_sample = jax.random.weibull_min(
    pos_key, scale=math.sqrt(2.0), concentration=2.0, shape=dist_samples.shape
  )
  if coupling:
    neg_sample = pos_sample
  else:
    neg_sample = jax.random.weibull_min(
      neg_key, scale=math.sqrt(2.0), concentration=2.0, shape=dist_samples.shape
    )
  positive = _replace_each_coordinate(function, dist_samples, mean + std * pos_sample)
  negative = _replace_each_coordinate(function, dist_samples, mean - std * neg_sample)
  c = np.sqrt(2 * np.pi) * std
  return (positive - negative) / c


def measure_valued_estimation_std(
  function: Function,
  dist: MultiNormalDiagFromLogScale,
  key: jax.Array,
  *,
  num_samples: int,
  coupling: bool = True,
) -> jax.Array:
  r"""Measure-valued Jacobian of ``E_{N(mean, sigma^2)} f`` in ``sigma`` (not log), ``[N, D]``.

  ``d/d sigma_d N(x; mu, sigma) = (M(x) - N(x)) / sigma`` with ``M`` the
  double-sided Maxwell density ``m^2 exp(-m^2 / 2) / sqrt(2 pi)`` of
  ``(x_d - mu_d) / sigma_d`` (Table 1). With ``coupling`` the Gaussian side is
  ``u m`` for the same Maxwell draw ``m`` and ``u ~ U[0, 1]`` (``u m`` is a
  standard normal; section 7.2); without, an independent normal.
  """
  n = _check_gaussian(dist, key, num_samples, function)
  mean, log_std = dist.params
  std = jnp.exp(log_std)
  dist_samples = dist.sample((n,), key=key)
  pos_key, neg_key = jax.random.split(key)
  pos_sample = jax.random.double_sided_maxwell(
    pos_key, loc=0.0, scale=1.0, shape=dist_samples.shape
  )
  if coupling:
    neg_sample = jax.random.uniform(neg_key, dist_samples.shape) * pos_sample
  else:
    neg_sample = jax.random.normal(neg_key, dist_samples.shape)
  positive = _replace_each_coordinate(function, dist_samples, mean + std * pos_sample)
  negative = _replace_each_coordinate(function, dist_samples, mean + std * neg_sample)
  return (positive - negative) / std


def measure_valued_jacobians(
  function: Function,
  params: Sequence[jax.Array],
  key: jax.Array,
  *,
  num_samples: int,
  coupling: bool = True,
  dist_builder: Callable[..., Any] = multi_normal,
) -> list[jax.Array]:
  r"""Measure-valued Jacobians, one per sample, for a diagonal Gaussian.

  ``[measure_valued_estimation_mean, sigma * measure_valued_estimation_std]``
  (the chain rule to ``log_scale``). Costs ``4 D`` evaluations of ``f`` per
  sample (``2 D`` per parameter); ``params`` must be ``[D]`` vectors.

  Args:
    function, params, key, num_samples: as :func:`score_function_jacobians`.
    coupling: share the randomness of the positive and negative parts
      (recommended: it lowers the variance).
    dist_builder: must be :func:`gradlab.monte_carlo.multi_normal` (the only
      distribution whose decomposition is implemented, as in optax).

  Returns:
    ``[d/d mean, d/d log_scale]``, each ``[N, D]``.
  """
  if dist_builder is not multi_normal:
    raise ValueError(
      "dist_builder: measure_valued_jacobians supports only "
      f"gradlab.monte_carlo.multi_normal, got {dist_builder!r}"
    )
  if not isinstance(coupling, (bool, np.bool_)):
    raise ValueError(f"coupling: expected a bool, got {coupling!r}")
  params, n = _check_inputs(function, params, key, num_samples, dist_builder, vector=True)
  dist = dist_builder(*params)
  return [
    measure_valued_estimation_mean(function, dist, key, num_samples=n, coupling=coupling),
    jnp.exp(dist.log_scale)
    * measure_valued_estimation_std(function, dist, key, num_samples=n, coupling=coupling),
  ]
