"""The non-finite policy folded into the transforms' own passes (no lax.cond) skips exactly
as the whole-chain cond did: a zero update, every state (schedules included) as it was."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from gradlab import transforms

OPTIMIZERS = {
  "spam": lambda lr: transforms.spam(lr, weight_decay=0.1),
  "diffgrad": lambda lr: transforms.diffgrad(lr, weight_decay=0.1),
}


@pytest.mark.parametrize("bad", [jnp.nan, jnp.inf])
@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_an_optimizer_with_a_schedule_and_weight_decay_skips_the_whole_chain(name, bad):
  tx = OPTIMIZERS[name](optax.linear_schedule(1e-2, 1e-3, 10))
  params = {"w": jnp.linspace(-1.0, 1.0, 6), "b": jnp.ones(2)}
  good = jax.tree.map(lambda p: 0.1 * p + 0.05, params)
  state = tx.init(params)
  update = jax.jit(tx.update)
  for _ in range(3):
    _, state = update(good, state, params)
  poisoned = {"w": good["w"].at[2].set(bad), "b": good["b"]}
  updates, new_state = update(poisoned, state, params)
  for u in jax.tree.leaves(updates):  # weight decay does not move the parameters either
    np.testing.assert_array_equal(np.asarray(u), 0.0)
  jax.tree.map(  # moments, SPAM's count and the schedule's count, all as they were
    lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)), new_state, state
  )
  # and the guarded run then equals a run that never saw the bad step
  after, _ = update(good, new_state, params)
  ref_state = tx.init(params)
  for _ in range(4):
    ref, ref_state = update(good, ref_state, params)
  jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)), after, ref)


@pytest.mark.parametrize(
  "make",
  [
    lambda: transforms.spike_clip(warmup_steps=2),
    lambda: transforms.per_layer_clip(1.0),
    lambda: transforms.layerwise_normalize(),
  ],
  ids=["spike_clip", "per_layer_clip", "layerwise_normalize"],
)
def test_the_clips_read_the_policy_off_their_norms_and_skip_an_overflowing_norm(make):
  tx = make()
  params = {"w": jnp.ones(4), "b": jnp.ones(2)}
  good = {"w": jnp.asarray([0.5, -1.0, 2.0, 0.1]), "b": jnp.asarray([0.3, 0.2])}
  state = tx.init(params)
  update = jax.jit(tx.update)
  for _ in range(3):
    _, state = update(good, state, params)
  # NaN, Inf, and a finite gradient whose float32 norm overflows: all skipped
  for bad in (jnp.nan, jnp.inf, 3e19):
    poisoned = {"w": good["w"], "b": good["b"].at[1].set(bad)}
    updates, new_state = update(poisoned, state, params)
    for u in jax.tree.leaves(updates):  # every leaf, not only the bad one
      np.testing.assert_array_equal(np.asarray(u), 0.0)
    jax.tree.map(
      lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)), new_state, state
    )
  updates, _ = update(good, state, params)
  assert all(np.any(np.asarray(u) != 0) for u in jax.tree.leaves(updates))
