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

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import app, flags, logging

from experiments import flag_checks, reporting
from gradlab import data, gradstats, models, sharding, train

_WORKDIR = flags.DEFINE_string("workdir", "runs/noise_scale", "Output directory.")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 128, "Reference run's batch size.")
_SWEEP = flags.DEFINE_list(
  "sweep",
  ["8", "16", "32", "64", "128", "256", "512"],
  "Batch sizes of the steps-vs-batch-size sweep.",
)
_LEARNING_RATE = flags.DEFINE_float("learning_rate", 0.5, "Reference run's SGD learning rate.")
_LR_GRID = flags.DEFINE_list(
  "lr_grid",
  ["0.05", "0.1", "0.2", "0.5", "1", "2"],
  "SGD learning rates tried at each batch size of the sweep (the "
  "trade-off assumes the learning rate tuned per batch size).",
)
_TARGET = flags.DEFINE_float("target_loss", 0.15, "Training-loss target of the sweep.")
_MAX_STEPS = flags.DEFINE_integer("max_steps", 20000, "Cap on steps per sweep run.")
_NUM_STEPS = flags.DEFINE_integer("num_steps", 600, "Reference run's steps.")
_PROBE_EVERY = flags.DEFINE_integer("probe_every", 10, "Steps between per-example probes.")
_HIDDEN = flags.DEFINE_integer("hidden", 64, "Hidden width.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed.")

PROG = "noise_scale"


def _setup():
  ds = data.load_dataset("digits")
  model = models.MLP((_HIDDEN.value, ds.num_classes))
  params = model.init(jax.random.key(_SEED.value), jnp.zeros((1, ds.x_train.shape[1])))

  def loss(p, b):
    return optax.softmax_cross_entropy_with_integer_labels(model.apply(p, b["x"]), b["y"]).mean()

  return ds, params, loss


def reference_run(workdir, ds, params, loss):
  n_dev = jax.device_count()
  mesh = sharding.make_mesh()
  train_loss = lambda p, b, k: (loss(p, b), {})
  opt = optax.sgd(_LEARNING_RATE.value)
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
      batch_size=_BATCH_SIZE.value,
      seed=_SEED.value,
      start_step=s,
      mesh=mesh,
    ),
    num_steps=_NUM_STEPS.value,
    workdir=workdir,
    checkpoint_every=_NUM_STEPS.value // 2,
    log_every=_PROBE_EVERY.value,
    eval_fn=lambda p: {"train_loss": loss(p, full)},
    eval_every=_PROBE_EVERY.value,
    progress_every=_NUM_STEPS.value,
    instruments=[train.Instrument("gs", probe, _PROBE_EVERY.value)],
  )
  return train.read_metrics(os.path.join(workdir, "metrics.jsonl")), n_dev


def steps_to_target(ds, params, loss, batch_size: int, lr: float, cache: str) -> int | None:
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
    {"x": ds.x_train, "y": ds.y_train}, batch_size=batch_size, seed=_SEED.value
  )
  p, s, found = params, opt.init(params), None
  for i in range(1, _MAX_STEPS.value + 1):
    p, s = step(p, s, next(it))
    value = float(full_loss(p))
    if not np.isfinite(value):
      break
    if value <= _TARGET.value:
      found = i
      break
  with open(cache, "w") as f:
    json.dump({"batch_size": batch_size, "learning_rate": lr, "steps": found}, f)
  return found


def main(argv):
  del argv
  try:
    sweep = flag_checks.number_list(
      "sweep",
      _SWEEP.value,
      kind=int,
      valid=lambda b: b >= 1,
      min_count=3,
      expected="at least 3 comma-separated positive batch sizes",
    )
    flag_checks.require(
      max(sweep) <= 1437, "sweep", "batch sizes <= the 1437 training digits", max(sweep)
    )
    for name in ("batch_size", "max_steps", "num_steps", "probe_every", "hidden"):
      flag_checks.positive(name, flags.FLAGS[name].value)
    flag_checks.require(
      _BATCH_SIZE.value >= 2 and _BATCH_SIZE.value % jax.device_count() == 0,
      "batch_size",
      f">= 2 and divisible by {jax.device_count()} devices",
      _BATCH_SIZE.value,
    )
    flag_checks.positive("learning_rate", _LEARNING_RATE.value)
    flag_checks.number_list(
      "lr_grid",
      _LR_GRID.value,
      valid=lambda v: v > 0,
      expected="a comma-separated list of positive numbers",
    )
    flag_checks.positive("target_loss", _TARGET.value)
    flag_checks.check_same_run(
      _WORKDIR.value,
      {
        k: flags.FLAGS[k].value
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
  except flag_checks.FlagError as e:
    flag_checks.exit_on_flag_error(PROG, e)

  workdir = _WORKDIR.value
  ds, params, loss = _setup()
  records, n_dev = reference_run(os.path.join(workdir, "reference"), ds, params, loss)
  probes = [r for r in records if "gs/trace_sigma" in r]
  reached = [r["step"] for r in records if r.get("eval/train_loss", 1e9) <= _TARGET.value]
  horizon = reached[0] if reached else _NUM_STEPS.value
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
    title=f"Gradient noise scale, reference run (batch {_BATCH_SIZE.value})",
  )

  rows = []
  lrs = [float(v) for v in _LR_GRID.value]
  for b in sweep:
    tried = {
      lr: steps_to_target(
        ds, params, loss, b, lr, os.path.join(workdir, f"sweep_B{b}_lr{lr:g}.json")
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
    logging.info("batch %d: %s steps to loss %.3f (lr %s)", b, s, _TARGET.value, best)
  done = [
    (r["batch size"], r["steps to target"]) for r in rows if isinstance(r["steps to target"], int)
  ]
  bs, ss = np.array([d[0] for d in done], float), np.array([d[1] for d in done], float)
  slope, s_min = np.polyfit(1.0 / bs, ss, 1)  # S = S_min + S_min B_crit / B
  b_crit = slope / s_min
  fit = s_min * (1 + b_crit / bs)
  reporting.plot_curves(
    os.path.join(workdir, "steps_vs_batch.png"),
    {"measured": (list(bs), list(ss)), "S_min (1 + B_crit/B) fit": (list(bs), list(fit))},
    xlabel="batch size",
    ylabel=f"steps to train loss {_TARGET.value}",
    logy=True,
    title=f"B_crit = {b_crit:.0f}, B_simple = {b_simple:.0f}",
  )
  summary = [
    {"quantity": "B_crit (fit of S = S_min (1 + B_crit/B))", "value": b_crit},
    {"quantity": "S_min (steps)", "value": s_min},
    {"quantity": "B_simple, per-example, ratio of means before the target", "value": b_simple},
  ]
  if free is not None:
    summary.append({"quantity": f"B_simple, free ({n_dev} devices), same stretch", "value": free})
  reporting.write_table(
    workdir, rows, title="Steps to the loss target against batch size", name="sweep"
  )
  notes = (
    f"Digits MLP (64-{_HIDDEN.value}-10). Reference run: SGD lr {_LEARNING_RATE.value}, "
    f"batch {_BATCH_SIZE.value}. Sweep: SGD, the best of lr in {{{', '.join(_LR_GRID.value)}}} "
    f"at each batch size, training-loss target {_TARGET.value}. The paper predicts B_crit ~ "
    "B_noise, of which B_simple is the simpler proxy (exact for a well-conditioned Hessian); compare the two rows above. "
    "The sweep's table is sweep.md."
  )
  reporting.write_table(
    workdir, summary, title="Gradient noise scale and critical batch size", notes=notes
  )
  print(open(os.path.join(workdir, "results.md")).read())
  print(open(os.path.join(workdir, "sweep.md")).read())


if __name__ == "__main__":
  app.run(main)
