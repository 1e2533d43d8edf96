r"""The gradient noise scale over training, and the critical batch size it predicts.

  python -m experiments.noise_scale --workdir=runs/noise_scale

After McCandlish, Kaplan, Amodei, "An Empirical Model of Large-Batch Training"
(2018). Two parts on the MLP classifier (digits):

1. A reference run at --batch_size logs B_simple = tr(Sigma)/|G|^2 every
   --probe_every steps from per-example gradients (``gradlab.gradstats``),
   and, on >= 2 devices, for free at every step from the per-device and
   all-reduced gradients inside the sharded step (``shard_map``).
2. A sweep over batch sizes measures the steps S(B) to reach a training-loss
   target and fits the paper's trade-off S = S_min (1 + B_crit / B), i.e. S
   linear in 1/B; the paper predicts B_crit ~ B_simple averaged over the
   same stretch of training.

B_simple is reported as a ratio of means (mean tr Sigma over mean |G|^2, each
unbiased), as the paper averages before dividing; single-batch ratios are
noisy and can even be negative where the unbiased |G|^2 dips below zero.
"""

from __future__ import annotations

import dataclasses
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging

from experiments import flag_checks, reporting, runner
from gradlab import data, gradstats, models, sharding, train

PROG = "noise_scale"


@dataclasses.dataclass(frozen=True)
class Config:
  """The flags of ``noise_scale`` (``--name=value``); defaults are the main's."""

  batch_size: int = runner.option(128, "Reference run's batch size.")
  sweep: list[str] = runner.option(
    ["8", "16", "32", "64", "128", "256", "512"], "Batch sizes of the steps-vs-batch-size sweep."
  )
  learning_rate: float = runner.option(0.5, "Reference run's SGD learning rate.")
  lr_grid: list[str] = runner.option(
    ["0.05", "0.1", "0.2", "0.5", "1", "2"],
    "SGD learning rates tried at each batch size of the sweep (the "
    "trade-off assumes the learning rate tuned per batch size).",
  )
  target_loss: float = runner.option(0.15, "Training-loss target of the sweep.")
  max_steps: int = runner.option(20000, "Cap on steps per sweep run.")
  num_steps: int = runner.option(600, "Reference run's steps.")
  probe_every: int = runner.option(10, "Steps between per-example probes.")
  hidden: int = runner.option(64, "Hidden width.")
  seed: int = runner.option(0, "Seed.")


def _setup(config):
  ds = data.load_dataset("digits")
  model = models.MLP((config.hidden, ds.num_classes))
  params = model.init(jax.random.key(config.seed), jnp.zeros((1, ds.x_train.shape[1])))

  def loss(p, b):
    return optax.softmax_cross_entropy_with_integer_labels(model.apply(p, b["x"]), b["y"]).mean()

  return ds, params, loss


def reference_run(workdir, ds, params, loss, config):
  n_dev = jax.device_count()
  mesh = sharding.make_mesh()
  train_loss = lambda p, b, k: (loss(p, b), {})
  opt = optax.sgd(config.learning_rate)
  vg = gradstats.noise_scale_value_and_grad(train_loss, mesh) if n_dev >= 2 else None
  step = train.make_train_step(train_loss, opt, mesh=mesh, value_and_grad_fn=vg)
  full = {"x": jnp.asarray(ds.x_train), "y": jnp.asarray(ds.y_train)}
  probe = gradstats.gradient_statistics_instrument(train_loss)
  state = jax.device_put(
    train.TrainState.create(params, opt, jax.random.key(1)), sharding.replicated(mesh)
  )
  train.fit(
    state,
    step,
    lambda s: data.iterate_batches(
      {"x": ds.x_train, "y": ds.y_train},
      batch_size=config.batch_size,
      seed=config.seed,
      start_step=s,
      mesh=mesh,
    ),
    num_steps=config.num_steps,
    workdir=workdir,
    checkpoint_every=config.num_steps // 2,
    log_every=config.probe_every,
    eval_fn=lambda p: {"train_loss": loss(p, full)},
    eval_every=config.probe_every,
    progress_every=config.num_steps,
    instruments=[train.Instrument("gs", probe, config.probe_every)],
  )
  return train.read_metrics(os.path.join(workdir, "metrics.jsonl")), n_dev


def steps_to_target(ds, params, loss, batch_size: int, lr: float, cache: str, config) -> int | None:
  if os.path.exists(cache):
    with open(cache) as f:
      return json.load(f)["steps"]
  opt = optax.sgd(lr)

  @jax.jit
  def step(p, s, b):
    g = jax.grad(loss)(p, b)
    u, s = opt.update(g, s)
    return optax.apply_updates(p, u), s

  full_loss = jax.jit(lambda p: loss(p, {"x": ds.x_train, "y": ds.y_train}))
  it = data.iterate_batches(
    {"x": ds.x_train, "y": ds.y_train}, batch_size=batch_size, seed=config.seed
  )
  p, s, found = params, opt.init(params), None
  for i in range(1, config.max_steps + 1):
    p, s = step(p, s, next(it))
    value = float(full_loss(p))
    if not np.isfinite(value):
      break
    if value <= config.target_loss:
      found = i
      break
  flag_checks.write_json_atomically(
    cache, {"batch_size": batch_size, "learning_rate": lr, "steps": found}
  )
  return found


def run(config: Config, workdir: str):
  flag_checks.check_config(config)
  flag_checks.require(
    config.num_steps >= 2, "num_steps", ">= 2 (a checkpoint is taken half-way)", config.num_steps
  )
  sweep = flag_checks.number_list(
    "sweep",
    config.sweep,
    kind=int,
    valid=lambda b: b >= 1,
    min_count=3,
    expected="at least 3 comma-separated positive batch sizes",
  )
  flag_checks.require(
    max(sweep) <= 1437, "sweep", "batch sizes <= the 1437 training digits", max(sweep)
  )
  for name in ("batch_size", "max_steps", "num_steps", "probe_every", "hidden"):
    flag_checks.positive(name, getattr(config, name))
  flag_checks.require(
    config.batch_size <= 1437, "batch_size", "at most the 1437 training digits", config.batch_size
  )
  flag_checks.require(
    config.batch_size >= 2 and config.batch_size % jax.device_count() == 0,
    "batch_size",
    f">= 2 and divisible by {jax.device_count()} devices",
    config.batch_size,
  )
  flag_checks.positive("learning_rate", config.learning_rate)
  flag_checks.number_list(
    "lr_grid",
    config.lr_grid,
    valid=lambda v: v > 0,
    expected="a comma-separated list of positive numbers",
  )
  flag_checks.positive("target_loss", config.target_loss)
  flag_checks.check_same_run(
    workdir,
    {
      k: getattr(config, k)
      for k in (
        "batch_size",
        "learning_rate",
        "target_loss",
        "num_steps",
        "probe_every",
        "hidden",
        "seed",
      )
    },
  )

  ds, params, loss = _setup(config=config)
  records, n_dev = reference_run(
    os.path.join(workdir, "reference"), ds, params, loss, config=config
  )
  probes = [r for r in records if "gs/trace_sigma" in r]
  reached = [r["step"] for r in records if r.get("eval/train_loss", 1e9) <= config.target_loss]
  horizon = reached[0] if reached else config.num_steps
  before = [r for r in probes if r["step"] <= horizon]
  b_simple = float(
    gradstats.ratio_of_means([r["gs/g_sq"] for r in before], [r["gs/trace_sigma"] for r in before])
  )
  window = 4
  curve = [
    (
      probes[i]["step"],
      float(
        gradstats.ratio_of_means(
          [r["gs/g_sq"] for r in probes[max(0, i - window) : i + window + 1]],
          [r["gs/trace_sigma"] for r in probes[max(0, i - window) : i + window + 1]],
        )
      ),
    )
    for i in range(len(probes))
  ]
  curves = {"per-example (window of 9 probes)": tuple(map(list, zip(*curve)))}
  free = None
  if n_dev >= 2:
    with_noise = [r for r in records if "noise/g_sq" in r and r["step"] <= horizon]
    free = float(
      gradstats.ratio_of_means(
        [r["noise/g_sq"] for r in with_noise], [r["noise/trace_sigma"] for r in with_noise]
      )
    )
    allr = [r for r in records if "noise/g_sq" in r]
    curves[f"free, {n_dev} devices (window)"] = (
      [r["step"] for r in allr],
      [
        float(
          gradstats.ratio_of_means(
            [q["noise/g_sq"] for q in allr[max(0, i - 4) : i + 5]],
            [q["noise/trace_sigma"] for q in allr[max(0, i - 4) : i + 5]],
          )
        )
        for i, r in enumerate(allr)
      ],
    )
  reporting.plot_curves(
    os.path.join(workdir, "noise_scale.png"),
    curves,
    xlabel="step",
    ylabel="B_simple",
    logy=True,
    title=f"Gradient noise scale, reference run (batch {config.batch_size})",
  )

  rows = []
  lrs = [float(v) for v in config.lr_grid]
  for b in sweep:
    tried = {
      lr: steps_to_target(
        ds,
        params,
        loss,
        b,
        lr,
        os.path.join(workdir, f"sweep_B{b}_lr{lr:g}_max{config.max_steps}.json"),
        config=config,
      )
      for lr in lrs
    }
    ok = {lr: st for lr, st in tried.items() if st is not None}
    best = min(ok, key=ok.get) if ok else None
    s = ok.get(best)
    rows.append(
      {
        "batch size": b,
        "steps to target": s if s is not None else "not reached",
        "best lr": best if best is not None else "",
        "examples": b * s if s else "",
      }
    )
    logging.info("batch %d: %s steps to loss %.3f (lr %s)", b, s, config.target_loss, best)
  done = [
    (r["batch size"], r["steps to target"]) for r in rows if isinstance(r["steps to target"], int)
  ]
  bs, ss = np.array([d[0] for d in done], float), np.array([d[1] for d in done], float)
  if len(done) >= 2:
    slope, s_min = np.polyfit(1.0 / bs, ss, 1)  # S = S_min + S_min B_crit / B
    b_crit = slope / s_min
    fit = s_min * (1 + b_crit / bs)
    reporting.plot_curves(
      os.path.join(workdir, "steps_vs_batch.png"),
      {"measured": (list(bs), list(ss)), "S_min (1 + B_crit/B) fit": (list(bs), list(fit))},
      xlabel="batch size",
      ylabel=f"steps to train loss {config.target_loss}",
      logy=True,
      title=f"B_crit = {b_crit:.0f}, B_simple = {b_simple:.0f}",
    )
    summary = [
      {"quantity": "B_crit (fit of S = S_min (1 + B_crit/B))", "value": b_crit},
      {"quantity": "S_min (steps)", "value": s_min},
    ]
    missing = ""
  else:  # report what was measured, and why the fit is absent
    summary = []
    missing = (
      f"\n\nNo B_crit fit: only {len(done)} of the {len(rows)} sweep batch sizes reached "
      f"the training-loss target {config.target_loss} within --max_steps={config.max_steps} "
      "(the fit needs two). Raise --max_steps, or --target_loss."
    )
  summary.append(
    {"quantity": "B_simple, per-example, ratio of means before the target", "value": b_simple}
  )
  if free is not None:
    summary.append({"quantity": f"B_simple, free ({n_dev} devices), same stretch", "value": free})
  reporting.write_table(
    workdir, rows, title="Steps to the loss target against batch size", name="sweep"
  )
  notes = (
    f"Digits MLP (64-{config.hidden}-10). Reference run: SGD lr {config.learning_rate}, "
    f"batch {config.batch_size}. Sweep: SGD, the best of lr in {{{', '.join(config.lr_grid)}}} "
    f"at each batch size, training-loss target {config.target_loss}. The paper predicts B_crit ~ "
    "B_noise, of which B_simple is the simpler proxy (exact for a well-conditioned Hessian); compare the two rows above. "
    "The sweep's table is sweep.md." + missing
  )
  reporting.write_table(
    workdir, summary, title="Gradient noise scale and critical batch size", notes=notes
  )
  print(open(os.path.join(workdir, "results.md")).read())
  print(open(os.path.join(workdir, "sweep.md")).read())


if __name__ == "__main__":
  runner.main(run, Config, prog=PROG, workdir='runs/noise_scale')
