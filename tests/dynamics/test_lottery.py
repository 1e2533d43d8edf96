"""Magnitude masks keep exactly the top fraction by |w| (globally or per layer), IMP rounds
compound and rewind, and a masked loss never moves a pruned weight."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gradlab import dynamics, models


def _params():
  model = models.MLP((20, 16, 5))
  return jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 12)))


def _kernels(tree):
  return [np.asarray(tree["params"][k]["kernel"]) for k in sorted(tree["params"])]


def _biases(tree):
  return [np.asarray(tree["params"][k]["bias"]) for k in sorted(tree["params"])]


def test_global_mask_keeps_exactly_the_top_fraction_then_prunes_only_survivors():
  params = _params()
  prune = jax.jit(lambda p, m: dynamics.magnitude_prune(p, fraction=0.3, mask=m))
  mask = prune(params, dynamics.ones_mask(params))
  w = np.concatenate([k.ravel() for k in _kernels(params)])
  m = np.concatenate([k.ravel() for k in _kernels(mask)])
  keep = len(w) - math.ceil(0.3 * len(w))
  assert m.sum() == keep
  # the kept set is the `keep` largest |w|, by NumPy's sort (the magnitudes are distinct)
  assert set(np.flatnonzero(m)) == set(np.argsort(-np.abs(w))[:keep])
  assert all(b.all() for b in _biases(mask))  # biases are never pruned
  # round 2 prunes ceil(0.3 * remaining) among the survivors only
  second = prune(params, mask)
  m2 = np.concatenate([k.ravel() for k in _kernels(second)])
  assert m2.sum() == keep - math.ceil(0.3 * keep) and not (m2 & ~m).any()
  np.testing.assert_allclose(dynamics.sparsity(second), 1 - m2.sum() / len(w), rtol=1e-6)


def test_layerwise_mask_keeps_the_top_fraction_of_each_layer():
  params = _params()
  mask = dynamics.magnitude_prune(params, fraction=0.5, scope="layerwise")  # eager: exact count
  for w, m in zip(_kernels(params), _kernels(mask)):
    keep = w.size - math.ceil(0.5 * w.size)
    assert m.sum() == keep
    assert np.abs(w[m]).min() > np.abs(w[~m]).max()
  # float32 puts 0.3 * 50 at 15.0000006; the count must stay ceil = 15 under jit too
  leaf = {"kernel": jnp.arange(1.0, 51.0)}
  for prune in (
    dynamics.magnitude_prune,
    jax.jit(dynamics.magnitude_prune, static_argnames="scope"),
  ):
    kept = prune(leaf, fraction=0.3, scope="layerwise")["kernel"]
    np.testing.assert_array_equal(kept, np.arange(1, 51) > 15)


def test_imp_rounds_rewind_and_a_masked_loss_never_moves_pruned_weights():
  params = _params()
  rewind = jax.tree.map(lambda p: p + 1.0, params)  # stands for the weights at step k

  def train_fn(start, mask):
    return jax.tree.map(lambda p: 2 * p, start)  # a "training" whose result we can predict

  rounds = jax.jit(
    lambda r, p: dynamics.iterative_magnitude_pruning(train_fn, r, p, rounds=3, fraction=0.2)
  )(rewind, params)
  n = sum(k.size for k in _kernels(params))
  remaining = n
  for r, out in enumerate(rounds):
    remaining -= math.ceil(0.2 * remaining)
    assert sum(k.sum() for k in _kernels(out.mask)) == remaining
    # training started from the rewound survivors (2 x rewind), pruned weights at 0
    for t, rw, m in zip(_kernels(out.params), _kernels(rewind), _kernels(out.mask)):
      np.testing.assert_array_equal(t, np.where(m, 2 * rw, 0))
  np.testing.assert_allclose(rounds[-1].sparsity, 1 - remaining / n, rtol=1e-6)

  mask = rounds[-1].mask
  x = jax.random.normal(jax.random.key(1), (8, 12))
  loss = dynamics.masked_loss(lambda p, x: jnp.sum(models.MLP((20, 16, 5)).apply(p, x) ** 2), mask)
  grads = jax.jit(jax.grad(loss))(params, x)
  for g, m in zip(_kernels(grads), _kernels(mask)):
    assert (g[~m] == 0).all() and (g[m] != 0).any()
  with pytest.raises(ValueError, match="^fraction"):
    dynamics.magnitude_prune(params, fraction=1.5)
  with pytest.raises(ValueError, match="^scope"):
    dynamics.magnitude_prune(params, fraction=0.2, scope="random")
