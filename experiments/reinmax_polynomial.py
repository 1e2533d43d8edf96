r"""The polynomial programming study of Liu et al. (NeurIPS 2023), every estimator.

  python -m experiments.reinmax_polynomial --workdir=runs/reinmax_polynomial

Problem (official ``poly/poly_programming.py``): minimize over theta in
R^{128 x 2}, initialized U(-0.01, 0.01),
    E_{D ~ softmax(theta)} [ sum_i |z_i - 0.45|^p / 128 ],   z_i = D_i[0],
for p in {1.5, 2, 3}, with Adam (lr 1e-3), 64 samples per step, 8,000 steps
(40 epochs x 200), tau = 1. The optimum puts z_i = 0 everywhere, loss c^p.
Straight-Through stalls where its first-order gradient vanishes (for p = 2 at
P(z_i = 1) = c, loss c(1 - c) = 0.2475); ReinMax, exact for quadratic f,
reaches the optimum.

Writes per run metrics.jsonl (MC loss, the exact expected loss, and every
--probe_every steps the cosine and relative bias of the estimator against the
exact gradient), then results.md/.csv, curves.png and gradient_quality.png.
"""

from __future__ import annotations

import itertools
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import app, flags, logging

from experiments import flag_checks, reporting
from gradlab import discrete, train

ESTIMATORS = (
  "exact",
  "straight_through",
  "reinmax",
  "straight_through_gumbel",
  "gumbel_rao",
  "reinforce",
)

_WORKDIR = flags.DEFINE_string("workdir", "runs/reinmax_polynomial", "Output directory.")
_POWERS = flags.DEFINE_list("powers", ["1.5", "2", "3"], "Exponents p of the objective.")
_ESTIMATORS = flags.DEFINE_list("estimators", list(ESTIMATORS), f"Any of {', '.join(ESTIMATORS)}.")
_TEMPERATURE = flags.DEFINE_float("temperature", 1.0, "tau of every estimator.")
_NUM_LATENTS = flags.DEFINE_integer("num_latents", 128, "Number of binary latents.")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 64, "Monte Carlo samples per step.")
_NUM_STEPS = flags.DEFINE_integer("num_steps", 8000, "Adam steps.")
_LEARNING_RATE = flags.DEFINE_float("learning_rate", 1e-3, "Adam learning rate.")
_SEEDS = flags.DEFINE_integer("seeds", 3, "Seeds per configuration.")
_C = flags.DEFINE_float("c", 0.45, "The target c in |z - c|^p.")
_GR_SAMPLES = flags.DEFINE_integer("gumbel_rao_samples", 10, "k of Gumbel-Rao.")
_LOG_EVERY = flags.DEFINE_integer("log_every", 100, "Steps between metrics records.")
_PROBE_EVERY = flags.DEFINE_integer("probe_every", 1000, "Steps between gradient-quality probes.")
_PROBE_DRAWS = flags.DEFINE_integer("probe_draws", 256, "Estimator draws per probe.")
_CHECKPOINT_EVERY = flags.DEFINE_integer("checkpoint_every", 2000, "Steps between checkpoints.")

PROG = "reinmax_polynomial"


def _check_flags() -> list[float]:
  c = flag_checks
  powers = c.number_list(
    "powers",
    _POWERS.value,
    valid=lambda p: p >= 1,
    expected="a comma-separated list of numbers >= 1",
  )
  for e in _ESTIMATORS.value:
    c.one_of("estimators", e, ESTIMATORS)
  c.positive("temperature", _TEMPERATURE.value)
  for name in (
    "num_latents",
    "batch_size",
    "num_steps",
    "seeds",
    "gumbel_rao_samples",
    "log_every",
    "probe_every",
    "probe_draws",
    "checkpoint_every",
  ):
    c.positive(name, flags.FLAGS[name].value)
  c.positive("learning_rate", _LEARNING_RATE.value)
  c.require(0 < _C.value < 1, "c", "in (0, 1)", _C.value)
  if "reinforce" in _ESTIMATORS.value:
    c.require(
      _BATCH_SIZE.value >= 2,
      "batch_size",
      ">= 2 for REINFORCE's leave-one-out baseline",
      _BATCH_SIZE.value,
    )
  return powers


def _objective(p: float, c: float):
  def f(d):  # one configuration D [n, 2] -> scalar
    return jnp.mean(jnp.abs(d[..., 0] - c) ** p)

  def expected(theta):  # exact E f, separable over latents
    q = jax.nn.softmax(theta, axis=-1)[..., 0]
    return jnp.mean(q * abs(1 - c) ** p + (1 - q) * c**p)

  return f, expected


def _make_loss(name: str, f, expected):
  if name == "exact":
    return lambda theta, batch, key: (expected(theta), {"expected_loss": expected(theta)})
  if name == "reinforce":

    def loss(theta, batch, key):
      out = discrete.reinforce(
        key, theta, f, num_samples=_BATCH_SIZE.value, baseline="leave_one_out"
      )
      return out.loss, {"expected_loss": expected(theta)}

    return loss
  sample = discrete.make_estimator(
    name, temperature=_TEMPERATURE.value, num_samples=_GR_SAMPLES.value
  )

  def loss(theta, batch, key):
    keys = jax.random.split(key, _BATCH_SIZE.value)
    values = jax.vmap(lambda k: f(sample(k, theta)))(keys)
    return jnp.mean(values), {"expected_loss": expected(theta)}

  return loss


def _gradient_probe(loss_fn, expected):
  """Cosine and relative bias of the estimator against the exact gradient."""

  def probe(theta, batch, key):
    exact = jax.grad(expected)(theta)
    keys = jax.random.split(key, _PROBE_DRAWS.value)
    grads = jax.vmap(lambda k: jax.grad(lambda t: loss_fn(t, batch, k)[0])(theta))(keys)
    norm = jnp.linalg.norm(exact)
    flat = grads.reshape(grads.shape[0], -1)
    cos = flat @ exact.ravel() / (jnp.linalg.norm(flat, axis=1) * norm + 1e-30)
    bias = jnp.linalg.norm(jnp.mean(grads, 0) - exact) / norm
    # the Monte Carlo floor of `bias`: sqrt(tr Cov / draws) / |g|
    floor = jnp.sqrt(jnp.sum(jnp.var(flat, 0)) / flat.shape[0]) / norm
    return {"cosine": jnp.mean(cos), "relative_bias": bias, "bias_noise_floor": floor}

  return probe


def run_one(workdir: str, p: float, name: str, seed: int) -> dict:
  f, expected = _objective(p, _C.value)
  loss_fn = _make_loss(name, f, expected)
  optimizer = optax.adam(_LEARNING_RATE.value)
  init_key, run_key = jax.random.split(jax.random.key(seed))
  theta = jax.random.uniform(init_key, (_NUM_LATENTS.value, 2), minval=-0.01, maxval=0.01)
  state = train.TrainState.create(theta, optimizer, run_key)
  step = train.make_train_step(loss_fn, optimizer, norm_metrics=False)
  dummy = {"unused": np.zeros((1,), np.float32)}
  _, last = train.fit(
    state,
    step,
    lambda start: itertools.repeat(dummy),
    num_steps=_NUM_STEPS.value,
    workdir=workdir,
    checkpoint_every=_CHECKPOINT_EVERY.value,
    log_every=_LOG_EVERY.value,
    progress_every=_NUM_STEPS.value,
    instruments=[train.Instrument("grad", _gradient_probe(loss_fn, expected), _PROBE_EVERY.value)],
  )
  return last


def main(argv):
  del argv
  try:
    powers = _check_flags()
    config = {
      k: flags.FLAGS[k].value
      for k in (
        "temperature",
        "num_latents",
        "batch_size",
        "learning_rate",
        "c",
        "gumbel_rao_samples",
        "num_steps",
      )
    }
    flag_checks.check_same_run(_WORKDIR.value, config)
  except flag_checks.FlagError as e:
    flag_checks.exit_on_flag_error(PROG, e)

  workdir = _WORKDIR.value
  rows, curves, quality = [], {}, {}
  for p in powers:
    for name in _ESTIMATORS.value:
      finals = []
      for seed in range(_SEEDS.value):
        run_dir = os.path.join(workdir, f"p{p:g}", name, f"seed{seed}")
        last = run_one(run_dir, p, name, seed)
        finals.append(last["expected_loss"])
        records = train.read_metrics(os.path.join(run_dir, "metrics.jsonl"))
        if seed == 0:
          curves.setdefault(p, {})[name] = (
            [r["step"] for r in records],
            [r["expected_loss"] for r in records],
          )
          probes = [r for r in records if "grad/cosine" in r]
          quality.setdefault(p, {})[name] = probes
      logging.info("p=%g %s: final expected loss %.4f", p, name, np.mean(finals))
      probes = quality[p][name]
      rows.append(
        {
          "p": p,
          "estimator": name,
          "final loss (mean)": float(np.mean(finals)),
          "final loss (sd)": float(np.std(finals)),
          "optimum c^p": _C.value**p,
          f"cosine at step {_PROBE_EVERY.value}": probes[0]["grad/cosine"]
          if probes
          else float("nan"),
          f"relative bias at step {_PROBE_EVERY.value}": probes[0]["grad/relative_bias"]
          if probes
          else float("nan"),
        }
      )
  for p in powers:
    reporting.plot_curves(
      os.path.join(workdir, f"curves_p{p:g}.png"),
      curves[p],
      xlabel="step",
      ylabel="exact E[f]",
      title=f"Polynomial programming, p={p:g}",
    )
    reporting.plot_curves(
      os.path.join(workdir, f"gradient_quality_p{p:g}.png"),
      {
        n: ([r["step"] for r in q], [r["grad/cosine"] for r in q])
        for n, q in quality[p].items()
        if n != "exact"
      },
      xlabel="step",
      ylabel="mean cosine with the exact gradient",
      title=f"Gradient quality along seed 0's trajectory, p={p:g}",
    )
  notes = (
    f"E_D[sum_i |z_i - {_C.value}|^p / {_NUM_LATENTS.value}], Adam lr "
    f"{_LEARNING_RATE.value:g}, {_BATCH_SIZE.value} samples/step, {_NUM_STEPS.value} steps, "
    f"tau={_TEMPERATURE.value:g}, {_SEEDS.value} seeds; `final loss` is the exact expected "
    "loss at the last step. The paper reports this study as training curves only, so no "
    "paper number stands beside ours; its claim is the ordering: ReinMax reaches c^p while "
    f"ST stalls (for p=2 at c(1-c) = {_C.value * (1 - _C.value):.4f}). Cosine and relative "
    "bias are measured at the first probe (seed 0) over "
    f"{_PROBE_DRAWS.value} draws; the bias includes a Monte Carlo floor logged as "
    "grad/bias_noise_floor in each run's metrics.jsonl."
  )
  reporting.write_table(workdir, rows, title="ReinMax polynomial programming", notes=notes)
  print(open(os.path.join(workdir, "results.md")).read())


if __name__ == "__main__":
  app.run(main)
