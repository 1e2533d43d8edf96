"""Argument checks shared by the discrete estimators.

Shapes and static hyper-parameters are checked always; values (finiteness of
the logits, a temperature passed as an array) only when they are concrete,
since a traced value cannot raise a Python error under ``jit``. Call the
estimator once outside ``jit`` (or wrap it in ``jax.experimental.checkify``)
to check values inside a compiled program.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


def _concrete(x: Any) -> np.ndarray | None:
  if isinstance(x, jax.core.Tracer):
    return None
  try:
    return np.asarray(x)
  except Exception:  # noqa: BLE001 - anything not convertible is not concrete
    return None


def check_logits(logits: Any, name: str = "logits") -> jax.Array:
  """Logits of shape [..., K] with K >= 2 and finite values."""
  logits = jnp.asarray(logits)
  if logits.ndim == 0:
    raise ValueError(f"{name}: expected shape [..., K] with a category axis last, got a scalar")
  if logits.shape[-1] < 2:
    raise ValueError(f"{name}: expected at least 2 categories on the last axis, "
                     f"got shape {logits.shape}")
  if not jnp.issubdtype(logits.dtype, jnp.floating):
    raise ValueError(f"{name}: expected a floating dtype, got {logits.dtype}")
  value = _concrete(logits)
  if value is not None and not np.all(np.isfinite(value)):
    raise ValueError(f"{name}: expected finite values, got {int(np.sum(~np.isfinite(value)))} "
                     "non-finite entries (NaN or Inf)")
  return logits


def check_positive(value: Any, name: str) -> None:
  """A hyper-parameter that must be > 0 (checked when concrete)."""
  v = _concrete(value)
  if v is not None and not (np.all(np.isfinite(v)) and np.all(v > 0)):
    raise ValueError(f"{name}: expected a finite value > 0, got {value}")


def check_count(value: int, name: str, minimum: int = 1) -> None:
  if not isinstance(value, (int, np.integer)) or value < minimum:
    raise ValueError(f"{name}: expected an integer >= {minimum}, got {value!r}")
