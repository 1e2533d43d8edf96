r"""The cost of per-example gradient statistics, and of the free noise scale.

  pip install -e ".[bench]"          # torch, backpack-for-pytorch
  XLA_FLAGS=--xla_force_host_platform_device_count=8 python -m benchmarks.gradstats_overhead

Three comparisons (the JAX contenders side by side in one process; BackPACK in
its own process, alternating with the JAX one for ``--rounds`` rounds, its
ratio to gradlab the median of the per-round ratios, with their spread):

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

import json
import statistics

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
_ROUNDS = flags.DEFINE_integer("rounds", 4, "Alternating process rounds per framework.")
_CONTENDER = flags.DEFINE_string("contender", None, "Internal: 'jax' or 'torch'.")
_TORCH_DEVICE = flags.DEFINE_string("torch_device", "cpu", "BackPACK's device: cpu or cuda.")


def _backpack(w, x, y):
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
  device = torch.device(_TORCH_DEVICE.value)
  net = net.to(device)
  tx, ty = torch.from_numpy(x).to(device), torch.from_numpy(y.astype(np.int64)).to(device)

  def run_backpack():
    net.zero_grad()
    with backpack(Variance()):
      crit(net(tx), ty).backward()
    if device.type == "cuda":  # the variances are ready, as block_until_ready for jax
      torch.cuda.synchronize()
    return [p.variance for p in net.parameters()]

  return run_backpack, torch.get_num_threads()


def _contender(which: str) -> dict:
  w, b = _WIDTH.value, _BATCH.value
  prob = tasks.mlp_problem(w, b)
  model, params, batch, loss, x, y = (
    prob.model,
    prob.params,
    prob.batch,
    prob.loss,
    prob.x,
    prob.y,
  )
  if which == "torch":
    run, threads = _backpack(w, x, y)
    t = timing.interleaved({"BackPACK Variance": run}, repeats=_REPEATS.value)
    return {"ms": {k: v * 1e3 for k, v in t.items()}, "threads": threads}
  train_loss = lambda p, bt, k: (loss(p, bt), {})
  opt = optax.sgd(0.01)

  # 1: one device
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
  t = timing.interleaved(fns, repeats=_REPEATS.value)
  out = {"ms": {k: v * 1e3 for k, v in t.items()}, "platform": jax.devices()[0].platform}

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
    out["sharded ms"] = {k: v * 1e3 for k, v in t2.items()}
    out["devices"] = nd
  return out


def _forwarded():
  return [
    f"--width={_WIDTH.value}",
    f"--batch_size={_BATCH.value}",
    f"--chunk_size={_CHUNK.value}",
    f"--repeats={_REPEATS.value}",
    f"--torch_device={_TORCH_DEVICE.value}",
  ]


def _figures(runs):
  """The title and rows of the table from the contenders' runs."""
  w, b = _WIDTH.value, _BATCH.value
  ms = timing.per_round(runs)
  rows = []
  for k, v in ms.items():
    vs_stats = timing.paired(v, ms["gradlab variance + GSNR"])
    rows.append(
      {
        "contender": k,
        "ms (median of rounds)": statistics.median(v),
        "x plain step": timing.paired(v, ms["plain train step"])["median"],
        "x gradlab stats (median of paired rounds)": vs_stats["median"],
        "spread": vs_stats["spread"],
      }
    )
  if "sharded ms" in runs["jax"][0]:
    nd = runs["jax"][0]["devices"]
    sh = timing.per_round(runs, "sharded ms")
    for k, v in sh.items():
      ratio = timing.paired(v, sh["sharded step"])
      rows.append(
        {
          "contender": f"{k} ({nd} devices)",
          "ms (median of rounds)": statistics.median(v),
          "x plain step": ratio["median"],
          "spread": ratio["spread"],
        }
      )
  threads = runs["torch"][0]["threads"] if "torch" in runs else None
  prob = tasks.mlp_problem(w, b)
  title = (
    f"Gradient statistics, MLP 784-{w}-{w}-10 ({prob.num_params:,} params), batch {b}, "
    f"chunk {_CHUNK.value}; each framework in its own process, {_ROUNDS.value} alternating "
    f"rounds; jax on {runs['jax'][0]['platform']}"
    + (f", torch on {_TORCH_DEVICE.value.upper()} ({threads} threads)" if threads else "")
  )
  return title, rows


def main(argv):
  del argv
  if _CONTENDER.value:
    print(json.dumps(_contender(_CONTENDER.value)))
    return
  names = ["jax", "torch"] if _TORCH.value else ["jax"]
  runs = timing.contender_processes(
    "benchmarks.gradstats_overhead", names, rounds=_ROUNDS.value, args=_forwarded()
  )
  timing.report(*_figures(runs), _JSON.value)


QUICK = {"width": "8", "batch_size": "8", "chunk_size": "4", "repeats": "1", "rounds": "1"}


def measure(quick: bool, device: str) -> list[timing.Row]:
  """``benchmarks.all``'s rows: the per-example statistics over the plain step, BackPACK
  over gradlab's statistics (BackPACK on CUDA when ``device`` is gpu), and the free
  noise scale's sharded step over the plain sharded step (on two or more devices)."""
  values = dict(QUICK if quick else {"rounds": "2"})
  if device == "gpu":
    values["torch_device"] = "cuda"
  no_torch = timing.missing("torch", "backpack")
  cmd = timing.command(__name__, values)
  with timing.flag_values(values):
    names = ["jax"] if no_torch else ["jax", "torch"]
    runs = timing.contenders(
      __name__, names, rounds=_ROUNDS.value, args=_forwarded(), local=_contender
    )
  ms, jax_run = timing.per_round(runs), runs["jax"][0]
  jax_dev = f"jax {jax_run['platform']}"
  stats, plain = ms["gradlab variance + GSNR"], ms["plain train step"]
  out = []
  for k, goal in (("gradlab variance + GSNR", "<= 2"), ("gradlab, generic per-example (vmap)", "")):
    r = timing.paired(ms[k], plain)
    out.append(timing.Row(f"{k} / plain train step", r["median"], r["spread"], goal, jax_dev, cmd))
  name, goal = "BackPACK Variance / gradlab variance + GSNR", ">= 2"
  if no_torch:
    out.append(timing.Row(name, goal=goal, command=cmd, note=timing.skipped(no_torch)))
  else:
    r = timing.paired(ms["BackPACK Variance"], stats)
    dev = f"{jax_dev}, torch {values.get('torch_device', 'cpu')}"
    out.append(timing.Row(name, r["median"], r["spread"], goal, dev, cmd))
  name, goal = "sharded step + free noise scale / sharded step", "<= 1.05"
  if "sharded ms" in jax_run:
    sh = timing.per_round(runs, "sharded ms")
    r = timing.paired(sh["sharded step + free noise scale"], sh["sharded step"])
    dev = f"{jax_dev} x {jax_run['devices']}"
    out.append(timing.Row(name, r["median"], r["spread"], goal, dev, cmd))
  else:
    out.append(timing.Row(name, goal=goal, command=cmd, note="skipped: one device"))
  return out


if __name__ == "__main__":
  app.run(main)
