"""Measures a free noise scale and a Hessian trace on a batch sharded over every
device of every process; ``tests/test_multiprocess.py`` runs it as 2 processes x
4 devices (``gradlab.launch``) and compares with 1 process x 8 devices.

  python -m tests.multiprocess_probe --out=FILE [--coordinator_address=... ...]
"""

import argparse
import json
import os

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


def main():
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
