r"""The mini-batch Hessian's top eigenvalue against the batch size, and the learning rates
it allows.

Reference: Granziol, Zohren, Roberts, "Learning Rates as a Function of Batch
Size: A Random Matrix Theory Approach to Neural Network Training" (JMLR
2022; arXiv 2006.09092). No official code was found; the text of the
theorem could not be read here (only the abstract was stored), so the
formula below is the spiked-Wigner (BBP) outlier that the abstract's
"spiked, field-dependent random matrix theory" describes, in its standard
form; see :func:`spiked_top_eigenvalue`.

**The facts this module measures.**

* The batch Hessian ``H_B`` of the mean loss over a batch of B examples drawn
  uniformly without replacement has ``E[H_B] = H`` (the full-data Hessian;
  ``loss_fn`` must be a mean over the batch).
  ``lambda_max`` is convex in the matrix, so by Jensen
  ``E lambda_max(H_B) >= lambda_max(H)``; and since ``H_{B'}`` for B' > B is
  the average of ``H_B`` over the B-subsets of the B'-batch, the expectation
  is non-increasing in B, reaching ``lambda_max(H)`` at B = N. Exact, for any
  loss (``tests/curvature/test_batch_size.py`` enumerates every batch of a
  least-squares problem). :func:`minibatch_top_eigenvalues` samples it.
* The paper's model: ``H_B = H + E_B`` with ``E_B`` a Wigner matrix whose
  semicircle has radius ``2 s / sqrt(B)``. An outlier ``lambda = lambda_max(H)``
  above ``s / sqrt(B)`` comes out at ``lambda + s^2 / (B lambda)``; below it,
  the edge ``2 s / sqrt(B)`` is the top. So ``lambda_max(H_B)`` falls as
  ``lambda + c / B`` with ``c = s^2 / lambda``. :func:`hessian_noise` measures
  ``s^2 = mean_i |H_i - H|_F^2 / P`` (the per-entry variance times P, the
  Wigner normalization), so the prediction has no fitted constant;
  :func:`fit_inverse_batch` fits ``a + c / B`` for comparison.
* Learning rates: GD on the batch quadratic is stable for
  ``eta < 2 / lambda_max(H_B)`` (:func:`sgd_stability_limit`), which grows
  linearly in B while the noise term dominates (B below
  ``s^2 / lambda^2``); for Adam the paper derives square-root scaling in the
  same regime (:data:`LEARNING_RATE_EXPONENTS`). Above the critical batch
  ``B* = c / lambda`` both rates flatten. :func:`largest_stable_learning_rate`
  bisects for the largest rate whose run does not diverge within a fixed
  number of steps (:func:`diverges`: the full-data loss rising above a
  factor of its start at any check, built on ``gradlab.train.make_update``),
  and :func:`fit_power_law` gives the log-log slope with its standard error.

What ``experiments/batch_size_curvature.py`` found on a trained digits MLP: the
fluctuation ``H_B - H`` is far from Wigner (low-rank per-example Hessians put
it along the top eigenvector): the fitted c is ~200 times ``s^2 / lambda``.

Deviations: the paper's batches are drawn with replacement from an infinite
population; ours are subsets of a finite dataset, and
:func:`spiked_top_eigenvalue` takes ``num_examples`` for the finite-population
factor ``(N - B) / (N - 1)`` of the fluctuation's variance (``None``: the
paper's setting).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.flatten_util import ravel_pytree

from gradlab import _checks, train
from gradlab.curvature.dataset import num_examples as _num_examples
from gradlab.curvature.lanczos import top_eigenvalues
from gradlab.curvature.probes import Sampler, check_sampler, dimension, sampler_signs
from gradlab.curvature.products import check_scalar_loss, hvp, make_hvp

LossFn = Callable[[Any, Any], jax.Array]

# The paper's exponents of the largest stable learning rate in B, below the critical batch.
LEARNING_RATE_EXPONENTS = {"sgd": 1.0, "adam": 0.5}


class MinibatchEigenvalues(NamedTuple):
  batch_sizes: tuple[int, ...]  # the B's, as given
  eigenvalues: jax.Array  # [len(batch_sizes), num_batches] lambda_max(H_B) of each batch
  mean: jax.Array  # [len(batch_sizes)] the mean over batches
  stderr: jax.Array  # [len(batch_sizes)] its standard error (inf for one batch)
  residuals: jax.Array  # [len(batch_sizes), num_batches] Lanczos |H x - lambda x| of each
  indices: tuple[jax.Array, ...]  # per B: [num_batches, B] the examples of each batch


class InverseBatchFit(NamedTuple):
  intercept: jax.Array  # a in a + c / B (the B -> infinity limit)
  slope: jax.Array  # c
  intercept_stderr: jax.Array
  slope_stderr: jax.Array


class PowerLaw(NamedTuple):
  exponent: jax.Array  # the slope of log y against log x
  stderr: jax.Array  # its OLS standard error
  prefactor: jax.Array  # y ~ prefactor * x ** exponent


class StableRate(NamedTuple):
  rate: np.ndarray  # [num_seeds] geometric mean of each bracket (nan if censored)
  stable: np.ndarray  # [num_seeds] the largest rate seen stable (nan if none was)
  diverged: np.ndarray  # [num_seeds] the smallest rate seen diverging (nan if none did)


def _check_batch_sizes(batch_sizes: Sequence[int], n: int) -> tuple[int, ...]:
  if isinstance(batch_sizes, (int, np.integer)) or not len(batch_sizes):
    raise ValueError(f"batch_sizes: expected a non-empty sequence of integers, got {batch_sizes!r}")
  out = tuple(_checks.integer("batch_sizes", b, minimum=1) for b in batch_sizes)
  if max(out) > n:
    raise ValueError(f"batch_sizes: {max(out)} exceeds the {n} examples of data")
  return out


def _take(data: Any, idx: jax.Array) -> Any:
  return jax.tree.map(lambda x: jnp.asarray(x)[idx], data)


def sample_batch_indices(key: jax.Array, num_examples: int, batch_size: int) -> jax.Array:
  """``batch_size`` distinct example indices, uniform over the subsets of that size."""
  return jax.random.choice(key, num_examples, (batch_size,), replace=False)


def minibatch_top_eigenvalues(
  loss_fn: LossFn,
  params: Any,
  data: Any,
  batch_sizes: Sequence[int],
  key: jax.Array,
  *,
  num_batches: int,
  num_iterations: int | None = None,
) -> MinibatchEigenvalues:
  """``lambda_max(H_B)`` of ``num_batches`` random batches of each size B.

  Batch j of size ``batch_sizes[i]`` holds the examples
  ``sample_batch_indices(split(fold_in(key, i), num_batches)[j], N, B)``
  (returned in ``indices``); its top eigenvalue is
  :func:`~gradlab.curvature.top_eigenvalues` (Lanczos) of
  ``make_hvp(loss_fn, params, batch)``, the batches of one size vmapped.

  Args:
    loss_fn: pure ``(params, batch) -> scalar``, the mean over the batch.
    params: the point.
    data: stacked arrays (leading axis N), the population batches come from.
    batch_sizes: the B's, each in [1, N] (static: one program per size).
    key: PRNG key of the batches and of the Lanczos start vectors.
    num_batches: batches per size (>= 2 for a standard error).
    num_iterations: Lanczos steps (default ``top_eigenvalues``'s); the
      ``residuals`` tell whether they sufficed.

  Nothing is jitted inside: wrap it in ``jax.jit`` with ``batch_sizes`` and
  ``num_batches`` fixed (e.g. a lambda of ``params, data, key``).
  """
  n = _num_examples("data", data)
  sizes = _check_batch_sizes(batch_sizes, n)
  num_batches = _checks.integer("num_batches", num_batches, minimum=1)
  _checks.is_key("key", key)
  check_scalar_loss(loss_fn, params, _take(data, jnp.arange(sizes[0])))

  def one(k, idx):
    k_lanczos = jax.random.fold_in(k, 1)
    matvec = make_hvp(loss_fn, params, _take(data, idx))
    res = top_eigenvalues(matvec, params, k_lanczos, k=1, num_iterations=num_iterations)
    return res.eigenvalues[0], res.residuals[0]

  values, residuals, indices = [], [], []
  for i, b in enumerate(sizes):
    keys = jax.random.split(jax.random.fold_in(key, i), num_batches)
    idx = jax.vmap(lambda k, b=b: sample_batch_indices(k, n, b))(keys)
    val, res = jax.vmap(one)(keys, idx)
    values.append(val)
    residuals.append(res)
    indices.append(idx)
  values, residuals = jnp.stack(values), jnp.stack(residuals)
  if num_batches > 1:
    stderr = jnp.std(values, axis=1, ddof=1) / math.sqrt(num_batches)
  else:
    stderr = jnp.full(values.shape[:1], jnp.inf, values.dtype)
  return MinibatchEigenvalues(
    sizes, values, jnp.mean(values, axis=1), stderr, residuals, tuple(indices)
  )


def hessian_noise(
  loss_fn: LossFn,
  params: Any,
  data: Any,
  key: jax.Array,
  *,
  num_probes: int,
  sampler: Sampler = sampler_signs,
) -> tuple[jax.Array, jax.Array]:
  """``(s^2, stderr)``: ``s^2 = (1/P) mean_i |H_i - H|_F^2`` over the N examples of ``data``.

  ``H_i`` is the Hessian of ``loss_fn`` on example i alone (a batch of one)
  and ``H`` that of the mean over all N (for a loss that is a mean,
  ``H = mean_i H_i``). ``s`` is the half-radius of the Wigner semicircle with
  the per-example fluctuation's entry variance (``s^2 = P * mean entry
  variance``): the ``noise`` of :func:`spiked_top_eigenvalue` at B = 1.
  Hutchinson: ``|M|_F^2 = E |M v|^2`` for probes with ``E[v v^T] = I``; each
  probe costs N per-example products (vmapped) and one full one.
  """
  _num_examples("data", data)
  num_probes = _checks.integer("num_probes", num_probes, minimum=2)
  check_sampler(sampler)
  _checks.is_key("key", key)
  p = dimension(params)
  full = make_hvp(loss_fn, params, data)
  examples = jax.tree.map(lambda x: jnp.asarray(x)[:, None], data)  # N batches of one

  def probe(k):
    v = sampler(k, params)
    hv = ravel_pytree(full(v))[0]
    per = jax.vmap(lambda ex: ravel_pytree(hvp(loss_fn, params, ex, v))[0])(examples)
    return jnp.mean(jnp.sum((per - hv) ** 2, axis=1)) / p

  values = jax.lax.map(probe, jax.random.split(key, num_probes))
  return jnp.mean(values), jnp.std(values, ddof=1) / math.sqrt(num_probes)


def spiked_top_eigenvalue(
  batch_size: Any,
  *,
  top_eigenvalue: Any,
  noise: Any,
  num_examples: int | None = None,
) -> jax.Array:
  """The spiked-Wigner prediction of ``lambda_max(H_B)``.

  With ``s_B^2 = noise^2 / B`` (times ``(N - B) / (N - 1)`` for batches
  drawn without replacement from ``num_examples = N``):
  ``lambda + s_B^2 / lambda`` if ``lambda > s_B`` (the outlier), else the
  semicircle's edge ``2 s_B`` (BBP). ``lambda = top_eigenvalue > 0`` is
  ``lambda_max(H)``, ``noise`` the ``s`` of :func:`hessian_noise` (its
  square root).
  """
  b = jnp.asarray(batch_size, jnp.float32)
  lam = jnp.asarray(top_eigenvalue, jnp.float32)
  s2 = jnp.asarray(noise, jnp.float32) ** 2 / b
  if num_examples is not None:
    n = _checks.integer("num_examples", num_examples, minimum=2)
    s2 = s2 * (n - b) / (n - 1)
  s = jnp.sqrt(s2)
  return jnp.where(lam > s, lam + s2 / lam, 2 * s)


def fit_inverse_batch(
  batch_sizes: Any, values: Any, stderr: Any | None = None, *, num_examples: int | None = None
) -> InverseBatchFit:
  """Weighted least squares of ``values ~ a + c / B`` (weights ``1 / stderr^2`` if given).

  With ``num_examples = N`` (batches drawn without replacement from N), the
  regressor is ``(N - B) / (B (N - 1))`` instead of ``1 / B``, the fluctuation
  variance's finite-population form (as :func:`spiked_top_eigenvalue`), so
  that ``a`` is ``lambda_max(H)`` itself, the value at B = N.

  The parameter standard errors are the weighted fit's, scaled by the
  residuals' reduced chi-square when there are more than two points.
  """
  b = jnp.asarray(batch_sizes, jnp.float32)
  y = jnp.asarray(values, jnp.float32)
  if b.ndim != 1 or b.shape != y.shape or b.shape[0] < 2:
    raise ValueError(
      f"batch_sizes, values: expected two vectors of one length >= 2, got {b.shape}, {y.shape}"
    )
  w = jnp.ones_like(y) if stderr is None else 1 / jnp.asarray(stderr, jnp.float32) ** 2
  inv = 1 / b
  if num_examples is not None:
    n = _checks.integer("num_examples", num_examples, minimum=2)
    inv = inv * (n - b) / (n - 1)
  x = jnp.stack([jnp.ones_like(b), inv], axis=1)
  xtwx = x.T @ (w[:, None] * x)
  coef = jnp.linalg.solve(xtwx, x.T @ (w * y))
  dof = b.shape[0] - 2
  chi2 = jnp.sum(w * (y - x @ coef) ** 2) / dof if dof > 0 else 1.0
  cov = jnp.linalg.inv(xtwx) * (chi2 if stderr is None or dof > 0 else 1.0)
  se = jnp.sqrt(jnp.diag(cov))
  return InverseBatchFit(coef[0], coef[1], se[0], se[1])


def fit_power_law(x: Any, y: Any) -> PowerLaw:
  """Ordinary least squares of ``log y`` on ``log x``: the exponent and its standard error."""
  lx, ly = jnp.log(jnp.asarray(x, jnp.float32)), jnp.log(jnp.asarray(y, jnp.float32))
  if lx.ndim != 1 or lx.shape != ly.shape or lx.shape[0] < 3:
    raise ValueError(
      f"x, y: expected two vectors of one length >= 3 (for a standard error), got "
      f"{lx.shape}, {ly.shape}"
    )
  xm = lx - jnp.mean(lx)
  slope = jnp.sum(xm * (ly - jnp.mean(ly))) / jnp.sum(xm**2)
  intercept = jnp.mean(ly) - slope * jnp.mean(lx)
  resid = ly - intercept - slope * lx
  se = jnp.sqrt(jnp.sum(resid**2) / (lx.shape[0] - 2) / jnp.sum(xm**2))
  return PowerLaw(slope, se, jnp.exp(intercept))


def sgd_stability_limit(top_eigenvalue: Any) -> jax.Array:
  """``2 / lambda``: the largest step of GD stable on a quadratic of sharpness ``lambda``."""
  return 2 / jnp.asarray(top_eigenvalue)


def diverges(
  loss_fn: LossFn,
  params: Any,
  data: Any,
  make_optimizer: Callable[[jax.Array], optax.GradientTransformation],
  learning_rates: jax.Array,
  key: jax.Array,
  *,
  batch_size: int,
  num_steps: int,
  factor: float,
  check_every: int = 10,
) -> jax.Array:
  """For each learning rate: does a run of ``num_steps`` steps from ``params`` diverge?

  Every run takes ``num_steps`` steps of ``train.make_update(loss_fn,
  make_optimizer(lr))`` on the same sequence of batches (step t's batch is
  ``sample_batch_indices(fold_in(key, t), N, batch_size)``: common random
  numbers, so the rates differ only in the rate), vmapped over the rates. A
  run diverged when a batch loss went non-finite, or when the full-data loss,
  checked every ``check_every`` steps, went non-finite or above ``factor``
  times its value at ``params``. The maximum over the run, not the end: a
  run past the stability limit of a network can spike and then settle in a
  flatter region (a catapult), which a look at the end alone would call
  stable.

  Returns:
    ``[len(learning_rates)]`` booleans.
  """
  n = _num_examples("data", data)
  batch_size = _check_batch_sizes([batch_size], n)[0]
  num_steps = _checks.integer("num_steps", num_steps, minimum=1)
  check_every = _checks.integer("check_every", check_every, minimum=1)
  if num_steps % check_every:
    raise ValueError(
      f"num_steps: expected a multiple of check_every={check_every}, got {num_steps}"
    )
  _checks.positive("factor", factor)
  data = jax.tree.map(jnp.asarray, data)
  train_loss = lambda p, b, k: (loss_fn(p, b), {})  # noqa: E731
  limit = factor * loss_fn(params, data)

  def run(lr):
    opt = make_optimizer(lr)
    update = train.make_update(train_loss, opt, norm_metrics=False)
    state = train.TrainState.create(params, opt, key)

    def step(state, t):
      k = jax.random.fold_in(key, t)
      state, metrics = update(state, _take(data, sample_batch_indices(k, n, batch_size)), k)
      return state, jnp.isfinite(metrics["loss"])

    def chunk(state, c):
      state, finite = jax.lax.scan(step, state, c * check_every + jnp.arange(check_every))
      full = loss_fn(state.params, data)
      return state, jnp.all(finite) & jnp.isfinite(full) & (full <= limit)

    _, ok = jax.lax.scan(chunk, state, jnp.arange(num_steps // check_every))
    return ~jnp.all(ok)

  return jax.vmap(run)(jnp.asarray(learning_rates, jnp.float32))


def largest_stable_learning_rate(
  loss_fn: LossFn,
  params: Any,
  data: Any,
  make_optimizer: Callable[[jax.Array], optax.GradientTransformation],
  key: jax.Array,
  *,
  batch_size: int,
  num_steps: int,
  low: float,
  high: float,
  factor: float,
  check_every: int = 10,
  num_points: int = 8,
  num_rounds: int = 3,
  num_seeds: int = 1,
) -> StableRate:
  """The largest learning rate whose run does not diverge (:func:`diverges`), by bisection.

  ``batch_size``, ``num_steps``, ``factor`` and ``check_every`` are
  :func:`diverges`'s; ``[low, high]`` the starting bracket.

  Each round tries ``num_points + 2`` rates log-spaced over the bracket at
  once (the first round includes ``low`` and ``high``) and narrows it to the
  pair around the first divergence, so the bracket's log-width shrinks by
  about ``num_points + 3`` a round. Divergence need not be monotone in the
  rate; the first one counts (the conservative reading). Seed s draws its
  batches with ``fold_in(key, s)``; the seeds and the rates of a round run
  as one vmapped program, compiled once for all rounds. Runs from Python
  (a loop of rounds); jit is inside.

  Returns:
    :class:`StableRate` of ``[num_seeds]`` arrays; ``rate`` is nan where
    even ``low`` diverged or ``high`` was stable (the answer lies outside
    the bracket).
  """
  _checks.positive("low", low)
  _checks.positive("high", high)
  if not high > low:
    raise ValueError(f"high: expected a value above low={low}, got {high}")
  num_points = _checks.integer("num_points", num_points, minimum=1)
  num_rounds = _checks.integer("num_rounds", num_rounds, minimum=1)
  num_seeds = _checks.integer("num_seeds", num_seeds, minimum=1)
  _checks.is_key("key", key)
  keys = jax.vmap(lambda s: jax.random.fold_in(key, s))(jnp.arange(num_seeds))

  def one_seed(p, d, lrs, k):
    return diverges(
      loss_fn,
      p,
      d,
      make_optimizer,
      lrs,
      k,
      batch_size=batch_size,
      num_steps=num_steps,
      factor=factor,
      check_every=check_every,
    )

  check = jax.jit(jax.vmap(one_seed, in_axes=(None, None, 0, 0)))

  def evaluate(grids):  # [num_seeds, num_points + 2] rates -> divergence flags
    return np.asarray(check(params, data, jnp.asarray(grids, jnp.float32), keys))

  # the first round: the bracket with its ends, the same for every seed
  grid = np.exp(np.linspace(np.log(low), np.log(high), num_points + 2))
  grids = np.tile(grid, (num_seeds, 1))
  bad = evaluate(grids)
  lo, hi = np.full(num_seeds, np.nan), np.full(num_seeds, np.nan)
  live = bad.any(axis=1) & ~bad[:, 0]  # bracketed: low stable, something diverged
  lo[~bad.any(axis=1)] = high  # everything stable: the limit is above high
  hi[bad[:, 0]] = low  # even low diverged: the limit is below low
  for r in range(num_rounds):
    for s in np.flatnonzero(live):
      first = int(np.argmax(bad[s]))  # the first divergence; the rate before it was stable
      lo[s], hi[s] = grids[s, first - 1], grids[s, first]
    if r == num_rounds - 1 or not live.any():
      break
    # the interior of each bracket (a censored seed reruns the first grid, ignored)
    inner = np.stack(
      [
        np.exp(np.linspace(np.log(lo[s]), np.log(hi[s]), num_points + 4)[1:-1]) if live[s] else grid
        for s in range(num_seeds)
      ]
    )
    grids = np.concatenate([lo[:, None], inner, hi[:, None]], axis=1)
    ends = np.ones((num_seeds, 1), bool)
    bad = np.concatenate([~ends, evaluate(inner), ends], axis=1)
  return StableRate(np.where(live, np.sqrt(lo * hi), np.nan), lo, hi)
