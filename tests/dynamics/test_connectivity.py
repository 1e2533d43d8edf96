"""Barriers on paths whose values are known exactly, and Git Re-Basin's permutations: a
permuted MLP computes the same function, keeps every layer's singular values, and weight
matching recovers a planted permutation exactly."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gradlab import dynamics, models


def test_barrier_definitions_on_paths_with_known_values():
  a, b = jnp.asarray(-1.0), jnp.asarray(1.0)
  for reference in dynamics.connectivity.REFERENCES:
    # a bump 1 - x^2 with equal endpoints 0: both definitions give its height 1
    # (alpha = 0.5, x = 0, is on the 25-point grid)
    bump = dynamics.linear_path_barrier(lambda x: 1 - x**2, a, b, reference=reference)
    np.testing.assert_allclose(bump.barrier, 1.0, atol=1e-6)
    # a convex path x^2 has no barrier
    bowl = dynamics.linear_path_barrier(lambda x: x**2, a, b, reference=reference)
    np.testing.assert_allclose(bowl.barrier, 0.0, atol=1e-6)
  # a straight path from 0 to 1: its max sits 0.5 above the endpoints' mean
  # (Frankle et al.) but on the line between them (Entezari et al.)
  line = lambda x: x
  zero, one = jnp.asarray(0.0), jnp.asarray(1.0)
  assert float(dynamics.linear_path_barrier(line, zero, one).barrier) == pytest.approx(0.5)
  interp = dynamics.linear_path_barrier(line, zero, one, reference="interpolation")
  assert abs(float(interp.barrier)) < 1e-6
  # the endpoints of the path are the two networks exactly
  p = dynamics.interpolate({"w": jnp.arange(3.0)}, {"w": -jnp.arange(3.0) + 0.1}, 1.0)
  assert (p["w"] == -jnp.arange(3.0) + 0.1).all()
  with pytest.raises(ValueError, match="^reference"):
    dynamics.barrier(jnp.zeros(5), reference="max")
  with pytest.raises(ValueError, match="^alphas"):
    dynamics.barrier(jnp.zeros(3), jnp.asarray([0.0, 0.5, 0.9]), reference="interpolation")


def _mlp(features=(12, 10, 4), inputs=6, seed=0):
  model = models.MLP(features)

  @jax.jit
  def init(key):
    params = model.init(key, jnp.zeros((1, inputs)))
    # a random bias too, so that permuting it matters
    return jax.tree.map(
      lambda p: p + 0.1 * jax.random.normal(jax.random.key(seed + 7), p.shape), params
    )

  params = init(jax.random.key(seed))
  x = jax.random.normal(jax.random.key(seed + 1), (32, inputs))
  return model, params, x


def _random_perm(spec, params, seed):
  sizes = {p: len(v) for p, v in dynamics.identity_permutation(spec, params).items()}
  keys = jax.random.split(jax.random.key(seed), len(sizes))
  return {p: jax.random.permutation(k, n) for (p, n), k in zip(sorted(sizes.items()), keys)}


def test_identical_networks_have_no_barrier():
  with jax.enable_x64(True):
    model, params, x = _mlp()
    params = jax.tree.map(lambda p: p.astype(jnp.float64), params)
    y = jnp.arange(32) % 4

    def metrics(p):
      logits = model.apply(p, x.astype(jnp.float64))
      loss = -jnp.mean(jax.nn.log_softmax(logits)[jnp.arange(32), y])
      return {"loss": loss, "error": jnp.mean(jnp.argmax(logits, -1) != y)}

    copy = jax.tree.map(jnp.copy, params)
    both = jax.jit(
      lambda a, b: [
        dynamics.linear_path_barrier(metrics, a, b, reference=r)
        for r in dynamics.connectivity.REFERENCES
      ]
    )(params, copy)
    for out in both:
      assert out.values["loss"].shape == (25,)
      # (1 - alpha) w + alpha w differs from w by float64 rounding only (~1e-16 relative)
      assert abs(float(out.barrier["loss"])) < 1e-12
      assert float(out.barrier["error"]) == 0.0


def test_a_permuted_mlp_computes_the_same_function_with_the_same_singular_values():
  with jax.enable_x64(True):
    model, params, x = _mlp()
    params = jax.tree.map(lambda p: p.astype(jnp.float64), params)
    x = x.astype(jnp.float64)
    spec = dynamics.mlp_permutation_spec(3)
    perm = _random_perm(spec, params, seed=3)
    permuted = jax.jit(lambda q, p: dynamics.apply_permutation(spec, q, p))(perm, params)
    # something moved
    k0, k0p = params["params"]["dense_0"]["kernel"], permuted["params"]["dense_0"]["kernel"]
    assert not np.allclose(k0, k0p)
    # the only change to the computation is the order of the hidden sums: float64
    # rounding, below fan_in * eps * sum|terms| ~ 1e-14 here
    np.testing.assert_allclose(model.apply(permuted, x), model.apply(params, x), rtol=0, atol=1e-12)
    for layer in params["params"]:
      sv = np.linalg.svd(params["params"][layer]["kernel"], compute_uv=False)
      svp = np.linalg.svd(permuted["params"][layer]["kernel"], compute_uv=False)
      np.testing.assert_allclose(svp, sv, rtol=1e-12)  # P W Q^T has W's singular values


def test_weight_matching_recovers_a_planted_permutation_exactly():
  model, params_a, _ = _mlp(features=(24, 16, 10), inputs=8, seed=1)
  spec = dynamics.mlp_permutation_spec(3)
  planted = _random_perm(spec, params_a, seed=5)
  # b is a permuted copy of a with small noise: matching must undo the permutation
  noisy = jax.jit(
    lambda t: jax.tree.map(
      lambda p: p + 0.05 * jnp.std(p) * jax.random.normal(jax.random.key(9), p.shape), t
    )
  )(params_a)
  permute = jax.jit(lambda perm, p: dynamics.apply_permutation(spec, perm, p))
  params_b = permute(planted, noisy)
  found = dynamics.weight_matching(jax.random.key(0), spec, params_a, params_b)
  for p in planted:
    # take(take(a, pi), sigma) = a  <=>  sigma = pi^{-1} = argsort(pi)
    np.testing.assert_array_equal(found[p], np.argsort(np.asarray(planted[p])))
  # and without the noise the matched network is a, bit for bit
  exact_b = permute(planted, params_a)
  again = dynamics.weight_matching(jax.random.key(1), spec, params_a, exact_b)
  back = permute(again, exact_b)
  jax.tree.map(np.testing.assert_array_equal, back, params_a)
  with pytest.raises(ValueError, match="^params"):
    dynamics.apply_permutation(dynamics.mlp_permutation_spec(2), planted, params_a)
