"""The perpendicular gradient ("Grokking at the Edge of Numerical Stability") against
float64 NumPy and the official formula."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gradlab import transforms


def test_orthogonal_gradient_is_orthogonal_to_each_layer_and_keeps_its_norm():
  rng = np.random.default_rng(1)
  with jax.enable_x64(True):
    params = {"a": jnp.asarray(rng.normal(size=(4, 3))), "b": jnp.asarray(rng.normal(size=5))}
    grads = jax.tree.map(lambda p: jnp.asarray(rng.normal(size=p.shape)) + 2 * p, params)
    tx = transforms.orthogonal_gradient()
    out, _ = jax.jit(tx.update)(grads, tx.init(params), params)
    for k in params:
      w, g, o = (np.ravel(np.asarray(t[k])) for t in (params, grads, out))
      assert abs(w @ o) <= 1e-12 * np.linalg.norm(w) * np.linalg.norm(o)
      assert np.linalg.norm(o) == pytest.approx(np.linalg.norm(g), rel=1e-13)
      # the official formula, line by line
      proj = (w @ g) / (w @ w + 1e-30)
      perp = g - proj * w
      np.testing.assert_allclose(o, perp * np.linalg.norm(g) / (np.linalg.norm(perp) + 1e-30))
  with pytest.raises(ValueError, match="^params: orthogonal_gradient"):
    tx.update(grads, tx.init(params))
