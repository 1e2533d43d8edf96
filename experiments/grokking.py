r"""Grokking at the edge of numerical stability (Prieto et al. 2025), at CPU scale.

  python -m experiments.grokking --workdir=runs/grokking

Modular arithmetic ``(a op b) mod p`` (``--tasks``: ``add`` and ``mul``, p =
``--modulus`` = 113), one-hot inputs of both operands, a 2-hidden-layer MLP
(``--hidden`` units, ReLU), full-batch Adam on ``--train_fraction`` of the
p^2 pairs, **no weight decay**. Four runs per task:

* ``softmax CE, float32``: the baseline the paper shows stalling once softmax
  collapse (SC) sets in: confident training examples' float32 softmax rounds
  to an exact one-hot, their gradient is exactly zero, and the rest of the
  gradient only scales the logits up (naive loss minimization);
* ``softmax CE, float64``: the same in float64, where SC comes later;
* ``StableMax CE, float32`` (``gradlab.losses.stablemax_cross_entropy``);
* ``softmax CE + perpendicular gradient, float32``
  (``gradlab.transforms.orthogonal_gradient`` chained before Adam).

Logged every ``--log_every`` steps: train and test accuracy, the collapse
fraction (``gradlab.losses.softmax_collapse_fraction`` of the float32 softmax
of the logits on the training set, in every run: for the StableMax run it
shows how large the logits grew, since its own loss never takes a softmax),
and the weight norm; figures ``curves_{task}.png`` plot them against steps.
results.md gives each run's final test accuracy and the first step at 90%
test accuracy, beside the paper's statements.
"""

from __future__ import annotations

import dataclasses
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax

from experiments import flag_checks, reporting, runner
from gradlab import losses, transforms

PROG = "grokking"
RUNS = (
  "softmax CE, float32",
  "softmax CE, float64",
  "StableMax CE, float32",
  "softmax CE + perpendicular gradient, float32",
)
PAPER = (
  "Prieto et al. (2025), Figs. 1-2 and 6: without weight decay, softmax cross-entropy in "
  "float32 stops improving test accuracy as softmax collapse sets in (float64 delays it); "
  "StableMax cross-entropy generalizes without weight decay; the perpendicular gradient "
  "generalizes without weight decay and without the grokking delay."
)


@dataclasses.dataclass(frozen=True)
class Config:
  """The flags of ``grokking`` (``--name=value``); defaults are the main's."""

  tasks: list[str] = runner.option(["add", "mul"], "Operations: add, mul, sub.")
  modulus: int = runner.option(113, "The modulus p (a prime).")
  train_fraction: float = runner.option(0.4, "Share of the p^2 pairs trained on.")
  hidden: int = runner.option(200, "Hidden width of both layers.")
  steps: int = runner.option(3000, "Full-batch Adam steps.")
  learning_rate: float = runner.option(3e-3, "Adam learning rate.")
  log_every: int = runner.option(50, "Steps between logged points.")
  runs: list[str] = runner.option(
    [str(i) for i in range(4)], "Which runs (0-3, in the order above)."
  )
  seed: int = runner.option(0, "Seed.")


def make_data(op: str, p: int, fraction: float, seed: int):
  a, b = np.meshgrid(np.arange(p), np.arange(p), indexing="ij")
  a, b = a.ravel(), b.ravel()
  y = {"add": a + b, "mul": a * b, "sub": a - b}[op] % p
  perm = np.random.default_rng(seed).permutation(len(a))
  k = int(round(fraction * len(a)))
  mk = lambda s: (np.stack([a[s], b[s]], 1).astype(np.int32), y[s].astype(np.int32))
  return mk(perm[:k]), mk(perm[k:])


def init_mlp(key, p, hidden, dtype):
  dims = [2 * p, hidden, hidden, p]
  params = []
  for i, (m, n) in enumerate(zip(dims[:-1], dims[1:])):
    k = jax.random.fold_in(key, i)
    params.append(
      {
        "kernel": (jax.random.normal(k, (m, n)) / np.sqrt(m)).astype(dtype),
        "bias": jnp.zeros(n, dtype),
      }
    )
  return params


def logits_fn(params, x, p):
  h = jnp.concatenate([jax.nn.one_hot(x[:, 0], p), jax.nn.one_hot(x[:, 1], p)], 1)
  h = h.astype(params[0]["kernel"].dtype)
  for i, layer in enumerate(params):
    h = h @ layer["kernel"] + layer["bias"]
    if i < len(params) - 1:
      h = jax.nn.relu(h)
  return h


def train_run(run: int, op: str, config: Config) -> dict:
  dtype = jnp.float64 if run == 1 else jnp.float32
  p = config.modulus
  (xtr, ytr), (xte, yte) = make_data(op, p, config.train_fraction, config.seed)
  params = init_mlp(jax.random.key(config.seed), p, config.hidden, dtype)
  if run == 2:
    loss = lambda q: losses.stablemax_cross_entropy(logits_fn(q, xtr, p), ytr)
  else:
    loss = lambda q: optax.softmax_cross_entropy_with_integer_labels(
      logits_fn(q, xtr, p), ytr
    ).mean()
  adam = optax.adam(config.learning_rate)
  opt = optax.chain(transforms.orthogonal_gradient(), adam) if run == 3 else adam

  def metrics(q):
    ztr, zte = logits_fn(q, xtr, p), logits_fn(q, xte, p)
    return jnp.stack(
      [
        jnp.mean(jnp.argmax(ztr, -1) == ytr),
        jnp.mean(jnp.argmax(zte, -1) == yte),
        losses.softmax_collapse_fraction(ztr, ytr),
        optax.tree.norm(q).astype(jnp.float32),
      ]
    ).astype(jnp.float32)

  @jax.jit
  def chunk(q, s):
    def step(carry, _):
      q, s = carry
      g = jax.grad(loss)(q)
      u, s = opt.update(g, s, q)
      return (optax.apply_updates(q, u), s), None

    (q, s), _ = jax.lax.scan(step, (q, s), None, length=config.log_every)
    return q, s, metrics(q)

  q, s = params, opt.init(params)
  rows = []
  for i in range(config.steps // config.log_every):
    q, s, m = chunk(q, s)
    rows.append([(i + 1) * config.log_every, *np.asarray(m).tolist()])
  return {"curve": rows}


def run(config: Config, workdir: str):
  flag_checks.check_config(config)
  for t in config.tasks:
    flag_checks.one_of("tasks", t, ("add", "mul", "sub"))
  runs = flag_checks.number_list(
    "runs", config.runs, kind=int, valid=lambda r: 0 <= r <= 3, expected="run indices 0-3"
  )
  for name in ("modulus", "hidden", "steps", "log_every"):
    flag_checks.positive(name, getattr(config, name))
  flag_checks.require(config.modulus >= 3, "modulus", ">= 3", config.modulus)
  flag_checks.require(
    0 < config.train_fraction < 1, "train_fraction", "in (0, 1)", config.train_fraction
  )
  flag_checks.require(
    config.steps % config.log_every == 0, "steps", "a multiple of log_every", config.steps
  )
  flag_checks.positive("learning_rate", config.learning_rate)
  flag_checks.check_same_run(workdir, dataclasses.asdict(config))

  rows = []
  for op in config.tasks:
    curves = {}
    for r in runs:

      def compute(r=r, op=op):
        if r == 1:
          with jax.enable_x64(True):
            return train_run(r, op, config)
        return train_run(r, op, config)

      res, _ = reporting.cached_unit(os.path.join(workdir, f"run_{op}_{r}.json"), compute)
      curve = np.asarray(res["curve"])
      curves[RUNS[r]] = curve
      hit = np.flatnonzero(curve[:, 2] >= 0.9)
      rows.append(
        {
          "task": op,
          "run": RUNS[r],
          "final train acc": float(curve[-1, 1]),
          "final test acc": float(curve[-1, 2]),
          "first step at 90% test acc": int(curve[hit[0], 0]) if hit.size else "not reached",
          "max collapse fraction": float(curve[:, 3].max()),
          "final weight norm": float(curve[-1, 4]),
        }
      )
    _plot(os.path.join(workdir, f"curves_{op}.png"), curves, op, config)
  notes = (
    f"(a op b) mod {config.modulus}, {config.train_fraction:.0%} of the pairs trained on, "
    f"MLP {2 * config.modulus}-{config.hidden}-{config.hidden}-{config.modulus}, full-batch "
    f"Adam lr {config.learning_rate}, no weight decay, {config.steps} steps. The collapse "
    "fraction is that of the float32 softmax of each run's logits on the training set; for "
    "the StableMax run it measures how far its logits grew, not a vanished gradient (its "
    f"loss does not use softmax).\n\nPaper: {PAPER}"
  )
  reporting.write_table(workdir, rows, title="Grokking and softmax collapse", notes=notes)
  return rows


def _plot(path, curves, op, config):
  import matplotlib.pyplot as plt

  fig, axes = plt.subplots(1, 3, figsize=(15, 4))
  for name, c in curves.items():
    axes[0].plot(c[:, 0], c[:, 2], label=name)
    axes[1].plot(c[:, 0], c[:, 3], label=name)
    axes[2].plot(c[:, 0], c[:, 4], label=name)
  for ax, title in zip(axes, ("test accuracy", "softmax collapse fraction (train)", "weight norm")):
    ax.set_title(f"{title}, {op} mod {config.modulus}")
    ax.set_xlabel("step")
  axes[0].legend(fontsize=7)
  reporting.save_figure(fig, path)


if __name__ == "__main__":
  runner.main(run, Config, prog=PROG, workdir="/tmp/gradlab/grokking")
