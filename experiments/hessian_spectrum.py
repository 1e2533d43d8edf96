r"""The Hessian's spectrum at the end of training: a bulk near zero plus outliers.

  python -m experiments.hessian_spectrum --workdir=runs/hessian_spectrum

After "Empirical Analysis of the Hessian of Over-Parametrized Neural
Networks" (Sagun, Evci, Guney, Dauphin, Bottou, 2017) and its refinement by
Papyan (2020): on C-class data the spectrum of a trained network's loss
Hessian is a bulk concentrated near zero plus a few outliers whose number
tracks the number of classes (C - 1 for softmax cross-entropy, whose
Hessian in the logits has rank C - 1), and growing the width changes the
bulk, not the outliers' count.

Task: C overlapping Gaussian blobs in R^20 (``gradlab.tasks.gaussian_blobs``,
separation 1.5, so the loss stays away from zero), a one-hidden-layer MLP,
full-batch gradient descent. For each (C, width): the dense Hessian's
eigenvalues (``jax.hessian``, feasible up to a few thousand parameters),
the outlier count at the largest relative gap, bulk statistics, and the SLQ
density (``gradlab.curvature``) beside the dense histogram.
"""

from __future__ import annotations

import itertools
import os

import jax
import jax.numpy as jnp
import matplotlib
import numpy as np
import optax
from absl import app, flags, logging
from jax.flatten_util import ravel_pytree

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from experiments import flag_checks, reporting  # noqa: E402
from gradlab import curvature, models, tasks, train  # noqa: E402

_WORKDIR = flags.DEFINE_string("workdir", "runs/hessian_spectrum", "Output directory.")
_CLASSES = flags.DEFINE_list("classes", ["3", "5", "10"], "Numbers of classes C.")
_WIDTHS = flags.DEFINE_list("widths", ["32", "128"], "Hidden widths.")
_DIM = flags.DEFINE_integer("dim", 20, "Input dimension.")
_NUM_TRAIN = flags.DEFINE_integer("num_train", 2000, "Training examples.")
_SEPARATION = flags.DEFINE_float("separation", 1.5, "Blob separation (smaller: more overlap).")
_NUM_STEPS = flags.DEFINE_integer("num_steps", 2000, "Full-batch GD steps.")
_LEARNING_RATE = flags.DEFINE_float("learning_rate", 0.1, "GD learning rate.")
_MAX_PARAMS = flags.DEFINE_integer("max_params", 6000, "Refuse a dense Hessian above this size.")
_SLQ_ITERATIONS = flags.DEFINE_integer("slq_iterations", 80, "Lanczos steps per SLQ run.")
_SLQ_RUNS = flags.DEFINE_integer("slq_runs", 8, "SLQ runs.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed.")

PROG = "hessian_spectrum"


def _param_count(dim: int, width: int, classes: int) -> int:
  return dim * width + width + width * classes + classes


def run_one(workdir: str, classes: int, width: int) -> dict:
  ds = tasks.gaussian_blobs(
    num_classes=classes,
    dim=_DIM.value,
    num_train=_NUM_TRAIN.value,
    separation=_SEPARATION.value,
    seed=_SEED.value,
  )
  model = models.MLP((width, classes))
  params = model.init(jax.random.key(_SEED.value), jnp.zeros((1, _DIM.value)))
  batch = {"x": ds.x_train, "y": ds.y_train}

  def loss(p, b):
    return optax.softmax_cross_entropy_with_integer_labels(model.apply(p, b["x"]), b["y"]).mean()

  opt = optax.sgd(_LEARNING_RATE.value)
  step = train.make_train_step(lambda p, b, k: (loss(p, b), {}), opt)
  state, last = train.fit(
    train.TrainState.create(params, opt, jax.random.key(1)),
    step,
    lambda s: itertools.repeat(batch),
    num_steps=_NUM_STEPS.value,
    workdir=workdir,
    checkpoint_every=_NUM_STEPS.value,
    log_every=100,
    progress_every=_NUM_STEPS.value,
  )
  flat, unravel = ravel_pytree(state.params)
  h = jax.jit(jax.hessian(lambda x: loss(unravel(x), batch)))(flat)
  ev = np.sort(np.linalg.eigvalsh(np.asarray(h, np.float64)))[::-1]
  outliers = int(curvature.count_outliers(ev, max_outliers=2 * classes))
  density = jax.jit(
    lambda p, k: curvature.hessian_spectral_density(
      loss, p, batch, k, num_iterations=_SLQ_ITERATIONS.value, num_runs=_SLQ_RUNS.value
    )
  )(state.params, jax.random.key(2))
  bulk = ev[outliers:]
  np.save(os.path.join(workdir, "eigenvalues.npy"), ev)
  return (
    {
      "C": classes,
      "width": width,
      "params": len(flat),
      "final loss": last["loss"],
      "outliers": outliers,
      "C - 1": classes - 1,
      "lambda_max": float(ev[0]),
      "bulk edge": float(bulk[0]),
      "bulk std": float(bulk.std()),
      "bulk |lambda| < 1e-3 lambda_max (%)": float(100 * np.mean(np.abs(bulk) < 1e-3 * ev[0])),
      "negative (%)": float(100 * np.mean(ev < 0)),
    },
    ev,
    density,
  )


def main(argv):
  del argv
  try:
    classes = flag_checks.number_list(
      "classes",
      _CLASSES.value,
      kind=int,
      valid=lambda v: v >= 2,
      expected="a comma-separated list of integers >= 2",
    )
    widths = flag_checks.number_list(
      "widths",
      _WIDTHS.value,
      kind=int,
      valid=lambda v: v >= 1,
      expected="a comma-separated list of integers >= 1",
    )
    for name in ("dim", "num_train", "num_steps", "max_params", "slq_iterations", "slq_runs"):
      flag_checks.positive(name, flags.FLAGS[name].value)
    flag_checks.positive("learning_rate", _LEARNING_RATE.value)
    flag_checks.positive("separation", _SEPARATION.value)
    biggest = max(_param_count(_DIM.value, w, c) for w in widths for c in classes)
    flag_checks.require(
      biggest <= _MAX_PARAMS.value,
      "widths",
      f"small enough for a dense Hessian (<= --max_params={_MAX_PARAMS.value} parameters)",
      f"{','.join(_WIDTHS.value)} ({biggest} parameters)",
    )
    flag_checks.check_same_run(
      _WORKDIR.value,
      {
        k: flags.FLAGS[k].value
        for k in ("dim", "num_train", "separation", "num_steps", "learning_rate", "seed")
      },
    )
  except flag_checks.FlagError as e:
    flag_checks.exit_on_flag_error(PROG, e)

  workdir = _WORKDIR.value
  rows = []
  fig, axes = plt.subplots(
    len(classes),
    len(widths),
    figsize=(4.5 * len(widths), 3.2 * len(classes)),
    squeeze=False,
    dpi=110,
  )
  for i, c in enumerate(classes):
    for j, w in enumerate(widths):
      row, ev, density = run_one(os.path.join(workdir, f"C{c}_w{w}"), c, w)
      rows.append(row)
      logging.info("C=%d width=%d: %d outliers (C-1=%d)", c, w, row["outliers"], c - 1)
      ax = axes[i][j]
      ax.hist(ev, bins=120, density=True, alpha=0.5, label="dense eigenvalues")
      ax.plot(np.asarray(density.grid), np.asarray(density.density), lw=1, label="SLQ density")
      ax.set_yscale("log")
      ax.set_ylim(bottom=1e-3)
      ax.set_title(f"C={c}, width={w}: {row['outliers']} outliers", fontsize=9)
      ax.set_xlabel("eigenvalue")
  axes[0][0].legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(os.path.join(workdir, "spectra.png"))
  plt.close(fig)
  notes = (
    f"Gaussian blobs in R^{_DIM.value}, separation {_SEPARATION.value}, {_NUM_TRAIN.value} "
    f"examples; MLP (width, C); {_NUM_STEPS.value} full-batch GD steps at lr "
    f"{_LEARNING_RATE.value}. Outliers: the eigenvalues above the largest relative gap among "
    "the top 2C+1. Sagun et al. report the outliers' count tracking the number of classes; "
    "Papyan (2020) refines it to C-1 for cross-entropy, the column beside ours. Bulk "
    "statistics exclude the outliers."
  )
  reporting.write_table(workdir, rows, title="Hessian spectrum at the end of training", notes=notes)
  print(open(os.path.join(workdir, "results.md")).read())


if __name__ == "__main__":
  app.run(main)
