"""Estimators against the exact gradient of E_{D ~ softmax(theta)}[f(D)]."""

import functools
import importlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from gradlab import discrete

THETA = jnp.array([[0.5, -0.3, 0.1], [-1.0, 0.8, 0.2]])
W = jnp.array([[1.0, -2.0, 0.5], [0.7, 1.5, -1.2]])


def f_nonlinear(d):
  z = jnp.sum(d * W)
  return z**3 - 2.0 * z**2 + jnp.sum(d[0] * d[1] * W[0])  # cubic plus a cross term


def _z_scores(samples, truth):
  mean = samples.mean(0)
  stderr = samples.std(0, ddof=1) / np.sqrt(len(samples))
  return np.abs(mean - truth) / stderr


@pytest.mark.parametrize(
  "baseline,num_samples",
  [("none", 1), ("moving_average", 1), ("leave_one_out", 2), ("leave_one_out", 4)],
)
def test_reinforce_is_unbiased_with_every_baseline(baseline, num_samples):
  _, exact = discrete.exact_gradient(f_nonlinear, THETA)
  n = 40_000

  def estimate(key):
    return jax.grad(
      lambda t: (
        discrete.reinforce(
          key, t, f_nonlinear, num_samples=num_samples, baseline=baseline, baseline_value=-1.5
        ).loss
      )
    )(THETA)

  grads = np.asarray(jax.jit(jax.vmap(estimate))(jax.random.split(jax.random.key(0), n)))
  # 6 coordinates, each mean within 4.5 standard errors of the truth: a false
  # alarm has probability about 6 * 6.8e-6 = 4e-5 (normal approximation).
  assert _z_scores(grads.reshape(n, -1), np.asarray(exact).ravel()).max() < 4.5


def test_reinforce_test_detects_a_biased_baseline():
  # The same check has the power to fail: a baseline that includes the
  # sample's own value (mean over all S) scales the gradient by (S-1)/S.
  _, exact = discrete.exact_gradient(f_nonlinear, THETA)
  n, s = 40_000, 2

  def biased(key):
    out = discrete.reinforce(key, THETA, f_nonlinear, num_samples=s)
    return jnp.mean(
      (out.values - out.values.mean())[:, None, None] * (out.samples - jax.nn.softmax(THETA)), 0
    )

  grads = np.asarray(jax.jit(jax.vmap(biased))(jax.random.split(jax.random.key(0), n)))
  assert _z_scores(grads.reshape(n, -1), np.asarray(exact).ravel()).max() > 10


def test_reinforce_loss_value_is_the_mean_of_f():
  out = discrete.reinforce(
    jax.random.key(1), THETA, f_nonlinear, num_samples=5, baseline="leave_one_out"
  )
  np.testing.assert_allclose(out.loss, out.values.mean(), rtol=1e-6)
  np.testing.assert_allclose(out.values, jax.vmap(f_nonlinear)(out.samples), rtol=1e-6)


def _poly(eps, p, c=0.45):
  """The paper's polynomial programming objective with the latent scaled by
  eps: f(D) = mean_i |eps D_i[0] - c|^p. eps = 1 is the paper's problem;
  shrinking eps shrinks the Taylor remainders of f between one-hot points."""
  return lambda d: jnp.mean(jnp.abs(eps * d[..., 0] - c) ** p)


POLY_THETA = jnp.array([[0.2, -0.1], [-0.4, 0.3], [0.05, 0.0], [0.6, -0.5]])


def _bias(estimator, f, theta=POLY_THETA):
  _, exact = discrete.exact_gradient(f, theta)
  mean = discrete.expected_estimate(functools.partial(estimator, temperature=1.0), f, theta)
  return float(jnp.linalg.norm(mean - exact) / jnp.linalg.norm(exact))


@pytest.mark.parametrize("p", [1.5, 3.0])
def test_reinmax_error_is_second_order_where_st_is_first_order(p):
  # Exact expectations by enumeration (no Monte Carlo): the relative bias of ST
  # is O(eps) (forward Euler) and ReinMax's O(eps^2) (Heun), so their log-log
  # slopes against eps are 1 and 2 as eps -> 0. eps stays well below c = 0.45,
  # where |eps z - c|^p keeps away from its kink at 0 (there the remainders of
  # p = 1.5 blow up and the asymptotic orders do not show yet).
  with jax.enable_x64(True):
    eps = np.array([0.1, 0.05, 0.025, 0.0125])
    theta = POLY_THETA.astype(jnp.float64)
    st = np.array([_bias(discrete.straight_through_from_sample, _poly(e, p), theta) for e in eps])
    rm = np.array([_bias(discrete.reinmax_from_sample, _poly(e, p), theta) for e in eps])
  assert np.all(rm < st)
  # Local slopes approach the orders from above by O(eps) (e.g. ReinMax at
  # p = 1.5: 2.18, 2.08, 2.04); the asymptotic order is read at the smallest pair.
  st_slope = np.log(st[-2] / st[-1]) / np.log(eps[-2] / eps[-1])
  rm_slope = np.log(rm[-2] / rm[-1]) / np.log(eps[-2] / eps[-1])
  assert abs(st_slope - 1.0) < 0.1, st
  assert abs(rm_slope - 2.0) < 0.1, rm
  assert np.all(np.diff(np.log(rm)) / np.diff(np.log(eps)) > 1.9)  # never first order


def test_on_the_papers_problems_reinmax_beats_st_and_st_gumbel():
  # eps = 1: the paper's objective. p = 2 is quadratic in D, where ReinMax at
  # tau = 1 is exactly unbiased; ST is not. ST-GS has a sample-dependent
  # backward, so its bias is estimated by Monte Carlo with its standard error.
  n = 20_000
  for p in (1.5, 2.0, 3.0):
    f = _poly(1.0, p)
    _, exact = discrete.exact_gradient(f, POLY_THETA)
    st = _bias(discrete.straight_through_from_sample, f)
    rm = _bias(discrete.reinmax_from_sample, f)
    gs = jax.jit(
      jax.vmap(
        lambda k: jax.grad(lambda t: f(discrete.straight_through_gumbel(k, t, temperature=1.0)))(
          POLY_THETA
        )
      )
    )(jax.random.split(jax.random.key(p.__hash__() % 1000), n))
    gs = np.asarray(gs).reshape(n, -1)
    gs_bias = np.linalg.norm(gs.mean(0) - np.asarray(exact).ravel()) / np.linalg.norm(exact)
    gs_noise = np.sqrt(np.sum(gs.var(0, ddof=1)) / n) / np.linalg.norm(exact)
    assert rm < st
    assert rm < gs_bias - 4 * gs_noise, (p, rm, gs_bias, gs_noise)
    if p == 2.0:
      assert st > 0.1
      with jax.enable_x64(True):  # exactly unbiased: zero up to float64 rounding
        assert _bias(discrete.reinmax_from_sample, f, POLY_THETA.astype(jnp.float64)) < 1e-12


def test_straight_through_is_exact_for_linear_f_and_reinmax_for_quadratic_f():
  w = jnp.array([[0.3, -1.0, 2.0], [1.0, 0.5, -0.5]])
  linear = lambda d: jnp.sum(d * w)
  quadratic = lambda d: jnp.sum(d * w) ** 2 - jnp.sum(d[0] * d[1])
  for est, fs in (
    (discrete.straight_through_from_sample, (linear,)),
    (discrete.reinmax_from_sample, (linear, quadratic)),
  ):
    for f in fs:
      _, exact = discrete.exact_gradient(f, THETA)
      mean = discrete.expected_estimate(functools.partial(est, temperature=1.0), f, THETA)
      np.testing.assert_allclose(mean, exact, atol=2e-6)
  # and ST is biased for the quadratic one, ReinMax for tau != 1
  assert _bias_at(discrete.straight_through_from_sample, quadratic, 1.0) > 0.05
  assert _bias_at(discrete.reinmax_from_sample, quadratic, 1.5) > 0.05


def _bias_at(est, f, tau):
  _, exact = discrete.exact_gradient(f, THETA)
  mean = discrete.expected_estimate(functools.partial(est, temperature=tau), f, THETA)
  return float(jnp.linalg.norm(mean - exact) / jnp.linalg.norm(exact))


HARD = {
  "straight_through": lambda k, t, tau: discrete.straight_through(k, t, temperature=tau),
  "straight_through_gumbel": lambda k, t, tau: discrete.straight_through_gumbel(
    k, t, temperature=tau
  ),
  "gumbel_rao": lambda k, t, tau: discrete.gumbel_rao(k, t, temperature=tau, num_samples=4),
  "reinmax": lambda k, t, tau: discrete.reinmax(k, t, temperature=tau),
}


@pytest.mark.parametrize("name", list(HARD))
def test_samples_are_one_hot_and_follow_softmax_at_any_temperature(name):
  theta = jnp.array([1.0, 0.0, -0.5, 0.3])
  n = 20_000
  for tau in (0.5, 2.0):
    d = jax.jit(jax.vmap(lambda k: HARD[name](k, theta, tau)))(
      jax.random.split(jax.random.key(7), n)
    )
    d = np.asarray(d)
    assert set(np.unique(d)) == {0.0, 1.0} and np.all(d.sum(-1) == 1)
    counts = d.sum(0)
    chi2 = stats.chisquare(counts, n * np.asarray(jax.nn.softmax(theta)))
    assert chi2.pvalue > 1e-4, (name, tau, counts)  # fails by chance 1 time in 10,000


@pytest.mark.parametrize("name", list(HARD))
def test_estimators_compose_with_jit_vmap_grad(name):
  keys = jax.random.split(jax.random.key(0), 3)
  theta = jax.random.normal(jax.random.key(1), (3, 2, 5))  # any batch shape
  loss = lambda t, k: jnp.sum(HARD[name](k, t, 1.3) * jnp.arange(5.0)) ** 2
  grads = jax.jit(jax.vmap(jax.grad(loss), in_axes=(0, 0)))(theta, keys)
  assert grads.shape == theta.shape and bool(jnp.all(jnp.isfinite(grads)))
  np.testing.assert_allclose(grads.sum(-1), 0.0, atol=1e-4)  # softmax gradients sum to zero


def test_gumbel_rao_conditional_gumbels_keep_the_sample_as_argmax():
  theta = jax.random.normal(jax.random.key(0), (50, 6)) * 2
  d = discrete.sample_one_hot(jax.random.key(1), theta)
  perturbed = discrete.conditional_gumbel_logits(jax.random.key(2), theta, d, 32)
  assert np.all(np.asarray(jnp.argmax(perturbed, -1)) == np.asarray(jnp.argmax(d, -1))[None])


def test_gumbel_rao_survives_exponential_draws_of_exactly_zero():
  gr = importlib.import_module("gradlab.discrete.gumbel_rao")
  theta = jnp.array([[0.3, -0.2, 1.0]])
  sample = jnp.array([[0.0, 0.0, 1.0]])
  e = jnp.array([[[0.0, 1.0, 0.0]], [[0.0, 0.0, 0.5]]])  # E_i = 0 and E_j = 0
  out = gr._race_logits(theta, sample, e)
  assert bool(jnp.all(jnp.isfinite(out)))
  assert np.all(np.asarray(out[..., 2:]) >= np.asarray(out[..., :2]))  # the sample stays on top


def test_gumbel_rao_has_the_mean_of_st_gumbel_and_less_variance():
  theta, n = jnp.array([0.4, -0.2, 0.9]), 40_000
  w = jnp.array([1.0, -0.5, 2.0])
  f = lambda d: jnp.sum(d * w) ** 2
  keys = jax.random.split(jax.random.key(3), n)
  gs = np.asarray(
    jax.jit(
      jax.vmap(
        lambda k: jax.grad(lambda t: f(discrete.straight_through_gumbel(k, t, temperature=0.7)))(
          theta
        )
      )
    )(keys)
  )
  gr = np.asarray(
    jax.jit(
      jax.vmap(
        lambda k: jax.grad(lambda t: f(discrete.gumbel_rao(k, t, temperature=0.7, num_samples=16)))(
          theta
        )
      )
    )(keys)
  )
  diff_se = np.sqrt(gs.var(0) / n + gr.var(0) / n)
  assert np.all(np.abs(gs.mean(0) - gr.mean(0)) < 4.5 * diff_se)  # Rao-Blackwell: same mean
  assert np.sum(gr.var(0)) < 0.8 * np.sum(gs.var(0))  # ... and less variance


def test_gumbel_softmax_is_a_relaxed_simplex_point():
  y = discrete.gumbel_softmax(jax.random.key(0), jnp.zeros((4, 3)), temperature=0.5)
  np.testing.assert_allclose(y.sum(-1), 1.0, rtol=1e-6)
  assert np.all((np.asarray(y) > 0) & (np.asarray(y) < 1))


@pytest.mark.parametrize("name", list(HARD) + ["gumbel_softmax"])
def test_bad_input_names_the_argument(name):
  fn = HARD.get(name, lambda k, t, tau: discrete.gumbel_softmax(k, t, temperature=tau))
  key = jax.random.key(0)
  with pytest.raises(ValueError, match="temperature: expected a finite value > 0, got 0"):
    fn(key, jnp.zeros(3), 0.0)
  with pytest.raises(ValueError, match="temperature"):
    fn(key, jnp.zeros(3), -1.0)
  with pytest.raises(ValueError, match="logits: expected shape \\[..., K\\] with a category axis"):
    fn(key, jnp.float32(1.0), 1.0)
  with pytest.raises(ValueError, match="logits: expected at least 2 categories"):
    fn(key, jnp.zeros((4, 1)), 1.0)
  with pytest.raises(ValueError, match="logits: expected finite values, got 1 non-finite"):
    fn(key, jnp.array([0.0, jnp.nan, 1.0]), 1.0)
  with pytest.raises(ValueError, match="logits: expected finite values, got 2 non-finite"):
    fn(key, jnp.array([jnp.inf, -jnp.inf, 1.0]), 1.0)


def test_reinforce_and_oracle_bad_input():
  f = lambda d: jnp.sum(d)
  key = jax.random.key(0)
  with pytest.raises(ValueError, match="baseline: expected one of"):
    discrete.reinforce(key, THETA, f, baseline="mean")
  with pytest.raises(ValueError, match="num_samples: leave_one_out needs at least 2"):
    discrete.reinforce(key, THETA, f, baseline="leave_one_out")
  with pytest.raises(ValueError, match="baseline_value: required"):
    discrete.reinforce(key, THETA, f, baseline="moving_average")
  with pytest.raises(ValueError, match="num_samples: expected an integer >= 1"):
    discrete.reinforce(key, THETA, f, num_samples=0)
  with pytest.raises(ValueError, match="f: expected a scalar per configuration"):
    discrete.reinforce(key, THETA, lambda d: d)
  with pytest.raises(ValueError, match="exceed max_configurations"):
    discrete.exact_gradient(f, jnp.zeros((20, 4)))
  with pytest.raises(ValueError, match="num_samples"):
    discrete.gumbel_rao(key, THETA, num_samples=0)
