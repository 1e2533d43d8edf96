import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from gradlab import train, zeroth_order


def _quadratic(dim, seed=0):
  rng = np.random.default_rng(seed)
  a = rng.normal(size=(dim, dim))
  h = jnp.asarray(a @ a.T / dim + np.eye(dim), jnp.float32)
  c = jnp.asarray(rng.normal(size=dim), jnp.float32)
  loss = lambda p, b: 0.5 * p["x"] @ h @ p["x"] - c @ p["x"]
  return loss, h, c


def test_spsa_is_unbiased_on_a_quadratic():
  # Central differences are exact for a quadratic: c = z^T grad, so E[c z] = grad.
  dim, n = 6, 20_000
  loss, h, c = _quadratic(dim)
  params = {"x": jnp.linspace(-1.0, 1.0, dim)}
  true = h @ params["x"] - c
  est = jax.jit(
    jax.vmap(lambda k: zeroth_order.spsa_gradient(loss, params, None, k, epsilon=1e-2).grad["x"])
  )(jax.random.split(jax.random.key(0), n))
  est = np.asarray(est)
  z = np.abs(est.mean(0) - np.asarray(true)) / (est.std(0, ddof=1) / math.sqrt(n))
  assert z.max() < 4.5  # 6 coordinates: a false alarm ~4e-5
  # variance matches theory for a linear function: E|g_hat - g|^2 = (d + 1)|g|^2 (one probe)
  err = np.mean(np.sum((est - np.asarray(true)) ** 2, 1))
  np.testing.assert_allclose(err, (dim + 1) * float(true @ true), rtol=0.1)


@pytest.mark.parametrize("dim,probes", [(100, 1), (100, 16), (400, 16), (400, 64)])
def test_spsa_cosine_grows_as_sqrt_probes_over_dimension(dim, probes):
  g = jax.random.normal(jax.random.key(1), (dim,))
  loss = lambda p, b: p["x"] @ g  # linear: the estimate's law depends on n and d only
  params = {"x": jnp.zeros(dim)}
  trials = 400
  est = jax.jit(
    jax.vmap(
      lambda k: zeroth_order.spsa_gradient(loss, params, None, k, num_probes=probes).grad["x"]
    )
  )(jax.random.split(jax.random.key(2), trials))
  # For Gaussian probes and linear f: E[g_hat . g] = |g|^2 and E|g_hat|^2 = |g|^2 (n+d+1)/n
  # exactly, so E[g_hat . g] / (sqrt(E|g_hat|^2) |g|) = sqrt(n / (n + d + 1)) ~ sqrt(n / d);
  # the per-draw cosine concentrates there when n is large (for n = 1 its mean is
  # E|u_1| = sqrt(2 / (pi d)) instead).
  cos = float(jnp.mean(est @ g) / (jnp.sqrt(jnp.mean(jnp.sum(est**2, 1))) * jnp.linalg.norm(g)))
  theory = math.sqrt(probes / (probes + dim + 1))
  np.testing.assert_allclose(cos, theory, rtol=0.1)


def test_sparse_mask_keeps_the_smallest_entries_per_leaf():
  params = {"a": jnp.array([0.1, -2.0, 0.5, -0.05, 3.0]), "b": jnp.array([[1.0, -1.0], [0.2, 5.0]])}
  m = zeroth_order.sparse_mask(params, fraction=0.5)
  np.testing.assert_array_equal(m["a"], [1, 0, 1, 1, 0])  # |x| <= the median 0.5: 0.1, 0.5, 0.05
  z = zeroth_order.perturbation(jax.random.key(0), params, m)
  assert np.all(np.asarray(z["a"])[np.asarray(m["a"]) == 0] == 0)


def test_zo_estimate_trains_through_an_optax_chain():
  loss, h, c = _quadratic(10)
  train_loss = lambda p, b, k: (loss(p, b), {})
  opt = optax.chain(optax.clip_by_global_norm(10.0), optax.sgd(0.05))
  step = train.make_train_step(
    train_loss,
    opt,
    donate=False,
    value_and_grad_fn=zeroth_order.zo_value_and_grad(train_loss, num_probes=8),
  )
  state = train.TrainState.create({"x": jnp.zeros(10)}, opt, jax.random.key(0))
  optimum = float(loss({"x": jnp.linalg.solve(h, c)}, None))
  for _ in range(400):
    state, m = step(state, {"dummy": jnp.zeros((1,))})
  assert float(loss(state.params, None)) - optimum < 0.05 * abs(optimum)


def test_cbo_finds_the_global_minimum_of_rastrigin():
  shift = jnp.array([0.7, -1.2, 0.4])
  rastrigin = lambda x: (
    10 * x.size + jnp.sum((x - shift) ** 2 - 10 * jnp.cos(2 * jnp.pi * (x - shift)))
  )
  particles = jax.random.uniform(jax.random.key(0), (200, 3), minval=-3, maxval=3)
  state = zeroth_order.cbo_init(particles, rastrigin, jax.random.key(1), alpha=50.0)
  step = jax.jit(
    lambda s: zeroth_order.cbo_step(s, rastrigin, alpha=50.0, drift=1.0, noise=0.7, dt=0.05)
  )
  for _ in range(400):
    state = step(state)
  np.testing.assert_allclose(state.consensus, shift, atol=0.05)


def test_consensus_weights_and_bad_input():
  x = jnp.array([[0.0], [1.0], [2.0]])
  f = jnp.array([3.0, 1.0, 2.0])
  w = np.exp(-2.0 * np.asarray(f))
  w /= w.sum()
  np.testing.assert_allclose(
    zeroth_order.consensus_point(x, f, 2.0)[0], w @ np.array([0, 1, 2.0]), rtol=1e-6
  )
  with pytest.raises(ValueError, match="epsilon"):
    zeroth_order.spsa_gradient(
      lambda p, b: 0.0, {"x": jnp.zeros(2)}, None, jax.random.key(0), epsilon=0.0
    )
  with pytest.raises(ValueError, match="num_probes"):
    zeroth_order.spsa_gradient(
      lambda p, b: 0.0, {"x": jnp.zeros(2)}, None, jax.random.key(0), num_probes=0
    )
  with pytest.raises(ValueError, match="fraction"):
    zeroth_order.sparse_mask({"x": jnp.zeros(2)}, fraction=0.0)
  with pytest.raises(ValueError, match="particles"):
    zeroth_order.cbo_init(jnp.zeros((1, 2)), jnp.sum, jax.random.key(0))
