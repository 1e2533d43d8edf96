"""Coherence and robust aggregation against NumPy on explicit per-example gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from gradlab import gradstats, transforms


def _linear_loss(p, b):
  # per-example gradient of example i is exactly b["g"][i] (the loss is linear in p)
  return jnp.mean(jnp.sum(b["g"]["w"] * p["w"], axis=1) + b["g"]["v"] * p["v"])


def _moments(g):
  params = {"w": jnp.zeros(g["w"].shape[1]), "v": jnp.zeros(())}
  return gradstats.gradient_moments(_linear_loss, params, {"g": g}, chunk_size=2)


def test_coherence_matches_numpy_and_hits_its_bounds_exactly():
  rng = np.random.default_rng(0)
  g = {"w": rng.normal(size=(6, 4)), "v": rng.normal(size=6)}
  flat = np.concatenate([g["w"], g["v"][:, None]], 1)
  ref = np.sum(flat.mean(0) ** 2) / np.mean(np.sum(flat**2, 1))
  with jax.enable_x64(True):
    m = _moments(jax.tree.map(jnp.asarray, g))
    assert float(gradstats.coherence(m)) == pytest.approx(ref, rel=1e-12)
    per = gradstats.per_layer_coherence(m)
    assert float(per["w"]) == pytest.approx(
      np.sum(g["w"].mean(0) ** 2) / np.mean(np.sum(g["w"] ** 2, 1)), rel=1e-12
    )
    # orthogonal gradients of equal norm: exactly 1/B; identical ones: exactly 1
    eye = {"w": jnp.eye(6) * 3.0, "v": jnp.zeros(6)}
    assert float(gradstats.coherence(_moments(eye))) == pytest.approx(1 / 6, rel=1e-14)
    same = {"w": jnp.tile(jnp.asarray([1.0, -2.0, 0.5, 0.0, 1.0, 3.0]), (6, 1)), "v": jnp.ones(6)}
    assert float(gradstats.coherence(_moments(same))) == pytest.approx(1.0, rel=1e-14)


def test_winsorized_mean_and_median_of_means_match_numpy():
  rng = np.random.default_rng(1)
  g = {"a": rng.normal(size=(8, 3, 2)), "b": rng.normal(size=(8,))}
  lo = lambda x, c: np.sort(x, 0)[c - 1]
  hi = lambda x, c: np.sort(x, 0)[x.shape[0] - c]
  tx = transforms.winsorized_mean(2)
  out, _ = jax.jit(tx.update)(jax.tree.map(jnp.asarray, g), tx.init(None))
  for k, x in g.items():
    np.testing.assert_allclose(out[k], np.clip(x, lo(x, 2), hi(x, 2)).mean(0), rtol=1e-6)
  # c = 1 clips nothing: the plain mean
  out1, _ = transforms.winsorized_mean(1).update(jax.tree.map(jnp.asarray, g), optax.EmptyState())
  np.testing.assert_allclose(out1["a"], g["a"].mean(0), rtol=1e-6)
  mom = transforms.median_of_means(4)
  out2, _ = mom.update(jax.tree.map(jnp.asarray, g), mom.init(None))
  for k, x in g.items():
    np.testing.assert_allclose(
      out2[k], np.median(x.reshape(4, 2, *x.shape[1:]).mean(1), 0), rtol=1e-6
    )
  # a NaN anywhere: a zero update
  bad = jax.tree.map(jnp.asarray, g)
  bad["b"] = bad["b"].at[3].set(jnp.nan)
  z, _ = tx.update(bad, tx.init(None))
  assert all(np.all(np.asarray(v) == 0) for v in jax.tree.leaves(z))
  with pytest.raises(ValueError, match="^num_groups: 3 does not divide"):
    transforms.median_of_means(3).update(jax.tree.map(jnp.asarray, g), optax.EmptyState())
  with pytest.raises(ValueError, match="^c: expected 2c - 1 <="):
    transforms.winsorized_mean(5).update(jax.tree.map(jnp.asarray, g), optax.EmptyState())
