r"""Each gradlab transform's train-step cost against ``optax.adam``, and 8-bit Adam's memory.

  python -m benchmarks.transform_overhead [--width=2800] [--json=out.json]

An MLP 784-W-W-10 (W = 2800: 10.1M parameters) on a random batch. For every
transform two ratios, each measured side by side with Adam in one
interleaved run (``benchmarks/timing.py``):

* **step**: ``jit(value_and_grad + update + apply_updates)``, the number a
  training run feels (goal <= 1.15x);
* **update**: the optimizer's ``update`` + ``apply_updates`` alone, on a fixed
  gradient, which isolates the transform's own memory traffic;
* **bytes** and **flops**: XLA's compiled cost analysis of one jitted
  ``update`` against ``optax.adam``'s (``jit(f).lower(...).compile()
  .cost_analysis()``): machine-independent, so it judges the elementwise
  transforms where this CPU's timing noise (Adam's own step varies 2x between
  repeats) cannot; once with the state as an ordinary argument and once
  donated, as the train step passes it. Goal for the elementwise ones:
  bytes <= 1.15x. An update that loops (``adam_8bit`` works through each leaf
  in cache-sized chunks) shows ``nan``: the analysis counts a loop body once.

STORM, exact MARS and SVRG evaluate a second gradient per step by design
(``grad_fn``), so their step ratio is ~2x; their update-only row then includes
that extra backward pass too. Also reports the optimizer-state bytes of
``adam_8bit`` against fp32 Adam (goal <= 0.3x).

``--only="adam_8bit one pass"`` (not in the default list; ``benchmarks.all`` runs
it) is ``adam_8bit`` traced without its cache-sized chunk loop, each leaf in one
pass: the loop's price or gain on a device where the L2 argument differs.
"""

from __future__ import annotations

from unittest import mock

import jax
import optax
from absl import app, flags

from benchmarks import timing
from gradlab import tasks, transforms
from gradlab.transforms import quantized

_JSON = flags.DEFINE_string("json", None, "Write the figures here.")
_WIDTH = flags.DEFINE_integer("width", 2800, "Hidden width (2800: 10.1M parameters).")
_BATCH = flags.DEFINE_integer("batch_size", 64, "Batch size.")
_REPEATS = flags.DEFINE_integer("repeats", 7, "Timed repeats (medians are reported).")
_INNER = flags.DEFINE_integer("inner", 3, "Calls per timed repeat.")
_ONLY = flags.DEFINE_list("only", [], "Only these transforms (default: all).")


def _labels(params):
  return jax.tree_util.tree_map_with_path(
    lambda p, _: "head" if "dense_2" in jax.tree_util.keystr(p) else "body", params
  )


TRANSFORMS = {
  "spam": lambda: transforms.spam(1e-3),
  "spike_clip + adam": lambda: optax.chain(transforms.spike_clip(), optax.adam(1e-3)),
  "per_layer_clip + adam": lambda: optax.chain(transforms.per_layer_clip(1.0), optax.adam(1e-3)),
  "layerwise_normalize + sgd": lambda: optax.chain(
    transforms.layerwise_normalize(), optax.sgd(1e-3)
  ),
  "diffgrad": lambda: transforms.diffgrad(1e-3),
  "scale": lambda: transforms.column_normalized_sgd(1e-3, last_layer="dense_2/kernel"),
  "agvm + momentum": lambda: optax.chain(
    optax.sgd(1e-3, momentum=0.9), transforms.agvm(_labels, "body", start=0)
  ),
  "adam_8bit": lambda: transforms.adam_8bit(1e-3),
  "mars": lambda: transforms.mars(1e-3),
  "mars (exact)": lambda: transforms.mars(1e-3, exact=True),
  "storm": lambda: transforms.storm(),
  "svrg + sgd": lambda: optax.chain(transforms.svrg(100), optax.sgd(1e-3)),
}


def _one_pass(tx):
  """``tx`` with 8-bit Adam's update traced without its chunk loop: the chunk size
  (``quantized._CHUNK_VALUES``, sized for a CPU core's L2 cache) raised past every
  leaf while the update is traced, so each leaf is one chunk, one pass."""

  def update(*args, **kwargs):
    with mock.patch.object(quantized, "_CHUNK_VALUES", 1 << 62):
      return tx.update(*args, **kwargs)

  return tx._replace(update=update)


# Selectable by --only and measured by benchmarks.all; not in the default list.
EXTRA = {"adam_8bit one pass": lambda: _one_pass(transforms.adam_8bit(1e-3))}


def cost_analysis(tx, params, grads, *, donate: bool = False) -> dict[str, float]:
  """Bytes accessed and flops of one jitted ``tx.update`` (non-finite policy on).

  ``donate``: the optimizer state is donated, as ``train.make_train_step`` does,
  which lets XLA update it in place (and spares the copies a non-donated
  state costs around a ``lax.cond``)."""
  tx = optax.with_extra_args_support(tx)
  extra = {"grad_fn": lambda q: grads, "full_grad_fn": lambda q: grads}
  split = {"split_grads": jax.tree.map(lambda g: jax.numpy.stack([g, g]), grads)}
  fn = jax.jit(
    lambda g, s, p: tx.update(g, s, p, **extra, **split), donate_argnums=(1,) if donate else ()
  )
  compiled = fn.lower(grads, tx.init(params), params).compile()
  if " while(" in compiled.as_text():
    # XLA's cost analysis counts a loop's body once, whatever its trip count
    # (adam_8bit's chunked update: flops 54M with the loop, 604M without), so
    # a looping update has no comparable figure.
    return {"bytes": float("nan"), "flops": float("nan")}
  ca = compiled.cost_analysis()
  ca = ca[0] if isinstance(ca, list) else ca
  return {"bytes": float(ca["bytes accessed"]), "flops": float(ca.get("flops", 0.0))}


def _figures(samples=None):
  """The title and rows of the table, at the flags' sizes (``samples``: each
  transform's per-repeat step and update times, by name)."""
  prob = tasks.mlp_problem(_WIDTH.value, _BATCH.value)
  params, batch = prob.params, prob.batch
  grad = jax.grad(prob.loss)
  fixed_grads = grad(params, batch)
  half_batch_grads = transforms.half_batch_grads(lambda p, b, k: (prob.loss(p, b), {}))

  def extra_for(name, p, b):
    grad_fn = lambda q: grad(q, b)
    extra = {"grad_fn": grad_fn}
    if name.startswith("agvm"):
      extra.update(half_batch_grads(p, b, None, grad_fn))
    if name.startswith("svrg"):
      extra["full_grad_fn"] = grad_fn
    return extra

  def make(name, tx):
    tx = optax.with_extra_args_support(tx)

    @jax.jit
    def step(p, s, b):
      loss, g = jax.value_and_grad(prob.loss)(p, b)
      u, s = tx.update(g, s, p, **extra_for(name, p, b))
      return optax.apply_updates(p, u), s, loss

    @jax.jit
    def update_only(p, s, g, b):
      u, s = (
        tx.update(g, s, p, **extra_for(name, p, b))
        if name.startswith(("agvm", "svrg", "storm", "mars (exact)"))
        else tx.update(g, s, p)
      )
      return optax.apply_updates(p, u), s

    return step, update_only

  names = _ONLY.value or list(TRANSFORMS)
  table = {**TRANSFORMS, **EXTRA}
  adam_cost = cost_analysis(optax.adam(1e-3), params, fixed_grads)
  adam_donated = cost_analysis(optax.adam(1e-3), params, fixed_grads, donate=True)
  rows = []
  for name in names:
    contenders = {"adam": optax.adam(1e-3), name: table[name]()}
    fns_step, fns_update = {}, {}
    for label, tx in contenders.items():
      step, update_only = make(label, tx)
      box = {"step": (params, tx.init(params)), "upd": (params, tx.init(params))}

      def run_step(step=step, box=box):
        p, s, loss = step(*box["step"], batch)
        box["step"] = (p, s)
        jax.block_until_ready(loss)

      def run_update(update_only=update_only, box=box):
        p, s = update_only(*box["upd"], fixed_grads, batch)
        box["upd"] = (p, s)
        jax.block_until_ready(p)

      fns_step[label], fns_update[label] = run_step, run_update
    per = {"step": {}, "update": {}}
    per = per if samples is None else samples.setdefault(name, per)
    ts = timing.interleaved(
      fns_step, repeats=_REPEATS.value, inner=_INNER.value, warmup=2, samples=per["step"]
    )
    tu = timing.interleaved(
      fns_update, repeats=_REPEATS.value, inner=_INNER.value, warmup=2, samples=per["update"]
    )
    rows.append(
      {
        "transform": name,
        "step ms": 1e3 * ts[name],
        "adam step ms": 1e3 * ts["adam"],
        "step ratio": ts[name] / ts["adam"],
        "update ms": 1e3 * tu[name],
        "adam update ms": 1e3 * tu["adam"],
        "update ratio": tu[name] / tu["adam"],
        **{
          f"{k} ratio (XLA cost)": v / adam_cost[k]
          for k, v in cost_analysis(table[name](), params, fixed_grads).items()
        },
        "bytes ratio, state donated (XLA cost)": cost_analysis(
          table[name](), params, fixed_grads, donate=True
        )["bytes"]
        / adam_donated["bytes"],
      }
    )
    print(rows[-1], flush=True)
  state8 = transforms.state_bytes(transforms.adam_8bit(1e-3).init(params))
  state32 = transforms.state_bytes(optax.adam(1e-3).init(params))
  rows.append(
    {"transform": "adam_8bit state bytes / adam state bytes", "step ratio": state8 / state32}
  )
  title = (
    f"gradlab transforms against optax.adam, MLP with {prob.num_params / 1e6:.1f}M "
    f"parameters, batch {_BATCH.value}, {jax.devices()[0].platform}"
  )
  return title, rows


def main(argv):
  del argv
  timing.report(*_figures(), _JSON.value)


QUICK = {
  "width": "8",
  "batch_size": "8",
  "repeats": "2",
  "inner": "1",
  "only": "adam_8bit one pass",
}
# Every transform, and 8-bit Adam with and without its chunk loop.
FULL = {"only": ",".join([*TRANSFORMS, *EXTRA])}
SECOND_GRADIENT = ("storm", "mars (exact)", "svrg + sgd")  # ~2x by design


def measure(quick: bool, device: str) -> list[timing.Row]:
  """``benchmarks.all``'s rows: per transform the step and the update over Adam's
  (timed) and the bytes over Adam's (XLA's cost analysis, state donated); 8-bit
  Adam's state bytes over Adam's."""
  del device
  values, samples = QUICK if quick else FULL, {}
  with timing.flag_values(values):
    _, rows = _figures(samples)
  dev, cmd = timing.jax_device(), timing.command(__name__, values)
  out = []
  for row in rows[:-1]:
    name, per = row["transform"], samples[row["transform"]]
    goal = "~2 (a second gradient)" if name in SECOND_GRADIENT else "<= 1.15"
    out.append(
      timing.Row(
        f"{name}: step / adam step", *timing.ratio(per["step"], name, "adam"), goal, dev, cmd
      )
    )
    out.append(
      timing.Row(
        f"{name}: update / adam update", *timing.ratio(per["update"], name, "adam"), "", dev, cmd
      )
    )
    out.append(
      timing.Row(
        f"{name}: bytes / adam's (XLA cost, state donated)",
        row["bytes ratio, state donated (XLA cost)"],
        "",
        "" if name in SECOND_GRADIENT else "<= 1.15 (elementwise ones)",
        dev,
        cmd,
      )
    )
  out.append(timing.Row(rows[-1]["transform"], rows[-1]["step ratio"], "", "<= 0.3", dev, cmd))
  return out


if __name__ == "__main__":
  app.run(main)
