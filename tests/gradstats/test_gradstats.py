"""Gradient statistics against NumPy on explicit per-example gradients."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from gradlab import gradstats, sharding, train


def _problem(n=24):
  k1, k2, k3, k4 = jax.random.split(jax.random.key(0), 4)
  params = {"w": jax.random.normal(k1, (4, 3)), "b": jax.random.normal(k2, (3,)) * 0.1}
  batch = {"x": jax.random.normal(k3, (n, 4)), "y": jax.random.randint(k4, (n,), 0, 3)}

  def loss(p, b):
    logits = jnp.tanh(b["x"] @ p["w"] + p["b"])
    return optax.softmax_cross_entropy_with_integer_labels(logits, b["y"]).mean()

  return params, batch, loss


def _explicit(loss, params, batch):
  n = batch["x"].shape[0]
  rows = [
    jax.flatten_util.ravel_pytree(
      jax.grad(loss)(params, jax.tree.map(lambda x: x[i : i + 1], batch))
    )[0]
    for i in range(n)
  ]
  return np.asarray(jnp.stack(rows), np.float64)


@pytest.mark.parametrize("chunk", [None, 1, 6])
def test_per_example_grads_equal_each_examples_own_gradient(chunk):
  params, batch, loss = _problem()
  g = gradstats.per_example_grads(loss, params, batch, chunk_size=chunk)
  flat = np.asarray(jax.vmap(lambda t: jax.flatten_util.ravel_pytree(t)[0])(g))
  np.testing.assert_allclose(flat, _explicit(loss, params, batch), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("chunk", [None, 4])
def test_statistics_match_numpy(chunk):
  params, batch, loss = _problem()
  g = _explicit(loss, params, batch)
  b = g.shape[0]
  m = gradstats.gradient_moments(loss, params, batch, chunk_size=chunk)
  flat = lambda t: np.asarray(jax.flatten_util.ravel_pytree(t)[0], np.float64)
  mean, var = g.mean(0), g.var(0, ddof=1)
  np.testing.assert_allclose(flat(m.mean), mean, rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(flat(gradstats.variance(m)), var, rtol=1e-4, atol=1e-7)
  np.testing.assert_allclose(flat(gradstats.gsnr(m)), mean**2 / var, rtol=1e-3)
  np.testing.assert_allclose(gradstats.mean_gsnr(m), np.mean(mean**2 / (var + 1e-5)), rtol=1e-3)
  tr = var.sum()
  np.testing.assert_allclose(
    gradstats.noise_scale_simple(m), tr / (mean @ mean - tr / b), rtol=1e-4
  )
  np.testing.assert_allclose(
    gradstats.norm_test(m),
    math.sqrt(np.sum((g - mean) ** 2) / (b - 1) / (b * mean @ mean)),
    rtol=1e-4,
  )
  dots = g @ mean
  np.testing.assert_allclose(
    gradstats.inner_product_test(loss, params, batch, chunk_size=chunk),
    math.sqrt(dots.var(ddof=1) / b) / (mean @ mean),
    rtol=1e-4,
  )
  np.testing.assert_allclose(
    gradstats.inner_product_test(loss, params, batch, chunk_size=chunk, mean=m.mean),
    math.sqrt(dots.var(ddof=1) / b) / (mean @ mean),
    rtol=1e-4,
  )
  # per-layer per-example norms
  w_norms = np.linalg.norm(g[:, 3:], axis=1)  # ravel_pytree orders leaves by key: b (3), w (12)
  np.testing.assert_allclose(gradstats.per_layer_norms(m)["w"], w_norms, rtol=1e-5)


def test_two_batch_noise_scale_is_unbiased_on_linear_regression():
  # Per-example loss 0.5 (x^T w - y)^2, x ~ N(0, I_D), y = x^T w* + N(0, s^2). At w,
  # with d = w - w*: G = d, |G|^2 = |d|^2, Sigma = (|d|^2 + s^2) I + d d^T, so
  # tr Sigma = D (|d|^2 + s^2) + |d|^2.
  dim, s, b_small, b_big, trials = 8, 0.5, 4, 64, 4000
  w_star = jnp.linspace(-1, 1, dim)
  w = w_star + 0.3
  d2 = float(jnp.sum((w - w_star) ** 2))
  true_g2, true_tr = d2, dim * (d2 + s * s) + d2
  loss = lambda w, x, y: 0.5 * jnp.mean((x @ w - y) ** 2)

  def one(key):
    kx, ke = jax.random.split(key)
    x = jax.random.normal(kx, (b_big, dim))
    y = x @ w_star + s * jax.random.normal(ke, (b_big,))
    g_small = jax.grad(loss)(w, x[:b_small], y[:b_small])
    g_big = jax.grad(loss)(w, x, y)
    est = gradstats.two_batch_estimate(g_small @ g_small, g_big @ g_big, b_small, b_big)
    return est.g_sq, est.trace_sigma

  g2, tr = map(np.asarray, jax.jit(jax.vmap(one))(jax.random.split(jax.random.key(0), trials)))
  for est, truth in ((g2, true_g2), (tr, true_tr)):
    se = est.std(ddof=1) / math.sqrt(trials)
    assert abs(est.mean() - truth) < 4 * se, (est.mean(), truth, se)  # 1 in 16,000
  ratio = float(gradstats.ratio_of_means(g2, tr))
  np.testing.assert_allclose(ratio, true_tr / true_g2, rtol=0.1)


def test_noise_scale_inside_the_sharded_train_step():
  params, batch, loss = _problem(n=64)
  mesh = sharding.make_mesh()
  train_loss = lambda p, b, k: (loss(p, b), {})
  vg = gradstats.noise_scale_value_and_grad(train_loss, mesh)
  opt = optax.sgd(0.1)
  step = train.make_train_step(train_loss, opt, mesh=mesh, value_and_grad_fn=vg, donate=False)
  plain = train.make_train_step(train_loss, opt, mesh=mesh, donate=False)
  state = train.TrainState.create(params, opt, jax.random.key(0))
  sb = sharding.shard_batch(batch, mesh)
  s1, m1 = step(state, sb)
  s2, m2 = plain(state, sb)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), s1, s2)
  # explicit per-device gradients: 8 shards of 8
  shard_g = [
    jax.flatten_util.ravel_pytree(
      jax.grad(loss)(params, jax.tree.map(lambda x: x[i * 8 : (i + 1) * 8], batch))
    )[0]
    for i in range(8)
  ]
  g_small_sq = np.mean([float(g @ g) for g in shard_g])
  g_big = jax.flatten_util.ravel_pytree(jax.grad(loss)(params, batch))[0]
  np.testing.assert_allclose(m1["noise/g_small_sq"], g_small_sq, rtol=1e-4)
  np.testing.assert_allclose(m1["noise/g_big_sq"], float(g_big @ g_big), rtol=1e-4)
  # the estimate from the step's own inputs (its subtraction of near-equal float32
  # numbers amplifies their 1e-6 rounding, so compare formula, not re-derivation)
  est = gradstats.two_batch_estimate(m1["noise/g_small_sq"], m1["noise/g_big_sq"], 8, 64)
  np.testing.assert_allclose(m1["noise/b_simple"], est.b_simple, rtol=1e-5)
  np.testing.assert_allclose(m1["noise/trace_sigma"], est.trace_sigma, rtol=1e-5)


def test_gradient_alignment():
  params, batch, loss = _problem(n=30)
  groups = {
    "a": jax.tree.map(lambda x: x[:10], batch),
    "b": jax.tree.map(lambda x: x[10:20], batch),
    "a_again": jax.tree.map(lambda x: x[:10], batch),
  }
  al = gradstats.gradient_alignment(loss, params, groups)
  assert al.names == ("a", "b", "a_again")
  np.testing.assert_allclose(np.diag(al.cosine), 1.0, rtol=1e-5)
  np.testing.assert_allclose(al.cosine[0, 2], 1.0, rtol=1e-5)
  ga = jax.flatten_util.ravel_pytree(jax.grad(loss)(params, groups["a"]))[0]
  gb = jax.flatten_util.ravel_pytree(jax.grad(loss)(params, groups["b"]))[0]
  np.testing.assert_allclose(
    al.cosine[0, 1], ga @ gb / (jnp.linalg.norm(ga) * jnp.linalg.norm(gb)), rtol=1e-5
  )


def test_instrument_runs_in_fit(tmp_path):
  params, batch, loss = _problem(n=32)
  train_loss = lambda p, b, k: (loss(p, b), {})
  opt = optax.sgd(0.1)
  inst = gradstats.gradient_statistics_instrument(train_loss, init_params=params, chunk_size=8)
  import itertools

  state, last = train.fit(
    train.TrainState.create(params, opt, jax.random.key(0)),
    train.make_train_step(train_loss, opt),
    lambda s: itertools.repeat(batch),
    num_steps=4,
    workdir=str(tmp_path),
    checkpoint_every=4,
    log_every=2,
    instruments=[train.Instrument("gs", inst, every=2)],
  )
  for k in (
    "grad_norm",
    "norm_test",
    "inner_product_test",
    "mean_gsnr",
    "noise_scale_simple",
    "distance_from_init",
  ):
    assert np.isfinite(last[f"gs/{k}"])
  assert last["gs/distance_from_init"] > 0
  # instruments measure the point the step's own gradient is taken at
  np.testing.assert_allclose(last["gs/grad_norm"], last["grad_norm"], rtol=1e-4)


def test_bad_input():
  params, batch, loss = _problem()
  with pytest.raises(ValueError, match="chunk_size: expected an integer >= 1"):
    gradstats.per_example_grads(loss, params, batch, chunk_size=0)
  with pytest.raises(ValueError, match="chunk_size: 5 does not divide the batch size 24"):
    gradstats.gradient_moments(loss, params, batch, chunk_size=5)
  one = jax.tree.map(lambda x: x[:1], batch)
  with pytest.raises(ValueError, match="batch: a variance needs at least 2 examples, got 1"):
    gradstats.variance(gradstats.gradient_moments(loss, params, one))
  with pytest.raises(ValueError, match="at least 2 examples"):
    gradstats.inner_product_test(loss, params, one)
  with pytest.raises(ValueError, match="b_small, b_big"):
    gradstats.two_batch_estimate(1.0, 1.0, 8, 8)
  with pytest.raises(ValueError, match="mesh: the noise scale needs >= 2 devices"):
    gradstats.noise_scale_value_and_grad(
      lambda p, b, k: (0.0, {}), sharding.make_mesh(jax.devices()[:1])
    )
  with pytest.raises(ValueError, match="groups: expected at least 2"):
    gradstats.gradient_alignment(loss, params, {"a": batch})


def test_dense_factorized_moments_equal_the_per_example_ones():
  from gradlab import models

  model = models.MLP((16, 8, 3))
  params = model.init(jax.random.key(0), jnp.zeros((1, 5)))
  x = jax.random.normal(jax.random.key(1), (12, 5))
  y = jax.random.randint(jax.random.key(2), (12,), 0, 3)
  ce = lambda out: optax.softmax_cross_entropy_with_integer_labels(out, y).mean()
  loss = lambda p, b: optax.softmax_cross_entropy_with_integer_labels(
    model.apply(p, b["x"]), b["y"]
  ).mean()
  ref = gradstats.gradient_moments(loss, params, {"x": x, "y": y}, chunk_size=4)
  got = gradstats.dense_gradient_moments(model, params, x, ce)
  close = lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
  jax.tree.map(close, got.mean, ref.mean)
  jax.tree.map(close, got.sq_mean, ref.sq_mean)
  jax.tree.map(close, got.sq_norms, ref.sq_norms)
  np.testing.assert_allclose(gradstats.mean_gsnr(got), gradstats.mean_gsnr(ref), rtol=1e-4)


def test_dense_moments_refuse_non_dense_models():
  import flax.linen as nn

  class WithScale(nn.Module):
    @nn.compact
    def __call__(self, x):
      return nn.Dense(3)(x) * self.param("scale", nn.initializers.ones, (3,))

  model = WithScale()
  params = model.init(jax.random.key(0), jnp.zeros((1, 4)))
  with pytest.raises(ValueError, match="model: parameter 'scale' is not inside a Dense layer"):
    gradstats.dense_gradient_moments(model, params, jnp.ones((4, 4)), jnp.mean)
