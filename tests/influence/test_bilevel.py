"""gradlab.influence.bilevel against closed forms: ridge regression's exact
hypergradient (every solver), the penalty gradient's O(sigma) error, a NumPy
replay of BO-REP's update, and one-line errors.

The problem (float64 NumPy truth): ridge with one strength per block of
coefficients, x = {"a": lam_a, "b": lam_b}, y = {"a": w[:3], "b": w[3:]},

    g(x, y) = 1/2 |X w - t|^2 + 1/2 sum_k lam_k |P_k w|^2,
    f(x, y) = 1/(2m) |X_v w - t_v|^2 + (rho/2) |x|^2,

so y*(x) = A^-1 X^T t with A = X^T X + sum_k lam_k P_k. Differentiating
A y* = X^T t in lam_k gives P_k y* + A dy*/dlam_k = 0, so
dy*/dlam_k = -A^-1 P_k y* and

    dF/dlam_k = rho lam_k - grad_y f^T A^-1 P_k y*,    grad_y f = B y* - b_v,

with B = X_v^T X_v / m, b_v = X_v^T t_v / m (for one shared lam the two terms
add to the textbook -grad_y f^T A^-1 y*). The implicit formula's pieces:
H = d2_yy g = A, d2_lam_k y g = P_k y.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from gradlab import influence as gi

N, M, D, SPLIT, RHO = 30, 20, 8, 3, 0.1
EPS32 = float(np.finfo(np.float32).eps)
_rng = np.random.default_rng(0)
X = _rng.normal(size=(N, D))
T = X @ _rng.normal(size=D) + _rng.normal(size=N)
XV = _rng.normal(size=(M, D))
TV = XV @ _rng.normal(size=D) + _rng.normal(size=M)
LAM = np.array([0.5, 2.0])
P = [np.diag((np.arange(D) < SPLIT) * 1.0), np.diag((np.arange(D) >= SPLIT) * 1.0)]
B, BV = XV.T @ XV / M, XV.T @ TV / M


def _a(lam):
  return X.T @ X + lam[0] * P[0] + lam[1] * P[1]


A = _a(LAM)
Y_STAR = np.linalg.solve(A, X.T @ T)
FY = B @ Y_STAR - BV
V_STAR = np.linalg.solve(A, FY)
TRUE = np.array([RHO * LAM[k] - V_STAR @ P[k] @ Y_STAR for k in range(2)])
EIG = np.linalg.eigvalsh(A)  # about [9.1, 63.1]: condition number 6.9


def _problem(dtype):
  x_, t_, xv, tv = (jnp.asarray(a, dtype) for a in (X, T, XV, TV))

  def w(y):
    return jnp.concatenate([y["a"], y["b"]])

  def inner(x, y):
    return 0.5 * jnp.sum((x_ @ w(y) - t_) ** 2) + 0.5 * (
      x["a"] * jnp.sum(y["a"] ** 2) + x["b"] * jnp.sum(y["b"] ** 2)
    )

  def outer(x, y):
    return 0.5 * jnp.mean((xv @ w(y) - tv) ** 2) + 0.5 * RHO * (x["a"] ** 2 + x["b"] ** 2)

  return outer, inner


def _x(lam=LAM, dtype=jnp.float32):
  return {"a": jnp.asarray(lam[0], dtype), "b": jnp.asarray(lam[1], dtype)}


def _y(w, dtype=jnp.float32):
  return {"a": jnp.asarray(w[:SPLIT], dtype), "b": jnp.asarray(w[SPLIT:], dtype)}


def _flat(tree):
  return np.concatenate([np.ravel(np.asarray(tree[k], np.float64)) for k in ("a", "b")])


OUTER, INNER = _problem(jnp.float32)


def _hg(solver):
  """The hypergradient at (LAM, y*), one compiled program per solver (eager dispatch of
  the solvers' internals costs several times more than compiling them)."""
  fn = jax.jit(lambda x, y: gi.hypergradient(OUTER, INNER, x, y, solver=solver))
  return fn(_x(), _y(Y_STAR))


def test_explicit_and_full_rank_arnoldi_are_exact_to_float32_rounding():
  # float32 rounding of a solve with condition number kappa = 6.9: about kappa eps
  # per product; 100 kappa eps |F'| leaves room for the d = 8 term sums.
  tol = 100 * (EIG[-1] / EIG[0]) * EPS32 * np.abs(TRUE).max()
  for method, solver in (("explicit", gi.explicit()), ("arnoldi", gi.arnoldi(rank=D))):
    r = _hg(solver)
    np.testing.assert_allclose(_flat(r.grad), TRUE, atol=tol, err_msg=method)
    np.testing.assert_allclose(_flat(r.v), V_STAR, atol=100 * EPS32 * np.abs(V_STAR).max())
    assert float(r.residual) < 100 * EPS32


def test_cg_error_is_within_what_its_tolerance_allows():
  # CG stops at |A v - b| <= tol |b|, so |v - v*| <= tol |b| / lambda_min and
  # |dF/dlam_k error| = |y*_k . (v - v*)_k| <= |P_k y*| tol |b| / lambda_min.
  tol = 3e-2
  r = _hg(gi.cg(tol=tol))
  assert float(r.residual) <= tol * (1 + 1e-3)
  bound = np.array([np.linalg.norm(P[k] @ Y_STAR) for k in range(2)])
  bound = bound * tol * np.linalg.norm(FY) / EIG[0] + 1e-5  # + float32 rounding
  err = np.abs(_flat(r.grad) - TRUE)
  assert np.all(err <= bound), (err, bound)
  assert np.all(bound < 0.2 * np.abs(TRUE))  # the bound says something


def test_neumann_and_full_batch_lissa_give_the_truncated_series_exactly():
  # K terms of step alpha leave v* - v = (I - alpha A)^K v* exactly; the hypergradient
  # error is then -P_k y* . (v - v*), within |P_k y*| (1 - alpha mu)^K |v*|.
  scale, k = 1.2 * EIG[-1], 12
  shrink = np.linalg.matrix_power(np.eye(D) - A / scale, k)
  v_k = V_STAR - shrink @ V_STAR
  expected = np.array([RHO * LAM[j] - v_k @ P[j] @ Y_STAR for j in range(2)])
  bound = np.array([np.linalg.norm(P[j] @ Y_STAR) for j in range(2)])
  bound = bound * (1 - EIG[0] / scale) ** k * np.linalg.norm(V_STAR)
  # LiSSA's depth J sums J + 1 terms
  for method, solver in (("neumann", gi.neumann(num_terms=k, scale=scale)),
                         ("lissa", gi.lissa(depth=k - 1, scale=scale))):  # fmt: skip
    r = _hg(solver)
    # float32: the series' k products each round at about eps |A| |v|
    np.testing.assert_allclose(_flat(r.v), v_k, atol=20 * k * EPS32 * np.abs(V_STAR).max())
    np.testing.assert_allclose(_flat(r.grad), expected, atol=1e-5, err_msg=method)
    err = np.abs(_flat(r.grad) - TRUE)
    assert np.all(err <= bound + 1e-5) and np.all(err > 0.1 * bound), (err, bound)


def test_ekfac_is_exact_where_the_empirical_fisher_is_the_hessian():
  """One Dense layer with one output and squared loss: the Hessian is E[a a^T] and the
  empirical Fisher E[r^2 a a^T]; with every residual r = +-1 they are equal, K-FAC's
  output factor is E[r^2] = 1 and EK-FAC's eigenvalue correction is exact, so EK-FAC
  must give the explicit solve's hypergradient. x enters through the targets."""
  rng = np.random.default_rng(1)
  n, d = 64, 4
  feats = rng.normal(size=(n, d)).astype(np.float32)
  u = rng.normal(size=n).astype(np.float32)
  layer = nn.Dense(1, use_bias=False)
  y = layer.init(jax.random.key(0), jnp.zeros((1, d)))
  w0 = np.asarray(y["params"]["kernel"])[:, 0]
  x = jnp.float32(0.3)
  t = feats @ w0 - 0.3 * u - rng.choice([-1.0, 1.0], size=n)
  data = {"a": jnp.asarray(feats), "t": jnp.asarray(t, jnp.float32), "u": jnp.asarray(u)}

  def inner(x, y, e):
    return 0.5 * (layer.apply(y, e["a"][None])[0, 0] - e["t"] - x * e["u"]) ** 2

  def outer(x, y):
    return jnp.sum(jnp.asarray(w0 + 1.0) * y["params"]["kernel"][:, 0]) + x**2

  ek = jax.jit(
    lambda x, y, d: gi.hypergradient(outer, inner, x, y, solver=gi.ekfac_solver(), inner_data=d)
  )(x, y, data)
  # exact: dF/dx = 2x - d2_xy g H^-1 (w0 + 1), H = mean a a^T, d2_xy g = -mean u_j a_j
  h = feats.T.astype(float) @ feats / n
  exact = 0.6 + (u @ feats / n) @ np.linalg.solve(h, w0 + 1.0)
  np.testing.assert_allclose(float(ek.grad), exact, rtol=1e-5)
  assert float(ek.residual) < 1e-5


def test_penalty_gradient_error_is_first_order_in_sigma():
  """y_sigma = (A + sigma B)^-1 (X^T t + sigma b_v) exactly. Its error is
  e(sigma) = c sigma + O(sigma^2), c_k = y*^T P_k A^-1 B v* + |P_k v*|^2 / 2 (expand
  (A + sigma B)^-1), so e(sigma) / e(sigma / 2) = 2 + O(sigma): measured 1.983-1.989 at
  sigma = 0.1, 1.991-1.994 at 0.05. Float64, because the divided difference of grad_x g
  rounds at eps |grad_x g| / sigma, which float32 would make ~1e-3 of e at sigma = 0.05."""
  with jax.enable_x64(True):
    outer, inner = _problem(jnp.float64)
    x = _x(dtype=jnp.float64)
    y_star = _y(Y_STAR, jnp.float64)

    pen = jax.jit(lambda x, a, b, s: gi.penalty_hypergradient(outer, inner, x, a, b, sigma=s))

    def error(sigma):
      y_sigma = _y(np.linalg.solve(A + sigma * B, X.T @ T + sigma * BV), jnp.float64)
      return _flat(pen(x, y_sigma, y_star, sigma)) - TRUE

    # jitted (above) and eager give the same numbers
    y_sigma = _y(np.linalg.solve(A + 0.1 * B, X.T @ T + 0.1 * BV), jnp.float64)
    eager = gi.penalty_hypergradient(outer, inner, x, y_sigma, y_star, sigma=0.1)
    np.testing.assert_allclose(_flat(eager) - TRUE, error(0.1), rtol=1e-9)
    c = np.array([Y_STAR @ P[k] @ np.linalg.solve(A, B @ V_STAR) for k in range(2)])
    c += np.array([0.5 * V_STAR @ P[k] @ V_STAR for k in range(2)])
    ratios = []
    for sigma in (0.1, 0.05):
      e, e_half = error(sigma), error(sigma / 2)
      ratios.append(e / e_half)
      # |e / (c sigma) - 1| = O(sigma): 1.2-1.8% measured at 0.1
      np.testing.assert_allclose(e / (c * sigma), 1.0, atol=0.3 * sigma)
    ratios = np.array(ratios)
    assert np.all(np.abs(ratios - 2) < 0.05), ratios
    # the O(sigma) term halves with sigma: the deviation from 2 shrinks
    assert np.all(np.abs(ratios[1] - 2) < np.abs(ratios[0] - 2)), ratios


def _bo_rep_reference(x0, y0, steps, *, eta, beta, gamma, nu, period, n_inner, n_init, radius):
  """Line by line: the official data_cleaning/bo_rep.py update on this problem, in the
  order of hyperparam_opt/bo_rep.py (y refined first), with fresh gradients."""

  def gy(lam, w):
    return X.T @ (X @ w - T) + (lam[0] * P[0] + lam[1] * P[1]) @ w

  x, y = np.array(x0, float), np.array(y0, float)
  for _ in range(n_init):
    y = y - gamma * gy(x, y)
  z, m = np.zeros(D), np.zeros(2)
  for t in range(steps):
    if t % period == 0:
      for _ in range(n_inner):
        y = y - gamma * gy(x, y)
    fy = B @ y - BV
    z = z - nu * (_a(x) @ z - fy)
    z = z * min(1.0, radius / np.linalg.norm(z))
    h = RHO * x - np.array([y @ P[0] @ z, y @ P[1] @ z])  # grad_x f - d2_xy g z
    m = beta * m + (1 - beta) * h
    x = x - eta * m / (1e-10 + np.linalg.norm(m))
  return x, y, z


def test_bo_rep_replays_the_official_update():
  hp = dict(eta=0.05, beta=0.9, gamma=0.01, nu=0.01, period=2, n_inner=3, n_init=5)
  y0 = np.zeros(D)
  radius = 0.4 * np.linalg.norm(V_STAR)  # binds once z has grown: the projection is tested
  opt = gi.bo_rep(
    hp["eta"], inner_learning_rate=hp["gamma"], z_learning_rate=hp["nu"], momentum=hp["beta"],
    period=hp["period"], inner_steps=hp["n_inner"], init_steps=hp["n_init"], z_radius=radius,
  )  # fmt: skip
  x, state = _x(), opt.init(INNER, _x(), _y(y0))
  step = jax.jit(lambda x, s: opt.step(OUTER, INNER, x, s))
  for _ in range(7):
    x, state = step(x, state)
  xr, yr, zr = _bo_rep_reference(LAM, y0, 7, radius=radius, **hp)
  assert int(state.count) == 7
  assert abs(np.linalg.norm(zr) - radius) < 1e-9  # the reference was projected
  # float32 against float64 over 7 steps of a kappa = 6.9 problem
  np.testing.assert_allclose(_flat(x), xr, rtol=1e-5)
  np.testing.assert_allclose(_flat(state.y), yr, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(_flat(state.z), zr, rtol=1e-4, atol=1e-6)


def test_normalized_momentum_steps_have_the_learning_rate_as_length():
  opt = gi.normalized_momentum(0.3, 0.5)
  params = {"u": jnp.ones(3), "v": jnp.zeros(2)}
  state = opt.init(params)
  g = {"u": jnp.array([1.0, 2.0, 2.0]), "v": jnp.array([0.0, 4.0])}
  updates, state = jax.jit(opt.update)(g, state, params)
  np.testing.assert_allclose(float(optax.tree.norm(updates)), 0.3, rtol=1e-6)
  # m = 0.5 g: the direction is -g / |g|, |g| = sqrt(25)
  np.testing.assert_allclose(np.asarray(updates["v"]), [0.0, -0.3 * 4 / 5], rtol=1e-6)


@pytest.mark.parametrize(
  "call, message",
  [
    (lambda: gi.hypergradient(OUTER, INNER, _x(), _y(Y_STAR), solver="qr"), "solver: expected"),
    (
      lambda: gi.hypergradient(lambda x, y: jnp.ones(2), INNER, _x(), _y(Y_STAR)),
      "outer_fn: expected a real scalar",
    ),
    (
      lambda: gi.hypergradient(OUTER, INNER, _x(), {"a": jnp.ones(3, jnp.int32), "b": 1.0}),
      "y: expected a pytree of floating arrays",
    ),
    (
      lambda: gi.hypergradient(OUTER, INNER, _x(), _y(Y_STAR), solver=gi.ekfac_solver()),
      "inner_data: solver=ekfac_solver() needs",
    ),
    (
      lambda: gi.hypergradient(OUTER, INNER, _x(), _y(Y_STAR), solver=gi.cg(), damping=-1.0),
      "damping: expected",
    ),
    (
      lambda: gi.hypergradient(lambda x: 0.0, INNER, _x(), _y(Y_STAR)),
      "outer_fn: calling it failed",
    ),
    (
      lambda: gi.penalty_hypergradient(OUTER, INNER, _x(), _y(Y_STAR), _y(Y_STAR), sigma=0.0),
      "sigma: expected a finite value > 0",
    ),
    (
      lambda: gi.penalty_hypergradient(OUTER, INNER, _x(), _y(Y_STAR), {"a": 1.0}, sigma=0.1),
      "y_star: expected the pytree structure of y_sigma",
    ),
    (
      lambda: gi.neumann_inverse_hvp(lambda u: u, jnp.ones(2), num_terms=0, step=0.1),
      "num_terms: expected an integer >= 1",
    ),
    (
      lambda: gi.neumann_inverse_hvp(lambda u: u, jnp.ones(2), num_terms=3, step=float("inf")),
      "step: expected a finite value > 0",
    ),
    (
      lambda: gi.bo_rep(0.1, inner_learning_rate=0.1, z_learning_rate=0.1, period=0),
      "period: expected an integer >= 1",
    ),
    (
      lambda: gi.bo_rep(0.1, inner_learning_rate=0.1, z_learning_rate=0.1, momentum=1.0),
      "momentum: expected a number in [0, 1)",
    ),
    (
      lambda: gi.bo_rep(0.1, inner_learning_rate=-1.0, z_learning_rate=0.1),
      "inner_learning_rate: expected",
    ),
  ],
)
def test_bad_input_is_refused_in_one_line(call, message):
  with pytest.raises(ValueError) as info:
    call()
  assert str(info.value).startswith(message), str(info.value)
  assert "\n" not in str(info.value)
