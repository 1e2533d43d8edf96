"""The inverse solvers as values: options checked when a value is made, ``solver=``
refused in one line when it is not one, the Neumann series and full-batch LiSSA
against the closed-form truncated series, a solver of one's own in one function,
and an eager solve compiled as one program.

The problem (float64, NumPy truth): L2-regularized logistic regression, the flat
parameters ``[b, w]`` (``ravel_pytree`` puts ``bias`` before ``kernel``), so with
``x~ = [1, x]``, ``p = sigmoid(x~ . theta)``

    grad_j = (p_j - y_j) x~_j + 2 c theta,    H = (1/n) sum_j p_j (1 - p_j) x~_j x~_j^T + 2 c I.
"""

import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gradlab import influence as gi

N, T, D, C = 30, 4, 5, 0.05  # train, test, features, L2 coefficient


def _loss(p, e):
  z = (e["x"] @ p["kernel"] + p["bias"])[0]
  return jnp.logaddexp(0.0, z) - e["y"] * z + C * (jnp.sum(p["kernel"] ** 2) + p["bias"][0] ** 2)


@pytest.fixture(scope="module")
def problem():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(N + T, D))
  y = (rng.random(N + T) < 0.5).astype(float)
  theta = 0.3 * rng.normal(size=D + 1)  # any point: the formulas hold everywhere
  xt = np.concatenate([np.ones((N + T, 1)), x], 1)
  p = 1 / (1 + np.exp(-xt @ theta))
  grads = (p - y)[:, None] * xt + 2 * C * theta
  h = (xt[:N].T * (p[:N] * (1 - p[:N]))) @ xt[:N] / N + 2 * C * np.eye(D + 1)
  with jax.enable_x64(True):
    mk = lambda s: {"x": jnp.asarray(x[s]), "y": jnp.asarray(y[s])}
    params = {"bias": jnp.asarray(theta[:1]), "kernel": jnp.asarray(theta[1:, None])}
    train, test = mk(slice(0, N)), mk(slice(N, N + T))
  return params, train, test, grads[:N], grads[N:], h


@pytest.mark.parametrize(
  "make, message",
  [
    (lambda: gi.cg(tol=-1.0), "tol: expected a finite value >= 0"),
    (lambda: gi.cg(max_iterations=0), "max_iterations: expected an integer >= 1"),
    (lambda: gi.lissa(depth=0), "depth: expected an integer >= 1"),
    (lambda: gi.lissa(scale=0.0), "scale: expected a finite value > 0"),
    (lambda: gi.lissa(batch_size=0), "batch_size: expected an integer >= 1"),
    (lambda: gi.lissa(key=0), "key: expected a typed key"),
    (lambda: gi.arnoldi(rank=0), "rank: expected an integer >= 1"),
    (lambda: gi.arnoldi(rank=3, max_iterations=2), "max_iterations: expected rank=3 <= it"),
    (lambda: gi.arnoldi(key=jnp.zeros(2)), "key: expected a typed key"),
    (lambda: gi.ekfac_solver(factors=np.ones(3)), "factors: expected curvature.KroneckerFactors"),
    (lambda: gi.neumann(num_terms=0), "num_terms: expected an integer >= 1"),
    (lambda: gi.neumann(scale=-1.0), "scale: expected a finite value > 0"),
  ],
)
def test_solver_values_check_their_options_when_made(make, message):
  with pytest.raises(ValueError) as info:
    make()
  assert str(info.value).startswith(message), str(info.value)
  assert "\n" not in str(info.value)


def test_solver_argument_and_build_time_options_are_refused_in_one_line(problem):
  params, train, test, *_ = problem
  v = jnp.ones((1, D + 1))
  calls = [
    (lambda: gi.influence(_loss, params, train, test, solver="cg"), "got the string 'cg'"),
    (lambda: gi.self_influence(_loss, params, train, solver=3), "got int"),
    (lambda: gi.inverse_hvp(_loss, params, train, v, solver=gi.cg), "got function"),
    (
      lambda: gi.hypergradient(
        lambda a, b: jnp.sum(b**2),
        lambda a, b: jnp.sum((a - b) ** 2),
        jnp.ones(2),
        jnp.ones(2),
        solver="explicit",
      ),
      "got the string 'explicit'",
    ),  # fmt: skip
  ]
  for call, tail in calls:
    with pytest.raises(ValueError, match=r"^solver: expected a solver value, influence\.") as info:
      call()
    assert str(info.value).endswith(tail) and "\n" not in str(info.value), str(info.value)
  with pytest.raises(ValueError, match=r"^batch_size: 31 exceeds the 30 train examples$"):
    gi.inverse_hvp(_loss, params, train, v, solver=gi.lissa(batch_size=31))
  with pytest.raises(ValueError, match=r"^damping: None .* applies to solver=ekfac_solver\(\)"):
    gi.inverse_hvp(_loss, params, train, v, solver=gi.explicit(), damping=None)


def test_neumann_and_full_batch_lissa_are_the_closed_form_truncated_series(problem):
  """K terms of step 1/s leave ``v_K = (I - (I - A/s)^K) A^-1 b``, A = H + damping I
  (LiSSA's depth J sums J + 1 terms); influence with the series is ``(1/n) q g^T``."""
  params, train, test, g_train, g_test, h = problem
  damping, k = 0.1, 25
  a = h + damping * np.eye(D + 1)
  scale = 1.5 * np.linalg.eigvalsh(a)[-1]
  series = (np.eye(D + 1) - np.linalg.matrix_power(np.eye(D + 1) - a / scale, k)) @ np.linalg.inv(a)
  truth = g_test @ series.T  # rows v_K for b = each test gradient
  # float64: 25 steps, each rounding at a few eps relative (measured 3e-16 in all); 1e-10
  # is far above rounding and far below one term more or less (4e-5 relative, measured)
  tol = dict(rtol=1e-10, atol=1e-12 * np.abs(truth).max())
  with jax.enable_x64(True):
    g = jnp.asarray(g_test)
    neumann = gi.inverse_hvp(
      _loss, params, train, g, solver=gi.neumann(num_terms=k, scale=scale), damping=damping
    )
    lissa = gi.inverse_hvp(
      _loss, params, train, g, solver=gi.lissa(depth=k - 1, scale=scale), damping=damping
    )
    np.testing.assert_allclose(neumann, truth, **tol)
    np.testing.assert_allclose(lissa, truth, **tol)
    # any solver value serves influence(), here under jit
    scores = jax.jit(
      lambda tr, te: gi.influence(
        _loss, params, tr, te, solver=gi.neumann(num_terms=k, scale=scale), damping=damping,
        chunk_size=7,
      )
    )(train, test)  # fmt: skip
    np.testing.assert_allclose(scores, truth @ g_train.T / N, **tol)


def _dense_solve() -> gi.SolverSpec:
  """A sixth method, written as a user would: one function returning a SolverSpec."""

  def build(loss_fn, params, train, damping):
    h = gi.dense_hessian(loss_fn, params, train)
    a = h + damping * jnp.eye(h.shape[0], dtype=h.dtype)
    return gi.Solver("dense_solve", a, lambda s, v: jnp.linalg.solve(s, v.T).T)

  return gi.SolverSpec("dense_solve", {}, build)


def test_a_solver_of_ones_own_is_one_function_and_serves_every_caller(problem):
  params, train, test, g_train, g_test, h = problem
  damping = 0.05
  q = g_test @ np.linalg.inv(h + damping * np.eye(D + 1))  # A symmetric: rows A^-1 g
  # float64 solves of a 6 x 6 system with condition number ~2.4: a few eps; 1e-10 is generous
  tol = dict(rtol=1e-10, atol=1e-12 * np.abs(q @ g_train.T).max())
  with jax.enable_x64(True):
    for solver in (_dense_solve(), gi.explicit()):
      scores = gi.influence(_loss, params, train, test, solver=solver, damping=damping)
      np.testing.assert_allclose(scores, q @ g_train.T / N, **tol, err_msg=solver.method)
    si = gi.self_influence(_loss, params, train, solver=_dense_solve(), damping=damping)
    q_train = g_train @ np.linalg.inv(h + damping * np.eye(D + 1))
    np.testing.assert_allclose(si, np.sum(q_train * g_train, 1) / N, **tol)


class _Compiles(logging.Handler):
  def __init__(self):
    super().__init__()
    self.names = []

  def emit(self, record):
    message = record.getMessage()
    if message.startswith("Compiling "):
      self.names.append(message.split()[1])


def _compiled_programs(fn):
  """The XLA programs compiled by ``fn()`` after a first call (which also compiles the
  small shared helpers, e.g. the damping's conversion)."""
  jax.block_until_ready(fn())
  handler = _Compiles()
  logger = logging.getLogger("jax")
  logger.addHandler(handler)
  try:
    with jax.log_compiles(True):
      jax.block_until_ready(fn())
  finally:
    logger.removeHandler(handler)
  return handler.names


def test_eager_solves_compile_one_program_each(problem):
  """Eagerly, CG was 33 op-by-op compilations and an explicit influence dozens; now the
  solve is one program, and influence adds one for its queries and one for the train side."""
  params, train, test, *_ = problem
  with jax.enable_x64(True):
    v = jnp.ones((2, D + 1))
    cg = _compiled_programs(
      lambda: gi.inverse_hvp(_loss, params, train, v, solver=gi.cg(), damping=0.1)
    )
    assert cg == ["jit(apply)"], cg
    inf = _compiled_programs(
      lambda: gi.influence(
        _loss, params, train, test, solver=gi.explicit(), damping=0.1, chunk_size=7,
        per_module=True,
      )
    )  # fmt: skip
    assert len(inf) == 3 and "jit(factor)" in inf and "jit(solve_queries)" in inf, inf
