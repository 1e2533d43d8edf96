"""AdaHessian against a line-by-line NumPy replay of the official optimizer.

The loss is separable, ``sum a (p - c)^2 / 2 + b p^4 / 4`` entrywise, so its
Hessian is diagonal (``a + 3 b p^2``, changing along the run, negative in
places) and Hutchinson's ``|v * Hv|`` is the exact ``|diag H|`` for every
Rademacher probe: JAX's probes and the reference's need not agree, and both
sides must match to float64 rounding.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from gradlab import transforms
from tests.transforms import references

RTOL = 1e-9  # float64 on both sides; a dozen operations a step, over 8 steps


def _to_torch(name, x):
  # flax conv kernel [kh, kw, in, out] -> torch [out, in, kh, kw]
  return x.transpose(3, 2, 0, 1) if name == "conv" else x


def _to_flax(name, x):
  return x.transpose(2, 3, 1, 0) if name == "conv" else x


def _problem(rng):
  shapes = {"w": (6, 5), "b": (5,), "conv": (3, 3, 2, 4)}
  coef = {
    n: (rng.normal(size=s), np.abs(rng.normal(size=s)), rng.normal(size=s))
    for n, s in shapes.items()
  }
  params = {n: rng.normal(size=s) for n, s in shapes.items()}

  def loss(p):
    return sum(
      jnp.sum(a * (p[n] - c) ** 2 / 2 + b * p[n] ** 4 / 4) for n, (a, b, c) in coef.items()
    )

  # the reference's own, in torch layout: gradient and Hessian-vector product
  torch_coef = {n: tuple(_to_torch(n, x) for x in abc) for n, abc in coef.items()}

  def grad_np(p):
    return {n: a * (p[n] - c) + b * p[n] ** 3 for n, (a, b, c) in torch_coef.items()}

  def hvp_at(p):
    return lambda v: {n: (a + 3 * b * p[n] ** 2) * v[n] for n, (a, b, c) in torch_coef.items()}

  return params, loss, grad_np, hvp_at


@pytest.mark.parametrize(
  "cfg", [dict(weight_decay=0.0, hessian_power=1.0), dict(weight_decay=0.05, hessian_power=0.5)]
)
def test_adahessian_matches_the_official_step(cfg):
  rng = np.random.default_rng(0)
  with jax.enable_x64(True):
    params, loss, grad_np, hvp_at = _problem(rng)
    ref = references.AdaHessianReference(
      lr=0.05, betas=(0.9, 0.99), eps=1e-4, weight_decay=cfg["weight_decay"],
      hessian_power=cfg["hessian_power"],
    )  # fmt: skip
    tx = transforms.adahessian(0.05, b1=0.9, b2=0.99, eps=1e-4, key=jax.random.key(1), **cfg)
    p_ref = {n: _to_torch(n, x) for n, x in params.items()}
    p = jax.tree.map(jnp.asarray, params)
    state = tx.init(p)
    update = jax.jit(lambda g, s, q: tx.update(g, s, q, obj_fn=loss))
    grad = jax.jit(jax.grad(loss))
    for _ in range(8):
      p_ref = ref.step(p_ref, grad_np(p_ref), hvp_at(p_ref))
      u, state = update(grad(p), state, p)
      p = optax.apply_updates(p, u)
      for n in params:
        np.testing.assert_allclose(np.asarray(p[n]), _to_flax(n, p_ref[n]), rtol=RTOL, err_msg=n)
    assert int(state[0].count) == 8
  moved = max(float(np.max(np.abs(np.asarray(p[n]) - params[n]))) for n in params)
  assert moved > 0.1  # the run went somewhere (the Hessian's diagonal changed with it)


def test_more_probes_average_before_the_absolute_value():
  # A dense 6x6 Hessian: v_i (Hv)_i = H_ii + sum_{j != i} H_ij v_i v_j, whose
  # variance sum_{j != i} H_ij^2 (here 0.2 to 3.5 x H_ii^2) the probes average away
  # *before* the absolute value is taken, so the estimate tends to |H_ii|.
  rng = np.random.default_rng(1)
  a = rng.normal(size=(6, 6))
  h = np.diag(np.sign(rng.normal(size=6))) + 0.9 * (a + a.T) / 2
  np.fill_diagonal(h, np.sign(np.diag(h)))  # |H_ii| = 1
  h = jnp.asarray(h, jnp.float32)
  n = 2000
  tx = transforms.scale_by_adahessian(b2=0.5, key=jax.random.key(2), num_probes=n)
  p = {"x": jnp.zeros(6)}
  _, state = jax.jit(
    lambda s: tx.update({"x": jnp.zeros(6)}, s, p, obj_fn=lambda q: q["x"] @ h @ q["x"] / 2)
  )(tx.init(p))
  d = np.sqrt(np.asarray(state.nu["x"]) / 0.5)  # nu = (1 - b2) D^2 after one step
  spread = np.sqrt(np.sum(np.asarray(h) ** 2, axis=1) - 1.0)
  # 5 standard errors of the probe mean: fails by chance about 1 time in 1.7 million per entry
  np.testing.assert_array_less(np.abs(d - 1.0), 5 * spread / np.sqrt(n))
  # (averaging |v_i (Hv)_i| instead tends to 1.06 ... 1.77 on five of the six entries)


def test_spatial_average_and_its_switch():
  # H = diag(s) on a [3, 3, 1, 2] kernel: the estimate is |s| averaged over each 3x3 window
  rng = np.random.default_rng(3)
  s = jnp.asarray(rng.normal(size=(3, 3, 1, 2)), jnp.float32)
  p = {"k": jnp.zeros((3, 3, 1, 2))}
  obj = lambda q: jnp.sum(s * q["k"] ** 2) / 2  # noqa: E731
  for average in (True, False):
    tx = transforms.scale_by_adahessian(b2=0.0, key=jax.random.key(0), spatial_average=average)
    _, state = tx.update(p, tx.init(p), p, obj_fn=obj)
    d = np.sqrt(np.asarray(state.nu["k"]))
    expected = np.abs(np.asarray(s))
    if average:
      expected = np.broadcast_to(expected.mean(axis=(0, 1), keepdims=True), expected.shape)
    np.testing.assert_allclose(d, expected, rtol=1e-6)  # float32 rounding


def test_nonfinite_hessian_skips_the_step():
  tx = transforms.adahessian(0.1, key=jax.random.key(0), weight_decay=0.1)
  p = {"x": jnp.ones(3)}
  state = tx.init(p)
  bad_obj = lambda q: jnp.sum(jnp.sqrt(q["x"] - 1.0))  # noqa: E731  (infinite curvature at 1)
  u, new_state = tx.update({"x": jnp.ones(3)}, state, p, obj_fn=bad_obj)
  assert all(np.all(np.asarray(x) == 0) for x in jax.tree.leaves(u))
  jax.tree.map(
    lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)),
    optax.tree.unwrap_random_key_data(new_state),
    optax.tree.unwrap_random_key_data(state),
  )


@pytest.mark.parametrize(
  "call, message",
  [
    (lambda: transforms.adahessian(0.1, key=jax.random.key(0), hessian_power=1.5), "hessian_power"),
    (lambda: transforms.adahessian(0.1, key=0), "key"),
    (lambda: transforms.adahessian(0.1, key=jax.random.key(0), num_probes=0), "num_probes"),
    (lambda: transforms.adahessian(0.1, key=jax.random.key(0), eps=0.0), "eps"),
    (lambda: transforms.adahessian(0.1, key=jax.random.key(0), b2=1.0), "b2"),
    (
      lambda: transforms.scale_by_adahessian(key=jax.random.key(0)).update(
        {"x": jnp.ones(2)},
        transforms.scale_by_adahessian(key=jax.random.key(0)).init({"x": jnp.ones(2)}),
        {"x": jnp.ones(2)},
      ),
      "obj_fn",
    ),
  ],
)
def test_bad_arguments_get_a_clear_error(call, message):
  with pytest.raises(ValueError, match=message):
    call()
