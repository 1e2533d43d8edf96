r"""The variance of Monte Carlo gradient estimators: Figures 2-3 of Mohamed et al. (2020).

  python -m experiments.monte_carlo_gradients --workdir=runs/monte_carlo_gradients

Mohamed, Rosca, Figurnov & Mnih, "Monte Carlo Gradient Estimation in Machine
Learning" (JMLR 2020), section 3, compare the variance of the estimators of

    grad_theta E_{N(x | mu, sigma^2)} f(x; k),   theta in {mu, sigma},
    f in {(x - k)^2 (Fig. 2), exp(-k x^2) (Fig. 3 top), cos(k x) (Fig. 3 bottom)},

at mu = sigma = 1 as the cost's parameter k varies (for (x - k)^2 that is
varying the mean's distance from the cost's minimum). The official notebook
(google-deepmind/mc_gradients, ``variance_numerical_integration.ipynb``)
computes each estimator's single-sample variance by numerical integration;
the paper's text says what the curves show.

Here every estimator is ``gradlab.monte_carlo``'s (optax's removed module):
``score_function`` (plain), ``score_function_baseline`` (the moving-average
baseline, state carried across batches), ``score_function_delta`` (the
delta-method control variate), ``pathwise``, ``measure_valued`` (coupled: the
paper's "measure-valued + variance reduction") and, on request,
``measure_valued_uncoupled``. For each cell, ``--num_batches`` estimates of
``--batch_size`` samples give the variance of the estimate; times the batch
size it is the per-sample variance the paper plots (for the controlled
estimators, whose rows share one average, this is the only honest measure).
Error bars are over ``--seeds``. Beside it stands the exact variance, by
Gauss-Hermite/Legendre quadrature of the same integrals the notebook
integrates (for ``score_function_baseline``: its limit ``b = E f``; the
notebook's "optimal baseline" is not an estimator gradlab ships).

Writes ``results.md/.csv`` (each claim read from the paper's figures, with
our measurement, a z-score over seeds and the verdict), ``variances.md/.csv``
(every cell, ours beside the exact variance) and ``variance.png``. The run
takes about a minute; a restart recomputes it (nothing to resume).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os

import jax
import jax.numpy as jnp
import numpy as np

from experiments import flag_checks, reporting, runner
from gradlab import monte_carlo as mc

PROG = "monte_carlo_gradients"
COSTS = ("square", "exp", "cos")
COST_TEX = {"square": "(x - k)^2", "exp": "exp(-k x^2)", "cos": "cos(k x)"}
ESTIMATORS = (
  "score_function",
  "score_function_baseline",
  "score_function_delta",
  "pathwise",
  "measure_valued",
  "measure_valued_uncoupled",
)
PARAMS = ("mu", "sigma")
ZERO = 1e-8  # a variance this small is zero to float32 rounding (ours) or quadrature (exact)


@dataclasses.dataclass(frozen=True)
class Config:
  """The flags of ``monte_carlo_gradients`` (``--name=value``); defaults are the main's."""

  costs: list[str] = runner.option(list(COSTS), f"Any of {', '.join(COSTS)}.")
  estimators: list[str] = runner.option(list(ESTIMATORS[:5]), f"Any of {', '.join(ESTIMATORS)}.")
  num_ks: int = runner.option(13, "Points of k per cost (the paper's ranges).")
  mean: float = runner.option(1.0, "mu of the Gaussian (the paper's 1).")
  scale: float = runner.option(1.0, "sigma of the Gaussian (the paper's 1).")
  batch_size: int = runner.option(16, "Samples per gradient estimate.")
  num_batches: int = runner.option(1000, "Estimates per seed and cell.")
  seeds: int = runner.option(20, "Independent repeats (the error bars).")
  seed: int = runner.option(0, "Base PRNG seed.")
  decay: float = runner.option(0.99, "Decay of the moving-average baseline.")


def k_grid(cost: str, num: int) -> np.ndarray:
  """The paper's ranges: linspace(-3, 3) for (x-k)^2, log-spaced otherwise."""
  if cost == "square":
    return np.linspace(-3.0, 3.0, num)
  lo, hi = (0.1, 10.0) if cost == "exp" else (0.5, 5.0)
  return np.geomspace(lo, hi, num)


# The costs and their derivatives, f^(j)(x; k) for j = 0..3 (numpy, float64,
# for the quadrature) and f(x; k) in jax (one sample x [1] -> scalar).
def cost_derivatives(cost: str, x: np.ndarray, k: float) -> list[np.ndarray]:
  if cost == "square":
    return [(x - k) ** 2, 2 * (x - k), 2 + 0 * x, 0 * x]
  if cost == "cos":
    return [np.cos(k * x), -k * np.sin(k * x), -(k**2) * np.cos(k * x), k**3 * np.sin(k * x)]
  e = np.exp(-k * x**2)
  return [
    e,
    -2 * k * x * e,
    (4 * k**2 * x**2 - 2 * k) * e,
    (12 * k**2 * x - 8 * k**3 * x**3) * e,
  ]


def _jax_cost(c, k):
  """``f(x; k)`` of the cost ``COSTS[c]``; ``c`` may be traced (one program for all costs)."""
  branches = [
    lambda x: jnp.sum((x - k) ** 2),
    lambda x: jnp.sum(jnp.exp(-k * x**2)),
    lambda x: jnp.sum(jnp.cos(k * x)),
  ]
  return lambda x: jax.lax.switch(c, branches, x)


# ---------------------------------------------------------------- the truth


@functools.cache
def _nodes():
  """Quadrature for N(0, 1) (Hermite, 200), Weibull(sqrt 2, 2) and U[0, 1] (Legendre)."""
  z, wz = np.polynomial.hermite_e.hermegauss(200)
  w, ww = np.polynomial.legendre.leggauss(400)
  w, ww = 6 * (w + 1), 6 * ww  # [0, 12]
  u, wu = np.polynomial.legendre.leggauss(64)
  return (z, wz / wz.sum()), (w, ww * w * np.exp(-(w**2) / 2)), ((u + 1) / 2, wu / 2)


def exact_variances(cost: str, k: float, mu: float, sigma: float) -> dict[str, np.ndarray]:
  """Each estimator's single-sample variance ``[var_mu, var_sigma]`` by quadrature.

  The integrals of the official notebook (which used scipy's ``quad`` and
  ``dblquad`` on [-10, 10]): Gauss-Hermite (200 nodes) for the Gaussian and
  the double-sided Maxwell, Gauss-Legendre for the Weibull on [0, 12] and for
  the coupling's uniform.
  """
  (z, wz), (w, ww), (u, wu) = _nodes()
  x = mu + sigma * z
  f, df, d2f, _ = cost_derivatives(cost, x, k)
  E = lambda g: np.sum(wz * g)
  score = [(x - mu) / sigma**2, ((x - mu) ** 2 - sigma**2) / sigma**3]
  grad = np.array([E(f * s) for s in score])
  var = lambda rows, g: E(rows**2) - g**2
  out = {}
  out["score_function"] = np.array([var(f * s, g) for s, g in zip(score, grad)])
  ef = E(f)
  out["score_function_baseline"] = np.array([var((f - ef) * s, g) for s, g in zip(score, grad)])
  # delta method: h = f(mu) + f'(mu)(x - mu) + f''(mu)(x - mu)^2 / 2, which
  # depends on mu only: d h / d mu = f'''(mu) (x - mu)^2 / 2, d h / d sigma = 0
  f0, f1, f2, f3 = (np.asarray(v).item() for v in cost_derivatives(cost, np.array(mu), k))
  h = f0 + f1 * (x - mu) + f2 * (x - mu) ** 2 / 2
  rows = [(f - h) * score[0] - f3 * (x - mu) ** 2 / 2, (f - h) * score[1]]
  out["score_function_delta"] = np.array([E(r**2) - E(r) ** 2 for r in rows])
  out["pathwise"] = np.array([var(df, grad[0]), var(df * (x - mu) / sigma, grad[1])])
  # Weibull(sqrt 2, 2), density w exp(-w^2/2) on w > 0
  Ew = lambda g: np.sum(ww * g)
  fp = cost_derivatives(cost, mu + sigma * w, k)[0]
  fm = cost_derivatives(cost, mu - sigma * w, k)[0]
  c = math.sqrt(2 * math.pi) * sigma
  mv_mean_coupled = Ew(((fp - fm) / c) ** 2) - grad[0] ** 2
  mv_mean_uncoupled = (Ew(fp**2) - Ew(fp) ** 2 + Ew(fm**2) - Ew(fm) ** 2) / c**2
  # double-sided Maxwell m (density m^2 phi(m)), coupled with u m, u ~ U[0, 1]
  wm = wz * z**2
  fmax = cost_derivatives(cost, mu + sigma * z, k)[0]
  fnorm = cost_derivatives(cost, mu + sigma * z[:, None] * u[None, :], k)[0]
  diff = (fmax[:, None] - fnorm) / sigma
  mv_std_coupled = np.sum(wm[:, None] * wu[None, :] * diff**2) - grad[1] ** 2
  Em = lambda g: np.sum(wm * g)
  mv_std_uncoupled = (Em(fmax**2) - Em(fmax) ** 2 + E(f**2) - ef**2) / sigma**2
  out["measure_valued"] = np.array([mv_mean_coupled, mv_std_coupled])
  out["measure_valued_uncoupled"] = np.array([mv_mean_uncoupled, mv_std_uncoupled])
  out["gradient"] = grad
  return out


# ---------------------------------------------------------------- ours


def _batch_estimator(name: str, config: Config):
  """``(f, params, key, state) -> ([d/d mu, d/d sigma] means over one batch, state)``."""
  n = config.batch_size
  plain = {
    "score_function": mc.score_function_jacobians,
    "pathwise": mc.pathwise_jacobians,
    "measure_valued": mc.measure_valued_jacobians,
    "measure_valued_uncoupled": functools.partial(mc.measure_valued_jacobians, coupling=False),
  }

  def estimate(f, params, key, state):
    if name in plain:
      jac = plain[name](f, params, key, num_samples=n)
    else:
      cv = (
        functools.partial(mc.moving_avg_baseline, decay=config.decay)
        if name == "score_function_baseline"
        else mc.control_delta_method
      )
      jac, state = mc.control_variates_jacobians(
        f,
        cv,
        mc.score_function_jacobians,
        params,
        key,
        num_samples=n,
        control_variate_state=state,
      )
    sigma = jnp.exp(params[1])
    # d/d sigma = (d/d log sigma) / sigma: the paper's second parameter
    return jnp.stack([jac[0].mean(0)[0], jac[1].mean(0)[0] / sigma[0]]), state

  return estimate


def measured_variances(name: str, grids: dict[str, np.ndarray], config: Config) -> np.ndarray:
  """Per-sample variance ``batch_size * Var(batch estimate)``, ``[costs, seeds, ks, 2]``.

  One compiled program per estimator: the cost is a traced index.
  """
  estimate = _batch_estimator(name, config)
  params = [jnp.full((1,), config.mean), jnp.full((1,), math.log(config.scale))]

  def one(c, k, key):
    f = _jax_cost(c, k)
    keys = jax.random.split(key, config.num_batches)
    state = mc.MovingAvgBaselineState(jnp.float32(0.0), jnp.int32(0))
    step = lambda s, kk: estimate(f, params, kk, s)[::-1]
    _, means = jax.lax.scan(step, state, keys)  # the baseline's state runs across batches
    return config.batch_size * jnp.var(means, axis=0, ddof=1)

  costs = list(grids)
  base = jax.random.fold_in(jax.random.key(config.seed), ESTIMATORS.index(name))
  num_ks = len(grids[costs[0]])
  keys = jnp.stack(  # independent draws for every cell: [costs, seeds, ks]
    [
      jax.random.split(jax.random.fold_in(base, COSTS.index(c)), (config.seeds, num_ks))
      for c in costs
    ]
  )
  over_ks = jax.vmap(one, in_axes=(None, 0, 0))
  over_seeds = jax.vmap(over_ks, in_axes=(None, None, 0))
  over_costs = jax.jit(jax.vmap(over_seeds, in_axes=(0, 0, 0)))
  ids = jnp.asarray([COSTS.index(c) for c in costs], jnp.int32)
  ks = jnp.asarray(np.stack([grids[c] for c in costs]), jnp.float32)
  return np.asarray(over_costs(ids, ks, keys), np.float64)


# ---------------------------------------------------------------- claims


def _z(a, b):
  """z of ``mean(a) - mean(b)`` over seeds (independent draws), elementwise."""
  a, b = np.asarray(a), np.asarray(b)
  se = np.sqrt(a.var(0, ddof=1) / a.shape[0] + b.var(0, ddof=1) / b.shape[0])
  d = a.mean(0) - b.mean(0)
  with np.errstate(divide="ignore", invalid="ignore"):
    return np.where(se > 0, d / np.where(se > 0, se, 1), np.sign(d) * np.inf)


# Each claim as the paper's figures show it: (id, figure, cost, statement,
# estimators needed, a function of (ours, ks, mu) -> (measured, z), with z > 0
# meaning the claim holds). "every k" claims take the least favourable k.
def _claims(mu: float):
  def every_k(a, b, p):
    def f(v, ks):
      z = _z(v[a][:, :, p], v[b][:, :, p])
      i = int(np.argmin(z))
      ratio = v[b][:, :, p].mean(0) / v[a][:, :, p].mean(0)
      return f"{b}/{a} variance {ratio.min():.3g} to {ratio.max():.3g}; worst k = {ks[i]:.3g}", z[i]

    return f

  def grows(a, p, far_from_mu):
    def f(v, ks):
      near = int(np.argmin(np.abs(ks - mu))) if far_from_mu else 0
      far = int(np.argmax(np.abs(ks - mu))) if far_from_mu else len(ks) - 1
      x = v[a][:, :, p]
      z = _z(x[:, far], x[:, near])
      return (
        f"{a} variance {x[:, near].mean():.3g} at k = {ks[near]:.3g}, "
        f"{x[:, far].mean():.3g} at k = {ks[far]:.3g}",
        float(z),
      )

    return f

  def at_largest_k(a, b, p):
    def f(v, ks):
      z = _z(v[a][:, -1, p], v[b][:, -1, p])
      return (
        f"at k = {ks[-1]:.3g}: {a} {v[a][:, -1, p].mean():.3g}, {b} {v[b][:, -1, p].mean():.3g}",
        float(z),
      )

    return f

  def crossing(v, ks):
    near, far = int(np.argmin(np.abs(ks - mu))), int(np.argmax(np.abs(ks - mu)))
    pw, mv = v["pathwise"][:, :, 0], v["measure_valued"][:, :, 0]
    z_near = float(_z(pw[:, near], mv[:, near]))
    z_far = float(_z(mv[:, far], pw[:, far]))
    return (
      f"k = {ks[near]:.3g}: pathwise {pw[:, near].mean():.3g} vs measure-valued "
      f"{mv[:, near].mean():.3g}; k = {ks[far]:.3g}: {pw[:, far].mean():.3g} vs "
      f"{mv[:, far].mean():.3g}",
      min(z_near, z_far),
    )

  sf, pw = "score_function", "pathwise"
  return [
    (
      "Fig. 2",
      "square",
      "pathwise has lower variance than the score function for mu, at every k",
      (sf, pw),
      every_k(sf, pw, 0),
    ),
    (
      "Fig. 2",
      "square",
      "pathwise has lower variance than the score function for sigma, at every k",
      (sf, pw),
      every_k(sf, pw, 1),
    ),
    (
      "Fig. 2",
      "square",
      "the score function's variance (mu) grows with the distance between mu and k",
      (sf,),
      grows(sf, 0, True),
    ),
    (
      "Fig. 2",
      "square",
      "variance reduction (here a moving-average baseline) lowers the score function's "
      "variance for mu, at every k",
      (sf, "score_function_baseline"),
      every_k(sf, "score_function_baseline", 0),
    ),
    (
      "Fig. 2",
      "square",
      "variance reduction (here a moving-average baseline) lowers the score function's "
      "variance for sigma, at every k",
      (sf, "score_function_baseline"),
      every_k(sf, "score_function_baseline", 1),
    ),
    (
      "Fig. 2",
      "square",
      "no estimator is best everywhere: for mu the coupled measure-valued estimator beats "
      "pathwise at k = mu, pathwise beats it far from mu",
      (pw, "measure_valued"),
      crossing,
    ),
    (
      "Fig. 3 (bottom)",
      "cos",
      "the pathwise variance (mu) grows with the frequency k",
      (pw,),
      grows(pw, 0, False),
    ),
    (
      "Fig. 3 (bottom)",
      "cos",
      "at the highest frequency the pathwise variance (mu) exceeds the score function's",
      (sf, pw),
      at_largest_k(pw, sf, 0),
    ),
    (
      "Fig. 3 (top)",
      "exp",
      "at the largest k the pathwise variance (mu) exceeds the score function's",
      (sf, pw),
      at_largest_k(pw, sf, 0),
    ),
  ]


def _check_flags(config: Config) -> None:
  c = flag_checks
  for cost in config.costs:
    c.one_of("costs", cost, COSTS)
  for name in config.estimators:
    c.one_of("estimators", name, ESTIMATORS)
  for flag in ("costs", "estimators"):
    values = getattr(config, flag)
    c.require(len(set(values)) == len(values), flag, "a list without repeats", ",".join(values))
  c.require(config.num_ks >= 2, "num_ks", ">= 2", config.num_ks)
  c.positive("batch_size", config.batch_size)
  c.require(config.num_batches >= 2, "num_batches", ">= 2", config.num_batches)
  c.require(config.seeds >= 2, "seeds", ">= 2 (the error bars)", config.seeds)
  c.positive("scale", config.scale)
  c.require(0 <= config.decay < 1, "decay", "in [0, 1)", config.decay)


def _plot(path, results, exact, grids, config):
  costs = list(results)
  fig, axes = reporting.plt.subplots(
    len(costs), 2, figsize=(11, 3.3 * len(costs)), dpi=110, squeeze=False
  )
  for row, cost in enumerate(costs):
    ks = grids[cost]
    for p, param in enumerate(PARAMS):
      ax = axes[row, p]
      for i, name in enumerate(config.estimators):
        v = results[cost][name][:, :, p]
        color = f"C{i}"
        ax.errorbar(
          ks,
          v.mean(0),
          yerr=v.std(0, ddof=1) / np.sqrt(v.shape[0]),
          color=color,
          marker="o",
          ms=3,
          lw=1.2,
          label=name,
        )
        ax.plot(ks, [exact[cost][j][name][p] for j in range(len(ks))], "--", color=color, lw=0.8)
      ax.set_yscale("log")
      # a variance that is zero up to rounding (the delta method on the quadratic,
      # measure-valued at k = mu) would stretch the axis over 30 decades: cut it
      shown = np.concatenate([results[cost][n][:, :, p].mean(0) for n in config.estimators])
      ax.set_ylim(bottom=shown[shown > 100 * ZERO].min() / 2, top=2 * shown.max())
      if cost != "square":
        ax.set_xscale("log")
      ax.set_xlabel("k")
      ax.set_ylabel(f"variance of the estimator for {param}")
      ax.set_title(f"f = {COST_TEX[cost]}, mu = {config.mean:g}, sigma = {config.scale:g}")
      ax.grid(alpha=0.3)
  axes[0, 0].legend(
    fontsize=7, title="ours (solid) / exact (dashed); off the axis: ~0", title_fontsize=7
  )
  fig.tight_layout()
  reporting.save_figure(fig, path)


def run(config: Config, workdir: str):
  flag_checks.check_config(config)
  _check_flags(config)
  flag_checks.check_writable(workdir)

  grids = {cost: k_grid(cost, config.num_ks) for cost in config.costs}
  results, exact = {}, {}
  for cost in config.costs:
    exact[cost] = [exact_variances(cost, k, config.mean, config.scale) for k in grids[cost]]
    results[cost] = {}
  for name in config.estimators:
    for cost, v in zip(config.costs, measured_variances(name, grids, config)):
      results[cost][name] = v
    print(f"{name}: done", flush=True)

  rows, agree, total = [], 0, 0
  for cost in config.costs:
    for j, k in enumerate(grids[cost]):
      for p, param in enumerate(PARAMS):
        for name in config.estimators:
          v = results[cost][name][:, j, p]
          mean, se = float(v.mean()), float(v.std(ddof=1) / math.sqrt(len(v)))
          ex = float(exact[cost][j][name][p])
          both_zero = max(abs(mean), abs(ex)) < ZERO
          z = (mean - ex) / se if se > 0 and not both_zero else float("nan")
          if name != "score_function_baseline":
            total += 1
            agree += both_zero or abs(z) < 3
          rows.append(
            {
              "cost": COST_TEX[cost],
              "k": float(k),
              "theta": param,
              "estimator": name,
              "variance (ours)": mean,
              "se (seeds)": se,
              "exact (quadrature)": ex,
              "z vs exact": z,
            }
          )
  reporting.write_table(
    workdir,
    rows,
    title="Per-sample variance of each estimator, ours beside the exact",
    name="variances",
    notes=(
      f"mu = {config.mean:g}, sigma = {config.scale:g}; ours: {config.seeds} seeds x "
      f"{config.num_batches} estimates of {config.batch_size} samples, variance of the "
      f"estimate x {config.batch_size}. `exact` by quadrature; for score_function_baseline "
      "it is the limit b = E f of the moving average."
    ),
  )

  claim_rows = []
  for figure, cost, statement, needs, measure in _claims(config.mean):
    if cost not in results or not all(n in results[cost] for n in needs):
      claim_rows.append(
        {
          "figure": figure,
          "claim": f"{COST_TEX[cost]}: {statement}",
          "ours": "not measured",
          "z": float("nan"),
          "verdict": "not measured",
        }
      )
      continue
    measured, z = measure(results[cost], grids[cost])
    claim_rows.append(
      {
        "figure": figure,
        "claim": f"{COST_TEX[cost]}: {statement}",
        "ours": measured,
        "z": float(z),
        "verdict": reporting.verdict(float(z)),
      }
    )
  lines = [
    f"{sum(r['verdict'] == v for r in claim_rows)} {v}"
    for v in ("agrees", "contradicts", "inconclusive", "not measured")
  ]
  notes = [
    "Mohamed, Rosca, Figurnov & Mnih (JMLR 2020), section 3: the variance of "
    "grad_theta E_{N(mu, sigma^2)} f(x; k) for theta = mu, sigma as k varies. The paper "
    "gives these as curves (Figs. 2-3, computed by numerical integration in the official "
    "notebook), so each claim is what a curve shows; `ours` is gradlab.monte_carlo's "
    f"estimators, {config.seeds} seeds x {config.num_batches} estimates of "
    f"{config.batch_size} samples. z is the difference over its standard error across "
    "seeds, signed so that z > 0 supports the claim (the least favourable k for 'every "
    "k'); |z| < 2 is inconclusive.",
    "Verdicts: " + ", ".join(lines) + ".",
    f"Ours against the exact (quadrature) variances: {agree} of {total} cells within 3 "
    f"standard errors, or both below {ZERO:g} (score_function_baseline left out: its exact "
    "value is the b = E f limit, and its first batches, whose baseline holds their own "
    "samples, vary less); see variances.md.",
  ]
  if "square" in results and "score_function_delta" in results["square"]:
    d = results["square"]["score_function_delta"]
    s = results["square"].get("score_function")
    notes.append(
      "Derived, not the paper's: the delta-method control variate is exact for a quadratic, "
      f"so its variance on (x - k)^2 is 0; measured at most {d.mean(0).max():.3g}"
      + (f" (the plain score function: at least {s.mean(0).min():.3g})." if s is not None else ".")
    )
  if "cos" in results and {"score_function_delta", "score_function"} <= set(results["cos"]):
    d, s = results["cos"]["score_function_delta"], results["cos"]["score_function"]
    ratio = d[:, -1, 0].mean() / s[:, -1, 0].mean()
    notes.append(
      "Derived: the delta method helps only where the second-order expansion is good; on "
      f"cos(k x) at k = {grids['cos'][-1]:.3g} its variance (mu) is {ratio:.3g} times the "
      "plain score function's."
    )
  reporting.write_table(
    workdir,
    claim_rows,
    title="Monte Carlo gradient variance: the claims of Mohamed et al. (2020), Figs. 2-3",
    notes="\n\n".join(notes),
  )
  _plot(os.path.join(workdir, "variance.png"), results, exact, grids, config)
  print(open(os.path.join(workdir, "results.md")).read())


if __name__ == "__main__":
  runner.main(run, Config, prog=PROG, workdir="runs/monte_carlo_gradients")
