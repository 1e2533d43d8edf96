"""Gradient inversion against exact truths.

* A Dense layer's input from its weight and bias gradients: the example
  itself, to float32 rounding (one example), the bias-gradient-weighted mean
  of the inputs (a batch).
* iDLG's label: the true label of every example (exact equality).
* DLG / iDLG: the reconstruction lies within the distance of the truth that
  its own final matching loss implies (a bound derived from the first layer,
  below), and the attacks converge on digits below the official code's
  threshold (1e-6).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gradlab import data, gradstats, models, privacy

EPS32 = float(np.finfo(np.float32).eps)
C = 10


def _soft_ce(model):
  def loss(params, batch):
    logits = model.apply(params, batch["x"])
    return jnp.mean(-jnp.sum(batch["y"] * jax.nn.log_softmax(logits), axis=-1))

  return loss


@pytest.fixture(scope="module")
def digits():
  ds = data.load_dataset("digits")
  x = np.asarray(ds.x_train[:16], np.float32).reshape(16, -1)
  return x, np.asarray(ds.y_train[:16])


@pytest.fixture(scope="module")
def analytic(digits):
  """Per-example gradients of a random 3-layer MLP (ReLU and tanh), in one program."""
  x, y = digits
  out = {}
  for act in ("relu", "tanh"):
    model = models.MLP((24, 16, C), activation=act)
    loss = _soft_ce(model)
    params = model.init(jax.random.key(1), x[:1])
    batch = {"x": jnp.asarray(x), "y": jax.nn.one_hot(y, C)}

    @jax.jit
    def run(params, batch, loss=loss):
      pe = gradstats.per_example_grads(loss, params, batch)["params"]
      d0 = pe["dense_0"]
      rec = {
        m: jax.vmap(lambda k, b, m=m: privacy.dense_input_from_gradient(k, b, method=m))(
          d0["kernel"], d0["bias"]
        )
        for m in privacy.DENSE_METHODS
      }
      last = pe["dense_2"]
      labels = {
        "kernel": jax.vmap(privacy.idlg_label)(last["kernel"]),
        "bias": jax.vmap(privacy.idlg_label)(last["bias"]),
      }
      # a batch of the first three: the mean gradient's ratio
      g3 = jax.grad(loss)(params, jax.tree.map(lambda a: a[:3], batch))["params"]["dense_0"]
      batch_rec = privacy.dense_input_from_gradient(g3["kernel"], g3["bias"])
      return rec, labels, d0["bias"], batch_rec, g3["bias"]

    out[act] = jax.device_get(run(params, batch))
  return out


@pytest.mark.parametrize("act", ["relu", "tanh"])
def test_dense_input_is_the_example_to_float32_rounding(digits, analytic, act):
  x, _ = digits
  rec, _, bias, _, _ = analytic[act]
  # largest_row: x * g_j rounded in the backward pass, then divided by g_j: two
  # roundings, at most 2 ulps of each entry (+ eps^2)
  np.testing.assert_array_less(np.abs(rec["largest_row"] - x), 2.0 * EPS32 * np.abs(x) + 1e-30)
  # least squares: dK db / ||db||^2, two n_out-term sums and the division:
  # (2 n_out + 3) ulps of |x|
  n_out = bias.shape[-1]
  tol = (2 * n_out + 3) * EPS32 * np.abs(x) + 1e-30
  np.testing.assert_array_less(np.abs(rec["least_squares"] - x), tol)


def test_dense_input_of_a_batch_is_the_bias_gradient_weighted_mean(digits, analytic):
  x, _ = digits
  _, _, bias, batch_rec, batch_bias = analytic["tanh"]
  j = int(np.argmax(np.abs(batch_bias)))
  w = bias[:3, j].astype(np.float64)
  expected = (w[:, None] * x[:3]).sum(0) / w.sum()
  # float32 sums of 3 terms in the gradient, cancellation measured by sum|w_i x_i| / |sum w_i|
  # (4 ulps of each term for the sum and the division)
  tol = 4 * 3 * EPS32 * (np.abs(w[:, None] * x[:3]).sum(0) + np.abs(expected) * np.abs(w).sum())
  np.testing.assert_array_less(np.abs(batch_rec - expected), tol / abs(w.sum()) + 1e-30)
  assert np.max(np.abs(batch_rec - x[0])) > 1e-2  # a mixture, not one of the examples


def test_idlg_label_is_the_true_label(digits, analytic):
  _, y = digits
  # the bias rule holds for any activation; the official kernel rule needs
  # non-negative inputs to the last layer (ReLU)
  for act in ("relu", "tanh"):
    np.testing.assert_array_equal(analytic[act][1]["bias"], y)
  np.testing.assert_array_equal(analytic["relu"][1]["kernel"], y)


def _distance_bound(matching_loss, x, true_bias_grad, num_params, grad_norm):
  """||x' - x|| <= r (1 + ||x||) / (|db_j| - r) at j = argmax |db_j|, r = sqrt(D) + rounding.

  From the first layer alone: D >= ||x' db'^T - x db^T||^2 + ||db' - db||^2, so
  |db'_j - db_j| <= r and ||x' db'_j - x db_j|| <= r; then
  ||x' - x|| |db'_j| <= r + ||x|| r and |db'_j| >= |db_j| - r. The rounding term is
  one float32 ulp per gradient entry: eps sqrt(P) ||g||.
  """
  r = np.sqrt(matching_loss) + EPS32 * np.sqrt(num_params) * grad_norm
  dj = np.max(np.abs(true_bias_grad))
  assert dj > r
  return r * (1 + np.linalg.norm(x)) / (dj - r)


def test_dlg_and_idlg_recover_digits_within_the_bound_their_loss_implies(digits):
  x, y = digits
  model = models.MLP((32, C), activation="tanh")  # DLG needs a twice-differentiable model
  loss = _soft_ce(model)
  xs, ys = jnp.asarray(x[:2, None]), jax.nn.one_hot(y[:2], C)[:, None]
  params = model.init(jax.random.key(0), xs[0])

  @jax.jit
  def attack(xs, ys, keys):
    grads = jax.vmap(lambda a, b: jax.grad(loss)(params, {"x": a, "y": b}))(xs, ys)
    dlg = jax.vmap(
      lambda g, k: privacy.gradient_inversion(
        loss, params, g, k, x_shape=(1, 64), num_classes=C, num_steps=150, num_restarts=3
      )
    )(grads, keys)
    # iDLG: the label from the gradient, then x alone (with Adam, the other optimizer)
    labels = jax.vmap(
      lambda g: jax.nn.one_hot(privacy.idlg_label(g["params"]["dense_1"]["bias"]), C)
    )(grads)
    idlg = jax.vmap(
      lambda g, k, lab: privacy.gradient_inversion(
        loss, params, g, k, x_shape=(1, 64), labels=lab[None], num_steps=300,
        optimizer="adam", learning_rate=0.05,
      )
    )(grads, keys, labels)  # fmt: skip
    return grads, dlg, idlg

  grads, dlg, idlg = jax.device_get(attack(xs, ys, jax.random.split(jax.random.key(1), 2)))
  num_params = sum(np.size(g) // 2 for g in jax.tree.leaves(grads))
  for name, res in (("dlg", dlg), ("idlg", idlg)):
    for i in range(2):
      g = jax.tree.map(lambda a: a[i], grads)
      gnorm = np.sqrt(sum(np.sum(np.square(a)) for a in jax.tree.leaves(g)))
      bound = _distance_bound(
        float(res.matching_loss[i]), x[i], g["params"]["dense_0"]["bias"], num_params, gnorm
      )
      assert np.linalg.norm(res.x[i, 0] - x[i]) <= bound, (name, i)
      # converged below the official code's stopping threshold, with the right label
      assert res.matching_loss[i] < 1e-6, (name, i, res.matching_loss[i])
      assert int(np.argmax(res.label[i, 0])) == int(y[i]), (name, i)
      assert res.losses.shape == (2, 150 if name == "dlg" else 300)
      assert res.losses[i, 0] > 1e3 * res.matching_loss[i]


def test_psnr_of_a_known_error():
  ref = jnp.linspace(0.0, 1.0, 64)
  # MSE 0.01 on data range 1: 20 dB (float32 rounding of the log: a few ulps of 20)
  assert abs(float(privacy.psnr(ref + 0.1, ref)) - 20.0) < 1e-4
  assert abs(float(privacy.psnr(2 * (ref + 0.1), 2 * ref, data_range=2.0)) - 20.0) < 1e-4


def _params():
  return {"w": jnp.zeros((3, 2)), "b": jnp.zeros(2)}


def _loss(params, batch):
  return jnp.sum((batch["x"] @ params["w"] + params["b"]) * batch["y"])


@pytest.mark.parametrize(
  "kwargs, message",
  [
    (dict(x_shape=(), num_steps=5, num_classes=2), "x_shape"),
    (dict(x_shape=(1, 0), num_steps=5, num_classes=2), "x_shape"),
    (dict(x_shape=(1, 3), num_steps=0, num_classes=2), "num_steps"),
    (dict(x_shape=(1, 3), num_steps=5, num_classes=2, num_restarts=0), "num_restarts"),
    (dict(x_shape=(1, 3), num_steps=5, num_classes=2, optimizer="sgd"), "optimizer"),
    (dict(x_shape=(1, 3), num_steps=5), "num_classes"),
    (dict(x_shape=(1, 3), num_steps=5, num_classes=1), "num_classes"),
    (dict(x_shape=(1, 3), num_steps=5, labels=jnp.ones((2, 2)) / 2), "labels"),
    (dict(x_shape=(1, 3), num_steps=5, labels=jnp.full((1, 2), 2.0)), "labels"),
    (dict(x_shape=(1, 3), num_steps=5, num_classes=2, optimizer="adam", learning_rate=-1.0),
     "learning_rate"),
  ],
)  # fmt: skip
def test_gradient_inversion_refuses_bad_arguments(kwargs, message):
  p = _params()
  with pytest.raises(ValueError, match=f"^{message}"):
    privacy.gradient_inversion(_loss, p, p, jax.random.key(0), **kwargs)


def test_bad_shared_grad_key_and_layer_gradients_are_refused():
  p = _params()
  with pytest.raises(ValueError, match="^shared_grad"):
    privacy.gradient_inversion(
      _loss, p, {"w": p["w"]}, jax.random.key(0), x_shape=(1, 3), num_steps=1, num_classes=2
    )
  with pytest.raises(ValueError, match="^shared_grad"):
    privacy.gradient_inversion(
      _loss, p, {"w": p["w"], "b": jnp.zeros(3)}, jax.random.key(0), x_shape=(1, 3),
      num_steps=1, num_classes=2,
    )  # fmt: skip
  with pytest.raises(ValueError, match="^key"):
    privacy.gradient_inversion(_loss, p, p, 0, x_shape=(1, 3), num_steps=1, num_classes=2)
  with pytest.raises(ValueError, match="^kernel_grad"):
    privacy.dense_input_from_gradient(jnp.zeros(3), jnp.zeros(3))
  with pytest.raises(ValueError, match="^bias_grad"):
    privacy.dense_input_from_gradient(jnp.zeros((3, 2)), jnp.zeros(3))
  with pytest.raises(ValueError, match="^method"):
    privacy.dense_input_from_gradient(jnp.zeros((3, 2)), jnp.zeros(2), method="mean")
  with pytest.raises(ValueError, match="^last_layer_grad"):
    privacy.idlg_label(jnp.zeros((2, 3, 4)))
  with pytest.raises(ValueError, match="^x"):
    privacy.psnr(jnp.zeros(3), jnp.zeros(4))
