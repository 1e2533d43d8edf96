"""gradlab's ReinMax against the official PyTorch package on the same sample.

Runs only where torch and reinmax are installed (``pip install -e .[bench]``);
the NumPy port in test_reinmax_reference.py always runs.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gradlab import discrete

torch = pytest.importorskip("torch")
official = pytest.importorskip("reinmax")


@pytest.mark.parametrize("shape,tau", [((6, 5), 1.0), ((2, 3, 4), 1.3), ((10,), 2.0)])
def test_gradient_matches_official_reinmax(shape, tau):
  rng = np.random.default_rng(0)
  logits = rng.normal(size=shape).astype(np.float64)
  g = rng.normal(size=shape).astype(np.float64)
  tl = torch.tensor(logits, requires_grad=True)
  sample, _ = official.reinmax(tl, tau)
  (sample * torch.tensor(g)).sum().backward()
  with jax.enable_x64(True):
    ours = jax.grad(
      lambda t: jnp.sum(
        discrete.reinmax_from_sample(jnp.asarray(sample.detach().numpy()), t, temperature=tau) * g
      )
    )(jnp.asarray(logits))
  np.testing.assert_allclose(np.asarray(ours), tl.grad.numpy(), rtol=1e-12, atol=1e-12)
