"""StableMax and softmax collapse against float64 NumPy (gradlab/losses.py; the perpendicular
gradient of the same paper is tests/transforms/test_orthogonal.py)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from gradlab import losses, train


def _s(x):
  return np.where(x >= 0, x + 1.0, 1.0 / (1.0 - np.minimum(x, 0.0)))


def _ds(x):
  return np.where(x >= 0, 1.0, 1.0 / (1.0 - np.minimum(x, 0.0)) ** 2)


def test_stablemax_cross_entropy_and_its_gradient_match_float64_numpy():
  rng = np.random.default_rng(0)
  z = rng.normal(size=(7, 5)) * 3
  y = rng.integers(0, 5, 7)
  s = _s(z)
  ref = -np.mean(np.log(s[np.arange(7), y] / s.sum(1)))
  # d/dz_i: s'(z_i) / sum s - [i = y] s'(z_y) / s(z_y), averaged over the batch
  grad = _ds(z) / s.sum(1, keepdims=True)
  grad[np.arange(7), y] -= _ds(z)[np.arange(7), y] / s[np.arange(7), y]
  grad /= 7
  with jax.enable_x64(True):
    zz = jnp.asarray(z, jnp.float64)
    ours = losses.stablemax_cross_entropy(zz, jnp.asarray(y))
    g = jax.grad(losses.stablemax_cross_entropy)(zz, jnp.asarray(y))
  assert float(ours) == pytest.approx(ref, rel=1e-13)
  np.testing.assert_allclose(g, grad, rtol=1e-12, atol=1e-15)
  # float32 stays close to the float64 value, and finite where softmax collapses
  big = jnp.asarray([[200.0, -200.0, 0.0]], jnp.float32)
  assert np.isfinite(float(losses.stablemax_cross_entropy(big, jnp.asarray([0]))))
  assert float(jnp.abs(jax.grad(losses.stablemax_cross_entropy)(big, jnp.asarray([0]))).sum()) > 0


def test_the_collapse_instrument_counts_a_constructed_collapse_exactly():
  logits = jnp.asarray(
    [
      [120.0, 0.0, 0.0],  # collapsed at the label: counts
      [0.0, 0.0, 120.0],  # collapsed at the label
      [2.0, 0.0, 0.0],  # confident, not collapsed
      [120.0, 0.0, 0.0],  # collapsed, but at the wrong class: its gradient is not zero
      [0.0, 30.0, 0.0],  # exp(-30) ~ 1e-13 survives in float32: not collapsed
    ]
  )
  labels = jnp.asarray([0, 2, 0, 1, 1])
  assert float(losses.softmax_collapse_fraction(logits, labels)) == pytest.approx(2 / 5)
  ce_grad = jax.grad(lambda z: optax.softmax_cross_entropy_with_integer_labels(z, labels).sum())
  zero_rows = np.all(np.asarray(ce_grad(logits)) == 0, axis=1)
  assert zero_rows.tolist() == [True, True, False, False, False]
  inst = train.Instrument(
    "sm", losses.softmax_collapse_instrument(lambda p, b: b["x"] * p), every=1
  )
  out = inst.fn(jnp.float32(1.0), {"x": logits, "y": labels}, jax.random.key(0))
  assert float(out["collapse_fraction"]) == pytest.approx(0.4)


@pytest.mark.parametrize(
  "call, message",
  [
    (
      lambda: losses.stablemax_cross_entropy(jnp.ones((2, 3)), jnp.asarray([0, 3])),
      "^labels: expected class indices in",
    ),
    (
      lambda: losses.stablemax_cross_entropy(jnp.ones((2, 3)), jnp.asarray([0.0, 1.0])),
      "^labels: expected integer",
    ),
    (
      lambda: losses.stablemax_cross_entropy(jnp.ones((2, 3)), jnp.asarray([0])),
      "^labels: expected shape",
    ),
    (
      lambda: losses.softmax_collapse_fraction(jnp.ones((2, 1)), jnp.asarray([0, 0])),
      "^logits: expected shape",
    ),
  ],
)
def test_bad_input_gets_a_one_line_error(call, message):
  with pytest.raises(ValueError, match=message):
    call()
