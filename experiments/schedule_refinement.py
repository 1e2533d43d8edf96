r"""Schedule refinement (Defazio et al. 2023) against linear and cosine decay on digits.

  python -m experiments.schedule_refinement --workdir=runs/schedule_refinement

The paper's procedure ("When, Why and How Much? Adaptive Learning Rate
Scheduling by Refinement", arXiv:2310.07831; official code
facebookresearch/adaptive_scheduling): train once with linear decay while
recording every step's gradient norm, refine a schedule from those norms
(``gradlab.transforms.refined_schedule``: median filter over 10% of the run,
weights ``||g||_2^-2`` for SGD and ``||g||_1^-1`` for Adam), then train again
with the refined schedule. Here, for every optimizer and seed, three runs of
the same steps, peak learning rate, initialization and batch order: linear
decay (the recording run), cosine decay, and the schedule refined from that
seed's own linear run. All three end at 0 on the last update (linear decay
``(T - 1 - t) / (T - 1)`` is exactly what refinement returns for constant
norms). The model is the digits MLP of ``gradlab.tasks.make_task("classifier")``
(``--hidden``), trained through ``train.make_train_step`` / ``train.fit``.

Writes ``results.md`` / ``results.csv`` (final test loss, test accuracy and
full-training-set loss, mean and standard error over seeds, and the paired
difference of each schedule against linear decay), ``schedules.png`` (seed 0's
recorded norms and the three schedules), and per run
``runs/<optimizer>/<schedule>/seed<k>/`` (``metrics.jsonl``, checkpoints; the
linear run logs every step) with ``seed<k>.json`` once it is finished, so a
restart skips finished runs and resumes an interrupted one from its checkpoint.

The verdicts are computed from paired differences over seeds, ``z = mean /
standard error``: ``agrees`` at ``z >= 2`` in the claim's direction,
``contradicts`` at ``z <= -2``, ``inconclusive`` otherwise.

Deviations from the paper: one peak learning rate per optimizer for all three
schedules (a 2-seed pilot of linear decay over {0.1, 0.3, 1} for SGD and
{1e-3, 3e-3, 1e-2} for Adam chose the defaults; the paper tunes each
schedule's rate), no warmup (the official refinement adds none; the MLP
needs none), and a small, non-convex, over-parameterized task far from the
paper's deep-learning problems.
"""

from __future__ import annotations

import dataclasses
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax

from experiments import flag_checks, reporting, runner
from gradlab import data, models, train, transforms

OPTIMIZERS = ("sgd", "adam")
SCHEDULES = ("linear", "cosine", "refined")
# the refinement's weights: ||g||_2^-2 for SGD, ||g||_1^-1 for Adam (visual.py's l1 runs)
NORM = {"sgd": "l2", "adam": "l1"}
NORM_METRIC = {"l2": "grad_norm", "l1": "grad_l1_norm"}

PROG = "schedule_refinement"


@dataclasses.dataclass(frozen=True)
class Config:
  """The flags of ``schedule_refinement`` (``--name=value``); defaults are the main's."""

  optimizers: list[str] = runner.option(list(OPTIMIZERS), f"Any of {', '.join(OPTIMIZERS)}.")
  seeds: int = runner.option(8, "Seeds per optimizer (>= 2, for error bars).")
  num_steps: int = runner.option(1000, "Training steps of every run.")
  batch_size: int = runner.option(64, "Batch size.")
  hidden: list[str] = runner.option(["128", "128"], "Hidden layer widths of the MLP.")
  sgd_learning_rate: float = runner.option(0.5, "Peak learning rate of SGD.")
  adam_learning_rate: float = runner.option(3e-3, "Peak learning rate of Adam.")
  smoothing: float = runner.option(0.1, "Median-filter width as a fraction of the run.")
  checkpoint_every: int = runner.option(500, "Steps between checkpoints of a run.")
  log_every: int = runner.option(50, "Steps between metrics records (linear runs log all).")


def _check(config: Config) -> list[int]:
  c = flag_checks
  for name in config.optimizers:
    c.one_of("optimizers", name, OPTIMIZERS)
  c.require(config.seeds >= 2, "seeds", ">= 2 (error bars over seeds)", config.seeds)
  c.require(config.num_steps >= 2, "num_steps", ">= 2", config.num_steps)
  c.positive("batch_size", config.batch_size)
  c.positive("sgd_learning_rate", config.sgd_learning_rate)
  c.positive("adam_learning_rate", config.adam_learning_rate)
  c.require(0 <= config.smoothing <= 1, "smoothing", "in [0, 1]", config.smoothing)
  c.positive("checkpoint_every", config.checkpoint_every)
  c.positive("log_every", config.log_every)
  return c.number_list(
    "hidden",
    config.hidden,
    kind=int,
    valid=lambda h: h > 0,
    expected="a comma-separated list of positive widths",
  )


def _schedule(name: str, lr: float, num_steps: int, multipliers=None) -> optax.Schedule:
  """The step -> learning rate of each arm; all three reach 0 on the last update."""
  if name == "linear":
    return optax.linear_schedule(lr, 0.0, num_steps - 1)
  if name == "cosine":
    return optax.cosine_decay_schedule(lr, num_steps - 1)
  return transforms.refined_lr_schedule(multipliers, learning_rate=lr)


def _optimizer(name: str, schedule: optax.Schedule, num_steps: int):
  """``optax.sgd(schedule)`` / ``optax.adam(schedule)``, the schedule's rates held in the
  state (``transforms.scale_by_lr_table``): one compiled step serves all arms and seeds."""
  table = jax.vmap(schedule)(jnp.arange(num_steps))
  scale = transforms.scale_by_lr_table(table)
  return scale if name == "sgd" else optax.chain(optax.scale_by_adam(), scale)


def _problem(hidden: list[int]):
  """The digits MLP: the loss (with the gradient's l1 norm as a metric) and the evaluation."""
  ds = data.load_dataset("digits")
  model = models.MLP((*hidden, ds.num_classes))

  def loss_fn(params, batch, key):
    del key
    logits = model.apply(params, batch["x"])
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch["y"]).mean()
    return loss, {"accuracy": jnp.mean(jnp.argmax(logits, -1) == batch["y"])}

  value_and_grad = jax.value_and_grad(loss_fn, has_aux=True)

  def value_and_grad_l1(params, batch, key):
    (loss, aux), grads = value_and_grad(params, batch, key)
    return (loss, {**aux, "grad_l1_norm": optax.tree.norm(grads, ord=1)}), grads

  splits = {
    "test": {"x": jnp.asarray(ds.x_test), "y": jnp.asarray(ds.y_test)},
    "train": {"x": jnp.asarray(ds.x_train), "y": jnp.asarray(ds.y_train)},
  }

  def eval_fn(params):
    out = {}
    for split, batch in splits.items():
      loss, aux = loss_fn(params, batch, None)
      out[f"{split}_loss"], out[f"{split}_accuracy"] = loss, aux["accuracy"]
    return out

  return ds, model, loss_fn, value_and_grad_l1, eval_fn


def _train_step(problem, opt_name: str, num_steps: int):
  """The jitted step of ``opt_name``; the schedule comes with the state."""
  _, _, loss_fn, value_and_grad_l1, _ = problem
  optimizer = _optimizer(opt_name, _schedule("linear", 1.0, num_steps), num_steps)
  return train.make_train_step(loss_fn, optimizer, value_and_grad_fn=value_and_grad_l1)


def _run_one(problem, config, step, opt_name, schedule, seed, run_dir, *, log_every) -> dict:
  ds, model, _, _, eval_fn = problem
  optimizer = _optimizer(opt_name, schedule, config.num_steps)
  init_key, train_key = jax.random.split(jax.random.key(seed))
  params = model.init(init_key, jnp.zeros((1, ds.x_train.shape[1])))
  state = train.TrainState.create(params, optimizer, train_key)
  arrays = {"x": ds.x_train, "y": ds.y_train}
  _, last = train.fit(
    state,
    step,
    lambda start: data.iterate_batches(
      arrays, batch_size=config.batch_size, seed=seed, start_step=start
    ),
    num_steps=config.num_steps,
    workdir=run_dir,
    checkpoint_every=config.checkpoint_every,
    log_every=log_every,
    eval_fn=eval_fn,
    progress_every=config.num_steps,
  )
  return {k.removeprefix("eval/"): float(v) for k, v in last.items() if k.startswith("eval/")}


def _paired(a, b) -> tuple[float, float, float]:
  """mean(a - b), its standard error over seeds, and z."""
  d = np.asarray(a, np.float64) - np.asarray(b, np.float64)
  mean, se = float(d.mean()), float(d.std(ddof=1) / np.sqrt(len(d)))
  z = mean / se if se > 0 else (0.0 if mean == 0 else float(np.sign(mean) * np.inf))
  return mean, se, z


def _verdict(z: float) -> str:
  """The claim holds when z > 0: agrees at z >= 2, contradicts at z <= -2."""
  if abs(z) < 2:
    return "inconclusive"
  return "agrees" if z > 0 else "contradicts"


# (metric, sign): a positive signed difference means the first schedule is better
METRICS = (("test_loss", -1.0), ("test_accuracy", 1.0), ("train_loss", -1.0))
# the paper's claims, each "first schedule at least as good as the second"
CLAIMS = (
  ("refined", "linear", "refinement gives further improvements over linear decay"),
  ("linear", "cosine", "linear decay matches or outperforms cosine annealing"),
)


def run(config: Config, workdir: str):
  flag_checks.check_config(config)
  hidden = _check(config)
  problem = _problem(hidden)
  ds = problem[0]
  flag_checks.require(
    config.batch_size <= len(ds.x_train),
    "batch_size",
    f"at most the {len(ds.x_train)} training examples",
    config.batch_size,
  )
  flag_checks.check_same_run(
    workdir, {f.name: getattr(config, f.name) for f in dataclasses.fields(config)}
  )
  lrs = {"sgd": config.sgd_learning_rate, "adam": config.adam_learning_rate}
  results: dict = {}  # optimizer -> schedule -> [per-seed final metrics]
  figure: dict = {}  # optimizer -> seed 0's norms and multipliers
  for opt_name in config.optimizers:
    lr, norm = lrs[opt_name], NORM[opt_name]
    step = _train_step(problem, opt_name, config.num_steps)
    for seed in range(config.seeds):
      base = os.path.join(workdir, "runs", opt_name)

      def linear(seed=seed, base=base, opt_name=opt_name, lr=lr, norm=norm, step=step):
        run_dir = os.path.join(base, "linear", f"seed{seed}")
        out = _run_one(
          problem,
          config,
          step,
          opt_name,
          _schedule("linear", lr, config.num_steps),
          seed,
          run_dir,
          log_every=1,
        )
        records = train.read_metrics(os.path.join(run_dir, "metrics.jsonl"))
        return {**out, "grad_norms": [r[NORM_METRIC[norm]] for r in records]}

      lin, _ = reporting.cached_unit(os.path.join(base, "linear", f"seed{seed}.json"), linear)
      multipliers = np.asarray(
        transforms.refined_schedule(
          np.asarray(lin["grad_norms"], np.float32), norm=norm, smoothing=config.smoothing
        )
      )
      per_seed = {"linear": lin}
      for name in ("cosine", "refined"):
        schedule = _schedule(name, lr, config.num_steps, multipliers)
        run_dir = os.path.join(base, name, f"seed{seed}")
        per_seed[name], _ = reporting.cached_unit(
          run_dir + ".json",
          lambda s=schedule, d=run_dir, o=opt_name, k=seed, st=step: _run_one(
            problem, config, st, o, s, k, d, log_every=config.log_every
          ),
        )
      steps = jnp.arange(config.num_steps)
      for name, out in per_seed.items():
        mean_lr = jnp.mean(jax.vmap(_schedule(name, 1.0, config.num_steps, multipliers))(steps))
        out = {**out, "mean lr / peak": float(mean_lr)}
        results.setdefault(opt_name, {}).setdefault(name, []).append(out)
      print(
        f"{opt_name} seed {seed}: test loss "
        + ", ".join(f"{n} {per_seed[n]['test_loss']:.4f}" for n in SCHEDULES),
        flush=True,
      )
      if seed == 0:
        figure[opt_name] = (np.asarray(lin["grad_norms"]), multipliers, lr)

  rows, verdicts = [], []
  for opt_name, by_schedule in results.items():
    for name in SCHEDULES:
      runs = by_schedule[name]
      row = {
        "optimizer": opt_name,
        "schedule": name,
        "mean lr / peak": float(np.mean([r["mean lr / peak"] for r in runs])),
      }
      for metric, _ in METRICS:
        x = np.asarray([r[metric] for r in runs])
        row[f"{metric} mean"] = float(x.mean())
        row[f"{metric} se"] = float(x.std(ddof=1) / np.sqrt(len(x)))
      if name != "linear":
        d, se, z = _paired(
          [r["test_loss"] for r in runs], [r["test_loss"] for r in by_schedule["linear"]]
        )
        row["test_loss - linear"] = d
        row["se of difference"] = se
        row["z"] = z
      rows.append(row)
    for first, second, claim in CLAIMS:
      parts = []
      for metric, sign in METRICS:
        a = [r[metric] for r in by_schedule[first]]
        b = [r[metric] for r in by_schedule[second]]
        d, se, z = _paired(a, b)
        parts.append(
          f"{metric} {first} - {second} {d:+.4g} +- {se:.2g} (z = {sign * z:+.1f}: "
          f"{_verdict(sign * z)})"
        )
      verdicts.append(f"- {opt_name}, paper: {claim}. Ours: " + "; ".join(parts))

  _plot(os.path.join(workdir, "schedules.png"), figure, config)
  notes = (
    f"Digits MLP {hidden}, {config.num_steps} steps of batch {config.batch_size}, "
    f"{config.seeds} seeds (seed k: initialization and batch order), peak learning rates "
    + ", ".join(f"{o} {lrs[o]:g}" for o in config.optimizers)
    + f"; median filter over {config.smoothing:g} of the run. `refined` uses the schedule "
    "refined from the same seed's linear run (weights ||g||_2^-2 for SGD, ||g||_1^-1 for "
    "Adam). Final metrics after the last step: test loss / accuracy on the "
    f"{len(ds.x_test)} held-out digits, train loss on the full {len(ds.x_train)}-digit "
    "training set; `se` is the standard error "
    "over seeds; `mean lr / peak` the schedule's average multiplier; `test_loss - linear` is the paired mean difference (negative: better than "
    "linear decay) with its standard error and z. The paper reports no digits number.\n\n"
    "Verdicts (z of the paired difference, signed so that z > 0 favours the claim; "
    "|z| < 2 is inconclusive):\n\n" + "\n".join(verdicts)
  )
  reporting.write_table(workdir, rows, title="Schedule refinement on digits", notes=notes)
  print(open(os.path.join(workdir, "results.md")).read())


def _plot(path: str, figure: dict, config: Config) -> None:
  import matplotlib.pyplot as plt  # noqa: PLC0415 - reporting has chosen the backend

  cols = max(1, len(figure))
  fig, axes = plt.subplots(2, cols, figsize=(5 * cols, 6), dpi=120, squeeze=False)
  steps = np.arange(config.num_steps)
  for j, (opt_name, (norms, multipliers, lr)) in enumerate(figure.items()):
    norm = NORM[opt_name]
    width = transforms.median_filter_width(config.num_steps, config.smoothing)
    smoothed = np.asarray(transforms.median_filter(jnp.asarray(norms, jnp.float32), width))
    ax = axes[0, j]
    ax.plot(steps, norms, lw=0.5, alpha=0.5, label=f"recorded ||g||_{norm[1]}")
    ax.plot(steps, smoothed, lw=1.5, label=f"median filter, width {width}")
    ax.set_yscale("log")
    ax.set_title(f"{opt_name}: gradient norms of the linear run (seed 0)")
    ax.legend()
    ax = axes[1, j]
    for name in SCHEDULES:
      ys = jax.vmap(_schedule(name, lr, config.num_steps, multipliers))(jnp.asarray(steps))
      ax.plot(steps, np.asarray(ys), label=name)
    ax.set_xlabel("step")
    ax.set_ylabel("learning rate")
    ax.legend()
    for a in axes[:, j]:
      a.grid(alpha=0.3)
  fig.tight_layout()
  reporting.save_figure(fig, path)


if __name__ == "__main__":
  runner.main(run, Config, prog=PROG, workdir="runs/schedule_refinement")
