r"""Hutchinson's trace at equal probes: gradlab against PyHessian and matfree.

  pip install -e ".[bench]" pyhessian==0.1 matfree==0.6.3
  python -m benchmarks.trace_peers [--probes=32] [--json=out.json]

The same MLP (784-256-256-10, 269k parameters; identical weights in torch
and JAX), the same batch of 256, the same number of Rademacher probes, so
the estimators have the same distribution (equal error); their estimates and
standard errors are printed to show it. PyHessian's ``trace`` runs with
``tol=-inf`` so that it uses every probe; its set-up (the first backward with
``create_graph``) is inside the timed call, as our linearization is.
Goals: >= 2x faster than PyHessian; parity or better with matfree.

PyHessian runs in its own process and gradlab in another, alternating
(``timing.contender_processes``, ``--rounds`` of each); the ratio is taken
round by round and reported as its median and spread. matfree, JAX like
gradlab, is timed interleaved with it in the same process.
"""

from __future__ import annotations

import json
import statistics

import jax
import numpy as np
from absl import app, flags

from benchmarks import timing
from gradlab import curvature, tasks

_PROBES = flags.DEFINE_integer("probes", 32, "Rademacher probes.")
_WIDTH = flags.DEFINE_integer("width", 256, "Hidden width.")
_BATCH = flags.DEFINE_integer("batch_size", 256, "Batch size.")
_REPEATS = flags.DEFINE_integer("repeats", 5, "Timed repeats.")
_JSON = flags.DEFINE_string("json", None, "Write the figures here.")
_ROUNDS = flags.DEFINE_integer("rounds", 4, "Alternating process rounds per contender.")
_CONTENDER = flags.DEFINE_string("contender", None, "Internal: 'jax' or 'pyhessian'.")
_TORCH_DEVICE = flags.DEFINE_string("torch_device", "cpu", "PyHessian's device: cpu or cuda.")


def _forwarded():
  return [
    f"--probes={_PROBES.value}",
    f"--width={_WIDTH.value}",
    f"--batch_size={_BATCH.value}",
    f"--repeats={_REPEATS.value}",
    f"--torch_device={_TORCH_DEVICE.value}",
  ]


def _contender(which: str) -> dict:
  m, w = _PROBES.value, _WIDTH.value
  prob = tasks.mlp_problem(w, _BATCH.value)
  params, batch, loss, x, y = prob.params, prob.batch, prob.loss, prob.x, prob.y
  results, fns = {}, {}
  if which == "jax":
    ours = jax.jit(lambda p, b, k: curvature.hessian_trace(loss, p, b, k, num_probes=m))
    keys = iter(jax.random.split(jax.random.key(1), 10_000))

    def run_ours():
      r = ours(params, batch, next(keys))
      results["gradlab"] = tuple(map(float, jax.block_until_ready(r[:2])))

    fns = {"gradlab": run_ours}
    if not timing.missing("matfree"):
      from matfree import stochtrace

      estimate = stochtrace.estimator_monte_carlo_mean_and_sem(
        stochtrace.monte_carlo_trace(), stochtrace.sampler_signs(params, num=m)
      )
      theirs = jax.jit(lambda p, b, k: estimate(curvature.make_hvp(loss, p, b), k))

      def run_matfree():
        r = theirs(params, batch, next(keys))
        results["matfree"] = tuple(map(float, jax.block_until_ready(r)))

      fns["matfree"] = run_matfree
  else:
    import torch
    from pyhessian import hessian as pyhessian

    torch.manual_seed(0)
    net = torch.nn.Sequential(
      torch.nn.Linear(784, w),
      torch.nn.ReLU(),
      torch.nn.Linear(w, w),
      torch.nn.ReLU(),
      torch.nn.Linear(w, 10),
    )
    with torch.no_grad():  # identical weights: flax Dense kernels are [in, out]
      for i, layer in enumerate((net[0], net[2], net[4])):
        p = params["params"][f"dense_{i}"]
        layer.weight.copy_(torch.from_numpy(np.asarray(p["kernel"]).T.copy()))
        layer.bias.copy_(torch.from_numpy(np.asarray(p["bias"])))
    net = net.to(_TORCH_DEVICE.value)
    tx, ty = torch.from_numpy(x), torch.from_numpy(y.astype(np.int64))
    criterion = torch.nn.CrossEntropyLoss()

    def run_pyhessian():  # its trace reads each product back with .item(): synchronized
      h = pyhessian(net, criterion, data=(tx, ty), cuda=_TORCH_DEVICE.value == "cuda")
      vals = np.array(h.trace(maxIter=m, tol=-float("inf")))
      results["PyHessian"] = (float(vals.mean()), float(vals.std(ddof=1) / np.sqrt(m)))

    fns = {"PyHessian": run_pyhessian}
  t = timing.interleaved(fns, repeats=_REPEATS.value, inner=1, warmup=1)
  return {
    "ms": {k: v * 1e3 for k, v in t.items()},
    "estimate": {k: results[k][0] for k in t},
    "stderr": {k: results[k][1] for k in t},
    "platform": jax.devices()[0].platform,
  }


def _figures(runs):
  """The title and rows of the table from the contenders' runs."""
  ms = timing.per_round(runs)
  last = {k: v for r in runs.values() for k, v in r[-1]["estimate"].items()}
  err = {k: v for r in runs.values() for k, v in r[-1]["stderr"].items()}
  rows = []
  for k, v in ms.items():
    ratio = timing.paired(v, ms["gradlab"])
    rows.append(
      {
        "implementation": k,
        "ms (median of rounds)": statistics.median(v),
        "x gradlab (median of paired rounds)": ratio["median"],
        "spread": ratio["spread"],
        "last estimate": last[k],
        "its stderr": err[k],
      }
    )
  prob = tasks.mlp_problem(_WIDTH.value, _BATCH.value)
  title = (
    f"Hutchinson trace, {_PROBES.value} Rademacher probes, MLP 784-{_WIDTH.value}-"
    f"{_WIDTH.value}-10 ({prob.num_params:,} params), batch {_BATCH.value}; each framework "
    f"in its own process, {_ROUNDS.value} alternating rounds; jax on "
    f"{runs['jax'][0]['platform']}, torch on {_TORCH_DEVICE.value.upper()}"
  )
  return title, rows


def main(argv):
  del argv
  if _CONTENDER.value:
    print(json.dumps(_contender(_CONTENDER.value)))
    return
  runs = timing.contender_processes(
    "benchmarks.trace_peers", ["jax", "pyhessian"], rounds=_ROUNDS.value, args=_forwarded()
  )
  timing.report(*_figures(runs), _JSON.value)


QUICK = {"probes": "2", "width": "8", "batch_size": "8", "repeats": "1", "rounds": "1"}


def measure(quick: bool, device: str) -> list[timing.Row]:
  """``benchmarks.all``'s rows: PyHessian's and matfree's time over gradlab's at equal
  probes (PyHessian on CUDA when ``device`` is gpu)."""
  values = dict(QUICK if quick else {"rounds": "2"})
  if device == "gpu":
    values["torch_device"] = "cuda"
  no_torch, no_matfree = timing.missing("torch", "pyhessian"), timing.missing("matfree")
  peers = {"PyHessian": (no_torch, ">= 2"), "matfree": (no_matfree, ">= 1 (parity or better)")}
  cmd = timing.command(__name__, values)
  if no_torch and no_matfree:
    return [
      timing.Row(f"{k} / gradlab", goal=g, command=cmd, note=timing.skipped(why))
      for k, (why, g) in peers.items()
    ]
  with timing.flag_values(values):
    names = ["jax"] if no_torch else ["jax", "pyhessian"]
    runs = timing.contenders(
      __name__, names, rounds=_ROUNDS.value, args=_forwarded(), local=_contender
    )
  ms = timing.per_round(runs)
  dev = f"jax {runs['jax'][0]['platform']}, torch {values.get('torch_device', 'cpu')}"
  out = []
  for k, (why, goal) in peers.items():
    if why:
      out.append(timing.Row(f"{k} / gradlab", goal=goal, command=cmd, note=timing.skipped(why)))
    else:
      r = timing.paired(ms[k], ms["gradlab"])
      out.append(timing.Row(f"{k} / gradlab", r["median"], r["spread"], goal, dev, cmd))
  return out


if __name__ == "__main__":
  app.run(main)
