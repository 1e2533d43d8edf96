r"""A base-stock inventory problem in JAX, for pathwise (HDPO) against score-function gradients.

Each of ``horizon`` periods: the inventory position is ``x_t`` (negative =
backlogged demand); the policy orders up to a level ``S_t`` (order
``a_t = max(S_t - x_t, 0)``, zero lead time), demand ``D_t \sim Exp(mean)``
arrives, the period costs ``h (y_t - D_t)^+ + p (D_t - y_t)^+`` with
``y_t = x_t + a_t``, and unmet demand is backlogged, ``x_{t+1} = y_t - D_t``.

The policy is a base-stock level ``S`` with optional Gaussian exploration,
``S_t = S + \sigma\varepsilon_t``. With ``\sigma = 0`` and ``x_0 \le S`` the
position is ``S`` in every period, so the expected cost is exactly
``T L(S)`` with the newsvendor loss

.. math::  L(S) = h\,(S - m(1 - e^{-S/m})) + p\,m\,e^{-S/m},

minimized at the critical fractile ``S^* = F^{-1}(p/(p+h)) = m \log((p+h)/h)``.

Hindsight differentiable policy optimization (HDPO; Alvo, Russo & Kanoria
2023, https://arxiv.org/abs/2311.11191) differentiates the simulated cost of
a demand trace with respect to the policy parameters, the demands being known
in hindsight (:func:`pathwise_gradients`); REINFORCE needs ``\sigma > 0`` and
weights the score of each exploration draw by the cost that follows it
(:func:`score_gradients`). Both are unbiased for ``d/dS`` of the expected cost.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

from gradlab import _checks


class Inventory(NamedTuple):
  """Costs per unit: ``holding`` ``h`` and backlog ``penalty`` ``p``; demand mean ``m``."""

  holding: float = 1.0
  penalty: float = 9.0
  demand_mean: float = 1.0
  horizon: int = 8
  initial: float = 0.0  # x_0

  def check(self):
    _checks.positive("holding", self.holding)
    _checks.positive("penalty", self.penalty)
    _checks.positive("demand_mean", self.demand_mean)
    _checks.integer("horizon", self.horizon, minimum=1)
    return self


def optimal_level(problem: Inventory) -> float:
  """``S^* = m log((p + h)/h)``, the critical fractile of the exponential demand."""
  problem.check()
  return problem.demand_mean * math.log((problem.penalty + problem.holding) / problem.holding)


def newsvendor_loss(problem: Inventory, level) -> jax.Array:
  """``L(S)``, the expected cost of one period that starts at position ``S`` (closed form)."""
  h, p, m = problem.holding, problem.penalty, problem.demand_mean
  s = jnp.asarray(level)
  tail = jnp.exp(-s / m)
  return h * (s - m * (1 - tail)) + p * m * tail


def expected_cost(problem: Inventory, level) -> jax.Array:
  """Exact expected total cost ``T L(S)`` of the deterministic base-stock policy (needs ``x_0 <= S``)."""
  return problem.horizon * newsvendor_loss(problem, level)


def sample_demand(key, problem: Inventory, num_traces: int) -> jax.Array:
  """``[num_traces, horizon]`` exponential demands."""
  _checks.is_key("key", key)
  return problem.demand_mean * jax.random.exponential(key, (num_traces, problem.horizon))


def period_costs(problem: Inventory, level, demand, noise=None) -> jax.Array:
  """Costs ``[horizon]`` of one trace ``demand [horizon]`` under order-up-to
  ``level + sigma * noise[t]`` (``noise`` already scaled; ``None`` = deterministic)."""
  h, p = problem.holding, problem.penalty
  noise = jnp.zeros_like(demand) if noise is None else noise

  def step(x, inputs):
    d, e = inputs
    y = jnp.maximum(level + e, x)  # order up to the target, never a negative order
    cost = h * jnp.maximum(y - d, 0.0) + p * jnp.maximum(d - y, 0.0)
    return y - d, cost

  _, costs = jax.lax.scan(step, jnp.asarray(problem.initial, demand.dtype), (demand, noise))
  return costs


def pathwise_gradients(problem: Inventory, level, demand, noise=None) -> jax.Array:
  """HDPO: ``d/dS`` of each trace's total cost through the simulator, ``[num_traces]``."""
  problem.check()
  return _pathwise(problem, level, demand, noise)


@functools.partial(jax.jit, static_argnums=0)
def _pathwise(problem, level, demand, noise):
  def total(s, d, e):
    return jnp.sum(period_costs(problem, s, d, e))

  if noise is None:
    return jax.vmap(jax.grad(total), (None, 0, None))(level, demand, None)
  return jax.vmap(jax.grad(total), (None, 0, 0))(level, demand, noise)


def score_gradients(problem: Inventory, level, demand, noise, sigma) -> jax.Array:
  r"""REINFORCE for ``S_t = S + \sigma\varepsilon_t``: ``\sum_t (\varepsilon_t/\sigma)(C_{t:T} - b_t)``
  per trace, ``[num_traces]``; ``noise = \sigma\varepsilon``. The baseline ``b_t``
  is the other traces' mean cost-to-go (leave-one-out, so unbiased)."""
  problem.check()
  _checks.positive("sigma", sigma)
  if jnp.shape(demand)[0] < 2:
    raise ValueError("demand: the leave-one-out baseline needs at least 2 traces")
  return _score(problem, level, demand, noise, sigma)


@functools.partial(jax.jit, static_argnums=0)
def _score(problem, level, demand, noise, sigma):
  costs = jax.vmap(lambda d, e: period_costs(problem, level, d, e))(demand, noise)
  to_go = jnp.cumsum(costs[:, ::-1], 1)[:, ::-1]  # C_{t:T}
  n = to_go.shape[0]
  baseline = (jnp.sum(to_go, 0, keepdims=True) - to_go) / (n - 1)
  return jnp.sum(noise / sigma**2 * (to_go - baseline), 1)
