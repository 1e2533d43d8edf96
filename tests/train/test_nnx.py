"""A Flax NNX module plugs into gradlab unchanged: nnx.split to a params pytree,
a pure loss that merges it back, the train step, orbax checkpoints (kill and
resume) and a curvature instrument."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from gradlab import curvature, sharding, train


class MLP(nnx.Module):
  def __init__(self, rngs: nnx.Rngs):
    self.hidden = nnx.Linear(8, 16, rngs=rngs)
    self.out = nnx.Linear(16, 3, rngs=rngs)

  def __call__(self, x):
    return self.out(jnp.tanh(self.hidden(x)))


def _setup():
  graphdef, params = nnx.split(MLP(nnx.Rngs(0)), nnx.Param)

  def loss_fn(params, batch, key):
    del key
    logits = nnx.merge(graphdef, params)(batch["x"])
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch["y"]).mean()
    return loss, {"accuracy": jnp.mean(jnp.argmax(logits, -1) == batch["y"])}

  rng = np.random.default_rng(0)
  x = rng.normal(size=(64, 8)).astype(np.float32)
  batch = {"x": x, "y": (x[:, 0] > 0).astype(np.int32) + (x[:, 1] > 0)}
  return graphdef, params, loss_fn, batch


def _run(workdir, num_steps, params, loss_fn, batch, mesh):
  opt = optax.adam(1e-2)
  state = jax.device_put(
    train.TrainState.create(params, opt, jax.random.key(1)), sharding.replicated(mesh)
  )
  step = train.make_train_step(loss_fn, opt, mesh=mesh)
  probe = curvature.sharpness_instrument(
    loss_fn, learning_rate=1e-2, num_probes=4, num_iterations=5
  )
  return train.fit(
    state,
    step,
    lambda s: iter([sharding.shard_batch(batch, mesh)] * (100 - s)),
    num_steps=num_steps,
    workdir=str(workdir),
    checkpoint_every=5,
    log_every=5,
    instruments=[train.Instrument("curv", probe, every=5)],
  )


def test_nnx_module_trains_checkpoints_resumes_and_is_probed(tmp_path):
  graphdef, params, loss_fn, batch = _setup()
  assert isinstance(params, nnx.State)
  mesh = sharding.make_mesh()
  state, last = _run(tmp_path / "a", 20, params, loss_fn, batch, mesh)
  assert last["loss"] < loss_fn(params, batch, None)[0]
  assert np.isfinite(last["curv/lambda_max"]) and last["curv/lambda_max"] > 0
  # the trained params merge back into a module
  model = nnx.merge(graphdef, state.params)
  np.testing.assert_allclose(model(batch["x"]), nnx.merge(graphdef, state.params)(batch["x"]))
  # stopped at 10 and resumed from its checkpoint: the same end as one run of 20
  _run(tmp_path / "b", 10, params, loss_fn, batch, mesh)
  resumed, last_b = _run(tmp_path / "b", 20, params, loss_fn, batch, mesh)
  assert last_b == last
  jax.tree.map(np.testing.assert_array_equal, resumed.params, state.params)
