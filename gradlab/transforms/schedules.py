"""Learning-rate schedules refined from a previous run's gradient norms.

Reference: Defazio, Cutkosky, Mehta, Mishchenko, "When, Why and How Much?
Adaptive Learning Rate Scheduling by Refinement" (arXiv:2310.07831, 2023).
Official code: facebookresearch/adaptive_scheduling, ``find_schedule.py``
(``find_closed_form_schedule``), the median-filter recipe of its
``README.md``, and ``visual.py`` (the filter width, the l1 / l2 weights, the
normalization to a peak of 1).

The last-iterate bound of the paper is minimized, for a recorded sequence of
gradient norms ``G_1 .. G_T``, by the step sizes

    w_t = G_t^-p,      eta_t  proportional to  w_t * sum_{s > t} w_s,

with ``p = 2`` for SGD (``G_t = ||g_t||_2``) and ``p = 1`` for coordinate-wise
methods such as Adam (``G_t = ||g_t||_1``; ``visual.py`` passes
``weights=G**-1`` for the ``*_l1`` norm sequences). Constant norms give the
linear decay ``eta_t = (T - 1 - t) / (T - 1)``, the worst-case optimum the
paper derives. Before the weights, the norms are smoothed by a median filter
of odd width ``2 * (int(smoothing * T) // 2) + 1`` (``smoothing`` is
``visual.py``'s ``sigma2 = 0.1``), the sequence padded at its end by
reflection and at its start by repeating the first value (the README's
``median_filter(np.pad(g, (0, 2w), mode="reflect"), size=w, mode="nearest")``).

Use: train once with linear decay while recording the per-step gradient norm
(``grad_norm`` in ``gradlab.train`` metrics; the l1 norm for Adam), call
:func:`refined_schedule` on it, and train again, at the same peak learning rate
and step count, with ``refined_lr_schedule(multipliers, learning_rate=lr)``.
``scale_by_lr_table`` holds such a schedule as data in the optimizer state
instead of a constant of the program, so that runs with different schedules
(of one length) share one compiled train step.

Deviations from the official code:

* The filter width is ``smoothing * T`` of the given sequence. ``visual.py``
  first interpolates every sequence shorter than 10,000 points up to 10,000
  and takes the width from that 10,000 even for longer ones (so a longer
  sequence is filtered over less than 10% of its run); for ``T = 10,000`` the
  two agree exactly.
* ``find_closed_form_schedule`` divides by ``tail_sums[-1]`` (the last weight
  ``w_{T-1}``, not the total); the result is then divided by its maximum in
  ``visual.py``. Both are positive constants: we return the schedule with its
  peak at 1 directly. The norms are divided by their minimum before the power
  (the normalized schedule is invariant to the norms' scale), so no weight
  overflows.
* No warmup is added. The official refinement has none either: a warmup
  appears in the refined schedule by itself when the early gradient norms
  are large (``visual.py`` only draws warmup + polynomial baselines beside it).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from gradlab import _checks

NORMS = ("l2", "l1")
# weights w_t = G_t^-p: p = 2 for SGD and l2 norms, p = 1 for Adam and l1 norms
_POWER = {"l2": 2.0, "l1": 1.0}


def median_filter_width(num_steps: int, smoothing: float) -> int:
  """The official odd filter width ``2 * (int(smoothing * num_steps) // 2) + 1``."""
  return 2 * (int(smoothing * num_steps) // 2) + 1


def median_filter(x: jax.Array, width: int) -> jax.Array:
  """The median over a centred window of odd ``width``, as the official recipe pads it.

  Equals ``scipy.ndimage.median_filter(np.pad(x, (0, 2 * width), mode="reflect"),
  size=width, mode="nearest")[:len(x)]``: the start is extended by its first
  value, the end by reflection. Memory is ``O(width)`` per output, 256 outputs
  at a time.
  """
  if width % 2 != 1:
    raise ValueError(f"width: expected an odd integer >= 1, got {width}")
  if width == 1:
    return x
  h = width // 2
  ext = jnp.concatenate([jnp.full((h,), x[0], x.dtype), jnp.pad(x, (0, h), mode="reflect")])
  window = lambda i: jnp.median(jax.lax.dynamic_slice(ext, (i,), (width,)))  # noqa: E731
  return jax.lax.map(window, jnp.arange(x.shape[0]), batch_size=256)


def refined_schedule(grad_norms: Any, *, norm: str = "l2", smoothing: float = 0.1) -> jax.Array:
  """Learning-rate multipliers ``[T]`` refined from a run's per-step gradient norms.

  Args:
    grad_norms: ``[T]`` gradient norms of a previous run, one per step
      (``T >= 2``), all finite and ``> 0``: the l2 norms for SGD-like
      methods, the l1 norms for Adam-like ones.
    norm: ``"l2"`` (weights ``G^-2``, the paper's SGD refinement) or ``"l1"``
      (weights ``G^-1``, its coordinate-wise / Adam refinement).
    smoothing: the median filter's width as a fraction of ``T`` (the
      official 0.1); ``0`` uses the raw norms.

  Returns:
    ``eta`` of shape ``[T]``, float: ``eta_t = w_t sum_{s > t} w_s`` divided
    by its maximum, so ``max(eta) = 1``, ``eta_t > 0`` for ``t < T - 1`` and
    ``eta_{T-1} = 0``. Multiply by the peak learning rate (or use
    :func:`refined_lr_schedule`). Works under ``jit`` (``norm`` and
    ``smoothing`` static; values are checked only outside ``jit``).
  """
  _checks.one_of("norm", norm, NORMS)
  if not isinstance(smoothing, (int, float)) or not 0 <= smoothing <= 1:
    raise ValueError(f"smoothing: expected a number in [0, 1], got {smoothing!r}")
  g = jnp.asarray(grad_norms)
  if g.ndim != 1 or g.shape[0] < 2:
    raise ValueError(
      f"grad_norms: expected a 1-D sequence of at least 2 per-step norms, got shape {g.shape}"
    )
  if not jnp.issubdtype(g.dtype, jnp.floating):
    g = g.astype(jnp.float32)
  _checks.finite("grad_norms", g)
  v = _checks.concrete(g)
  if v is not None and not np.all(v > 0):
    raise ValueError(
      f"grad_norms: expected norms > 0, got {int(np.sum(v <= 0))} entries <= 0 (min {v.min():g})"
    )
  num_steps = g.shape[0]
  smoothed = median_filter(g, median_filter_width(num_steps, smoothing))
  w = (smoothed / jnp.min(smoothed)) ** -_POWER[norm]
  tail = jnp.cumsum(w[::-1])[::-1]  # tail[t] = sum_{s >= t} w_s
  eta = w * jnp.concatenate([tail[1:], jnp.zeros((1,), w.dtype)])
  return eta / jnp.max(eta)


def refined_lr_schedule(
  multipliers: Any, *, learning_rate: float, num_steps: int | None = None
) -> optax.Schedule:
  """The optax schedule ``step -> learning_rate * multipliers[step]``.

  Args:
    multipliers: ``[T]`` finite multipliers ``>= 0``, e.g. from
      :func:`refined_schedule`.
    learning_rate: the peak learning rate, ``> 0``.
    num_steps: the length of the new run if it differs from ``T``: the
      multipliers are then linearly interpolated over the run's fraction
      ``[0, 1]`` (as ``visual.py`` resamples sequences).

  Returns:
    An ``optax.Schedule``; steps past the end hold the last multiplier
    (``0`` for a refined schedule), like optax's own schedules. Works under
    ``jit`` (a traced step).
  """
  _checks.positive("learning_rate", learning_rate)
  m = np.asarray(multipliers, np.float64)
  if m.ndim != 1 or m.shape[0] < 1:
    raise ValueError(f"multipliers: expected a non-empty 1-D sequence, got shape {m.shape}")
  if not np.all(np.isfinite(m) & (m >= 0)):
    raise ValueError("multipliers: expected finite values >= 0")
  if num_steps is not None:
    num_steps = _checks.integer("num_steps", num_steps, minimum=1)
    if num_steps != m.shape[0]:
      m = np.interp(np.linspace(0, 1, num_steps), np.linspace(0, 1, m.shape[0]), m)
  table = jnp.asarray(m * learning_rate, jnp.float32)

  def schedule(count):
    return table[jnp.clip(count, 0, table.shape[0] - 1)]

  return schedule


class ScaleByLRTableState(NamedTuple):
  count: jax.Array  # int32 updates so far
  table: jax.Array  # [T] learning rates, data rather than a constant of the program


def scale_by_lr_table(learning_rates: Any) -> optax.GradientTransformation:
  """``updates * -learning_rates[min(count, T - 1)]``: a schedule held in the state.

  The same update as ``optax.scale_by_learning_rate(schedule)`` with
  ``schedule(t) = learning_rates[t]`` (``t`` past the end holds the last
  entry), but the table is part of the optimizer state: one compiled train
  step serves every schedule of length ``T``, the init alone differing
  (e.g. linear, cosine and refined runs compared at equal steps).
  ``optax.adam(schedule)`` is ``optax.chain(optax.scale_by_adam(),
  scale_by_lr_table(table))``; ``optax.sgd(schedule)`` is
  ``scale_by_lr_table(table)``.

  Args:
    learning_rates: ``[T]`` finite learning rates ``>= 0``, ``T >= 1``.
  """
  table = np.asarray(learning_rates, np.float64)
  if table.ndim != 1 or table.shape[0] < 1:
    raise ValueError(f"learning_rates: expected a non-empty 1-D sequence, got shape {table.shape}")
  if not np.all(np.isfinite(table) & (table >= 0)):
    raise ValueError("learning_rates: expected finite values >= 0")

  def init_fn(params):
    del params
    return ScaleByLRTableState(jnp.zeros([], jnp.int32), jnp.asarray(table, jnp.float32))

  def update_fn(updates, state, params=None):
    del params
    lr = state.table[jnp.minimum(state.count, state.table.shape[0] - 1)]
    updates = jax.tree.map(lambda u: (-lr * u).astype(u.dtype), updates)
    return updates, ScaleByLRTableState(optax.safe_increment(state.count), state.table)

  return optax.GradientTransformation(init_fn, update_fn)
