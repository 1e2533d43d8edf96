r"""M-FAC's train step against ``optax.sgd`` and ``optax.adam``, and what it reaches.

  python -m benchmarks.mfac_step [--json=out.json]

1. **Step ratio**: ``jit(value_and_grad + update + apply_updates)`` of the
   digits MLP (64-128-128-10, 26k parameters, batch 128) with
   ``transforms.mfac`` at m = 16 and m = 64 gradients, against SGD and Adam,
   timed side by side in one interleaved run (``benchmarks/timing.py``). The
   M-FAC step adds O(m d) for the window's product and O(m^3) for the
   coefficients.
2. **Accuracy at equal steps**: held-out accuracy on the digits after
   ``--steps`` steps of M-FAC (each m) and of Adam, each at the best learning
   rate of a small grid (the same batches for all).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax
from absl import app, flags

from benchmarks import timing
from gradlab import data, models, transforms

_JSON = flags.DEFINE_string("json", None, "Write the figures here.")
_STEPS = flags.DEFINE_integer("steps", 500, "Training steps of the accuracy comparison.")
_REPEATS = flags.DEFINE_integer("repeats", 20, "Timed repeats.")


def main(argv):
  del argv
  ds = data.load_dataset("digits")
  x, y = jnp.asarray(ds.x_train), jnp.asarray(ds.y_train)
  model = models.MLP((128, 128, ds.num_classes))
  params = model.init(jax.random.key(0), x[:1])

  def loss(p, b):
    return optax.softmax_cross_entropy_with_integer_labels(model.apply(p, b["x"]), b["y"]).mean()

  def batch(i):
    idx = jax.random.randint(jax.random.key(i), (128,), 0, x.shape[0])
    return {"x": x[idx], "y": y[idx]}

  def make_step(opt):
    @jax.jit
    def step(p, s, b):
      g = jax.grad(loss)(p, b)
      u, s = opt.update(g, s, p)
      return optax.apply_updates(p, u), s

    return step

  opts = {
    "sgd": optax.sgd(0.1),
    "adam": optax.adam(1e-3),
    "mfac m=16": transforms.mfac(1e-3, 16, damping=1e-4),
    "mfac m=64": transforms.mfac(1e-3, 64, damping=1e-4),
  }
  b0 = batch(0)
  fns = {}
  for name, opt in opts.items():
    step, s = make_step(opt), opt.init(params)
    fns[name] = lambda step=step, s=s: jax.block_until_ready(step(params, s, b0))
  times = timing.interleaved(fns, repeats=_REPEATS.value, inner=5)
  rows = [
    {
      "optimizer": n,
      "step ms": 1e3 * t,
      "vs sgd": t / times["sgd"],
      "vs adam": t / times["adam"],
    }
    for n, t in times.items()
  ]

  def accuracy(opt):
    step, p, s = make_step(opt), params, opt.init(params)
    for i in range(_STEPS.value):
      p, s = step(p, s, batch(1000 + i))
    return float(jnp.mean(jnp.argmax(model.apply(p, jnp.asarray(ds.x_test)), -1) == ds.y_test))

  grids = {
    "adam": [lambda lr: optax.adam(lr), (3e-4, 1e-3, 3e-3)],
    "mfac m=16": [lambda lr: transforms.mfac(lr, 16, damping=1e-4), (1e-4, 3e-4, 1e-3)],
    "mfac m=64": [lambda lr: transforms.mfac(lr, 64, damping=1e-4), (1e-4, 3e-4, 1e-3)],
  }
  for name, (make, lrs) in grids.items():
    accs = {lr: accuracy(make(lr)) for lr in lrs}
    best = max(accs, key=accs.get)
    for row in rows:
      if row["optimizer"] == name:
        row[f"test acc after {_STEPS.value} steps"] = accs[best]
        row["best lr"] = best
  timing.report("M-FAC on the digits MLP (26k parameters, batch 128)", rows, _JSON.value)


if __name__ == "__main__":
  app.run(main)
