"""Schedule refinement against the official code, replayed line by line in NumPy.

The replay (``_official_schedule``) is facebookresearch/adaptive_scheduling's
``find_schedule.py::find_closed_form_schedule``, the median-filter recipe of its
``README.md`` and the l1 / l2 weights and peak normalization of ``visual.py``.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from scipy.ndimage import median_filter

from gradlab import transforms

EPS32 = float(np.finfo(np.float32).eps)


def _find_closed_form_schedule(G, D=1, weights=None):
  """find_schedule.py::find_closed_form_schedule, verbatim."""
  T = len(G)
  sched = np.zeros(T)
  G = np.array(G)
  if weights is None:
    weights = G**-2.0
  tail_sums = np.flip(np.cumsum(np.flip(weights)))
  for t in range(T):
    if t == T - 1:
      sched[t] = 0
    else:
      sched[t] = weights[t] * tail_sums[t + 1] / tail_sums[-1]
  return sched


def _official_schedule(gnorms, *, l1, sigma2):
  """visual.py's pipeline for a sequence of nvals = len(gnorms) points (no resampling)."""
  gnorms = np.asarray(gnorms, np.float64)
  nvals = len(gnorms)
  filter_width = 2 * (int(sigma2 * nvals) // 2) + 1
  pad = 2 * filter_width
  smoothed = median_filter(
    np.pad(gnorms, (0, pad), mode="reflect"), size=filter_width, mode="nearest"
  )[:-pad]
  weights = smoothed**-1 if l1 else smoothed**-2
  sched = _find_closed_form_schedule(smoothed, weights=weights)
  return sched / np.max(sched)


@pytest.mark.parametrize("norm", ["l2", "l1"])
def test_constant_norms_give_linear_decay_exactly(norm):
  # the paper's worst-case optimum: eta_t = (T - 1 - t) / (T - 1), optax's linear decay
  T = 97
  eta = transforms.refined_schedule(jnp.full((T,), 3.7), norm=norm)
  linear = optax.linear_schedule(1.0, 0.0, T - 1)(jnp.arange(T))
  # constant weights are exactly 1 after dividing by the minimum, their tail sums exact
  # integers: only the final division and optax's own arithmetic round (a few float32 ulps)
  np.testing.assert_allclose(eta, linear, rtol=0, atol=4 * EPS32)
  assert eta[-1] == 0 and eta[0] == 1


@pytest.mark.parametrize("norm, smoothing", [("l2", 0.1), ("l1", 0.1), ("l2", 0.0), ("l1", 0.37)])
def test_matches_the_official_replay_on_random_norms(norm, smoothing):
  rng = np.random.default_rng(0)
  T = 300
  # noisy norms with a decaying trend and spikes, as a training run records them
  g = np.exp(rng.normal(0, 0.5, T)) * np.linspace(5, 1, T) + 10 * (rng.random(T) < 0.02)
  g = g.astype(np.float32)
  ref = _official_schedule(g, l1=norm == "l1", sigma2=smoothing)
  eta = np.asarray(transforms.refined_schedule(g, norm=norm, smoothing=smoothing))
  # the median picks an input exactly; float32 then rounds the power, each product and a
  # cumsum of T terms (relative error <= T * eps), plus the final division
  np.testing.assert_allclose(eta, ref, rtol=(T + 8) * EPS32, atol=1e-30)
  # jit gives the same schedule (only XLA's fusion may reorder the float32 rounding)
  jitted = jax.jit(functools.partial(transforms.refined_schedule, norm=norm, smoothing=smoothing))
  np.testing.assert_allclose(jitted(g), ref, rtol=(T + 8) * EPS32, atol=1e-30)


def test_theorems_positivity_peak_scale_invariance_and_monotone_norms():
  rng = np.random.default_rng(1)
  g = np.exp(rng.normal(0, 1, 200)).astype(np.float32)
  for norm in transforms.schedules.NORMS:
    eta = np.asarray(transforms.refined_schedule(g, norm=norm))
    # w > 0 and tail sums > 0: every step but the last has a positive rate; peak 1
    assert np.all(eta[:-1] > 0) and eta[-1] == 0 and eta.max() == 1
    # G -> cG scales every w_t by c^-p: the normalized schedule is unchanged
    scaled = np.asarray(transforms.refined_schedule(g * 1024.0, norm=norm))
    np.testing.assert_allclose(scaled, eta, rtol=4 * EPS32)  # 1024 is exact in float32
    # unsmoothed non-decreasing norms: w and its tail sums both non-increasing, so is eta
    up = np.asarray(transforms.refined_schedule(np.sort(g), norm=norm, smoothing=0.0))
    assert np.all(np.diff(up) <= 0)


def test_optax_schedule_scales_resamples_and_holds_the_end_under_jit():
  eta = transforms.refined_schedule(jnp.linspace(2.0, 1.0, 50))
  sched = transforms.refined_lr_schedule(eta, learning_rate=0.3)
  steps = jnp.arange(60)
  lrs = jax.jit(jax.vmap(sched))(steps)
  np.testing.assert_allclose(lrs[:50], 0.3 * np.asarray(eta, np.float64), rtol=2 * EPS32)
  assert np.all(lrs[50:] == lrs[49]) and lrs[49] == 0
  # resampled to another length: linear interpolation over the run's fraction
  long = transforms.refined_lr_schedule(eta, learning_rate=1.0, num_steps=99)
  ref = np.interp(np.linspace(0, 1, 99), np.linspace(0, 1, 50), np.asarray(eta, np.float64))
  np.testing.assert_allclose(jax.vmap(long)(jnp.arange(99)), ref, rtol=2 * EPS32, atol=1e-7)
  # and it drives an optax optimizer
  opt = optax.sgd(sched)
  state = opt.init(jnp.zeros(2))
  upd, _ = opt.update(jnp.ones(2), state)
  np.testing.assert_allclose(upd, -float(lrs[0]) * np.ones(2), rtol=2 * EPS32)


def test_lr_table_in_the_state_equals_optax_adam_with_the_schedule():
  # optax.adam(schedule) is chain(scale_by_adam, scale_by_learning_rate(schedule)): the
  # same float32 operations, so the parameters agree bit for bit, past the table's end too
  eta = transforms.refined_schedule(jnp.linspace(3.0, 1.0, 20))
  sched = transforms.refined_lr_schedule(eta, learning_rate=0.1)
  table = jax.vmap(sched)(jnp.arange(20))
  ref_opt = optax.adam(sched)
  opt = optax.chain(optax.scale_by_adam(), transforms.scale_by_lr_table(table))
  grads = jax.random.normal(jax.random.key(0), (25, 3))
  p_ref = p = jnp.ones(3)
  s_ref, s = ref_opt.init(p), opt.init(p)
  step = jax.jit(lambda g, s, p: opt.update(g, s, p))
  ref_step = jax.jit(ref_opt.update)
  for g in grads:
    u_ref, s_ref = ref_step(g, s_ref, p_ref)
    u, s = step(g, s, p)
    p_ref, p = optax.apply_updates(p_ref, u_ref), optax.apply_updates(p, u)
  np.testing.assert_array_equal(p, p_ref)
  with pytest.raises(ValueError, match="^learning_rates: expected finite values >= 0$"):
    transforms.scale_by_lr_table([0.1, -1.0])


@pytest.mark.parametrize(
  "kwargs, message",
  [
    (dict(grad_norms=[]), "grad_norms: expected a 1-D sequence of at least 2"),
    (dict(grad_norms=[1.0]), "grad_norms: expected a 1-D sequence of at least 2"),
    (dict(grad_norms=[[1.0, 2.0]]), "grad_norms: expected a 1-D sequence"),
    (dict(grad_norms=[1.0, np.nan, 2.0]), "grad_norms: expected finite values"),
    (dict(grad_norms=[1.0, np.inf, 2.0]), "grad_norms: expected finite values"),
    (dict(grad_norms=[1.0, 0.0, 2.0]), "grad_norms: expected norms > 0"),
    (dict(grad_norms=[1.0, -1.0, 2.0]), "grad_norms: expected norms > 0"),
    (dict(grad_norms=[1.0, 2.0], norm="linf"), "norm: expected one of"),
    (dict(grad_norms=[1.0, 2.0], smoothing=-0.1), "smoothing: expected a number in [0, 1]"),
  ],
)
def test_bad_input_is_refused_in_one_line(kwargs, message):
  with pytest.raises(ValueError) as e:
    transforms.refined_schedule(**kwargs)
  assert str(e.value).startswith(message) and "\n" not in str(e.value)


@pytest.mark.parametrize(
  "kwargs, message",
  [
    (dict(multipliers=[], learning_rate=0.1), "multipliers: expected a non-empty"),
    (dict(multipliers=[1.0, np.nan], learning_rate=0.1), "multipliers: expected finite"),
    (dict(multipliers=[1.0, -0.5], learning_rate=0.1), "multipliers: expected finite"),
    (dict(multipliers=[1.0, 0.0], learning_rate=0.0), "learning_rate: expected a finite"),
    (dict(multipliers=[1.0, 0.0], learning_rate=0.1, num_steps=0), "num_steps: expected"),
  ],
)
def test_bad_schedule_input_is_refused_in_one_line(kwargs, message):
  with pytest.raises(ValueError) as e:
    transforms.refined_lr_schedule(**kwargs)
  assert str(e.value).startswith(message) and "\n" not in str(e.value)
