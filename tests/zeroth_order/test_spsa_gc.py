"""SPSA-GC (BlackVIP): the update rule against Nesterov's, the estimate against its exact moments."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gradlab import zeroth_order

DIM = 6


def _quadratic(seed=0):
  rng = np.random.default_rng(seed)
  a = rng.normal(size=(DIM, DIM))
  h = a @ a.T / DIM + np.eye(DIM)
  c = rng.normal(size=DIM)
  return h, c


def _true_gradient_run(h, c, w0, steps, **kw):
  """SPSA-GC's update fed the exact gradient, jitted as one scan; the iterates ``[steps, DIM]``."""
  hj, cj = jnp.asarray(h, jnp.float32), jnp.asarray(c, jnp.float32)

  @jax.jit
  def run(w):
    state = zeroth_order.spsa_gc_init({"x": w}, **kw)

    def body(carry, _):
      params, state = carry
      grad = {"x": hj @ params["x"] - cj}
      params, state = zeroth_order.spsa_gc_update(params, state, grad, **kw)
      return (params, state), params["x"]

    return jax.lax.scan(body, ({"x": w}, state), None, length=steps)[1]

  return np.asarray(run(jnp.asarray(w0, jnp.float32)), np.float64)


def test_update_with_the_true_gradient_is_nesterov_momentum():
  h, c = _quadratic()
  w0 = np.linspace(-1.0, 1.0, DIM)
  steps, kw = 30, dict(a=0.05, o=1.0, alpha=0.4, momentum=0.9)
  got = _true_gradient_run(h, c, w0, steps, **kw)
  # changdaeoh/BlackVIP trainers/blackvip.py forward_backward (opt_type 'spsa-gc'), line by line
  w, m, ref = w0.copy(), 0.0, []
  for step in range(1, steps + 1):
    ak = kw["a"] / ((step + kw["o"]) ** kw["alpha"])
    ghat = h @ w - c
    m = kw["momentum"] * m + ghat if step > 1 else ghat
    w = w - ak * (ghat + kw["momentum"] * m)
    ref.append(w)
  # float32 rounding accumulated over 30 steps of a contraction: ~30 ulps of O(1) iterates
  np.testing.assert_allclose(got, np.asarray(ref), rtol=1e-5, atol=1e-5)
  assert np.abs(got[-1] - w0).max() > 0.1  # it moved

  # with a constant gain it is Nesterov's accelerated gradient (Sutskever et al. 2013) in its
  # look-ahead variable w = theta + beta v
  a, beta = 0.05, 0.9
  got = _true_gradient_run(h, c, w0, steps, a=a, o=0.0, alpha=0.0, momentum=beta)
  theta, v, nag = w0.copy(), np.zeros(DIM), []
  for _ in range(steps):
    v = beta * v - a * (h @ (theta + beta * v) - c)
    theta = theta + v
    nag.append(theta + beta * v)
  np.testing.assert_allclose(got, np.asarray(nag), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("distribution,ratio", [("segmented", 7 / 6), ("rademacher", 1.0)])
def test_spall_estimate_is_unbiased_with_its_exact_variance_on_a_quadratic(distribution, ratio):
  # A quadratic's central difference is exact: g_hat_i = g_i + sum_{j != i} g_j D_j / D_i, so
  # E g_hat = g and E|g_hat - g|^2 = E[D^2] E[1/D^2] (d - 1)|g|^2, with E[D^2] E[1/D^2] =
  # (7/12) * 2 = 7/6 for |D| ~ U[1/2, 1] and 1 for +-1.
  h, c = _quadratic(1)
  hj, cj = jnp.asarray(h, jnp.float32), jnp.asarray(c, jnp.float32)
  loss = lambda p, b: 0.5 * p["x"] @ hj @ p["x"] - cj @ p["x"]
  params = {"x": jnp.linspace(-1.0, 1.0, DIM)}
  true = h @ np.linspace(-1.0, 1.0, DIM) - c
  n = 20_000
  est = jax.jit(
    jax.vmap(
      lambda k: zeroth_order.spall_gradient(
        loss, params, None, k, epsilon=0.1, distribution=distribution
      ).grad["x"]
    )
  )(jax.random.split(jax.random.key(0), n))
  est = np.asarray(est, np.float64)
  z = np.abs(est.mean(0) - true) / (est.std(0, ddof=1) / math.sqrt(n))
  assert z.max() < 4.5  # 6 coordinates: a false alarm ~4e-5
  err = np.sum((est - true) ** 2, 1)
  theory = ratio * (DIM - 1) * float(true @ true)
  # 5 standard errors of the mean squared error, from its own spread
  assert abs(err.mean() - theory) < 5 * err.std(ddof=1) / math.sqrt(n), (err.mean(), theory)


def test_step_replays_blackvip_on_a_cubic():
  # On L = sum(w^3) the central difference is 3 w^2 . D + c_k^2 sum(D^3), so the replay checks
  # the perturbation schedule c_k = c / k^gamma, the division by D and the probe average.
  loss = lambda p, b: jnp.sum(p["x"] ** 3)
  kw = dict(a=0.05, c=0.3, o=1.0, alpha=0.4, gamma=0.1, momentum=0.9, num_probes=3)
  w0 = np.array([0.5, -0.4, 0.3, 0.8])
  keys = jax.random.split(jax.random.key(7), 3)

  @jax.jit
  def run(w, keys):
    params = {"x": w}
    state = zeroth_order.spsa_gc_init(params, a=kw["a"], o=kw["o"], alpha=kw["alpha"])

    def body(carry, key):
      params, state, _ = zeroth_order.spsa_gc_step(loss, *carry, None, key, **kw)
      return (params, state), params["x"]

    return jax.lax.scan(body, (params, state), keys)[1]

  got = np.asarray(run(jnp.asarray(w0, jnp.float32), keys), np.float64)
  perturb = jax.jit(
    lambda k: jax.vmap(lambda kk: zeroth_order.spall_perturbation(kk, {"x": jnp.zeros(4)})["x"])(
      jax.random.split(k, kw["num_probes"])
    )
  )
  w, m, ref = w0.copy(), 0.0, []
  for step, k in enumerate(keys, start=1):
    ak = kw["a"] / ((step + kw["o"]) ** kw["alpha"])
    ck = kw["c"] / (step ** kw["gamma"])
    ghats = []
    for d in np.asarray(perturb(k), np.float64):
      loss1, loss2 = np.sum((w + ck * d) ** 3), np.sum((w - ck * d) ** 3)
      ghats.append((loss1 - loss2) / ((2 * ck) * d))
    ghat = np.mean(ghats, 0)
    m = kw["momentum"] * m + ghat if step > 1 else ghat
    w = w - ak * (ghat + kw["momentum"] * m)
    ref.append(w)
  # float32 rounding: O(1) values through 3 steps
  np.testing.assert_allclose(got, np.asarray(ref), rtol=1e-5, atol=1e-6)


def test_bad_input_names_the_argument():
  params = {"x": jnp.zeros(2)}
  loss = lambda p, b: jnp.sum(p["x"])
  with pytest.raises(ValueError, match="distribution"):
    zeroth_order.spall_gradient(
      loss, params, None, jax.random.key(0), epsilon=0.1, distribution="n"
    )
  with pytest.raises(ValueError, match="epsilon"):
    zeroth_order.spall_gradient(loss, params, None, jax.random.key(0), epsilon=0.0)
  with pytest.raises(ValueError, match="num_probes"):
    zeroth_order.spall_gradient(loss, params, None, jax.random.key(0), epsilon=0.1, num_probes=0)
  with pytest.raises(ValueError, match="momentum"):
    zeroth_order.spsa_gc_optimizer(momentum=1.0)
  with pytest.raises(ValueError, match="a:"):
    zeroth_order.spsa_gc_init(params, a=-1.0)
