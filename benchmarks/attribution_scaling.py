r"""Attribution at scale: time and peak memory of each streamed score against n and d.

  python -m benchmarks.attribution_scaling [--ns=2048,4096,8192,16384,32768]
      [--widths=32,64,128,256] [--chunk=512] [--queries=16] [--png=scaling.png] [--json=out.json]

A flax MLP ``64 -> width -> width -> 10`` (ReLU, ``nn.Dense``) on generated
inputs and labels; ``m = --queries`` test examples are scored against n train
examples, ``--chunk`` at a time, by

* ``ekfac``: ``influence(solver=ekfac_solver(factors=factors))`` with factors fitted beforehand (on
  1,024 examples: the fit is not what scales here), scored by the factored
  per-layer contraction;
* ``ekfac_r4``: the same with rank-4 queries (``query_rank=4``);
* ``grad_dot``: ``grad_similarity`` (exact gradients, no projection);
* ``tracin``: ``tracin_cp`` over 2 checkpoints;
* ``trak``: ``trak`` with a 256-dimensional projection, one model (it holds the
  ``[n, 256]`` projected features in memory, by design);
* ``logra``: ``logra`` with rank 8 per layer side (when ``gradlab.influence``
  has it).

Each is one ``jax.jit`` program over the train arrays. **Time**: the median of
3 calls of the compiled program (the compile is reported apart). **Memory**:
XLA's own accounting of the compiled program's temporaries
(``memory_analysis().temp_size_in_bytes``: the buffers alive at once besides
the inputs and the ``[m, n]`` output), which is deterministic, unlike a
process's resident memory; beside it the size of the ``[n, d]`` train gradients
that the materialized formula holds. Goals: time linear in n (the slope of
log time against log n near 1), temporaries flat in n at a fixed chunk.
"""

from __future__ import annotations

import statistics
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from benchmarks import timing
from gradlab import curvature
from gradlab import influence as gi

_NS = flags.DEFINE_list("ns", ["2048", "4096", "8192", "16384", "32768"], "Train set sizes.")
_WIDTHS = flags.DEFINE_list("widths", ["32", "64", "128", "256"], "Hidden widths (d).")
_WIDTH = flags.DEFINE_integer("width", 64, "Hidden width of the n sweep.")
_N_FOR_D = flags.DEFINE_integer("n_for_d", 8192, "Train set size of the d sweep.")
_CHUNK = flags.DEFINE_integer("chunk", 512, "Train examples per chunk.")
_QUERIES = flags.DEFINE_integer("queries", 16, "Test examples (m).")
_METHODS = flags.DEFINE_list(
  "methods", ["ekfac", "ekfac_r4", "grad_dot", "tracin", "trak", "logra"], "Methods."
)
_PNG = flags.DEFINE_string("png", "attribution_scaling.png", "Write the figure here.")
_JSON = flags.DEFINE_string("json", None, "Write the figures here.")

D_IN, CLASSES = 64, 10


class _Mlp(nn.Module):
  width: int

  @nn.compact
  def __call__(self, x):
    x = nn.relu(nn.Dense(self.width)(x))
    x = nn.relu(nn.Dense(self.width)(x))
    return nn.Dense(CLASSES)(x)


def _data(n: int, seed: int) -> dict:
  rng = np.random.default_rng(seed)
  return {
    "x": jnp.asarray(rng.normal(size=(n, D_IN)), jnp.float32),
    "y": jnp.asarray(rng.integers(0, CLASSES, n), jnp.int32),
  }


def _problem(width: int):
  model = _Mlp(width)
  params = model.init(jax.random.key(0), jnp.zeros(D_IN))

  def loss(p, e):
    return -jax.nn.log_softmax(model.apply(p, e["x"]))[e["y"]]

  margin = lambda p, e: gi.margin(model.apply(p, e["x"]), e["y"])
  needed = any(m.startswith("ekfac") for m in _METHODS.value)
  factors = curvature.ekfac(loss, params, _data(1024, 1), micro_batch=256) if needed else None
  d = sum(x.size for x in jax.tree.leaves(params))
  return params, loss, margin, factors, d


def _method(name: str, params, loss, margin, factors, test, chunk):
  key = jax.random.key(3)
  ckpts = [params, jax.tree.map(lambda a: 0.9 * a, params)]
  table = {
    "ekfac": lambda tr: gi.influence(
      loss,
      params,
      tr,
      test,
      solver=gi.ekfac_solver(factors=factors),
      damping=None,
      chunk_size=chunk,
    ),
    "ekfac_r4": lambda tr: gi.influence(
      loss,
      params,
      tr,
      test,
      solver=gi.ekfac_solver(factors=factors),
      damping=None,
      chunk_size=chunk,
      query_rank=4,
    ),  # fmt: skip
    "grad_dot": lambda tr: gi.grad_similarity(loss, params, tr, test, chunk_size=chunk),
    "tracin": lambda tr: gi.tracin_cp(loss, ckpts, [0.1, 0.1], tr, test, chunk_size=chunk),
    "trak": lambda tr: gi.trak(margin, [params], tr, test, key, dim=256, chunk_size=chunk),
  }
  if hasattr(gi, "logra"):
    table["logra"] = lambda tr: gi.logra(loss, params, tr, test, key, rank=8, chunk_size=chunk)
  return table.get(name)


def time_and_memory(name: str, width: int, n: int, chunk: int, m: int, cache: dict) -> dict | None:
  if width not in cache:
    cache[width] = _problem(width)
  params, loss, margin, factors, d = cache[width]
  test = _data(m, 2)
  f = _method(name, params, loss, margin, factors, test, chunk)
  if f is None:
    return None
  train = _data(n, 0)
  fn = jax.jit(f)
  t0 = time.perf_counter()
  compiled = fn.lower(train).compile()
  compile_s = time.perf_counter() - t0
  temp = compiled.memory_analysis().temp_size_in_bytes
  jax.block_until_ready(compiled(train))
  runs = []
  for _ in range(3):
    t0 = time.perf_counter()
    jax.block_until_ready(compiled(train))
    runs.append(time.perf_counter() - t0)
  return {
    "method": name, "n": n, "d": d, "chunk": chunk, "compile s": compile_s,
    "s (median of 3)": statistics.median(runs), "temp MiB": temp / 2**20,
    "[n, d] gradients MiB": n * d * 4 / 2**20,
  }  # fmt: skip


def _slope(rows: list[dict], x: str, y: str) -> float:
  xs = np.log([r[x] for r in rows])
  ys = np.log([r[y] for r in rows])
  return float(np.polyfit(xs, ys, 1)[0])


def _plot(by_n: list[dict], by_d: list[dict], path: str) -> None:
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  from experiments.reporting import save_figure

  fig, axes = plt.subplots(2, 2, figsize=(11, 8))
  for rows, x, col in ((by_n, "n", 0), (by_d, "d", 1)):
    for name in dict.fromkeys(r["method"] for r in rows):
      rs = [r for r in rows if r["method"] == name]
      axes[0, col].loglog([r[x] for r in rs], [r["s (median of 3)"] for r in rs], "o-", label=name)
      axes[1, col].loglog([r[x] for r in rs], [r["temp MiB"] for r in rs], "o-", label=name)
    rs = [r for r in rows if r["method"] == rows[0]["method"]]
    axes[1, col].loglog(
      [r[x] for r in rs], [r["[n, d] gradients MiB"] for r in rs], "k--", label="[n, d] gradients"
    )
    axes[0, col].set(xlabel=x, ylabel="seconds (compiled)", title=f"time against {x}")
    axes[1, col].set(xlabel=x, ylabel="temporaries (MiB)", title=f"peak temporaries against {x}")
  axes[0, 0].legend(fontsize=8)
  axes[1, 0].legend(fontsize=8)
  fig.tight_layout()
  save_figure(fig, path)


def _figures():
  """The rows of the n sweep, the d sweep and the summary, at the flags' sizes."""
  cache: dict = {}
  by_n, by_d, summary = [], [], []
  m, chunk = _QUERIES.value, _CHUNK.value
  for name in _METHODS.value:
    rows_n = [time_and_memory(name, _WIDTH.value, int(n), chunk, m, cache) for n in _NS.value]
    if rows_n[0] is None:
      print(f"{name}: not available, skipped")
      continue
    rows_d = [time_and_memory(name, int(w), _N_FOR_D.value, chunk, m, cache) for w in _WIDTHS.value]
    by_n += rows_n
    by_d += rows_d
    temps = [r["temp MiB"] for r in rows_n]
    summary.append({
      "method": name,
      "time slope in n (log-log)": _slope(rows_n, "n", "s (median of 3)"),
      "time slope in d (log-log)": _slope(rows_d, "d", "s (median of 3)"),
      "temp MiB at smallest n": temps[0], "temp MiB at largest n": temps[-1],
      "[n, d] MiB at largest n": rows_n[-1]["[n, d] gradients MiB"],
    })  # fmt: skip
    print(summary[-1], flush=True)
  return by_n, by_d, summary


def main(argv):
  del argv
  m, chunk = _QUERIES.value, _CHUNK.value
  by_n, by_d, summary = _figures()
  timing.report("Attribution time and memory against n", by_n, None)
  timing.report("Attribution time and memory against d", by_d, None)
  timing.report(f"Scaling summary (chunk {chunk}, m = {m})", summary, _JSON.value)
  if _PNG.value:
    _plot(by_n, by_d, _PNG.value)
    print(f"wrote {_PNG.value}")


QUICK = {
  "ns": "32,64",
  "widths": "4,8",
  "width": "4",
  "n_for_d": "32",
  "chunk": "16",
  "queries": "2",
  "methods": "grad_dot",
}


def measure(quick: bool, device: str) -> list[timing.Row]:
  """``benchmarks.all``'s rows: per method the log-log slope of time in n (linear: 1)
  and the temporaries at the largest n over those at the smallest (flat: 1)."""
  del device
  values = QUICK if quick else {}
  with timing.flag_values(values):
    _, _, summary = _figures()
  dev, cmd = timing.jax_device(), timing.command(__name__, values)
  out = []
  for r in summary:
    m = r["method"]
    out.append(
      timing.Row(
        f"{m}: time slope in n (log-log)",
        r["time slope in n (log-log)"],
        "",
        "~1 (linear in n)",
        dev,
        cmd,
      )
    )
    out.append(
      timing.Row(
        f"{m}: temp at largest n / at smallest n",
        r["temp MiB at largest n"] / r["temp MiB at smallest n"]
        if r["temp MiB at smallest n"]
        else float("nan"),
        "",
        "~1 (flat in n)",
        dev,
        cmd,
      )
    )
  return out


if __name__ == "__main__":
  app.run(main)
