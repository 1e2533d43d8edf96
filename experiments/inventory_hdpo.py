r"""HDPO against REINFORCE on a base-stock inventory problem, as the horizon grows.

  python -m experiments.inventory_hdpo --workdir=/tmp/gradlab/inventory

The setting of hindsight differentiable policy optimization (Alvo, Russo &
Kanoria 2023): the demands are exogenous, so a trace's cost is a
differentiable function of the policy's parameters once the demands are known
in hindsight, and its gradient (the *pathwise* estimator, HDPO) can replace
the score-function estimator (REINFORCE), which needs exploration noise and
weighs each noise draw by the cost that follows it. The problem is
``gradlab.tasks.inventory``: order up to a base-stock level ``S`` each period,
exponential demand, holding cost 1, backlog penalty 9, whose optimum is the
critical fractile ``S* = m log 10`` and whose exact expected cost is
``T L(S)``.

For each horizon ``T`` of ``--horizons``:

* the per-trace variance of the gradient of the *per-period* cost at
  ``S = S*`` for HDPO (deterministic policy), HDPO with the exploration noise,
  and REINFORCE (the same noisy policy, a leave-one-out baseline), from
  ``--num_traces`` traces;
* ``--seeds`` training runs (vmapped) of each estimator with Adam
  (``--learning_rate``, cosine-decayed to 0) from ``S = --initial_level``, ``--train_steps`` steps of
  ``--batch`` traces; the optimality gap ``L(S)/L(S*) - 1`` of the final level,
  evaluated exactly with the deterministic policy, mean +- sd over seeds.

Writes ``results.md/.csv``, ``variance.png`` and ``gap.png``. Runs in a
minute; a restart recomputes (nothing to resume).

The paper's claim to compare with: near-optimal policies, and more robust
training than REINFORCE.
"""

from __future__ import annotations

import dataclasses
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax

from experiments import flag_checks, reporting, runner
from gradlab.tasks import inventory

PROG = "inventory_hdpo"


@dataclasses.dataclass(frozen=True)
class Config:
  """The flags of ``inventory_hdpo`` (``--name=value``); defaults are the main's."""

  horizons: list[str] = runner.option(["1", "4", "16", "64"], "Horizons T.")
  num_traces: int = runner.option(4096, "Traces for the variance table.")
  sigma: float = runner.option(0.3, "Exploration noise of the noisy policy (REINFORCE).")
  seeds: int = runner.option(8, "Training runs per estimator and horizon (vmapped).")
  train_steps: int = runner.option(300, "Adam steps per training run.")
  batch: int = runner.option(16, "Demand traces per step.")
  learning_rate: float = runner.option(0.05, "Adam learning rate on the level S.")
  initial_level: float = runner.option(0.5, "Starting base-stock level.")


def _per_period_grads(prob, level, key, n, sigma):
  kd, ke = jax.random.split(key)
  d = inventory.sample_demand(kd, prob, n)
  e = sigma * jax.random.normal(ke, d.shape)
  t = prob.horizon
  return {
    "hdpo": inventory.pathwise_gradients(prob, level, d) / t,
    "hdpo (noisy policy)": inventory.pathwise_gradients(prob, level, d, e) / t,
    "reinforce": inventory.score_gradients(prob, level, d, e, sigma) / t,
  }


def _train(prob, config, estimator, key):
  # a cosine decay, so the last iterate settles instead of jittering at Adam's step size
  opt = optax.adam(optax.cosine_decay_schedule(config.learning_rate, config.train_steps))

  def step(carry, k):
    s, st = carry
    g = _per_period_grads(prob, s, k, config.batch, config.sigma)[estimator].mean()
    upd, st = opt.update(g, st)
    return (optax.apply_updates(s, upd), st), None

  def one(k):
    s0 = jnp.float32(config.initial_level)
    (s, _), _ = jax.lax.scan(step, (s0, opt.init(s0)), jax.random.split(k, config.train_steps))
    return s

  return jax.jit(jax.vmap(one))(jax.random.split(key, config.seeds))


def run(config: Config, workdir: str):
  flag_checks.check_config(config)
  c = flag_checks
  horizons = c.number_list(
    "horizons", config.horizons, kind=int, valid=lambda t: t >= 1, expected="horizons >= 1"
  )
  c.require(config.num_traces >= 2, "num_traces", ">= 2", config.num_traces)
  c.require(config.batch >= 2, "batch", ">= 2 (REINFORCE's leave-one-out baseline)", config.batch)
  for name in ("sigma", "seeds", "train_steps", "learning_rate"):
    c.positive(name, getattr(config, name))
  c.non_negative("initial_level", config.initial_level)
  flag_checks.check_writable(workdir)
  rows, var_curves, gap_curves = [], {}, {}
  for t in horizons:
    prob = inventory.Inventory(horizon=t)
    s_star = inventory.optimal_level(prob)
    best = float(inventory.newsvendor_loss(prob, s_star))
    grads = _per_period_grads(prob, s_star, jax.random.key(t), config.num_traces, config.sigma)
    for name, g in grads.items():
      g = np.asarray(g, np.float64)
      row = {
        "T": t,
        "estimator": name,
        "mean grad at S*": float(g.mean()),
        "se": float(g.std(ddof=1) / np.sqrt(g.size)),
        "variance per trace": float(g.var(ddof=1)),
      }
      if name != "hdpo (noisy policy)":
        final = np.asarray(_train(prob, config, name, jax.random.key(100 + t)), np.float64)
        gaps = np.asarray(inventory.newsvendor_loss(prob, final)) / best - 1
        row |= {
          "final S (mean)": float(final.mean()),
          "final S (sd)": float(final.std(ddof=1)) if final.size > 1 else 0.0,
          "gap (mean)": float(gaps.mean()),
          "gap (sd)": float(gaps.std(ddof=1)) if gaps.size > 1 else 0.0,
          "S*": s_star,
        }
        gap_curves.setdefault(name, ([], []))
        gap_curves[name][0].append(t)
        gap_curves[name][1].append(max(float(gaps.mean()), 1e-8))
      rows.append(row)
      var_curves.setdefault(name, ([], []))
      var_curves[name][0].append(t)
      var_curves[name][1].append(row["variance per trace"])
    print(
      f"T={t}: "
      + ", ".join(
        f"{r['estimator']} var {r['variance per trace']:.3g}"
        + (f" gap {r['gap (mean)']:.2e}" if "gap (mean)" in r else "")
        for r in rows[-3:]
      ),
      flush=True,
    )
  reporting.write_table(
    workdir,
    rows,
    title="HDPO (pathwise) against REINFORCE on base-stock inventory",
    notes=(
      "Holding 1, backlog penalty 9, exponential demand of mean 1, zero lead time; "
      "S* is the critical fractile. Gradients of the per-period cost at S*, "
      f"{config.num_traces} traces (the exact gradient there is 0). Training: "
      f"{config.seeds} seeds, Adam {config.learning_rate:g} (cosine decay), {config.train_steps} steps of "
      f"{config.batch} traces from S = {config.initial_level:g}; REINFORCE explores with "
      f"sigma = {config.sigma:g}. Gap: L(S)/L(S*) - 1, exact. Paper (Alvo et al. 2023): "
      "near-optimal policies and more robust training than REINFORCE."
    ),
  )
  reporting.plot_curves(
    os.path.join(workdir, "variance.png"),
    var_curves,
    xlabel="horizon T",
    ylabel="variance of the per-period gradient",
    logy=True,
    title="gradient variance at S*",
  )
  reporting.plot_curves(
    os.path.join(workdir, "gap.png"),
    gap_curves,
    xlabel="horizon T",
    ylabel="optimality gap L(S)/L(S*) - 1",
    logy=True,
    title="after training",
  )
  print(f"results in {workdir}")


if __name__ == "__main__":
  runner.main(run, Config, prog=PROG, workdir="runs/inventory_hdpo")
