"""DIFF2 (Murata & Suzuki, ICML 2023) against its truths.

* Without clipping and noise the differences telescope: ``v_t`` is the
  full-batch gradient at every round (float64, to rounding).
* With clipping and noise, several rounds across restarts replay a
  line-by-line NumPy reference of Algorithm 1 (+ Algorithm 2's clipped mean,
  Algorithm 3's GD routine), given the same Gaussian draws.
* The noise has the Gaussian mechanism's standard deviation ``z C / n`` on
  restart and difference rounds (Monte Carlo over keys, vmapped).
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from gradlab import gradstats, transforms

N, D = 12, 5
EPS64 = np.finfo(np.float64).eps


def _loss(params, batch):
  """A nonconvex per-example loss: squared error of a sigmoid unit."""
  s = jax.nn.sigmoid(batch["a"] @ params["w"] + params["b"])
  return 0.5 * jnp.mean(jnp.square(s - batch["y"]))


def _np_per_example_grads(w, b, a, y):
  """The closed-form gradients of the same loss, example by example (float64)."""
  s = 1.0 / (1.0 + np.exp(-(a @ w + b)))
  r = (s - y) * s * (1.0 - s)  # d loss_i / d (a_i w + b)
  return {"b": r, "w": r[:, None] * a}


@pytest.fixture(scope="module")
def problem():
  rng = np.random.default_rng(0)
  a = rng.normal(size=(N, D)) * 2.0
  y = rng.random(N)
  params = {"b": np.asarray(0.3), "w": rng.normal(size=D)}
  return a, y, params


def _rounds(tx, params, batch, steps, lr):
  """``steps`` rounds of ``chain(tx, sgd(lr))`` in one jitted scan: the v_t and x_t of each."""
  chain = optax.chain(tx, optax.sgd(lr))
  pe = lambda p: gradstats.per_example_grads(_loss, p, batch)  # noqa: E731

  def body(carry, _):
    p, state = carry
    u, state = chain.update(pe(p), state, p, per_example_grad_fn=pe)
    return (optax.apply_updates(p, u), state), (p, state[0].v)

  @jax.jit
  def run(p):
    _, (xs, vs) = jax.lax.scan(body, (p, chain.init(p)), None, length=steps)
    return xs, vs, jax.vmap(lambda q: jax.grad(_loss)(q, batch))(xs)

  return run(params)


def test_without_clipping_or_noise_v_is_the_full_gradient_at_every_round(problem):
  a, y, params = problem
  t = 4
  with jax.enable_x64(True):
    batch = {"a": jnp.asarray(a), "y": jnp.asarray(y)}
    tx = transforms.diff2(
      restart_every=t, l2_norm_clip=None, diff_norm_clip=None,
      noise_multiplier=0.0, diff_noise_multiplier=0.0, key=jax.random.key(0),
    )  # fmt: skip
    xs, vs, full = jax.device_get(
      _rounds(tx, jax.tree.map(jnp.asarray, params), batch, 2 * t + 2, 0.5)
    )
  # the parameters move (the differences are not zero) ...
  assert np.max(np.abs(xs["w"][-1] - xs["w"][0])) > 1e-2
  # ... and v_t telescopes to the gradient: float64 rounding of n-term means,
  # accumulated over the T - 1 difference rounds since a restart (n T ulps of
  # the largest per-example gradient entry on the path)
  per_example = [
    _np_per_example_grads(np.asarray(xs["w"][r]), float(xs["b"][r]), a, y)
    for r in range(len(vs["b"]))
  ]
  scale = max(float(np.max(np.abs(g[k]))) for g in per_example for k in g)
  for k in ("b", "w"):
    np.testing.assert_allclose(vs[k], full[k], rtol=0, atol=N * t * EPS64 * scale, err_msg=k)


def _reference(params, a, y, steps, *, t, c1, c2, z1, z2, lr, draws):
  """Algorithm 1 with P = 1 and the GD routine, line by line (NumPy, float64).

  ``draws[r]`` are the round's standard Gaussian draws {"b", "w"}; the noise
  is sigma * draw with sigma = z C / n.
  """

  def clipped_mean(per_example, c):  # Algorithm 2: per-example global norm
    flat = np.concatenate([per_example["b"][:, None], per_example["w"]], axis=1)
    norms = np.linalg.norm(flat, axis=1)
    factor = np.minimum(1.0, c / norms)
    clipped.append(int(np.sum(factor < 1)))
    return {k: np.tensordot(factor, v, axes=1) / N for k, v in per_example.items()}

  w, b = params["w"].copy(), float(params["b"])
  w_prev = b_prev = v = None
  vs, clipped = [], []
  for r in range(steps):
    g = _np_per_example_grads(w, b, a, y)
    if r % t == 0:
      m = clipped_mean(g, c1)
      d = {k: m[k] + z1 * c1 / N * draws[r][k] for k in m}
      v = d
    else:
      g_prev = _np_per_example_grads(w_prev, b_prev, a, y)
      m = clipped_mean({k: g[k] - g_prev[k] for k in g}, c2)
      d = {k: m[k] + z2 * c2 / N * draws[r][k] for k in m}
      v = {k: v[k] + d[k] for k in v}
    vs.append(v)
    w_prev, b_prev = w, b
    w, b = w - lr * v["w"], b - lr * v["b"]  # Algorithm 3: x_r = x_{r-1} - eta v_r
  return vs, clipped


def test_rounds_match_a_numpy_replay_of_algorithm_1(problem):
  a, y, params = problem
  t, steps, lr = 3, 7, 0.5
  cfg = dict(c1=0.02, c2=5e-5, z1=0.7, z2=1.3)
  key = jax.random.key(3)
  with jax.enable_x64(True):
    batch = {"a": jnp.asarray(a), "y": jnp.asarray(y)}
    p0 = jax.tree.map(jnp.asarray, params)
    tx = transforms.diff2(
      restart_every=t, l2_norm_clip=cfg["c1"], diff_norm_clip=cfg["c2"],
      noise_multiplier=cfg["z1"], diff_noise_multiplier=cfg["z2"], key=key,
    )  # fmt: skip
    _, vs, _ = _rounds(tx, p0, batch, steps, lr)
    # the documented key use: per round (key, sub) = split(key), one normal draw per leaf
    # (in jax.tree.leaves order) from split(sub, num_leaves)
    draws, k = [], key
    for _ in range(steps):
      k, sub = jax.random.split(k)
      kb, kw = jax.random.split(sub, 2)
      draws.append(
        {"b": np.asarray(jax.random.normal(kb, (), jnp.float64)),
         "w": np.asarray(jax.random.normal(kw, (D,), jnp.float64))}
      )  # fmt: skip
  ref, clipped = _reference(params, a, y, steps, t=t, lr=lr, draws=draws, **cfg)
  # clipping binds, but not on every example, on both kinds of round (restarts 0, 3, 6)
  assert all(0 < clipped[r] < N for r in range(steps)), clipped
  # float64 on both sides; a few rounds of n-term sums: 1e-10 relative is ~1e6 ulps
  # of slack for the closed-form vs autodiff gradients
  for r in range(steps):
    for name in ("b", "w"):
      np.testing.assert_allclose(vs[name][r], ref[r][name], rtol=1e-10, atol=1e-14, err_msg=r)


def test_noise_has_the_gaussian_mechanisms_standard_deviation(problem):
  a, y, params = problem
  c1, c2, z1, z2, keys = 0.05, 0.01, 2.0, 3.0, 2000
  batch = {"a": jnp.asarray(a, jnp.float32), "y": jnp.asarray(y, jnp.float32)}
  p0 = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), params)
  p1 = jax.tree.map(lambda x: x + 0.1, p0)
  pe = lambda p: gradstats.per_example_grads(_loss, p, batch)  # noqa: E731

  def two_rounds(key, z_scale):
    tx = transforms.diff2(
      restart_every=5, l2_norm_clip=c1, diff_norm_clip=c2,
      noise_multiplier=z1 * z_scale, diff_noise_multiplier=z2 * z_scale, key=key,
    )  # fmt: skip
    state = tx.init(p0)
    v0, state = tx.update(pe(p0), state, p0, per_example_grad_fn=pe)
    v1, _ = tx.update(pe(p1), state, p1, per_example_grad_fn=pe)
    flat = lambda v: jnp.concatenate([jnp.ravel(x) for x in jax.tree.leaves(v)])  # noqa: E731
    return flat(v0), flat(v1)

  @jax.jit
  def noise(ks):
    clean0, clean1 = two_rounds(jax.random.key(0), 0.0)
    v0, v1 = jax.vmap(lambda k: two_rounds(k, 1.0))(ks)
    # restart noise; difference-round noise (v1 = v0 + clipped diff mean + xi_1)
    return v0 - clean0, (v1 - v0) - (clean1 - clean0)

  xi0, xi1 = (
    np.asarray(x, np.float64).ravel() for x in noise(jax.random.split(jax.random.key(1), keys))
  )
  m = xi0.size  # keys x (D + 1) independent N(0, sigma^2) entries
  for xi, sigma in ((xi0, z1 * c1 / N), (xi1, z2 * c2 / N)):
    # mean zero within 4 standard errors; E[xi^2] = sigma^2 with Var(xi^2) = 2 sigma^4:
    # 4 standard errors of the mean square (each fails by chance ~1 in 16,000)
    assert abs(xi.mean()) < 4 * sigma / np.sqrt(m)
    assert abs(np.mean(xi**2) / sigma**2 - 1) < 4 * np.sqrt(2.0 / m), (np.mean(xi**2), sigma**2)


def test_nonfinite_gradients_skip_the_round_and_keep_the_state():
  params = {"b": jnp.zeros(()), "w": jnp.zeros(D)}
  tx = transforms.diff2(
    restart_every=2, l2_norm_clip=1.0, diff_norm_clip=1.0,
    noise_multiplier=1.0, diff_noise_multiplier=1.0, key=jax.random.key(0),
  )  # fmt: skip
  good = {"b": jnp.ones(3), "w": jnp.ones((3, D))}
  bad = {"b": jnp.full((3,), jnp.nan), "w": jnp.ones((3, D))}

  @jax.jit
  def rounds():
    s0 = tx.init(params)
    u_bad, s_bad = tx.update(bad, s0, params, per_example_grad_fn=lambda p: good)  # a NaN in
    _, s1 = tx.update(good, s0, params, per_example_grad_fn=lambda p: good)
    # a difference round whose gradient at the previous iterate is NaN
    u_prev, s_prev = tx.update(good, s1, params, per_example_grad_fn=lambda p: bad)
    return (u_bad, s_bad, s0), (u_prev, s_prev, s1)

  for u, new, old in rounds():
    assert all(not np.any(np.asarray(x)) for x in jax.tree.leaves(u))
    assert int(new.count) == int(old.count)
    assert np.array_equal(jax.random.key_data(new.key), jax.random.key_data(old.key))
    for x, y in zip(jax.tree.leaves(new.v), jax.tree.leaves(old.v)):
      assert np.array_equal(x, y)


KW = dict(
  restart_every=2, l2_norm_clip=1.0, diff_norm_clip=1.0,
  noise_multiplier=1.0, diff_noise_multiplier=1.0, key=jax.random.key(0),
)  # fmt: skip


@pytest.mark.parametrize(
  "change, message",
  [
    (dict(restart_every=0), "restart_every"),
    (dict(l2_norm_clip=-1.0), "l2_norm_clip"),
    (dict(diff_norm_clip=0.0), "diff_norm_clip"),
    (dict(noise_multiplier=-0.5), "noise_multiplier"),
    (dict(l2_norm_clip=None), "noise_multiplier"),
    (dict(diff_norm_clip=None), "diff_noise_multiplier"),
    (dict(key=0), "key"),
  ],
)
def test_bad_arguments_get_a_clear_error(change, message):
  with pytest.raises(ValueError, match=f"^{message}"):
    transforms.diff2(**{**KW, **change})


def test_update_refuses_missing_extra_argument_and_non_per_example_gradients():
  params = {"b": jnp.zeros(()), "w": jnp.zeros(D)}
  tx = transforms.diff2(**KW)
  state = tx.init(params)
  per_example = {"b": jnp.ones(3), "w": jnp.ones((3, D))}
  with pytest.raises(ValueError, match="^per_example_grad_fn"):
    tx.update(per_example, state, params)
  with pytest.raises(ValueError, match="^updates"):
    tx.update({"b": jnp.ones(()), "w": jnp.ones(D)}, state, params, per_example_grad_fn=id)
