r"""Data attribution: gradlab against dattri 0.3.0, each framework in its own process.

  pip install -e ".[bench]"        # torch 2.13.0 and dattri 0.3.0
  python -m benchmarks.attribution_peers [--rounds=3] [--json=out.json]

The setting of ``experiments.attribution_benchmark``: logistic regression on
the 5,000 embedded MNIST digits (dattri's split: 4,000 train, 500 test),
trained once in JAX (SGD lr 0.01, 20 epochs, batch 32; checkpoints at epochs
4, 8, ..., 20), the same weights loaded into a ``torch.nn.Linear`` for
dattri. All 4,000 train examples are attributed to all 500 test examples by

* ``trak``: TRAK on the final model, projection 512;
* ``trak_logra``: the same TRAK, gradlab projecting each layer's gradient by
  LoGra's Kronecker product (``kind="logra"``, ranks 64 x 8 = the same 512
  features, never forming the 7,850-wide per-example gradient), against
  dattri's dense-projection TRAK (its only kind on CPU);
* ``tracin``: TracIn-CP over the 5 checkpoints, learning rate 0.01, projection 512;
* ``if_cg``: influence functions, CG with 10 iterations, damping 0.1;

with the same hyper-parameters on both sides. Each (framework, method) runs
in a fresh process (``--contender``), timed from data-in-memory to scores
(dattri's ``cache`` + ``attribute``; gradlab's first call, compilation
included, and a second call of the compiled program, which is what repeated
attribution, e.g. over checkpoints or test batches, costs), so neither
framework's thread pool distorts the other. Rounds alternate the order
(A B, then B A, ...); the time ratio is the median of the per-round ratios,
with its min-max spread. LDS is scored by both sides' scores against the
same ground truth (50 half subsets x 3 seeds retrained in JAX). Goal: the
same LDS within noise and >= 3x faster on this CPU.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np
from absl import app, flags

from benchmarks import timing

_ROUNDS = flags.DEFINE_integer("rounds", 3, "Alternating rounds per method.")
_METHODS = flags.DEFINE_list("methods", ["trak", "trak_logra", "tracin", "if_cg"], "Methods.")
_JSON = flags.DEFINE_string("json", None, "Write the figures here.")
_CONTENDER = flags.DEFINE_string("contender", None, "Internal: framework:method:data.npz:out.npz.")

PROJ, DAMPING, CG_ITERS, LR = 512, 0.1, 10, 0.01


def prepare(path: str) -> None:
  """Data, trained checkpoints and LDS ground truth, in JAX, saved to ``path``."""
  import jax
  import jax.numpy as jnp

  from experiments import attribution_benchmark as ab
  from gradlab import influence as gi

  config = ab.Config()
  train, test, features = ab.load(config)
  params, loss, _ = ab.make_model(config, features)
  import optax

  n = config.num_train
  steps = config.epochs * (n // config.batch_size)
  fit = lambda m, k, segments=1: gi.train_on_subset(
    loss, params, train, m, k, optimizer=optax.sgd(LR), steps=steps, batch_size=32,
    segments=segments,
  )  # fmt: skip
  key = jax.random.key(0)
  traj = fit(jnp.ones(n), key, segments=5)
  masks = gi.random_subsets(jax.random.fold_in(key, 1), n, 50)
  sub = gi.subset_retrain(fit, masks, jax.random.fold_in(key, 2), seeds=3)
  per = lambda p: jax.vmap(lambda e: loss(p, e))(test)
  out = -jax.vmap(jax.vmap(per))(sub).mean(0)  # [50, 500]
  layer = lambda t: t["params"]["dense_0"]
  np.savez(
    path,
    x_train=np.asarray(train["x"]), y_train=np.asarray(train["y"]),
    x_test=np.asarray(test["x"]), y_test=np.asarray(test["y"]),
    kernels=np.asarray(layer(traj)["kernel"]), biases=np.asarray(layer(traj)["bias"]),
    masks=np.asarray(masks), outputs=np.asarray(out),
  )  # fmt: skip


def run_gradlab(method: str, d: dict) -> tuple[np.ndarray, float, float]:
  """Scores, seconds of the first call (compilation included) and of a second call."""
  import flax.linen as nn
  import jax
  import jax.numpy as jnp
  import optax

  from gradlab import influence as gi

  train = {"x": jnp.asarray(d["x_train"]), "y": jnp.asarray(d["y_train"])}
  test = {"x": jnp.asarray(d["x_test"]), "y": jnp.asarray(d["y_test"])}
  ckpts = [
    {"kernel": jnp.asarray(k), "bias": jnp.asarray(b)} for k, b in zip(d["kernels"], d["biases"])
  ]
  logits = lambda p, x: x @ p["kernel"] + p["bias"]
  loss = lambda p, e: optax.softmax_cross_entropy_with_integer_labels(logits(p, e["x"]), e["y"])
  margin = lambda p, e: gi.margin(logits(p, e["x"]), e["y"])
  key = jax.random.key(0)
  prj = lambda v: gi.project(v, key, PROJ)
  dense = nn.Dense(10)  # the same layer as flax sees it, for LoGra's layer capture
  flax_margin = lambda p, e: gi.margin(dense.apply(p, e["x"]), e["y"])
  flax_last = {"params": ckpts[-1]}
  fns = {
    "trak": lambda tr, te: gi.trak(margin, ckpts[-1:], tr, te, key, dim=PROJ),
    "trak_logra": lambda tr, te: gi.trak(
      flax_margin, [flax_last], tr, te, key, kind="logra", rank=(64, PROJ // 64)
    ),
    "tracin": lambda tr, te: gi.tracin_cp(loss, ckpts, [LR] * len(ckpts), tr, te, project=prj),
    "if_cg": lambda tr, te: gi.influence(
      loss, ckpts[-1], tr, te, solver=gi.cg(max_iterations=CG_ITERS), damping=DAMPING
    ),
  }
  fn = jax.jit(fns[method])
  t0 = time.perf_counter()
  scores = jax.block_until_ready(fn(train, test))
  cold = time.perf_counter() - t0
  t0 = time.perf_counter()
  jax.block_until_ready(fn(train, test))
  return np.asarray(scores), cold, time.perf_counter() - t0


def run_dattri(method: str, d: dict) -> tuple[np.ndarray, float, float]:
  """Scores and seconds of ``cache`` + ``attribute`` (twice the same figure: no warm-up)."""
  import torch
  from dattri.algorithm.influence_function import IFAttributorCG
  from dattri.algorithm.tracin import TracInAttributor
  from dattri.algorithm.trak import TRAKAttributor
  from dattri.task import AttributionTask
  from torch import nn

  torch.manual_seed(0)
  model = nn.Linear(784, 10)
  ckpts = [
    {"weight": torch.tensor(k.T.copy()), "bias": torch.tensor(b.copy())}
    for k, b in zip(d["kernels"], d["biases"])
  ]
  xs = lambda a: torch.tensor(a, dtype=torch.float32)
  ys = lambda a: torch.tensor(a, dtype=torch.long)
  train = torch.utils.data.TensorDataset(xs(d["x_train"]), ys(d["y_train"]))
  test = torch.utils.data.TensorDataset(xs(d["x_test"]), ys(d["y_test"]))
  ce = nn.CrossEntropyLoss()

  def loss(params, data):
    image, label = data
    # one example under dattri's vmap, the whole batch in its Hessian products
    yhat = torch.func.functional_call(model, params, image)
    return ce(yhat, label)

  def margin(params, data):
    logp = -loss(params, data)
    return logp - torch.log(1 - torch.exp(logp))

  def prob(params, data):
    return torch.exp(-loss(params, data))

  t0 = time.perf_counter()
  if method in ("trak", "trak_logra"):  # dattri's TRAK projects densely
    loader = lambda ds: torch.utils.data.DataLoader(ds, batch_size=500, shuffle=False)
    task = AttributionTask(loss_func=margin, model=model, checkpoints=ckpts[-1:])
    att = TRAKAttributor(
      task=task, correct_probability_func=prob, device="cpu",
      projector_kwargs={"device": "cpu", "proj_dim": PROJ},
    )  # fmt: skip
    att.cache(loader(train))
    scores = att.attribute(loader(test))
  elif method == "tracin":
    loader = lambda ds: torch.utils.data.DataLoader(ds, batch_size=500, shuffle=False)
    task = AttributionTask(loss_func=loss, model=model, checkpoints=ckpts)
    att = TracInAttributor(
      task=task, weight_list=torch.full((len(ckpts),), LR), normalized_grad=False,
      projector_kwargs={"device": "cpu", "proj_dim": PROJ},
    )  # fmt: skip
    scores = att.attribute(loader(train), loader(test))
  else:
    task = AttributionTask(loss_func=loss, model=model, checkpoints=ckpts[-1])
    att = IFAttributorCG(task=task, max_iter=CG_ITERS, regularization=DAMPING, device="cpu")
    att.cache(torch.utils.data.DataLoader(train, batch_size=4000, shuffle=False))
    scores = att.attribute(
      torch.utils.data.DataLoader(train, batch_size=4000, shuffle=False),
      torch.utils.data.DataLoader(test, batch_size=500, shuffle=False),
    )
  seconds = time.perf_counter() - t0
  return scores.detach().numpy().T, seconds, seconds  # dattri: [train, test]


def contender(spec: str) -> None:
  framework, method, data_path, out_path = spec.split(":")
  d = dict(np.load(data_path))
  scores, cold, warm = (run_gradlab if framework == "gradlab" else run_dattri)(method, d)
  np.savez(out_path, scores=scores)
  print(json.dumps({"seconds": cold, "warm": warm}))


def lds(scores: np.ndarray, masks: np.ndarray, outputs: np.ndarray) -> float:
  from scipy import stats

  pred = masks @ scores.T
  return float(
    np.nanmean([stats.spearmanr(pred[:, i], outputs[:, i])[0] for i in range(pred.shape[1])])
  )


def _figures():
  """The rows of the table, at the flags' settings."""
  tmp = tempfile.mkdtemp(prefix="attribution_peers_")
  data_path = os.path.join(tmp, "data.npz")
  prepare(data_path)
  d = np.load(data_path)
  rows = []
  for method in _METHODS.value:
    times = {"gradlab": [], "dattri": []}
    warm = []
    scored = {}
    for r in range(_ROUNDS.value):
      order = ["gradlab", "dattri"] if r % 2 == 0 else ["dattri", "gradlab"]
      for fw in order:
        out = os.path.join(tmp, f"{fw}_{method}.npz")
        proc = subprocess.run(
          [sys.executable, "-m", "benchmarks.attribution_peers", f"--contender={fw}:{method}:{data_path}:{out}"],
          capture_output=True, text=True, check=False,
        )  # fmt: skip
        if proc.returncode:
          sys.exit(f"{fw} {method} failed:\n{proc.stderr[-3000:]}")
        figures = json.loads(proc.stdout.strip().splitlines()[-1])
        times[fw].append(figures["seconds"])
        if fw == "gradlab":
          warm.append(figures["warm"])
        scored[fw] = lds(np.load(out)["scores"], d["masks"], d["outputs"])
    ratios = [b / a for a, b in zip(times["gradlab"], times["dattri"])]
    warm_ratios = [b / a for a, b in zip(warm, times["dattri"])]
    rows.append(
      {
        "method": method,
        "gradlab s, first call (median)": statistics.median(times["gradlab"]),
        "gradlab s, compiled (median)": statistics.median(warm),
        "dattri s (median)": statistics.median(times["dattri"]),
        "speed-up, first call (median of rounds)": statistics.median(ratios),
        "spread": f"{min(ratios):.2f}-{max(ratios):.2f}",
        "speed-up, compiled": statistics.median(warm_ratios),
        "spread (compiled)": f"{min(warm_ratios):.2f}-{max(warm_ratios):.2f}",
        "gradlab LDS": scored["gradlab"],
        "dattri LDS": scored["dattri"],
      }
    )
    print(rows[-1], flush=True)
  return rows


def main(argv):
  del argv
  if _CONTENDER.value:
    contender(_CONTENDER.value)
    return
  timing.report("Attribution, 4,000 train x 500 test, MNIST LR", _figures(), _JSON.value)


QUICK = {"rounds": "1", "methods": "trak"}


def measure(quick: bool, device: str):
  """``benchmarks.all``'s rows: per method dattri's time over gradlab's (first call,
  compilation included, and compiled) and the two LDS's difference. dattri runs on
  the CPU, whatever ``device`` (its device is fixed in this benchmark)."""
  del device
  values = QUICK if quick else {"rounds": "1"}
  cmd = timing.command(__name__, values)
  no_peer = timing.missing("torch", "dattri")
  with timing.flag_values(values):
    methods = list(_METHODS.value)
    rows = [] if no_peer else _figures()
  if no_peer:
    return [
      timing.Row(f"{m}: dattri / gradlab", goal=">= 3", command=cmd, note=timing.skipped(no_peer))
      for m in methods
    ]
  dev = f"{timing.jax_device()}, dattri torch cpu"
  out = []
  for r in rows:
    m = r["method"]
    out.append(
      timing.Row(
        f"{m}: dattri / gradlab, first call",
        r["speed-up, first call (median of rounds)"],
        r["spread"],
        ">= 3",
        dev,
        cmd,
      )
    )
    out.append(
      timing.Row(
        f"{m}: dattri / gradlab, compiled",
        r["speed-up, compiled"],
        r["spread (compiled)"],
        ">= 3",
        dev,
        cmd,
      )
    )
    out.append(
      timing.Row(
        f"{m}: LDS gradlab - dattri",
        r["gradlab LDS"] - r["dattri LDS"],
        "",
        "~0 (the same LDS within noise)",
        dev,
        cmd,
      )
    )
  return out


if __name__ == "__main__":
  app.run(main)
