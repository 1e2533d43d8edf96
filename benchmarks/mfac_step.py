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

import types

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import app, flags

from benchmarks import timing
from gradlab import data, models, transforms

_JSON = flags.DEFINE_string("json", None, "Write the figures here.")
_STEPS = flags.DEFINE_integer("steps", 500, "Training steps of the accuracy comparison.")
_REPEATS = flags.DEFINE_integer("repeats", 20, "Timed repeats.")
_RANDOM = flags.DEFINE_bool("random_data", False, "Random digits-shaped data (nothing to read).")


def _random_digits():
  rng = np.random.default_rng(0)
  x, y = rng.random((1797, 64), np.float32), rng.integers(0, 10, 1797).astype(np.int32)
  return types.SimpleNamespace(
    x_train=x[:1437], y_train=y[:1437], x_test=x[1437:], y_test=y[1437:], num_classes=10
  )


def _figures(samples=None):
  """The rows of the table, at the flags' sizes."""
  ds = _random_digits() if _RANDOM.value else data.load_dataset("digits")
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
  times = timing.interleaved(fns, repeats=_REPEATS.value, inner=5, samples=samples)
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
  return rows


def main(argv):
  del argv
  timing.report("M-FAC on the digits MLP (26k parameters, batch 128)", _figures(), _JSON.value)


# no training step (the accuracies at initialization), and no digits to read
QUICK = {"steps": "0", "repeats": "2", "random_data": "true"}


def measure(quick: bool, device: str) -> list[timing.Row]:
  """``benchmarks.all``'s rows: M-FAC's step over Adam's, and its accuracy over Adam's."""
  del device
  values, samples = QUICK if quick else {}, {}
  with timing.flag_values(values):
    rows, steps = _figures(samples), _STEPS.value
  dev, cmd = timing.jax_device(), timing.command(__name__, values)
  acc = {r["optimizer"]: r.get(f"test acc after {steps} steps") for r in rows}
  out = []
  for m in ("mfac m=16", "mfac m=64"):
    out.append(timing.Row(f"{m} step / adam step", *timing.ratio(samples, m, "adam"), "", dev, cmd))
    out.append(
      timing.Row(f"{m} test acc / adam's (best lr each)", acc[m] / acc["adam"], "", "", dev, cmd)
    )
  return out


if __name__ == "__main__":
  app.run(main)
