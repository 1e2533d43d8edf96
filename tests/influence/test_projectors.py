"""gradlab.influence.projectors: SJLT and random masks against their implicit matrices and
their exact inner-product variances, LoGra's features against jax.grad's per-example
gradients under the explicit Kronecker projection, LoGra's scores against the formula."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gradlab.influence import projectors as pj

F64 = dict(param_dtype=jnp.float64)


def test_sjlt_is_a_sparse_sign_matrix_with_one_entry_per_block():
  """sjlt of the identity rows is its implicit d x dim matrix: every input coordinate has
  exactly one entry +-1/sqrt(s) in each of the s output blocks (here of unequal sizes
  7, 8, 7, 8), and sjlt(x) = x @ that matrix for any leading shape, eagerly, under jit and
  row by row (separate calls share the map)."""
  with jax.enable_x64(True):
    d, k, s = 50, 30, 4
    key = jax.random.key(0)
    m = np.asarray(pj.sjlt(jnp.eye(d), key, k, nonzeros=s))
    edges = [b * k // s for b in range(s + 1)]
    for lo, hi in zip(edges, edges[1:]):
      assert np.all(np.count_nonzero(m[:, lo:hi], axis=1) == 1)
    np.testing.assert_array_equal(np.abs(m[m != 0]), 0.5)  # 1/sqrt(4), exact
    assert np.count_nonzero(m) == d * s
    x = np.random.default_rng(0).normal(size=(2, 3, d))
    out = pj.sjlt(x, key, k, nonzeros=s)
    np.testing.assert_allclose(out, x @ m, rtol=1e-13, atol=1e-13)  # float64 sums of 50 terms
    jitted = jax.jit(pj.sjlt, static_argnames=("dim", "nonzeros"))
    np.testing.assert_allclose(jitted(x, key, k, nonzeros=s), out, rtol=1e-13, atol=1e-13)
    np.testing.assert_allclose(pj.sjlt(x[1, 2], key, k, nonzeros=s), out[1, 2], rtol=1e-13)
    assert not np.allclose(pj.sjlt(x, jax.random.key(1), k, nonzeros=s), out)


def test_random_mask_keeps_distinct_coordinates_scaled_by_sqrt_d_over_dim():
  """random_mask of the identity rows is its [d, dim] matrix: one entry sqrt(d / dim) per
  column, on distinct rows in increasing order; random_mask(x) = x @ it, also under jit."""
  with jax.enable_x64(True):
    d, k = 12, 5
    key = jax.random.key(3)
    m = np.asarray(pj.random_mask(jnp.eye(d), key, k))  # [d, k]: one entry per column
    rows = np.nonzero(m)[0]
    assert len(rows) == k and len(set(rows)) == k and np.all(np.diff(rows) > 0)
    np.testing.assert_allclose(m[m != 0], np.sqrt(d / k), rtol=1e-15)
    x = np.random.default_rng(1).normal(size=(4, d))
    np.testing.assert_allclose(pj.random_mask(x, key, k), x @ m, rtol=1e-14)
    jitted = jax.jit(pj.random_mask, static_argnames="dim")
    np.testing.assert_allclose(jitted(x, key, k), x @ m, rtol=1e-14)


def _unit_pair(d, rho, seed):
  """Two unit vectors with inner product rho, spread over all d coordinates (Gaussian)."""
  rng = np.random.default_rng(seed)
  x = rng.normal(size=d)
  x /= np.linalg.norm(x)
  z = rng.normal(size=d)
  z -= (z @ x) * x
  z /= np.linalg.norm(z)
  return x, rho * x + np.sqrt(1 - rho**2) * z


def _mean_and_variance_agree(est, mean, var, sigmas=5.0):
  """The draws' mean within `sigmas` standard errors sqrt(var / M) of `mean` (the CLT), and
  their sample variance within `sigmas` of its own standard error sqrt((m4 - s^4) / M)
  (m4 the sample fourth central moment) of `var`."""
  est = np.asarray(est, np.float64)
  m = est.size
  s2 = est.var()
  m4 = np.mean((est - est.mean()) ** 4)
  mean_ok = abs(est.mean() - mean) <= sigmas * np.sqrt(var / m)
  var_ok = abs(s2 - var) <= sigmas * np.sqrt((m4 - s2**2) / m)
  return bool(mean_ok and var_ok)


@pytest.mark.parametrize("which", ["sjlt-4", "sjlt-1", "mask"])
def test_sparse_projections_are_unbiased_with_the_stated_variance(which):
  """Over 4000 keys, the projected inner product of two fixed unit vectors (x.y = 0.6, d = 64,
  k = 32) has the exact mean and variance:
  SJLT with s equal blocks: Var = (1 + (x.y)^2 - 2 sum_j x_j^2 y_j^2) / k (<= 2/k; s = 1 is
  CountSketch); random mask (a without-replacement sample of k of the d products x_j y_j,
  times d/k): Var = (d - k) / (k (d - 1)) (d sum_j x_j^2 y_j^2 - (x.y)^2).
  Estimates scaled by 0.9 or 1.1 (a wrong scaling) must fail the same check."""
  with jax.enable_x64(True):
    d, k, rho, draws = 64, 32, 0.6, 4000
    x, y = _unit_pair(d, rho, seed=2)
    q = np.sum(x**2 * y**2)
    if which == "mask":
      proj = lambda key: pj.random_mask(jnp.stack([x, y]), key, k)
      var = (d - k) / (k * (d - 1)) * (d * q - rho**2)
    else:
      s = int(which.split("-")[1])
      proj = lambda key: pj.sjlt(jnp.stack([x, y]), key, k, nonzeros=s)
      var = (1 + rho**2 - 2 * q) / k
      assert var <= 2 / k
    p = jax.jit(jax.vmap(proj))(jax.random.split(jax.random.key(7), draws))
    est = np.asarray(jnp.sum(p[:, 0] * p[:, 1], axis=-1))
    assert _mean_and_variance_agree(est, rho, var)
    assert not _mean_and_variance_agree(0.9 * est, rho, var)
    assert not _mean_and_variance_agree(1.1 * est, rho, var)


def test_logra_project_is_unbiased_with_the_gaussian_kronecker_variance():
  """One token: f = (P_in^T a) (x) (P_out^T g), so f_x . f_y = X Y with independent Gaussian
  JL inner products X (of a_x, a_y; E X = alpha, Var X = (|a_x|^2 |a_y|^2 + alpha^2) / r_in)
  and Y (of g_x, g_y, likewise with r_out): E = alpha beta and
  Var = (alpha^2 + Var X)(beta^2 + Var Y) - alpha^2 beta^2, checked over 10000 keys on unit
  vectors with alpha = beta = 0.9. With three tokens the mean is the gradients' inner
  product <a_x^T g_x, a_y^T g_y> within 5 sample standard errors. A 10% wrong scaling
  fails both."""
  with jax.enable_x64(True):
    d_in, d_out, rank, draws, rho = 6, 5, (8, 6), 10000, 0.9
    keys = jax.random.split(jax.random.key(8), draws)
    a = np.stack(_unit_pair(d_in, rho, seed=4))[:, None]  # [2 examples, 1 token, d_in]
    g = np.stack(_unit_pair(d_out, rho, seed=5))[:, None]
    f = jax.jit(jax.vmap(lambda key: pj.logra_project(a, g, key, rank=rank)))(keys)
    assert f.shape == (draws, 2, 48)
    est = np.asarray(jnp.sum(f[:, 0] * f[:, 1], axis=-1))
    vx, vy = (1 + rho**2) / rank[0], (1 + rho**2) / rank[1]
    var = (rho**2 + vx) * (rho**2 + vy) - rho**4
    assert _mean_and_variance_agree(est, rho**2, var)
    assert not _mean_and_variance_agree(0.9 * est, rho**2, var)
    assert not _mean_and_variance_agree(1.1 * est, rho**2, var)

    rng = np.random.default_rng(6)
    a3, g3 = rng.normal(size=(3, d_in)), rng.normal(size=(3, d_out))
    a3 = np.stack([a3, a3 + 0.3 * rng.normal(size=a3.shape)])  # two correlated examples
    g3 = np.stack([g3, g3 + 0.3 * rng.normal(size=g3.shape)])
    f3 = jax.jit(jax.vmap(lambda key: pj.logra_project(a3, g3, key, rank=rank)))(keys)
    est3 = np.asarray(jnp.sum(f3[:, 0] * f3[:, 1], axis=-1))
    exact = np.sum((a3[0].T @ g3[0]) * (a3[1].T @ g3[1]))
    se = est3.std() / np.sqrt(draws)
    assert abs(est3.mean() - exact) <= 5 * se
    assert abs(0.9 * est3.mean() - exact) > 5 * 0.9 * se


class _Net(nn.Module):
  """An Embed, a Dense shared by two calls on [T=4, d] tokens, a Conv and a Dense head."""

  @nn.compact
  def __call__(self, tokens):  # [4] ints
    x = nn.Embed(7, 4, name="embed", **F64)(tokens)  # [4, 4]
    shared = nn.Dense(4, name="shared", **F64)
    x = jnp.tanh(shared(jnp.tanh(shared(x))))  # [4, 4], two calls
    img = nn.Conv(2, (2, 2), padding="SAME", name="conv", **F64)(x.reshape(2, 2, 4))  # [2, 2, 2]
    return nn.Dense(1, name="head", **F64)(jnp.tanh(img).reshape(-1))[0]


_NET = _Net()


def _net_loss(p, e):
  return (_NET.apply(p, e["tokens"]) - e["y"]) ** 2


@functools.cache
def _net():
  """33 examples, the params (float64) and {layer: [33, d_in (+1), d_out]}: each example's
  kernel gradient (reshaped [d_in, d_out]) with its bias gradient as the last row, from
  jax.grad. Built once (with x64 on) for the tests below."""
  rng = np.random.default_rng(1)
  data = {"tokens": jnp.asarray(rng.integers(0, 7, (33, 4))), "y": jnp.asarray(rng.normal(size=33))}
  params = jax.jit(_NET.init)(jax.random.key(1), data["tokens"][0])
  grads = jax.jit(jax.vmap(jax.grad(_net_loss), in_axes=(None, 0)))(params, data)["params"]
  out = {"embed": np.asarray(grads["embed"]["embedding"])}
  for name in ("shared", "conv", "head"):
    k = np.asarray(grads[name]["kernel"])
    k = k.reshape(33, -1, k.shape[-1])
    out[name] = np.concatenate([k, np.asarray(grads[name]["bias"])[:, None]], axis=1)
  return params, data, out


def test_logra_features_are_the_kronecker_projection_of_each_layers_gradient():
  """Block l of example i is (P_in (x) P_out)^T vec(G_il), G_il from jax.grad (float64: the
  two routes differ by rounding only). A layer's block (and matrices) do not depend on which
  other layers are kept, nor on the chunking (4 does not divide 33)."""
  with jax.enable_x64(True):
    params, data, grads = _net()
    key = jax.random.key(5)
    feats = np.asarray(pj.logra_features(_net_loss, params, data, key, rank=(3, 2)))
    mats = pj.logra_projection(_net_loss, params, data, key, rank=(3, 2))
    assert list(mats) == ["embed", "shared", "conv", "head"]
    assert feats.shape == (33, 4 * 6)
    for l, (name, (p_in, p_out)) in enumerate(mats.items()):
      assert p_in.shape == (grads[name].shape[1], 3) and p_out.shape == (grads[name].shape[2], 2)
      expected = grads[name].reshape(33, -1) @ np.kron(np.asarray(p_in), np.asarray(p_out))
      np.testing.assert_allclose(feats[:, 6 * l : 6 * l + 6], expected, rtol=1e-10, atol=1e-13)
    kw = dict(rank=(3, 2), layers="shared", uncovered="ignore", chunk_size=4)
    shared = pj.logra_features(_net_loss, params, data, key, **kw)
    np.testing.assert_allclose(shared, feats[:, 6:12], rtol=1e-12, atol=1e-15)


def test_logra_with_a_square_projection_is_the_empirical_fisher_influence():
  """With r_in = d_in + 1 = 5 and r_out = d_out = 4 on the shared layer, M = P_in (x) P_out is
  square and invertible and cancels from f_test (M^T H M)^-1 f_train: the scores are
  (1/n) g_test H^-1 g_train^T, H = G^T G / n, on that layer's 20 parameters for any key. The
  tolerance is float64 rounding in a backward-stable solve of the projected system:
  cond(M^T H M) * eps * max |score| (cond(H) is 2e6 here, cond(M^T H M) 1e8-3e9 by key; the
  measured errors are 1e-3 to 1e-2 of that bound). The default damping is 0.1 trace(F) / k
  in the formula; a test copy of a train example scores positively on it (removing it
  would raise that example's loss)."""
  with jax.enable_x64(True):
    params, data, grads = _net()
    rows = np.r_[30:33, 0]  # the test examples: three unseen, then a copy of train 0
    train = jax.tree.map(lambda x: x[:30], data)
    test = jax.tree.map(lambda x: x[rows], data)
    g = grads["shared"].reshape(33, -1)
    h = g[:30].T @ g[:30] / 30
    reference = g[rows] @ np.linalg.solve(h, g[:30].T) / 30
    kw = dict(rank=(5, 4), layers="shared", uncovered="ignore")
    for seed in (0, 1):
      key = jax.random.key(seed)
      scores = pj.logra(_net_loss, params, train, test, key, damping=0.0, **kw)
      ((p_in, p_out),) = pj.logra_projection(_net_loss, params, train, key, **kw).values()
      m = np.kron(np.asarray(p_in), np.asarray(p_out))
      bound = np.linalg.cond(m.T @ h @ m) * np.finfo(np.float64).eps * np.abs(reference).max()
      np.testing.assert_allclose(scores, reference, rtol=0, atol=bound)
      assert scores[-1, 0] > 0

    key = jax.random.key(5)
    default = pj.logra(_net_loss, params, train, test, key, rank=(3, 2))
    f = np.asarray(pj.logra_features(_net_loss, params, data, key, rank=(3, 2)))
    phi, k = f[:30], f.shape[1]
    fisher = phi.T @ phi / 30
    damped = fisher + 0.1 * np.trace(fisher) / k * np.eye(k)
    formula = f[rows] @ np.linalg.solve(damped, phi.T) / 30
    np.testing.assert_allclose(default, formula, rtol=1e-9, atol=1e-12 * np.abs(formula).max())
    assert default[-1, 0] > 0


class _WithNorm(nn.Module):
  @nn.compact
  def __call__(self, x):
    return jnp.sum(nn.LayerNorm(name="norm")(nn.Dense(3, name="dense")(x)))


def test_bad_arguments_are_refused_in_one_line():
  x = jnp.ones((2, 4))
  key = jax.random.key(0)
  cases = [
    (lambda: pj.sjlt(x, key, 0), r"^dim: expected an integer >= 1, got 0"),
    (lambda: pj.sjlt(x, key, 3, nonzeros=4), r"^nonzeros: expected an integer <= dim \(3\), got 4"),
    (lambda: pj.sjlt(x, key, 3, nonzeros=0), r"^nonzeros: expected an integer >= 1"),
    (lambda: pj.sjlt(x, 0, 5), r"^key: expected a typed key from jax.random.key"),
    (lambda: pj.sjlt(1.0, key, 5), r"^x: expected rows of shape \[..., d\], got a scalar"),
    (lambda: pj.random_mask(x, key, 5), r"^dim: expected an integer <= d = 4"),
    (lambda: pj.random_mask(x, jax.random.PRNGKey(0), 2), r"^key: expected a typed key"),
    (lambda: pj.logra_project(x[None], x[None], key, rank=0), r"^rank: expected an integer >= 1"),
    (lambda: pj.logra_project(x[None], x[None], key, rank=(2, 0)), r"^rank: expected an integer"),
    (lambda: pj.logra_project(x[None], x[None], key, rank=(1, 2, 3)), r"^rank: expected .* pair"),
    (lambda: pj.logra_project(x[None], x[:1], key), r"^g: expected \[..., T, d_out\] rows"),
  ]
  for call, msg in cases:
    with pytest.raises(ValueError, match=msg):
      call()

  model = _WithNorm()
  data = jnp.ones((3, 2))
  params = model.init(key, data[0])
  loss = lambda p, e: model.apply(p, e)
  with pytest.raises(ValueError, match=r"^params: LoGra covers .* 'params/norm/bias' and 1 more"):
    pj.logra_features(loss, params, data, key)
  with pytest.raises(ValueError, match=r"^layers: 'nope' is not a covered layer"):
    pj.logra_features(loss, params, data, key, layers="nope", uncovered="ignore")
  with pytest.raises(ValueError, match=r"^uncovered: expected one of \('error', 'ignore'\)"):
    pj.logra_features(loss, params, data, key, uncovered="skip")
  with pytest.raises(ValueError, match=r"^rank: expected an integer >= 1"):
    pj.logra_features(loss, params, data, key, rank=0, uncovered="ignore")
  with pytest.raises(ValueError, match=r"^chunk_size: expected an integer >= 1"):
    pj.logra_features(loss, params, data, key, chunk_size=0, uncovered="ignore")
  with pytest.raises(ValueError, match=r"^key: expected a typed key"):
    pj.logra(loss, params, data, data, 0, uncovered="ignore")
  with pytest.raises(ValueError, match=r"^damping: expected a finite value >= 0"):
    pj.logra(loss, params, data, data, key, damping=-1.0, uncovered="ignore")
  with pytest.raises(ValueError, match=r"^test: expected examples shaped like train's \(2,\)"):
    pj.logra(loss, params, data, jnp.ones((3, 5)), key, uncovered="ignore")
  l2 = lambda p, e: loss(p, e) + jnp.sum(p["params"]["dense"]["kernel"] ** 2)
  with pytest.raises(ValueError, match=r"^loss_fn: layer 'dense''s parameters get gradient"):
    pj.logra_features(l2, params, data, key, uncovered="ignore")
