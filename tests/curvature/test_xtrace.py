"""XTrace, XNysTrace, XDiag and Nystrom++ against their definitions and the dense truth.

The references here are the definitions (Epperly, Tropp, Webber 2024, Algorithm
1.2 and its Nystrom and diagonal variants), written naively in NumPy: for every
i, ``Q_(i) = orth(A Omega without column i)`` is recomputed from scratch. The
library computes all of them from one QR (``xtrace_helper.m``'s downdating);
the two must agree to float64 rounding on the same probes.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.flatten_util import ravel_pytree

from gradlab import curvature


def _probes(sampler, like, key, k):
  """The [n, k] probes the estimators draw from ``key`` (``exchangeable._setup``'s draw)."""
  cols = jax.vmap(lambda ki: ravel_pytree(sampler(ki, like))[0])(jax.random.split(key, k))
  return np.asarray(cols.T, np.float64)


def _orth_without(y, i):
  q, _ = np.linalg.qr(np.delete(y, i, axis=1))
  return q


def _xtrace_naive(a, om, improved):
  n, m = om.shape
  y, ests = a @ om, []
  for i in range(m):
    q = _orth_without(y, i)
    pw = om[:, i] - q @ (q.T @ om[:, i])
    scale = (n - m + 1) / (pw @ pw) if improved else 1.0
    ests.append(np.trace(q.T @ a @ q) + scale * pw @ a @ pw)
  return np.array(ests)


def _xnystrace_naive(a, om, improved):
  n, m = om.shape
  ests = []
  for i in range(m):
    o = np.delete(om, i, axis=1)
    y = a @ o
    a_hat = y @ np.linalg.pinv(o.T @ y) @ y.T  # the Nystrom approximation from the others
    w = om[:, i]
    q, _ = np.linalg.qr(o)
    pw = w - q @ (q.T @ w)
    scale = (n - m + 1) / (pw @ pw) if improved else 1.0
    ests.append(np.trace(a_hat) + scale * w @ (a - a_hat) @ w)
  return np.array(ests)


def _xdiag_naive(a, om):
  y = a @ om
  out = []
  for i in range(om.shape[1]):
    q = _orth_without(y, i)
    p = q @ q.T
    out.append(np.diag(p @ a) + om[:, i] * ((a - p @ a) @ om[:, i]))
  return np.mean(out, axis=0)


def _nystrom_pp_naive(a, om, psi):
  y = a @ om
  a_hat = y @ np.linalg.pinv(om.T @ y) @ y.T
  return np.trace(a_hat) + np.mean(np.sum(psi * ((a - a_hat) @ psi), axis=0))


def _psd(n, eig, seed=0):
  q, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(n, n)))
  return (q * eig) @ q.T


def test_ports_equal_the_naive_leave_one_out_definitions():
  with jax.enable_x64(True):
    n, m = 30, 6
    a = _psd(n, np.random.default_rng(1).uniform(0.1, 3.0, n))
    like = jnp.zeros(n, jnp.float64)
    matvec = lambda v: jnp.asarray(a) @ v
    key = jax.random.key(3)
    # the paper's default (sphere probes, improved) and plain Gaussian probes without it
    for sampler, improved in ((curvature.sampler_sphere, True), (curvature.sampler_normal, False)):
      om = _probes(sampler, like, key, m)
      kwargs = dict(sampler=sampler, improved=improved)
      ref = _xtrace_naive(a, om, improved)
      got = curvature.xtrace(matvec, like, key, num_matvecs=2 * m, **kwargs)
      # float64 rounding of a 30 x 30 problem with trace ~ 50
      np.testing.assert_allclose(float(got.estimate), ref.mean(), rtol=1e-10)
      np.testing.assert_allclose(float(got.stderr), ref.std(ddof=1) / math.sqrt(m), rtol=1e-8)
      assert got.num_probes == 2 * m
      ref = _xnystrace_naive(a, om, improved)
      got = curvature.xnystrace(matvec, like, key, num_matvecs=m, **kwargs)
      np.testing.assert_allclose(float(got.estimate), ref.mean(), rtol=1e-10)
      np.testing.assert_allclose(float(got.stderr), ref.std(ddof=1) / math.sqrt(m), rtol=1e-8)
    signs = _probes(curvature.sampler_signs, like, key, m)
    got = curvature.xdiag(matvec, like, key, num_matvecs=2 * m)
    np.testing.assert_allclose(np.asarray(got.estimate), _xdiag_naive(a, signs), atol=1e-12)
    ko, kp = jax.random.split(key)
    om = _probes(curvature.sampler_signs, like, ko, m)
    psi = _probes(curvature.sampler_signs, like, kp, m)
    got = curvature.nystrom_pp(matvec, like, key, num_matvecs=2 * m)
    # the library shifts by nu ~ sqrt(n) eps |Y|: a relative change of ~1e-14
    np.testing.assert_allclose(float(got.estimate), _nystrom_pp_naive(a, om, psi), rtol=1e-10)


def test_exact_below_half_the_budget_where_hutchinson_and_hutch_plus_plus_are_not():
  # The theorem: rank A < m (m = num_matvecs / 2 for XTrace and XDiag, m =
  # num_matvecs for XNysTrace) makes every Q_(i) span range(A), so the estimate
  # is exact up to rounding. A pytree-shaped operator, in float32.
  like = {"a": jnp.zeros((4, 5)), "b": jnp.zeros(10)}
  n, r = 30, 5
  rng = np.random.default_rng(2)
  u = rng.normal(size=(n, r))
  low = jnp.asarray(u @ np.diag(rng.uniform(1, 4, r)) @ u.T, jnp.float32)  # PSD, rank 5
  indefinite = jnp.asarray(u @ np.diag([3.0, -2.0, 1.5, -1.0, 0.5]) @ u.T, jnp.float32)
  _, unravel = ravel_pytree(like)
  key = jax.random.key(4)

  @jax.jit
  def estimates(mat):
    matvec = lambda v: unravel(mat @ ravel_pytree(v)[0])
    return (
      curvature.xtrace(matvec, like, key, num_matvecs=2 * (r + 1)).estimate,
      ravel_pytree(curvature.xdiag(matvec, like, key, num_matvecs=2 * (r + 1)).estimate)[0],
      curvature.trace(matvec, like, key, num_probes=12).estimate,
      curvature.hutch_plus_plus(matvec, like, key, num_matvecs=12).estimate,
    )

  for mat in (low, indefinite):
    true_trace, true_diag = float(jnp.trace(mat)), np.diag(np.asarray(mat))
    scale = float(jnp.abs(mat).max())
    xt, xd, hutch, hpp = estimates(mat)
    # float32 rounding: eps ~ 1.2e-7 times the entries' size and a condition factor
    assert abs(float(xt) - true_trace) < 1e-4 * scale * n, (xt, true_trace)
    np.testing.assert_allclose(np.asarray(xd), true_diag, atol=1e-4 * scale)
    # at the same budget Hutchinson and Hutch++ still carry sampling error
    for other in (hutch, hpp):
      assert abs(float(other) - true_trace) > 1e-2 * scale, other
  matvec = lambda v: unravel(low @ ravel_pytree(v)[0])
  est = curvature.xnystrace(matvec, like, jax.random.key(5), num_matvecs=r + 3)
  # float32 rounding (the shift nu = eps |Y|_F / sqrt(n) is taken off exactly)
  assert abs(float(est.estimate) - float(jnp.trace(low))) < 1e-4 * float(jnp.trace(low))
  # At rank = m - 1 exactly, Omega^T Y is singular to working precision and about
  # half the digits go (see the docstring of xnystrace); in float64 that leaves ~1e-10.
  with jax.enable_x64(True):
    # built in float64: a float32-rounded rank-5 matrix has eigenvalues of +-1e-6 |A|
    low64 = jnp.asarray(u @ np.diag(rng.uniform(1, 4, r)) @ u.T, jnp.float64)
    est = curvature.xnystrace(
      lambda v: low64 @ v, jnp.zeros(n, jnp.float64), jax.random.key(5), num_matvecs=r + 1
    )
    np.testing.assert_allclose(float(est.estimate), float(jnp.trace(low64)), rtol=1e-8)


def test_unbiased_on_a_random_psd_matrix_and_xtrace_beats_hutchinson():
  n, repeats, budget = 60, 400, 24
  eig = 1.0 / np.arange(1, n + 1) ** 1.5  # a decaying spectrum
  a64 = _psd(n, eig, seed=3)
  a = jnp.asarray(a64, jnp.float32)
  like = jnp.zeros(n)
  matvec = lambda v: a @ v
  keys = jax.random.split(jax.random.key(6), repeats)
  # lax.map, not vmap: two batched LAPACK calls at once can wedge XLA's CPU thread
  # pool (see the docstring of gradlab.curvature.exchangeable)
  run = lambda f: np.asarray(jax.jit(lambda ks: jax.lax.map(f, ks))(keys), np.float64)
  estimates = {
    "xtrace": run(lambda k: curvature.xtrace(matvec, like, k, num_matvecs=budget).estimate),
    "xnystrace": run(lambda k: curvature.xnystrace(matvec, like, k, num_matvecs=budget).estimate),
    "nystrom_pp": run(lambda k: curvature.nystrom_pp(matvec, like, k, num_matvecs=budget).estimate),
    "hutchinson": run(lambda k: curvature.trace(matvec, like, k, num_probes=budget).estimate),
  }
  true = eig.sum()
  for name, e in estimates.items():
    se = e.std(ddof=1) / math.sqrt(repeats)
    # 5 standard errors of the mean over repeats: a false alarm ~ 1 in 1.7 million
    assert abs(e.mean() - true) < 5 * se + 1e-5 * true, (name, e.mean(), true, se)
  # at equal products the exchangeable estimators' variance is far below Hutchinson's;
  # with 400 repeats a variance is known to ~ +-10% (sqrt(2 / 399) relative)
  var = {k: v.var(ddof=1) for k, v in estimates.items()}
  for name in ("xtrace", "xnystrace", "nystrom_pp"):
    assert var["hutchinson"] > 3 * var[name], var
  # diagonal: every entry unbiased within 5 standard errors
  diags = run(lambda k: curvature.xdiag(matvec, like, k, num_matvecs=budget).estimate)
  z = (diags.mean(0) - np.diag(a64)) / (diags.std(0, ddof=1) / math.sqrt(repeats))
  assert np.abs(z).max() < 5, z  # P(any of 60 beyond 5 sigma) ~ 3.4e-5


def _net():
  k1, k2, k3, k4 = jax.random.split(jax.random.key(0), 4)
  params = {
    "w1": jax.random.normal(k1, (5, 8)) * 0.7,
    "b1": jnp.zeros(8) + 0.1,
    "w2": jax.random.normal(k2, (8, 3)) * 0.7,
    "b2": jnp.zeros(3),
  }
  batch = {"x": jax.random.normal(k3, (40, 5)), "y": jax.random.randint(k4, (40,), 0, 3)}

  def loss(p, b):
    logits = jnp.tanh(b["x"] @ p["w1"] + p["b1"]) @ p["w2"] + p["b2"]
    return optax.softmax_cross_entropy_with_integer_labels(logits, b["y"]).mean()

  return params, batch, loss


def test_hessian_forms_unbiased_against_the_dense_hessian_of_a_small_net():
  tree, batch, tree_loss = _net()
  params, unravel = ravel_pytree(tree)  # one flat leaf: one probe generator to compile
  loss = lambda x, b: tree_loss(unravel(x), b)
  h = np.asarray(jax.hessian(lambda x: loss(x, batch))(params), np.float64)
  repeats = 200
  keys = jax.random.split(jax.random.key(7), repeats)

  def both(k):
    t = curvature.hessian_xtrace(loss, params, batch, k, num_matvecs=16).estimate
    d = curvature.hessian_xdiag(loss, params, batch, k, num_matvecs=16).estimate
    return t, d

  e, d = jax.jit(lambda ks: jax.lax.map(both, ks))(keys)
  e, d = np.asarray(e, np.float64), np.asarray(d, np.float64)
  se = e.std(ddof=1) / math.sqrt(repeats)
  # 5 standard errors (the Hessian is indefinite; XTrace needs no PSD)
  assert abs(e.mean() - np.trace(h)) < 5 * se, (e.mean(), np.trace(h), se)
  sd = d.std(0, ddof=1) / math.sqrt(repeats)
  ok = sd > 1e-7  # coordinates with no spread (exactly recovered) compare directly
  z = np.abs(d.mean(0) - np.diag(h))[ok] / sd[ok]
  assert z.max() < 5, z.max()  # 75 coordinates: P(any beyond 5 sigma) ~ 4e-5
  np.testing.assert_allclose(d.mean(0)[~ok], np.diag(h)[~ok], atol=1e-5)


def test_bad_arguments_are_refused_naming_them():
  like = jnp.zeros(6)
  mv = lambda v: v
  key = jax.random.key(0)
  cases = [
    (lambda: curvature.xtrace(mv, like, key, num_matvecs=7), "num_matvecs: expected an even"),
    (lambda: curvature.xtrace(mv, like, key, num_matvecs=2), "num_matvecs: expected an integer"),
    (lambda: curvature.xtrace(mv, like, key, num_matvecs=14), "num_matvecs: 14 needs"),
    (lambda: curvature.xnystrace(mv, like, key, num_matvecs=1), "num_matvecs"),
    (
      lambda: curvature.xtrace(mv, like, key, num_matvecs=4, sampler=curvature.sampler_signs),
      "improved:",
    ),
    (lambda: curvature.xtrace(mv, like, key, num_matvecs=4, improved=1), "improved:"),
    (lambda: curvature.xdiag(mv, like, key, num_matvecs=4, sampler="signs"), "sampler:"),
    (lambda: curvature.nystrom_pp(mv, like, key, num_matvecs=4, probe_batch=0), "probe_batch:"),
  ]
  for call, message in cases:
    with pytest.raises(ValueError, match=message):
      call()
