"""gradlab.monte_carlo against closed-form Gaussian expectations.

Every Monte Carlo comparison uses a tolerance of 5 standard errors computed
from the samples themselves (a two-sided 5-sigma miss happens about 1 time in
1.7 million per coordinate), and asserts that this tolerance is small next to
the truth, so that a wrong estimator (a missing chain rule, a wrong constant)
cannot pass. The same estimators were also run against optax 0.2.6's deleted
``optax.monte_carlo`` (a scratch install, not a test dependency): for the same
key the numbers agreed to the last bit.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gradlab import monte_carlo as mc

MEAN = np.array([0.8, -0.5, 1.2], np.float32)
LOG_SCALE = np.array([-0.5, 0.3, 0.2], np.float32)  # sigma far from 1: d/dsigma != d/dlog_sigma
W = np.array([1.0, -0.5, 0.7], np.float32)
PARAMS = [jnp.asarray(MEAN), jnp.asarray(LOG_SCALE)]
SIGMA = np.exp(LOG_SCALE.astype(np.float64))
M64 = MEAN.astype(np.float64)


def _quadratic(x):
  return jnp.dot(W, x) ** 2


def _cubic(x):
  return jnp.sum(x**3)


def _cos(x):
  return jnp.cos(jnp.dot(W, x))


def _truth(name):
  """``(d/d mean, d/d log_scale)`` of E f under N(MEAN, SIGMA^2), in closed form."""
  m, s, w = M64, SIGMA, W.astype(np.float64)
  if name == "quadratic":  # E (w.x)^2 = (w.m)^2 + sum w^2 s^2
    return 2 * w * (w @ m), 2 * w**2 * s**2
  if name == "cubic":  # E x^3 = m^3 + 3 m s^2, per coordinate
    return 3 * m**2 + 3 * s**2, 6 * m * s**2
  # E cos(w.x) = cos(w.m) exp(-v / 2), v = sum w^2 s^2
  a, v = w @ m, np.sum(w**2 * s**2)
  return -w * np.sin(a) * np.exp(-v / 2), -(w**2) * s**2 * np.cos(a) * np.exp(-v / 2)


FUNCTIONS = {"quadratic": _quadratic, "cubic": _cubic, "cos": _cos}

ESTIMATORS = {
  "score_function": (mc.score_function_jacobians, 200_000),
  "pathwise": (mc.pathwise_jacobians, 20_000),
  "measure_valued": (mc.measure_valued_jacobians, 20_000),
  "measure_valued_uncoupled": (
    functools.partial(mc.measure_valued_jacobians, coupling=False),
    50_000,
  ),
}
# the uncoupled branch differs from the coupled one only in its draws: one function
CHECKED = {"measure_valued_uncoupled": ("cos",)}


def _assert_unbiased(rows, truth, *, power=0.25):
  """mean(rows) within 5 standard errors of ``truth``; that bound below ``power`` * |truth|."""
  rows = np.asarray(rows, np.float64)
  se = rows.std(0, ddof=1) / np.sqrt(rows.shape[0])
  err = np.abs(rows.mean(0) - truth)
  assert np.all(err <= 5 * se), (rows.mean(0), truth, se)
  assert np.max(5 * se) < power * np.max(np.abs(truth)), (se, truth)


@pytest.mark.parametrize("estimator", list(ESTIMATORS))
def test_each_estimator_is_unbiased_for_closed_form_gaussian_expectations(estimator):
  grad_estimator, n = ESTIMATORS[estimator]
  for i, (name, f) in enumerate(FUNCTIONS.items()):
    if name not in CHECKED.get(estimator, FUNCTIONS):
      continue
    jac = jax.jit(lambda p, k: grad_estimator(f, p, k, num_samples=n))(PARAMS, jax.random.key(i))
    assert [j.shape for j in jac] == [(n, 3), (n, 3)]
    for rows, truth in zip(jac, _truth(name)):
      _assert_unbiased(rows, truth)


def test_the_same_key_gives_the_same_jacobians_under_jit():
  # (the control-variate tests below, and the experiment's test for every
  # estimator, run jitted and vmapped against the truth)
  key = jax.random.key(7)
  eager = mc.pathwise_jacobians(_cos, PARAMS, key, num_samples=64)
  jitted = jax.jit(lambda p, k: mc.pathwise_jacobians(_cos, p, k, num_samples=64))(PARAMS, key)
  for a, b in zip(eager, jitted):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)  # float32 re-association


def test_delta_method_expectation_is_the_closed_form_of_the_taylor_expansion():
  s2 = SIGMA**2
  w = W.astype(np.float64)
  cv = mc.control_delta_method(_cubic)
  # H = diag(6 m): E h = sum m^3 + 3 m s^2, which for a cubic is E f itself
  np.testing.assert_allclose(
    cv.expected_value(PARAMS, None), np.sum(M64**3 + 3 * M64 * s2), rtol=1e-5
  )
  cv = mc.control_delta_method(_cos)
  # H = -cos(a) w w^T: E h = cos(a) (1 - sum w^2 s^2 / 2)
  a = w @ M64
  expected = np.cos(a) * (1 - np.sum(w**2 * s2) / 2)
  np.testing.assert_allclose(cv.expected_value(PARAMS, None), expected, rtol=1e-5)
  # (that control_variate's mean is this expected_value is what keeps the
  # controlled estimator unbiased, which the two tests below check)


@pytest.mark.parametrize(
  "grad_estimator",
  [mc.score_function_jacobians, mc.pathwise_jacobians, mc.measure_valued_jacobians],
)
def test_the_delta_control_variate_makes_every_estimator_exact_on_a_quadratic(grad_estimator):
  # h = f for a quadratic, so J_f - J_h = 0 and grad h = 0 on every sample: each
  # row is grad E h, the exact gradient. Only float32 rounding of J_f - J_h is
  # left: bound it by 1e-5 (about 100 float32 ulps) of the plain rows' size.
  key = jax.random.key(3)

  @jax.jit  # one compile costs less CPU than eager dispatch of the nested vmaps here
  def both(key):
    plain = grad_estimator(_quadratic, PARAMS, key, num_samples=64)
    controlled, state = mc.control_variates_jacobians(
      _quadratic, mc.control_delta_method, grad_estimator, PARAMS, key, num_samples=64
    )
    assert state is None
    return plain, controlled

  plain, controlled = both(key)
  for rows, plain_rows, truth in zip(controlled, plain, _truth("quadratic")):
    scale = float(np.max(np.abs(plain_rows)))
    np.testing.assert_allclose(rows, np.broadcast_to(truth, rows.shape), atol=1e-5 * scale)
    assert np.min(np.std(plain_rows, 0)) > 0.1  # while the plain estimator does vary


def test_the_delta_control_variate_keeps_the_score_function_unbiased_and_lowers_its_variance():
  # cos is not quadratic, so the expansion is only close (sigma 0.2 to 0.5 here);
  # rows share the E[grad h] average, so the error bar comes from independent
  # batches (one key each), not from rows.
  params = [PARAMS[0], PARAMS[1] - 1.0]
  s = np.exp(LOG_SCALE.astype(np.float64) - 1.0)
  w = W.astype(np.float64)
  a, v = w @ M64, np.sum(w**2 * s**2)
  truth = (-w * np.sin(a) * np.exp(-v / 2), -(w**2) * s**2 * np.cos(a) * np.exp(-v / 2))

  def controlled(key, estimate_cv_coeffs):
    jac, _ = mc.control_variates_jacobians(
      _cos,
      mc.control_delta_method,
      mc.score_function_jacobians,
      params,
      key,
      num_samples=50,
      estimate_cv_coeffs=estimate_cv_coeffs,
    )
    return [j.mean(0) for j in jac]

  @jax.jit
  def batch(key):
    plain = mc.score_function_jacobians(_cos, params, key, num_samples=50)
    return [j.mean(0) for j in plain], controlled(key, False), controlled(key, True)

  plain, *cvs = jax.vmap(batch)(jax.random.split(jax.random.key(11), 400))
  for cv in cvs:  # c = 1, and c estimated on fresh samples
    for p_means, c_means, t in zip(plain, cv, truth):
      _assert_unbiased(c_means, t, power=0.5)
      # the variance drops (measured: to 2-6%) by far more than the ~15% noise
      # of a 400-batch variance
      assert np.all(np.var(c_means, 0) < 0.25 * np.var(p_means, 0))


def _numpy_moving_average(f_means, *, decay, zero_debias, heuristic):
  """optax's moving_avg_baseline.update_state, line by line, from the state (0, 0)."""
  value, i, out = 0.0, 0, []
  for m in f_means:
    d = min(decay, (1.0 + i) / (10.0 + i)) if heuristic else decay
    value = d * value + (1 - d) * m
    if zero_debias:
      value = value / (1.0 - d ** (i + 1))
    i += 1
    out.append(value)
  return np.array(out)


@pytest.mark.parametrize("zero_debias", [False, True])
@pytest.mark.parametrize("heuristic", [False, True])
def test_moving_average_state_replays_the_numpy_reference(zero_debias, heuristic):
  cv = mc.moving_avg_baseline(
    _quadratic,
    decay=0.9,
    zero_debias=zero_debias,
    use_decay_early_training_heuristic=heuristic,
  )
  batches = mc.multi_normal(*PARAMS).sample((6, 8), jax.random.key(5))
  f_means = [float(np.mean(jax.vmap(_quadratic)(b))) for b in batches]
  update = jax.jit(cv.update_state)
  state, values = (jnp.float32(0.0), 0), []
  for b in batches:
    state = update(PARAMS, b, state)
    values.append(float(state.value))
    assert float(cv.control_variate(PARAMS, b[0], state)) == values[-1]
    assert float(cv.expected_value(PARAMS, state)) == values[-1]
  assert int(state.count) == len(batches)
  reference = _numpy_moving_average(
    f_means, decay=0.9, zero_debias=zero_debias, heuristic=heuristic
  )
  np.testing.assert_allclose(values, reference, rtol=1e-5)  # float32 against float64
  if zero_debias and not heuristic:  # optax's debiasing compounds (see the docstring)
    assert reference[1] > 4 * np.mean(f_means[:2])


def test_moving_average_baseline_scales_the_score_function_by_one_minus_one_over_n():
  # From the state (0, 0) with zero_debias and the heuristic, the first update
  # gives b = mean_n f(x_n) of the very samples the Jacobians use (optax's
  # order), so E[(f - b) grad log p] = (1 - 1/N) grad E f. With N = 4 that
  # 25% shrinkage is ~8 standard errors of this test: a baseline updated after
  # use (the unbiased order) would fail it.
  n = 4
  linear = lambda x: jnp.sum(x)  # grad_mean E f = 1, grad_log_scale E f = 0

  @jax.jit
  def batch(key):
    jac, _ = mc.control_variates_jacobians(
      linear,
      mc.moving_avg_baseline,
      mc.score_function_jacobians,
      PARAMS,
      key,
      num_samples=n,
      control_variate_state=(jnp.float32(0.0), 0),
    )
    return jac[0].mean(0)

  means = np.asarray(jax.vmap(batch)(jax.random.split(jax.random.key(2), 8000)), np.float64)
  _assert_unbiased(means, np.full(3, 1 - 1 / n), power=0.2)


def test_a_constant_baseline_leaves_the_measure_valued_estimator_unchanged():
  # b cancels from f(x+) - f(x-) (and from the pathwise derivative likewise)
  key = jax.random.key(9)
  plain = mc.measure_valued_jacobians(_cos, PARAMS, key, num_samples=64)
  cv, state = mc.control_variates_jacobians(
    _cos,
    functools.partial(mc.moving_avg_baseline, decay=0.5),
    mc.measure_valued_jacobians,
    PARAMS,
    key,
    num_samples=64,
    control_variate_state=mc.MovingAvgBaselineState(jnp.float32(3.0), 4),
  )
  assert int(state.count) == 5
  for a, b in zip(cv, plain):
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)


def test_multi_normal_log_prob_is_the_gaussian_density():
  x = np.array([[0.1, 0.2, -1.0], [2.0, -3.0, 0.5]], np.float32)
  z = (x - MEAN) / SIGMA
  expected = np.sum(-0.5 * z**2 - LOG_SCALE - 0.5 * np.log(2 * np.pi), axis=-1)
  np.testing.assert_allclose(mc.multi_normal(*PARAMS).log_prob(x), expected, rtol=1e-5)


KEY = jax.random.key(0)
BAD = [
  (lambda: mc.score_function_jacobians(_cos, PARAMS[0], KEY, num_samples=4), "params: "),
  (lambda: mc.pathwise_jacobians(_cos, [MEAN, LOG_SCALE[:2]], KEY, num_samples=4), "params: "),
  (
    lambda: mc.measure_valued_jacobians(_cos, [MEAN[None], LOG_SCALE[None]], KEY, num_samples=4),
    "params: expected mean and log_scale of shape [D]",
  ),
  (
    lambda: mc.score_function_jacobians(_cos, [np.arange(3), LOG_SCALE], KEY, num_samples=4),
    "params[0] (mean): expected a floating dtype",
  ),
  (
    lambda: mc.pathwise_jacobians(_cos, [MEAN * np.nan, LOG_SCALE], KEY, num_samples=4),
    "params[0] (mean): expected finite values",
  ),
  (lambda: mc.score_function_jacobians(_cos, PARAMS, KEY, num_samples=0), "num_samples: "),
  (lambda: mc.pathwise_jacobians(_cos, PARAMS, KEY, num_samples=2.5), "num_samples: "),
  (
    lambda: mc.score_function_jacobians(_cos, PARAMS, jax.random.PRNGKey(0), num_samples=4),
    "key: expected a typed key",
  ),
  (
    lambda: mc.pathwise_jacobians(lambda x: x**2, PARAMS, KEY, num_samples=4),
    "function: expected a scalar f(x)",
  ),
  (lambda: mc.score_function_jacobians(None, PARAMS, KEY, num_samples=4), "function: "),
  (
    lambda: mc.measure_valued_jacobians(
      _cos, PARAMS, KEY, num_samples=4, dist_builder=lambda m, s: None
    ),
    "dist_builder: measure_valued_jacobians supports only",
  ),
  (
    lambda: mc.measure_valued_jacobians(_cos, PARAMS, KEY, num_samples=4, coupling="yes"),
    "coupling: expected a bool",
  ),
  (lambda: mc.moving_avg_baseline(_cos, decay=1.0), "decay: expected a number in [0, 1)"),
  (lambda: mc.moving_avg_baseline(_cos, decay=-0.1), "decay: "),
  (
    lambda: mc.moving_avg_baseline(_cos).update_state(PARAMS, MEAN[None], None),
    "control_variate_state: expected (value, count)",
  ),
  (
    lambda: mc.control_variates_jacobians(
      _cos,
      mc.moving_avg_baseline,
      mc.score_function_jacobians,
      PARAMS,
      KEY,
      num_samples=4,
    ),
    "control_variate_state: expected (value, count)",
  ),
  (
    lambda: mc.control_variates_jacobians(
      _cos, mc.control_delta_method, "score", PARAMS, KEY, num_samples=4
    ),
    "grad_estimator: ",
  ),
  (
    lambda: mc.control_variates_jacobians(
      _cos,
      mc.control_delta_method,
      mc.score_function_jacobians,
      PARAMS,
      KEY,
      num_samples=4,
      estimate_cv_coeffs=True,
      estimate_cv_coeffs_num_samples=1,
    ),
    "estimate_cv_coeffs_num_samples: ",
  ),
  (
    lambda: mc.estimate_control_variate_coefficients(
      _cos, mc.control_delta_method, mc.score_function_jacobians, PARAMS, KEY, num_samples=8, eps=0
    ),
    "eps: ",
  ),
]


@pytest.mark.parametrize("call, message", BAD, ids=[m.split(":")[0] for _, m in BAD])
def test_bad_input_gets_one_line_naming_the_argument(call, message):
  with pytest.raises(ValueError) as info:
    call()
  text = str(info.value)
  assert text.startswith(message) and "\n" not in text, text
