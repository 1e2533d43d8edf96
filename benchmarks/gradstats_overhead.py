r"""The cost of per-example gradient statistics, and of the free noise scale.

  pip install -e ".[bench]"          # torch, backpack-for-pytorch
  XLA_FLAGS=--xla_force_host_platform_device_count=8 python -m benchmarks.gradstats_overhead

Three comparisons, each side by side in one process:

1. Variance and GSNR of the per-example gradients (``dense_gradient_moments``,
   the factorized form for Dense layers, with ``variance``/``gsnr``) against
   the plain train step on the same MLP and batch (goal <= 2x); the generic
   ``gradient_moments`` (vmap over examples, any model) is timed beside it.
2. The same statistics against BackPACK's ``Variance`` extension (PyTorch):
   forward, backward with the extension, identical architecture and batch
   (goal: gradlab >= 2x faster).
3. The train step with the free noise scale (``shard_map``: per-device and
   all-reduced gradients) against the plain sharded step on all devices
   (goal <= 1.05x).
"""

from __future__ import annotations

import jax
import numpy as np
import optax
from absl import app, flags

from benchmarks import timing
from gradlab import gradstats, sharding, tasks, train

_WIDTH = flags.DEFINE_integer("width", 256, "Hidden width of the MLP 784-W-W-10.")
_BATCH = flags.DEFINE_integer("batch_size", 128, "Batch size.")
_CHUNK = flags.DEFINE_integer("chunk_size", 32, "Per-example chunk size.")
_REPEATS = flags.DEFINE_integer("repeats", 20, "Timed repeats.")
_TORCH = flags.DEFINE_bool("torch", True, "Also time BackPACK.")
_JSON = flags.DEFINE_string("json", None, "Write the figures here.")


def main(argv):
  del argv
  w, b = _WIDTH.value, _BATCH.value
  prob = tasks.mlp_problem(w, b)
  model, params, batch, loss, n, x, y = (
    prob.model,
    prob.params,
    prob.batch,
    prob.loss,
    prob.num_params,
    prob.x,
    prob.y,
  )
  train_loss = lambda p, bt, k: (loss(p, bt), {})
  opt = optax.sgd(0.01)

  # 1 and 2: one device
  plain = train.make_train_step(train_loss, opt, donate=False, norm_metrics=False)
  state = train.TrainState.create(params, opt, jax.random.key(0))

  @jax.jit
  def stats(p, bt):
    m = gradstats.gradient_moments(loss, p, bt, chunk_size=_CHUNK.value)
    return gradstats.variance(m), gradstats.gsnr(m, eps=1e-5)

  @jax.jit
  def dense_stats(p, bt):
    m = gradstats.dense_gradient_moments(
      model,
      p,
      bt["x"],
      lambda out: optax.softmax_cross_entropy_with_integer_labels(out, bt["y"]).mean(),
    )
    return gradstats.variance(m), gradstats.gsnr(m, eps=1e-5)

  fns = {
    "plain train step": lambda: jax.block_until_ready(plain(state, batch)[1]["loss"]),
    "gradlab variance + GSNR": lambda: jax.block_until_ready(dense_stats(params, batch)),
    "gradlab, generic per-example (vmap)": lambda: jax.block_until_ready(stats(params, batch)),
  }
  threads = None
  if _TORCH.value:
    import torch
    from backpack import backpack, extend
    from backpack.extensions import Variance

    net = extend(
      torch.nn.Sequential(
        torch.nn.Linear(784, w),
        torch.nn.ReLU(),
        torch.nn.Linear(w, w),
        torch.nn.ReLU(),
        torch.nn.Linear(w, 10),
      )
    )
    crit = extend(torch.nn.CrossEntropyLoss())
    tx, ty = torch.from_numpy(x), torch.from_numpy(y.astype(np.int64))

    def run_backpack():
      net.zero_grad()
      with backpack(Variance()):
        crit(net(tx), ty).backward()
      return [p.variance for p in net.parameters()]

    fns["BackPACK Variance"] = run_backpack
    threads = torch.get_num_threads()
  t = timing.interleaved(fns, repeats=_REPEATS.value)
  rows = [
    {
      "contender": k,
      "ms": v * 1e3,
      "x plain step": v / t["plain train step"],
      "x gradlab stats": v / t["gradlab variance + GSNR"],
    }
    for k, v in t.items()
  ]

  # 3: the free noise scale in the sharded step, all devices
  mesh = sharding.make_mesh()
  nd = mesh.shape[sharding.DATA_AXIS]
  if nd >= 2 and b % nd == 0:
    sb = sharding.shard_batch({"x": x, "y": y}, mesh)
    rep = sharding.replicated(mesh)
    st = jax.device_put(train.TrainState.create(params, opt, jax.random.key(0)), rep)
    base = train.make_train_step(train_loss, opt, mesh=mesh, donate=False, norm_metrics=False)
    noisy = train.make_train_step(
      train_loss,
      opt,
      mesh=mesh,
      donate=False,
      norm_metrics=False,
      value_and_grad_fn=gradstats.noise_scale_value_and_grad(train_loss, mesh),
    )
    t2 = timing.interleaved(
      {
        "sharded step": lambda: jax.block_until_ready(base(st, sb)[1]["loss"]),
        "sharded step + free noise scale": lambda: jax.block_until_ready(noisy(st, sb)[1]["loss"]),
      },
      repeats=_REPEATS.value,
    )
    rows += [
      {
        "contender": f"{k} ({nd} devices)",
        "ms": v * 1e3,
        "x plain step": v / t2["sharded step"],
        "x gradlab stats": "",
      }
      for k, v in t2.items()
    ]
  timing.report(
    f"Gradient statistics, MLP 784-{w}-{w}-10 ({n:,} params), batch {b}, chunk "
    f"{_CHUNK.value}; jax on {jax.devices()[0].platform}"
    + (f", torch on CPU ({threads} threads)" if threads else ""),
    rows,
    _JSON.value,
  )


if __name__ == "__main__":
  app.run(main)
