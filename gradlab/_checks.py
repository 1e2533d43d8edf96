"""Argument checks shared by every gradlab package (private to the library).

One vocabulary and one argument order, ``check(name, value, ...)``, so that
every bad input is refused with a ``ValueError`` whose message starts with the
argument's name and says what was expected.

What is checked when:

* **Static** things (shapes, names, choices among strings, integer counts
  that size arrays or loops) are checked always: they are Python values even
  under ``jit``.
* **Numeric** values (a learning rate, a temperature, the entries of an
  array) are checked only when they are *concrete*. Under ``jit`` or
  ``optax.inject_hyperparams`` a hyperparameter is a tracer and cannot raise
  a Python error, so it passes unchecked, as in optax's own aliases. Call the
  function once outside ``jit`` (or wrap it in ``jax.experimental.checkify``)
  to check values inside a compiled program.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


def concrete(x: Any) -> np.ndarray | None:
  """``x`` as a NumPy array when its value is known now; ``None`` for a tracer."""
  if isinstance(x, jax.core.Tracer):
    return None
  try:
    return np.asarray(x)
  except Exception:  # noqa: BLE001 - anything not convertible is not concrete
    return None


def _fail(name: str, expected: str, value: Any) -> None:
  raise ValueError(f"{name}: expected {expected}, got {value!r}")


def positive(name: str, value: Any, *, allow_zero: bool = False) -> None:
  """A finite number ``> 0`` (``>= 0`` with ``allow_zero``), when concrete."""
  v = concrete(value)
  if v is None:
    return
  ok = np.all(np.isfinite(v)) and (np.all(v >= 0) if allow_zero else np.all(v > 0))
  if not ok:
    _fail(name, "a finite value " + (">= 0" if allow_zero else "> 0"), value)


def unit_interval(name: str, value: Any, *, closed: bool = False) -> None:
  """A number in ``[0, 1)`` (``[0, 1]`` with ``closed``), when concrete."""
  v = concrete(value)
  if v is None:
    return
  ok = np.all(v >= 0) and (np.all(v <= 1) if closed else np.all(v < 1))
  if not ok:
    _fail(name, "a number in [0, 1" + ("]" if closed else ")"), value)


def integer(name: str, value: Any, *, minimum: int = 0) -> int:
  """A static integer count ``>= minimum`` (NumPy integers too); returns it as ``int``."""
  if isinstance(value, jax.core.Tracer):
    raise ValueError(
      f"{name}: expected a static integer >= {minimum}, got a traced value "
      "(with optax.inject_hyperparams, list it in static_args)"
    )
  if (
    isinstance(value, (bool, np.bool_))
    or not isinstance(value, (int, np.integer))
    or value < minimum
  ):
    _fail(name, f"an integer >= {minimum}", value)
  return int(value)


def count(name: str, value: Any, *, minimum: int = 0) -> None:
  """An integer count ``>= minimum`` that may be traced (checked when concrete)."""
  v = concrete(value)
  if v is None:
    return
  if v.ndim or not (np.issubdtype(v.dtype, np.integer) or float(v) == int(v)) or v < minimum:
    _fail(name, f"an integer >= {minimum}", value)


def one_of(name: str, value: Any, choices: Iterable[Any]) -> None:
  choices = tuple(choices)
  if value not in choices:
    _fail(name, f"one of {choices}", value)


def is_key(name: str, key: Any) -> None:
  """A typed PRNG key from ``jax.random.key``."""
  if not isinstance(key, jax.Array) or not jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
    _fail(name, "a typed key from jax.random.key", key)


def finite(name: str, x: Any) -> None:
  """Every entry finite, when concrete."""
  v = concrete(x)
  if v is not None and not np.all(np.isfinite(v)):
    raise ValueError(
      f"{name}: expected finite values, got {int(np.sum(~np.isfinite(v)))} "
      "non-finite entries (NaN or Inf)"
    )


def probabilities(name: str, x: Any) -> None:
  """Every entry in ``[0, 1]`` (and not NaN), when concrete."""
  v = concrete(x)
  if v is not None and not np.all((v >= 0) & (v <= 1)):
    bad = int(np.sum(~((v >= 0) & (v <= 1))))
    raise ValueError(
      f"{name}: expected probabilities in [0, 1], got {bad} entries outside (or NaN)"
    )


def logits(name: str, x: Any) -> jax.Array:
  """Logits of shape ``[..., K]`` with ``K >= 2``, a floating dtype, finite values."""
  x = jnp.asarray(x)
  if x.ndim == 0:
    raise ValueError(f"{name}: expected shape [..., K] with a category axis last, got a scalar")
  if x.shape[-1] < 2:
    raise ValueError(
      f"{name}: expected at least 2 categories on the last axis, got shape {x.shape}"
    )
  if not jnp.issubdtype(x.dtype, jnp.floating):
    raise ValueError(f"{name}: expected a floating dtype, got {x.dtype}")
  finite(name, x)
  return x


def rewards(
  name: str, x: Any, *, reward_range: tuple[float, float] | None = None, min_group: int = 1
) -> jax.Array:
  """Rewards ``[batch, group]`` with ``group >= min_group``, finite, within ``reward_range``."""
  r = jnp.asarray(x)
  if r.ndim != 2:
    raise ValueError(f"{name}: expected shape [batch, group], got {r.shape}")
  if r.shape[0] == 0:
    raise ValueError(f"{name}: the batch is empty (shape {r.shape})")
  if r.shape[1] < min_group:
    raise ValueError(
      f"{name}: expected groups of at least {min_group} responses, got shape "
      f"{r.shape}" + (" (an empty group)" if r.shape[1] == 0 else "")
    )
  if not jnp.issubdtype(r.dtype, jnp.floating):
    r = r.astype(jnp.float32)
  finite(name, r)
  v = concrete(r)
  if v is not None and reward_range is not None:
    lo, hi = reward_range
    bad = (v < lo) | (v > hi)
    if np.any(bad):
      raise ValueError(
        f"{name}: expected rewards in the declared range [{lo}, {hi}], got "
        f"{int(np.sum(bad))} outside it (min {v.min():g}, max {v.max():g})"
      )
  return r


def token_mask(name: str, mask: Any, *arrays: tuple[str, Any]) -> jax.Array:
  """A 0/1 mask ``[batch, group, time]`` and same-shaped token arrays; the float mask."""
  m = jnp.asarray(mask)
  if m.ndim != 3:
    raise ValueError(f"{name}: expected shape [batch, group, time], got {m.shape}")
  for other, a in arrays:
    if a is not None and jnp.shape(a) != m.shape:
      raise ValueError(f"{other}: expected the shape of {name} {m.shape}, got {jnp.shape(a)}")
  v = concrete(m)
  if v is not None and not np.all((v == 0) | (v == 1)):
    raise ValueError(f"{name}: expected only 0 and 1 entries")
  return m.astype(jnp.float32)


def advantages(name: str, x: Any, mask: jax.Array) -> jax.Array:
  """Advantages per response ``[batch, group]`` (broadcast over time) or per token."""
  a = jnp.asarray(x)
  if a.shape == mask.shape[:2]:
    return a[..., None]
  if a.shape == mask.shape:
    return a
  raise ValueError(
    f"{name}: expected shape {mask.shape[:2]} (per response) or {mask.shape} "
    f"(per token), got {a.shape}"
  )
