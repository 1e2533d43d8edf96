"""K-FAC / EK-FAC (gradlab.curvature.kfac, ekfac) against exact Kronecker formulas and NumPy
references built from the layers' inputs and output gradients, computed independently."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
from jax.flatten_util import ravel_pytree
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from gradlab import curvature, sharding
from gradlab import influence as gi

F64 = dict(param_dtype=jnp.float64)


def _eigh_ref(m):
  return np.linalg.eigh(np.asarray(m, np.float64))


def test_kfac_with_one_token_is_the_exact_kronecker_formula():
  """One Dense layer, one token per example: A = E[a~ a~^T], S = E[g g^T] with a~ = [x, 1] and
  g the output gradient (for softmax cross-entropy, softmax(z) - onehot(y)), in closed form."""
  with jax.enable_x64(True):
    rng = np.random.default_rng(0)
    n, d, c = 40, 3, 4
    x, y = rng.normal(size=(n, d)), rng.integers(0, c, n)
    dense = nn.Dense(c, **F64)
    params = dense.init(jax.random.key(0), jnp.zeros(d))
    loss = lambda p, e: -jax.nn.log_softmax(dense.apply(p, e["x"]))[e["y"]]
    data = {"x": jnp.asarray(x), "y": jnp.asarray(y)}
    kf = curvature.kfac(loss, params, data, micro_batch=16)  # 16 does not divide 40
    w, b = np.asarray(params["params"]["kernel"]), np.asarray(params["params"]["bias"])
    z = x @ w + b
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    g = p - np.eye(c)[y]
    a = np.concatenate([x, np.ones((n, 1))], 1)
    A, S = a.T @ a / n, g.T @ g / n
    dense_ref = np.kron(A, S)  # rows (input i, output o) = the kernel's [in, out] order
    ours = np.asarray(kf.to_dense())
    # ravel_pytree orders bias before kernel: permute the reference to that order
    order = np.r_[d * c + np.arange(c), np.arange(d * c)]
    np.testing.assert_allclose(ours, dense_ref[np.ix_(order, order)], rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(
      np.sort(np.asarray(kf.eigenvalues()[""]).ravel()),
      np.sort(np.outer(np.linalg.eigvalsh(A), np.linalg.eigvalsh(S)).ravel()),
      rtol=1e-9,
      atol=1e-15,
    )


class _Mixed(nn.Module):
  """An Embed, a Dense over [T, d] tokens, a bias-free Dense, a DenseGeneral and a Conv."""

  @nn.compact
  def __call__(self, tokens):  # [T] ints, T = 4
    x = nn.Embed(7, 6, name="embed", **F64)(tokens)  # [4, 6]
    x = jnp.tanh(nn.Dense(5, name="dense", **F64)(x))  # [4, 5]
    x = nn.Dense(4, use_bias=False, name="nobias", **F64)(x)  # [4, 4]
    x = nn.DenseGeneral((2, 2), name="general", **F64)(x)  # [4, 2, 2]
    img = jnp.sin(x.reshape(2, 2, 4))  # a 2x2 image with 4 channels
    img = nn.Conv(3, (2, 2), padding="SAME", name="conv", **F64)(img)  # [2, 2, 3]
    return jnp.sum(jnp.cos(img)) + 0.1 * jnp.sum(x**2)


def _mixed_setup(n=11):
  rng = np.random.default_rng(1)
  model = _Mixed()
  data = {"tokens": jnp.asarray(rng.integers(0, 7, (n, 4)))}
  params = jax.jit(model.init)(jax.random.key(2), data["tokens"][0])  # one program, not one per op
  loss = lambda p, e: model.apply(p, e["tokens"])
  return model, params, loss, data


def _patches_jnp(img, k=2):
  """im2col of a stride-1 'SAME' convolution (lax pads (k-1)//2 before, the rest after):
  [H*W, k*k*C] rows in the kernel's (kh, kw, c) order."""
  h, w, _ = img.shape
  lo = (k - 1) // 2
  pad = jnp.pad(img, ((lo, k - 1 - lo), (lo, k - 1 - lo), (0, 0)))
  return jnp.stack([pad[i : i + k, j : j + k, :].reshape(-1) for i in range(h) for j in range(w)])


def _mixed_rows(params, data):
  """Per example and layer, the inputs a (one-hot ids, x, im2col patches) and the output
  gradients g, from the model written out by hand and differentiated from each layer's
  output onward (no interception)."""
  p = params["params"]
  conv_k = p["conv"]["kernel"].reshape(-1, 3)
  from_z4 = lambda z4: jnp.sum(jnp.cos(z4))
  conv = lambda im: _patches_jnp(jnp.sin(im.reshape(2, 2, 4))) @ conv_k + p["conv"]["bias"]
  from_z3 = lambda z3: from_z4(conv(z3)) + 0.1 * jnp.sum(z3**2)
  general = lambda z2: jnp.einsum("ti,ijk->tjk", z2, p["general"]["kernel"]) + p["general"]["bias"]
  from_z2 = lambda z2: from_z3(general(z2))
  from_z1 = lambda z1: from_z2(jnp.tanh(z1) @ p["nobias"]["kernel"])
  dense = lambda e: e @ p["dense"]["kernel"] + p["dense"]["bias"]
  from_z0 = lambda e: from_z1(dense(e))
  ones = jnp.ones((4, 1))

  @jax.jit  # one program for the examples (eagerly, each op would compile alone)
  def one(onehot):
    e = onehot @ p["embed"]["embedding"]  # a one-hot row pick: exact
    z1 = dense(e)
    h1 = jnp.tanh(z1)
    z2 = h1 @ p["nobias"]["kernel"]
    z3 = general(z2)
    patches = _patches_jnp(jnp.sin(z3.reshape(2, 2, 4)))
    z4 = conv(z3)
    return {
      "embed": (onehot, jax.grad(from_z0)(e)),
      "dense": (jnp.concatenate([e, ones], 1), jax.grad(from_z1)(z1)),
      "nobias": (h1, jax.grad(from_z2)(z2)),
      "general": (jnp.concatenate([z2, ones], 1), jax.grad(from_z3)(z3).reshape(4, 4)),
      "conv": (jnp.concatenate([patches, ones], 1), jax.grad(from_z4)(z4)),
    }

  out = {k: ([], []) for k in ("embed", "dense", "nobias", "general", "conv")}
  for tok in np.asarray(data["tokens"]):
    rows = one(jnp.asarray(np.eye(7)[tok]))
    for k, (a, g) in rows.items():
      out[k][0].append(np.asarray(a))
      out[k][1].append(np.asarray(g))
  return {k: (np.stack(a), np.stack(g)) for k, (a, g) in out.items()}


def _ekfac_reference(a, g, approximation="expand", mask=None):
  """NumPy line by line: the factors, their eigenbases, Lambda = mean_n (Q_A^T G_n Q_S)^2."""
  n, t = a.shape[:2]
  m = np.ones((n, t)) if mask is None else mask
  if approximation == "expand":
    A = np.einsum("nt,nti,ntj->ij", m, a, a) / m.sum()
    S = np.einsum("nti,ntj->ij", g, g) / n
  else:
    an = np.einsum("nt,nti->ni", m, a) / m.sum(1, keepdims=True)
    gn = g.sum(1)
    A, S = an.T @ an / n, gn.T @ gn / n
  ea, qa = _eigh_ref(A)
  es, qs = _eigh_ref(S)
  gr = np.einsum("nti,nto->nio", a, g)
  lam = np.mean(np.einsum("ia,nio,ob->nab", qa, gr, qs) ** 2, 0)
  return ea, es, lam


def test_ekfac_equals_a_numpy_reference_on_tokens_embed_bias_free_dense_general_and_conv():
  """30 examples: "reduce"'s A (one row per example) must have full rank 17 for the conv,
  or its null space's basis, and with it Lambda, would not be unique."""
  with jax.enable_x64(True):
    model, params, loss, data = _mixed_setup(30)
    rows = _mixed_rows(params, data)
    for approximation in ("expand", "reduce"):
      ek = curvature.ekfac(loss, params, data, micro_batch=4, approximation=approximation)
      assert [l.name for l in ek.layers] == ["embed", "dense", "nobias", "general", "conv"]
      for name, (a, g) in rows.items():
        ea, es, lam = _ekfac_reference(a, g, approximation)
        np.testing.assert_allclose(ek.e_a[name], ea, atol=1e-12, err_msg=name)
        np.testing.assert_allclose(ek.e_s[name], es, atol=1e-12, err_msg=name)
        np.testing.assert_allclose(ek.corrected[name], lam, rtol=1e-9, atol=1e-14, err_msg=name)


def test_micro_batches_streams_and_jit_give_the_same_factors():
  with jax.enable_x64(True):
    _, params, loss, data = _mixed_setup(12)
    whole = curvature.ekfac(loss, params, data)
    stream = curvature.batches(
      [jax.tree.map(lambda x: x[s], data) for s in (slice(0, 5), slice(5, 12))]
    )
    jitted = jax.jit(lambda p, d: curvature.ekfac(loss, p, d, micro_batch=5))(params, data)
    for other in (
      curvature.ekfac(loss, params, data, micro_batch=5),
      curvature.ekfac(loss, params, stream),
      jitted,
    ):
      for name in whole.corrected:
        np.testing.assert_allclose(
          other.corrected[name], whole.corrected[name], rtol=1e-10, atol=1e-15
        )
        np.testing.assert_allclose(other.e_a[name], whole.e_a[name], atol=1e-12)


def test_token_mask_removes_padded_tokens_from_a():
  with jax.enable_x64(True):
    rng = np.random.default_rng(3)
    n, t, d = 9, 5, 3
    lengths = rng.integers(1, t + 1, n)
    mask = (np.arange(t)[None] < lengths[:, None]).astype(float)
    dense = nn.Dense(2, **F64)
    params = dense.init(jax.random.key(0), jnp.zeros((t, d)))
    loss = lambda p, e: jnp.sum(e["m"][:, None] * jnp.sin(dense.apply(p, e["x"])))
    data = {"x": jnp.asarray(rng.normal(size=(n, t, d))), "m": jnp.asarray(mask)}
    for approximation in ("expand", "reduce"):
      ek = curvature.ekfac(
        loss, params, data, mask_fn=lambda e: e["m"], approximation=approximation
      )
      x = np.asarray(data["x"])
      a = np.concatenate([x, np.ones((n, t, 1))], 2)
      w = np.asarray(params["params"]["kernel"])
      b = np.asarray(params["params"]["bias"])
      g = mask[..., None] * np.cos(x @ w + b)
      ea, es, lam = _ekfac_reference(a, g, approximation, mask)
      np.testing.assert_allclose(ek.e_a[""], ea, atol=1e-12)
      np.testing.assert_allclose(ek.e_s[""], es, atol=1e-12)
      np.testing.assert_allclose(ek.corrected[""], lam, rtol=1e-9)
    with pytest.raises(ValueError, match=r"^mask_fn: expected a mask of 5 tokens for layer ''"):
      curvature.ekfac(loss, params, data, mask_fn=lambda e: e["m"][:3])


def test_mc_fisher_s_factor_is_unbiased_for_softmax_cross_entropy():
  """With labels drawn from the model, E[g g^T] = diag(p) - p p^T per example (enumerated);
  the entries' standard errors come from the enumerated second moments."""
  with jax.enable_x64(True):
    rng = np.random.default_rng(4)
    n, d, c = 3000, 2, 3
    x = rng.normal(size=(n, d))
    dense = nn.Dense(c, **F64)
    params = dense.init(jax.random.key(1), jnp.zeros(d))
    logits = lambda p, e: dense.apply(p, e["x"])

    def sampled(p, e, key):
      z = logits(p, e)
      yt = jax.random.categorical(key, jax.lax.stop_gradient(z))
      return -jax.nn.log_softmax(z)[yt]

    kf = curvature.kfac(
      None, params, {"x": jnp.asarray(x)}, fisher="mc", sampled_loss_fn=sampled,
      key=jax.random.key(5), micro_batch=1000,
    )  # fmt: skip
    s_mc = np.asarray(kf.q_s[""] @ jnp.diag(kf.e_s[""]) @ kf.q_s[""].T)
    z = x @ np.asarray(params["params"]["kernel"]) + np.asarray(params["params"]["bias"])
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    gs = p[:, None, :] - np.eye(c)[None]  # [n, label, c]: g for every label
    outer = np.einsum("nyi,nyj->nyij", gs, gs)
    mean = np.einsum("ny,nyij->nij", p, outer)  # E[g g^T] per example
    var = np.einsum("ny,nyij->nij", p, outer**2) - mean**2
    exact, se = mean.mean(0), np.sqrt(var.sum(0)) / n
    # 4 standard errors: each of the 9 entries fails by chance about 1 time in 16,000
    assert np.all(np.abs(s_mc - exact) < 4 * se + 1e-15), (s_mc, exact, se)


def test_saved_and_restored_factors_give_bit_identical_influence(tmp_path):
  with jax.enable_x64(True):
    rng = np.random.default_rng(6)
    mlp = nn.Sequential([nn.Dense(6, **F64), nn.tanh, nn.Dense(3, **F64)])
    params = mlp.init(jax.random.key(0), jnp.zeros(4))
    loss = lambda p, e: -jax.nn.log_softmax(mlp.apply(p, e["x"]))[e["y"]]
    mk = lambda m: {
      "x": jnp.asarray(rng.normal(size=(m, 4))),
      "y": jnp.asarray(rng.integers(0, 3, m)),
    }
    train, test = mk(30), mk(5)
    ek = curvature.ekfac(loss, params, train, micro_batch=8)
    ckpt = ocp.StandardCheckpointer()
    ckpt.save(tmp_path / "factors", ek)
    ckpt.wait_until_finished()
    restored = ckpt.restore(tmp_path / "factors", jax.tree.map(ocp.utils.to_shape_dtype_struct, ek))
    assert isinstance(restored, curvature.KroneckerFactors)
    fresh = gi.influence(
      loss, params, train, test, solver=gi.ekfac_solver(factors=ek), damping=0.05
    )
    again = gi.influence(
      loss, params, train, test, solver=gi.ekfac_solver(factors=restored), damping=0.05
    )
    np.testing.assert_array_equal(np.asarray(again), np.asarray(fresh))
    # and reusing factors equals fitting them inside influence
    inside = gi.influence(loss, params, train, test, solver=gi.ekfac_solver(), damping=0.05)
    np.testing.assert_allclose(inside, fresh, rtol=1e-12)


def test_inverse_inverts_the_damped_operator_and_the_default_damping_is_kronfluences():
  with jax.enable_x64(True):
    _, params, loss, data = _mixed_setup()
    ek = curvature.ekfac(loss, params, data)
    dense = np.asarray(ek.to_dense())
    np.testing.assert_allclose(dense, dense.T, atol=1e-12)
    v = jax.tree.map(lambda x: jnp.asarray(np.random.default_rng(0).normal(size=x.shape)), params)
    flat = ravel_pytree(v)[0]
    np.testing.assert_allclose(ravel_pytree(ek.matvec(v))[0], dense @ flat, rtol=1e-10, atol=1e-12)
    x = ravel_pytree(ek.inverse(0.3)(v))[0]
    np.testing.assert_allclose((dense + 0.3 * np.eye(len(flat))) @ x, flat, rtol=1e-8, atol=1e-10)
    damp = ek.default_damping()
    for name, lam in ek.eigenvalues().items():
      np.testing.assert_allclose(damp[name], 0.1 * np.mean(lam))


def test_sharded_params_and_data_give_the_unsharded_factors():
  """float64, so that only the reduction order differs (float32 eigh under jit, inverted at
  a damping of 0.1 x the mean eigenvalue, moves the product by ~1e-3 relative)."""
  mesh = sharding.make_mesh()
  with jax.enable_x64(True):
    mlp = nn.Sequential([nn.Dense(16, **F64), nn.relu, nn.Dense(8, **F64)])
    params = mlp.init(jax.random.key(0), jnp.zeros(8))
    rng = np.random.default_rng(7)
    data = {"x": jnp.asarray(rng.normal(size=(64, 8))), "y": jnp.asarray(rng.integers(0, 8, 64))}
    loss = lambda p, e: -jax.nn.log_softmax(mlp.apply(p, e["x"]))[e["y"]]

    def fsdp(x):  # the largest axis divisible by 8, FSDP-style
      axes = [i for i in np.argsort(x.shape)[::-1] if x.shape[i] % 8 == 0]
      spec = [None] * x.ndim
      if axes:
        spec[axes[0]] = "data"
      return jax.device_put(x, NamedSharding(mesh, P(*spec)))

    sp = jax.tree.map(fsdp, params)
    assert any(not x.sharding.is_fully_replicated for x in jax.tree.leaves(sp))
    sd = sharding.shard_batch(data, mesh)
    fit = jax.jit(lambda p, d: curvature.ekfac(loss, p, d, micro_batch=16))
    plain, sharded = fit(params, data), fit(sp, sd)
    v = jax.tree.map(jnp.ones_like, params)
    np.testing.assert_allclose(
      ravel_pytree(sharded.inverse()(jax.tree.map(fsdp, v)))[0],
      ravel_pytree(plain.inverse()(v))[0],
      rtol=1e-8,
    )
    for name in plain.corrected:
      top = float(np.max(plain.corrected[name]))  # zero eigenvalues agree to rounding of the top
      np.testing.assert_allclose(
        sharded.corrected[name], plain.corrected[name], rtol=1e-10, atol=1e-14 * top
      )


def test_bad_input_gets_one_line_errors():
  ln = nn.Sequential([nn.Dense(4), nn.LayerNorm()])
  params = ln.init(jax.random.key(0), jnp.zeros(3))
  loss = lambda p, e: jnp.sum(ln.apply(p, e) ** 2)
  data = jnp.ones((6, 3))
  with pytest.raises(
    ValueError, match=r"^params: K-FAC covers .* 'params/layers_1/bias' and 1 more"
  ):
    curvature.ekfac(loss, params, data)
  ek = curvature.ekfac(loss, params, data + jnp.arange(3.0), uncovered="ignore")
  assert [l.name for l in ek.layers] == ["layers_0"]
  out = ek.matvec(jax.tree.map(jnp.ones_like, params))
  assert not np.any(np.asarray(out["params"]["layers_1"]["scale"]))
  with pytest.raises(ValueError, match=r"^layers: 'nope' is not a covered layer"):
    curvature.ekfac(loss, params, data, layers=("nope",), uncovered="ignore")
  nan = data.at[2, 1].set(jnp.nan)
  with pytest.raises(ValueError, match=r"^data: layer 'layers_0''s factor has \d+ non-finite"):
    curvature.ekfac(loss, params, nan, uncovered="ignore")
  for kw, msg in [
    (dict(fisher="true"), r"^fisher: expected one of"),
    (dict(approximation="mean"), r"^approximation: expected one of"),
    (dict(micro_batch=0), r"^micro_batch: expected an integer >= 1"),
    (dict(fisher="mc"), r"^sampled_loss_fn: fisher='mc' needs"),
  ]:
    with pytest.raises(ValueError, match=msg):
      curvature.ekfac(loss, params, data, uncovered="ignore", **kw)
  with pytest.raises(ValueError, match=r"^loss_fn: expected a real scalar per example"):
    curvature.ekfac(lambda p, e: ln.apply(p, e), params, data, uncovered="ignore")
  with pytest.raises(ValueError, match=r"^v: expected a pytree like the params"):
    ek.matvec({"x": jnp.ones(3)})
  emb = nn.Embed(5, 3)
  ep = emb.init(jax.random.key(0), jnp.zeros((), jnp.int32))
  tied = lambda p, e: jnp.sum(emb.apply(p, emb.apply(p, e), method="attend"))
  with pytest.raises(ValueError, match=r"^loss_fn: Embed '' is used through attend"):
    curvature.ekfac(tied, ep, jnp.arange(5))
  grouped = nn.Conv(4, (2,), feature_group_count=2)
  gp = grouped.init(jax.random.key(0), jnp.zeros((5, 4)))
  with pytest.raises(ValueError, match=r"^loss_fn: Conv '' has feature_group_count=2"):
    curvature.ekfac(lambda p, e: jnp.sum(grouped.apply(p, e)), gp, jnp.ones((3, 5, 4)))


def test_compiled_memory_of_a_fit_does_not_grow_with_the_dataset():
  """The fit scans micro-batches: its temporaries hold one micro-batch, whatever n is
  (the data itself is an argument, not a temporary). A fit of all n at once grows."""
  mlp = nn.Sequential([nn.Dense(32), nn.relu, nn.Dense(10)])
  params = mlp.init(jax.random.key(0), jnp.zeros(16))
  loss = lambda p, e: -jax.nn.log_softmax(mlp.apply(p, e["x"]))[e["y"]]

  def temp(n, micro_batch):
    data = {
      "x": jax.ShapeDtypeStruct((n, 16), jnp.float32),
      "y": jax.ShapeDtypeStruct((n,), jnp.int32),
    }
    fit = jax.jit(lambda d: curvature.ekfac(loss, params, d, micro_batch=micro_batch).corrected)
    return fit.lower(data).compile().memory_analysis().temp_size_in_bytes

  small, large = temp(1024, 256), temp(32768, 256)
  assert large <= small * 1.05 + 4096, (small, large)
  assert temp(32768, None) > 8 * small  # the unchunked fit does grow: the test can fail
