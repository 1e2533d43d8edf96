r"""BVPO: mix a high-variance gradient estimator with a low-variance, biased one.

Bias-variance optimized preference optimization (BVPO, https://arxiv.org/abs/2510.05095)
combines two estimators of one gradient ``\nabla J``: ``g_a`` (BVPO: the
gradient from responses with their full reasoning trace; unbiased, noisy) and
``g_b`` (from the same prompts with an empty trace; cheaper, quieter, biased),
as ``g = \alpha g_a + (1 - \alpha) g_b``. With biases ``b = E g - \nabla J``,
total variances ``V = tr Cov g`` and cross term ``C = tr Cov(g_a, g_b)``,

.. math::

  MSE(\alpha) = \|\alpha b_a + (1-\alpha) b_b\|^2 + \alpha^2 V_a + (1-\alpha)^2 V_b
  + 2\alpha(1-\alpha) C,

a quadratic in ``\alpha`` minimized at

.. math::

  \alpha^* = \frac{\|b_b\|^2 - \langle b_a, b_b\rangle + V_b - C}
                  {\|b_a - b_b\|^2 + V_a + V_b - 2C},

clipped to ``[0, 1]``. Because ``\alpha = 0`` and ``\alpha = 1`` are in the
interval, the mixture's MSE at ``\alpha^*`` is never above either component's.
(Our derivation of the closed form from the MSE; the paper states it for
``b_a = 0``, which :func:`estimate_mixture_weight` assumes when no target is
given.)

Estimates are arrays ``[num_samples, dim]`` (flatten a pytree with
``jax.flatten_util.ravel_pytree``); :func:`mix` works on any pytrees.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from gradlab import _checks


def mixture_mse(weight, bias_a, bias_b, var_a, var_b, cov=0.0) -> jax.Array:
  """``MSE(weight)`` of ``weight * g_a + (1 - weight) * g_b`` from the moments (see the module)."""
  w = jnp.asarray(weight)
  b = w * jnp.asarray(bias_a) + (1 - w) * jnp.asarray(bias_b)
  return jnp.sum(b**2) + w**2 * var_a + (1 - w) ** 2 * var_b + 2 * w * (1 - w) * cov


def mixture_weight(bias_a, bias_b, var_a, var_b, cov=0.0) -> jax.Array:
  r"""The MSE-optimal weight ``\alpha^*`` on ``g_a``, clipped to ``[0, 1]``.

  ``bias_a``, ``bias_b``: ``[dim]`` biases against the target; ``var_a``,
  ``var_b``: ``tr Cov``; ``cov``: ``tr Cov(g_a, g_b)`` (0 for independent draws).
  When the two estimators are the same random vector (denominator 0) any weight
  is optimal; 1 is returned.
  """
  ba, bb = jnp.asarray(bias_a), jnp.asarray(bias_b)
  if ba.shape != bb.shape:
    raise ValueError(f"bias_a, bias_b: expected the same shape, got {ba.shape} and {bb.shape}")
  _checks.positive("var_a", var_a, allow_zero=True)
  _checks.positive("var_b", var_b, allow_zero=True)
  return _optimal_weight(
    jnp.sum(bb**2), jnp.sum(ba * bb), jnp.sum((ba - bb) ** 2), var_a, var_b, cov
  )


def _optimal_weight(bias_b_sq, bias_dot, bias_diff_sq, var_a, var_b, cov) -> jax.Array:
  """``alpha^*`` from the scalars it needs: ``||b_b||^2``, ``<b_a, b_b>``, ``||b_a - b_b||^2``."""
  num = bias_b_sq - bias_dot + var_b - cov
  den = bias_diff_sq + var_a + var_b - 2 * cov
  safe = jnp.where(den > 0, den, 1.0)
  return jnp.where(den > 0, jnp.clip(num / safe, 0.0, 1.0), 1.0)


def _moments(samples_a, samples_b, paired):
  a, b = jnp.asarray(samples_a), jnp.asarray(samples_b)
  for name, x in (("samples_a", a), ("samples_b", b)):
    if x.ndim != 2 or x.shape[0] < 2:
      raise ValueError(f"{name}: expected [num_samples >= 2, dim] estimates, got shape {x.shape}")
  if a.shape[1] != b.shape[1]:
    raise ValueError(
      f"samples_a, samples_b: expected the same dim, got {a.shape[1]} and {b.shape[1]}"
    )
  if paired and a.shape[0] != b.shape[0]:
    raise ValueError(
      f"samples_b: paired estimates need as many samples as samples_a ({a.shape[0]}), "
      f"got {b.shape[0]}"
    )
  ma, mb = a.mean(0), b.mean(0)
  va = jnp.sum(jnp.var(a, 0, ddof=1))
  vb = jnp.sum(jnp.var(b, 0, ddof=1))
  if paired:
    c = jnp.sum((a - ma) * (b - mb)) / (a.shape[0] - 1)
  else:
    c = jnp.zeros([], a.dtype)
  return ma, mb, va, vb, c, a.shape[0], b.shape[0]


def estimate_mixture_weight(samples_a, samples_b, *, target=None, paired: bool = False):
  r"""``\alpha^*`` from Monte Carlo draws of the two estimators, ``[n, dim]`` each.

  ``target`` (``[dim]``, the exact gradient when it is known): biases are
  ``mean - target``. Without it, ``g_a`` is taken as unbiased (BVPO's
  assumption for the full-trace gradient): ``b_a = 0`` and ``b_b`` is the
  difference of the sample means, whose squared norm is corrected for the
  sampling noise of the means (``- V_a/n_a - V_b/n_b``, plus ``2C/n`` when
  paired) so that the weight is consistent and not pulled towards ``g_a``.
  ``paired``: row ``i`` of both came from the same draw (common prompts or
  random numbers), so their cross covariance ``C`` is estimated; otherwise
  ``C = 0``. Returns ``(weight, moments)`` with the moments as a dict.
  """
  ma, mb, va, vb, c, na, nb = _moments(samples_a, samples_b, paired)
  if target is not None:
    t = jnp.asarray(target)
    if t.shape != ma.shape:
      raise ValueError(f"target: expected shape {ma.shape}, got {t.shape}")
    ba, bb = ma - t, mb - t
    w = mixture_weight(ba, bb, va, vb, c)
  else:
    ba = jnp.zeros_like(ma)
    bb = mb - ma
    noise = va / na + vb / nb - (2 * c / na if paired else 0.0)
    bias_sq = jnp.maximum(jnp.sum(bb**2) - noise, 0.0)
    w = _optimal_weight(bias_sq, 0.0, bias_sq, va, vb, c)  # b_a = 0
  return w, {"bias_a": ba, "bias_b": bb, "var_a": va, "var_b": vb, "cov": c}


def mix(g_a, g_b, weight):
  """``weight * g_a + (1 - weight) * g_b`` leaf by leaf (any matching pytrees)."""
  if jax.tree.structure(g_a) != jax.tree.structure(g_b):
    raise ValueError("g_a, g_b: expected pytrees of the same structure")
  _checks.unit_interval("weight", weight, closed=True)
  return jax.tree.map(lambda a, b: weight * a + (1 - weight) * b, g_a, g_b)
