r"""Peak memory of the probe-batched Hutchinson trace as the probe batch grows.

  python -m benchmarks.trace_memory [--json=out.json]

Reads XLA's own accounting of the compiled program
(``compiled.memory_analysis()``: the temporary buffers alive at once), which
is deterministic, unlike sampling a process's resident memory. 64 probes on
MLP 784-1024-1024-10 (1.86M parameters), batch 256; probe_batch from 1 to 64.
"""

from __future__ import annotations

import jax
from absl import app, flags

from benchmarks import timing
from gradlab import curvature, tasks

_PROBES = flags.DEFINE_integer("probes", 64, "Probes.")
_WIDTH = flags.DEFINE_integer("width", 1024, "Hidden width.")
_BATCH = flags.DEFINE_integer("batch_size", 256, "Batch size.")
_JSON = flags.DEFINE_string("json", None, "Write the figures here.")


def _figures():
  """The title and rows of the table, at the flags' sizes."""
  prob = tasks.mlp_problem(_WIDTH.value, _BATCH.value)
  params, batch, loss, n = prob.params, prob.batch, prob.loss, prob.num_params
  rows = []
  for pb in [pb for pb in (1, 2, 4, 8, 16, 32, 64) if pb <= _PROBES.value]:
    fn = jax.jit(
      lambda p, b, k, pb=pb: (
        curvature.hessian_trace(loss, p, b, k, num_probes=_PROBES.value, probe_batch=pb).estimate
      )
    )
    mem = fn.lower(params, batch, jax.random.key(0)).compile().memory_analysis()
    temp = getattr(mem, "temp_size_in_bytes", float("nan"))
    rows.append({"probe_batch": pb, "temp MiB": temp / 2**20, "x params' size": temp / (4 * n)})
  title = (
    f"Peak temporary memory of hessian_trace ({_PROBES.value} probes), MLP "
    f"784-{_WIDTH.value}-{_WIDTH.value}-10 ({n:,} params, "
    f"{4 * n / 2**20:.1f} MiB), batch {_BATCH.value}, on "
    f"{jax.devices()[0].platform}"
  )
  return title, rows


def main(argv):
  del argv
  timing.report(*_figures(), _JSON.value)


QUICK = {"probes": "2", "width": "8", "batch_size": "8"}


def measure(quick: bool, device: str) -> list[timing.Row]:
  """``benchmarks.all``'s rows: the temporaries over the parameters' size, at the
  smallest and the largest probe batch (XLA's accounting: no spread)."""
  del device
  values = QUICK if quick else {}
  with timing.flag_values(values):
    _, rows = _figures()
  dev, cmd = timing.jax_device(), timing.command(__name__, values)
  return [
    timing.Row(
      f"temp bytes / params' bytes, probe_batch={r['probe_batch']}",
      r["x params' size"],
      "",
      "",
      dev,
      cmd,
    )
    for r in (rows[0], rows[-1])
  ]


if __name__ == "__main__":
  app.run(main)
