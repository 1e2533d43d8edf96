r"""Injected gradient spikes: Adam, Adam + global-norm clipping, spike clipping, SPAM.

  python -m experiments.gradient_spikes --workdir=/tmp/gradlab/spikes

On the digits classifier and on a tiny transformer language model (the
generated Fibonacci-mod-17 sequence task), every optimizer sees the same
gradients multiplied by ``--spike_scale`` on the same ``--num_spikes``
random steps (after the first 10% of training). For each task and optimizer,
``--seeds`` runs are trained side by side (vmapped). Writes:

* ``results.md`` / ``results.csv``: per task and optimizer, the fraction of
  seeds that diverge (final loss non-finite or above the initial loss), the
  median final loss and the median final loss of the same runs *without*
  spikes (the damage the spikes did);
* ``loss_<task>.png``: median loss curves;
* ``runs/<task>_<optimizer>.json``: each finished unit. A restarted run with
  the same ``--workdir`` skips finished units (a unit is one jitted program of
  a few seconds, so nothing worth checkpointing is lost inside one).

The SPAM paper (Huang et al. 2025, Fig. 1 and Sec. 2) reports spikes up to
1000x the typical gradient in LLM training; ``--spike_scale`` defaults to that.
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np
import optax

from experiments import flag_checks, reporting, runner
from gradlab import tasks, train, transforms

OPTIMIZERS = {
  "adam": lambda lr: optax.adam(lr),
  "adam_clip": lambda lr: optax.chain(optax.clip_by_global_norm(1.0), optax.adam(lr)),
  "spike_clip": lambda lr: optax.chain(transforms.spike_clip(), optax.adam(lr)),
  "spam": lambda lr: transforms.spam(lr, reset_interval=100, warmup_steps=20, clip_after=10),
}
LEARNING_RATES = {"classifier": 3e-3, "lm": 3e-3}


PROG = "gradient_spikes"


@dataclasses.dataclass(frozen=True)
class Config:
  """The flags of ``gradient_spikes`` (``--name=value``); defaults are the main's."""

  tasks: list[str] = runner.option(list(tasks.TASKS), "Tasks to run.")
  optimizers: list[str] = runner.option(list(OPTIMIZERS), "Optimizers to compare.")
  seeds: int = runner.option(4, "Runs per task and optimizer.")
  num_steps: int = runner.option(400, "Training steps per run.")
  batch_size: int = runner.option(64, "Batch size.")
  num_spikes: int = runner.option(4, "Spiked steps per run.")
  spike_scale: float = runner.option(1000.0, "Gradient multiplier on spiked steps.")
  lr_scale: float = runner.option(1.0, "Multiplies each task's learning rate.")


def _check_flags(config):
  c = flag_checks
  for t in config.tasks:
    c.one_of("tasks", t, tasks.TASKS)
  for o in config.optimizers:
    c.one_of("optimizers", o, OPTIMIZERS)
  for name, v in (
    ("seeds", config.seeds),
    ("num_steps", config.num_steps),
    ("batch_size", config.batch_size),
    ("spike_scale", config.spike_scale),
    ("lr_scale", config.lr_scale),
  ):
    c.positive(name, v)
  c.non_negative("num_spikes", config.num_spikes)
  c.require(
    config.num_spikes <= config.num_steps - config.num_steps // 10,
    "num_spikes",
    "at most 90% of num_steps",
    config.num_spikes,
  )


def _spike_steps(num_steps: int, num_spikes: int) -> list[int]:
  rng = np.random.default_rng(1234)
  start = num_steps // 10
  return sorted(rng.choice(np.arange(start, num_steps), size=num_spikes, replace=False).tolist())


def _summarize(losses: np.ndarray) -> dict:
  first = losses[:, 0]
  tail = losses[:, -max(1, losses.shape[1] // 20) :].mean(axis=1)
  diverged = ~np.isfinite(tail) | (tail > first)
  return {
    "diverged": float(diverged.mean()),
    "final": float(np.nanmedian(np.where(np.isfinite(tail), tail, np.nan)))
    if np.isfinite(tail).any()
    else float("nan"),
    "curve": np.nanmedian(np.where(np.isfinite(losses), losses, np.nan), axis=0).tolist(),
  }


def run(config: Config, workdir: str):
  flag_checks.check_config(config)
  _check_flags(config=config)
  flag_checks.check_same_run(
    workdir,
    {
      k: getattr(config, k)
      for k in ("seeds", "num_steps", "batch_size", "num_spikes", "spike_scale", "lr_scale")
    },
    may_change=(),
  )
  os.makedirs(os.path.join(workdir, "runs"), exist_ok=True)
  spikes = _spike_steps(config.num_steps, config.num_spikes)
  rows, curves = [], {}
  for task_name in config.tasks:
    task = tasks.make_task(task_name, config.batch_size)
    lr = LEARNING_RATES[task_name] * config.lr_scale
    for opt in config.optimizers:
      path = os.path.join(workdir, "runs", f"{task_name}_{opt}.json")

      def run(task=task, lr=lr, opt=opt):
        spiked = np.asarray(
          train.train_curves(
            task,
            OPTIMIZERS[opt](lr),
            config.seeds,
            config.num_steps,
            spike_steps=spikes,
            spike_scale=config.spike_scale,
          )
        )
        clean = np.asarray(
          train.train_curves(task, OPTIMIZERS[opt](lr), config.seeds, config.num_steps)
        )
        return {"spiked": _summarize(spiked), "clean": _summarize(clean)}

      unit, reused = reporting.cached_unit(path, run)
      if not reused:
        print(
          f"{task_name} {opt}: diverged {unit['spiked']['diverged']:.2f}, "
          f"final {unit['spiked']['final']:.4g} (no spikes {unit['clean']['final']:.4g})",
          flush=True,
        )
      rows.append(
        {
          "task": task_name,
          "optimizer": opt,
          "learning rate": lr,
          "diverged (spikes)": unit["spiked"]["diverged"],
          "final loss (spikes)": unit["spiked"]["final"],
          "final loss (no spikes)": unit["clean"]["final"],
          "diverged (no spikes)": unit["clean"]["diverged"],
        }
      )
      curves.setdefault(task_name, {})[opt] = unit["spiked"]["curve"]
  for task_name, by_opt in curves.items():
    reporting.plot_curves(
      os.path.join(workdir, f"loss_{task_name}.png"),
      {o: (list(range(len(c))), c) for o, c in by_opt.items()},
      xlabel="step",
      ylabel="training loss (median over seeds)",
      logy=True,
      title=f"{task_name}: x{config.spike_scale:g} gradient spikes at steps {spikes}",
    )
  reporting.write_table(
    workdir,
    rows,
    title="Gradient spikes: divergence and final loss",
    notes=(
      f"{config.seeds} seeds, {config.num_steps} steps, batch {config.batch_size}; "
      f"gradients x{config.spike_scale:g} at steps {spikes}. Diverged: final loss "
      "(mean of the last 5% of steps) non-finite or above the first step's. "
      "The SPAM paper reports no such table for these toy tasks; its claim is "
      "qualitative (spike-aware clipping and momentum reset keep Adam stable)."
    ),
  )
  print(f"results in {workdir}")


if __name__ == "__main__":
  runner.main(run, Config, prog=PROG, workdir='runs/gradient_spikes')
