"""Mini-batch Hessian extremes against the exact truth of least squares.

For ``L_B(w) = (1/2B) sum_{i in B} (x_i . w - y_i)^2`` the batch Hessian is
``X_B^T X_B / B`` at every w, so ``lambda_max(H_B)`` is ``np.linalg.eigvalsh``
of a d x d matrix and its expectation over batches is a finite average over
all C(N, B) subsets.
"""

import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from gradlab import curvature


def _least_squares(n, d, seed=0):
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(n, d)) * np.array([2.0, 1.0, 0.5, 0.3][:d])
  y = x @ rng.normal(size=d) + 0.1 * rng.normal(size=n)
  data = {"x": jnp.asarray(x, jnp.float32), "y": jnp.asarray(y, jnp.float32)}
  loss = lambda w, b: 0.5 * jnp.mean((b["x"] @ w - b["y"]) ** 2)
  return x, data, loss


def _top(x):
  return np.linalg.eigvalsh(x.T @ x / len(x))[-1]


def test_expected_top_eigenvalue_exceeds_the_full_one_and_falls_with_b_by_enumeration():
  n, d = 7, 3
  x, data, loss = _least_squares(n, d)
  full = _top(x)
  exact = [
    np.mean([_top(x[list(s)]) for s in itertools.combinations(range(n), b)])
    for b in range(1, n + 1)
  ]
  # Jensen (lambda_max is convex, E H_B = H) and the nesting H_B' = E[H_B | B in B']:
  # E lambda_max(H_B) >= lambda_max(H), non-increasing in B, equal at B = N
  assert all(e > full * (1 + 1e-9) for e in exact[:-1]), (exact, full)
  assert all(a >= b - 1e-12 for a, b in zip(exact, exact[1:])), exact
  np.testing.assert_allclose(exact[-1], full, rtol=1e-12)

  sizes, num_batches = (1, 3, 7), 64
  res = jax.jit(
    lambda p, dt, k: curvature.minibatch_top_eigenvalues(
      loss, p, dt, sizes, k, num_batches=num_batches, num_iterations=d
    )
  )(jnp.zeros(d), data, jax.random.key(0))
  assert res.eigenvalues.shape == (3, num_batches) and res.batch_sizes == sizes
  for i, b in enumerate(sizes):
    idx = np.asarray(res.indices[i])
    assert idx.shape == (num_batches, b) and all(len(set(r)) == b for r in idx)
    # each batch's Lanczos value is its dense eigvalsh (float32 rounding)
    dense = [_top(x[r]) for r in idx]
    np.testing.assert_allclose(np.asarray(res.eigenvalues[i]), dense, rtol=1e-4)
    # the sampled mean estimates the enumerated expectation: 5 standard errors
    se = float(res.stderr[i])
    assert abs(float(res.mean[i]) - exact[b - 1]) < 5 * se + 1e-5 * exact[b - 1], (b, se)


def test_hessian_noise_matches_the_dense_per_example_spread():
  n, d = 20, 4
  x, data, loss = _least_squares(n, d, seed=1)
  h = x.T @ x / n
  truth = np.mean([np.sum((np.outer(xi, xi) - h) ** 2) for xi in x]) / d
  s2, se = curvature.hessian_noise(loss, jnp.zeros(d), data, jax.random.key(1), num_probes=400)
  # Hutchinson over 400 probes: 5 standard errors
  assert abs(float(s2) - truth) < 5 * float(se), (float(s2), truth, float(se))


def test_spiked_formula_closed_form():
  lam, s = 2.0, 4.0
  # above the BBP threshold (lam > s / sqrt(B), here B = 16: s_B = 1) the outlier
  np.testing.assert_allclose(
    curvature.spiked_top_eigenvalue(16, top_eigenvalue=lam, noise=s), lam + 1.0 / lam
  )
  # below it (B = 1: s_B = 4 > 2) the semicircle's edge 2 s_B
  np.testing.assert_allclose(curvature.spiked_top_eigenvalue(1, top_eigenvalue=lam, noise=s), 8.0)
  # continuous at the threshold lam = s_B (B = 4): lam + lam = 2 s_B
  np.testing.assert_allclose(curvature.spiked_top_eigenvalue(4, top_eigenvalue=lam, noise=s), 4.0)
  # a batch of the whole finite population has no fluctuation
  np.testing.assert_allclose(
    curvature.spiked_top_eigenvalue(50, top_eigenvalue=lam, noise=s, num_examples=50), lam
  )


def test_fits_recover_exact_laws():
  b = np.array([4.0, 8.0, 16.0, 64.0, 256.0])
  fit = curvature.fit_inverse_batch(b, 3.0 + 5.0 / b, np.full(5, 0.1))
  np.testing.assert_allclose([float(fit.intercept), float(fit.slope)], [3.0, 5.0], rtol=1e-4)
  finite = 3.0 + 5.0 * (300 - b) / (b * 299)  # without replacement from N = 300
  fit = curvature.fit_inverse_batch(b, finite, num_examples=300)
  np.testing.assert_allclose([float(fit.intercept), float(fit.slope)], [3.0, 5.0], rtol=1e-4)
  law = curvature.fit_power_law(b, 2.0 * b**0.5)
  np.testing.assert_allclose([float(law.exponent), float(law.prefactor)], [0.5, 2.0], rtol=1e-4)
  assert float(law.stderr) < 1e-3  # an exact law leaves only float32 residuals
  noisy = curvature.fit_power_law(b, 2.0 * b**0.5 * np.array([1.1, 0.9, 1.05, 0.95, 1.0]))
  assert 0 < float(noisy.stderr) < 0.1


def test_bisection_brackets_gd_stability_limit_2_over_lambda():
  # Full-batch GD (B = N) on a quadratic diverges iff eta > 2 / lambda_max(H).
  n, d = 32, 4
  x, data, loss = _least_squares(n, d, seed=2)
  limit = 2 / np.linalg.eigvalsh(x.T @ x / n)[-1]
  w0 = jnp.ones(d)
  steps = 200
  res = curvature.largest_stable_learning_rate(
    loss,
    w0,
    data,
    optax.sgd,
    jax.random.key(3),
    batch_size=n,
    num_steps=steps,
    low=0.01 * limit,
    high=10 * limit,
    factor=10.0,
    num_rounds=3,
    num_seeds=2,
  )
  assert res.rate.shape == (2,)
  # a rate below the limit contracts every direction: never a divergence
  assert np.all(res.diverged >= limit * (1 - 1e-6)), (res, limit)
  # just above it the top direction grows by (1 + 2 delta)^(2 steps) in loss; to stay
  # below 10x the start (with that direction's share >= 1e-3) delta < ln(1e4) / (4 steps)
  assert np.all(res.stable <= limit * (1 + math.log(1e4) / (4 * steps))), (res, limit)
  assert np.all((res.stable < res.rate) & (res.rate < res.diverged))
  # three rounds of 10 points over a factor 1000: a bracket well under 10% wide
  assert np.all(res.diverged / res.stable < 1.1)
  # a bracket entirely below the limit is censored: nan rate, high seen stable
  below = curvature.largest_stable_learning_rate(
    loss,
    w0,
    data,
    optax.sgd,
    jax.random.key(3),
    batch_size=n,
    num_steps=steps,
    low=0.01 * limit,
    high=0.5 * limit,
    factor=10.0,
    num_rounds=2,
  )
  assert np.isnan(below.rate[0]) and below.stable[0] == 0.5 * limit


def test_bad_arguments_are_refused_naming_them():
  _, data, loss = _least_squares(7, 3)
  w = jnp.zeros(3)
  key = jax.random.key(0)
  cases = [
    (
      lambda: curvature.minibatch_top_eigenvalues(loss, w, data, [], key, num_batches=2),
      "batch_sizes",
    ),
    (
      lambda: curvature.minibatch_top_eigenvalues(loss, w, data, [8], key, num_batches=2),
      "batch_sizes: 8",
    ),
    (
      lambda: curvature.minibatch_top_eigenvalues(loss, w, data, [2], key, num_batches=0),
      "num_batches",
    ),
    (
      lambda: curvature.largest_stable_learning_rate(
        loss, w, data, optax.sgd, key, batch_size=2, num_steps=10, low=1.0, high=0.5, factor=2.0
      ),
      "high:",
    ),
    (lambda: curvature.fit_power_law([1.0, 2.0], [1.0, 2.0]), "x, y"),
  ]
  for call, message in cases:
    with pytest.raises(ValueError, match=message):
      call()
