r"""Zeroth-order against first-order training: loss against forward passes, and memory.

  python -m experiments.zeroth_order --workdir=runs/zeroth_order

MeZO (Malladi et al., NeurIPS 2023) and Sparse MeZO (Liu et al., 2024)
train with forward passes only: each step spends 2 x --num_probes forward
passes on the two-point SPSA estimate and none on a backward pass. Here an
MLP on digits trains with SGD on three gradients, fed through the same
``gradlab.train`` step:

* first order: backpropagation (one forward and one backward pass, counted
  as 3 forward-pass equivalents, the usual cost of a backward being ~2x);
* MeZO: ``gradlab.zeroth_order.zo_value_and_grad``;
* Sparse MeZO: the same, perturbing only the --sparse_fraction of each
  layer's weights of smallest magnitude.

The table gives the final training loss and test accuracy after the same
budget of forward-pass equivalents, and the temporary memory XLA allocates
for each compiled step (``memory_analysis``), the quantity MeZO's
"memory of inference" claim is about.
"""

from __future__ import annotations

import dataclasses
import os

import jax
import jax.numpy as jnp
import optax

from experiments import flag_checks, reporting, runner
from gradlab import data, models, train, zeroth_order

PROG = "zeroth_order"


@dataclasses.dataclass(frozen=True)
class Config:
  """The flags of ``zeroth_order`` (``--name=value``); defaults are the main's."""

  forward_budget: int = runner.option(30000, "Forward-pass equivalents per method.")
  batch_size: int = runner.option(64, "Batch size.")
  hidden: int = runner.option(128, "Hidden width.")
  first_order_lr: float = runner.option(0.1, "SGD learning rate with backpropagation.")
  zo_lr: float = runner.option(
    0.003,
    "SGD learning rate with MeZO estimates (the "
    "estimate's variance grows with the dimension: ~(d+1)|g|^2).",
  )
  sparse_zo_lr: float = runner.option(
    0.01, "SGD learning rate with Sparse MeZO (fewer perturbed weights tolerate a larger step)."
  )
  epsilon: float = runner.option(1e-3, "MeZO perturbation scale.")
  num_probes: int = runner.option(1, "SPSA probes per step.")
  sparse_fraction: float = runner.option(0.25, "Sparse MeZO: share of weights perturbed.")
  log_every: int = runner.option(50, "Steps between metrics records.")
  seed: int = runner.option(0, "Seed.")


def run(config: Config, workdir: str):
  flag_checks.check_config(config)
  for name in ("forward_budget", "batch_size", "hidden", "num_probes", "log_every"):
    flag_checks.positive(name, getattr(config, name))
  for name in ("first_order_lr", "zo_lr", "sparse_zo_lr", "epsilon"):
    flag_checks.positive(name, getattr(config, name))
  flag_checks.require(
    0 < config.sparse_fraction <= 1, "sparse_fraction", "in (0, 1]", config.sparse_fraction
  )
  # the steps each method gets are derived from the budget: name the flag the user set
  most = max(3, 2 * config.num_probes)  # forward passes per step: backprop 3, MeZO 2 per probe
  flag_checks.require(
    config.forward_budget >= 2 * most,
    "forward_budget",
    f">= {2 * most} (2 steps of the costliest method, {most} forward passes a step)",
    config.forward_budget,
  )
  flag_checks.check_same_run(
    workdir,
    {
      k: getattr(config, k)
      for k in (
        "forward_budget",
        "batch_size",
        "hidden",
        "first_order_lr",
        "zo_lr",
        "sparse_zo_lr",
        "epsilon",
        "num_probes",
        "sparse_fraction",
        "seed",
      )
    },
  )

  ds = data.load_dataset("digits")
  model = models.MLP((config.hidden, ds.num_classes))
  params = model.init(jax.random.key(config.seed), jnp.zeros((1, ds.x_train.shape[1])))
  loss = lambda p, b: optax.softmax_cross_entropy_with_integer_labels(
    model.apply(p, b["x"]), b["y"]
  ).mean()
  train_loss = lambda p, b, k: (loss(p, b), {})
  x_test, y_test = jnp.asarray(ds.x_test), jnp.asarray(ds.y_test)
  full = {"x": jnp.asarray(ds.x_train), "y": jnp.asarray(ds.y_train)}
  eval_fn = lambda p: {
    "train_loss": loss(p, full),
    "accuracy": jnp.mean(jnp.argmax(model.apply(p, x_test), -1) == y_test),
  }
  methods = {
    "first order (backprop)": (None, config.first_order_lr, 3),
    "MeZO": (
      zeroth_order.zo_value_and_grad(
        train_loss, epsilon=config.epsilon, num_probes=config.num_probes
      ),
      config.zo_lr,
      2 * config.num_probes,
    ),
    "Sparse MeZO": (
      zeroth_order.zo_value_and_grad(
        train_loss,
        epsilon=config.epsilon,
        num_probes=config.num_probes,
        sparse_fraction=config.sparse_fraction,
      ),
      config.sparse_zo_lr,
      2 * config.num_probes,
    ),
  }
  rows, curves = [], {}
  batch0 = {"x": ds.x_train[: config.batch_size], "y": ds.y_train[: config.batch_size]}
  for name, (vg, lr, cost) in methods.items():
    opt = optax.sgd(lr)
    step = train.make_train_step(train_loss, opt, value_and_grad_fn=vg, norm_metrics=False)
    state = train.TrainState.create(params, opt, jax.random.key(config.seed + 1))
    mem = step.jitted.lower(state, batch0).compile().memory_analysis()
    big = {"x": ds.x_train[:1024], "y": ds.y_train[:1024]}
    mem_big = step.jitted.lower(state, big).compile().memory_analysis()
    num_steps = config.forward_budget // cost
    run_dir = os.path.join(workdir, name.split()[0].lower() if name != "Sparse MeZO" else "sparse")
    _, last = train.fit(
      state,
      step,
      lambda s: data.iterate_batches(
        {"x": ds.x_train, "y": ds.y_train},
        batch_size=config.batch_size,
        seed=config.seed,
        start_step=s,
      ),
      num_steps=num_steps,
      workdir=run_dir,
      checkpoint_every=max(num_steps // 2, 1),
      log_every=config.log_every,
      eval_fn=eval_fn,
      eval_every=config.log_every,
      progress_every=num_steps,
    )
    records = [
      r
      for r in train.read_metrics(os.path.join(run_dir, "metrics.jsonl"))
      if "eval/train_loss" in r
    ]
    curves[name] = ([r["step"] * cost for r in records], [r["eval/train_loss"] for r in records])
    rows.append(
      {
        "method": name,
        "lr": lr,
        "forward passes / step": cost,
        "steps": num_steps,
        "final train loss": last["eval/train_loss"],
        "test accuracy": last["eval/accuracy"],
        "step temp memory (KiB)": getattr(mem, "temp_size_in_bytes", float("nan")) / 1024,
        "at batch 1024 (KiB)": getattr(mem_big, "temp_size_in_bytes", float("nan")) / 1024,
      }
    )
  reporting.plot_curves(
    os.path.join(workdir, "loss_vs_forward_passes.png"),
    curves,
    xlabel="forward-pass equivalents",
    ylabel="training loss (full set)",
    logy=True,
    title="Zeroth- against first-order training, digits MLP",
  )
  notes = (
    f"Digits, MLP 64-{config.hidden}-10, batch {config.batch_size}, SGD, "
    f"{config.forward_budget} forward-pass equivalents each; MeZO eps {config.epsilon}, "
    f"{config.num_probes} probe(s); Sparse MeZO perturbs {config.sparse_fraction:.0%} of each layer. "
    "MeZO's paper fine-tunes pretrained language models, where the loss landscape's low "
    "effective rank makes ZO competitive; training a small net from scratch is the hard "
    "case for it, so expect first order far ahead per forward pass. The memory columns are "
    "XLA's temporary allocation for one compiled step: MeZO saves the activations a "
    "backward pass keeps, and pays for a perturbation and a gradient the size of the "
    "params, so it wins only where activations outweigh parameters (large batches or "
    "long sequences); compare the two batch sizes."
  )
  reporting.write_table(workdir, rows, title="Zeroth-order training", notes=notes)
  print(open(os.path.join(workdir, "results.md")).read())


if __name__ == "__main__":
  runner.main(run, Config, prog=PROG, workdir='runs/zeroth_order')
