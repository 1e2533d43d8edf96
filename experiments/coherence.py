r"""Coherent gradients: real against random labels (Chatterjee 2020; Zielinski et al. 2020).

  python -m experiments.coherence --workdir=runs/coherence

An MLP on the digits, trained by SGD on minibatches of per-example gradients,
four runs: real or random labels, aggregated by the plain mean or by the
winsorized mean (``gradlab.transforms.winsorized_mean(--winsor_c)``). Every
``--log_every`` steps: training accuracy, and the coherence
``alpha = |mean g_i|^2 / mean |g_i|^2`` (``gradlab.gradstats.coherence``) of
the step's batch, against its floor 1/B.

The papers' claims, beside ours in results.md: with real labels the
per-example gradients are far more coherent than with random labels
(Chatterjee 2020, Fig. 2; Zielinski et al. 2020, Fig. 1), and suppressing the
weak directions (winsorizing) barely slows the fitting of real labels but
largely stops the memorization of random ones (Chatterjee 2020, Fig. 5).
"""

from __future__ import annotations

import dataclasses
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax

from experiments import flag_checks, reporting, runner
from gradlab import data, gradstats, models, transforms

PROG = "coherence"
PAPER = (
  "Chatterjee (2020), Figs. 2 and 5; Zielinski et al. (2020), Fig. 1: gradients are far more "
  "coherent with real labels than with random ones, and winsorized gradients fit real labels "
  "almost as fast while random labels are barely memorized."
)


@dataclasses.dataclass(frozen=True)
class Config:
  """The flags of ``coherence`` (``--name=value``); defaults are the main's."""

  steps: int = runner.option(1000, "SGD steps per run.")
  batch_size: int = runner.option(128, "Per-example gradients per step.")
  learning_rate: float = runner.option(0.1, "SGD learning rate.")
  hidden: int = runner.option(128, "Hidden width.")
  winsor_c: int = runner.option(6, "Winsorizing rank c (c = 1 is the plain mean).")
  log_every: int = runner.option(50, "Steps between logged points.")
  num_train: int = runner.option(1000, "Training digits used.")
  seed: int = runner.option(0, "Seed.")


def train_run(config: Config, random_labels: bool, robust: bool) -> list[list[float]]:
  ds = data.load_dataset("digits")
  x = jnp.asarray(ds.x_train[: config.num_train])
  y = ds.y_train[: config.num_train]
  if random_labels:
    y = np.random.default_rng(config.seed + 1).integers(0, ds.num_classes, len(y))
  y = jnp.asarray(y, jnp.int32)
  model = models.MLP((config.hidden, config.hidden, ds.num_classes))
  params = model.init(jax.random.key(config.seed), x[:1])

  def loss(p, b):
    return optax.softmax_cross_entropy_with_integer_labels(model.apply(p, b["x"]), b["y"]).mean()

  agg = transforms.winsorized_mean(config.winsor_c if robust else 1)
  opt = optax.chain(agg, optax.sgd(config.learning_rate))
  n = x.shape[0]

  @jax.jit
  def chunk(p, s, key):
    def step(carry, k):
      p, s = carry
      idx = jax.random.choice(k, n, (config.batch_size,), replace=False)
      b = {"x": x[idx], "y": y[idx]}
      g = gradstats.per_example_grads(loss, p, b)
      u, s = opt.update(g, s, p)
      return (optax.apply_updates(p, u), s), None

    (p, s), _ = jax.lax.scan(step, (p, s), jax.random.split(key, config.log_every))
    idx = jax.random.choice(jax.random.fold_in(key, 1), n, (config.batch_size,), replace=False)
    alpha = gradstats.coherence(gradstats.gradient_moments(loss, p, {"x": x[idx], "y": y[idx]}))
    acc = jnp.mean(jnp.argmax(model.apply(p, x), -1) == y)
    return p, s, jnp.stack([acc, alpha])

  p, s = params, opt.init(params)
  rows = []
  for i in range(config.steps // config.log_every):
    p, s, m = chunk(p, s, jax.random.key(config.seed * 7919 + i))
    rows.append([(i + 1) * config.log_every, *np.asarray(m).tolist()])
  return rows


def run(config: Config, workdir: str):
  flag_checks.check_config(config)
  for name in ("steps", "batch_size", "hidden", "winsor_c", "log_every", "num_train"):
    flag_checks.positive(name, getattr(config, name))
  flag_checks.positive("learning_rate", config.learning_rate)
  flag_checks.require(
    config.num_train <= 1437, "num_train", "at most the 1437 training digits", config.num_train
  )
  flag_checks.require(
    config.batch_size <= config.num_train, "batch_size", "<= num_train", config.batch_size
  )
  flag_checks.require(
    2 * config.winsor_c - 1 <= config.batch_size,
    "winsor_c",
    "such that 2 winsor_c - 1 <= batch_size",
    config.winsor_c,
  )
  flag_checks.require(
    config.steps % config.log_every == 0, "steps", "a multiple of log_every", config.steps
  )
  flag_checks.check_same_run(workdir, dataclasses.asdict(config))

  curves, rows = {}, []
  for labels in ("real", "random"):
    for robust in (False, True):
      name = f"{labels} labels, {'winsorized' if robust else 'mean'}"
      res, _ = reporting.cached_unit(
        os.path.join(workdir, f"run_{labels}_{int(robust)}.json"),
        lambda labels=labels, robust=robust: train_run(config, labels == "random", robust),
      )
      c = np.asarray(res)
      curves[name] = c
      rows.append(
        {
          "run": name,
          "final train acc": float(c[-1, 1]),
          "train acc at 1/3 of training": float(c[len(c) // 3, 1]),
          "coherence, first tenth": float(c[: max(1, len(c) // 10), 2].mean()),
          "mean coherence": float(c[:, 2].mean()),
          "coherence / (1/B)": float(c[:, 2].mean() * config.batch_size),
        }
      )
  import matplotlib.pyplot as plt

  fig, axes = plt.subplots(1, 2, figsize=(11, 4))
  for name, c in curves.items():
    axes[0].plot(c[:, 0], c[:, 1], label=name)
    axes[1].plot(c[:, 0], c[:, 2], label=name)
  axes[1].axhline(1 / config.batch_size, color="gray", ls=":", label="1/B")
  axes[1].set_yscale("log")
  axes[0].set_title("training accuracy")
  axes[1].set_title("coherence of the step's batch")
  for ax in axes:
    ax.set_xlabel("step")
  axes[1].legend(fontsize=7)
  reporting.save_figure(fig, os.path.join(workdir, "coherence.png"))
  notes = (
    f"Digits ({config.num_train} training examples), MLP {config.hidden}x2, SGD lr "
    f"{config.learning_rate}, batch {config.batch_size}, {config.steps} steps; winsorizing "
    f"rank c = {config.winsor_c}. Coherence is highest early: once real labels are fit, "
    "their per-example gradients shrink to noise and fall to the random labels' level, so "
    f"the first tenth of training is the column to compare.\n\nPapers: {PAPER}"
  )
  reporting.write_table(workdir, rows, title="Coherent gradients", notes=notes)
  return rows


if __name__ == "__main__":
  runner.main(run, Config, prog=PROG, workdir="/tmp/gradlab/coherence")
