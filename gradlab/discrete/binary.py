"""Straight-through estimators for sign (binary) variables.

* ``straight_through_sign``: forward ``sign(x)``, backward ``g * 1{|x| <= clip}``
  (the clipped STE of Hubara et al., 2016; ReSTE's "STE" baseline clips at 1).
* ``reste_sign``: ReSTE, the rectified straight-through estimator of Wu et al.,
  "Estimator Meets Equilibrium Perspective: A Rectified Straight Through
  Estimator for Binary Neural Networks Training", ICCV 2023; official code
  DravenALG/ReSTE, ``Binary_ReSTE`` in ``model/binary_module/binarized_modules.py``.
  The backward is the derivative of the power function
  ``f_o(x) = sign(x) |x|^(1/o)`` (o >= 1), which tends to sign(x) as o grows:

      d/dx = (1/o) |x|^((1-o)/o)     for 0.1 < |x| <= t,
             0.1^(1/o) / 0.1         for |x| <= 0.1  (the secant to 0.1, which
                                                      avoids the pole at 0),
             0                       for |x| > t.

  o trades the estimating error (smaller as o grows) against the gradient's
  stability (larger variance as o grows); the paper anneals o from 1 to
  o_end = 3 with ``reste_power`` and uses t = 1.5.

The forward is ``jnp.sign`` (0 maps to 0), as in both official codes.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

_INTERVAL = 0.1  # the official code's half-width of the linear zone around 0


@jax.custom_vjp
def _ste_sign(x, clip):
  return jnp.sign(x)


def _ste_fwd(x, clip):
  return jnp.sign(x), (x, clip)


def _ste_bwd(res, g):
  x, clip = res
  return g * (jnp.abs(x) <= clip).astype(g.dtype), jnp.zeros_like(clip)


_ste_sign.defvjp(_ste_fwd, _ste_bwd)


def straight_through_sign(x: jax.Array, *, clip: float = 1.0) -> jax.Array:
  """``sign(x)`` with gradient ``1{|x| <= clip}`` (``clip=inf``: the identity)."""
  if not clip > 0:
    raise ValueError(f"clip: expected a value > 0, got {clip}")
  x = jnp.asarray(x)
  return _ste_sign(x, jnp.asarray(clip, x.dtype))


def reste_slope(x: jax.Array, power: jax.Array, threshold: jax.Array) -> jax.Array:
  """ReSTE's backward multiplier at ``x`` (see the module docstring)."""
  ax = jnp.abs(x)
  safe = jnp.maximum(ax, _INTERVAL)  # keeps the unused branch finite
  power_slope = (1.0 / power) * safe ** ((1.0 - power) / power)
  linear_slope = _INTERVAL ** (1.0 / power) / _INTERVAL
  return jnp.where(
    ax <= _INTERVAL, linear_slope, jnp.where(ax <= threshold, power_slope, 0.0)
  ).astype(x.dtype)


@jax.custom_vjp
def _reste(x, power, threshold):
  return jnp.sign(x)


def _reste_fwd(x, power, threshold):
  return jnp.sign(x), (x, power, threshold)


def _reste_bwd(res, g):
  x, power, threshold = res
  return g * reste_slope(x, power, threshold), jnp.zeros_like(power), jnp.zeros_like(threshold)


_reste.defvjp(_reste_fwd, _reste_bwd)


def reste_sign(x: jax.Array, *, power: float = 3.0, threshold: float = 1.5) -> jax.Array:
  """ReSTE: ``sign(x)`` with the rectified power-function gradient.

  Args:
    x: pre-binarization values (weights or activations).
    power: o >= 1; o = 1 is the clipped STE with clip ``threshold``.
    threshold: t > 0.1, the gradient is zero for |x| > t.
  """
  if isinstance(power, (int, float)) and power < 1:
    raise ValueError(f"power: expected o >= 1, got {power}")
  if isinstance(threshold, (int, float)) and threshold <= _INTERVAL:
    raise ValueError(f"threshold: expected t > {_INTERVAL}, got {threshold}")
  x = jnp.asarray(x)
  return _reste(x, jnp.asarray(power, x.dtype), jnp.asarray(threshold, x.dtype))


def reste_power(epoch: float, num_epochs: float, *, power_end: float = 3.0) -> float:
  """The official schedule ``o = 1 + (1 - cos(pi/2 * epoch/num_epochs)) (o_end - 1)``."""
  if num_epochs <= 0:
    raise ValueError(f"num_epochs: expected a value > 0, got {num_epochs}")
  if power_end < 1:
    raise ValueError(f"power_end: expected o_end >= 1, got {power_end}")
  return 1.0 + (1.0 - math.cos(math.pi / 2 * epoch / num_epochs)) * (power_end - 1.0)
