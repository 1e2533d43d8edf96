"""gradlab.influence.unlearning (SalUn) against exact answers: a NumPy sort for the
saliency mask, a NumPy replay of the official masked SGD step (RL.py), the closed-form
softmax-regression gradient for the random-label step, and every threshold enumerated
for the membership attack."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from gradlab import influence as gi

# float32 throughout: a weight update of a few terms of size ~1 is exact to a few ulps
F32_TOL = 1e-6


def _grads(seed=0):
  """A pytree with many exact ties (integer magnitudes) and signs of both kinds."""
  rng = np.random.default_rng(seed)
  return {
    "dense": {"kernel": rng.integers(-4, 5, (7, 5)).astype(np.float32),
              "bias": rng.integers(-4, 5, (5,)).astype(np.float32)},
    "out": rng.integers(-4, 5, (5, 3)).astype(np.float32),
  }  # fmt: skip


def _reference_mask(grads, fraction):
  """The official generate_mask.py in NumPy: argsort of -|g| over all weights
  concatenated (stable: ties to the earlier weight), rank < int(N * fraction)."""
  leaves, treedef = jax.tree.flatten(grads)
  flat = -np.concatenate([np.abs(np.asarray(x)).ravel() for x in leaves])
  ranks = np.empty(flat.size, int)
  ranks[np.argsort(flat, kind="stable")] = np.arange(flat.size)
  keep = ranks < int(flat.size * fraction)
  out, start = [], 0
  for x in leaves:
    out.append(keep[start : start + x.size].reshape(x.shape))
    start += x.size
  return jax.tree.unflatten(treedef, out)


@pytest.fixture(scope="module")
def masks():
  grads = _grads()
  fractions = (0.1, 0.3, 0.5, 0.9, 1.0)
  fn = jax.jit(lambda g: [gi.saliency_mask(g, fraction=f) for f in fractions])
  return grads, fractions, fn(grads)


def test_saliency_mask_holds_exactly_the_top_fraction_by_magnitude(masks):
  grads, fractions, got = masks
  n = sum(x.size for x in jax.tree.leaves(grads))  # 35 + 5 + 15 = 55 weights
  for f, m in zip(fractions, got):
    want = _reference_mask(grads, f)
    assert sum(int(np.sum(x)) for x in jax.tree.leaves(m)) == int(n * f)
    for a, b in zip(jax.tree.leaves(m), jax.tree.leaves(want)):
      np.testing.assert_array_equal(np.asarray(a), b)
    # every kept magnitude is at least every dropped one
    flat = np.concatenate([np.abs(x).ravel() for x in jax.tree.leaves(grads)])
    keep = np.concatenate([np.asarray(x).ravel() for x in jax.tree.leaves(m)])
    if 0 < keep.sum() < n:
      assert flat[keep].min() >= flat[~keep].max()


def test_saliency_mask_refuses_bad_input():
  with pytest.raises(ValueError, match="^fraction: "):
    gi.saliency_mask(_grads(), fraction=0.0)
  with pytest.raises(ValueError, match="^fraction: "):
    gi.saliency_mask(_grads(), fraction=1.5)
  with pytest.raises(ValueError, match="^grads: "):
    gi.saliency_mask({"w": jnp.array([1.0, jnp.nan])}, fraction=0.5)
  with pytest.raises(ValueError, match="^grads: "):
    gi.saliency_mask({}, fraction=0.5)


def _reference_masked_sgd(params, grads_seq, mask, lr, momentum, wd):
  """Classification/unlearn/RL.py per step, with torch.optim.SGD's update in NumPy:
  grad *= mask; d = grad + wd p; buf = momentum buf + d; p -= lr buf; then masked-out
  weights restored to theta0 and their momentum zeroed (_restore_masked_params)."""
  theta0 = {k: np.array(v) for k, v in params.items()}
  p = {k: np.array(v) for k, v in params.items()}
  buf = {k: np.zeros_like(v) for k, v in params.items()}
  for g in grads_seq:
    for k in p:
      m = np.asarray(mask[k], np.float32)
      d = np.asarray(g[k]) * m + wd * p[k]
      buf[k] = momentum * buf[k] + d
      p[k] = p[k] - lr * buf[k]
      p[k] = p[k] * m + theta0[k] * (1 - m)
      buf[k] = buf[k] * m
  return p


def test_masked_optimizer_replays_the_official_masked_sgd_and_freezes_the_rest():
  rng = np.random.default_rng(1)
  params = {"w": rng.normal(size=(6, 4)).astype(np.float32),
            "b": rng.normal(size=(4,)).astype(np.float32)}  # fmt: skip
  grads_seq = [{k: rng.normal(size=v.shape).astype(np.float32) for k, v in params.items()}
               for _ in range(5)]  # fmt: skip
  mask = gi.saliency_mask(grads_seq[0], fraction=0.4)
  lr, momentum, wd = 0.1, 0.9, 5e-4  # the official defaults for momentum and weight decay
  opt = gi.masked_optimizer(
    optax.chain(optax.add_decayed_weights(wd), optax.sgd(lr, momentum=momentum)), mask
  )

  @jax.jit
  def run(p, gs):
    def step(carry, g):
      p, s = carry
      u, s = opt.update(g, s, p)
      return (optax.apply_updates(p, u), s), None

    return jax.lax.scan(step, (p, opt.init(p)), gs)[0][0]

  stacked = jax.tree.map(lambda *x: jnp.stack(x), *grads_seq)
  got = run(params, stacked)
  want = _reference_masked_sgd(params, grads_seq, mask, lr, momentum, wd)
  for k in params:
    m = np.asarray(mask[k])
    # masked-out weights: bit for bit the trained ones
    np.testing.assert_array_equal(np.asarray(got[k])[~m], params[k][~m])
    # five steps of |update| <~ 1: a few float32 ulps of O(1) values
    np.testing.assert_allclose(np.asarray(got[k]), want[k], rtol=0, atol=F32_TOL * 10)
    assert not np.allclose(np.asarray(got[k])[m], params[k][m])  # the salient ones moved


def test_masked_optimizer_refuses_a_mask_of_another_shape():
  opt = gi.masked_optimizer(optax.sgd(0.1), {"w": jnp.ones((3,), bool)})
  with pytest.raises(ValueError, match="^mask: "):
    opt.init({"w": jnp.ones((4,))})
  with pytest.raises(ValueError, match="^optimizer: "):
    gi.masked_optimizer(lambda g: g, {"w": jnp.ones((3,), bool)})


def test_random_labels_follow_the_official_draw_or_exclude_the_true_label():
  n, k = 20000, 10
  y = jnp.asarray(np.random.default_rng(2).integers(0, k, n), jnp.int32)
  draw = jax.jit(
    lambda key: (gi.random_labels(key, y, num_classes=k),
                 gi.random_labels(key, y, num_classes=k, exclude_true=True))
  )  # fmt: skip
  official, paper = (np.asarray(a) for a in draw(jax.random.key(3)))
  assert official.min() >= 0 and official.max() == k - 1 and paper.max() <= k - 1
  assert not np.any(paper == np.asarray(y))
  # the official draw hits the true label with probability 1/K; 4 standard errors
  # (sqrt(p (1 - p) / n) = 0.0021): fails by chance about 1 time in 16,000
  hit = np.mean(official == np.asarray(y))
  assert abs(hit - 1 / k) < 4 * np.sqrt(0.1 * 0.9 / n)
  with pytest.raises(ValueError, match="^num_classes: "):
    gi.random_labels(jax.random.key(0), y, num_classes=1)
  with pytest.raises(ValueError, match="^labels: "):
    gi.random_labels(jax.random.key(0), jnp.zeros(3), num_classes=3)


def _ce(p, e):
  x, y = e
  return optax.softmax_cross_entropy_with_integer_labels(x @ p["w"] + p["b"], y)


def test_salun_update_is_a_step_on_the_closed_form_random_label_gradient():
  """Softmax regression: d mean CE / dW = X^T (P - Y) / n, d / db = mean (P - Y)."""
  rng = np.random.default_rng(4)
  d, k, nf, nr, alpha, lr = 5, 4, 6, 9, 0.7, 0.5
  forget = (rng.normal(size=(nf, d)).astype(np.float32), rng.integers(0, k, nf).astype(np.int32))
  retain = (rng.normal(size=(nr, d)).astype(np.float32), rng.integers(0, k, nr).astype(np.int32))
  params = {"w": rng.normal(size=(d, k)).astype(np.float32) * 0.3, "b": np.zeros(k, np.float32)}
  key = jax.random.key(5)

  @jax.jit
  def step(p):
    loss_f = lambda q: jnp.mean(jax.vmap(lambda x, y: _ce(q, (x, y)))(*forget))
    mask = gi.saliency_mask(jax.grad(loss_f)(p), fraction=0.5)
    opt = gi.masked_optimizer(optax.sgd(lr), mask)
    new, _, loss = gi.salun_update(_ce, p, opt.init(p), forget, retain, key, optimizer=opt,
                                   num_classes=k, alpha=alpha)  # fmt: skip
    forget_only = gi.random_label_loss(_ce, forget, None, key, num_classes=k)(p)
    return new, loss, forget_only, mask, gi.random_labels(key, forget[1], num_classes=k)

  new, loss, forget_only, mask, y_rand = step(params)
  y_rand = np.asarray(y_rand)

  def ce_and_grad(x, y):
    z = x.astype(np.float64) @ params["w"] + params["b"]
    z -= z.max(1, keepdims=True)
    prob = np.exp(z) / np.exp(z).sum(1, keepdims=True)
    ce = -np.log(prob[np.arange(len(y)), y])
    diff = prob - np.eye(k)[y]
    return ce.mean(), x.T @ diff / len(y), diff.mean(0)

  lf, gwf, gbf = ce_and_grad(forget[0], y_rand)
  lr_, gwr, gbr = ce_and_grad(*retain)
  gw, gb = gwf + alpha * gwr, gbf + alpha * gbr
  # float32 sums of ~15 terms of size ~1: a few ulps times the problem size
  np.testing.assert_allclose(float(loss), lf + alpha * lr_, rtol=1e-5)
  np.testing.assert_allclose(float(forget_only), lf, rtol=1e-5)  # retain=None: forget term
  mw, mb = np.asarray(mask["w"]), np.asarray(mask["b"])
  np.testing.assert_allclose(new["w"], params["w"] - lr * gw * mw, atol=1e-5)
  np.testing.assert_allclose(new["b"], params["b"] - lr * gb * mb, atol=1e-5)
  with pytest.raises(ValueError, match="^forget: "):
    gi.random_label_loss(_ce, forget[0], retain, key, num_classes=k)
  with pytest.raises(ValueError, match="^alpha: "):
    gi.random_label_loss(_ce, forget, retain, key, num_classes=k, alpha=-1.0)


def _reference_mia(member, nonmember, target):
  """Every candidate threshold (each observed score and +inf), balanced accuracy of
  'member iff score >= t', the lowest best t; the share of target below it."""
  cands = np.concatenate([np.unique(np.concatenate([member, nonmember])), [np.inf]])
  bacc = [0.5 * (np.mean(member >= t) + np.mean(nonmember < t)) for t in cands]
  t = cands[int(np.argmax(bacc))]
  return np.mean(target < t), t, max(bacc)


def test_mia_efficacy_matches_every_threshold_enumerated():
  rng = np.random.default_rng(6)
  cases = [
    # ties inside and across the two sets (confidences rounded to 0.05)
    (np.round(rng.beta(5, 1, 40) * 20) / 20, np.round(rng.beta(2, 2, 30) * 20) / 20,
     np.round(rng.beta(3, 2, 25) * 20) / 20),
    (rng.normal(1, 1, 50), rng.normal(0, 1, 50), rng.normal(0.5, 1, 20)),
    (rng.normal(0, 1, 10), rng.normal(1, 1, 10), rng.normal(0, 1, 5)),  # inverted: t = -inf side
  ]  # fmt: skip
  fn = jax.jit(gi.mia_efficacy)
  for m, u, t in cases:
    m, u, t = (x.astype(np.float32) for x in (m, u, t))
    got = fn(m, u, t)
    eff, thr, acc = _reference_mia(m, u, t)
    assert float(got.efficacy) == pytest.approx(eff, abs=1e-7)
    assert float(got.threshold) == thr
    assert float(got.shadow_accuracy) == pytest.approx(acc, abs=1e-6)
  with pytest.raises(ValueError, match="^member_scores: "):
    gi.mia_efficacy(np.zeros((0,)), np.ones(3), np.ones(3))
  with pytest.raises(ValueError, match="^target_scores: "):
    gi.mia_efficacy(np.ones(3), np.ones(3), np.array([np.nan]))
