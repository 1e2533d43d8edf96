"""The closed-form linear dynamics against gradient descent actually run, the exact matrix
exponential of the flow, the teacher's test error against a fresh test set, and the
Marchenko-Pastur quadrature against its known moments."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gradlab import dynamics

EPS64 = np.finfo(np.float64).eps


def _problem(n, p, noise_variance=0.1, seed=0):
  d = dynamics.linear_teacher_data(
    jax.random.key(seed),
    num_examples=n,
    input_dim=p,
    noise_variance=noise_variance,
    dtype=jnp.float64,
  )
  w0 = 0.5 * jax.random.normal(jax.random.key(seed + 1), (p,), jnp.float64)
  return d, w0


def _run_gd(x, y, w0, eta, steps):
  """Gradient descent iterated: w <- w - eta grad L, L = ||y - X w||^2 / (2N) by autodiff."""
  loss = lambda w: jnp.sum((y - x @ w) ** 2) / (2 * x.shape[0])

  def step(w, _):
    return w - eta * jax.grad(loss)(w), (w, loss(w))

  _, (ws, losses) = jax.lax.scan(step, w0, None, length=steps + 1)
  return ws, losses


@pytest.mark.parametrize("n, p", [(12, 20), (40, 10)])
def test_closed_form_equals_gradient_descent_and_the_null_space_stays_at_w0(n, p):
  steps = 300
  with jax.enable_x64(True):
    d, w0 = _problem(n, p)
    lam_max = np.linalg.eigvalsh(np.asarray(d.x.T @ d.x / n))[-1]
    eta = 1.5 / lam_max  # 1 - eta lambda_max = -0.5: the sign-flipping branch is exercised
    tr = jax.jit(
      lambda x, y, w, t: dynamics.linear_gd_trajectory(
        x, y, w, learning_rate=eta, steps=steps, teacher=t, noise_variance=0.1
      )
    )(d.x, d.y, w0, d.teacher)
    ws, losses = jax.jit(_run_gd, static_argnums=(3, 4))(d.x, d.y, w0, eta, steps)
    # Each iterated step rounds at ~eps relative to ||w||, and no mode grows
    # (|1 - eta lambda| <= 1), so the iterate drifts by at most ~steps * eps *
    # ||w||; eigh adds ~P * eps. A factor 10 over both.
    scale = float(jnp.max(jnp.abs(ws)))
    tol = 10 * (steps + p) * EPS64 * scale
    np.testing.assert_allclose(tr.weights, ws, rtol=0, atol=tol)
    # the loss inherits the same relative drift (and its own ~N eps rounding)
    loss_tol = 10 * (steps + p + n) * EPS64 * float(jnp.max(losses))
    np.testing.assert_allclose(tr.train_error, losses, rtol=0, atol=loss_tol)
    np.testing.assert_allclose(
      tr.test_error, 0.5 * (jnp.sum((ws - d.teacher) ** 2, axis=1) + 0.1), rtol=1e-10
    )
    frozen = np.asarray(tr.frozen)
    assert frozen.sum() == max(p - n, 0)
    modes = np.asarray(tr.modes)
    # the frozen coordinates never move, bit for bit, and are w0's
    assert (modes[:, frozen] == modes[0, frozen]).all()
    np.testing.assert_allclose(modes[0], np.asarray(tr.eigenvectors).T @ np.asarray(w0), atol=tol)
    # and iterated descent never moves them either: the gradient lies in X's row space
    null = np.asarray(tr.eigenvectors)[:, frozen]
    drift = np.abs((np.asarray(ws) - np.asarray(w0)) @ null).max() if frozen.any() else 0.0
    assert drift <= tol
    # recorded steps given as an array pick the same rows
    some = jnp.asarray([0, 7, 300])
    tr2 = dynamics.linear_gd_trajectory(d.x, d.y, w0, learning_rate=eta, steps=some)
    np.testing.assert_allclose(tr2.weights, tr.weights[some], rtol=0, atol=tol)


def test_gradient_flow_equals_the_matrix_exponential():
  with jax.enable_x64(True):
    n, p = 10, 14
    d, w0 = _problem(n, p)
    sigma, b = d.x.T @ d.x / n, d.x.T @ d.y / n
    eta, steps = 0.05, jnp.asarray([0, 3, 40, 400])
    tr = jax.jit(
      lambda x, y, w: dynamics.linear_gd_trajectory(
        x, y, w, learning_rate=eta, steps=steps, flow=True
      )
    )(d.x, d.y, w0)
    # dw/dtau = b - Sigma w, i.e. d[w; 1]/dtau = [[-Sigma, b], [0, 0]] [w; 1]
    gen = jnp.zeros((p + 1, p + 1)).at[:p, :p].set(-sigma).at[:p, p].set(b)
    start = jnp.append(w0, 1.0)
    exact = jax.jit(jax.vmap(lambda t: (jax.scipy.linalg.expm(gen * eta * t) @ start)[:p]))(
      steps.astype(jnp.float64)
    )
    # expm's Pade approximant is accurate to ~1e-15 relative to ||exp(A)||
    np.testing.assert_allclose(tr.weights, exact, rtol=0, atol=1e-12)


def test_teacher_formula_is_the_expected_error_on_fresh_inputs():
  n, p, m, noise = 60, 30, 20000, 0.25
  d = dynamics.linear_teacher_data(
    jax.random.key(3), num_examples=n, input_dim=p, noise_variance=noise
  )
  fresh = dynamics.linear_teacher_data(
    jax.random.key(4), num_examples=m, input_dim=p, noise_variance=noise
  )
  x_test, y_test = fresh.x, fresh.x @ d.teacher + (fresh.y - fresh.x @ fresh.teacher)
  tr = jax.jit(
    lambda xt, yt: dynamics.linear_gd_trajectory(
      d.x, d.y, jnp.zeros(p), learning_rate=0.2, steps=jnp.asarray([0, 5, 50, 2000]),
      teacher=d.teacher, noise_variance=noise, x_test=xt, y_test=yt,
    )
  )(x_test, y_test)  # fmt: skip
  x_np, y_np = np.asarray(x_test, np.float64), np.asarray(y_test, np.float64)
  for i in range(len(tr.steps)):
    per_example = 0.5 * (y_np - x_np @ np.asarray(tr.weights[i], np.float64)) ** 2
    se = per_example.std() / np.sqrt(m)
    np.testing.assert_allclose(tr.heldout_error[i], per_example.mean(), rtol=1e-5)
    # 5 standard errors of the Monte Carlo mean: fails by chance ~1 time in 1.7 million
    assert abs(float(tr.test_error[i]) - per_example.mean()) < 5 * se


# jitted once for both alphas (the ratio is an argument)
_quadrature = jax.jit(lambda q: dynamics.marchenko_pastur_quadrature(q, 512))
_density = jax.jit(lambda lam, q: dynamics.marchenko_pastur_density(lam, ratio=q))
_mp_error = jax.jit(
  lambda a, noise, teacher: dynamics.marchenko_pastur_test_error(
    a, learning_rate=0.2, steps=jnp.asarray([0, 10**6]), noise_variance=noise,
    teacher_norm2=teacher,
  )
)  # fmt: skip


@pytest.mark.parametrize("alpha", [0.5, 2.0])
def test_marchenko_pastur_quadrature_has_the_known_moments_and_limits(alpha):
  with jax.enable_x64(True):
    lam, w = _quadrature(jnp.asarray(1 / alpha))
    # mass min(1, alpha) (the rest is the atom at 0), mean tr(Sigma)/P = 1, and
    # E[1/lambda] over the nonzero part: alpha/(alpha-1) or alpha^2/(1-alpha)
    inv = alpha / (alpha - 1) if alpha > 1 else alpha**2 / (1 - alpha)
    np.testing.assert_allclose([w.sum(), (w * lam).sum(), (w / lam).sum()], [min(1, alpha), 1, inv])
    lo, hi = (1 - alpha**-0.5) ** 2, (1 + alpha**-0.5) ** 2
    theta = (np.arange(512) + 0.5) * np.pi / 512
    jac = (hi - lo) / 2 * np.sin(theta) * np.pi / 512
    # (lambda_+ - lambda)(lambda - lambda_-) cancels at the edges: at the first node,
    # 1 - cos(theta_0) ~ 5e-6, so ~eps / 5e-6 ~ 5e-11 of relative rounding
    np.testing.assert_allclose(_density(lam, jnp.asarray(1 / alpha)) * jac, w, rtol=1e-9)
    noise, teacher = 0.3, 1.0
    e = _mp_error(jnp.asarray(alpha), noise, teacher)
    # t = 0: nothing learned; t -> inf: least squares (alpha > 1), variance
    # sigma^2 / (alpha - 1), or the min-norm interpolator (alpha < 1), bias
    # (1 - alpha) plus variance sigma^2 alpha / (1 - alpha)
    late = noise / (alpha - 1) if alpha > 1 else (1 - alpha) * teacher + noise * alpha / (1 - alpha)
    np.testing.assert_allclose(e, [0.5 * (noise + teacher), 0.5 * (noise + late)], rtol=1e-9)


def test_bad_inputs_are_refused_at_the_boundary():
  x, y, w0 = jnp.ones((8, 5)), jnp.ones(8), jnp.zeros(5)
  with pytest.raises(ValueError, match="^learning_rate"):
    dynamics.linear_gd_trajectory(x, y, w0, learning_rate=0.0, steps=3)
  with pytest.raises(ValueError, match="^w0"):
    dynamics.linear_gd_trajectory(x, y, w0[:3], learning_rate=0.1, steps=3)
  with pytest.raises(ValueError, match="^steps"):
    dynamics.linear_gd_trajectory(x, y, w0, learning_rate=0.1, steps=-1)
  with pytest.raises(ValueError, match="^x_test"):
    dynamics.linear_gd_trajectory(x, y, w0, learning_rate=0.1, steps=3, x_test=x)
  with pytest.raises(ValueError, match="^ratio"):
    dynamics.marchenko_pastur_density(jnp.ones(3), ratio=0.0)
