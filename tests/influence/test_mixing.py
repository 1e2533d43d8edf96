"""DoGE / DGA domain weights against the official update and a closed-form fixed point.

Truths: (1) three updates against a NumPy line-by-line replay of the official
DoGE update (github.com/Olivia-fsm/DoGE, ``src/trainer.py``,
``DoGETrainer.update_domain_weights``), with the score clip active, for
targets that are the training domains (the diagonal left out) and for a
separate target. (2) On quadratic domains ``L_k = |theta - c_k|^2 / 2`` with a
target centred at ``sum_k alpha_k c_k``, the fixed point derived in
``gradlab/influence/mixing.py``: ``(w, theta) = (alpha, c_t)``, stationary
under every variant, and reached by the joint dynamics.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gradlab import influence as gi


def _doge_reference(dw, avg_dw, steps, train_mat, tgt_mat, same, lr_t, mu, dw_min, dw_max, eps):
  """The official update, line by line (torch ops as NumPy)."""
  scores_mat = train_mat @ tgt_mat.T
  if same:
    scores = lr_t * (scores_mat.sum(axis=-1) - np.diag(scores_mat))
  else:
    scores = lr_t * scores_mat.sum(axis=-1)
  avg_norm = np.linalg.norm(train_mat, axis=-1).mean()
  scores = scores / (avg_norm + 1e-6)
  scores = np.clip(scores, lr_t * dw_min, lr_t * dw_max)
  log_dw_new = np.log(dw) + scores / mu
  dw_new = np.exp(log_dw_new - log_dw_new.max())
  dw_new = dw_new / dw_new.sum()
  dw_new = (1 - eps) * dw_new + eps / len(dw_new)
  avg_dw = avg_dw + dw_new
  steps += 1
  return dw_new, avg_dw, steps


@pytest.mark.parametrize("same", [True, False])
def test_three_updates_replay_the_official_doge_update(same):
  rng = np.random.default_rng(0)
  k, lr_t, mu, eps = 4, 2e-3, 0.05, 0.01
  update = jax.jit(gi.dga_update, static_argnames=("normalize", "score_range", "exclude_self"))
  state = gi.mixing_init(k)
  dw, avg, steps = np.full(k, 1 / k), np.zeros(k), 0
  clipped = 0
  for t in range(3):
    grads = {"w": rng.normal(size=(k, 3, 2)), "b": rng.normal(size=(k, 2))}
    grads["w"][0] += 2.0 * t  # a dominant, aligned domain: the upper clip bites
    grads = jax.tree.map(lambda a: a.astype(np.float32), grads)
    target = grads if same else jax.tree.map(lambda a: a[:2] + 0.5, grads)
    flat = lambda g: np.concatenate([g["w"].reshape(len(g["b"]), -1), g["b"]], 1).astype(float)
    raw = flat(grads) @ flat(target).T
    s = raw.sum(1) - (np.diag(raw) if same else 0)
    s = s / (np.linalg.norm(flat(grads), axis=1).mean() + 1e-6)
    clipped += int(np.sum((s < 0) | (s > 5)))
    dw, avg, steps = _doge_reference(dw, avg, steps, flat(grads), flat(target), same, lr_t, mu,
                                     0.0, 5.0, eps)  # fmt: skip
    state = update(state, grads, target, step_size=lr_t / mu, normalize=True,
                   score_range=(0.0, 5.0), smoothing=eps, exclude_self=same)  # fmt: skip
    # float32 scores of O(10) through exp(lr/mu * s): ~10 ulps relative
    np.testing.assert_allclose(state.weights, dw, rtol=2e-6)
    np.testing.assert_allclose(state.average, avg / steps, rtol=2e-6)
  assert int(state.count) == 3 and clipped > 0  # the clip was exercised (both sides here)
  mixed = gi.mixed_gradient(state.weights, grads)
  np.testing.assert_allclose(mixed["b"], dw @ np.asarray(grads["b"], float), rtol=1e-5)


C = jnp.array([[0.0, 0.0], [2.0, 0.0], [0.0, 2.0]])  # affinely independent centres
ALPHA = jnp.array([0.5, 0.3, 0.2])
CT = ALPHA @ C  # the target's optimum, a known mixture


def _step(state, theta, *, eta=0.5, lr=0.5, **kw):
  g = theta - C  # grad L_k for L_k = |theta - c_k|^2 / 2
  state = gi.dga_update(state, g, (theta - CT)[None], step_size=eta, **kw)
  return state, theta - lr * gi.mixed_gradient(state.weights, g)


@pytest.mark.parametrize(
  "kw", [{}, dict(normalize=True, score_range=(0.0, 5.0), smoothing=0.0), dict(ema=0.3)]
)
def test_the_closed_form_fixed_point_is_stationary(kw):
  state, theta = jax.jit(lambda s, t: _step(s, t, **kw))(gi.mixing_init(3, weights=ALPHA), CT)
  # at theta = c_t the target's gradient is 0, every score is 0: softmax(log alpha) = alpha
  np.testing.assert_allclose(state.weights, ALPHA, rtol=3e-7)
  np.testing.assert_allclose(theta, CT, atol=3e-7)


def test_dga_dynamics_reach_the_fixed_point():
  def f(z):
    state = gi.MixingState(z[:3], jnp.zeros(3), jnp.zeros((), jnp.int32))
    state, theta = _step(state, z[3:])
    return jnp.concatenate([state.weights, theta])

  @jax.jit
  def run():
    (state, theta), _ = jax.lax.scan(
      lambda c, _: (_step(*c), None), (gi.mixing_init(3), jnp.zeros(2)), None, 200
    )
    jac = jax.jacfwd(f)(jnp.concatenate([ALPHA, CT]))
    return state.weights, theta, jac

  w, theta, jac = run()
  rho = float(np.max(np.abs(np.linalg.eigvals(np.asarray(jac, np.float64)))))
  assert rho < 0.9  # the linearized map contracts (0.707 here)
  # rho^200 of the O(1) start is ~1e-30; what is left is float32 rounding, a few ulps
  # per step, accumulated through the contraction as at most (8 ulps) / (1 - rho)
  tol = 8 * np.finfo(np.float32).eps / (1 - rho)
  np.testing.assert_allclose(w, ALPHA, atol=tol)
  np.testing.assert_allclose(theta, CT, atol=tol)


@pytest.mark.parametrize(
  "call, name",
  [
    (lambda: gi.mixing_init(0), "num_domains"),
    (lambda: gi.mixing_init(2, weights=[0.9, 0.3]), "weights"),
    (lambda: gi.dga_update(gi.mixing_init(3), C, C[:1], step_size=0.0), "step_size"),
    (lambda: gi.dga_update(gi.mixing_init(3), C, C[:1], step_size=1.0, ema=1.0), "ema"),
    (lambda: gi.dga_update(gi.mixing_init(2), C, C[:1], step_size=1.0), "domain_grads"),
    (lambda: gi.dga_update(gi.mixing_init(3), C, C[:1], step_size=1.0, exclude_self=True),
     "exclude_self"),
    (lambda: gi.alignment_scores(C, jnp.ones((1, 3))), "target_grads"),
    (lambda: gi.dga_update(gi.mixing_init(3), C, C[:1], step_size=1.0, score_range=(1, 0)),
     "score_range"),
    (lambda: gi.mixed_gradient(jnp.ones(2), C), "weights"),
  ],
)  # fmt: skip
def test_bad_input_names_the_argument(call, name):
  with pytest.raises(ValueError, match=f"^{name}"):
    call()
