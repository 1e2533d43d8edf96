"""Gradient alignment between named data groups or tasks.

The cosine between the gradients of groups' losses is what gradient-based
data mixing reads (a group whose gradient aligns with the target's helps
it); negative cosines flag conflicting tasks (the premise of PCGrad).
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, NamedTuple

import jax
import jax.numpy as jnp


class Alignment(NamedTuple):
  names: tuple[str, ...]
  cosine: jax.Array  # [G, G], symmetric, ones on the diagonal
  norms: jax.Array  # [G] gradient norms


def gradient_alignment(
  loss_fn: Callable[[Any, Any], jax.Array], params: Any, groups: Mapping[str, Any]
) -> Alignment:
  """Pairwise cosines of ``grad loss_fn(params, groups[name])`` over the groups."""
  if len(groups) < 2:
    raise ValueError(f"groups: expected at least 2 named batches, got {len(groups)}")
  names = tuple(groups)
  flat = jnp.stack(
    [jax.flatten_util.ravel_pytree(jax.grad(loss_fn)(params, groups[k]))[0] for k in names]
  )
  norms = jnp.linalg.norm(flat, axis=1)
  unit = flat / jnp.maximum(norms, jnp.finfo(flat.dtype).tiny)[:, None]
  return Alignment(names, unit @ unit.T, norms)
