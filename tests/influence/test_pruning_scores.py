"""EL2N, GraNd and VoG against line-by-line NumPy replays of the official code.

* EL2N and GraNd: mansheej/data_diet, ``data_diet/scores.py`` (``get_lord_error_fn``
  with ``ord=2``: ``norm(softmax(fn(X)) - Y)``; ``get_grad_norm_fn``: the norm of
  the per-example cross-entropy gradient over every parameter) and
  ``scripts/get_mean_score.py`` (the mean over runs). The gradient is written out
  by hand for a one-hidden-layer tanh network.
* VoG: chirag126/VOG, ``train_cifar/main.py`` (``mean_grad = sum(temp_grad) /
  len(temp_grad)``, ``np.mean(np.sqrt(sum([(mm - mean_grad)**2 for mm in
  temp_grad]) / len(temp_grad)))``) and ``toy_script.py``'s class normalization
  (``(vog - np.mean(class_vogs)) / np.std(class_vogs)``); the input gradient of the
  true class's logit (``sel_nodes = logits[arange, targets]; sel_nodes.backward``)
  written out by hand for the same network.

Tolerances: the library runs in float32 against float64 references; every
quantity is a short sum (at most 64 terms here) of O(1) terms, so a few float32
ulps (1.2e-7) times the size: rtol 1e-5. The class-normalized VoG divides by a
class's standard deviation, which amplifies that error by the class's mean/std
(the bound is derived beside the assertion).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gradlab import influence as gi

D, H, C, N, K = 6, 5, 3, 12, 4  # inputs, hidden units, classes, examples, checkpoints


def _net(p, x):
  return jnp.tanh(x @ p["w1"] + p["b1"]) @ p["w2"] + p["b2"]


def _params(rng):
  return {
    "w1": rng.normal(size=(D, H)).astype(np.float32),
    "b1": rng.normal(size=H).astype(np.float32) * 0.1,
    "w2": rng.normal(size=(H, C)).astype(np.float32),
    "b2": rng.normal(size=C).astype(np.float32) * 0.1,
  }


@pytest.fixture(scope="module")
def problem():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(N, D)).astype(np.float32)
  y = np.arange(N) % C  # every class has N / C = 4 examples
  runs = [_params(rng) for _ in range(K)]  # K runs (EL2N, GraNd) or K checkpoints (VoG)
  return x, y, runs


# ---- NumPy replays of the official code (float64) ----


def _softmax(z):
  e = np.exp(z - z.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def _one_hot(labels, num_classes):  # data_diet/data.py
  return (labels[:, None] == np.arange(num_classes)).astype(np.float64)


def _forward(p, x):
  p = {k: np.asarray(v, np.float64) for k, v in p.items()}
  h = np.tanh(x @ p["w1"] + p["b1"])
  return p, h, h @ p["w2"] + p["b2"]


def _lord_error(p, x, y):  # get_lord_error_fn(fn, params, state, 2)
  _, _, logits = _forward(p, x)
  errors = _softmax(logits) - _one_hot(y, C)
  return np.linalg.norm(errors, ord=2, axis=-1)


def _grad_norm(p, x, y):  # get_grad_norm_fn: |d cross_entropy_loss / d params| per example
  p, h, logits = _forward(p, x)
  out = []
  for i in range(len(x)):
    dz = _softmax(logits[i]) - _one_hot(y[i : i + 1], C)[0]  # d CE / d logits
    dw2, db2 = np.outer(h[i], dz), dz
    dpre = (p["w2"] @ dz) * (1 - h[i] ** 2)
    dw1, db1 = np.outer(x[i], dpre), dpre
    out.append(np.linalg.norm(np.concatenate([g.ravel() for g in (dw1, db1, dw2, db2)])))
  return np.array(out)


def _mean_score(per_run):  # scripts/get_mean_score.py
  return np.stack(per_run).mean(0)


def _logit_input_gradient(p, x, y):  # d logits[i, y_i] / d x_i
  p, h, _ = _forward(p, x)
  return np.stack([p["w1"] @ (p["w2"][:, y[i]] * (1 - h[i] ** 2)) for i in range(len(x))])


def _vog(gradient_stats, labels, normalize):  # train_cifar/main.py, toy_script.py
  var_gradient_stats, class_variances_stats = [], [[] for _ in range(C)]
  for ii in range(len(labels)):
    temp_grad = gradient_stats[ii]
    mean_grad = sum(temp_grad) / len(temp_grad)
    v = np.mean(np.sqrt(sum([(mm - mean_grad) ** 2 for mm in temp_grad]) / len(temp_grad)))
    var_gradient_stats.append(v)
    class_variances_stats[labels[ii]].append(v)
  if not normalize:
    return np.array(var_gradient_stats)
  normalized_vog = []
  for ii in range(len(labels)):
    mu = np.mean(class_variances_stats[labels[ii]])
    std = np.std(class_variances_stats[labels[ii]])
    normalized_vog.append((var_gradient_stats[ii] - mu) / std)
  return np.array(normalized_vog)


# ---- tests ----


def _loss(p, e):
  return -jax.nn.log_softmax(_net(p, e["x"]))[e["y"]]


@pytest.fixture(scope="module")
def library_scores(problem):
  """Every library score in one compiled program (one compile, not dozens)."""
  x, y, runs = problem

  @jax.jit
  def scores(x, y, runs):
    examples = {"x": x, "y": y}
    el2n = jnp.stack([gi.el2n(_net(p, x), y) for p in runs]).mean(0)
    grand = jnp.stack([gi.grand(_loss, p, examples) for p in runs]).mean(0)
    score_fn = lambda p, xi, yi: _net(p, xi)[yi]
    g = gi.input_gradients(score_fn, runs, x, y)
    return el2n, grand, g, gi.vog(g), gi.vog(g, y, num_classes=C)

  return jax.device_get(scores(jnp.asarray(x), jnp.asarray(y), runs))


def test_el2n_and_grand_averaged_over_runs_match_data_diet(problem, library_scores):
  x, y, runs = problem
  el2n, grand = library_scores[:2]
  x64 = x.astype(np.float64)
  np.testing.assert_allclose(el2n, _mean_score([_lord_error(p, x64, y) for p in runs]), rtol=1e-5)
  np.testing.assert_allclose(grand, _mean_score([_grad_norm(p, x64, y) for p in runs]), rtol=1e-5)


def test_vog_matches_the_official_code_raw_and_class_normalized(problem, library_scores):
  x, y, runs = problem
  g, raw, normalized = library_scores[2:]
  x64 = x.astype(np.float64)
  per_ckpt = [_logit_input_gradient(p, x64, y) for p in runs]  # K x [N, D]
  np.testing.assert_allclose(g, np.stack(per_ckpt), rtol=1e-5, atol=1e-6)
  gradient_stats = {ii: [per_ckpt[k][ii] for k in range(K)] for ii in range(N)}
  ref_raw = _vog(gradient_stats, y, normalize=False)
  np.testing.assert_allclose(raw, ref_raw, rtol=1e-5)
  # z = (v - mu) / sigma with every v within rtol r = 1e-5 (asserted above): v - mu moves
  # by <= 2 r vmax and sigma (1-Lipschitz in the max norm) by <= 2 r vmax, so to first
  # order |dz| <= 2 r (1 + |z|) vmax / sigma, vmax and sigma those of the class.
  ref = _vog(gradient_stats, y, normalize=True)
  ratio = np.array([ref_raw[y == c].max() / ref_raw[y == c].std() for c in range(C)])[y]
  np.testing.assert_array_less(np.abs(normalized - ref), 2e-5 * (1 + np.abs(ref)) * ratio)
  # The standard deviation, not the variance: the two differ on these draws.
  assert not np.allclose(raw, np.var(np.stack(per_ckpt), 0).mean(1), rtol=1e-2)


def test_vog_reads_num_classes_from_concrete_labels_and_refuses_bad_input(library_scores):
  g = library_scores[2]
  y = np.arange(N) % C
  np.testing.assert_allclose(gi.vog(g, y), library_scores[4], rtol=1e-6)
  with pytest.raises(ValueError, match="^input_gradients: "):
    gi.vog(g[:1])
  with pytest.raises(ValueError, match="^labels: "):
    gi.vog(g, y[:-1])
  with pytest.raises(ValueError, match="^labels: "):
    gi.vog(g, y, num_classes=2)  # class 2 is out of range
  with pytest.raises(ValueError, match="^num_classes: "):
    jax.jit(lambda g, y: gi.vog(g, y))(g, y)
  # A class of one example has no spread: its score is 0 (the official code divides 0 by 0).
  lone = np.where(np.arange(N) == 0, C, y)
  assert float(gi.vog(g, lone)[0]) == 0.0
