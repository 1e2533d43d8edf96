import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gradlab import discrete
from gradlab.discrete.binary import reste_slope


def official_reste_backward(x, t, o, g):
  """DravenALG/ReSTE Binary_ReSTE.backward, line by line, in NumPy.

  ``x`` stays float32 so that the branch tests compare as torch does on a
  float32 tensor (0.1 cast to float32); the slopes are computed in float64.
  """
  interval = 0.1
  approx = lambda v: v ** (1 / o) if v >= 0 else -((-v) ** (1 / o))
  tmp = np.zeros(x.shape, np.float64)
  x64 = x.astype(np.float64)
  mask1 = (x <= t) & (x > interval)
  tmp[mask1] = (1 / o) * np.power(x64[mask1], (1 - o) / o)
  mask2 = (x >= -t) & (x < -interval)
  tmp[mask2] = (1 / o) * np.power(-x64[mask2], (1 - o) / o)
  tmp[(x <= interval) & (x >= 0)] = approx(interval) / interval
  tmp[(x <= 0) & (x >= -interval)] = -approx(-interval) / interval
  return tmp * g


@pytest.mark.parametrize("power", [1.0, 2.0, 3.0, 5.0])
def test_reste_backward_matches_the_official_code(power):
  rng = np.random.default_rng(0)
  x = np.concatenate(
    [rng.uniform(-2, 2, 200), [0.0, 0.1, -0.1, 1.5, -1.5, 0.1000001, 1.4999, 1.5001, -1.5001]]
  )
  x = x.astype(np.float32)
  g = rng.normal(size=x.shape).astype(np.float32)
  out, vjp = jax.vjp(lambda v: discrete.reste_sign(v, power=power, threshold=1.5), jnp.asarray(x))
  np.testing.assert_array_equal(out, np.sign(x))
  ref = official_reste_backward(x, 1.5, power, g.astype(np.float64))
  np.testing.assert_allclose(vjp(jnp.asarray(g))[0], ref, rtol=1e-6, atol=1e-7)


def test_reste_slopes_at_landmarks():
  x = jnp.array([0.05, 1.0, 1.6])
  for o in (1.0, 2.0, 3.0):
    s = np.asarray(reste_slope(x, o, 1.5))
    np.testing.assert_allclose(s, [0.1 ** (1 / o - 1), 1 / o, 0.0], rtol=1e-6)


def test_reste_at_power_one_is_the_clipped_ste():
  x = jnp.linspace(-2, 2, 401)
  g1 = jax.grad(lambda v: jnp.sum(discrete.reste_sign(v, power=1.0, threshold=1.0)))(x)
  g2 = jax.grad(lambda v: jnp.sum(discrete.straight_through_sign(v, clip=1.0)))(x)
  np.testing.assert_array_equal(g1, g2)
  np.testing.assert_array_equal(g2, (np.abs(np.asarray(x)) <= 1.0).astype(np.float32))


def test_power_schedule_and_bad_input():
  assert discrete.reste_power(0, 10) == 1.0
  assert discrete.reste_power(10, 10, power_end=3.0) == pytest.approx(3.0)
  assert 1.0 < discrete.reste_power(5, 10) < 3.0
  with pytest.raises(ValueError, match="power: expected o >= 1"):
    discrete.reste_sign(jnp.ones(2), power=0.5)
  with pytest.raises(ValueError, match="threshold"):
    discrete.reste_sign(jnp.ones(2), threshold=0.05)
  with pytest.raises(ValueError, match="clip"):
    discrete.straight_through_sign(jnp.ones(2), clip=0.0)
  with pytest.raises(ValueError, match="num_epochs"):
    discrete.reste_power(1, 0)
