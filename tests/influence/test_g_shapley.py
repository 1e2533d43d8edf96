"""G-Shapley against exact enumeration of its game.

Truths: (1) ``exact_g_shapley`` averages the credits of all n! orderings of
the order-dependent one-pass SGD game; when the loss is linear in the
parameters the pass's end point depends on the set of examples only, and the
enumeration must equal ``exact_shapley`` (all 2^n subsets) of that set game.
(2) On a logistic problem, where the order matters, Monte-Carlo ``g_shapley``
is within 4 of its own standard errors of the exact enumeration. (3) One
permutation's credits against a NumPy line-by-line replay of the official loop
(github.com/amiratag/DataShapley, ``DShap._g_shap`` over
``ShapNN._one_epoch``), and the official learning-rate choice.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gradlab import influence as gi

N, LR = 6, 0.8


@pytest.fixture(scope="module")
def logistic():
  rng = np.random.default_rng(0)
  xt = rng.normal(size=(N, 2)).astype(np.float32)
  yt = rng.integers(0, 2, N).astype(np.float32)
  xv = rng.normal(size=(16, 2)).astype(np.float32)
  yv = (xv @ np.array([1.0, -1.0]) > 0).astype(np.float32)
  params = {"w": np.array([0.1, 0.2], np.float32), "b": np.float32(0.0)}

  def loss(p, e):
    z = e["x"] @ p["w"] + p["b"]
    return jnp.logaddexp(0.0, z) - e["y"] * z

  def value(p):  # minus the validation cross-entropy (the official metric='xe')
    z = xv @ p["w"] + p["b"]
    return -jnp.mean(jnp.logaddexp(0.0, z) - yv * z)

  return loss, value, params, {"x": xt, "y": yt}, (xt, yt, xv, yv)


def _np_pass(params, data, perm, lr):
  """The official one-epoch loop, batch 1, SGD, then DShap._g_shap's credits."""
  xt, yt, xv, yv = data
  w, b = np.asarray(params["w"], np.float64).copy(), float(params["b"])

  def score():
    z = xv @ w + b
    return -np.mean(np.logaddexp(0, z) - yv * z)

  v0, vals = score(), []
  for i in perm:
    r = 1 / (1 + np.exp(-(xt[i] @ w + b))) - yt[i]  # d loss / d z
    w, b = w - lr * r * xt[i], b - lr * r
    vals.append(score())
  vals = np.array(vals)
  official = np.zeros(N)
  official[1:] += vals[1:]
  official[1:] -= vals[:-1]
  credits = np.zeros(N)
  credits[perm] = official  # official: credits by position, then mapped to examples
  ours = credits.copy()
  ours[perm[0]] = vals[0] - v0  # the first step's credit, which the official code drops
  return ours, credits, vals[-1]


def test_order_free_game_matches_exact_shapley_of_its_set_game():
  """A linear loss ``-a_i . theta``: the pass ends at ``theta0 + lr sum_S a_i`` in any order."""
  rng = np.random.default_rng(1)
  a = rng.normal(size=(5, 3)).astype(np.float32)
  target = rng.normal(size=3).astype(np.float32)
  theta0 = np.zeros(3, np.float32)
  loss = lambda p, e: -(e @ p)
  value = lambda p: -0.5 * jnp.sum((p - target) ** 2)
  exact_g = jax.jit(lambda: gi.exact_g_shapley(loss, theta0, a, value, learning_rate=0.3))()
  exact = gi.exact_shapley(lambda m: value(theta0 + 0.3 * m @ a), 5)
  # float32: values O(1-10), each credit a mean of 120 differences: ~10 ulps of 10
  np.testing.assert_allclose(exact_g, exact, rtol=1e-5, atol=2e-5)


@pytest.fixture(scope="module")
def exact_logistic(logistic):
  loss, value, params, train, _ = logistic
  return np.asarray(
    jax.jit(lambda: gi.exact_g_shapley(loss, params, train, value, learning_rate=LR))()
  )


def test_the_logistic_game_depends_on_the_order(logistic):
  loss, value, params, train, data = logistic
  ends = [_np_pass(params, data, perm, LR)[2] for perm in (np.arange(N), np.arange(N)[::-1])]
  assert abs(ends[0] - ends[1]) > 1e-3, ends  # so the enumeration is not a set game's


def test_exact_enumeration_against_numpy_over_all_orderings(logistic, exact_logistic):
  import itertools

  _, _, params, _, data = logistic
  ref = np.mean([_np_pass(params, data, np.array(p), LR)[0]
                 for p in itertools.permutations(range(N))], axis=0)  # fmt: skip
  # float32 SGD against float64: 6 steps, values O(1): ~1e-6 per credit
  np.testing.assert_allclose(exact_logistic, ref, atol=2e-5)


def test_monte_carlo_g_shapley_is_within_its_standard_errors_of_the_enumeration(
  logistic, exact_logistic
):
  loss, value, params, train, _ = logistic
  est = jax.jit(
    lambda k: gi.g_shapley(loss, params, train, value, k, num_permutations=400, learning_rate=LR)
  )(jax.random.key(0))
  assert int(est.evaluations) == 400 * N + 1
  z = (np.asarray(est.values) - exact_logistic) / np.asarray(est.stderr)
  # 4 standard errors per example: each fails by chance ~6e-5, six examples ~4e-4
  assert np.all(np.abs(z) < 4), z
  assert np.all(np.asarray(est.stderr) > 0)


def test_two_permutations_replay_the_official_loop(logistic):
  loss, value, params, train, data = logistic
  key = jax.random.key(7)
  est = gi.g_shapley(loss, params, train, value, key, num_permutations=2, learning_rate=LR)
  perms = [np.asarray(jax.random.permutation(k, N)) for k in jax.random.split(key, 2)]
  ours = [_np_pass(params, data, p, LR) for p in perms]
  np.testing.assert_allclose(est.values, np.mean([o[0] for o in ours], 0), atol=1e-5)
  # the official credits differ only in the first example of each pass
  for p, (mine, official, _) in zip(perms, ours):
    np.testing.assert_allclose(np.delete(mine, p[0]), np.delete(official, p[0]))


def test_truncation_stops_the_pass_and_saves_evaluations(logistic):
  loss, value, params, train, _ = logistic
  kw = dict(num_permutations=3, learning_rate=LR)
  # every prefix is within 1e9 x |v_ref| of v_ref: each pass stops before its first step
  est = gi.g_shapley(loss, params, train, value, jax.random.key(0), tolerance=1e9, **kw)
  np.testing.assert_array_equal(est.values, 0.0)
  assert int(est.evaluations) == 1 + N + 1  # v(theta0) and the reference pass only


def test_learning_rate_choice_is_the_official_mean_minus_std(logistic):
  loss, value, params, train, data = logistic
  key, candidates = jax.random.key(3), (0.05, 0.8, 3.0)
  chosen = gi.g_shapley_learning_rate(loss, params, train, value, key, candidates=candidates,
                                      repeats=4)  # fmt: skip
  perms = [np.asarray(jax.random.permutation(k, N)) for k in jax.random.split(key, 4)]
  score = []
  for lr in candidates:
    v = [_np_pass(params, data, p, lr)[2] for p in perms]
    score.append(np.mean(v) - np.std(v))
  assert np.isclose(float(chosen), candidates[int(np.argmax(score))]), (chosen, score)
  assert len(set(np.round(score, 3))) == 3  # distinct scores, so the argmax is meaningful


@pytest.mark.parametrize(
  "kwargs, name",
  [(dict(num_permutations=1, learning_rate=0.1), "num_permutations"),
   (dict(num_permutations=2, learning_rate=0.0), "learning_rate"),
   (dict(num_permutations=2, learning_rate=0.1, tolerance=-1.0), "tolerance")],
)  # fmt: skip
def test_bad_input_names_the_argument(logistic, kwargs, name):
  loss, value, params, train, _ = logistic
  with pytest.raises(ValueError, match=f"^{name}"):
    gi.g_shapley(loss, params, train, value, jax.random.key(0), **kwargs)
  with pytest.raises(ValueError, match="^train"):
    gi.exact_g_shapley(loss, params, {"x": jnp.ones((9, 2)), "y": jnp.ones(9)}, value,
                       learning_rate=0.1)  # fmt: skip
