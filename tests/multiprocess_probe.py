"""Measures a free noise scale and a Hessian trace on a batch sharded over every
device of every process; ``tests/test_multiprocess.py`` runs it as 2 processes x
4 devices (``gradlab.launch``) and compares with 1 process x 8 devices.

  python -m tests.multiprocess_probe --out=FILE [--coordinator_address=... ...]

With ``--preempt_at=STEP --preempt_process=I`` it runs ``experiments.train_classifier``
instead (its flags follow), whose process I sends itself SIGTERM as it starts
step STEP (see :func:`preempted_train_classifier`).
"""

import argparse
import json
import os
import signal
import sys
import time

from experiments import runner


def measure() -> dict:
  import jax
  import jax.numpy as jnp
  import numpy as np
  import optax

  from gradlab import curvature, gradstats, models, sharding, train

  model = models.MLP((16, 3))
  params = model.init(jax.random.key(0), jnp.zeros((1, 5)))
  rng = np.random.default_rng(0)
  batch = {
    "x": rng.normal(size=(64, 5)).astype(np.float32),
    "y": rng.integers(0, 3, 64).astype(np.int32),
  }

  def loss(p, b):
    return optax.softmax_cross_entropy_with_integer_labels(model.apply(p, b["x"]), b["y"]).mean()

  mesh = sharding.make_mesh()
  sb = sharding.shard_batch(batch, mesh)
  train_loss = lambda p, b, k: (loss(p, b), {})  # noqa: E731
  opt = optax.sgd(0.1)
  step = train.make_train_step(
    train_loss,
    opt,
    mesh=mesh,
    donate=False,
    value_and_grad_fn=gradstats.noise_scale_value_and_grad(train_loss, mesh),
  )
  state = jax.device_put(
    train.TrainState.create(params, opt, jax.random.key(1)), sharding.replicated(mesh)
  )
  _, metrics = step(state, sb)
  rep = sharding.replicated(mesh)
  trace = jax.jit(
    lambda p, b: curvature.hessian_trace(loss, p, b, jax.random.key(2), num_probes=8).estimate,
    out_shardings=rep,
  )(state.params, sb)
  return {
    "devices": jax.device_count(),
    "processes": jax.process_count(),
    "g_small_sq": float(metrics["noise/g_small_sq"]),
    "g_big_sq": float(metrics["noise/g_big_sq"]),
    "b_simple": float(metrics["noise/b_simple"]),
    "trace": float(trace),
  }


def preempted_train_classifier(argv: list[str]) -> None:
  """``experiments.train_classifier`` through ``runner.main``, with ``argv`` its
  flags plus ``--preempt_at=STEP --preempt_process=I``: process I sends itself
  SIGTERM as it starts step STEP, and from then on takes 0.2 s a step (the
  other process waits for it in the all-reduce), since JAX's preemption
  notifier polls for the signal once a second and the stop must be agreed
  before the run's last step. Once ``runner.main`` has exited, the same
  processes run the main again on its workdir (the restart a scheduler's
  requeue makes, without a second start-up) and exit with the first exit code.
  """
  from absl import flags

  from experiments import train_classifier
  from gradlab import train

  opts = dict(a[2:].split("=", 1) for a in argv if a.startswith("--preempt_"))
  at, who = int(opts["preempt_at"]), int(opts["preempt_process"])
  real = train.make_train_step
  pace = [True]

  def make_train_step(*args, **kwargs):
    import jax

    step = real(*args, **kwargs)

    def wrap(fn):
      def wrapped(state, batch):
        s = int(state.step) + 1
        if jax.process_index() == who and s >= at and pace[0]:
          if s == at:
            os.kill(os.getpid(), signal.SIGTERM)
          time.sleep(0.2)
        return fn(state, batch)

      return wrapped

    wrapped = wrap(step)
    wrapped.lean = wrap(step.lean)
    return wrapped

  train.make_train_step = make_train_step
  sys.argv = [sys.argv[0], *(a for a in argv if not a.startswith("--preempt_"))]
  try:
    runner.main(
      train_classifier.run, train_classifier.Config, prog=train_classifier.PROG, workdir="run"
    )
    code = 0
  except SystemExit as e:
    code = e.code
  pace[0] = False
  workdir = flags.FLAGS.workdir
  with train.workdir_lock(workdir):
    train_classifier.run(runner.config_from_flags(train_classifier.Config), workdir)
  sys.exit(code)


def main():
  if any(a.startswith("--preempt_at=") for a in sys.argv[1:]):
    preempted_train_classifier(sys.argv[1:])
    return
  parser = argparse.ArgumentParser()
  parser.add_argument("--out", required=True)
  parser.add_argument("--coordinator_address")
  parser.add_argument("--num_processes", type=int)
  parser.add_argument("--process_id", type=int)
  a = parser.parse_args()
  runner.initialize_distributed(
    distributed=False,
    coordinator_address=a.coordinator_address,
    num_processes=a.num_processes,
    process_id=a.process_id,
  )
  import jax

  result = measure()
  if jax.process_index() == 0:
    with open(a.out + ".tmp", "w") as f:
      json.dump(result, f)
    os.replace(a.out + ".tmp", a.out)


if __name__ == "__main__":
  main()
