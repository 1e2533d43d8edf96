"""Curvature probes against the dense jax.hessian of a small network."""

import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.flatten_util import ravel_pytree

from gradlab import curvature, sharding, train


def _problem(dtype=jnp.float32, n=40):
  k1, k2, k3, k4 = jax.random.split(jax.random.key(0), 4)
  params = {
    "w1": jax.random.normal(k1, (5, 8), dtype) * 0.7,
    "b1": jnp.zeros(8, dtype) + 0.1,
    "w2": jax.random.normal(k2, (8, 3), dtype) * 0.7,
    "b2": jnp.zeros(3, dtype),
  }
  batch = {"x": jax.random.normal(k3, (n, 5), dtype), "y": jax.random.randint(k4, (n,), 0, 3)}

  def model(p, b):
    return jnp.tanh(b["x"] @ p["w1"] + p["b1"]) @ p["w2"] + p["b2"]

  def per_example(p, b):
    return optax.softmax_cross_entropy_with_integer_labels(model(p, b), b["y"])

  def loss(p, b):
    return jnp.mean(per_example(p, b))

  return params, batch, model, per_example, loss


def _dense_hessian(loss, params, batch):
  flat, unravel = ravel_pytree(params)
  # jitted: an eager jax.hessian compiles each of its vmapped ops alone (7x slower here)
  return jax.jit(jax.hessian(lambda x: loss(unravel(x), batch)))(flat), unravel


def test_hvp_equals_dense_hessian_times_v():
  with jax.enable_x64(True):
    params, batch, _, _, loss = _problem(jnp.float64)
    h, unravel = _dense_hessian(loss, params, batch)
    v = jax.random.normal(jax.random.key(1), (h.shape[0],), jnp.float64)
    expected = h @ v
    got = ravel_pytree(curvature.hvp(loss, params, batch, unravel(v)))[0]
    np.testing.assert_allclose(got, expected, rtol=1e-10, atol=1e-12)
    got2 = ravel_pytree(curvature.make_hvp(loss, params, batch)(unravel(v)))[0]
    np.testing.assert_allclose(got2, expected, rtol=1e-10, atol=1e-12)


def test_ggn_and_empirical_fisher_products_equal_their_dense_forms():
  with jax.enable_x64(True):
    params, batch, model, per_example, loss = _problem(jnp.float64)
    flat, unravel = ravel_pytree(params)
    v = jax.random.normal(jax.random.key(2), flat.shape, jnp.float64)
    # GGN: J^T H_l J with J the Jacobian of the logits, H_l the Hessian of the loss in them
    out_loss = lambda o, b: jnp.mean(optax.softmax_cross_entropy_with_integer_labels(o, b["y"]))
    j = jax.jit(jax.jacobian(lambda x: model(unravel(x), batch).ravel()))(flat)
    o = model(params, batch)
    hl = jax.jit(jax.hessian(lambda z: out_loss(z.reshape(o.shape), batch)))(o.ravel())
    ggn = ravel_pytree(curvature.ggn_vp(model, out_loss, params, batch, unravel(v)))[0]
    np.testing.assert_allclose(ggn, j.T @ hl @ j @ v, rtol=1e-10, atol=1e-12)
    # the GGN is PSD here (softmax cross-entropy is convex in the logits)
    assert float(v @ ggn) > 0
    # empirical Fisher: (1/N) sum_i g_i g_i^T
    g = jax.jit(jax.jacobian(lambda x: per_example(unravel(x), batch)))(flat)  # [N, P]
    ef = ravel_pytree(curvature.empirical_fisher_vp(per_example, params, batch, unravel(v)))[0]
    np.testing.assert_allclose(ef, g.T @ (g @ v) / g.shape[0], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", ["rademacher", "gaussian"])
def test_hutchinson_trace_within_4_standard_errors_and_stderr_shrinks(name):
  sampler = {"rademacher": curvature.sampler_signs, "gaussian": curvature.sampler_normal}[name]
  params, batch, _, _, loss = _problem()
  h, _ = _dense_hessian(loss, params, batch)
  h = np.asarray(h, np.float64)
  true = np.trace(h)
  small = curvature.hessian_trace(
    loss, params, batch, jax.random.key(3), num_probes=100, probe_batch=32, sampler=sampler
  )
  big = curvature.hessian_trace(
    loss, params, batch, jax.random.key(4), num_probes=1600, probe_batch=64, sampler=sampler
  )
  # 4 standard errors: a false alarm about 1 time in 16,000 per check
  for est in (small, big):
    assert abs(float(est.estimate) - true) < 4 * float(est.stderr), (est, true)
  # Theory for one probe: Var = 2(|H|_F^2 - sum H_ii^2) (Rademacher), 2|H|_F^2 (Gaussian)
  fro2, diag2 = np.sum(h**2), np.sum(np.diag(h) ** 2)
  sd1 = math.sqrt(2 * (fro2 - diag2) if name == "rademacher" else 2 * fro2)
  for est in (small, big):
    # the sample std of m probes is within ~4/sqrt(2m) relative of the truth (kurtosis aside)
    np.testing.assert_allclose(float(est.stderr) * math.sqrt(est.num_probes), sd1, rtol=0.35)
  # 1/sqrt(m): 16x the probes gives a quarter of the standard error
  np.testing.assert_allclose(float(small.stderr) / float(big.stderr), 4.0, rtol=0.3)


def test_hutchinson_diagonal_within_its_standard_errors():
  params, batch, _, _, loss = _problem()
  h, unravel = _dense_hessian(loss, params, batch)
  est = curvature.hessian_diagonal(
    loss, params, batch, jax.random.key(5), num_probes=2000, probe_batch=250
  )
  got, se = ravel_pytree(est.estimate)[0], ravel_pytree(est.stderr)[0]
  z = np.abs(np.asarray(got) - np.diag(np.asarray(h))) / np.asarray(se)
  # ~75 coordinates (those with zero variance, e.g. all-equal rows, have z = 0/0: skip)
  z = z[np.isfinite(z)]
  assert z.max() < 4.5  # P(any of 75 above 4.5 sigma) ~ 5e-4
  assert est.num_probes == 2000


def test_hutch_plus_plus_beats_hutchinson_on_a_spectrum_with_few_large_eigenvalues():
  n, repeats, m = 200, 60, 30
  rng = np.random.default_rng(0)
  q, _ = np.linalg.qr(rng.normal(size=(n, n)))
  eig = np.concatenate([[200.0, 100.0, 60.0, 40.0, 20.0], rng.uniform(0, 0.2, n - 5)])
  a = jnp.asarray((q * eig) @ q.T, jnp.float32)
  like = jnp.zeros(n)
  matvec = lambda v: a @ v
  true = eig.sum()
  keys = jax.random.split(jax.random.key(6), repeats)
  hutch = jax.jit(jax.vmap(lambda k: curvature.trace(matvec, like, k, num_probes=m).estimate))(keys)
  hpp = jax.jit(
    jax.vmap(lambda k: curvature.hutch_plus_plus(matvec, like, k, num_matvecs=m).estimate)
  )(keys)
  rmse = lambda e: float(np.sqrt(np.mean((np.asarray(e) - true) ** 2)))
  assert rmse(hpp) < 0.2 * rmse(hutch), (rmse(hpp), rmse(hutch))


def test_lanczos_top5_match_eigvalsh():
  params, batch, _, _, loss = _problem()
  h, _ = _dense_hessian(loss, params, batch)
  dense = np.sort(np.linalg.eigvalsh(np.asarray(h, np.float64)))[::-1][:5]
  res = curvature.hessian_top_eigenvalues(
    loss, params, batch, jax.random.key(7), k=5, num_iterations=40
  )
  np.testing.assert_allclose(np.asarray(res.eigenvalues), dense, rtol=1e-4)
  # Ritz vectors are eigenvectors: small residuals, orthonormal
  assert float(res.residuals.max()) < 1e-3 * abs(dense[0])
  vecs = jax.vmap(lambda t: ravel_pytree(t)[0])(res.eigenvectors)
  np.testing.assert_allclose(vecs @ vecs.T, np.eye(5), atol=1e-4)


def test_full_lanczos_recovers_every_eigenvalue_even_after_breakdown():
  # A matrix with repeated eigenvalues: the Krylov space from one vector has
  # dimension 4 < n, so Lanczos breaks down and must restart to see them all.
  n = 12
  rng = np.random.default_rng(1)
  q, _ = np.linalg.qr(rng.normal(size=(n, n)))
  eig = np.repeat([5.0, 2.0, -1.0, 0.5], 3)
  a = jnp.asarray((q * eig) @ q.T, jnp.float32)
  t = curvature.lanczos_tridiagonal(
    lambda v: a @ v, jnp.zeros(n), jax.random.key(0), num_iterations=n
  )
  theta = np.linalg.eigvalsh(np.diag(t.alphas) + np.diag(t.betas, 1) + np.diag(t.betas, -1))
  np.testing.assert_allclose(np.sort(theta), np.sort(eig), atol=1e-4)


def test_power_iteration_baseline_agrees_with_lanczos():
  params, batch, _, _, loss = _problem()
  h, _ = _dense_hessian(loss, params, batch)
  ev = np.linalg.eigvalsh(np.asarray(h, np.float64))
  dominant = ev[np.argmax(np.abs(ev))]
  val, _ = curvature.power_iteration(
    curvature.make_hvp(loss, params, batch),
    params,
    jax.random.key(8),
    num_iterations=2000,
    tol=1e-9,
  )
  np.testing.assert_allclose(float(val), dominant, rtol=1e-3)


def test_spectral_density_integrates_to_one_and_matches_moments():
  params, batch, _, _, loss = _problem()
  h, _ = _dense_hessian(loss, params, batch)
  ev = np.linalg.eigvalsh(np.asarray(h, np.float64))
  runs = 64
  d = curvature.hessian_spectral_density(
    loss, params, batch, jax.random.key(9), num_iterations=30, num_runs=runs, grid_size=4000
  )
  grid, dens = np.asarray(d.grid, np.float64), np.asarray(d.density, np.float64)
  np.testing.assert_allclose(np.trapezoid(dens, grid), 1.0, atol=1e-3)
  np.testing.assert_allclose(np.asarray(d.weights).sum(-1), 1.0, atol=1e-5)
  # Moments: each run's quadrature gives v^T H^j v / |v|^2 exactly (degree < 2m),
  # an unbiased estimate of tr(H^j)/n; compare within 4 standard errors over runs.
  nodes, w = np.asarray(d.nodes, np.float64), np.asarray(d.weights, np.float64)
  for j in (1, 2):
    per_run = np.sum(w * nodes**j, axis=1)
    se = per_run.std(ddof=1) / math.sqrt(runs)
    assert abs(per_run.mean() - np.mean(ev**j)) < 4 * se + 1e-6, (j, per_run.mean(), ev.mean())
  # the smoothed density's mean is the quadrature's mean
  np.testing.assert_allclose(
    np.trapezoid(grid * dens, grid), np.sum(w * nodes, 1).mean(), rtol=1e-3, atol=1e-5
  )


def test_probes_reduce_across_a_sharded_batch():
  params, batch, _, _, loss = _problem(n=64)
  mesh = sharding.make_mesh()
  sharded = sharding.shard_batch(batch, mesh)
  key = jax.random.key(10)
  f = jax.jit(lambda b: curvature.hessian_trace(loss, params, b, key, num_probes=8).estimate)
  np.testing.assert_allclose(f(sharded), f(batch), rtol=1e-5)
  g = jax.jit(lambda b: curvature.hessian_top_eigenvalues(loss, params, b, key, k=2).eigenvalues)
  np.testing.assert_allclose(g(sharded), g(batch), rtol=1e-4)


def test_sharpness_summary_and_instrument():
  params, batch, _, _, loss = _problem()
  h, _ = _dense_hessian(loss, params, batch)
  ev = np.linalg.eigvalsh(np.asarray(h, np.float64))
  s = curvature.sharpness(
    loss, params, batch, jax.random.key(11), learning_rate=0.5, num_probes=400, num_iterations=40
  )
  np.testing.assert_allclose(float(s.lambda_max), ev.max(), rtol=1e-4)
  assert abs(float(s.trace) - ev.sum()) < 4 * float(s.trace_stderr)
  np.testing.assert_allclose(float(s.gd_ratio), ev.max() * 0.25, rtol=1e-4)


def test_sharpness_instrument_logs_inside_fit(tmp_path):
  params, batch, _, _, loss = _problem(n=64)
  mesh = sharding.make_mesh()
  train_loss = lambda p, b, k: (loss(p, b), {})
  opt = optax.sgd(0.5)
  state = jax.device_put(
    train.TrainState.create(params, opt, jax.random.key(0)), sharding.replicated(mesh)
  )
  step = train.make_train_step(train_loss, opt, mesh=mesh)
  inst = curvature.sharpness_instrument(
    train_loss, learning_rate=0.5, num_probes=16, num_iterations=30
  )
  sharded = sharding.shard_batch(batch, mesh)
  _, last = train.fit(
    state,
    step,
    lambda s: itertools.repeat(sharded),
    num_steps=6,
    workdir=str(tmp_path),
    checkpoint_every=6,
    log_every=3,
    instruments=[train.Instrument("curv", inst, every=3)],
  )
  records = train.read_metrics(str(tmp_path / "metrics.jsonl"))
  assert [r["step"] for r in records if "curv/lambda_max" in r] == [3, 6]
  # Instruments measure the state a step updates. To compare with a dense
  # Hessian at known params, run with a zero learning rate (params fixed).
  state0 = train.TrainState.create(params, optax.sgd(0.0), jax.random.key(0))
  step0 = train.make_train_step(train_loss, optax.sgd(0.0), mesh=mesh)
  _, last0 = train.fit(
    jax.device_put(state0, sharding.replicated(mesh)),
    step0,
    lambda s: itertools.repeat(sharded),
    num_steps=3,
    workdir=str(tmp_path / "z"),
    checkpoint_every=3,
    log_every=3,
    instruments=[train.Instrument("curv", inst, every=3)],
  )
  h, _ = _dense_hessian(loss, params, batch)
  np.testing.assert_allclose(
    last0["curv/lambda_max"], np.linalg.eigvalsh(np.asarray(h, np.float64)).max(), rtol=1e-3
  )
  assert set(k for k in last if k.startswith("curv/")) == {
    "curv/lambda_max",
    "curv/trace",
    "curv/trace_stderr",
    "curv/gd_ratio",
    "curv/sgd_ratio",
  }


def test_bad_input_gets_clear_errors():
  params, batch, _, _, loss = _problem()
  key = jax.random.key(0)
  with pytest.raises(ValueError, match="num_probes: expected an integer >= 1, got 0"):
    curvature.hessian_trace(loss, params, batch, key, num_probes=0)
  with pytest.raises(ValueError, match="num_probes"):
    curvature.hessian_diagonal(loss, params, batch, key, num_probes=-3)
  with pytest.raises(ValueError, match="probe_batch"):
    curvature.hessian_trace(loss, params, batch, key, num_probes=4, probe_batch=0)
  with pytest.raises(ValueError, match="k: 500 exceeds the dimension 75"):
    curvature.hessian_top_eigenvalues(loss, params, batch, key, k=500)
  with pytest.raises(ValueError, match="num_iterations: 100 exceeds the dimension 75"):
    curvature.hessian_top_eigenvalues(loss, params, batch, key, k=2, num_iterations=100)
  not_scalar = lambda p, b: jnp.tanh(b["x"] @ p["w1"]).sum(-1)
  with pytest.raises(ValueError, match=r"loss_fn: expected a scalar loss, got \(40,\)"):
    curvature.hvp(not_scalar, params, batch, params)
  with pytest.raises(ValueError, match="loss_fn: expected a scalar loss"):
    curvature.hessian_trace(not_scalar, params, batch, key, num_probes=4)
  with pytest.raises(ValueError, match="sampler: expected a function"):
    curvature.hessian_trace(loss, params, batch, key, num_probes=4, sampler="sphere")
  with pytest.raises(ValueError, match="num_matvecs: expected a positive multiple of 3"):
    curvature.hutch_plus_plus(lambda v: v, params, key, num_matvecs=10)
  with pytest.raises(ValueError, match="learning_rate"):
    curvature.sharpness(loss, params, batch, key, learning_rate=0.0)
  with pytest.raises(ValueError, match="per_example_loss_fn: expected a vector"):
    curvature.empirical_fisher_vp(loss, params, batch, params)


def test_numpy_integer_counts_are_accepted_like_python_ones():
  # Counts often come from NumPy (np.arange, a config read back from .npz): an
  # np.int64 is an integer, and refusing it with "expected an integer" misled.
  params, batch, _, _, loss = _problem()
  key = jax.random.key(0)
  a = curvature.hessian_trace(
    loss, params, batch, key, num_probes=np.int64(4), probe_batch=np.int32(2)
  )
  b = curvature.hessian_trace(loss, params, batch, key, num_probes=4, probe_batch=2)
  np.testing.assert_array_equal(a.estimate, b.estimate)
  top = curvature.hessian_top_eigenvalues(
    loss, params, batch, key, k=np.int64(2), num_iterations=np.int64(10)
  )
  assert top.eigenvalues.shape == (2,)
  with pytest.raises(ValueError, match="num_probes: expected an integer >= 1, got 2.5"):
    curvature.hessian_trace(loss, params, batch, key, num_probes=2.5)


def test_sampler_signs_are_fair_independent_rademacher_signs():
  like = {"a": jnp.zeros((1000, 37)), "b": jnp.zeros(3)}
  v = curvature.sampler_signs(jax.random.key(0), like)
  x = np.asarray(v["a"]).ravel()
  assert set(np.unique(x)) == {-1.0, 1.0} and v["b"].shape == (3,)
  # mean 0 and no correlation between neighbours (which share a random word):
  # each statistic has standard error 1/sqrt(n); 4 standard errors
  n = x.size
  assert abs(x.mean()) < 4 / np.sqrt(n)
  assert abs(np.mean(x[1:] * x[:-1])) < 4 / np.sqrt(n - 1)
  assert abs(np.mean(x[32:] * x[:-32])) < 4 / np.sqrt(n - 32)
  w = curvature.sampler_signs(jax.random.key(1), like)
  assert abs(np.mean(x * np.asarray(w["a"]).ravel())) < 4 / np.sqrt(n)  # keys differ
