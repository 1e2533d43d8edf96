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

import dataclasses
import itertools
import os

import jax
import jax.numpy as jnp
import matplotlib
import numpy as np
import optax
from absl import logging
from jax.flatten_util import ravel_pytree

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from experiments import flag_checks, reporting, runner  # noqa: E402
from gradlab import curvature, models, tasks, train  # noqa: E402

PROG = "hessian_spectrum"


@dataclasses.dataclass(frozen=True)
class Config:
  """The flags of ``hessian_spectrum`` (``--name=value``); defaults are the main's."""

  classes: list[str] = runner.option(["3", "5", "10"], "Numbers of classes C.")
  widths: list[str] = runner.option(["32", "128"], "Hidden widths.")
  dim: int = runner.option(20, "Input dimension.")
  num_train: int = runner.option(2000, "Training examples.")
  separation: float = runner.option(1.5, "Blob separation (smaller: more overlap).")
  num_steps: int = runner.option(2000, "Full-batch GD steps.")
  learning_rate: float = runner.option(0.1, "GD learning rate.")
  max_params: int = runner.option(6000, "Refuse a dense Hessian above this size.")
  slq_iterations: int = runner.option(80, "Lanczos steps per SLQ run.")
  slq_runs: int = runner.option(8, "SLQ runs.")
  seed: int = runner.option(0, "Seed.")


def _param_count(dim: int, width: int, classes: int) -> int:
  return dim * width + width + width * classes + classes


def run_one(workdir: str, classes: int, width: int, config) -> dict:
  ds = tasks.gaussian_blobs(
    num_classes=classes,
    dim=config.dim,
    num_train=config.num_train,
    separation=config.separation,
    seed=config.seed,
  )
  model = models.MLP((width, classes))
  params = model.init(jax.random.key(config.seed), jnp.zeros((1, config.dim)))
  batch = {"x": ds.x_train, "y": ds.y_train}

  def loss(p, b):
    return optax.softmax_cross_entropy_with_integer_labels(model.apply(p, b["x"]), b["y"]).mean()

  opt = optax.sgd(config.learning_rate)
  step = train.make_train_step(lambda p, b, k: (loss(p, b), {}), opt)
  state, last = train.fit(
    train.TrainState.create(params, opt, jax.random.key(1)),
    step,
    lambda s: itertools.repeat(batch),
    num_steps=config.num_steps,
    workdir=workdir,
    checkpoint_every=config.num_steps,
    log_every=100,
    progress_every=config.num_steps,
  )
  flat, unravel = ravel_pytree(state.params)
  h = jax.jit(jax.hessian(lambda x: loss(unravel(x), batch)))(flat)
  ev = np.sort(np.linalg.eigvalsh(np.asarray(h, np.float64)))[::-1]
  outliers = int(curvature.count_outliers(ev, max_outliers=2 * classes))
  density = jax.jit(
    lambda p, k: curvature.hessian_spectral_density(
      loss, p, batch, k, num_iterations=config.slq_iterations, num_runs=config.slq_runs
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


def run(config: Config, workdir: str):
  flag_checks.check_config(config)
  classes = flag_checks.number_list(
    "classes",
    config.classes,
    kind=int,
    valid=lambda v: v >= 2,
    expected="a comma-separated list of integers >= 2",
  )
  widths = flag_checks.number_list(
    "widths",
    config.widths,
    kind=int,
    valid=lambda v: v >= 1,
    expected="a comma-separated list of integers >= 1",
  )
  for name in ("dim", "num_train", "num_steps", "max_params", "slq_iterations", "slq_runs"):
    flag_checks.positive(name, getattr(config, name))
  flag_checks.positive("learning_rate", config.learning_rate)
  flag_checks.positive("separation", config.separation)
  biggest = max(_param_count(config.dim, w, c) for w in widths for c in classes)
  flag_checks.require(
    biggest <= config.max_params,
    "widths",
    f"small enough for a dense Hessian (<= --max_params={config.max_params} parameters)",
    f"{','.join(config.widths)} ({biggest} parameters)",
  )
  flag_checks.check_same_run(
    workdir,
    {
      k: getattr(config, k)
      for k in ("dim", "num_train", "separation", "num_steps", "learning_rate", "seed")
    },
  )

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
      row, ev, density = run_one(os.path.join(workdir, f"C{c}_w{w}"), c, w, config=config)
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
  reporting.save_figure(fig, os.path.join(workdir, "spectra.png"))
  notes = (
    f"Gaussian blobs in R^{config.dim}, separation {config.separation}, {config.num_train} "
    f"examples; MLP (width, C); {config.num_steps} full-batch GD steps at lr "
    f"{config.learning_rate}. Outliers: the eigenvalues above the largest relative gap among "
    "the top 2C+1. Sagun et al. report the outliers' count tracking the number of classes; "
    "Papyan (2020) refines it to C-1 for cross-entropy, the column beside ours. Bulk "
    "statistics exclude the outliers."
  )
  reporting.write_table(workdir, rows, title="Hessian spectrum at the end of training", notes=notes)
  print(open(os.path.join(workdir, "results.md")).read())


if __name__ == "__main__":
  runner.main(run, Config, prog=PROG, workdir='runs/hessian_spectrum')
