"""REINFORCE (the score-function estimator) with baselines.

For ``L(theta) = E_{D ~ Cat(softmax(theta))}[f(D)]``,
``grad L = E[(f(D) - b) grad log p(D)]``, and for softmax logits
``grad_theta log p(D) = D - softmax(theta)`` per categorical variable. Any
baseline ``b`` that does not depend on the sample it multiplies keeps the
estimator unbiased:

* ``"none"``: b = 0 (the paper's polynomial code, ``reinforce``).
* ``"moving_average"``: a scalar carried by the caller (e.g. an EMA of past
  f values, see ``update_moving_average``), fixed within the step.
* ``"leave_one_out"``: with S >= 2 samples, each sample's baseline is the
  mean f of the other S - 1 (RLOO; Kool, van Hoof, Welling, 2019).

The function returns a surrogate loss whose *value* is the Monte Carlo mean
of f and whose *gradient* is the estimator (plus f's own pathwise gradient
with respect to any parameters f closes over), so it drops into any loss.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

from gradlab import _checks
from gradlab.discrete.straight_through import draw_one_hot

BASELINES = ("none", "moving_average", "leave_one_out")


class ReinforceOutput(NamedTuple):
  loss: jax.Array  # scalar surrogate: value mean_s f(D_s), gradient the estimator
  samples: jax.Array  # [S, ..., K] one-hot samples
  values: jax.Array  # [S] f(D_s)


def reinforce(
  key: jax.Array,
  logits: jax.Array,
  f: Callable[[jax.Array], jax.Array],
  *,
  num_samples: int = 1,
  baseline: str = "none",
  baseline_value: jax.Array | float | None = None,
) -> ReinforceOutput:
  """REINFORCE for ``E[f(D)]`` with ``D`` one-hot of shape ``logits.shape``.

  Args:
    key: PRNG key.
    logits: [..., K]; every position of the batch shape is an independent
      categorical, and ``f`` sees the whole one-hot configuration.
    f: ``D -> scalar`` for one configuration ``D`` of shape [..., K].
    num_samples: S, configurations drawn (and averaged).
    baseline: one of ``"none"``, ``"moving_average"``, ``"leave_one_out"``.
    baseline_value: the scalar baseline, required by ``"moving_average"``.

  Returns:
    ``ReinforceOutput(loss, samples, values)``.
  """
  logits = _checks.logits("logits", logits)
  _checks.integer("num_samples", num_samples, minimum=1)
  if baseline not in BASELINES:
    raise ValueError(f"baseline: expected one of {BASELINES}, got {baseline!r}")
  if baseline == "leave_one_out" and num_samples < 2:
    raise ValueError(f"num_samples: leave_one_out needs at least 2, got {num_samples}")
  if baseline == "moving_average" and baseline_value is None:
    raise ValueError("baseline_value: required by baseline='moving_average'")

  keys = jax.random.split(key, num_samples)
  samples = jax.vmap(lambda k: draw_one_hot(k, logits))(keys)
  values = jax.vmap(f)(samples)
  if values.shape != (num_samples,):
    raise ValueError(f"f: expected a scalar per configuration, got shape {values.shape[1:]}")
  sv = jax.lax.stop_gradient(values)
  if baseline == "none":
    b = jnp.zeros_like(sv)
  elif baseline == "moving_average":
    b = jnp.broadcast_to(jax.lax.stop_gradient(jnp.asarray(baseline_value, sv.dtype)), sv.shape)
  else:
    b = (jnp.sum(sv) - sv) / (num_samples - 1)
  log_p = jax.nn.log_softmax(logits, axis=-1)
  log_prob = jnp.sum(samples * log_p, axis=tuple(range(1, samples.ndim)))  # [S]
  score_term = (sv - b) * (log_prob - jax.lax.stop_gradient(log_prob))  # value 0
  return ReinforceOutput(jnp.mean(values + score_term), samples, values)


def update_moving_average(
  average: jax.Array, values: jax.Array, *, decay: float = 0.9
) -> jax.Array:
  """``decay * average + (1 - decay) * mean(values)``: the next step's baseline."""
  _checks.unit_interval("decay", decay)
  return decay * average + (1.0 - decay) * jnp.mean(jax.lax.stop_gradient(values))
