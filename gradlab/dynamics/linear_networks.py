r"""Exact gradient-descent dynamics of a linear student learning a linear teacher.

Reference: Advani, Saxe & Sompolinsky, "High-dimensional dynamics of
generalization error in neural networks", Neural Networks 132 (2020),
Sections 2-3. No official code was found (the stored code corpus has none);
everything below is derived from the paper's setting, in this notation:

* ``N`` examples ``x_mu`` in ``P`` dimensions, ``alpha = N / P`` (the paper
  writes ``N`` for the input dimension and ``P`` for the examples: its
  ``alpha = P / N`` is this ``alpha``), stacked in ``X [N, P]``.
* a teacher ``y = X w_star + eps``, ``eps ~ N(0, noise_variance)``.
* the student minimizes the mean squared error with the conventional 1/2,
  ``L(w) = ||y - X w||^2 / (2 N)`` (the paper sums over examples and scales
  ``x`` by ``1/sqrt(N)``; the two differ by a rescaling of time).

The Hessian of ``L`` is ``Sigma = X^T X / N = V diag(lambda) V^T`` and its
gradient ``Sigma w - b`` with ``b = X^T y / N``. In the eigenbasis
``z = V^T w``, ``c = V^T b`` every mode evolves alone:

* gradient descent with step ``eta``:
  ``z_i(t) = (1 - eta lambda_i)^t z_i(0) + (1 - (1 - eta lambda_i)^t) c_i / lambda_i``;
* gradient flow ``dw/dtau = -grad L`` read at ``tau = eta t`` (so that one
  step of descent and ``eta`` units of flow line up): ``(1 - eta lambda)^t``
  becomes ``exp(-eta lambda t)``;
* a mode with ``lambda_i = 0`` (there are ``P - N`` of them when ``N < P``)
  has ``c_i = 0`` (``b`` lies in the row space of ``X``) and never moves:
  its coordinate stays ``z_i(0)`` exactly — the *frozen* null-space weights.

For inputs ``x ~ N(0, I_P)`` the generalization error of a weight ``w`` is
``E_g(w) = (||w - w_star||^2 + noise_variance) / 2`` and ``Sigma``'s
spectrum tends to the Marchenko-Pastur law with ratio ``q = P / N = 1 /
alpha``, edges ``(1 +- alpha^{-1/2})^2``. At ``alpha = 1`` the lower edge
touches 0: the small eigenvalues learn slowly and amplify the noise by
``1 / lambda``, so the test error of a long-trained student peaks near
``alpha = 1`` (:func:`marchenko_pastur_test_error` gives the
``P -> infinity`` curve; early stopping removes the peak).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from gradlab import _checks


class LinearTrajectory(NamedTuple):
  """Gradient descent on ``||y - X w||^2 / (2N)`` in closed form, one row per recorded step.

  Attributes:
    steps: ``[T]`` the step counts recorded (flow: times ``learning_rate * steps``).
    weights: ``[T, P]`` the weights ``w_t``.
    modes: ``[T, P]`` ``V^T w_t``, the weights in the eigenbasis of ``Sigma``;
      the frozen (null-space) columns equal ``V^T w0`` bit for bit.
    eigenvalues: ``[P]`` of ``Sigma = X^T X / N``, ascending; those at or
      below the rank tolerance are set to 0.
    eigenvectors: ``[P, P]`` ``V``, one eigenvector per column.
    frozen: ``[P]`` bool, the null-space modes (eigenvalue 0).
    train_error: ``[T]`` ``||y - X w_t||^2 / (2N)``.
    test_error: ``[T]`` the teacher formula ``(||w_t - w_star||^2 +
      noise_variance) / 2`` for ``x ~ N(0, I)``, or ``None`` without a teacher.
    heldout_error: ``[T]`` ``||y_test - X_test w_t||^2 / (2M)``, or ``None``
      without ``x_test`` and ``y_test``.
  """

  steps: jax.Array
  weights: jax.Array
  modes: jax.Array
  eigenvalues: jax.Array
  eigenvectors: jax.Array
  frozen: jax.Array
  train_error: jax.Array
  test_error: jax.Array | None
  heldout_error: jax.Array | None


class LinearTeacherData(NamedTuple):
  x: jax.Array  # [N, P] inputs ~ N(0, I_P)
  y: jax.Array  # [N] X @ teacher + noise
  teacher: jax.Array  # [P] w_star ~ N(0, teacher_norm2 / P I)


def linear_teacher_data(
  key: jax.Array,
  *,
  num_examples: int,
  input_dim: int,
  noise_variance: float,
  teacher_norm2: float = 1.0,
  dtype=jnp.float32,
) -> LinearTeacherData:
  """The paper's student-teacher task: ``x ~ N(0, I_P)``, ``y = x^T w_star + eps``.

  ``w_star`` has i.i.d. ``N(0, teacher_norm2 / P)`` entries (so ``E
  ||w_star||^2 = teacher_norm2``; the paper's ``sigma_w^2``) and ``eps ~
  N(0, noise_variance)`` (its ``sigma_eps^2``; the SNR is their ratio).
  """
  _checks.is_key("key", key)
  n = _checks.integer("num_examples", num_examples, minimum=1)
  p = _checks.integer("input_dim", input_dim, minimum=1)
  _checks.positive("noise_variance", noise_variance, allow_zero=True)
  _checks.positive("teacher_norm2", teacher_norm2, allow_zero=True)
  kx, kw, ke = jax.random.split(key, 3)
  x = jax.random.normal(kx, (n, p), dtype)
  teacher = jax.random.normal(kw, (p,), dtype) * jnp.sqrt(teacher_norm2 / p).astype(dtype)
  noise = jax.random.normal(ke, (n,), dtype) * jnp.sqrt(noise_variance).astype(dtype)
  return LinearTeacherData(x, x @ teacher + noise, teacher)


def _steps_array(steps) -> jax.Array:
  if isinstance(steps, (int, np.integer)) and not isinstance(steps, bool):
    t = _checks.integer("steps", steps, minimum=0)
    return jnp.arange(t + 1)
  s = jnp.asarray(steps)
  if s.ndim != 1 or not jnp.issubdtype(s.dtype, jnp.integer):
    raise ValueError(
      f"steps: expected an integer >= 0 or a 1-D integer array of steps, got {steps!r}"
    )
  v = _checks.concrete(s)
  if v is not None and np.any(v < 0):
    raise ValueError(f"steps: expected steps >= 0, got min {v.min()}")
  return s


def _mode_factors(lam, frozen, eta, s, flow: bool):
  """``(decay, gain)`` ``[T, P]``: ``z(t) = decay z(0) + gain c``.

  ``gain = (1 - decay) / lambda`` is formed as ``-expm1(t log1p(-eta
  lambda)) / lambda`` where ``0 < eta lambda < 1``, which keeps its
  relative accuracy for the small eigenvalues (``1 - decay`` alone would
  cancel to rounding there).
  """
  safe = jnp.where(frozen, 1.0, lam)
  st = s.astype(lam.dtype)[:, None]
  if flow:
    decay = jnp.exp(-eta * lam * st)
    gain = -jnp.expm1(-eta * lam * st) / safe
  else:
    g = 1.0 - eta * lam
    decay = jnp.power(g, s[:, None])  # an integer power: exact sign for g < 0
    small = (eta * lam > 0) & (eta * lam < 1)
    log_g = jnp.log1p(-jnp.where(small, eta * lam, 0.5))
    gain = jnp.where(small, -jnp.expm1(st * log_g), 1.0 - decay) / safe
  return jnp.where(frozen, 1.0, decay), jnp.where(frozen, 0.0, gain)


def linear_gd_trajectory(
  x: jax.Array,
  y: jax.Array,
  w0: jax.Array,
  *,
  learning_rate: float,
  steps,
  flow: bool = False,
  teacher: jax.Array | None = None,
  noise_variance: float = 0.0,
  x_test: jax.Array | None = None,
  y_test: jax.Array | None = None,
  rank_tol: float | None = None,
) -> LinearTrajectory:
  """Full-batch gradient descent (or flow) on ``||y - X w||^2 / (2N)`` from ``w0``, in closed form.

  No step is iterated: one eigendecomposition of ``X^T X / N`` and the
  per-mode formulas of the module docstring give the weights and errors at
  every recorded step, so ``steps`` may reach ``10^6`` at the cost of one.
  The result equals running ``w <- w - eta (Sigma w - b)`` (see the tests)
  to rounding; descent diverges, exactly, when ``eta lambda_max > 2``.

  Args:
    x: ``[N, P]`` inputs.
    y: ``[N]`` targets.
    w0: ``[P]`` initial weights.
    learning_rate: ``eta > 0``, the step size (flow: time per step).
    steps: an integer ``T`` (record ``0..T``) or a 1-D integer array of the
      steps to record, e.g. log-spaced.
    flow: gradient flow ``exp(-eta lambda t)`` instead of descent
      ``(1 - eta lambda)^t``.
    teacher: ``[P]`` ``w_star``; with it ``test_error`` is the expected error
      ``(||w - w_star||^2 + noise_variance) / 2`` on ``x ~ N(0, I_P)``.
    noise_variance: the label noise ``E eps^2`` of the teacher formula.
    x_test, y_test: ``[M, P]`` and ``[M]``: a held-out set for ``heldout_error``.
    rank_tol: eigenvalues at or below it are the null space (default
      ``lambda_max * max(N, P) * eps``, NumPy's ``matrix_rank`` rule).

  Returns:
    A :class:`LinearTrajectory`.
  """
  x, y, w0 = jnp.asarray(x), jnp.asarray(y), jnp.asarray(w0)
  if x.ndim != 2:
    raise ValueError(f"x: expected shape [N, P], got {x.shape}")
  n, p = x.shape
  if y.shape != (n,):
    raise ValueError(f"y: expected shape ({n},) to match x {x.shape}, got {y.shape}")
  if w0.shape != (p,):
    raise ValueError(f"w0: expected shape ({p},) to match x {x.shape}, got {w0.shape}")
  _checks.positive("learning_rate", learning_rate)
  _checks.positive("noise_variance", noise_variance, allow_zero=True)
  if teacher is not None and jnp.shape(teacher) != (p,):
    raise ValueError(f"teacher: expected shape ({p},), got {jnp.shape(teacher)}")
  if (x_test is None) != (y_test is None):
    raise ValueError("x_test: expected x_test and y_test together (or neither)")
  if x_test is not None:
    if jnp.ndim(x_test) != 2 or jnp.shape(x_test)[1] != p:
      raise ValueError(f"x_test: expected shape [M, {p}], got {jnp.shape(x_test)}")
    if jnp.shape(y_test) != (jnp.shape(x_test)[0],):
      raise ValueError(f"y_test: expected shape ({jnp.shape(x_test)[0]},), got {jnp.shape(y_test)}")
  s = _steps_array(steps)
  dtype = jnp.result_type(x.dtype, y.dtype, w0.dtype, jnp.float32)
  x, y, w0 = x.astype(dtype), y.astype(dtype), w0.astype(dtype)
  eta = jnp.asarray(learning_rate, dtype)

  lam, v = jnp.linalg.eigh(x.T @ x / n)
  tol = lam[-1] * max(n, p) * jnp.finfo(dtype).eps if rank_tol is None else rank_tol
  frozen = lam <= tol
  lam = jnp.where(frozen, 0.0, lam)
  c = jnp.where(frozen, 0.0, v.T @ (x.T @ y) / n)
  z0 = v.T @ w0
  decay, gain = _mode_factors(lam, frozen, eta, s, flow)
  modes = jnp.where(frozen, z0, decay * z0 + gain * c)
  weights = modes @ v.T

  # L(w) = L_min + (w - w_ls)^T Sigma (w - w_ls) / 2, and in the eigenbasis
  # lambda (z_t - c / lambda)^2 = decay^2 (lambda z0 - c)^2 / lambda.
  safe = jnp.where(frozen, 1.0, lam)
  w_ls = v @ jnp.where(frozen, 0.0, c / safe)
  l_min = jnp.sum((y - x @ w_ls) ** 2) / (2 * n)
  excess = jnp.where(frozen, 0.0, (lam * z0 - c) ** 2 / safe)
  train_error = l_min + 0.5 * (decay**2) @ excess

  test_error = None
  if teacher is not None:
    zt = v.T @ jnp.asarray(teacher, dtype)
    test_error = 0.5 * (jnp.sum((modes - zt) ** 2, axis=1) + noise_variance)
  heldout_error = None
  if x_test is not None:
    xt, yt = jnp.asarray(x_test, dtype), jnp.asarray(y_test, dtype)
    heldout_error = jnp.mean((yt - weights @ xt.T) ** 2, axis=1) / 2
  return LinearTrajectory(s, weights, modes, lam, v, frozen, train_error, test_error, heldout_error)


def _mp_edges(ratio):
  return (1 - jnp.sqrt(ratio)) ** 2, (1 + jnp.sqrt(ratio)) ** 2


def marchenko_pastur_density(eigenvalues: jax.Array, *, ratio: float) -> jax.Array:
  """The continuous part of the Marchenko-Pastur law of ``X^T X / N``, ``X [N, P]`` i.i.d. N(0, 1).

  ``rho(lambda) = sqrt((lambda_+ - lambda)(lambda - lambda_-)) / (2 pi q
  lambda)`` on ``[lambda_-, lambda_+] = [(1 - sqrt q)^2, (1 + sqrt q)^2]``,
  ``q = ratio = P / N = 1 / alpha``, and 0 outside. Its mass is ``min(1, 1/q)``;
  for ``q > 1`` the rest, ``1 - 1/q``, is an atom at 0 (the frozen modes).
  """
  _checks.positive("ratio", ratio)
  lam = jnp.asarray(eigenvalues, jnp.result_type(eigenvalues, jnp.float32))
  lo, hi = _mp_edges(ratio)
  inside = (lam > lo) & (lam < hi)
  root = jnp.sqrt(jnp.where(inside, (hi - lam) * (lam - lo), 0.0))
  return jnp.where(inside, root / (2 * jnp.pi * ratio * jnp.where(inside, lam, 1.0)), 0.0)


def marchenko_pastur_quadrature(ratio: float, num_points: int = 2048):
  """Nodes and weights with ``sum_j w_j f(lambda_j) ~ int f rho`` over the continuous part.

  ``lambda = lambda_- + (lambda_+ - lambda_-)(1 - cos theta) / 2`` turns the
  square-root edges into ``sin^2 theta``; the midpoint rule in ``theta`` is
  then spectrally accurate for smooth ``f`` (the integrand is a smooth
  function of ``cos theta``), including ``q = 1`` where ``lambda_- = 0``.
  """
  _checks.positive("ratio", ratio)
  m = _checks.integer("num_points", num_points, minimum=1)
  lo, hi = _mp_edges(jnp.asarray(ratio, jnp.result_type(float)))
  theta = (jnp.arange(m) + 0.5) * jnp.pi / m
  lam = lo + (hi - lo) * (1 - jnp.cos(theta)) / 2
  half = (hi - lo) / 2
  weights = (jnp.pi / m) * half**2 * jnp.sin(theta) ** 2 / (2 * jnp.pi * ratio * lam)
  return lam, weights


def marchenko_pastur_test_error(
  alpha: float,
  *,
  learning_rate: float,
  steps,
  noise_variance: float,
  teacher_norm2: float = 1.0,
  init_norm2: float = 0.0,
  flow: bool = False,
  num_points: int = 2048,
) -> jax.Array:
  """The ``P -> infinity`` expected test error of :func:`linear_gd_trajectory`, per step.

  With ``w_star`` and ``w0`` isotropic and independent (``E ||w_star||^2 =
  teacher_norm2``, ``E ||w0||^2 = init_norm2``) and ``g = 1 - eta lambda``
  (flow: ``exp(-eta lambda)``),

    2 E_g(t) = noise_variance
      + (teacher_norm2 + init_norm2) [ (1 - min(1, alpha)) + int rho(lambda) g^{2t} ]
      + (noise_variance / alpha) int rho(lambda) (1 - g^t)^2 / lambda,

  the three terms being the noise floor, the not-yet-learned signal (the
  frozen null space first) and the fitted noise, which ``1 / lambda``
  amplifies near ``alpha = 1``. It is derived here from the per-mode solution
  (the noise in mode ``i`` of ``b`` has variance ``noise_variance lambda_i /
  N``), which is the paper's Section 3 analysis of the linear student in this
  module's notation (its time and data scalings differ, see the module
  docstring).

  Args:
    alpha: ``N / P``.
    learning_rate, steps, flow: as in :func:`linear_gd_trajectory`.
    noise_variance, teacher_norm2, init_norm2: the variances above.
    num_points: quadrature nodes (:func:`marchenko_pastur_quadrature`).

  Returns:
    ``[T]`` the expected ``E_g`` at each recorded step.
  """
  _checks.positive("alpha", alpha)
  _checks.positive("learning_rate", learning_rate)
  _checks.positive("noise_variance", noise_variance, allow_zero=True)
  _checks.positive("teacher_norm2", teacher_norm2, allow_zero=True)
  _checks.positive("init_norm2", init_norm2, allow_zero=True)
  s = _steps_array(steps)
  lam, w = marchenko_pastur_quadrature(1.0 / alpha, num_points)
  frozen = jnp.zeros(lam.shape, bool)
  decay, gain = _mode_factors(lam, frozen, jnp.asarray(learning_rate, lam.dtype), s, flow)
  signal = (1 - jnp.minimum(1.0, alpha)) + decay**2 @ w
  # (1 - g^t)^2 / lambda = lambda gain^2
  fitted_noise = (lam * gain**2) @ w / alpha
  return 0.5 * (
    noise_variance + (teacher_norm2 + init_norm2) * signal + noise_variance * fitted_noise
  )
