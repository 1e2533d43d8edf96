"""The train step against a hand-written jit(value_and_grad + optax update)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from gradlab import models, sharding, train


def _problem(batch_size=32, seed=0):
  model = models.MLP((16, 3))
  params = model.init(jax.random.key(seed), jnp.zeros((1, 5)))
  rng = np.random.default_rng(seed)
  batch = {
    "x": rng.normal(size=(batch_size, 5)).astype(np.float32),
    "y": rng.integers(0, 3, size=batch_size).astype(np.int32),
  }

  def loss_fn(p, b, key):
    del key
    logits = model.apply(p, b["x"])
    return optax.softmax_cross_entropy_with_integer_labels(logits, b["y"]).mean(), {
      "accuracy": jnp.mean(jnp.argmax(logits, -1) == b["y"])
    }

  return params, batch, loss_fn


def _reference_steps(loss_fn, optimizer, params, batches):
  opt_state = optimizer.init(params)
  for b in batches:
    grads = jax.grad(lambda p: loss_fn(p, b, None)[0])(params)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)
  return params


def _assert_trees_close(a, b, **tol):
  jax.tree.map(lambda x, y: np.testing.assert_allclose(np.asarray(x), np.asarray(y), **tol), a, b)


@pytest.mark.parametrize("use_mesh", [False, True])
def test_step_equals_the_hand_written_update(use_mesh):
  params, batch, loss_fn = _problem()
  opt = optax.adam(1e-2)
  mesh = sharding.make_mesh() if use_mesh else None
  state = train.TrainState.create(params, opt, jax.random.key(0))
  step = train.make_train_step(loss_fn, opt, mesh=mesh, donate=False)
  b = sharding.shard_batch(batch, mesh) if use_mesh else batch
  for _ in range(3):
    state, metrics = step(state, b)
  expected = _reference_steps(loss_fn, opt, params, [batch] * 3)
  # float32: an 8-way sharded mean sums in another order (a few ulps per step)
  _assert_trees_close(state.params, expected, rtol=1e-5, atol=1e-6)
  assert int(state.step) == 3
  assert set(metrics) == {
    "loss",
    "accuracy",
    "grad_norm",
    "update_norm",
    "param_norm",
    "update_grad_ratio",
  }


def test_microbatch_accumulation_equals_the_full_batch_gradient():
  params, batch, loss_fn = _problem(batch_size=32)
  mesh = sharding.make_mesh()
  full = train.make_value_and_grad(loss_fn)
  (l1, a1), g1 = jax.jit(full)(params, batch, jax.random.key(0))
  acc = train.make_value_and_grad(loss_fn, num_microbatches=4, mesh=mesh)
  (l4, a4), g4 = jax.jit(acc)(params, sharding.shard_batch(batch, mesh), jax.random.key(0))
  np.testing.assert_allclose(l4, l1, rtol=1e-6)
  np.testing.assert_allclose(a4["accuracy"], a1["accuracy"], rtol=1e-6)
  _assert_trees_close(g4, g1, rtol=1e-5, atol=1e-7)


def test_extra_args_reach_the_optimizer():
  params, batch, loss_fn = _problem()
  seen = {}

  def update(updates, state, params=None, *, value, grad, value_fn, other_grad, **extra):
    del extra
    seen["ok"] = True
    # value/grad/value_fn describe this batch; other_grad is the gradient at 2*params
    check = (value - value_fn(params)) ** 2 + optax.tree.norm(optax.tree.sub(grad, updates)) ** 2
    return jax.tree.map(lambda g: 0.0 * g, other_grad), state + check

  spy = optax.GradientTransformationExtraArgs(lambda p: jnp.zeros(()), update)
  extra_fn = lambda p, b, key, grad_fn: {"other_grad": grad_fn(jax.tree.map(lambda x: 2 * x, p))}
  step = train.make_train_step(
    loss_fn, optax.chain(optax.identity(), spy), extra_args_fn=extra_fn, donate=False
  )
  state = train.TrainState.create(params, spy, jax.random.key(0))
  state = state._replace(opt_state=(optax.EmptyState(), jnp.zeros(())))
  new_state, _ = step(state, batch)
  assert seen["ok"]
  assert float(new_state.opt_state[1]) == 0.0  # value == value_fn(params), grad == updates
  _assert_trees_close(new_state.params, params, rtol=0, atol=0)  # zero update


def test_line_search_optimizer_gets_value_fn():
  params, batch, loss_fn = _problem()
  opt = optax.chain(
    optax.sgd(1.0), optax.scale_by_backtracking_linesearch(max_backtracking_steps=10)
  )
  state = train.TrainState.create(params, opt, jax.random.key(0))
  step = train.make_train_step(loss_fn, opt)
  losses = []
  for _ in range(5):
    state, m = step(state, batch)
    losses.append(float(m["loss"]))
  assert all(b <= a for a, b in zip(losses, losses[1:]))  # Armijo: monotone


def test_batch_that_cannot_be_split_is_refused():
  params, batch, loss_fn = _problem(batch_size=12)
  mesh = sharding.make_mesh()
  opt = optax.sgd(0.1)
  step = train.make_train_step(loss_fn, opt, mesh=mesh)
  state = train.TrainState.create(params, opt, jax.random.key(0))
  with pytest.raises(
    ValueError, match=r"batch\['x'\]: leading axis of size 12 cannot be sharded over 8"
  ):
    step(state, batch)
  step2 = train.make_train_step(loss_fn, opt, num_microbatches=5)
  with pytest.raises(ValueError, match="cannot be sharded over 5"):
    step2(state, batch)
  with pytest.raises(ValueError, match="num_microbatches"):
    train.make_train_step(loss_fn, opt, num_microbatches=0)


def test_lean_step_applies_the_identical_update_without_norms():
  params, batch, loss_fn = _problem()
  opt = optax.adamw(1e-2)
  mesh = sharding.make_mesh()
  step = train.make_train_step(loss_fn, opt, mesh=mesh, donate=False)
  state = train.TrainState.create(params, opt, jax.random.key(0))
  b = sharding.shard_batch(batch, mesh)
  full, m_full = step(state, b)
  lean, m_lean = step.lean(state, b)
  jax.tree.map(np.testing.assert_array_equal, full, lean)  # bit for bit
  assert set(m_full) - set(m_lean) == {
    "grad_norm",
    "update_norm",
    "param_norm",
    "update_grad_ratio",
  }
  assert float(m_full["loss"]) == float(m_lean["loss"])


def test_creating_a_state_keeps_the_callers_params_alive():
  params, batch, loss_fn = _problem()
  opt = optax.sgd(0.1)
  step = train.make_train_step(loss_fn, opt)  # donates its input state
  state = train.TrainState.create(params, opt, jax.random.key(0))
  step(state, batch)
  jax.tree.map(lambda x: x.block_until_ready(), params)  # would raise if deleted
