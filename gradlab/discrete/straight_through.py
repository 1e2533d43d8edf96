"""Straight-Through, Gumbel-Softmax and Straight-Through Gumbel-Softmax.

Notation: logits ``theta`` of shape [..., K] (independent categoricals over
the last axis), ``pi_tau = softmax(theta / tau)``, ``D`` the one-hot sample,
``g = df/dD`` the downstream gradient at the sample, and
``J(p) = diag(p) - p p^T`` the softmax Jacobian.

* Straight-Through (Bengio et al., 2013; the form of Liu et al., 2023):
  ``D ~ Cat(softmax(theta))``, gradient ``J(pi_tau) g / tau``. The sample
  never depends on tau; tau only reshapes the backward pass. At tau = 1 its
  expectation is the first-order (forward Euler) approximation of the true
  gradient (Liu et al., 2023, Sec. 3).
* Gumbel-Softmax (Jang et al., 2017; Maddison et al., 2017): the relaxed
  sample ``y = softmax((theta + G) / tau)``, G ~ Gumbel(0, 1), i.i.d.
* Straight-Through Gumbel-Softmax (Jang et al., 2017): forward the hard
  ``D = onehot(argmax(theta + G))`` (an exact sample of Cat(softmax(theta))),
  backward through the relaxed ``y``: ``J(y) g / tau``.

Each returns the sample; estimators with a deterministic backward given the
sample also have a ``*_from_sample`` form, so that several estimators can be
evaluated on common random numbers or by enumerating the samples.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from gradlab import _checks


def draw_one_hot(key: jax.Array, logits: jax.Array) -> jax.Array:
  # Unchecked (the public form is sample_one_hot): for callers that have validated ``logits`` already (each public
  # estimator validates once; on an eager call a check copies the logits to
  # the host to look for non-finite values).
  idx = jax.random.categorical(key, jax.lax.stop_gradient(logits), axis=-1)
  return jax.nn.one_hot(idx, logits.shape[-1], dtype=logits.dtype)


def sample_one_hot(key: jax.Array, logits: jax.Array) -> jax.Array:
  """One-hot ``D ~ Cat(softmax(logits))`` over the last axis, no gradient."""
  return draw_one_hot(key, _checks.logits("logits", logits))


def straight_through_surrogate(hard: jax.Array, soft: jax.Array) -> jax.Array:
  """Forward value exactly ``hard``, gradient that of ``soft``.

  The parentheses matter: ``soft - sg(soft)`` is exactly 0 in the forward
  pass, whereas ``hard + soft - sg(soft)`` rounds 1 to 0.99999994 in float32.
  """
  return hard + (soft - jax.lax.stop_gradient(soft))


def straight_through_from_sample(
  sample: jax.Array, logits: jax.Array, *, temperature: float = 1.0
) -> jax.Array:
  """ST's output for a given one-hot ``sample`` (value ``sample``)."""
  logits = _checks.logits("logits", logits)
  _checks.positive("temperature", temperature)
  return _straight_through_at(sample, logits, temperature)


def _straight_through_at(sample: jax.Array, logits: jax.Array, temperature) -> jax.Array:
  return straight_through_surrogate(sample, jax.nn.softmax(logits / temperature, axis=-1))


def straight_through(key: jax.Array, logits: jax.Array, *, temperature: float = 1.0) -> jax.Array:
  """Straight-Through: a one-hot sample of ``softmax(logits)``, backward ``J(pi_tau) g / tau``.

  Args:
    key: PRNG key.
    logits: [..., K] unnormalized log-probabilities.
    temperature: tau > 0, the temperature of the backward softmax only.

  Returns:
    The one-hot sample, shape and dtype of ``logits``.
  """
  logits = _checks.logits("logits", logits)
  _checks.positive("temperature", temperature)
  return _straight_through_at(draw_one_hot(key, logits), logits, temperature)


def _gumbel_perturbed(key: jax.Array, logits: jax.Array) -> jax.Array:
  return logits + jax.random.gumbel(key, logits.shape, logits.dtype)


def gumbel_softmax(key: jax.Array, logits: jax.Array, *, temperature: float = 1.0) -> jax.Array:
  """The relaxed sample ``softmax((logits + G) / tau)`` (not one-hot).

  Small tau approaches one-hot samples at the price of high-variance
  gradients; tau in [0.5, 1] is the usual range.
  """
  logits = _checks.logits("logits", logits)
  _checks.positive("temperature", temperature)
  return jax.nn.softmax(_gumbel_perturbed(key, logits) / temperature, axis=-1)


def straight_through_gumbel(
  key: jax.Array, logits: jax.Array, *, temperature: float = 1.0
) -> jax.Array:
  """ST-Gumbel-Softmax: the hard Gumbel-max sample forward, the relaxed one backward."""
  logits = _checks.logits("logits", logits)
  _checks.positive("temperature", temperature)
  perturbed = _gumbel_perturbed(key, logits)
  soft = jax.nn.softmax(perturbed / temperature, axis=-1)
  hard = jax.nn.one_hot(jnp.argmax(perturbed, axis=-1), logits.shape[-1], dtype=logits.dtype)
  return straight_through_surrogate(jax.lax.stop_gradient(hard), soft)
