"""M-FAC against a dense float64 solve, and its sliding window against a recomputation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gradlab import transforms
from gradlab.transforms import inverse_fisher as mfac_lib


@pytest.mark.parametrize("m", [1, 8, 64])
def test_inverse_fisher_product_equals_a_dense_solve(m):
  rng = np.random.default_rng(m)
  d, lam = 100, 1e-2
  g = rng.normal(size=(m, d))
  x = rng.normal(size=d)
  dense = np.linalg.solve(lam * np.eye(d) + g.T @ g / m, x)
  with jax.enable_x64(True):
    ours = transforms.inverse_fisher_product(jnp.asarray(g), jnp.asarray(x), damping=lam)
  np.testing.assert_allclose(ours, dense, rtol=1e-9, atol=1e-12)


def test_the_sliding_window_equals_a_recomputation_from_scratch():
  rng = np.random.default_rng(0)
  m, d, lam = 6, 30, 1e-1
  stream = rng.normal(size=(15, d))
  with jax.enable_x64(True):
    tx = transforms.scale_by_mfac(m, damping=lam)
    params = jnp.zeros(d)
    state = tx.init(params)
    update = jax.jit(tx.update)
    for t, g in enumerate(stream):
      u, state = update(jnp.asarray(g), state)
      window = stream[max(0, t - m + 1) : t + 1]
      padded = np.concatenate([window, np.zeros((m - len(window), d))])  # zeros fill the start
      dense = np.linalg.solve(lam * np.eye(d) + padded.T @ padded / m, g)
      np.testing.assert_allclose(u, dense, rtol=1e-8, atol=1e-11)
    # the state's Gram matrix is the window's, and its coefficients a fresh setup's
    np.testing.assert_allclose(state.dots, state.grads @ state.grads.T, rtol=1e-12)
    fresh = mfac_lib.mfac_setup(state.grads @ state.grads.T, lam)
    x = jnp.asarray(rng.normal(size=d))
    a = mfac_lib.mfac_product(state.grads, fresh, x, lam)
    b = mfac_lib.mfac_product(state.grads, mfac_lib.mfac_setup(state.dots, lam), x, lam)
    np.testing.assert_allclose(a, b, rtol=1e-12)


def test_bad_input_gets_a_one_line_error():
  with pytest.raises(ValueError, match="^damping: expected a finite value > 0"):
    transforms.inverse_fisher_product(jnp.ones((2, 3)), jnp.ones(3), damping=0.0)
  with pytest.raises(ValueError, match="^x: expected shape"):
    transforms.inverse_fisher_product(jnp.ones((2, 3)), jnp.ones(4), damping=1.0)
  with pytest.raises(ValueError, match="^num_grads: expected an integer >= 1"):
    transforms.scale_by_mfac(0)
