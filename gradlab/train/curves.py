"""Many short runs at once: :func:`make_update` scanned over steps and vmapped over seeds."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from gradlab.train.state import TrainState
from gradlab.train.step import ExtraArgsFn, make_update


class _SpikeState(NamedTuple):
  count: jax.Array


def _scale_at_steps(steps: jax.Array, factor: float) -> optax.GradientTransformation:
  """Multiplies the gradient by ``factor`` on the steps where ``steps`` is True."""

  def init_fn(params):
    del params
    return _SpikeState(jnp.zeros([], jnp.int32))

  def update_fn(updates, state, params=None):
    del params
    spike = steps[state.count]
    return (
      jax.tree.map(lambda g: jnp.where(spike, g * factor, g).astype(g.dtype), updates),
      _SpikeState(optax.safe_increment(state.count)),
    )

  return optax.GradientTransformation(init_fn, update_fn)


def train_curves(
  task: Any,
  optimizer: optax.GradientTransformation,
  seeds: int,
  num_steps: int,
  *,
  extra_args_fn: ExtraArgsFn | None = None,
  spike_steps: Sequence[int] = (),
  spike_scale: float = 1.0,
) -> jax.Array:
  """Trains ``seeds`` independent runs (vmapped) for ``num_steps``; losses ``[seeds, steps]``.

  Args:
    task: anything with ``init(key) -> params``, ``loss_fn(params, batch, key)
      -> (loss, aux)`` and ``sample_batch(key) -> batch``, e.g.
      ``gradlab.tasks.make_task``.
    optimizer: any optax transformation.
    seeds: runs; run ``i`` starts from ``split(key(0), seeds)[i]``.
    num_steps: updates per run.
    extra_args_fn: as in :func:`gradlab.train.make_train_step`.
    spike_steps: steps at which the gradient is multiplied by ``spike_scale``
      before the optimizer sees it (the same steps for every optimizer).
  """
  spikes = jnp.zeros(num_steps, bool)
  if spike_steps:
    spikes = spikes.at[jnp.asarray(list(spike_steps), jnp.int32)].set(True)

  def one_run(key, spikes, scale):
    # The spike schedule and scale are arguments, not constants: spiked and clean
    # runs of one task and optimizer are one program, compiled once (with JAX's
    # persistent compilation cache on, the second call reuses it). A step
    # without a spike passes the gradient through bit for bit.
    tx = optax.chain(_scale_at_steps(spikes, scale), optimizer)
    update = make_update(task.loss_fn, tx, extra_args_fn=extra_args_fn, norm_metrics=False)
    init_key, data_key = jax.random.split(key)
    state = TrainState.create(task.init(init_key), tx, init_key)

    def step(state, t):
      key = jax.random.fold_in(data_key, t)
      state, metrics = update(state, task.sample_batch(key), key)
      return state, metrics["loss"]

    _, losses = jax.lax.scan(step, state, jnp.arange(num_steps))
    return losses

  keys = jax.random.split(jax.random.key(0), seeds)
  scale = jnp.asarray(spike_scale, jnp.float32)
  return jax.jit(jax.vmap(one_run, in_axes=(0, None, None)))(keys, spikes, scale)
