"""Two small tasks for comparing optimizers, and a vmapped multi-seed training loop.

``make_task(name, seed)`` returns ``(params, loss_fn, sample_batch)`` where
``sample_batch(key) -> batch`` draws a training batch and
``loss_fn(params, batch) -> loss``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from gradlab import data, models

TASKS = ("classifier", "lm")


class Task(NamedTuple):
  init: Callable[[jax.Array], object]
  loss_fn: Callable
  sample_batch: Callable[[jax.Array], object]
  last_layer: str  # the output layer's path regex (SCALE)
  labels: Callable  # module groups (AGVM): "body" / "head"


def make_task(name: str, batch_size: int) -> Task:
  if name == "classifier":
    ds = data.load_dataset("digits")
    x, y = jnp.asarray(ds.x_train), jnp.asarray(ds.y_train)
    model = models.MLP((128, 128, ds.num_classes))

    def loss_fn(params, batch):
      logits = model.apply(params, batch["x"])
      return optax.softmax_cross_entropy_with_integer_labels(logits, batch["y"]).mean()

    def sample_batch(key):
      idx = jax.random.randint(key, (batch_size,), 0, x.shape[0])
      return {"x": x[idx], "y": y[idx]}
    init = lambda key: model.init(key, x[:1])
    last = r"dense_2/kernel"
    head = "dense_2"
  elif name == "lm":
    vocab, length = 17, 16
    seqs = jnp.asarray(data.fibonacci_sequences(2048, length, vocab, seed=0))
    model = models.TinyTransformer(vocab=vocab, dim=32, heads=2, layers=2, max_len=length)

    def loss_fn(params, batch):
      logits = model.apply(params, batch[:, :-1])
      ce = optax.softmax_cross_entropy_with_integer_labels(logits, batch[:, 1:])
      return ce[:, 1:].mean()  # positions whose token the rule determines

    def sample_batch(key):
      return seqs[jax.random.randint(key, (batch_size,), 0, seqs.shape[0])]
    init = lambda key: model.init(key, seqs[:1, :-1])
    last = r"head/kernel"
    head = "head"
  else:
    raise ValueError(f"task: expected one of {TASKS}, got {name!r}")

  def labels(params):
    return jax.tree_util.tree_map_with_path(
        lambda p, _: "head" if head in jax.tree_util.keystr(p) else "body", params)
  return Task(init, loss_fn, sample_batch, last, labels)


def train_curves(task: Task, optimizer: optax.GradientTransformation, seeds: int, num_steps: int,
                 *, extra_args: Callable | None = None, spike_steps=(), spike_scale: float = 1.0):
  """Trains ``seeds`` independent runs (vmapped) for ``num_steps``; returns losses ``[seeds, steps]``.

  ``spike_steps``: steps at which the gradient is multiplied by
  ``spike_scale`` before the optimizer sees it (the same steps for every
  optimizer). ``extra_args(params, batch, key, grad_fn) -> dict`` supplies the
  optimizer's extra arguments.
  """
  spikes = jnp.zeros(num_steps, bool).at[jnp.asarray(list(spike_steps), jnp.int32)].set(True) \
      if spike_steps else jnp.zeros(num_steps, bool)
  tx = optax.with_extra_args_support(optimizer)

  def one_run(key):
    init_key, data_key = jax.random.split(key)
    params = task.init(init_key)
    opt_state = tx.init(params)

    def step(carry, xs):
      params, opt_state = carry
      t, spike = xs
      batch_key = jax.random.fold_in(data_key, t)
      batch = task.sample_batch(batch_key)
      loss, grads = jax.value_and_grad(task.loss_fn)(params, batch)
      grads = jax.tree.map(lambda g: jnp.where(spike, g * spike_scale, g), grads)
      grad_fn = lambda p: jax.grad(task.loss_fn)(p, batch)
      extra = {"grad_fn": grad_fn}
      if extra_args is not None:
        extra.update(extra_args(params, batch, batch_key, grad_fn))
      updates, opt_state = tx.update(grads, opt_state, params, **extra)
      return (optax.apply_updates(params, updates), opt_state), loss

    _, losses = jax.lax.scan(step, (params, opt_state), (jnp.arange(num_steps), spikes))
    return losses

  keys = jax.random.split(jax.random.key(0), seeds)
  return jax.jit(jax.vmap(one_run))(keys)
