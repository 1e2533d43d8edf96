"""skip_spikes against a NumPy replay of OLMo-core's skip-step rule, and its state."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from gradlab import transforms
from tests.transforms import references


def _series(rng, steps, loss_spikes, norm_spikes):
  """Losses near 2 and gradients of norm ~sqrt(8), with spikes far outside both."""
  losses = (2.0 + 0.1 * rng.normal(size=steps)).astype(np.float32)
  grads = rng.normal(size=(steps, 8)).astype(np.float32)
  losses[list(loss_spikes)] += 5.0
  grads[list(norm_spikes)] *= 30.0
  return losses, grads


@pytest.mark.parametrize(
  "cfg",
  [
    dict(window=8, threshold=3.0, warmup=5, use_grad_norm=True),
    dict(window=40, threshold=6.0, warmup=None, use_grad_norm=True),  # OLMo's default warmup 20
    dict(window=8, threshold=3.0, warmup=9, use_grad_norm=False),
  ],
)
def test_skip_decisions_match_olmo_and_skipped_steps_leave_adam_alone(cfg):
  rng = np.random.default_rng(0)
  steps = 60
  loss_spikes, norm_spikes = (12, 30, 31, 50), (20, 41, 42)
  losses, grads = _series(rng, steps, loss_spikes, norm_spikes)
  ref = references.SkipStepReference(
    rolling_interval_length=cfg["window"], sigma_factor=cfg["threshold"]
  )
  tx = transforms.skip_spikes(optax.adam(0.1), **cfg)
  p = {"w": jnp.zeros(8)}
  state = tx.init(p)
  update = jax.jit(tx.update)
  expected_skips, skips = [], []
  for t in range(steps):
    g = {"w": jnp.asarray(grads[t])}
    ref.set_latest(
      float(losses[t]), float(np.linalg.norm(grads[t])) if cfg["use_grad_norm"] else None
    )
    expected_skips.append(ref.get_step_factor(cfg["warmup"]) == 0.0)
    u, new_state = update(g, state, p, value=jnp.asarray(losses[t]))
    skips.append(bool(new_state.last_skipped))
    same = jax.tree.map(
      lambda a, b: bool(np.array_equal(np.asarray(a), np.asarray(b))),
      new_state.inner_state,
      state.inner_state,
    )
    if skips[-1]:  # bit-identical inner state (Adam's count too) and a zero update
      assert all(jax.tree.leaves(same)), t
      assert not np.any(np.asarray(u["w"])), t
    else:
      assert not all(jax.tree.leaves(same)), t
    p = optax.apply_updates(p, u)
    state = new_state
  # float32 statistics against float64 ones: no decision in these series lies within
  # 0.35% of its threshold, far beyond float32 rounding, so they must agree exactly
  assert skips == expected_skips
  assert int(state.num_skipped) == sum(expected_skips)
  watched = set(loss_spikes) | (set(norm_spikes) if cfg["use_grad_norm"] else set())
  armed_at = (cfg["warmup"] or 20) - 1  # the first step (0-based) that can be skipped
  # the injected spikes after the warmup were skipped (a repeated one may not be:
  # the first of a pair enters the history and widens it)
  assert {t for t in watched if t >= armed_at} & {t for t in range(steps) if skips[t]}
  # and the parameters are those of Adam run on the steps that were kept
  plain, ps = optax.adam(0.1), {"w": jnp.zeros(8)}
  s = plain.init(ps)
  for t in range(steps):
    if not expected_skips[t]:
      u, s = plain.update({"w": jnp.asarray(grads[t])}, s, ps)
      ps = optax.apply_updates(ps, u)
  np.testing.assert_allclose(np.asarray(p["w"]), np.asarray(ps["w"]), rtol=1e-6)  # float32


def test_rolling_statistics_are_the_last_window_values():
  rng = np.random.default_rng(1)
  losses, grads = _series(rng, 13, (), ())
  tx = transforms.skip_spikes(optax.sgd(0.1), window=5, warmup=6)
  p = {"w": jnp.zeros(8)}
  state = tx.init(p)
  update = jax.jit(tx.update)
  for t in range(13):
    _, state = update({"w": jnp.asarray(grads[t])}, state, p, value=jnp.asarray(losses[t]))
  assert int(state.count) == 13
  # the ring buffer holds steps 8..12 (slot t % 5)
  np.testing.assert_array_equal(np.sort(np.asarray(state.losses)), np.sort(losses[8:]))
  np.testing.assert_allclose(
    np.sort(np.asarray(state.grad_norms)), np.sort(np.linalg.norm(grads[8:], axis=1)), rtol=1e-6
  )


def test_nonfinite_loss_leaves_the_whole_state_alone():
  tx = transforms.skip_spikes(optax.adam(0.1), window=4, warmup=3)
  p = {"w": jnp.zeros(3)}
  state = tx.init(p)
  update = jax.jit(tx.update)
  for loss in (1.0, 1.1, 0.9):
    _, state = update({"w": jnp.ones(3)}, state, p, value=jnp.asarray(loss))
  u, new_state = update({"w": jnp.ones(3)}, state, p, value=jnp.asarray(jnp.nan))
  assert not np.any(np.asarray(u["w"]))
  jax.tree.map(
    lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)), new_state, state
  )
  # the history was not poisoned: the next ordinary step is taken
  u, new_state = update({"w": jnp.ones(3)}, new_state, p, value=jnp.asarray(1.0))
  assert np.all(np.asarray(u["w"]) != 0) and not bool(new_state.last_skipped)


def test_threshold_may_be_injected():
  def guarded_sgd(learning_rate, threshold):
    return transforms.skip_spikes(optax.sgd(learning_rate), window=4, threshold=threshold, warmup=3)

  tx = optax.inject_hyperparams(guarded_sgd)(learning_rate=0.1, threshold=1e6)
  p = {"w": jnp.zeros(2)}
  state = tx.init(p)
  update = jax.jit(functools.partial(tx.update, params=p))
  for loss in (1.0, 1.1, 0.9):
    _, state = update({"w": jnp.ones(2)}, state, value=jnp.asarray(loss))
  _, kept = update({"w": jnp.ones(2)}, state, value=jnp.asarray(50.0))
  assert not bool(kept.inner_state.last_skipped)  # a million sigmas: no spike
  state.hyperparams["threshold"] = jnp.asarray(3.0)
  _, skipped = update({"w": jnp.ones(2)}, state, value=jnp.asarray(50.0))
  assert bool(skipped.inner_state.last_skipped)


@pytest.mark.parametrize(
  "call, message",
  [
    (lambda: transforms.skip_spikes(optax.sgd(0.1), window=1), "window"),
    (lambda: transforms.skip_spikes(optax.sgd(0.1), window=8, warmup=10), "warmup"),
    (lambda: transforms.skip_spikes(optax.sgd(0.1), window=8, warmup=2), "warmup"),
    (lambda: transforms.skip_spikes(optax.sgd(0.1), threshold=-1.0), "threshold"),
    (
      lambda: transforms.skip_spikes(optax.sgd(0.1)).update(
        {"w": jnp.ones(2)}, transforms.skip_spikes(optax.sgd(0.1)).init({"w": jnp.ones(2)})
      ),
      "value",
    ),
    (
      lambda: transforms.skip_spikes(optax.sgd(0.1)).update(
        {"w": jnp.ones(2)},
        transforms.skip_spikes(optax.sgd(0.1)).init({"w": jnp.ones(2)}),
        value=jnp.ones(2),
      ),
      "value: expected the scalar loss",
    ),
  ],
)
def test_bad_arguments_get_a_clear_error(call, message):
  with pytest.raises(ValueError, match=message):
    call()
