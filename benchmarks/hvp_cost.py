r"""One Hessian-vector product's cost over one gradient's, and the GGN's.

  python -m benchmarks.hvp_cost [--width=1024] [--json=out.json]

MLP 784-W-W-10 (W=1024: 1.86M parameters), softmax cross-entropy, batch 256.
Forward-over-reverse HVP costs a small constant times a gradient (theory:
<= ~4; goal <= 3x). ``make_hvp`` (linearize once) is also timed per product
as the Hutchinson and Lanczos loops use it.
"""

from __future__ import annotations

import jax
import optax
from absl import app, flags

from benchmarks import timing
from gradlab import curvature, tasks

_WIDTH = flags.DEFINE_integer("width", 1024, "Hidden width.")
_BATCH = flags.DEFINE_integer("batch_size", 256, "Batch size.")
_REPEATS = flags.DEFINE_integer("repeats", 30, "Timed repeats.")
_JSON = flags.DEFINE_string("json", None, "Write the figures here.")


def _figures(samples=None):
  """The title and rows of the table, at the flags' sizes."""
  prob = tasks.mlp_problem(_WIDTH.value, _BATCH.value)
  model, params, batch, loss, n = prob.model, prob.params, prob.batch, prob.loss, prob.num_params
  v = jax.jit(curvature.sampler_signs)(jax.random.key(1), params)  # jitted: one compile
  grad = jax.jit(jax.grad(loss))
  hvp = jax.jit(lambda p, b, v: curvature.hvp(loss, p, b, v))
  out_loss = lambda o, b: optax.softmax_cross_entropy_with_integer_labels(o, b["y"]).mean()
  ggn = jax.jit(
    lambda p, b, v: curvature.ggn_vp(lambda q, c: model.apply(q, c["x"]), out_loss, p, b, v)
  )
  # 8 products from one linearization, per product
  many = jax.jit(lambda p, b, vs: jax.lax.map(curvature.make_hvp(loss, p, b), vs))
  vs = jax.jit(jax.vmap(lambda k: curvature.sampler_signs(k, params)))(
    jax.random.split(jax.random.key(2), 8)
  )
  fns = {
    "gradient": lambda: jax.block_until_ready(grad(params, batch)),
    "hvp": lambda: jax.block_until_ready(hvp(params, batch, v)),
    "ggn_vp": lambda: jax.block_until_ready(ggn(params, batch, v)),
    "8 x make_hvp (one linearization), total": lambda: jax.block_until_ready(
      many(params, batch, vs)
    ),
  }
  t = timing.interleaved(fns, repeats=_REPEATS.value, samples=samples)
  rows = [{"op": k, "ms": s * 1e3, "x gradient": s / t["gradient"]} for k, s in t.items()]
  rows.append(
    {
      "op": "make_hvp, per product",
      "ms": t[list(t)[-1]] / 8 * 1e3,
      "x gradient": t[list(t)[-1]] / 8 / t["gradient"],
    }
  )
  title = (
    f"HVP cost, MLP 784-{_WIDTH.value}-{_WIDTH.value}-10 ({n:,} params), batch "
    f"{_BATCH.value}, on {jax.devices()[0].platform}"
  )
  return title, rows


def main(argv):
  del argv
  timing.report(*_figures(), _JSON.value)


QUICK = {"width": "8", "batch_size": "8", "repeats": "2"}


def measure(quick: bool, device: str) -> list[timing.Row]:
  """``benchmarks.all``'s rows: each product's time over one gradient's."""
  del device  # jax's default device
  values, samples = QUICK if quick else {}, {}
  with timing.flag_values(values):
    _figures(samples)
  dev, cmd = timing.jax_device(), timing.command(__name__, values)
  many = "8 x make_hvp (one linearization), total"
  return [
    timing.Row("hvp / gradient", *timing.ratio(samples, "hvp", "gradient"), "<= 3", dev, cmd),
    timing.Row("ggn_vp / gradient", *timing.ratio(samples, "ggn_vp", "gradient"), "", dev, cmd),
    timing.Row(
      "make_hvp per product / gradient",
      *timing.ratio(samples, many, "gradient", scale=1 / 8),
      "",
      dev,
      cmd,
    ),
  ]


if __name__ == "__main__":
  app.run(main)
