r"""Trains the MLP classifier on an embedded dataset, resumably.

  python -m experiments.train_classifier --workdir=/tmp/gradlab/classifier

Writes metrics.jsonl, results.md, results.csv and loss_curve.png into
--workdir. Started again with the same --workdir, it resumes from the last
checkpoint and ends exactly where an uninterrupted run would.
"""

from __future__ import annotations

import dataclasses
import os
import signal

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging

from experiments import flag_checks, reporting, runner
from gradlab import data, models, sharding, train

OPTIMIZERS = {
  "sgd": lambda lr: optax.sgd(lr),
  "momentum": lambda lr: optax.sgd(lr, momentum=0.9, nesterov=True),
  "adam": lambda lr: optax.adam(lr),
  "adamw": lambda lr: optax.adamw(lr, weight_decay=1e-4),
  "adam_clip": lambda lr: optax.chain(optax.clip_by_global_norm(1.0), optax.adam(lr)),
}


PROG = "train_classifier"


@dataclasses.dataclass(frozen=True)
class Config:
  """The flags of ``train_classifier`` (``--name=value``); defaults are the main's."""

  dataset: str = runner.option("digits", f"One of {', '.join(data.DATASETS)}.")
  num_steps: int = runner.option(1500, "Total training steps.")
  batch_size: int = runner.option(128, "Global batch size.")
  learning_rate: float = runner.option(1e-3, "Learning rate.")
  optimizer: str = runner.option("adam", f"One of {', '.join(OPTIMIZERS)}.")
  hidden: list[str] = runner.option(["256", "256"], "Hidden layer widths.")
  seed: int = runner.option(0, "Seeds the initialization and the batch order.")
  checkpoint_every: int = runner.option(500, "Steps between checkpoints.")
  eval_every: int = runner.option(250, "Steps between test evaluations.")
  log_every: int = runner.option(10, "Steps between metrics records.")
  num_microbatches: int = runner.option(1, "Gradient accumulation.")
  num_devices: int = runner.option(0, "Devices to use (0: all).")
  crash_after_step: int = runner.option(
    0, "Testing only: SIGKILL this process once this many steps are done."
  )


def check(config: Config) -> tuple[list[int], int]:
  """Refuses a bad config before any compute; returns the widths and the device count."""
  c = flag_checks
  c.one_of("dataset", config.dataset, data.DATASETS)
  c.one_of("optimizer", config.optimizer, OPTIMIZERS)
  c.positive("num_steps", config.num_steps)
  c.non_negative("seed", config.seed)
  c.positive("batch_size", config.batch_size)
  c.positive("learning_rate", config.learning_rate)
  c.require(np.isfinite(config.learning_rate), "learning_rate", "finite", config.learning_rate)
  c.positive("checkpoint_every", config.checkpoint_every)
  c.non_negative("eval_every", config.eval_every)
  c.positive("log_every", config.log_every)
  c.positive("num_microbatches", config.num_microbatches)
  c.non_negative("crash_after_step", config.crash_after_step)
  hidden = c.number_list(
    "hidden",
    config.hidden,
    kind=int,
    valid=lambda h: h > 0,
    expected="a comma-separated list of positive widths",
  )
  available = jax.device_count()
  c.require(
    0 <= config.num_devices <= available,
    "num_devices",
    f"between 0 and the {available} devices available",
    config.num_devices,
  )
  num_devices = config.num_devices or available
  divisor = num_devices * config.num_microbatches
  c.require(
    config.batch_size % divisor == 0,
    "batch_size",
    f"divisible by {num_devices} devices x {config.num_microbatches} microbatches",
    config.batch_size,
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


def run(config: Config, workdir: str) -> dict:
  """Trains, evaluates and writes the results; returns the last metrics record."""
  flag_checks.check_config(config)
  hidden, num_devices = check(config)
  ds = data.load_dataset(config.dataset)
  flag_checks.require(
    config.batch_size <= len(ds.x_train),
    "batch_size",
    f"at most the {len(ds.x_train)} training examples",
    config.batch_size,
  )
  flag_checks.check_same_run(
    workdir,
    {
      k: getattr(config, k)
      for k in (
        "dataset",
        "batch_size",
        "learning_rate",
        "optimizer",
        "hidden",
        "seed",
        "num_microbatches",
      )
    },
  )
  mesh = sharding.make_mesh(jax.devices()[:num_devices])
  model = models.MLP((*hidden, ds.num_classes))
  optimizer = OPTIMIZERS[config.optimizer](config.learning_rate)
  init_key, train_key = jax.random.split(jax.random.key(config.seed))
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
    loss_fn, optimizer, mesh=mesh, num_microbatches=config.num_microbatches
  )
  if config.crash_after_step:
    step = _crash_after(step, config.crash_after_step)
  arrays = {"x": ds.x_train, "y": ds.y_train}
  logging.info(
    "Training an MLP %s on %s (%d train / %d test) over %d device(s)",
    hidden,
    config.dataset,
    len(ds.x_train),
    len(ds.x_test),
    num_devices,
  )
  state, last = train.fit(
    state,
    step,
    lambda start: data.iterate_batches(
      arrays, batch_size=config.batch_size, seed=config.seed, start_step=start, mesh=mesh
    ),
    num_steps=config.num_steps,
    workdir=workdir,
    checkpoint_every=config.checkpoint_every,
    log_every=config.log_every,
    eval_fn=eval_fn,
    eval_every=config.eval_every,
  )

  if jax.process_index() != 0:
    return last
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
    title=f"MLP {hidden} on {config.dataset}, {config.optimizer} lr={config.learning_rate:g}",
  )
  reporting.write_table(
    workdir,
    [
      {
        "dataset": config.dataset,
        "optimizer": config.optimizer,
        "steps": last["step"],
        "train loss": last["loss"],
        "test loss": last["eval/loss"],
        "test accuracy": last["eval/accuracy"],
      }
    ],
    title="MLP classifier",
    notes=f"Devices: {num_devices}. Seed: {config.seed}.",
  )
  print(
    f"test accuracy {last['eval/accuracy']:.4f} after {last['step']} steps; results in {workdir}"
  )
  return last


if __name__ == "__main__":
  runner.main(run, Config, prog=PROG, workdir='runs/train_classifier')
