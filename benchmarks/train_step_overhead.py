r"""gradlab's jitted train step against a minimal hand-written one.

  python -m benchmarks.train_step_overhead [--json=out.json]

Both run the same MLP, batch and optax.adam update. The hand-written step is
``jax.jit(value_and_grad + optimizer.update + apply_updates)`` returning the
loss; gradlab's also computes its metrics (gradient, update and parameter
norms, accuracy) and goes through the batch-shape check. ``norm_metrics=False`` drops the
three norms, leaving the step's own machinery; ``fit`` runs that lean step on
the steps it does not log, which the last row reproduces. Goal: ratio <= 1.05.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax
from absl import app, flags

from benchmarks import timing
from gradlab import sharding, tasks, train

_JSON = flags.DEFINE_string("json", None, "Write the figures here.")
_WIDTH = flags.DEFINE_integer("width", 1024, "Hidden width of the 2-hidden-layer MLP.")
_BATCH = flags.DEFINE_integer("batch_size", 256, "Batch size.")
_REPEATS = flags.DEFINE_integer("repeats", 30, "Timed repeats (medians are reported).")


def _figures(samples=None):
  """The title and rows of the table, at the flags' sizes."""
  prob = tasks.mlp_problem(_WIDTH.value, _BATCH.value)
  model, params, num_params = prob.model, prob.params, prob.num_params
  batch = {"x": prob.x, "y": prob.y}
  opt = optax.adam(1e-3)

  def loss_fn(p, b, key):
    del key
    logits = model.apply(p, b["x"])
    return optax.softmax_cross_entropy_with_integer_labels(logits, b["y"]).mean(), {
      "accuracy": jnp.mean(logits.argmax(-1) == b["y"])
    }

  @jax.jit
  def baseline(params, opt_state, b):
    loss, grads = jax.value_and_grad(lambda p: loss_fn(p, b, None)[0])(params)
    updates, opt_state = opt.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  mesh = sharding.make_mesh(jax.devices()[:1])
  ours = train.make_train_step(loss_fn, opt, mesh=mesh, donate=False)
  ours_lean = train.make_train_step(loss_fn, opt, mesh=mesh, donate=False, norm_metrics=False)
  dev_batch = sharding.shard_batch(batch, mesh)
  state = jax.device_put(
    train.TrainState.create(params, opt, jax.random.key(0)), sharding.replicated(mesh)
  )
  opt_state = opt.init(params)
  box = {"ours": state, "lean": state, "fit": state, "base": (params, opt_state)}

  def run_ours():
    box["ours"], m = ours(box["ours"], dev_batch)
    jax.block_until_ready(m["loss"])

  calls = [0]

  def run_as_fit():  # what fit does with log_every=10: 9 lean steps, 1 full
    calls[0] += 1
    fn = ours if calls[0] % 10 == 0 else ours.lean
    box["fit"], m = fn(box["fit"], dev_batch)
    jax.block_until_ready(m["loss"])

  def run_lean():
    box["lean"], m = ours_lean(box["lean"], dev_batch)
    jax.block_until_ready(m["loss"])

  def run_base():
    p, s, loss = baseline(*box["base"], dev_batch)
    box["base"] = (p, s)
    jax.block_until_ready(loss)

  t = timing.interleaved(
    {
      "hand-written": run_base,
      "gradlab (mesh)": run_ours,
      "gradlab, norm_metrics=False": run_lean,
      "gradlab as fit runs it (log_every=10)": run_as_fit,
    },
    repeats=_REPEATS.value,
    samples=samples,
  )
  rows = [{"step": k, "ms": v * 1e3, "ratio": v / t["hand-written"]} for k, v in t.items()]
  title = (
    f"Train step, MLP 784-{_WIDTH.value}-{_WIDTH.value}-10 ({num_params:,} params), "
    f"batch {_BATCH.value}, adam, on {jax.devices()[0].platform}"
  )
  return title, rows


def main(argv):
  del argv
  timing.report(*_figures(), _JSON.value)


QUICK = {"width": "8", "batch_size": "8", "repeats": "2"}


def measure(quick: bool, device: str) -> list[timing.Row]:
  """``benchmarks.all``'s rows: each gradlab step over the hand-written one."""
  del device
  values, samples = QUICK if quick else {}, {}
  with timing.flag_values(values):
    _figures(samples)
  dev, cmd = timing.jax_device(), timing.command(__name__, values)
  return [
    timing.Row(
      f"{k} / hand-written", *timing.ratio(samples, k, "hand-written"), "<= 1.05", dev, cmd
    )
    for k in samples
    if k != "hand-written"
  ]


if __name__ == "__main__":
  app.run(main)
