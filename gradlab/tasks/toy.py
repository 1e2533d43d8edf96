"""Two small tasks for comparing optimizers: the digits MLP and a tiny transformer LM.

``make_task(name, batch_size)`` returns a :class:`Task`: ``init(key) ->
params``, the train-step loss ``loss_fn(params, batch, key) -> (loss, aux)``
and ``sample_batch(key) -> batch`` (a batch drawn with replacement). A task
carries nothing for one optimizer: the output layer's path (SCALE) or the
module groups (AGVM) are the caller's to name.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import optax

from gradlab import _checks, data, models
from gradlab.tasks.synthetic import fibonacci_sequences

TASKS = ("classifier", "lm")


class Task(NamedTuple):
  init: Callable[[jax.Array], Any]
  loss_fn: Callable[[Any, Any, jax.Array], tuple[jax.Array, dict]]
  sample_batch: Callable[[jax.Array], Any]
  model: Any  # the flax module, for callers that need its structure


def make_task(name: str, batch_size: int) -> Task:
  _checks.one_of("name", name, TASKS)
  batch_size = _checks.integer("batch_size", batch_size, minimum=1)
  if name == "classifier":
    ds = data.load_dataset("digits")
    x, y = jax.numpy.asarray(ds.x_train), jax.numpy.asarray(ds.y_train)
    model = models.MLP((128, 128, ds.num_classes))

    def loss_fn(params, batch, key):
      del key
      logits = model.apply(params, batch["x"])
      return optax.softmax_cross_entropy_with_integer_labels(logits, batch["y"]).mean(), {}

    def sample_batch(key):
      idx = jax.random.randint(key, (batch_size,), 0, x.shape[0])
      return {"x": x[idx], "y": y[idx]}

    return Task(lambda key: model.init(key, x[:1]), loss_fn, sample_batch, model)

  vocab, length = 17, 16
  seqs = jax.numpy.asarray(fibonacci_sequences(2048, length, vocab, seed=0))
  model = models.TinyTransformer(vocab=vocab, dim=32, heads=2, layers=2, max_len=length)

  def lm_loss(params, batch, key):
    del key
    logits = model.apply(params, batch[:, :-1])
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, batch[:, 1:])
    return ce[:, 1:].mean(), {}  # positions whose token the rule determines

  def sample_seqs(key):
    return seqs[jax.random.randint(key, (batch_size,), 0, seqs.shape[0])]

  return Task(lambda key: model.init(key, seqs[:1, :-1]), lm_loss, sample_seqs, model)
