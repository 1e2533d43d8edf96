r"""Linear mode connectivity of digits MLPs: Git Re-Basin's weight matching and Frankle's instability.

  python -m experiments.mode_connectivity --workdir=runs/mode_connectivity

Two analyses of the straight line between two trained networks, on
scikit-learn's digits with ``gradlab.models.MLP`` trained through
``gradlab.train.make_update`` (scanned over steps, vmapped over runs):

1. **Git Re-Basin** (Ainsworth, Hayase & Srinivasa, ICLR 2023): two networks
   trained from different initializations and data orders are separated by a
   loss barrier on the naive linear path; permuting the second one's hidden
   units by weight matching (``gradlab.dynamics.weight_matching``, ported from
   samuela/git-re-basin ``src/weight_matching.py``) brings it into the first
   one's basin, and the barrier falls toward 0 once the network is wide
   enough. For every width in ``--widths`` and each of ``--seeds`` pairs: the
   barrier of the naive path and of the matched one.
2. **Instability** (Frankle, Dziugaite, Roy & Carbin, ICML 2020): train a
   parent network, take its weights at step ``k`` (``--rewind_steps``),
   train two copies from there with different data orders (SGD noise) for
   the remaining steps, and measure the error barrier between them; the paper
   finds it falls with later ``k`` (networks become stable to SGD noise early
   in training; for small MNIST networks already at ``k = 0``). With
   ``--imp_rounds > 0`` the same for the sparse subnetwork that iterative
   magnitude pruning with rewinding to ``k`` finds (``--prune_fraction`` of
   the remaining weights per round, ``gradlab.dynamics.iterative_magnitude_pruning``).

The barrier is Frankle et al.'s and Git Re-Basin's: the maximum over
``--num_points`` evenly spaced alphas minus the mean of the two endpoints
(``gradlab.dynamics.barrier``). Every finished unit (one width, one rewind
step) is cached in ``units/*.json``; a restart with the same flags redoes
only the missing ones. Writes ``results.md`` / ``results.csv`` (one row per
width and per rewind step, mean +- standard error over seeds, verdicts in
the notes), ``metrics.jsonl`` (one record per unit) and
``mode_connectivity.png``.

Deviations: the copies of the instability analysis start with a fresh
optimizer state at step ``k`` (the weights are rewound, not the momentum);
the learning rate is constant (the papers use warmup and decay schedules).
"""

from __future__ import annotations

import dataclasses
import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax

from experiments import flag_checks, reporting, runner
from gradlab import data, dynamics, models, train

PROG = "mode_connectivity"
OPTIMIZERS = {
  "sgd": lambda lr: optax.sgd(lr),
  "momentum": lambda lr: optax.sgd(lr, momentum=0.9),
  "adam": lambda lr: optax.adam(lr),
}
METRICS = ("train_loss", "train_error", "test_loss", "test_error")


@dataclasses.dataclass(frozen=True)
class Config:
  """The flags of ``mode_connectivity`` (``--name=value``); defaults are the main's."""

  dataset: str = runner.option("digits", f"One of {', '.join(data.DATASETS)}.")
  widths: list[str] = runner.option(["16", "64", "256"], "Hidden widths for weight matching.")
  num_hidden: int = runner.option(2, "Hidden layers of every MLP.")
  instability_width: int = runner.option(128, "Hidden width of the instability analysis.")
  optimizer: str = runner.option("momentum", f"One of {', '.join(OPTIMIZERS)}.")
  learning_rate: float = runner.option(0.05, "Learning rate.")
  batch_size: int = runner.option(64, "Batch size.")
  num_steps: int = runner.option(1000, "Training steps of every network.")
  seeds: int = runner.option(4, "Pairs of networks per setting.")
  rewind_steps: list[str] = runner.option(["0", "10", "50", "200"], "Rewind steps k.")
  imp_rounds: int = runner.option(3, "IMP rounds per rewind step (0: dense only).")
  prune_fraction: float = runner.option(0.2, "Share of the remaining weights pruned per round.")
  prune_scope: str = runner.option("global", "global or layerwise magnitude pruning.")
  num_points: int = runner.option(25, "Alphas on the linear path (0 and 1 included).")
  matching_iters: int = runner.option(100, "Most sweeps of weight matching.")
  seed: int = runner.option(0, "Seeds initializations and data orders.")


def _check(config: Config, num_train: int) -> tuple[list[int], list[int]]:
  c = flag_checks
  c.one_of("dataset", config.dataset, data.DATASETS)
  c.one_of("optimizer", config.optimizer, OPTIMIZERS)
  c.one_of("prune_scope", config.prune_scope, dynamics.lottery.SCOPES)
  widths = c.number_list(
    "widths", config.widths, kind=int, valid=lambda w: w > 0,
    expected="a comma-separated list of positive widths",
  )  # fmt: skip
  c.positive("num_hidden", config.num_hidden)
  c.positive("instability_width", config.instability_width)
  c.positive("learning_rate", config.learning_rate)
  c.positive("batch_size", config.batch_size)
  c.require(
    config.batch_size <= num_train,
    "batch_size",
    f"at most the {num_train} training examples",
    config.batch_size,
  )
  c.require(config.num_steps >= 2, "num_steps", ">= 2", config.num_steps)
  c.require(config.seeds >= 2, "seeds", ">= 2 (for standard errors)", config.seeds)
  rewinds = c.number_list(
    "rewind_steps",
    config.rewind_steps,
    kind=int,
    valid=lambda k: 0 <= k < config.num_steps,
    expected=f"a comma-separated list of steps in [0, num_steps={config.num_steps})",
  )
  c.require(
    len(set(rewinds)) == len(rewinds), "rewind_steps", "distinct steps", config.rewind_steps
  )
  c.non_negative("imp_rounds", config.imp_rounds)
  c.require(0 < config.prune_fraction < 1, "prune_fraction", "in (0, 1)", config.prune_fraction)
  c.require(config.num_points >= 3, "num_points", ">= 3", config.num_points)
  c.positive("matching_iters", config.matching_iters)
  return widths, sorted(rewinds)


class _Setup:
  """The data, model and trainer of one width (everything jitted once per shape)."""

  def __init__(self, config: Config, ds, width: int):
    self.config, self.ds = config, ds
    self.model = models.MLP((width,) * config.num_hidden + (ds.num_classes,))
    self.optimizer = OPTIMIZERS[config.optimizer](config.learning_rate)
    self.x, self.y = jnp.asarray(ds.x_train), jnp.asarray(ds.y_train)
    self.x_test, self.y_test = jnp.asarray(ds.x_test), jnp.asarray(ds.y_test)
    self.spec = dynamics.mlp_permutation_spec(config.num_hidden + 1)

  def init(self, keys):
    return jax.jit(jax.vmap(lambda k: self.model.init(k, self.x[:1])))(keys)

  def order(self, order_seed: int) -> np.ndarray:
    """Batch indices ``[num_steps, B]`` of one data order."""
    n = len(self.ds.x_train)
    return np.stack(
      [
        data.batch_indices(n, self.config.batch_size, order_seed, s)
        for s in range(self.config.num_steps)
      ]
    ).astype(np.int32)

  def _loss(self, params, batch, key):
    del key
    logits = self.model.apply(dynamics.apply_mask(params, batch["mask"]), batch["x"])
    return optax.softmax_cross_entropy_with_integer_labels(logits, batch["y"]).mean(), {}

  @functools.cached_property
  def _update(self):
    return train.make_update(self._loss, self.optimizer, norm_metrics=False)

  def train_one(self, params, mask, idx, start, snapshot_steps):
    """One run from ``params`` at step ``start`` to ``num_steps`` over the batches ``idx``
    [num_steps, B] (those before ``start`` unused), with fresh optimizer state, saving the
    weights reached at each of ``snapshot_steps`` [K].

    Every run has the same scan length (the steps before ``start`` compute an update and
    discard it), so one compiled program serves every rewind step.
    """
    state = train.TrainState.create(params, self.optimizer, jax.random.key(0))
    snaps = jax.tree.map(lambda p: jnp.stack([p] * snapshot_steps.shape[0]), params)

    def body(carry, inp):
      state, snaps = carry
      t, ib = inp
      batch = {"x": self.x[ib], "y": self.y[ib], "mask": mask}
      new, metrics = self._update(state, batch, state.step_key())
      state = jax.tree.map(lambda a, b: jnp.where(t >= start, a, b), new, state)
      hit = snapshot_steps == t + 1
      snaps = jax.tree.map(
        lambda s, p: jnp.where(hit.reshape((-1,) + (1,) * p.ndim), p[None], s), snaps, state.params
      )
      return (state, snaps), metrics["loss"]

    steps = jnp.arange(idx.shape[0])
    (state, snaps), losses = jax.lax.scan(body, (state, snaps), (steps, idx))
    return dynamics.apply_mask(state.params, mask), snaps, losses

  @functools.cached_property
  def _train_jit(self):
    return jax.jit(jax.vmap(self.train_one, in_axes=(0, 0, 0, 0, None)))

  def train(self, params, masks, idx, start=None, snapshot_steps=(0,)):
    """Trains the runs ``params`` [R, ...] (vmapped) over ``idx`` [R, num_steps, B] from
    ``start`` [R] (default 0)."""
    r = idx.shape[0]
    start = jnp.zeros(r, jnp.int32) if start is None else jnp.asarray(start, jnp.int32)
    snaps = jnp.asarray(snapshot_steps, jnp.int32)
    return self._train_jit(params, masks, jnp.asarray(idx), start, snaps)

  @functools.cached_property
  def imp(self):
    """``(rewound, trained, orders, k) -> (masks, sparsity)``: IMP with rewinding to step ``k``
    for every seed (vmapped), the last round's mask."""
    c = self.config
    no_snapshots = jnp.zeros(1, jnp.int32)

    def imp_one(rewind_p, trained_p, order, start):
      train_fn = lambda p, m: self.train_one(p, m, order, start, no_snapshots)[0]  # noqa: E731
      rounds = dynamics.iterative_magnitude_pruning(
        train_fn, rewind_p, trained_p, rounds=c.imp_rounds,
        fraction=c.prune_fraction, scope=c.prune_scope,
      )  # fmt: skip
      return rounds[-1].mask, rounds[-1].sparsity

    return jax.jit(jax.vmap(imp_one, in_axes=(0, 0, 0, None)))

  def metrics(self, params):
    out = {}
    for split, (x, y) in {"train": (self.x, self.y), "test": (self.x_test, self.y_test)}.items():
      logits = self.model.apply(params, x)
      out[f"{split}_loss"] = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
      out[f"{split}_error"] = jnp.mean(jnp.argmax(logits, -1) != y)
    return out

  @functools.cached_property
  def barriers(self):
    """``(params_a, params_b) -> PathBarrier`` of every pair (vmapped over the leading axis)."""
    return jax.jit(
      jax.vmap(
        lambda a, b: dynamics.linear_path_barrier(
          self.metrics, a, b, num_points=self.config.num_points
        )
      )
    )


# Between the jitted programs the runs live on the host as NumPy trees: slicing and
# stacking them there compiles nothing (eagerly, every leaf shape would be one more
# XLA compilation).
def _host(tree):
  return jax.device_get(tree)


def _take(tree, index):
  return jax.tree.map(lambda leaf: np.asarray(leaf)[index], _host(tree))


def _stack(trees):
  return jax.tree.map(lambda *leaves: np.stack(leaves), *_host(trees))


def _dense_masks(params):
  return jax.tree.map(lambda leaf: np.ones(np.shape(leaf), bool), _host(params))


def _summary(path: dynamics.PathBarrier) -> dict:
  return {
    "barrier": {m: np.asarray(path.barrier[m]).tolist() for m in METRICS},
    "curve": {m: np.asarray(path.values[m]).mean(0).tolist() for m in METRICS},
    "endpoints": {m: np.asarray(path.values[m])[:, [0, -1]].mean(1).tolist() for m in METRICS},
  }


def _rebasin_unit(config: Config, setup: "_Setup", width: int) -> dict:
  r = 2 * config.seeds
  base = jax.random.fold_in(jax.random.key(config.seed), width)
  params = setup.init(jax.random.split(base, r))
  masks = _dense_masks(params)
  idx = np.stack([setup.order(10_000 * config.seed + 1000 + i) for i in range(r)])
  trained, _, losses = setup.train(params, masks, idx)
  a, b = _take(trained, np.s_[0::2]), _take(trained, np.s_[1::2])
  perms = [
    dynamics.weight_matching(
      jax.random.fold_in(base, 7 + s),
      setup.spec,
      _take(a, s),
      _take(b, s),
      max_iter=config.matching_iters,
    )
    for s in range(config.seeds)
  ]
  matched = jax.jit(jax.vmap(lambda p, q: dynamics.apply_permutation(setup.spec, p, q)))(
    _stack(perms), b
  )
  naive, clever = setup.barriers(a, b), setup.barriers(a, matched)
  # the permuted b is the same function as b: its endpoint loss agrees to rounding
  same = float(
    np.max(
      np.abs(np.asarray(clever.values["train_loss"][:, -1] - naive.values["train_loss"][:, -1]))
    )
  )
  return {
    "naive": _summary(naive),
    "matched": _summary(clever),
    "final_train_loss": float(np.asarray(losses[:, -50:]).mean()),
    "permuted_endpoint_gap": same,
  }


def _parent(config: Config, setup: "_Setup", rewinds: list[int]):
  keys = jax.random.split(jax.random.fold_in(jax.random.key(config.seed), 1), config.seeds)
  params = setup.init(keys)
  masks = _dense_masks(params)
  idx = np.stack([setup.order(10_000 * config.seed + 2000 + s) for s in range(config.seeds)])
  trained, snaps, _ = setup.train(params, masks, idx, snapshot_steps=rewinds)
  return setup, masks, trained, snaps


def _instability_unit(config: Config, setup: _Setup, dense_masks, parent, snaps, j, k) -> dict:
  rewound = _take(snaps, np.s_[:, j])  # [seeds, ...] at step k
  s = config.seeds
  orders = [10_000 * config.seed + 3000 + 2 * i + c for i in range(s) for c in (0, 1)]
  idx = np.stack([setup.order(o) for o in orders])  # [2 seeds, num_steps, B], copy-major pairs

  def copies(start_params, masks):
    two = jax.tree.map(lambda p: np.repeat(p, 2, axis=0), _host((start_params, masks)))
    out, _, _ = setup.train(*two, idx, start=np.full(2 * s, k))
    return _take(out, np.s_[0::2]), _take(out, np.s_[1::2])

  result = {"dense": _summary(setup.barriers(*copies(rewound, dense_masks)))}
  if config.imp_rounds:
    masks, sparsity = setup.imp(rewound, parent, jnp.asarray(idx[0::2]), jnp.asarray(k))
    result["sparsity"] = float(np.mean(sparsity))
    masks = _host(masks)
    start = jax.tree.map(lambda p, m: np.where(m, p, 0), rewound, masks)
    result["imp"] = _summary(setup.barriers(*copies(start, masks)))
  return result


def _mean_se(x) -> tuple[float, float]:
  x = np.asarray(x, float)
  return float(x.mean()), float(x.std(ddof=1) / np.sqrt(len(x)))


def _paired_z(x, y) -> tuple[float, float, float]:
  """mean(x - y), its standard error, z."""
  m, se = _mean_se(np.asarray(x) - np.asarray(y))
  return m, se, (m / se if se > 0 else float("nan"))


def run(config: Config, workdir: str):
  flag_checks.check_config(config)
  ds = data.load_dataset(config.dataset)
  widths, rewinds = _check(config, len(ds.x_train))
  flag_checks.check_same_run(workdir, dataclasses.asdict(config))
  os.makedirs(os.path.join(workdir, "units"), exist_ok=True)
  writer = train.MetricsWriter(os.path.join(workdir, "metrics.jsonl"))

  # one setup (and its compiled programs) per width, shared by both analyses
  setups = functools.cache(lambda width: _Setup(config, ds, width))
  rebasin = {}
  for w in widths:
    rebasin[w], reused = reporting.cached_unit(
      os.path.join(workdir, "units", f"rebasin_w{w}.json"),
      lambda w=w: _rebasin_unit(config, setups(w), w),
    )
    if not reused:
      r = rebasin[w]
      writer.write(
        {"step": config.num_steps, "unit": f"rebasin_w{w}",
         "naive/test_loss_barrier": float(np.mean(r["naive"]["barrier"]["test_loss"])),
         "matched/test_loss_barrier": float(np.mean(r["matched"]["barrier"]["test_loss"]))}
      )  # fmt: skip
      print(f"width {w}: done", flush=True)

  instability, parent = {}, None
  for j, k in enumerate(rewinds):
    path = os.path.join(workdir, "units", f"instability_k{k}.json")
    if not os.path.exists(path) and parent is None:
      parent = _parent(config, setups(config.instability_width), rewinds)
    instability[k], reused = reporting.cached_unit(
      path, lambda j=j, k=k: _instability_unit(config, *parent, j, k)
    )
    if not reused:
      r = instability[k]
      writer.write(
        {"step": config.num_steps, "unit": f"instability_k{k}",
         "dense/test_error_barrier": float(np.mean(r["dense"]["barrier"]["test_error"])),
         **({"imp/test_error_barrier": float(np.mean(r["imp"]["barrier"]["test_error"]))}
            if "imp" in r else {})}
      )  # fmt: skip
      print(f"rewind step {k}: done", flush=True)

  rows = []
  for w in widths:
    for path in ("naive", "matched"):
      r = rebasin[w][path]
      row = {"analysis": "git re-basin", "setting": f"width {w}, {path} path"}
      for m in ("test_loss", "train_loss", "test_error"):
        row[f"{m} barrier"], row[f"{m} se"] = _mean_se(r["barrier"][m])
      row["endpoint test error"] = float(np.mean(r["endpoints"]["test_error"]))
      rows.append(row)
  kinds = ["dense"] + (["imp"] if config.imp_rounds else [])
  for kind in kinds:
    for k in rewinds:
      r = instability[k][kind]
      name = "dense" if kind == "dense" else f"IMP {100 * instability[k]['sparsity']:.0f}% pruned"
      row = {"analysis": "instability", "setting": f"{name}, rewind k={k}"}
      for m in ("test_loss", "train_loss", "test_error"):
        row[f"{m} barrier"], row[f"{m} se"] = _mean_se(r["barrier"][m])
      row["endpoint test error"] = float(np.mean(r["endpoints"]["test_error"]))
      rows.append(row)

  lines = []
  wide, narrow = widths[-1], widths[0]
  d, se, z = _paired_z(
    rebasin[wide]["naive"]["barrier"]["test_loss"], rebasin[wide]["matched"]["barrier"]["test_loss"]
  )
  ratio = np.mean(rebasin[wide]["matched"]["barrier"]["test_loss"]) / max(
    np.mean(rebasin[wide]["naive"]["barrier"]["test_loss"]), 1e-12
  )
  lines.append(
    f"- Git Re-Basin, weight matching lowers the loss barrier (width {wide}): naive - matched "
    f"test-loss barrier = {d:+.4g} +- {se:.2g} (z = {z:.1f}): **{reporting.verdict(z)}**; the matched "
    f"barrier is {ratio:.2f} of the naive one."
  )
  if len(widths) > 1:
    xa = np.asarray(rebasin[narrow]["matched"]["barrier"]["test_loss"])
    xb = np.asarray(rebasin[wide]["matched"]["barrier"]["test_loss"])
    dd = xa.mean() - xb.mean()
    se2 = np.hypot(xa.std(ddof=1), xb.std(ddof=1)) / np.sqrt(len(xa))
    z2 = dd / se2 if se2 > 0 else float("nan")
    lines.append(
      f"- Git Re-Basin, the matched barrier falls with width: width {narrow} - width {wide} "
      f"matched test-loss barrier = {dd:+.4g} +- {se2:.2g} (z = {z2:.1f}): **{reporting.verdict(z2)}**."
    )
  if len(rewinds) > 1:
    first, last = rewinds[0], rewinds[-1]
    for kind in kinds:
      d, se, z = _paired_z(
        instability[first][kind]["barrier"]["test_error"],
        instability[last][kind]["barrier"]["test_error"],
      )
      lines.append(
        f"- Frankle et al., the {kind} network's instability falls with later rewinding: "
        f"test-error barrier at k={first} - at k={last} = {d:+.4g} +- {se:.2g} (z = {z:.1f}): "
        f"**{reporting.verdict(z)}**."
      )
      # the same on the train loss, which resolves barriers far below one test example
      d, se, z = _paired_z(
        instability[first][kind]["barrier"]["train_loss"],
        instability[last][kind]["barrier"]["train_loss"],
      )
      lines.append(
        f"  - secondary measure (not the paper's), the train-loss barrier at k={first} - at "
        f"k={last} = {d:+.3g} +- {se:.2g} (z = {z:.1f}): **{reporting.verdict(z)}**; one test example "
        f"is {1 / len(ds.x_test):.4f} of test error."
      )
  gap = max(r["permuted_endpoint_gap"] for r in rebasin.values())
  lines.append(
    f"- Check: a permuted network computes b's function; its train loss differs from b's by "
    f"at most {gap:.2g} (float32 rounding)."
  )

  import matplotlib.pyplot as plt  # noqa: PLC0415 - reporting sets the Agg backend

  fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4), dpi=120)
  alphas = np.linspace(0, 1, config.num_points)
  for i, w in enumerate(widths):
    ax1.plot(alphas, rebasin[w]["naive"]["curve"]["test_loss"], color=f"C{i}", ls="--")
    ax1.plot(alphas, rebasin[w]["matched"]["curve"]["test_loss"], color=f"C{i}", label=f"width {w}")
  ax1.set_xlabel("alpha (0: network a, 1: network b); dashed: naive, solid: matched")
  ax1.set_ylabel("test loss (mean over pairs)")
  ax1.legend(fontsize=7)
  ax1.grid(alpha=0.3)
  for kind in kinds:
    stats = [_mean_se(instability[k][kind]["barrier"]["test_error"]) for k in rewinds]
    ax2.errorbar(
      np.maximum(rewinds, 0.5), [s[0] for s in stats], [2 * s[1] for s in stats],
      marker="o", label=kind,
    )  # fmt: skip
  ax2.set_xscale("log")
  ax2.set_xlabel("rewind step k (k=0 drawn at 0.5)")
  ax2.set_ylabel("test-error barrier (+- 2 se)")
  ax2.legend(fontsize=7)
  ax2.grid(alpha=0.3)
  fig.suptitle(f"Linear mode connectivity, MLPs on {config.dataset}")
  fig.tight_layout()
  reporting.save_figure(fig, os.path.join(workdir, "mode_connectivity.png"))

  notes = (
    "Git Re-Basin (Ainsworth et al. 2023): weight matching takes independently trained networks "
    "to one basin, the barrier falling toward 0 for wide networks (MNIST MLP 512x3: ~0 loss "
    "barrier after matching). Frankle et al. (2020): the error barrier between two copies "
    "trained from step k with different data orders falls as k grows (for LeNet on MNIST it is "
    "~0 already at k=0). Here: MLP "
    f"{config.num_hidden} hidden layers on {config.dataset}, {config.optimizer} lr "
    f"{config.learning_rate:g}, batch {config.batch_size}, {config.num_steps} steps, "
    f"{config.seeds} pairs per setting; instability width {config.instability_width}"
    + (
      f", IMP {config.imp_rounds} rounds of {config.prune_fraction:g} ({config.prune_scope})"
      if config.imp_rounds
      else ""
    )
    + f". Barrier = max over {config.num_points} alphas minus the endpoints' mean; se = "
    "standard error over pairs.\n\n" + "\n".join(lines)
  )
  reporting.write_table(workdir, rows, title="Linear mode connectivity", notes=notes)
  print(open(os.path.join(workdir, "results.md")).read())


if __name__ == "__main__":
  runner.main(run, Config, prog=PROG, workdir="runs/mode_connectivity")
