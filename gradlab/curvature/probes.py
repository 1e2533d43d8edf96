"""Random probe vectors shaped like a params pytree."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

SAMPLERS = ("rademacher", "gaussian")


def check_sampler(sampler: str) -> None:
  if sampler not in SAMPLERS:
    raise ValueError(f"sampler: expected one of {SAMPLERS}, got {sampler!r}")


def sample_probe(key: jax.Array, like: Any, sampler: str = "rademacher") -> Any:
  """A probe with E[v v^T] = I: Rademacher signs or standard normals.

  Rademacher is never worse for trace estimation (variance
  2(|A|_F^2 - sum_i A_ii^2) against 2|A|_F^2) and exact on diagonal matrices;
  prefer it unless a rotation-invariant probe is needed.
  """
  check_sampler(sampler)
  leaves, treedef = jax.tree.flatten(like)
  keys = jax.random.split(key, len(leaves))
  if sampler == "rademacher":
    new = [jax.random.rademacher(k, jnp.shape(x), jnp.result_type(x)) for k, x in zip(keys, leaves)]
  else:
    new = [jax.random.normal(k, jnp.shape(x), jnp.result_type(x)) for k, x in zip(keys, leaves)]
  return jax.tree.unflatten(treedef, new)


def dimension(like: Any) -> int:
  """The number of scalar entries of a pytree."""
  return sum(int(jnp.size(x)) for x in jax.tree.leaves(like))
