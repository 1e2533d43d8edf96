"""Sliced Wasserstein distances by Monte Carlo, with the control variates of Nguyen and Ho
(2023), "Control Variate Sliced Wasserstein Estimators" (official code khainb/CV-SW,
``GradientFlow/utils.py``).

For point clouds X ``[n, d]`` and Y ``[n, d]`` (uniform weights),
``SW_p^p = E_theta W_p^p(theta # X, theta # Y)`` over directions theta uniform
on the sphere; in one dimension ``W_p^p`` is the mean of ``|sorted - sorted|^p``.
The Monte Carlo estimate averages L directions. The control variates are
functions G(theta) with a known mean, built from Gaussian approximations of
the projected measures (for p = 2):

* lower (``"lower"``, LCV): ``G = (theta . (m_X - m_Y))^2``, ``E G = |m_X - m_Y|^2 / d``;
* upper (``"upper"``, UCV): ``G`` adds ``theta^T Sigma_X theta + theta^T Sigma_Y theta``
  (the empirical covariances), ``E G = (|m_X - m_Y|^2 + tr Sigma_X + tr Sigma_Y) / d``.

The estimate is ``A - alpha (mean G - E G)`` with ``alpha = cov(W, G) / var(G)``
estimated from the same L directions (``var`` around the known mean), as the
official ``LCVSW`` / ``UCVSW``. ``sliced_wasserstein_power`` returns the
estimate of ``SW_p^p`` (unbiased for the plain estimator);
``sliced_wasserstein`` its ``1/p`` power, as the official functions return.
Both are differentiable in X and Y (sorting is), for gradient flows and
generative fitting.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from gradlab import _checks

CONTROL_VARIATES = (None, "lower", "upper")


def random_directions(key: jax.Array, num: int, dim: int, dtype=jnp.float32) -> jax.Array:
  """``[num, dim]`` directions uniform on the unit sphere."""
  v = jax.random.normal(key, (num, dim), dtype)
  return v / jnp.linalg.norm(v, axis=1, keepdims=True)


def projected_distances(x: jax.Array, y: jax.Array, theta: jax.Array, p: float) -> jax.Array:
  """``[L]``: ``W_p^p`` of the projections of x and y on each direction."""
  px = jnp.sort(x @ theta.T, axis=0)
  py = jnp.sort(y @ theta.T, axis=0)
  return jnp.mean(jnp.abs(px - py) ** p, axis=0)


def sliced_wasserstein_power(
  x: Any,
  y: Any,
  key: jax.Array,
  *,
  num_projections: int = 10,
  p: float = 2.0,
  control_variate: str | None = None,
) -> jax.Array:
  """The estimate of ``SW_p^p(X, Y)`` from ``num_projections`` random directions."""
  _checks.is_key("key", key)
  num = _checks.integer("num_projections", num_projections, minimum=1)
  _checks.one_of("control_variate", control_variate, CONTROL_VARIATES)
  x, y = jnp.asarray(x), jnp.asarray(y)
  if x.ndim != 2 or y.ndim != 2 or x.shape != y.shape or x.shape[0] == 0:
    raise ValueError(
      f"x, y: expected two non-empty point clouds of one shape [n, d], got {x.shape} and {y.shape}"
    )
  _checks.positive("p", p)
  if control_variate is not None and p != 2:
    raise ValueError(f"p: the control variates are built for p = 2, got {p}")
  d = x.shape[1]
  theta = random_directions(key, num, d, x.dtype)
  w = projected_distances(x, y, theta, p)
  a = jnp.mean(w)
  if control_variate is None:
    return a
  dm = jnp.mean(x, 0) - jnp.mean(y, 0)
  g = (theta @ dm) ** 2
  mean_g = jnp.sum(dm**2) / d
  if control_variate == "upper":
    cx, cy = x - jnp.mean(x, 0), y - jnp.mean(y, 0)
    g = g + jnp.mean((theta @ cx.T) ** 2, axis=1) + jnp.mean((theta @ cy.T) ** 2, axis=1)
    mean_g = mean_g + (jnp.mean(jnp.sum(cx**2, 1)) + jnp.mean(jnp.sum(cy**2, 1))) / d
  centered = g - mean_g
  var_g = jnp.mean(centered**2)
  cov = jnp.mean((w - a) * centered)
  alpha = cov / (var_g + 1e-24)
  return a - alpha * jnp.mean(centered)


def sliced_wasserstein(x: Any, y: Any, key: jax.Array, **kwargs: Any) -> jax.Array:
  """``SW_p``: :func:`sliced_wasserstein_power` to the power ``1 / p``."""
  p = kwargs.get("p", 2.0)
  return sliced_wasserstein_power(x, y, key, **kwargs) ** (1.0 / p)
