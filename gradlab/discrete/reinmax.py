"""ReinMax: second-order accurate straight-through gradients via Heun's method.

Reference: Liu, Zhao, Chen, Gao, He, "Bridging Discrete and Backpropagation:
Straight-Through and Beyond", NeurIPS 2023 (arXiv:2304.08612); official code
microsoft/ReinMax, ``reinmax/reinmax.py`` (PyPI ``reinmax`` 0.1.0).

The true gradient of E_{D ~ softmax(theta)}[f(D)] is
``sum_j pi_j sum_i (f(e_i) - f(e_j)) d pi_i / d theta``. Straight-Through
approximates ``f(e_i) - f(e_j)`` by ``g_j^T (e_i - e_j)`` (forward Euler,
first order); ReinMax uses Heun's rule ``(g_i + g_j)^T (e_i - e_j) / 2``, exact
for quadratic f, and realises it in expectation at no extra cost:

    pi_0 = softmax(theta),   pi_1 = (D + softmax(theta / tau)) / 2,
    grad_theta = 2 J(pi_1) g - J(pi_0) g / 2,        J(p) = diag(p) - p p^T,

with ``D ~ Cat(pi_0)`` (never sampled at temperature tau) and ``g = df/dD``.
This module ports the official ``ReinMax_Auto.backward`` term for term as a
``jax.custom_vjp`` (it never takes a log, so it cannot overflow where the
paper's Algorithm 2 form ``log pi_1`` would). The official code raises for
tau < 1; the paper finds tau >= 1 works best (its scripts use 1.1-1.5), and
here any tau > 0 is accepted.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from gradlab import _checks
from gradlab.discrete.straight_through import draw_one_hot


@jax.custom_vjp
def _reinmax(sample: jax.Array, logits: jax.Array, temperature: jax.Array) -> jax.Array:
  return sample


def _reinmax_fwd(sample, logits, temperature):
  return sample, (sample, logits, temperature)


def _reinmax_bwd(res, grad_at_sample):
  one_hot_sample, logits, tau = res
  y_soft = jax.nn.softmax(logits, axis=-1)
  # Official code, term for term (grad_at_p = 0: only the sample is returned).
  shifted_y_soft = 0.5 * (jax.nn.softmax(logits / tau, axis=-1) + one_hot_sample)
  grad_at_input_1 = (2 * grad_at_sample) * shifted_y_soft
  grad_at_input_1 = grad_at_input_1 - shifted_y_soft * jnp.sum(grad_at_input_1, -1, keepdims=True)
  grad_at_input_0 = (-0.5 * grad_at_sample) * y_soft
  grad_at_input_0 = grad_at_input_0 - y_soft * jnp.sum(grad_at_input_0, -1, keepdims=True)
  grad_at_input = grad_at_input_0 + grad_at_input_1
  grad_at_input = grad_at_input - jnp.mean(grad_at_input, -1, keepdims=True)
  return jnp.zeros_like(one_hot_sample), grad_at_input, jnp.zeros_like(tau)


_reinmax.defvjp(_reinmax_fwd, _reinmax_bwd)


def reinmax_from_sample(
  sample: jax.Array, logits: jax.Array, *, temperature: float = 1.0
) -> jax.Array:
  """ReinMax's output for a given one-hot ``sample`` of ``softmax(logits)``."""
  logits = _checks.logits("logits", logits)
  _checks.positive("temperature", temperature)
  return _reinmax_at(sample, logits, temperature)


def _reinmax_at(sample: jax.Array, logits: jax.Array, temperature) -> jax.Array:
  tau = jnp.asarray(temperature, logits.dtype)
  return _reinmax(jax.lax.stop_gradient(sample.astype(logits.dtype)), logits, tau)


def reinmax(key: jax.Array, logits: jax.Array, *, temperature: float = 1.0) -> jax.Array:
  """ReinMax: a one-hot sample of ``softmax(logits)`` with ReinMax's gradient.

  Args:
    key: PRNG key.
    logits: [..., K] unnormalized log-probabilities.
    temperature: tau > 0 of the backward's ``softmax(theta / tau)``; tau >= 1
      is recommended (at tau = 1 the estimator is unbiased for any f that is
      quadratic in D).

  Returns:
    The one-hot sample, shape and dtype of ``logits``.
  """
  logits = _checks.logits("logits", logits)
  _checks.positive("temperature", temperature)
  return _reinmax_at(draw_one_hot(key, logits), logits, temperature)
