r"""Trains the MLP classifier on an embedded dataset, resumably.

  python -m experiments.train_classifier --workdir=/tmp/gradlab/classifier

Writes metrics.jsonl, results.md, results.csv and loss_curve.png into
--workdir. Started again with the same --workdir, it resumes from the last
checkpoint and ends exactly where an uninterrupted run would.
"""

from __future__ import annotations

import os
import signal

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import app, flags, logging

from experiments import flag_checks, reporting
from gradlab import data, models, sharding, train

OPTIMIZERS = {
  "sgd": lambda lr: optax.sgd(lr),
  "momentum": lambda lr: optax.sgd(lr, momentum=0.9, nesterov=True),
  "adam": lambda lr: optax.adam(lr),
  "adamw": lambda lr: optax.adamw(lr, weight_decay=1e-4),
  "adam_clip": lambda lr: optax.chain(optax.clip_by_global_norm(1.0), optax.adam(lr)),
}

_WORKDIR = flags.DEFINE_string(
  "workdir", "runs/train_classifier", "Output and checkpoint directory."
)
_DATASET = flags.DEFINE_string("dataset", "digits", f"One of {', '.join(data.DATASETS)}.")
_NUM_STEPS = flags.DEFINE_integer("num_steps", 1500, "Total training steps.")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 128, "Global batch size.")
_LEARNING_RATE = flags.DEFINE_float("learning_rate", 1e-3, "Learning rate.")
_OPTIMIZER = flags.DEFINE_string("optimizer", "adam", f"One of {', '.join(OPTIMIZERS)}.")
_HIDDEN = flags.DEFINE_list("hidden", ["256", "256"], "Hidden layer widths.")
_SEED = flags.DEFINE_integer("seed", 0, "Seeds the initialization and the batch order.")
_CHECKPOINT_EVERY = flags.DEFINE_integer("checkpoint_every", 500, "Steps between checkpoints.")
_EVAL_EVERY = flags.DEFINE_integer("eval_every", 250, "Steps between test evaluations.")
_LOG_EVERY = flags.DEFINE_integer("log_every", 10, "Steps between metrics records.")
_NUM_MICROBATCHES = flags.DEFINE_integer("num_microbatches", 1, "Gradient accumulation.")
_NUM_DEVICES = flags.DEFINE_integer("num_devices", 0, "Devices to use (0: all).")
_DISTRIBUTED = flags.DEFINE_bool(
  "distributed", False, "Call jax.distributed.initialize() first (multi-host pods)."
)
_CRASH_AFTER_STEP = flags.DEFINE_integer(
  "crash_after_step", 0, "Testing only: SIGKILL this process once this many steps are done."
)

PROG = "train_classifier"


def _check_flags() -> tuple[list[int], int]:
  c = flag_checks
  c.one_of("dataset", _DATASET.value, data.DATASETS)
  c.one_of("optimizer", _OPTIMIZER.value, OPTIMIZERS)
  c.positive("num_steps", _NUM_STEPS.value)
  c.positive("batch_size", _BATCH_SIZE.value)
  c.positive("learning_rate", _LEARNING_RATE.value)
  c.require(np.isfinite(_LEARNING_RATE.value), "learning_rate", "finite", _LEARNING_RATE.value)
  c.positive("checkpoint_every", _CHECKPOINT_EVERY.value)
  c.non_negative("eval_every", _EVAL_EVERY.value)
  c.positive("log_every", _LOG_EVERY.value)
  c.positive("num_microbatches", _NUM_MICROBATCHES.value)
  c.non_negative("crash_after_step", _CRASH_AFTER_STEP.value)
  hidden = c.number_list(
    "hidden",
    _HIDDEN.value,
    kind=int,
    valid=lambda h: h > 0,
    expected="a comma-separated list of positive widths",
  )
  available = jax.device_count()
  c.require(
    0 <= _NUM_DEVICES.value <= available,
    "num_devices",
    f"between 0 and the {available} devices available",
    _NUM_DEVICES.value,
  )
  num_devices = _NUM_DEVICES.value or available
  divisor = num_devices * _NUM_MICROBATCHES.value
  c.require(
    _BATCH_SIZE.value % divisor == 0,
    "batch_size",
    f"divisible by {num_devices} devices x {_NUM_MICROBATCHES.value} microbatches",
    _BATCH_SIZE.value,
  )
  return hidden, num_devices


def _crash_after(step_fn, crash_step: int):
  """Wraps the train step to SIGKILL the process once ``crash_step`` steps are
  done and logged (the loop calls the step for the next one only after it has
  logged and checkpointed the previous one)."""

  def crash_if_due(fn):
    def wrapped(state, batch):
      if int(state.step) == crash_step:
        os.kill(os.getpid(), signal.SIGKILL)
      return fn(state, batch)

    return wrapped

  wrapped = crash_if_due(step_fn)
  wrapped.lean = crash_if_due(step_fn.lean)
  return wrapped


def main(argv):
  del argv
  if _DISTRIBUTED.value:
    jax.distributed.initialize()
  try:
    hidden, num_devices = _check_flags()
    ds = data.load_dataset(_DATASET.value)
    flag_checks.require(
      _BATCH_SIZE.value <= len(ds.x_train),
      "batch_size",
      f"at most the {len(ds.x_train)} training examples",
      _BATCH_SIZE.value,
    )
    config = {
      k: flags.FLAGS[k].value
      for k in (
        "dataset",
        "batch_size",
        "learning_rate",
        "optimizer",
        "hidden",
        "seed",
        "num_microbatches",
      )
    }
    flag_checks.check_same_run(_WORKDIR.value, config)
  except flag_checks.FlagError as e:
    flag_checks.exit_on_flag_error(PROG, e)

  workdir = _WORKDIR.value
  mesh = sharding.make_mesh(jax.devices()[:num_devices])
  model = models.MLP((*hidden, ds.num_classes))
  optimizer = OPTIMIZERS[_OPTIMIZER.value](_LEARNING_RATE.value)
  init_key, train_key = jax.random.split(jax.random.key(_SEED.value))
  params = model.init(init_key, jnp.zeros((1, ds.x_train.shape[1])))
  state = jax.device_put(
    train.TrainState.create(params, optimizer, train_key), sharding.replicated(mesh)
  )

  def loss_fn(params, batch, key):
    del key
    logits = model.apply(params, batch["x"])
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch["y"]).mean()
    return loss, {"accuracy": jnp.mean(jnp.argmax(logits, -1) == batch["y"])}

  x_test, y_test = jnp.asarray(ds.x_test), jnp.asarray(ds.y_test)

  def eval_fn(params):
    loss, aux = loss_fn(params, {"x": x_test, "y": y_test}, None)
    return {"loss": loss, **aux}

  step = train.make_train_step(
    loss_fn, optimizer, mesh=mesh, num_microbatches=_NUM_MICROBATCHES.value
  )
  if _CRASH_AFTER_STEP.value:
    step = _crash_after(step, _CRASH_AFTER_STEP.value)
  arrays = {"x": ds.x_train, "y": ds.y_train}
  logging.info(
    "Training an MLP %s on %s (%d train / %d test) over %d device(s)",
    hidden,
    _DATASET.value,
    len(ds.x_train),
    len(ds.x_test),
    num_devices,
  )
  state, last = train.fit(
    state,
    step,
    lambda start: data.iterate_batches(
      arrays, batch_size=_BATCH_SIZE.value, seed=_SEED.value, start_step=start, mesh=mesh
    ),
    num_steps=_NUM_STEPS.value,
    workdir=workdir,
    checkpoint_every=_CHECKPOINT_EVERY.value,
    log_every=_LOG_EVERY.value,
    eval_fn=eval_fn,
    eval_every=_EVAL_EVERY.value,
  )

  if jax.process_index() != 0:
    return
  records = train.read_metrics(os.path.join(workdir, "metrics.jsonl"))
  evals = [r for r in records if "eval/loss" in r]
  reporting.plot_curves(
    os.path.join(workdir, "loss_curve.png"),
    {
      "train": ([r["step"] for r in records], [r["loss"] for r in records]),
      "test": ([r["step"] for r in evals], [r["eval/loss"] for r in evals]),
    },
    xlabel="step",
    ylabel="cross-entropy",
    logy=True,
    title=f"MLP {hidden} on {_DATASET.value}, {_OPTIMIZER.value} lr={_LEARNING_RATE.value:g}",
  )
  reporting.write_table(
    workdir,
    [
      {
        "dataset": _DATASET.value,
        "optimizer": _OPTIMIZER.value,
        "steps": last["step"],
        "train loss": last["loss"],
        "test loss": last["eval/loss"],
        "test accuracy": last["eval/accuracy"],
      }
    ],
    title="MLP classifier",
    notes=f"Devices: {num_devices}. Seed: {_SEED.value}.",
  )
  print(
    f"test accuracy {last['eval/accuracy']:.4f} after {last['step']} steps; results in {workdir}"
  )


if __name__ == "__main__":
  app.run(main)
