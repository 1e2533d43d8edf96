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
"""

from __future__ import annotations

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


def main(argv):
  del argv
  m, w = _PROBES.value, _WIDTH.value
  prob = tasks.mlp_problem(w, _BATCH.value)
  params, batch, loss, n, x, y = (
    prob.params,
    prob.batch,
    prob.loss,
    prob.num_params,
    prob.x,
    prob.y,
  )

  ours = jax.jit(lambda p, b, k: curvature.hessian_trace(loss, p, b, k, num_probes=m))

  from matfree import stochtrace

  estimate = stochtrace.estimator_monte_carlo_mean_and_sem(
    stochtrace.monte_carlo_trace(), stochtrace.sampler_signs(params, num=m)
  )
  theirs = jax.jit(lambda p, b, k: estimate(curvature.make_hvp(loss, p, b), k))

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
  tx, ty = torch.from_numpy(x), torch.from_numpy(y.astype(np.int64))
  criterion = torch.nn.CrossEntropyLoss()
  results = {}

  def run_pyhessian():
    h = pyhessian(net, criterion, data=(tx, ty), cuda=False)
    vals = np.array(h.trace(maxIter=m, tol=-float("inf")))
    results["PyHessian"] = (vals.mean(), vals.std(ddof=1) / np.sqrt(m))

  keys = iter(jax.random.split(jax.random.key(1), 10_000))

  def run_ours():
    r = ours(params, batch, next(keys))
    results["gradlab"] = tuple(map(float, jax.block_until_ready(r[:2])))

  def run_matfree():
    r = theirs(params, batch, next(keys))
    results["matfree"] = tuple(map(float, jax.block_until_ready(r)))

  t = timing.interleaved(
    {"gradlab": run_ours, "matfree": run_matfree, "PyHessian": run_pyhessian},
    repeats=_REPEATS.value,
    inner=1,
    warmup=1,
  )
  rows = [
    {
      "implementation": k,
      "ms": v * 1e3,
      "x gradlab": v / t["gradlab"],
      "last estimate": results[k][0],
      "its stderr": results[k][1],
    }
    for k, v in t.items()
  ]
  timing.report(
    f"Hutchinson trace, {m} Rademacher probes, MLP 784-{w}-{w}-10 ({n:,} params), "
    f"batch {_BATCH.value}; jax on {jax.devices()[0].platform}, torch on CPU "
    f"({torch.get_num_threads()} threads)",
    rows,
    _JSON.value,
  )


if __name__ == "__main__":
  app.run(main)
