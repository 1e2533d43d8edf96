"""DiffROAR's pieces and input gradients against exact answers: a NumPy sort for the
top-k / bottom-k masks, a NumPy replay of the retrain-and-compare pipeline, and the
closed-form input gradients of softmax regression."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from gradlab import influence as gi


def _reference_keep(a, fraction, keep):
  """Per row: stable argsort of -|a| (top) or |a| (bottom), the first round(f d) kept."""
  flat = np.abs(a.reshape(a.shape[0], -1))
  k = int(round(fraction * flat.shape[1]))
  out = np.zeros(flat.shape, bool)
  for i, row in enumerate(flat):
    order = np.argsort(-row if keep == "top" else row, kind="stable")
    out[i, order[:k]] = True
  return out.reshape(a.shape)


def test_keep_mask_keeps_exactly_the_top_or_bottom_k_per_example():
  rng = np.random.default_rng(0)
  a = rng.integers(-3, 4, (6, 4, 5)).astype(np.float32)  # many ties, both signs
  fractions = (0.05, 0.25, 0.5, 1.0)
  fn = jax.jit(lambda a: [[gi.keep_mask(a, fraction=f, keep=k) for k in gi.KEEPS]
                          for f in fractions])  # fmt: skip
  for f, pair in zip(fractions, fn(a)):
    for keep, got in zip(gi.KEEPS, pair):
      got = np.asarray(got)
      np.testing.assert_array_equal(got, _reference_keep(a, f, keep))
      assert np.all(got.reshape(6, -1).sum(1) == int(round(f * 20)))
  with pytest.raises(ValueError, match="^keep: "):
    gi.keep_mask(a, fraction=0.5, keep="middle")
  with pytest.raises(ValueError, match="^fraction: "):
    gi.keep_mask(a, fraction=0.0)
  with pytest.raises(ValueError, match="^attributions: "):
    gi.unmask(a, a[:, :2], fraction=0.5)


def _class_means(x, y):
  """A nearest-class-mean classifier, fit in closed form."""
  return jnp.stack([jnp.sum(jnp.where((y == c)[:, None], x, 0), 0) / jnp.sum(y == c)
                    for c in (0, 1)])  # fmt: skip


def _accuracy(means, x, y):
  d = jnp.sum((x[:, None, :] - means[None]) ** 2, -1)
  return jnp.mean(jnp.argmin(d, 1) == y)


def test_diff_roar_replays_the_retrain_and_compare_pipeline():
  """Coordinate 0 carries the label (+-2 with noise 0.1), the other 7 are noise, and the
  attribution is exact (|a| largest on coordinate 0): keeping the top 1/8 keeps the
  label, keeping the bottom 1/8 keeps a noise coordinate."""
  rng = np.random.default_rng(1)

  def make(n):
    y = rng.integers(0, 2, n)
    x = rng.normal(size=(n, 8)).astype(np.float32)
    x[:, 0] = np.where(y == 1, 2.0, -2.0) + 0.1 * x[:, 0]
    a = np.tile(np.linspace(1.0, 0.1, 8, dtype=np.float32), (n, 1))
    return x, y.astype(np.int32), a

  (xtr, ytr, atr), (xte, yte, ate) = make(200), make(100)
  fit = lambda x, key: _class_means(x, ytr)
  acc = lambda p, x: _accuracy(p, x, yte)
  got = jax.jit(lambda k: gi.diff_roar(fit, acc, xtr, atr, xte, ate, k, fraction=0.125, fill=0.0))(
    jax.random.key(0)
  )
  want = {}
  for keep in gi.KEEPS:
    mtr, mte = _reference_keep(atr, 0.125, keep), _reference_keep(ate, 0.125, keep)
    xtr_k, xte_k = np.where(mtr, xtr, 0.0), np.where(mte, xte, 0.0)
    means = np.stack([xtr_k[ytr == c].mean(0) for c in (0, 1)])
    pred = np.argmin(((xte_k[:, None] - means[None]) ** 2).sum(-1), 1)
    want[keep] = np.mean(pred == yte)
  assert float(got.top_accuracy) == pytest.approx(want["top"], abs=1e-6)
  assert float(got.bottom_accuracy) == pytest.approx(want["bottom"], abs=1e-6)
  assert float(got.diff) == pytest.approx(want["top"] - want["bottom"], abs=1e-6)
  # the signs the metric is built to show: +-2 separated by noise 0.1 is classified
  # exactly; a pure-noise coordinate is a coin flip (100 test points: 0.5 +- 0.05, and
  # 0.75 is 5 standard errors above it)
  assert want["top"] == 1.0 and want["bottom"] < 0.75


def test_input_gradients_of_softmax_regression_are_the_weight_rows():
  """logits = x W + b: d logit_c / dx = W[:, c]; d CE / dx = W (p - onehot(y))."""
  rng = np.random.default_rng(2)
  d, k, n = 6, 4, 5
  params = {"w": jnp.asarray(rng.normal(size=(d, k)), jnp.float32),
            "b": jnp.asarray(rng.normal(size=k), jnp.float32)}  # fmt: skip
  x = jnp.asarray(rng.normal(size=(n, d)), jnp.float32)
  y = jnp.asarray(rng.integers(0, k, n), jnp.int32)
  logit = lambda p, xi, yi: (xi @ p["w"] + p["b"])[yi]
  loss = lambda p, xi, yi: optax.softmax_cross_entropy_with_integer_labels(xi @ p["w"] + p["b"], yi)
  g_logit, g_loss = jax.jit(
    lambda p: (gi.input_gradients(logit, [p], x, y)[0], gi.input_gradients(loss, [p], x, y)[0])
  )(params)
  w = np.asarray(params["w"], np.float64)
  np.testing.assert_array_equal(np.asarray(g_logit), w[:, np.asarray(y)].T)  # exact: a copy
  z = np.asarray(x, np.float64) @ w + np.asarray(params["b"])
  prob = np.exp(z - z.max(1, keepdims=True))
  prob /= prob.sum(1, keepdims=True)
  want = (prob - np.eye(k)[np.asarray(y)]) @ w.T
  # float32 softmax and a 4-term sum of O(1) terms: a few ulps
  np.testing.assert_allclose(np.asarray(g_loss), want, atol=1e-6)
