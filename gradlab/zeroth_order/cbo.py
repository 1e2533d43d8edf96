"""Consensus-based optimization (CBO), a derivative-free particle method.

Reference: Riedl, Klock, Geldhauser, Fornasier, "Gradient is All You Need?"
(2023), which reads CBO as a stochastic relaxation of gradient descent;
Pinnau et al. (2017); Carrillo et al. (2021) for the anisotropic noise. The
CBXpy package implements the same update.

N particles x_i move towards the consensus point

    m = sum_i w_i x_i / sum_i w_i,      w_i = exp(-alpha f(x_i)),

by x_i <- x_i - lambda dt (x_i - m) + sigma sqrt(dt) D_i xi_i, xi_i ~ N(0, I),
with D_i = diag|x_i - m| (anisotropic, the default: dimension-free
convergence) or |x_i - m| I (isotropic). Large alpha makes m approach the
best particle (Laplace principle); the weights are computed with a
log-sum-exp shift so that large alpha does not underflow.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp


class CBOState(NamedTuple):
  particles: Any  # pytree with a leading axis N
  consensus: Any  # pytree like one particle
  key: jax.Array
  step: jax.Array


def consensus_point(particles: Any, values: jax.Array, alpha: float) -> Any:
  """The weighted mean of the particles with weights exp(-alpha f)."""
  w = jax.nn.softmax(-alpha * values)
  return jax.tree.map(lambda x: jnp.tensordot(w, x, axes=1), particles)


def cbo_init(
  particles: Any, objective: Callable[[Any], jax.Array], key: jax.Array, *, alpha: float = 30.0
) -> CBOState:
  """A state from initial particles (a pytree with a leading axis N >= 2)."""
  n = {jnp.shape(x)[0] for x in jax.tree.leaves(particles)}
  if len(n) != 1 or n.pop() < 2:
    raise ValueError("particles: expected leaves with one common leading axis N >= 2")
  values = jax.vmap(objective)(particles)
  return CBOState(
    particles, consensus_point(particles, values, alpha), key, jnp.zeros((), jnp.int32)
  )


def cbo_step(
  state: CBOState,
  objective: Callable[[Any], jax.Array],
  *,
  alpha: float = 30.0,
  drift: float = 1.0,
  noise: float = 0.8,
  dt: float = 0.1,
  anisotropic: bool = True,
) -> CBOState:
  """One Euler-Maruyama step of CBO.

  Args:
    objective: ``x -> scalar`` for one particle x (vmapped over particles).
    alpha: the weights' inverse temperature (> 0).
    drift: lambda, the pull towards the consensus.
    noise: sigma, the exploration scale.
    dt: the time step.
    anisotropic: coordinate-wise noise (True) or isotropic.
  """
  for name, v in (("alpha", alpha), ("dt", dt)):
    if not v > 0:
      raise ValueError(f"{name}: expected a value > 0, got {v}")
  values = jax.vmap(objective)(state.particles)
  m = consensus_point(state.particles, values, alpha)
  key, sub = jax.random.split(state.key)
  leaves, treedef = jax.tree.flatten(state.particles)
  keys = jax.random.split(sub, len(leaves))
  m_leaves = jax.tree.leaves(m)
  if not anisotropic:
    dist = jnp.sqrt(
      sum(jnp.sum((x - ml) ** 2, axis=tuple(range(1, x.ndim))) for x, ml in zip(leaves, m_leaves))
    )
  new = []
  for x, ml, k in zip(leaves, m_leaves, keys):
    diff = x - ml
    xi = jax.random.normal(k, x.shape, x.dtype)
    scale = jnp.abs(diff) if anisotropic else dist.reshape((-1,) + (1,) * (x.ndim - 1))
    new.append(x - drift * dt * diff + noise * jnp.sqrt(dt) * scale * xi)
  particles = jax.tree.unflatten(treedef, new)
  return CBOState(particles, m, key, state.step + 1)
