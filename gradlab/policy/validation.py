"""Shape and value checks at the boundary of ``gradlab.policy``.

Shapes are checked always (they are static under ``jit``); values (rewards in
their declared range, masks of 0/1) only when concrete. Conventions: rewards
are ``[batch, group]`` (one prompt's ``G`` responses along ``group``);
token-level arrays are ``[batch, group, time]``.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from gradlab.discrete.validation import _concrete  # one helper for both packages


def check_rewards(rewards: Any, *, reward_range: tuple[float, float] | None = None,
                  min_group: int = 1, name: str = "rewards") -> jax.Array:
  """Rewards ``[batch, group]`` with ``group >= min_group``, finite, within ``reward_range``."""
  r = jnp.asarray(rewards)
  if r.ndim != 2:
    raise ValueError(f"{name}: expected shape [batch, group], got {r.shape}")
  if r.shape[0] == 0:
    raise ValueError(f"{name}: the batch is empty (shape {r.shape})")
  if r.shape[1] < min_group:
    raise ValueError(f"{name}: expected groups of at least {min_group} responses, "
                     f"got shape {r.shape}" + (" (an empty group)" if r.shape[1] == 0 else ""))
  if not jnp.issubdtype(r.dtype, jnp.floating):
    r = r.astype(jnp.float32)
  v = _concrete(r)
  if v is not None:
    if not np.all(np.isfinite(v)):
      raise ValueError(f"{name}: expected finite rewards, got {int(np.sum(~np.isfinite(v)))} "
                       "non-finite entries")
    if reward_range is not None:
      lo, hi = reward_range
      bad = (v < lo) | (v > hi)
      if np.any(bad):
        raise ValueError(f"{name}: expected rewards in the declared range [{lo}, {hi}], got "
                         f"{int(np.sum(bad))} outside it (min {v.min():g}, max {v.max():g})")
  return r


def check_tokens(mask: Any, *arrays: tuple[str, Any]) -> jax.Array:
  """A 0/1 ``mask [batch, group, time]`` and same-shaped token arrays; returns the float mask."""
  m = jnp.asarray(mask)
  if m.ndim != 3:
    raise ValueError(f"mask: expected shape [batch, group, time], got {m.shape}")
  for name, a in arrays:
    if a is None:
      continue
    shape = jnp.shape(a)
    if shape != m.shape:
      raise ValueError(f"{name}: expected the mask's shape {m.shape}, got {shape}")
  v = _concrete(m)
  if v is not None:
    if not np.all((v == 0) | (v == 1)):
      raise ValueError("mask: expected only 0 and 1 entries")
    if np.any(v.reshape(-1, v.shape[-1]).sum(axis=-1) == 0) and v.size:
      pass  # an empty response is legal (its tokens contribute nothing)
  return m.astype(jnp.float32)


def check_advantages(advantages: Any, mask: jax.Array) -> jax.Array:
  """Advantages per response ``[batch, group]`` (broadcast over time) or per token."""
  a = jnp.asarray(advantages)
  if a.shape == mask.shape[:2]:
    return a[..., None]
  if a.shape == mask.shape:
    return a
  raise ValueError(f"advantages: expected shape {mask.shape[:2]} (per response) or "
                   f"{mask.shape} (per token), got {a.shape}")
