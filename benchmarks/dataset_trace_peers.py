r"""Hutchinson's trace of a whole dataset's Hessian: gradlab against PyHessian's dataloader mode.

  pip install -e ".[bench]"
  python -m benchmarks.dataset_trace_peers [--probes=32] [--micro_batches=10] [--json=out.json]

The Hessian of the mean loss over the 5,000 MNIST digits that ``gradlab.data``
embeds (train and test splits together), on the same MLP (784-256-256-10,
269k parameters; identical weights in torch and JAX), in ``--micro_batches``
micro-batches, with the same number of Rademacher probes, so the estimators
have the same distribution: their estimates and standard errors are printed
to show it (the difference over its standard error is a z-score; |z| < 3
expected). PyHessian is ``hessian(model, criterion, dataloader=...)`` then
``.trace(tol=-inf)`` (every probe used), each product a pass over a torch
``DataLoader`` of the micro-batches weighted by their sizes; gradlab is
``hessian_trace(..., micro_batch=)`` over the stacked arrays under one
``jax.jit`` (each product a ``lax.scan`` of forward-over-reverse products)
and, as the analogue of a dataloader, the same over a ``curvature.batches``
stream of NumPy micro-batches (a Python loop over jitted products). Both
set-ups are inside the timed call.

PyHessian runs in its own process and gradlab in another, alternating
(``timing.contender_processes``, ``--rounds`` of each); the ratio is taken
round by round and reported as its median and spread.
"""

from __future__ import annotations

import json
import math
import statistics

import jax
import numpy as np
from absl import app, flags

from benchmarks import timing
from gradlab import curvature, data, tasks

_PROBES = flags.DEFINE_integer("probes", 32, "Rademacher probes.")
_MICRO = flags.DEFINE_integer("micro_batches", 10, "Micro-batches the 5,000 digits split into.")
_WIDTH = flags.DEFINE_integer("width", 256, "Hidden width.")
_REPEATS = flags.DEFINE_integer("repeats", 5, "Timed repeats.")
_JSON = flags.DEFINE_string("json", None, "Write the figures here.")
_ROUNDS = flags.DEFINE_integer("rounds", 4, "Alternating process rounds per contender.")
_CONTENDER = flags.DEFINE_string("contender", None, "Internal: 'jax' or 'pyhessian'.")
_TORCH_DEVICE = flags.DEFINE_string("torch_device", "cpu", "PyHessian's device: cpu or cuda.")
_EXAMPLES = flags.DEFINE_integer("examples", 5000, "The first this many of the 5,000 digits.")
_RANDOM = flags.DEFINE_bool("random_data", False, "Random MNIST-shaped data (no MNIST to read).")


def _forwarded():
  return [
    f"--probes={_PROBES.value}",
    f"--micro_batches={_MICRO.value}",
    f"--width={_WIDTH.value}",
    f"--repeats={_REPEATS.value}",
    f"--torch_device={_TORCH_DEVICE.value}",
    f"--examples={_EXAMPLES.value}",
    f"--random_data={_RANDOM.value}",
  ]


def _mnist() -> tuple[np.ndarray, np.ndarray]:
  n = _EXAMPLES.value
  if _RANDOM.value:
    rng = np.random.default_rng(0)
    return rng.random((n, 784), np.float32), rng.integers(0, 10, n).astype(np.int32)
  d = data.load_dataset("mnist")
  return np.concatenate([d.x_train, d.x_test])[:n], np.concatenate([d.y_train, d.y_test])[:n]


def _contender(which: str) -> dict:
  m, w = _PROBES.value, _WIDTH.value
  x, y = _mnist()
  n = len(x)
  mb = math.ceil(n / _MICRO.value)
  prob = tasks.mlp_problem(w, 1)
  params, loss = prob.params, prob.loss
  results, fns = {}, {}
  if which == "jax":
    stacked = {"x": jax.device_put(x), "y": jax.device_put(y)}
    stream = curvature.batches([{"x": x[i : i + mb], "y": y[i : i + mb]} for i in range(0, n, mb)])
    ours = jax.jit(
      lambda p, d, k: curvature.hessian_trace(loss, p, d, k, num_probes=m, micro_batch=mb)
    )
    keys = iter(jax.random.split(jax.random.key(1), 10_000))

    def run_stacked():
      r = ours(params, stacked, next(keys))
      results["gradlab"] = tuple(map(float, jax.block_until_ready(r[:2])))

    def run_stream():
      r = curvature.hessian_trace(loss, params, stream, next(keys), num_probes=m)
      results["gradlab stream"] = tuple(map(float, jax.block_until_ready(r[:2])))

    fns = {"gradlab": run_stacked, "gradlab stream": run_stream}
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
    dataset = torch.utils.data.TensorDataset(
      torch.from_numpy(x), torch.from_numpy(y.astype(np.int64))
    )
    loader = torch.utils.data.DataLoader(dataset, batch_size=mb, shuffle=False)
    criterion = torch.nn.CrossEntropyLoss()

    def run_pyhessian():  # its trace reads each product back with .item(): synchronized
      h = pyhessian(net, criterion, dataloader=loader, cuda=_TORCH_DEVICE.value == "cuda")
      vals = np.array(h.trace(maxIter=m, tol=-float("inf")))
      results["PyHessian"] = (float(vals.mean()), float(vals.std(ddof=1) / np.sqrt(m)))

    fns = {"PyHessian": run_pyhessian}
  t = timing.interleaved(fns, repeats=_REPEATS.value, inner=1, warmup=1)
  return {
    "ms": {k: v * 1e3 for k, v in t.items()},
    "estimate": {k: results[k][0] for k in t},
    "stderr": {k: results[k][1] for k in t},
    "platform": jax.devices()[0].platform,
    "examples": n,
    "micro_batch": mb,
  }


def _figures(runs):
  """The title and rows of the table from the contenders' runs."""
  ms = timing.per_round(runs)
  last = {k: v for r in runs.values() for k, v in r[-1]["estimate"].items()}
  err = {k: v for r in runs.values() for k, v in r[-1]["stderr"].items()}
  rows = []
  for k, v in ms.items():
    ratio = timing.paired(v, ms["gradlab"])
    z = (
      (last[k] - last["PyHessian"]) / math.hypot(err[k], err["PyHessian"])
      if "PyHessian" in last
      else float("nan")
    )
    rows.append(
      {
        "implementation": k,
        "ms (median of rounds)": statistics.median(v),
        "x gradlab (median of paired rounds)": ratio["median"],
        "spread": ratio["spread"],
        "last estimate": last[k],
        "its stderr": err[k],
        "z vs PyHessian": z,
      }
    )
  jax_run = runs["jax"][0]
  prob = tasks.mlp_problem(_WIDTH.value, 1)
  title = (
    f"Dataset Hutchinson trace, {_PROBES.value} Rademacher probes, MLP 784-{_WIDTH.value}-"
    f"{_WIDTH.value}-10 ({prob.num_params:,} params), {jax_run['examples']:,} "
    f"{'random MNIST-shaped inputs' if _RANDOM.value else 'MNIST digits'} in "
    f"micro-batches of {jax_run['micro_batch']}; each framework in its own process, "
    f"{_ROUNDS.value} alternating rounds; jax on {jax_run['platform']}, torch on "
    f"{_TORCH_DEVICE.value.upper()}"
  )
  return title, rows


def main(argv):
  del argv
  if _CONTENDER.value:
    print(json.dumps(_contender(_CONTENDER.value)))
    return
  runs = timing.contender_processes(
    "benchmarks.dataset_trace_peers", ["jax", "pyhessian"], rounds=_ROUNDS.value, args=_forwarded()
  )
  timing.report(*_figures(runs), _JSON.value)


QUICK = {
  "probes": "2",
  "micro_batches": "2",
  "width": "8",
  "repeats": "1",
  "rounds": "1",
  "examples": "16",
  "random_data": "true",
}


def measure(quick: bool, device: str) -> list[timing.Row]:
  """``benchmarks.all``'s rows: PyHessian's dataloader trace over gradlab's micro-batched
  one (PyHessian on CUDA when ``device`` is gpu), the two estimates' z, and the
  stream of NumPy micro-batches over the stacked arrays."""
  values = dict(QUICK if quick else {"rounds": "2"})
  if device == "gpu":
    values["torch_device"] = "cuda"
  no_torch = timing.missing("torch", "pyhessian")
  cmd = timing.command(__name__, values)
  with timing.flag_values(values):
    names = ["jax"] if no_torch else ["jax", "pyhessian"]
    runs = timing.contenders(
      __name__, names, rounds=_ROUNDS.value, args=_forwarded(), local=_contender
    )
    _, rows = _figures(runs)
  ms = timing.per_round(runs)
  dev = f"jax {runs['jax'][0]['platform']}, torch {values.get('torch_device', 'cpu')}"
  r = timing.paired(ms["gradlab stream"], ms["gradlab"])
  out = [
    timing.Row(
      "gradlab stream / gradlab stacked", r["median"], r["spread"], "", timing.jax_device(), cmd
    )
  ]
  if no_torch:
    note = timing.skipped(no_torch)
    out.append(timing.Row("PyHessian / gradlab", goal="", command=cmd, note=note))
    out.append(
      timing.Row("z, gradlab - PyHessian estimates", goal="|z| < 3", command=cmd, note=note)
    )
  else:
    r = timing.paired(ms["PyHessian"], ms["gradlab"])
    z = next(row["z vs PyHessian"] for row in rows if row["implementation"] == "gradlab")
    out.append(timing.Row("PyHessian / gradlab", r["median"], r["spread"], "", dev, cmd))
    out.append(timing.Row("z, gradlab - PyHessian estimates", z, "", "|z| < 3", dev, cmd))
  return out


if __name__ == "__main__":
  app.run(main)
