"""Dataset-level curvature (gradlab.curvature.dataset) against the full-batch products."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.flatten_util import ravel_pytree
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from gradlab import curvature, sharding

# float64 products summed in another order: agreement to a few ulps of the
# entries (measured 2e-16 absolute on entries of order 0.1-1)
EXACT = dict(rtol=1e-12, atol=1e-13)


def _problem(dtype=jnp.float64, n=40, d=5, h=8, c=3):
  k1, k2, k3, k4 = jax.random.split(jax.random.key(0), 4)
  params = {
    "w1": jax.random.normal(k1, (d, h), dtype) * 0.7,
    "b1": jnp.zeros(h, dtype) + 0.1,
    "w2": jax.random.normal(k2, (h, c), dtype) * 0.7,
    "b2": jnp.zeros(c, dtype),
  }
  data = {"x": jax.random.normal(k3, (n, d), dtype), "y": jax.random.randint(k4, (n,), 0, c)}

  def model(p, b):
    return jnp.tanh(b["x"] @ p["w1"] + p["b1"]) @ p["w2"] + p["b2"]

  def per_example(p, b):
    return optax.softmax_cross_entropy_with_integer_labels(model(p, b), b["y"])

  def loss(p, b):
    return jnp.mean(per_example(p, b))

  def out_loss(o, b):
    return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(o, b["y"]))

  return params, data, model, per_example, loss, out_loss


def _flat(tree):
  return np.asarray(ravel_pytree(tree)[0])


def _vector(params, seed=1):
  flat, unravel = ravel_pytree(params)
  return unravel(jax.random.normal(jax.random.key(seed), flat.shape, flat.dtype))


def _stream(data, sizes):
  edges = np.cumsum([0, *sizes])
  return curvature.batches(
    [jax.tree.map(lambda x: np.asarray(x[a:b]), data) for a, b in zip(edges[:-1], edges[1:])]
  )


def _products(params, data, model, per_example, loss, out_loss, key, micro_batch):
  sampled = curvature.sampled_cross_entropy(model)
  return (
    curvature.dataset_hvp(loss, params, data, micro_batch=micro_batch),
    curvature.dataset_ggn_vp(model, out_loss, params, data, micro_batch=micro_batch),
    curvature.dataset_empirical_fisher_vp(per_example, params, data, micro_batch=micro_batch),
    curvature.dataset_fisher_vp(sampled, params, data, key, micro_batch=micro_batch, num_samples=2),
  )


def test_dataset_products_equal_the_full_batch_products():
  with jax.enable_x64(True):
    params, data, model, per_example, loss, out_loss = _problem()
    key, v = jax.random.key(3), _vector(params)
    sampled = curvature.sampled_cross_entropy(model)
    fns = (model, per_example, loss, out_loss, key)

    @jax.jit
    def products(d, v):
      full = [
        curvature.hvp(loss, params, d, v),
        curvature.ggn_vp(model, out_loss, params, d, v),
        curvature.empirical_fisher_vp(per_example, params, d, v),
        curvature.fisher_vp(sampled, params, d, key, v, num_samples=2),
      ]
      # 4 micro-batches of 10, and 16 + 16 + a remainder of 8
      return full, [[mv(v) for mv in _products(params, d, *fns, mb)] for mb in (10, 16)]

    full, got = products(data, v)
    got.append([mv(v) for mv in _products(params, _stream(data, (16, 16, 8)), *fns, None)])
    for per_split in got:
      for ours, truth in zip(per_split, full):
        np.testing.assert_allclose(_flat(ours), _flat(truth), **EXACT)


def test_monte_carlo_fisher_averages_to_the_ggn_for_softmax_cross_entropy():
  with jax.enable_x64(True):
    params, data, model, _, _, out_loss = _problem()
    v = _vector(params, seed=2)
    ggn = _flat(curvature.ggn_vp(model, out_loss, params, data, v))
    sampled = curvature.sampled_cross_entropy(model)
    draws = 4000
    keys = jax.random.split(jax.random.key(4), draws)
    fvp = jax.jit(
      jax.vmap(
        lambda k: ravel_pytree(
          curvature.dataset_fisher_vp(sampled, params, data, k, micro_batch=16)(v)
        )[0]
      )
    )(keys)
    fvp = np.asarray(fvp)
    z = np.abs(fvp.mean(0) - ggn) / (fvp.std(0, ddof=1) / np.sqrt(draws))
    # 75 entries, each within 4.5 standard errors of its mean over the draws (the
    # mean of 4000 draws is normal to a good approximation): P(any above) ~ 5e-4
    assert z.max() < 4.5, z.max()
    # and the draws do vary: the Fisher is an estimate, not the GGN itself
    assert np.all(fvp.std(0) > 0)


def test_compiled_temporaries_do_not_grow_with_the_dataset():
  params, _, _, _, loss, _ = _problem(jnp.float32, d=16, h=32, c=4)

  def temp(fn, n):
    data = {"x": jnp.zeros((n, 16)), "y": jnp.zeros((n,), jnp.int32)}
    mem = jax.jit(fn).lower(data, params).compile().memory_analysis()
    return mem.temp_size_in_bytes

  dataset = lambda d, v: curvature.dataset_hvp(loss, params, d, micro_batch=256)(v)
  full = lambda d, v: curvature.hvp(loss, params, d, v)
  small, big = temp(dataset, 1024), temp(dataset, 32 * 1024)
  # the same program on 4 or 128 micro-batches: identical temporaries
  assert big == small, (small, big)
  # a full-batch product holds activations of every example: 32x the data, >10x the bytes
  # (measured 32x), so the first check can fail
  full_small, full_big = temp(full, 1024), temp(full, 32 * 1024)
  assert full_big > 10 * full_small and full_big > 10 * big, (full_small, full_big, big)


def test_estimators_on_a_dataset_matvec_equal_them_on_the_full_batch():
  with jax.enable_x64(True):
    params, data, _, _, loss, _ = _problem()
    key = jax.random.key(5)

    hpp = lambda mv: curvature.hutch_plus_plus(mv, params, key, num_matvecs=6)

    def estimates(batch, mb):  # the hessian_* conveniences: make_hvp, or dataset_hvp with mb
      kw = {} if mb is None else {"micro_batch": mb}
      if mb is None:
        mv = curvature.make_hvp(loss, params, batch)
      else:
        mv = curvature.dataset_hvp(loss, params, batch, micro_batch=mb)
      return (
        curvature.hessian_trace(loss, params, batch, key, num_probes=6, probe_batch=4, **kw),
        curvature.hessian_diagonal(loss, params, batch, key, num_probes=6, probe_batch=4, **kw),
        curvature.hessian_top_eigenvalues(loss, params, batch, key, k=3, num_iterations=12, **kw),
        curvature.hessian_spectral_density(
          loss, params, batch, key, num_iterations=8, num_runs=3, grid_size=50, **kw
        ),
        hpp(mv),
      )

    full, ours = jax.jit(lambda d: (estimates(d, None), estimates(d, 16)))(data)  # 16 + 16 + 8
    # float64 rounding of products that agree to ulps, through at most 12 Lanczos steps on a
    # well-separated top spectrum (measured differences below 1e-14)
    tight = dict(rtol=1e-10, atol=1e-12)
    for a, b in zip(jax.tree.leaves(full), jax.tree.leaves(ours)):
      np.testing.assert_allclose(np.asarray(b), np.asarray(a), **tight)
    # the stream runs the same probes and Lanczos steps in Python loops, one product at a time
    stream = _stream(data, (16, 16, 8))
    mv = curvature.dataset_hvp(loss, params, stream)
    tr, diag, top, _, full_hpp = full
    streamed = (
      curvature.hessian_trace(loss, params, stream, key, num_probes=6, probe_batch=4),
      curvature.diagonal(mv, params, key, num_probes=6, probe_batch=4),
      curvature.top_eigenvalues(mv, params, key, k=3, num_iterations=12),
      hpp(mv),
    )
    for a, b in zip(jax.tree.leaves((tr, diag, top, full_hpp)), jax.tree.leaves(streamed)):
      np.testing.assert_allclose(np.asarray(b), np.asarray(a), **tight)


def test_sharded_params_and_data_give_the_unsharded_products():
  with jax.enable_x64(True):
    mesh = sharding.make_mesh()
    params, data, model, _, loss, _ = _problem(n=64, d=8, h=16, c=8)

    def fsdp(x):  # the largest axis divisible by 8, FSDP-style; the others replicated
      axes = [i for i in np.argsort(x.shape)[::-1] if x.shape[i] % 8 == 0]
      spec = [None] * x.ndim
      if axes:
        spec[axes[0]] = sharding.DATA_AXIS
      return jax.device_put(x, NamedSharding(mesh, P(*spec)))

    key, v = jax.random.key(6), _vector(params)
    sampled = curvature.sampled_cross_entropy(model)

    @jax.jit
    def products(p, d, v):
      return (
        curvature.dataset_hvp(loss, p, d, micro_batch=16)(v),
        curvature.dataset_fisher_vp(sampled, p, d, key, micro_batch=16)(v),
        curvature.hessian_trace(loss, p, d, key, num_probes=4, micro_batch=16),
      )

    plain = products(params, data, v)
    sp, sv = jax.tree.map(fsdp, params), jax.tree.map(fsdp, v)
    sharded = products(sp, sharding.shard_batch(data, mesh), sv)
    assert sp["w1"].sharding.spec == P(None, "data")
    for a, b in zip(jax.tree.leaves(plain), jax.tree.leaves(sharded)):
      np.testing.assert_allclose(np.asarray(b), np.asarray(a), **EXACT)
    # a stream with sharded params: each batch's jitted product takes them as they are
    streamed = curvature.dataset_hvp(loss, sp, _stream(data, (32, 32)))(sv)
    np.testing.assert_allclose(_flat(streamed), _flat(plain[0]), **EXACT)


def _one_line_error(pattern, fn, *args):
  """``fn(*args)`` raises a ValueError whose message is one line matching ``pattern`` (JAX may
  attach a traceback note to an error raised while tracing: the message itself is the line)."""
  with pytest.raises(ValueError, match=pattern) as info:
    fn(*args)
  assert "\n" not in str(info.value), str(info.value)


def test_bad_input_gets_one_line_errors():
  params, data, model, _, loss, _ = _problem(jnp.float32)
  key = jax.random.key(0)
  sampled = curvature.sampled_cross_entropy(model)
  first_row = curvature.sampled_cross_entropy(lambda p, b: model(p, b)[0])
  stream = _stream(data, (20, 20))
  stream_hvp = curvature.dataset_hvp(loss, params, stream)
  per_batch = lambda p, b, keys: jnp.mean(model(p, b))  # not per example
  summed = lambda p, b: model(p, b).sum(-1)  # not a scalar
  not_b = r"^sampled_loss_fn: expected per-example losses of shape \[B\] = \({},\), got \(\)"
  cases = [
    (
      "^micro_batch: expected an integer >= 1, got 0",
      lambda: curvature.dataset_hvp(loss, params, data, micro_batch=0),
    ),
    (
      "^micro_batch: expected an integer >= 1, got -1",
      lambda: curvature.hessian_trace(loss, params, data, key, num_probes=2, micro_batch=-1),
    ),
    (
      "^data: expected stacked arrays .* one-shot iterator",
      lambda: curvature.dataset_hvp(loss, params, iter([data])),
    ),
    ("^batches: expected a re-iterable", lambda: curvature.batches(b for b in [data])),
    (
      "^data: a stream of batches .* cannot be traced",
      lambda: jax.jit(lambda v: curvature.dataset_hvp(loss, params, stream)(v))(params),
    ),
    (
      "^batch: a stream of batches .* cannot be traced",
      lambda: jax.jit(lambda k: curvature.hessian_trace(loss, params, stream, k, num_probes=2))(
        key
      ),
    ),
    (not_b.format(40), lambda: curvature.fisher_vp(per_batch, params, data, key, params)),
    (
      not_b.format(16),
      lambda: curvature.dataset_fisher_vp(per_batch, params, data, key, micro_batch=16),
    ),
    (not_b.format(20), lambda: curvature.dataset_fisher_vp(per_batch, params, stream, key)(params)),
    (
      "^logits_fn: expected logits of shape",
      lambda: curvature.fisher_vp(first_row, params, data, key, params),
    ),
    (
      "^num_samples: expected an integer >= 1",
      lambda: curvature.dataset_fisher_vp(sampled, params, data, key, num_samples=0),
    ),
    (
      "^key: expected a typed key",
      lambda: curvature.dataset_fisher_vp(sampled, params, data, jax.random.PRNGKey(0)),
    ),
    (
      r"^loss_fn: expected a scalar loss, got \(16,\)",
      lambda: curvature.dataset_hvp(summed, params, data, micro_batch=16),
    ),
    (
      "^matvec: power_iteration .* use top_eigenvalues",
      lambda: curvature.power_iteration(stream_hvp, params, key),
    ),
  ]
  for pattern, call in cases:
    with pytest.raises(ValueError, match=pattern) as info:
      call()
    # one line (JAX may attach a traceback note to an error raised while tracing: a note, not
    # part of the message)
    assert "\n" not in str(info.value), str(info.value)
