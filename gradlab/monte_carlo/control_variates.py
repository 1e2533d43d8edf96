r"""Control variates for the Monte Carlo Jacobians of ``estimators``.

With a control variate ``h(x; theta)`` whose expectation is known in closed
form, and a coefficient ``c``,

    grad E_p[f] = grad E_p[f - c h] + c grad E_p[h]
                = int grad p (f - c h) dx  -  c E_p[grad_theta h]  +  c grad E_p[h].

:func:`control_variates_jacobians` estimates the first term with a gradient
estimator applied to ``f`` and to ``h`` (same key, so the same samples), the
second by automatic differentiation of ``h`` averaged over those samples, and
the third by differentiating the closed form. When ``h`` tracks ``f`` the first
term has little variance and the rest is (nearly) exact.

A control variate is a :class:`ControlVariate` of three functions (a tuple, so
optax-style code that unpacks it keeps working):

* ``control_variate(params, x, state)``: ``h(x; theta)`` for one sample;
* ``expected_value(params, state)``: ``E_p[h]`` in closed form;
* ``update_state(params, samples, state)``: the state after seeing ``samples``.

Two are provided: :func:`control_delta_method` (the second-order Taylor
expansion of ``f`` at the mean) and :func:`moving_avg_baseline` (a constant
baseline: a moving average of ``f``).

Reference: Mohamed, Rosca, Figurnov & Mnih, "Monte Carlo Gradient Estimation
in Machine Learning", JMLR 2020, section 7.4; the delta method: Paisley, Blei
& Jordan, "Variational Bayesian Inference with Stochastic Search", ICML 2012.
Ported line by line from optax's ``optax/monte_carlo/control_variates.py``
(google-deepmind/optax v0.2.6; removed in commit ca35e20b, November 2025).
Deviations: the estimators' signature (``key``, keyword-only ``num_samples``
and ``dist_builder``; see ``estimators``), keyword-only hyperparameters of
``moving_avg_baseline``, named tuples for the control variate and the
moving-average state, one-line ``ValueError``s for bad input, and the state
update moved ahead of ``f``'s Jacobians in ``control_variates_jacobians`` (so a
missing state fails before any work; neither depends on the other, so the
numbers are optax's). Checked against optax 0.2.6 in a scratch install: for the
same key every Jacobian and state agreed to the last bit.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from gradlab import _checks
from gradlab.monte_carlo.estimators import _check_params
from gradlab.monte_carlo.gaussian import multi_normal

Function = Callable[[jax.Array], Any]


class ControlVariate(NamedTuple):
  """The three functions of a control variate (optax's ``ControlVariate`` tuple)."""

  control_variate: Callable[[Sequence[jax.Array], jax.Array, Any], jax.Array]
  expected_value: Callable[[Sequence[jax.Array], Any], jax.Array]
  update_state: Callable[[Sequence[jax.Array], jax.Array, Any], Any]


class MovingAvgBaselineState(NamedTuple):
  """The state of :func:`moving_avg_baseline`: optax's ``(value, i)`` pair."""

  value: jax.Array  # the baseline
  count: jax.Array  # updates so far


def control_delta_method(function: Function) -> ControlVariate:
  r"""The delta-method control variate: ``f``'s second-order Taylor expansion at the mean.

  ``h(x) = f(mu) + grad f(mu) . (x - mu) + (x - mu)^T H(mu) (x - mu) / 2`` and,
  for ``x ~ N(mu, diag(sigma^2))``, ``E h = f(mu) + sum_d H_dd(mu) sigma_d^2 / 2``.
  For a quadratic ``f``, ``h = f``: every estimator's controlled Jacobian is
  then the exact gradient, with no variance (up to float rounding). Gaussian
  ``[D]`` parameters only. No state (``update_state`` returns it unchanged).

  Args:
    function: ``f(x) -> scalar`` for one sample ``x [D]``; twice differentiable.

  Returns:
    A :class:`ControlVariate`.
  """
  if not callable(function):
    raise ValueError(f"function: expected a callable f(x) -> scalar, got {function!r}")

  def _hessian(mean):
    hessians = jax.hessian(function)(mean)
    if hessians.ndim != 2:
      raise ValueError(
        f"params: the delta method expects a mean vector [D], got shape {jnp.shape(mean)}"
      )
    return hessians

  def delta(params, sample, state=None):
    """Second-order expansion of ``function`` at the mean of the distribution."""
    del state
    mean_dist = params[0]
    centered_sample = sample - mean_dist
    grads = jax.grad(function)(mean_dist)
    hessians = _hessian(mean_dist)
    control_variate = function(mean_dist)
    control_variate += jnp.dot(centered_sample, grads)
    control_variate += jnp.dot(jnp.dot(centered_sample, hessians), centered_sample) / 2.0
    return control_variate

  def expected_value_delta(params, state=None):
    """``E h``: ``f(mean) + tr(H Sigma) / 2`` with ``Sigma`` diagonal."""
    del state
    mean_dist = params[0]
    var_dist = jnp.square(jnp.exp(params[1]))
    hess_diags = jnp.diag(_hessian(mean_dist))
    return function(mean_dist) + jnp.sum(var_dist * hess_diags) / 2.0

  def update_state(params, samples, state=None):
    del params, samples
    return state

  return ControlVariate(delta, expected_value_delta, update_state)


def _check_state(state: Any) -> None:
  if not isinstance(state, (tuple, list)) or len(state) != 2:
    raise ValueError(
      "control_variate_state: expected (value, count) for moving_avg_baseline, e.g. "
      f"(0.0, 0), got {state!r}"
    )


def moving_avg_baseline(
  function: Function,
  *,
  decay: float = 0.99,
  zero_debias: bool = True,
  use_decay_early_training_heuristic: bool = True,
) -> ControlVariate:
  r"""A constant baseline ``h = b``: a moving average of ``f`` over the samples seen.

  ``update_state`` computes, from the state ``(b, t)`` and a batch of samples,

      decay_t = min(decay, (1 + t) / (10 + t))  (with the heuristic, else decay)
      b' = decay_t b + (1 - decay_t) mean_n f(x_n)
      b' = b' / (1 - decay_t^(t + 1))            (with zero_debias)

  and returns ``(stop_gradient(b'), t + 1)``; ``h`` and ``E h`` are both ``b``.
  It changes only the score-function estimator (``b grad log p`` has mean
  zero); a constant cancels out of the pathwise and measure-valued ones.

  Two properties kept from optax, for the same numbers:

  * ``zero_debias`` divides the *stored* value by ``1 - decay_t^(t+1)`` at
    every step. From the zero state this is the usual debiasing at the first
    step (``b' = mean f``), but later steps rescale an already debiased value:
    without the heuristic, decay 0.9 and a constant ``f = m`` give ``m``, then
    ``m / 0.19 = 5.3 m``. With the heuristic (the default) the divisors are
    near 1 after the first steps and ``b`` stays near ``E f``. A wrong
    baseline costs variance, not bias.
  * :func:`control_variates_jacobians` updates the state with the current
    samples before using it, so ``b`` depends on them: the score-function
    estimate's mean is ``(1 - w / N)`` times the gradient, ``w`` the weight of
    the new batch's mean in ``b'`` (``(1 - decay_t)``, over the debiasing
    divisor with ``zero_debias``; 1 at the first step from zero).

  Args:
    function: ``f(x) -> scalar`` for one sample.
    decay: the moving average's decay, in ``[0, 1)``.
    zero_debias: divide by ``1 - decay_t^(t + 1)`` as above.
    use_decay_early_training_heuristic: ``decay_t = min(decay, (1 + t) / (10 + t))``
      (from TensorFlow's ``ExponentialMovingAverage``).

  Returns:
    A :class:`ControlVariate`; its state is a :class:`MovingAvgBaselineState`
    (or any pair ``(value, count)``: start from ``(0.0, 0)``).
  """
  if not callable(function):
    raise ValueError(f"function: expected a callable f(x) -> scalar, got {function!r}")
  _checks.unit_interval("decay", decay)
  for name, flag in (
    ("zero_debias", zero_debias),
    ("use_decay_early_training_heuristic", use_decay_early_training_heuristic),
  ):
    if not isinstance(flag, (bool, np.bool_)):
      raise ValueError(f"{name}: expected a bool, got {flag!r}")

  def moving_avg(params, samples, state):
    del params, samples
    _check_state(state)
    return state[0]

  def expected_value_moving_avg(params, state):
    del params
    _check_state(state)
    return state[0]

  def update_state(params, samples, state):
    del params
    _check_state(state)
    value, i = state
    if use_decay_early_training_heuristic:
      iteration_decay = jnp.minimum(decay, (1.0 + i) / (10.0 + i))
    else:
      iteration_decay = decay
    updated_value = iteration_decay * value
    updated_value += (1 - iteration_decay) * jnp.mean(jax.vmap(function)(samples))
    if zero_debias:
      updated_value /= jnp.ones([]) - jnp.power(iteration_decay, i + 1)
    return MovingAvgBaselineState(jax.lax.stop_gradient(updated_value), i + 1)

  return ControlVariate(moving_avg, expected_value_moving_avg, update_state)


def _map(cv, params, samples, state):
  return jax.vmap(lambda x: cv(params, x, state))(samples)


def _check_common(
  control_variate_from_function: Any,
  grad_estimator: Any,
  params: Any,
  key: Any,
  num_samples: Any,
  dist_builder: Any,
) -> tuple[list[jax.Array], int]:
  if not callable(control_variate_from_function):
    raise ValueError(
      "control_variate_from_function: expected a callable such as control_delta_method, "
      f"got {control_variate_from_function!r}"
    )
  if not callable(grad_estimator):
    raise ValueError(
      f"grad_estimator: expected a callable such as score_function_jacobians, got "
      f"{grad_estimator!r}"
    )
  _checks.is_key("key", key)
  n = _checks.integer("num_samples", num_samples, minimum=1)
  if dist_builder is not multi_normal:
    raise ValueError(
      "dist_builder: the control variates support only gradlab.monte_carlo.multi_normal, "
      f"got {dist_builder!r}"
    )
  return _check_params(params, vector=True), n


def control_variates_jacobians(
  function: Function,
  control_variate_from_function: Callable[[Function], ControlVariate],
  grad_estimator: Callable[..., list[jax.Array]],
  params: Sequence[jax.Array],
  key: jax.Array,
  *,
  num_samples: int,
  control_variate_state: Any = None,
  estimate_cv_coeffs: bool = False,
  estimate_cv_coeffs_num_samples: int = 20,
  dist_builder: Callable[..., Any] = multi_normal,
) -> tuple[list[jax.Array], Any]:
  r"""Per-sample Jacobians of ``E_p f`` with a control variate, and the updated state.

  Row ``n`` of parameter ``theta`` is

      J_f[n] - c J_h[n] - c mean_m grad_theta h(x_m) + c grad_theta E h,

  with ``J_f``, ``J_h`` the ``grad_estimator``'s Jacobians of ``f`` and of
  ``h`` (its parameters held fixed) on the same samples. The mean over rows
  is unbiased for any ``h`` with a correct closed-form ``E h`` and any ``c``
  chosen independently of the samples. The third term is one average shared by
  all rows, so the rows are not independent: measure the estimator's variance
  across independent keys, not across rows. The state is updated once, with
  these samples, before ``h`` is evaluated (as in optax; see
  :func:`moving_avg_baseline` for what that does to a baseline).

  Args:
    function: ``f(x) -> scalar`` for one sample ``x [D]``.
    control_variate_from_function: ``function -> ControlVariate``, e.g.
      :func:`control_delta_method` or ``functools.partial(moving_avg_baseline,
      decay=0.9)``.
    grad_estimator: called as ``grad_estimator(f, params, key,
      num_samples=..., dist_builder=...)``: one of ``score_function_jacobians``,
      ``pathwise_jacobians``, ``measure_valued_jacobians``. A constant baseline
      changes only the score function.
    params: ``[mean, log_scale]``, ``[D]`` vectors.
    key: a typed PRNG key (``J_f`` and ``J_h`` both use it).
    num_samples: samples ``N``.
    control_variate_state: the control variate's state (``None`` for the delta
      method, ``(value, count)`` for the moving average).
    estimate_cv_coeffs: estimate ``c`` per parameter with
      :func:`estimate_control_variate_coefficients` on fresh samples (else
      ``c = 1``).
    estimate_cv_coeffs_num_samples: samples for that estimate, ``>= 2``.
    dist_builder: must be :func:`gradlab.monte_carlo.multi_normal`.

  Returns:
    ``([d/d mean, d/d log_scale] each [N, D], the updated state)``.
  """
  params, n = _check_common(
    control_variate_from_function, grad_estimator, params, key, num_samples, dist_builder
  )
  if not isinstance(estimate_cv_coeffs, (bool, np.bool_)):
    raise ValueError(f"estimate_cv_coeffs: expected a bool, got {estimate_cv_coeffs!r}")
  stochastic_cv, expected_value_cv, update_state_cv = control_variate_from_function(function)
  _checks.integer("estimate_cv_coeffs_num_samples", estimate_cv_coeffs_num_samples, minimum=2)
  if estimate_cv_coeffs:
    cv_coeffs = estimate_control_variate_coefficients(
      function,
      control_variate_from_function,
      grad_estimator,
      params,
      key,
      num_samples=estimate_cv_coeffs_num_samples,
      control_variate_state=control_variate_state,
      dist_builder=dist_builder,
    )
  else:
    cv_coeffs = [1.0] * len(params)

  # The key is the one grad_estimator uses below, so these are its samples.
  samples = dist_builder(*params).sample((n,), key=key)
  control_variate_state = update_state_cv(params, samples, control_variate_state)
  # int grad p (f - h) dx, first f's part (optax computes it before the state
  # update; neither depends on the other)
  function_jacobians = grad_estimator(
    function, params, key, num_samples=n, dist_builder=dist_builder
  )

  def samples_fn(x):
    return stochastic_cv(jax.lax.stop_gradient(params), x, control_variate_state)

  cv_jacobians = grad_estimator(samples_fn, params, key, num_samples=n, dist_builder=dist_builder)

  def param_fn(p):
    return jnp.mean(_map(stochastic_cv, p, jax.lax.stop_gradient(samples), control_variate_state))

  # E_p[grad_theta h], averaged over the samples
  cv_param_grads = jax.grad(param_fn)(params)
  # grad_theta E_p[h], from the closed form
  expected_value_grads = jax.grad(lambda p: expected_value_cv(p, control_variate_state))(params)

  jacobians = []
  for i in range(len(params)):
    c = cv_coeffs[i]
    param_jacobians = function_jacobians[i]
    param_jacobians -= c * cv_jacobians[i]
    param_jacobians -= c * cv_param_grads[i]
    param_jacobians += c * expected_value_grads[i]
    jacobians.append(param_jacobians)
  return jacobians, control_variate_state


def estimate_control_variate_coefficients(
  function: Function,
  control_variate_from_function: Callable[[Function], ControlVariate],
  grad_estimator: Callable[..., list[jax.Array]],
  params: Sequence[jax.Array],
  key: jax.Array,
  *,
  num_samples: int,
  control_variate_state: Any = None,
  eps: float = 1e-3,
  dist_builder: Callable[..., Any] = multi_normal,
) -> list[jax.Array]:
  r"""The variance-minimizing coefficient ``c`` of each parameter, from fresh samples.

  ``c = sum_d cov(J_f[:, d], J_h[:, d]) / (sum_d var(J_h[:, d]) + eps)`` over
  ``num_samples`` samples drawn with ``split(key)[0]`` (not the samples the
  Jacobians use, so that ``c`` does not bias them). Does not update the state.

  Returns:
    One scalar (``stop_gradient``-ed) per parameter.
  """
  params, _ = _check_common(
    control_variate_from_function, grad_estimator, params, key, 1, dist_builder
  )
  n = _checks.integer("num_samples", num_samples, minimum=2)
  _checks.positive("eps", eps)
  cv_key, _ = jax.random.split(key)
  stochastic_cv, _, _ = control_variate_from_function(function)
  cv_jacobians = grad_estimator(
    lambda x: stochastic_cv(params, x, control_variate_state),
    params,
    cv_key,
    num_samples=n,
    dist_builder=dist_builder,
  )
  function_jacobians = grad_estimator(
    function, params, cv_key, num_samples=n, dist_builder=dist_builder
  )

  def compute_coeff(param_cv_jacs, param_f_jacs):
    mean_f = jnp.mean(param_f_jacs, axis=0)
    mean_cv = jnp.mean(param_cv_jacs, axis=0)
    cov = jnp.mean((param_f_jacs - mean_f) * (param_cv_jacs - mean_cv), axis=0)
    # One coefficient per parameter: the sum of the covariances over the sum of
    # the variances minimizes the summed variance of its coordinates.
    cv_coeff = jnp.sum(cov) / (jnp.sum(jnp.var(param_cv_jacs, axis=0)) + eps)
    return jax.lax.stop_gradient(cv_coeff)

  return [compute_coeff(cv_jacobians[i], function_jacobians[i]) for i in range(len(params))]
