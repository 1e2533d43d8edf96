r"""Every gradlab transform on the same task, loss curves side by side.

  python -m experiments.optimizer_zoo --workdir=/tmp/gradlab/zoo

Trains the digits MLP (``--task=classifier``) or the tiny transformer LM
(``--task=lm``) with each optimizer for ``--num_steps`` over ``--seeds``
vmapped seeds, with learning rates from the papers' recommended ranges
scaled to this task (``LEARNING_RATES``; not tuned per method, so read the
curves as "runs and behaves", not as a ranking). Writes ``results.md/.csv``
(final and best median loss, steps to reach Adam's final loss), ``loss.png``
and ``runs/<optimizer>.json`` per finished optimizer (a restart skips them).

``dp_per_layer_aggregate`` is absent: it consumes per-example gradients and
is exercised by ``tests/transforms``.
"""

from __future__ import annotations

import os

import jax
import numpy as np
import optax
from absl import app, flags

from experiments import flag_checks, reporting
from gradlab import tasks, train, transforms

# What SCALE and AGVM need to know about each task's model (the caller's, not the task's).
LAST_LAYER = {"classifier": r"dense_2/kernel", "lm": r"head/kernel"}
HEAD = {"classifier": "dense_2", "lm": "head"}


def _optimizers(task: tasks.Task, task_name: str):
  grad = jax.grad(lambda p, b, k: task.loss_fn(p, b, k)[0])

  def svrg_extra(params, batch, key, grad_fn):
    del params, batch

    def full(p):  # the "full" gradient: 8 fixed batches
      gs = [grad(p, task.sample_batch(jax.random.key(10_000 + i)), key) for i in range(8)]
      return jax.tree.map(lambda *g: sum(g) / len(g), *gs)

    return {"full_grad_fn": full, "grad_fn": grad_fn}

  def labels(params):
    return jax.tree_util.tree_map_with_path(
      lambda p, _: "head" if HEAD[task_name] in jax.tree_util.keystr(p) else "body", params
    )

  with_grad_fn = transforms.grad_fn_extra_args

  return {
    "adam": (lambda lr: optax.adam(lr), 3e-3, None),
    "spam": (
      lambda lr: transforms.spam(lr, reset_interval=100, warmup_steps=20, clip_after=10),
      3e-3,
      None,
    ),
    "spike_clip+adam": (
      lambda lr: optax.chain(transforms.spike_clip(), optax.adam(lr)),
      3e-3,
      None,
    ),
    "per_layer_clip+adam": (
      lambda lr: optax.chain(transforms.per_layer_clip(1.0), optax.adam(lr)),
      3e-3,
      None,
    ),
    "layerwise_normalize+momentum": (
      lambda lr: optax.chain(transforms.layerwise_normalize(), optax.sgd(lr, momentum=0.9)),
      3e-2,
      None,
    ),
    "lamb (layer-wise trust ratio)": (lambda lr: optax.lamb(lr), 3e-3, None),
    "diffgrad": (lambda lr: transforms.diffgrad(lr), 3e-3, None),
    "scale": (lambda lr: transforms.scale(lr, last_layer=LAST_LAYER[task_name]), 3e-3, None),
    "agvm+momentum": (
      lambda lr: optax.chain(
        optax.sgd(lr, momentum=0.9), transforms.agvm(labels, "body", start=0, interval=5)
      ),
      3e-2,
      transforms.half_batch_grads(task.loss_fn),
    ),
    "adam_8bit": (lambda lr: transforms.adam_8bit(lr, min_8bit_size=1024), 3e-3, None),
    "storm": (lambda lr: transforms.storm(k=lr, w=0.1, c=100.0), 0.1, with_grad_fn),
    "mars": (lambda lr: transforms.mars(lr), 3e-3, None),
    "mars (exact)": (lambda lr: transforms.mars(lr, exact=True), 3e-3, with_grad_fn),
    "svrg+sgd": (lambda lr: optax.chain(transforms.svrg(50), optax.sgd(lr)), 0.1, svrg_extra),
  }


_WORKDIR = flags.DEFINE_string("workdir", "runs/optimizer_zoo", "Output directory.")
_TASK = flags.DEFINE_string("task", "classifier", f"One of {', '.join(tasks.TASKS)}.")
_ONLY = flags.DEFINE_list("only", [], "Run only these optimizers (default: all).")
_SEEDS = flags.DEFINE_integer("seeds", 2, "Seeds per optimizer.")
_NUM_STEPS = flags.DEFINE_integer("num_steps", 400, "Training steps.")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 64, "Batch size.")

PROG = "optimizer_zoo"


def main(argv):
  del argv
  try:
    flag_checks.one_of("task", _TASK.value, tasks.TASKS)
    flag_checks.positive("seeds", _SEEDS.value)
    flag_checks.positive("num_steps", _NUM_STEPS.value)
    flag_checks.positive("batch_size", _BATCH_SIZE.value)
    flag_checks.require(
      _BATCH_SIZE.value % 2 == 0, "batch_size", "even (AGVM halves it)", _BATCH_SIZE.value
    )
    task = tasks.make_task(_TASK.value, _BATCH_SIZE.value)
    zoo = _optimizers(task, _TASK.value)
    for name in _ONLY.value:
      flag_checks.one_of("only", name, zoo)
    flag_checks.check_same_run(
      _WORKDIR.value,
      {k: flags.FLAGS[k].value for k in ("task", "seeds", "num_steps", "batch_size")},
    )
  except flag_checks.FlagError as e:
    flag_checks.exit_on_flag_error(PROG, e)
  workdir = _WORKDIR.value
  os.makedirs(os.path.join(workdir, "runs"), exist_ok=True)
  names = _ONLY.value or list(zoo)
  results = {}
  for name in names:
    path = os.path.join(workdir, "runs", name.replace(" ", "_").replace("/", "_") + ".json")
    make, lr, extra = zoo[name]

    def run(make=make, lr=lr, extra=extra):
      losses = np.asarray(
        train.train_curves(task, make(lr), _SEEDS.value, _NUM_STEPS.value, extra_args_fn=extra)
      )
      return {"lr": lr, "curve": np.median(losses, axis=0).tolist()}

    results[name], reused = reporting.cached_unit(path, run)
    if not reused:
      print(f"{name}: final median loss {np.mean(results[name]['curve'][-20:]):.4g}", flush=True)
  window = max(1, _NUM_STEPS.value // 20)
  smooth = {
    n: np.convolve(r["curve"], np.ones(window) / window, mode="valid") for n, r in results.items()
  }
  target = smooth["adam"][-1] if "adam" in smooth else None
  rows = []
  for n, r in results.items():
    s = smooth[n]
    hit = np.nonzero(s <= target)[0] if target is not None else []
    rows.append(
      {
        "optimizer": n,
        "learning rate": r["lr"],
        "final loss": float(s[-1]),
        "best loss": float(np.nanmin(s)),
        "steps to adam's final loss": int(hit[0]) + window if len(hit) else "not reached",
      }
    )
  reporting.plot_curves(
    os.path.join(workdir, "loss.png"),
    {n: (list(range(len(r["curve"]))), r["curve"]) for n, r in results.items()},
    xlabel="step",
    ylabel="training loss (median over seeds)",
    logy=True,
    title=f"optimizer zoo on {_TASK.value}",
  )
  reporting.write_table(
    workdir,
    rows,
    title=f"Optimizer zoo: {_TASK.value}",
    notes=(
      f"{_SEEDS.value} seeds x {_NUM_STEPS.value} steps, batch "
      f"{_BATCH_SIZE.value}; losses smoothed over {window} steps."
    ),
  )
  print(f"results in {workdir}")


if __name__ == "__main__":
  app.run(main)
