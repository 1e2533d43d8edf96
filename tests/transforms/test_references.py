"""Each transform against a line-by-line NumPy replay of its official code.

At least 10 steps on random gradients (heavy-tailed where spikes matter),
run in float64 on both sides, matching to 1e-6 relative.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from gradlab import transforms
from tests.transforms import references

RTOL = 1e-6


def _params(rng):
  return {"w": rng.normal(size=(6, 5)), "b": rng.normal(size=(5,)), "v": rng.normal(size=(5, 3))}


def _grads(rng, params, spikes=False):
  g = {k: rng.normal(size=v.shape) for k, v in params.items()}
  if spikes:
    for k in g:
      mask = rng.random(g[k].shape) < 0.05
      g[k] = np.where(mask, g[k] * 1000.0, g[k])
  return g


def _run(tx, params, grad_seq, **extra_seq):
  """Applies ``tx`` (jitted) along ``grad_seq``; returns the parameter trajectory."""
  p = jax.tree.map(jnp.asarray, params)
  state = tx.init(p)
  upd = jax.jit(tx.update)
  out = []
  for i, g in enumerate(grad_seq):
    extra = {k: v[i] for k, v in extra_seq.items()}
    u, state = upd(jax.tree.map(jnp.asarray, g), state, p, **extra)
    p = optax.apply_updates(p, u)
    out.append(jax.tree.map(np.asarray, p))
  return out


def _assert_close(a, b, rtol=RTOL, atol=1e-12):
  for k in b:
    np.testing.assert_allclose(a[k], b[k], rtol=rtol, atol=atol, err_msg=k)


@pytest.mark.parametrize(
  "cfg",
  [
    dict(threshold=50.0, reset_interval=6, warmup_steps=3, clip_after=2),
    dict(threshold=5000.0, reset_interval=500, warmup_steps=150, clip_after=20),
    dict(threshold=10.0, reset_interval=4, warmup_steps=0, clip_after=1),
  ],
)
def test_spam_matches_the_official_loop(cfg):
  rng = np.random.default_rng(0)
  with jax.enable_x64(True):
    params = _params(rng)
    grads = [_grads(rng, params, spikes=True) for _ in range(16)]
    ref = references.SpamReference(
      1e-2,
      DeltaT=cfg["reset_interval"],
      threshold=cfg["threshold"],
      warmup_steps=cfg["warmup_steps"],
      grad_accu_steps=cfg["clip_after"],
    )
    p = params
    expected = []
    for g in grads:
      p = ref.step(p, g)
      expected.append(p)
    got = _run(transforms.spam(1e-2, **cfg), params, grads)
  for a, b in zip(got, expected):
    _assert_close(a, b)


@pytest.mark.parametrize(
  "cfg",
  [
    dict(warmup_steps=5),
    dict(warmup_steps=4, clip_option="mean", max_norm=30.0),
    dict(warmup_steps=3, skip_update_on_spike=True, clip_factor=0.7, z_thresh=1.5),
  ],
)
def test_spike_clip_matches_zclip(cfg):
  rng = np.random.default_rng(1)
  with jax.enable_x64(True):
    params = _params(rng)
    grads = []
    for i in range(30):
      g = _grads(rng, params)
      if i in (8, 13, 14, 22):  # spikes after the warmup
        g = {k: v * 50.0 for k, v in g.items()}
      grads.append(g)
    ref = references.ZClipReference(
      warmup_steps=cfg["warmup_steps"],
      clip_option=cfg.get("clip_option", "adaptive_scaling"),
      max_grad_norm=cfg.get("max_norm"),
      skip_update_on_spike=cfg.get("skip_update_on_spike", False),
      clip_factor=cfg.get("clip_factor", 1.0),
      z_thresh=cfg.get("z_thresh", 2.5),
    )
    tx = transforms.spike_clip(**cfg)
    state = tx.init(params)
    update = jax.jit(tx.update)
    spikes = 0
    for g in grads:
      expected = ref.step(g)
      got, state = update(jax.tree.map(jnp.asarray, g), state)
      spikes += int(state.last_spike)
      _assert_close(jax.tree.map(np.asarray, got), expected)
      if ref.initialized:
        np.testing.assert_allclose(float(state.mean), ref.mean, rtol=RTOL)
        np.testing.assert_allclose(float(state.var), ref.var, rtol=RTOL)
  assert spikes >= 3  # the injected spikes were detected, so the clip path ran


@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
def test_diffgrad_matches_the_official_v2(weight_decay):
  rng = np.random.default_rng(2)
  with jax.enable_x64(True):
    params = _params(rng)
    grads = [_grads(rng, params) for _ in range(12)]
    ref = references.DiffGradReference(1e-2, weight_decay=weight_decay)
    p, expected = params, []
    for g in grads:
      p = ref.step(p, g)
      expected.append(p)
    got = _run(transforms.diffgrad(1e-2, weight_decay=weight_decay), params, grads)
  for a, b in zip(got, expected):
    _assert_close(a, b)


def test_scale_matches_the_official_optimizer():
  rng = np.random.default_rng(3)
  with jax.enable_x64(True):
    # flax layout [in, out]; the reference gets torch's [out, in] (transposed).
    params = {
      "hidden": {"kernel": rng.normal(size=(6, 5)), "bias": rng.normal(size=(5,))},
      "head": {"kernel": rng.normal(size=(5, 4)), "bias": rng.normal(size=(4,))},
    }
    grads = [jax.tree.map(lambda x: rng.normal(size=x.shape), params) for _ in range(12)]
    flat = lambda t: {
      "hk": t["hidden"]["kernel"].T,
      "hb": t["hidden"]["bias"],
      "ok": t["head"]["kernel"].T,
      "ob": t["head"]["bias"],
    }
    ref = references.ScaleReference(1e-2, {"hk": 0, "hb": 2, "ok": 1, "ob": 2}, weight_decay=0.1)
    p, expected = flat(params), []
    for g in grads:
      p = ref.step(p, flat(g))
      expected.append(p)
    got = _run(
      transforms.column_normalized_sgd(1e-2, last_layer="head/kernel", weight_decay=0.1),
      params,
      grads,
    )
  for a, b in zip(got, expected):
    _assert_close(flat(a), b)


def test_agvm_matches_the_official_hook_with_sgd_momentum():
  rng = np.random.default_rng(4)
  with jax.enable_x64(True):
    params = {
      "backbone": rng.normal(size=(6, 5)),
      "neck": rng.normal(size=(5,)),
      "head": rng.normal(size=(5, 3)),
    }
    labels = {"backbone": "backbone", "neck": "head", "head": "head"}
    steps = 14
    halves = []
    for _ in range(steps):  # head gradients noisier than the backbone's
      a = {
        k: rng.normal(size=v.shape) + (2.0 if k == "backbone" else 0.3) for k, v in params.items()
      }
      b = {
        k: rng.normal(size=v.shape) + (2.0 if k == "backbone" else 0.3) for k, v in params.items()
      }
      halves.append((a, b))
    grads = [{k: (a[k] + b[k]) / 2 for k in a} for a, b in halves]
    ref = references.AgvmReference(
      0.05,
      0.9,
      [["backbone"], ["head", "neck"]],
      lr_update_interval=3,
      lr_update_start_iter=2,
      lr_update_stop_iter=11,
    )
    p, expected = params, []
    for g, (a, b) in zip(grads, halves):
      p = ref.step(p, g, a, b)
      expected.append(p)
    tx = optax.chain(
      optax.sgd(0.05, momentum=0.9),
      transforms.agvm(labels, "backbone", interval=3, start=2, stop=11),
    )
    split = [jax.tree.map(lambda x, y: jnp.stack([x, y]), a, b) for a, b in halves]
    got = _run(tx, params, grads, split_grads=split)
  for a, b in zip(got, expected):
    _assert_close(a, b)
  assert ref.scale_factors[1] < 0.99  # the noisier group's step was damped


@pytest.mark.parametrize("exact", [False, True])
def test_mars_matches_the_official_adamw_path(exact):
  rng = np.random.default_rng(5)
  with jax.enable_x64(True):
    params = _params(rng)
    grads = [jax.tree.map(lambda x: 0.1 * x, _grads(rng, params)) for _ in range(12)]
    # the exact version's g(x_{t-1}, xi_t): any tree, replayed on both sides
    lasts = [jax.tree.map(lambda x: 0.1 * x, _grads(rng, params)) for _ in range(12)]
    lasts[0] = None
    ref = references.MarsReference(1e-2, weight_decay=0.1)
    p, expected = params, []
    for g, last in zip(grads, lasts):
      if exact and last is None:
        last = g  # first step: the previous iterate is the current one
      p = ref.step(p, g, last if exact else None)
      expected.append(p)
    tx = transforms.mars(1e-2, weight_decay=0.1, exact=exact)
    extra = {}
    if exact:
      seq = iter([g if l is None else l for g, l in zip(grads, lasts)])
      fns = [(lambda t: lambda _p: jax.tree.map(jnp.asarray, t))(next(seq)) for _ in grads]
      p_j = jax.tree.map(jnp.asarray, params)
      state = tx.init(p_j)
      got = []
      for g, fn in zip(grads, fns):
        u, state = tx.update(jax.tree.map(jnp.asarray, g), state, p_j, grad_fn=fn)
        p_j = optax.apply_updates(p_j, u)
        got.append(jax.tree.map(np.asarray, p_j))
    else:
      got = _run(tx, params, grads, **extra)
  for a, b in zip(got, expected):
    _assert_close(a, b)


def _quadratic_batches(rng, dim, steps):
  """Least squares f(x; xi) = ||A_xi x - y_xi||^2 / 2m with one (A, y) per step."""
  return [(rng.normal(size=(8, dim)), rng.normal(size=8)) for _ in range(steps)]


def _lsq_grad(x, batch):
  a, y = batch
  return a.T @ (a @ x - y) / a.shape[0]


def test_storm_matches_algorithm_1():
  rng = np.random.default_rng(6)
  with jax.enable_x64(True):
    x0 = rng.normal(size=5)
    batches = _quadratic_batches(rng, 5, 12)
    ref = references.StormReference(k=0.5, w=1.0, c=10.0)
    x, prev, expected = x0, x0, []
    for b in batches:
      new = ref.step(x, _lsq_grad(x, b), _lsq_grad(prev, b))
      prev, x = x, new
      expected.append(x)
    tx = transforms.storm(k=0.5, w=1.0, c=10.0)
    p = {"x": jnp.asarray(x0)}
    state = tx.init(p)
    got = []
    for b in batches:
      bj = jax.tree.map(jnp.asarray, b)
      gfn = lambda q, bj=bj: {"x": _lsq_grad(q["x"], bj)}
      u, state = tx.update(gfn(p), state, p, grad_fn=gfn)
      p = optax.apply_updates(p, u)
      got.append(np.asarray(p["x"]))
  for a, b in zip(got, expected):
    np.testing.assert_allclose(a, b, rtol=RTOL)


def test_svrg_matches_the_textbook_loop():
  rng = np.random.default_rng(7)
  with jax.enable_x64(True):
    x0 = rng.normal(size=5)
    data = _quadratic_batches(rng, 5, 4)  # the "dataset": 4 batches
    full = lambda x: sum(_lsq_grad(x, b) for b in data) / len(data)
    order = [int(i) for i in rng.integers(0, 4, size=12)]
    lr, m = 0.05, 4
    x, expected = x0, []
    for t, i in enumerate(order):
      if t % m == 0:
        snap, mu = x.copy(), full(x)
      v = _lsq_grad(x, data[i]) - _lsq_grad(snap, data[i]) + mu
      x = x - lr * v
      expected.append(x)
    tx = optax.chain(transforms.svrg(m), optax.sgd(lr))
    p = {"x": jnp.asarray(x0)}
    state = tx.init(p)
    got = []
    data_j = jax.tree.map(jnp.asarray, data)
    for i in order:
      gfn = lambda q, i=i: {"x": _lsq_grad(q["x"], data_j[i])}
      ffn = lambda q: {"x": sum(_lsq_grad(q["x"], b) for b in data_j) / len(data_j)}
      u, state = tx.update(gfn(p), state, p, grad_fn=gfn, full_grad_fn=ffn)
      p = optax.apply_updates(p, u)
      got.append(np.asarray(p["x"]))
  for a, b in zip(got, expected):
    np.testing.assert_allclose(a, b, rtol=RTOL)


@pytest.mark.parametrize("budget", ["uniform", "size"])
def test_per_layer_clip_and_dp_aggregate_match_numpy(budget):
  rng = np.random.default_rng(8)
  with jax.enable_x64(True):
    params = _params(rng)
    names = sorted(params)  # jax.tree.leaves order of a dict
    sizes = {k: params[k].size for k in names}
    total = sum(sizes.values())
    c = 2.0
    bud = {
      k: (c / np.sqrt(len(names)) if budget == "uniform" else c * np.sqrt(sizes[k] / total))
      for k in names
    }
    for _ in range(10):
      g = {k: 3 * v for k, v in _grads(rng, params).items()}
      got, _ = transforms.per_layer_clip(c, budget=budget).update(jax.tree.map(jnp.asarray, g), ())
      expected = {k: g[k] * min(1.0, bud[k] / np.linalg.norm(g[k])) for k in names}
      _assert_close(jax.tree.map(np.asarray, got), expected)
    # DP: per-example per-layer clipping, summed, averaged; without noise exactly
    per_example = {k: 3 * rng.normal(size=(7,) + v.shape) for k, v in params.items()}
    tx = transforms.dp_per_layer_aggregate(c, 0.0, jax.random.key(0), budget=budget)
    got, _ = tx.update(jax.tree.map(jnp.asarray, per_example), tx.init(params))
    expected = {
      k: np.mean([e * min(1.0, bud[k] / np.linalg.norm(e)) for e in per_example[k]], axis=0)
      for k in names
    }
    _assert_close(jax.tree.map(np.asarray, got), expected)
    if budget == "uniform":  # optax's own per-layer clipping agrees
      summed, _ = optax.per_example_layer_norm_clip(jax.tree.map(jnp.asarray, per_example), c)
      _assert_close({k: np.asarray(v) / 7 for k, v in summed.items()}, expected)
