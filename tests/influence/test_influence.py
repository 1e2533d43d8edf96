"""gradlab.influence against exact answers: leave-one-out retraining, dense solves,
enumerated games, NumPy replays of the official formulas."""

import functools
import math

import flax.linen as nn
import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats
from sklearn.metrics import roc_auc_score

from gradlab import influence as gi
from gradlab import sharding
from gradlab.influence import metrics

N, D, T = 60, 5, 50


def _logistic(lam):
  def loss(p, e):
    z = (e["x"] @ p["kernel"] + p["bias"])[0]
    reg = 0.5 * lam * (jnp.sum(p["kernel"] ** 2) + jnp.sum(p["bias"] ** 2))
    return jnp.logaddexp(0.0, z) - e["y"] * z + reg

  return loss


def _data(n=N, t=T, d=D, seed=0, dtype=np.float64):
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(n + t, d))
  w = rng.normal(size=d)
  y = (rng.random(n + t) < 1 / (1 + np.exp(-x @ w))).astype(float)
  mk = lambda s: {"x": jnp.asarray(x[s], dtype), "y": jnp.asarray(y[s], dtype)}
  return mk(slice(0, n)), mk(slice(n, n + t))


def _zeros(d=D, dtype=jnp.float64):
  return {"kernel": jnp.zeros((d, 1), dtype), "bias": jnp.zeros((1,), dtype)}


def _loo_effects(loss, full, train, test):
  n = jax.tree.leaves(train)[0].shape[0]
  masks = gi.loo_masks(n, np.arange(n))
  outs = jax.jit(jax.vmap(lambda m: gi.newton_fit(loss, full, train, m)))(masks)
  per = lambda p: jax.vmap(lambda e: loss(p, e))(test)
  return jax.jit(lambda o: (jax.vmap(per)(o) - per(full)[None]).T)(outs)  # [t, n]


def test_explicit_influence_matches_leave_one_out_and_the_error_shrinks_with_l2():
  """First order in the parameter change, which is O(1 / (n (lambda + mu))): measured
  relative errors 0.26, 0.14, 0.082, 0.047, 0.034 at lambda 0.01, 0.1, 0.3, 1, 3
  (about lambda^-0.27 over 0.01-0.1, lambda^-0.47 over 0.1-1); correlations 0.986,
  0.996, 0.999, 0.9998, 0.9999 over the 50 x 60 test-train pairs."""
  errors = []
  with jax.enable_x64(True):
    train, test = _data()
    for lam in (0.01, 0.1, 1.0):
      loss = _logistic(lam)
      full = gi.newton_fit(loss, _zeros(), train, jnp.ones(N))
      assert float(jnp.linalg.norm(jax.grad(gi.functions.mean_loss(loss, train))(full)["kernel"]))
      effects = _loo_effects(loss, full, train, test)
      scores = gi.influence(loss, full, train, test, solver=gi.explicit())
      corr = np.corrcoef(np.ravel(scores), np.ravel(effects))[0, 1]
      assert corr >= 0.95, (lam, corr)
      errors.append(float(jnp.linalg.norm(scores - effects) / jnp.linalg.norm(effects)))
  assert all(a > b for a, b in zip(errors, errors[1:])), errors


def _solver_setup(lam=0.05):
  train, test = _data(n=40, t=6)
  loss = _logistic(lam)
  full = gi.newton_fit(loss, _zeros(), train, jnp.ones(40))
  return loss, full, train, test


def test_cg_lissa_and_arnoldi_agree_with_the_explicit_solve():
  with jax.enable_x64(True):
    loss, full, train, test = _solver_setup()
    h = np.asarray(gi.dense_hessian(loss, full, train))
    ev = np.linalg.eigvalsh(h)
    v = gi.per_example_gradients(loss, full, test)
    exact = np.linalg.solve(h, np.asarray(v).T).T
    solve = functools.partial(gi.inverse_hvp, loss, full, train, v)
    rel = lambda x: float(np.linalg.norm(np.asarray(x) - exact) / np.linalg.norm(exact))
    # CG stops at |r| <= tol |b|: the solution's relative error is <= cond(H) tol.
    tol = 1e-10
    assert rel(solve(solver=gi.cg(tol=tol))) <= ev[-1] / ev[0] * tol
    # LiSSA's Neumann series after J steps: error <= (1 - mu / scale)^J relative.
    scale, depth = 1.5 * ev[-1], 300
    bound = (1 - ev[0] / scale) ** depth
    lissa = rel(solve(solver=gi.lissa(scale=scale, depth=depth)))
    assert lissa <= bound * 1.01 + 1e-12, (lissa, bound)
    # Arnoldi: exact at rank d; the error falls as the rank grows.
    errs = [rel(solve(solver=gi.arnoldi(rank=r))) for r in (1, 3, 6)]
    assert errs[-1] < 1e-10
    assert errs[0] > errs[1] > errs[2], errs
    assert errs[0] > 0.05
    # and influence() is these solves dotted with the train gradients, over n
    g = np.asarray(gi.per_example_gradients(loss, full, train))
    np.testing.assert_allclose(
      gi.influence(loss, full, train, test, solver=gi.explicit()), exact @ g.T / 40, rtol=1e-9
    )


def test_lissa_with_sampled_batches_is_unbiased_within_its_spread():
  """Minibatch LiSSA: the mean over keys approaches the exact solve (the Neumann
  series is linear in each step's Hessian sample, the samples independent)."""
  with jax.enable_x64(True):
    loss, full, train, test = _solver_setup(lam=0.5)
    exact = gi.influence(loss, full, train, test, solver=gi.explicit())
    one = lambda k: gi.influence(
      loss, full, train, test, solver=gi.lissa(batch_size=10, depth=200, key=k)
    )
    runs = jax.jit(jax.vmap(one))(jax.random.split(jax.random.key(0), 8))
    mean, se = runs.mean(0), runs.std(0, ddof=1) / np.sqrt(8)
    z = np.abs(np.asarray((mean - exact) / (se + 1e-12)))
    assert np.mean(z < 4) > 0.95


def _ekfac_reference(loss, params, train, vectors, damping):
  """NumPy line by line: per-example gradients, Kronecker factors from a~ = [G s /|s|^2, 1]
  and s = the bias gradient, eigenbases, corrected eigenvalues, the inverse."""
  g = jax.vmap(jax.grad(loss), in_axes=(None, 0))(params, train)
  gw, gb = np.asarray(g["kernel"]), np.asarray(g["bias"])  # [n, in, out], [n, out]
  a = np.einsum("nio,no->ni", gw, gb) / np.sum(gb**2, 1, keepdims=True)
  a = np.concatenate([a, np.ones((len(a), 1))], 1)
  _, qa = np.linalg.eigh(a.T @ a / len(a))
  _, qs = np.linalg.eigh(gb.T @ gb / len(gb))
  gt = np.concatenate([gw, gb[:, None, :]], 1)
  lam = np.mean(np.einsum("ia,nio,ob->nab", qa, gt, qs) ** 2, 0)
  out = []
  for v in np.asarray(vectors):
    w = np.concatenate([v[1:].reshape(gw.shape[1:]), v[None, :1]], 0)  # flat order: bias, kernel
    x = qa @ ((qa.T @ w @ qs) / (lam + damping)) @ qs.T
    out.append(np.concatenate([x[-1], x[:-1].ravel()]))
  return np.stack(out)


def _flax_logistic():
  """The logistic model of ``_logistic`` as a flax Dense layer (EK-FAC captures it), with no
  L2 term inside the loss (it is EK-FAC's damping)."""
  dense = nn.Dense(1)
  return lambda p, e: (lambda z: jnp.logaddexp(0.0, z) - e["y"] * z)(
    dense.apply({"params": p}, e["x"])[0]
  )


def test_ekfac_reproduces_the_bias_read_off_and_is_exact_where_fisher_equals_hessian():
  """With one token per example, the layer input captured at the call equals the bias
  read-off ``a = G s / |s|^2`` of the earlier EK-FAC, so its results are reproduced."""
  with jax.enable_x64(True):
    _, full, train, test = _solver_setup()
    loss = _flax_logistic()
    v = gi.per_example_gradients(loss, full, test)
    ours = gi.inverse_hvp(loss, full, train, v, solver=gi.ekfac_solver(), damping=0.1)
    np.testing.assert_allclose(ours, _ekfac_reference(loss, full, train, v, 0.1), rtol=1e-9)

    # Squared loss on one Dense output with residuals +-1: the gradient covariance
    # E[r^2 a~ a~^T] is the Hessian E[a~ a~^T], diagonal in Q_A, so EK-FAC is exact.
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.normal(size=(30, 4)))
    params = {"kernel": jnp.asarray(rng.normal(size=(4, 1))), "bias": jnp.asarray([0.3])}
    z = (x @ params["kernel"] + params["bias"])[:, 0]
    sq = {"x": x, "y": z + jnp.asarray(rng.choice([-1.0, 1.0], 30))}
    dense = nn.Dense(1)
    sq_loss = lambda p, e: 0.5 * (dense.apply({"params": p}, e["x"])[0] - e["y"]) ** 2
    held = {"x": jnp.asarray(rng.normal(size=(5, 4))), "y": jnp.zeros(5)}
    exact = gi.influence(sq_loss, params, sq, held, solver=gi.explicit(), damping=0.01)
    ek = gi.influence(sq_loss, params, sq, held, solver=gi.ekfac_solver(), damping=0.01)
    np.testing.assert_allclose(ek, exact, rtol=1e-9, atol=1e-12)


def test_ekfac_refuses_a_model_it_cannot_capture_in_one_line():
  with pytest.raises(ValueError, match=r"^loss_fn: no flax.linen Dense, DenseGeneral, Embed"):
    gi.inverse_hvp(
      lambda p, e: jnp.sum(p["w"] * e),
      {"w": jnp.ones(3)},
      jnp.ones((4, 3)),
      jnp.ones((1, 3)),
      solver=gi.ekfac_solver(),
    )
  # an L2 term inside the loss puts gradient on the kernel outside the layer's call
  with jax.enable_x64(True):
    _, full, train, test = _solver_setup()
    reg = lambda p, e: _flax_logistic()(p, e) + 0.01 * jnp.sum(p["kernel"] ** 2)
    v = gi.per_example_gradients(reg, full, test)
    with pytest.raises(ValueError, match=r"^loss_fn: layer .* get gradient from outside its calls"):
      gi.inverse_hvp(reg, full, train, v, solver=gi.ekfac_solver(), damping=0.1)


def _voting_game(weights, quota):
  w = jnp.asarray(weights, jnp.float32)
  return lambda mask: (jnp.sum(w * mask) >= quota).astype(jnp.float32) + 0.25 * jnp.sum(w * mask)


def test_exact_shapley_is_efficient_symmetric_and_zero_for_null_players():
  weights = [3.0, 2.0, 2.0, 0.0, 1.0, 4.0]  # players 1 and 2 symmetric, player 3 null
  game = _voting_game(weights, 6.0)
  phi = np.asarray(gi.exact_shapley(game, 6))
  n = len(weights)
  np.testing.assert_allclose(phi.sum(), game(jnp.ones(n)) - game(jnp.zeros(n)), rtol=1e-6)
  assert phi[1] == pytest.approx(phi[2], abs=1e-7)
  assert phi[3] == pytest.approx(0.0, abs=1e-7)
  # the definition by permutations, enumerated
  import itertools

  ref = np.zeros(n)
  perms = list(itertools.permutations(range(n)))
  for perm in perms:
    mask = np.zeros(n, np.float32)
    prev = float(game(jnp.asarray(mask)))
    for i in perm:
      mask[i] = 1
      cur = float(game(jnp.asarray(mask)))
      ref[i] += cur - prev
      prev = cur
  np.testing.assert_allclose(phi, ref / len(perms), atol=1e-5)


def test_tmc_shapley_is_within_three_standard_errors_and_truncation_saves_calls():
  weights = [3.0, 2.0, 2.0, 0.5, 1.0, 4.0, 1.5, 2.5, 0.0, 3.5]
  game = _voting_game(weights, 9.0)
  exact = np.asarray(gi.exact_shapley(game, 10))
  est = gi.tmc_shapley(game, 10, jax.random.key(0), num_permutations=400)
  z = np.abs(np.asarray(est.values) - exact) / np.maximum(np.asarray(est.stderr), 1e-6)
  assert np.all(z < 3), z
  assert int(est.evaluations) <= 400 * 10 + 2  # a prefix equal to v(N) ends a permutation
  # A game that saturates after 3 players: truncation skips the rest and loses nothing.
  sat = lambda m: jnp.minimum(jnp.sum(m), 3.0)
  t = gi.tmc_shapley(sat, 10, jax.random.key(1), num_permutations=50, tolerance=1e-6)
  assert int(t.evaluations) == 50 * 3 + 2
  np.testing.assert_allclose(t.values.sum(), 3.0, rtol=1e-6)


def test_knn_shapley_matches_its_recursion_and_the_enumerated_shapley_value():
  rng = np.random.default_rng(0)
  xtr, ytr = rng.normal(size=(9, 2)), rng.integers(0, 2, 9)
  xte, yte = rng.normal(size=(3, 2)), rng.integers(0, 2, 3)
  k = 3
  ours = np.asarray(gi.knn_shapley(xtr, ytr, xte, yte, k=k))
  ref = np.zeros(9)
  for x, y in zip(xte, yte):  # Jia et al. (2019), Theorem 1, as a loop
    order = np.argsort(((xtr - x) ** 2).sum(1), kind="stable")
    s = np.zeros(9)
    s[order[-1]] = float(ytr[order[-1]] == y) / 9
    for i in range(7, -1, -1):
      a, b = order[i], order[i + 1]
      s[a] = s[b] + (float(ytr[a] == y) - float(ytr[b] == y)) / k * min(k, i + 1) / (i + 1)
    ref += s / len(xte)
  np.testing.assert_allclose(ours, ref, atol=1e-6)
  enumerated = gi.exact_shapley(gi.knn_utility(xtr, ytr, xte, yte, k=k), 9)
  np.testing.assert_allclose(ours, enumerated, atol=1e-6)


def test_projection_keeps_inner_products_within_the_jl_bound_and_never_holds_d_by_k():
  d, k, m, delta = 3000, 256, 300, 1e-3
  rng = np.random.default_rng(0)
  x = rng.normal(size=(2 * m, d)).astype(np.float32)
  x /= np.linalg.norm(x, axis=1, keepdims=True)
  for kind in ("rademacher", "normal"):
    p = gi.project(jnp.asarray(x), jax.random.key(3), k, kind=kind, block_size=128)
    err = np.sum(np.asarray(p[:m] * p[m:]), 1) - np.sum(x[:m] * x[m:], 1)
    # Unit vectors: P(|<Px,Py> - <x,y>| > eps) <= 4 exp(-k eps^2 / 8); union over m pairs.
    eps = math.sqrt(8 * math.log(4 * m / delta) / k)
    assert np.max(np.abs(err)) < eps
    # and the spread is the one of an average of k products: sd <= sqrt(2 / k) (+10%)
    assert np.std(err) < 1.1 * math.sqrt(2 / k)
  jaxpr = jax.make_jaxpr(lambda v: gi.project(v, jax.random.key(0), k, block_size=128))(x[:4])

  def sizes(jx):
    for eq in jx.eqns:
      for v in eq.outvars:
        yield int(np.prod(v.aval.shape))
      for sub in jax.extend.core.jaxprs_in_params(eq.params):
        yield from sizes(sub)

  assert max(sizes(jaxpr.jaxpr)) <= max(128 * k, 4 * d + 4 * 128)


def test_tracin_with_one_checkpoint_is_lr_times_the_gradient_dot_product():
  loss = _logistic(0.1)
  train, test = _data(n=7, t=3, dtype=np.float32)
  params = {"kernel": jnp.full((D, 1), 0.3, jnp.float32), "bias": jnp.asarray([0.1], jnp.float32)}
  ours = gi.tracin_cp(loss, [params], [0.05], train, test)
  flat = lambda g: np.concatenate([np.ravel(g["bias"]), np.ravel(g["kernel"])])
  ex = lambda s, i: jax.tree.map(lambda a: a[i], s)
  for i in range(3):
    gt = flat(jax.grad(loss)(params, ex(test, i)))
    for j in range(7):
      gj = flat(jax.grad(loss)(params, ex(train, j)))
      assert float(ours[i, j]) == pytest.approx(0.05 * float(gt @ gj), rel=1e-6)


def test_less_features_and_scores_match_a_numpy_replay_of_the_official_formulas():
  loss = _logistic(0.0)
  train, target = _data(n=12, t=4, dtype=np.float32)
  key, k = jax.random.key(7), 8
  d = D + 1
  pmat = np.asarray(gi.project(jnp.eye(d, dtype=jnp.float32), key, k))  # P / sqrt(k), d x k
  ckpts, moments = [], []
  rng = np.random.default_rng(0)
  for c in range(2):
    p = {"kernel": jnp.asarray(rng.normal(size=(D, 1)), jnp.float32), "bias": jnp.zeros(1)}
    mu = jax.tree.map(lambda a: jnp.asarray(rng.normal(size=a.shape) * 0.01, jnp.float32), p)
    nu = jax.tree.map(lambda a: jnp.asarray(rng.random(size=a.shape) * 1e-3, jnp.float32), p)
    ckpts.append(p)
    moments.append((mu, nu))
  lr = [2e-5, 1e-5]
  tr = jnp.stack(
    [gi.less_features(loss, p, train, key, dim=k, adam_moments=m) for p, m in zip(ckpts, moments)]
  )
  tg = jnp.stack([gi.less_features(loss, p, target, key, dim=k) for p in ckpts])
  ours = gi.less_scores(tr, tg, lr, num_groups=2)

  def flat(t):
    return np.concatenate([np.ravel(t["bias"]), np.ravel(t["kernel"])])

  def normalize(a):
    return a / np.linalg.norm(a, axis=1, keepdims=True)

  total = 0
  for (p, (mu, nu)), w in zip(zip(ckpts, moments), np.asarray(lr) / np.sum(lr)):
    g = np.stack([flat(jax.grad(loss)(p, jax.tree.map(lambda a: a[j], train))) for j in range(12)])
    avg = 0.9 * flat(mu) + 0.1 * g
    avg_sq = 0.999 * flat(nu) + 0.001 * g**2
    a = normalize((avg / np.sqrt(avg_sq + 1e-8)) @ pmat)
    gt = np.stack([flat(jax.grad(loss)(p, jax.tree.map(lambda a: a[j], target))) for j in range(4)])
    b = normalize(gt @ pmat)
    total = total + w * (a @ b.T)
  ref = total.reshape(12, 2, -1).mean(-1).max(-1)
  np.testing.assert_allclose(ours, ref, rtol=2e-5, atol=1e-6)
  top = gi.less_select(ours, 0.25)
  assert set(np.asarray(top).tolist()) == set(np.argsort(-ref)[:3].tolist())


def test_trak_matches_a_dense_replay():
  train, test = _data(n=20, t=3, dtype=np.float32)
  out = lambda p, e: (e["x"] @ p["kernel"] + p["bias"])[0] * (2 * e["y"] - 1)
  models = [
    {"kernel": jnp.full((D, 1), s, jnp.float32), "bias": jnp.zeros(1, jnp.float32)}
    for s in (0.1, -0.2)
  ]
  key, k = jax.random.key(5), 4
  ours = gi.trak(out, models, train, test, key, dim=k)
  taus, qs = [], []
  for m, p in enumerate(models):
    pm = np.asarray(gi.project(jnp.eye(D + 1), jax.random.fold_in(key, m), k))
    phi = np.asarray(gi.per_example_gradients(out, p, train)) @ pm
    phit = np.asarray(gi.per_example_gradients(out, p, test)) @ pm
    taus.append(phit @ np.linalg.inv(phi.T @ phi) @ phi.T)
    f = np.asarray(jax.vmap(lambda e, p=p: out(p, e))(train))
    qs.append(1 - 1 / (1 + np.exp(-f)))
  np.testing.assert_allclose(ours, np.mean(taus, 0) * np.mean(qs, 0)[None], rtol=1e-3, atol=1e-5)


def test_z0_influence_matches_the_finite_difference_gradients_it_stands_for():
  rng = np.random.default_rng(0)
  ks, d, n, t = 5, 6, 4, 3
  w = rng.normal(size=(ks, d))
  ltr, lte = rng.normal(size=(ks, n)), rng.normal(size=(ks, t))
  ours = gi.z0_influence(jnp.asarray(w), ltr, lte, neighbors=2)
  own = gi.z0_self_influence(jnp.asarray(w), ltr, neighbors=2)

  def ghat(losses, e):
    nb = sorted((j for j in range(ks) if j != e), key=lambda j: (abs(j - e), j))[:2]
    return (
      sum((losses[a] - losses[e])[:, None] * (w[a] - w[e]) / np.sum((w[a] - w[e]) ** 2) for a in nb)
      / 2
    )

  ref = sum(ghat(lte, e) @ ghat(ltr, e).T for e in range(ks)) / ks
  np.testing.assert_allclose(ours, ref, rtol=1e-4)
  ref_self = sum(np.sum(ghat(ltr, e) ** 2, 1) for e in range(ks)) / ks
  np.testing.assert_allclose(own, ref_self, rtol=1e-4)
  # For losses linear in the weights along the path, one neighbour recovers the
  # directional derivative exactly: g_hat = P_d c.
  c = rng.normal(size=d)
  lin = (w @ c)[:, None]
  s = gi.z0_self_influence(jnp.asarray(w), lin, neighbors=1)
  dirs = [w[1] - w[0]] + [w[e - 1] - w[e] for e in range(1, ks)]
  ref_lin = np.mean([(c @ u) ** 2 / (u @ u) for u in dirs])
  assert float(s[0]) == pytest.approx(ref_lin, rel=1e-4)


def test_metrics_match_scipy_and_sklearn():
  rng = np.random.default_rng(0)
  x = rng.integers(0, 5, 40).astype(np.float32)
  np.testing.assert_allclose(metrics.rank(jnp.asarray(x)), stats.rankdata(x) - 1)
  y = rng.normal(size=40)
  assert float(gi.spearman(jnp.asarray(x), jnp.asarray(y))) == pytest.approx(
    stats.spearmanr(x, y)[0], rel=1e-5
  )
  lab = rng.integers(0, 2, 40)
  assert float(gi.auroc(jnp.asarray(x), lab)) == pytest.approx(roc_auc_score(lab, x), rel=1e-6)
  # A linear datamodel scored by its own coefficients has LDS 1.
  tau = rng.normal(size=(3, 30))
  masks = np.asarray(gi.random_subsets(jax.random.key(0), 30, 20))
  outputs = masks @ tau.T
  assert float(gi.lds(tau, masks, outputs)) == pytest.approx(1.0)
  assert np.all(masks.sum(1) == 15)


def test_scores_el2n_grand_and_vog_against_numpy():
  rng = np.random.default_rng(0)
  logits, labels = rng.normal(size=(6, 4)), rng.integers(0, 4, 6)
  p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
  np.testing.assert_allclose(
    gi.el2n(logits, labels), np.linalg.norm(p - np.eye(4)[labels], axis=1), rtol=1e-5
  )
  g = rng.normal(size=(3, 6, 2, 2))
  # VoG averages each pixel's standard deviation over checkpoints (the official code)
  np.testing.assert_allclose(gi.vog(g), g.std(0).reshape(6, -1).mean(1), rtol=1e-5)
  train, _ = _data(n=5, t=1, dtype=np.float32)
  loss = _logistic(0.0)
  params = _zeros(dtype=jnp.float32)
  norms = [
    np.linalg.norm(
      np.concatenate(
        [
          np.ravel(v)
          for v in jax.tree.leaves(jax.grad(loss)(params, jax.tree.map(lambda a: a[j], train)))
        ]
      )
    )
    for j in range(5)
  ]
  np.testing.assert_allclose(gi.grand(loss, params, train), norms, rtol=1e-5)


def test_influence_under_jit_on_a_batch_sharded_over_eight_devices():
  loss = _logistic(0.1)
  train, test = _data(n=64, t=8, dtype=np.float32)
  params = {"kernel": jnp.full((D, 1), 0.2, jnp.float32), "bias": jnp.zeros(1, jnp.float32)}
  mesh = sharding.make_mesh()
  tr, te = sharding.shard_batch(train, mesh), sharding.shard_batch(test, mesh)
  plain = gi.influence(loss, params, train, test, solver=gi.cg(), damping=0.01)
  solvers = {"cg": gi.cg(), "arnoldi": gi.arnoldi(), "ekfac": gi.ekfac_solver()}
  for method in ("cg", "arnoldi", "ekfac"):
    lf = loss if method != "ekfac" else _flax_logistic()  # EK-FAC: no L2 term in the loss
    f = jax.jit(
      lambda a, b, m=solvers[method], lf=lf: gi.influence(lf, params, a, b, solver=m, damping=0.01)
    )
    out = f(tr, te)
    ref = (
      plain
      if method != "ekfac"
      else gi.influence(lf, params, train, test, solver=gi.ekfac_solver(), damping=0.01)
    )
    np.testing.assert_allclose(out, ref, rtol=2e-3, atol=1e-6)
  feats = jax.jit(lambda a: gi.gradient_features(loss, params, a, key=jax.random.key(0), dim=4))
  np.testing.assert_allclose(
    feats(tr),
    gi.gradient_features(loss, params, train, key=jax.random.key(0), dim=4),
    rtol=1e-5,
    atol=1e-6,
  )


@pytest.mark.parametrize(
  "call, message",
  [
    (
      lambda L, p, tr, te: gi.influence(L, p, jax.tree.map(lambda a: a[:0], tr), te),
      "^train: the set is empty",
    ),
    (
      lambda L, p, tr, te: gi.influence(L, p, tr, {"x": te["x"]}),
      "^test: expected the pytree structure",
    ),
    (
      lambda L, p, tr, te: gi.influence(L, p, tr, {"x": te["x"][:, :2], "y": te["y"]}),
      "^test: expected examples shaped",
    ),
    (
      lambda L, p, tr, te: gi.influence(L, p, tr, te, solver=gi.arnoldi(rank=7)),
      "^rank: 7 exceeds the number of parameters 6",
    ),
    (
      lambda L, p, tr, te: gi.influence(L, p, tr, te, damping=-0.1),
      "^damping: expected a finite value >= 0",
    ),
    (
      lambda L, p, tr, te: gi.influence(L, p, tr, te, solver="newton"),
      "^solver: expected a solver",
    ),
    (
      lambda L, p, tr, te: gi.influence(lambda q, e: jnp.ones(2), p, tr, te),
      "^loss_fn: expected a real scalar",
    ),
    (
      lambda L, p, tr, te: gi.project(jnp.ones((2, 3)), jax.random.key(0), 0),
      "^dim: expected an integer >= 1",
    ),
    (
      lambda L, p, tr, te: gi.tmc_shapley(
        lambda m: m.sum(), 3, jax.random.key(0), num_permutations=1
      ),
      "^num_permutations",
    ),
    (lambda L, p, tr, te: gi.exact_shapley(lambda m: m.sum(), 21), "^n: exact enumeration"),
    (
      lambda L, p, tr, te: gi.lds(jnp.ones((2, 5)), jnp.ones((4, 6)), jnp.ones((4, 2))),
      "^masks: expected",
    ),
    (lambda L, p, tr, te: gi.less_select(jnp.ones(4), 0.0), "^fraction"),
  ],
)
def test_bad_input_gets_a_one_line_error(call, message):
  train, test = _data(n=4, t=2, dtype=np.float32)
  params = _zeros(dtype=jnp.float32)
  with pytest.raises(ValueError, match=message) as e:
    call(_logistic(0.1), params, train, test)
  assert "\n" not in str(e.value)
