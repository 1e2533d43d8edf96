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

import os

import jax
import jax.numpy as jnp
import optax
from absl import app, flags

from experiments import flag_checks, reporting
from gradlab import data, models, train, zeroth_order

_WORKDIR = flags.DEFINE_string("workdir", "runs/zeroth_order", "Output directory.")
_BUDGET = flags.DEFINE_integer("forward_budget", 30000, "Forward-pass equivalents per method.")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 64, "Batch size.")
_HIDDEN = flags.DEFINE_integer("hidden", 128, "Hidden width.")
_FO_LR = flags.DEFINE_float("first_order_lr", 0.1, "SGD learning rate with backpropagation.")
_ZO_LR = flags.DEFINE_float(
  "zo_lr",
  0.003,
  "SGD learning rate with MeZO estimates (the "
  "estimate's variance grows with the dimension: ~(d+1)|g|^2).",
)
_SPARSE_LR = flags.DEFINE_float(
  "sparse_zo_lr",
  0.01,
  "SGD learning rate with Sparse MeZO (fewer perturbed weights tolerate a larger step).",
)
_EPSILON = flags.DEFINE_float("epsilon", 1e-3, "MeZO perturbation scale.")
_PROBES = flags.DEFINE_integer("num_probes", 1, "SPSA probes per step.")
_SPARSE = flags.DEFINE_float("sparse_fraction", 0.25, "Sparse MeZO: share of weights perturbed.")
_LOG_EVERY = flags.DEFINE_integer("log_every", 50, "Steps between metrics records.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed.")

PROG = "zeroth_order"


def main(argv):
  del argv
  try:
    for name in ("forward_budget", "batch_size", "hidden", "num_probes", "log_every"):
      flag_checks.positive(name, flags.FLAGS[name].value)
    for name in ("first_order_lr", "zo_lr", "sparse_zo_lr", "epsilon"):
      flag_checks.positive(name, flags.FLAGS[name].value)
    flag_checks.require(0 < _SPARSE.value <= 1, "sparse_fraction", "in (0, 1]", _SPARSE.value)
    flag_checks.check_same_run(
      _WORKDIR.value,
      {
        k: flags.FLAGS[k].value
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
  except flag_checks.FlagError as e:
    flag_checks.exit_on_flag_error(PROG, e)

  workdir = _WORKDIR.value
  ds = data.load_dataset("digits")
  model = models.MLP((_HIDDEN.value, ds.num_classes))
  params = model.init(jax.random.key(_SEED.value), jnp.zeros((1, ds.x_train.shape[1])))
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
    "first order (backprop)": (None, _FO_LR.value, 3),
    "MeZO": (
      zeroth_order.zo_value_and_grad(train_loss, epsilon=_EPSILON.value, num_probes=_PROBES.value),
      _ZO_LR.value,
      2 * _PROBES.value,
    ),
    "Sparse MeZO": (
      zeroth_order.zo_value_and_grad(
        train_loss, epsilon=_EPSILON.value, num_probes=_PROBES.value, sparse_fraction=_SPARSE.value
      ),
      _SPARSE_LR.value,
      2 * _PROBES.value,
    ),
  }
  rows, curves = [], {}
  batch0 = {"x": ds.x_train[: _BATCH_SIZE.value], "y": ds.y_train[: _BATCH_SIZE.value]}
  for name, (vg, lr, cost) in methods.items():
    opt = optax.sgd(lr)
    step = train.make_train_step(train_loss, opt, value_and_grad_fn=vg, norm_metrics=False)
    state = train.TrainState.create(params, opt, jax.random.key(_SEED.value + 1))
    mem = step.jitted.lower(state, batch0).compile().memory_analysis()
    big = {"x": ds.x_train[:1024], "y": ds.y_train[:1024]}
    mem_big = step.jitted.lower(state, big).compile().memory_analysis()
    num_steps = _BUDGET.value // cost
    run_dir = os.path.join(workdir, name.split()[0].lower() if name != "Sparse MeZO" else "sparse")
    _, last = train.fit(
      state,
      step,
      lambda s: data.iterate_batches(
        {"x": ds.x_train, "y": ds.y_train},
        batch_size=_BATCH_SIZE.value,
        seed=_SEED.value,
        start_step=s,
      ),
      num_steps=num_steps,
      workdir=run_dir,
      checkpoint_every=max(num_steps // 2, 1),
      log_every=_LOG_EVERY.value,
      eval_fn=eval_fn,
      eval_every=_LOG_EVERY.value,
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
    f"Digits, MLP 64-{_HIDDEN.value}-10, batch {_BATCH_SIZE.value}, SGD, "
    f"{_BUDGET.value} forward-pass equivalents each; MeZO eps {_EPSILON.value}, "
    f"{_PROBES.value} probe(s); Sparse MeZO perturbs {_SPARSE.value:.0%} of each layer. "
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
  app.run(main)
