"""WTA-CRS: unbiased by exact enumeration of its sampler, less variance than CRS,
an untouched forward pass, and only k rows stored."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gradlab import gradstats
from gradlab.gradstats import wta_crs


def _exact_moments(x, dy, probs, k, wta):
  """Mean and total variance of the estimate, by enumerating every draw of the
  with-replacement slots (their probabilities multiply)."""
  n = len(probs)
  order = np.argsort(-probs, kind="stable")[:k]
  c = int(wta_crs.winners(jnp.asarray(probs), k)) if wta else 0
  det = order[:c]
  p_c = probs[det].sum()
  rest = [i for i in range(n) if i not in set(det.tolist())]
  q = probs[rest] / (1 - p_c)
  s = k - c
  base = sum(np.outer(x[i], dy[i]) for i in det) if c else np.zeros((x.shape[1], dy.shape[1]))
  mean = np.zeros_like(base)
  second = 0.0
  for combo in itertools.product(range(len(rest)), repeat=s):
    pr = np.prod(q[list(combo)])
    est = base + sum(
      (1 - p_c) / s * np.outer(x[rest[j]], dy[rest[j]]) / probs[rest[j]] for j in combo
    )
    mean += pr * est
    second += pr * np.sum(est**2)
  return mean, second - np.sum(mean**2), c


def test_wta_crs_and_crs_are_exactly_unbiased_and_wta_has_less_variance():
  rng = np.random.default_rng(0)
  n, k = 6, 3
  x = rng.normal(size=(n, 3)) * np.array([[5.0], [3.0], [0.3], [0.2], [0.2], [0.1]])
  dy = rng.normal(size=(n, 2))
  probs = np.asarray(wta_crs.row_probabilities(jnp.asarray(x)), np.float64)
  probs /= probs.sum()
  truth = x.T @ dy
  m_wta, v_wta, c = _exact_moments(x, dy, probs, k, wta=True)
  m_crs, v_crs, _ = _exact_moments(x, dy, probs, k, wta=False)
  np.testing.assert_allclose(m_wta, truth, rtol=1e-10, atol=1e-12)
  np.testing.assert_allclose(m_crs, truth, rtol=1e-10, atol=1e-12)
  assert c >= 1  # two heavy rows: the winners are kept
  assert v_wta < v_crs
  # the sampler draws what the enumeration weighs: a Monte Carlo mean of plan_rows
  est = jax.jit(
    jax.vmap(
      lambda kk: wta_crs.estimate(
        jnp.asarray(x), jnp.asarray(dy), wta_crs.plan_rows(jnp.asarray(probs), k, kk)
      )
    )
  )(jax.random.split(jax.random.key(0), 20000))
  se = np.asarray(est.std(0)) / np.sqrt(20000)
  assert np.all(np.abs(np.asarray(est.mean(0)) - truth) < 4 * se + 1e-6)


def test_the_dense_layer_is_exact_forward_estimates_the_kernel_gradient_and_stores_k_rows():
  rng = np.random.default_rng(1)
  x = jnp.asarray(rng.normal(size=(40, 8)), jnp.float32)
  w = jnp.asarray(rng.normal(size=(8, 4)), jnp.float32)
  b = jnp.zeros(4)
  key = jax.random.key(0)
  y = gradstats.wta_crs_dense(x, w, b, key, keep_fraction=0.3)
  np.testing.assert_allclose(y, x @ w + b, rtol=1e-6)
  f = lambda xx, ww, bb, kk: jnp.sum(
    jnp.sin(gradstats.wta_crs_dense(xx, ww, bb, kk, keep_fraction=0.3))
  )
  exact = jax.grad(lambda xx, ww, bb: jnp.sum(jnp.sin(xx @ ww + bb)), argnums=(0, 1, 2))(x, w, b)
  gx, gw, gb = jax.grad(f, argnums=(0, 1, 2))(x, w, b, key)
  np.testing.assert_allclose(gx, exact[0], rtol=1e-5)  # input and bias gradients are exact
  np.testing.assert_allclose(gb, exact[2], rtol=1e-5)
  # the kernel gradient is unbiased: its mean over keys approaches the exact one
  many = jax.jit(jax.vmap(lambda kk: jax.grad(f, argnums=1)(x, w, b, kk)))(
    jax.random.split(key, 4000)
  )
  se = np.asarray(many.std(0)) / np.sqrt(4000)
  assert np.mean(np.abs(np.asarray(many.mean(0)) - np.asarray(exact[1])) < 4 * se) > 0.97
  # what the backward pass keeps: 12 of the 40 rows (the residuals of the vjp)
  _, vjp = jax.vjp(lambda xx: gradstats.wta_crs_dense(xx, w, b, key, keep_fraction=0.3), x)
  shapes = [np.shape(a) for a in jax.tree.leaves(vjp)]
  assert (12, 8) in shapes and (40, 8) not in shapes


def test_bad_keep_fraction_is_refused():
  with pytest.raises(ValueError, match="^keep_fraction: expected a value in"):
    gradstats.wta_crs_dense(
      jnp.ones((4, 2)), jnp.ones((2, 2)), jnp.zeros(2), jax.random.key(0), keep_fraction=0.0
    )
