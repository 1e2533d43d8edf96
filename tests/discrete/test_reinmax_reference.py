"""ReinMax's backward against a NumPy port of the official torch backward."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gradlab import discrete


def _softmax(x):
  e = np.exp(x - x.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def official_backward(one_hot_sample, logits, tau, grad_at_sample, grad_at_p):
  """microsoft/ReinMax reinmax/reinmax.py, ReinMax_Auto.backward, line by line."""
  y_soft = _softmax(logits)
  shifted_y_soft = 0.5 * (_softmax(logits / tau) + one_hot_sample)
  grad_at_input_1 = (2 * grad_at_sample) * shifted_y_soft
  grad_at_input_1 = grad_at_input_1 - shifted_y_soft * grad_at_input_1.sum(axis=-1, keepdims=True)
  grad_at_input_0 = (-0.5 * grad_at_sample + grad_at_p) * y_soft
  grad_at_input_0 = grad_at_input_0 - y_soft * grad_at_input_0.sum(axis=-1, keepdims=True)
  grad_at_input = grad_at_input_0 + grad_at_input_1
  return grad_at_input - grad_at_input.mean(axis=-1, keepdims=True)


@pytest.mark.parametrize("shape", [(5,), (4, 3), (2, 3, 7), (16, 10)])
@pytest.mark.parametrize("tau", [0.5, 1.0, 1.3, 2.0])
def test_backward_matches_the_official_formula(shape, tau):
  k1, k2, k3 = jax.random.split(jax.random.key(hash((shape, tau)) % 2**31), 3)
  logits = 2.0 * jax.random.normal(k1, shape)
  g = jax.random.normal(k2, shape)
  sample = discrete.sample_one_hot(k3, logits)
  out, vjp = jax.vjp(lambda t: discrete.reinmax_from_sample(sample, t, temperature=tau), logits)
  np.testing.assert_array_equal(out, sample)  # forward: the sample itself
  (ours,) = vjp(g)
  ref = official_backward(
    np.asarray(sample, np.float64),
    np.asarray(logits, np.float64),
    tau,
    np.asarray(g, np.float64),
    0.0,
  )
  # float32 against float64: entries are O(1), float32 rounding ~1e-7 each.
  np.testing.assert_allclose(ours, ref, rtol=1e-6, atol=1e-6)


def test_reinmax_samples_from_untempered_softmax_with_sample_one_hot():
  key, logits = jax.random.key(3), jnp.array([[0.3, -1.0, 2.0]])
  for tau in (0.5, 1.0, 3.0):  # the sample never depends on tau
    np.testing.assert_array_equal(
      discrete.reinmax(key, logits, temperature=tau), discrete.sample_one_hot(key, logits)
    )


def test_reinmax_with_a_softmax_term_matches_official_grad_at_p():
  # The official function also returns softmax(logits) with its plain gradient;
  # a user composes it here as jax.nn.softmax, which must reproduce grad_at_p.
  logits = jax.random.normal(jax.random.key(0), (3, 4))
  sample = discrete.sample_one_hot(jax.random.key(1), logits)
  g, gp = jax.random.normal(jax.random.key(2), (2, 3, 4))

  def loss(t):
    d = discrete.reinmax_from_sample(sample, t, temperature=1.2)
    return jnp.sum(d * g) + jnp.sum(jax.nn.softmax(t) * gp)

  ref = official_backward(
    *(np.asarray(x, np.float64) for x in (sample, logits)),
    1.2,
    np.asarray(g, np.float64),
    np.asarray(gp, np.float64),
  )
  np.testing.assert_allclose(jax.grad(loss)(logits), ref, rtol=1e-6, atol=1e-6)
