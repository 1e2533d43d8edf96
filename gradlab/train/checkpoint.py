"""Orbax checkpoints of a ``TrainState``: save every N steps, keep the last K,
restore the latest onto the shardings of a template state."""

from __future__ import annotations

import logging as py_logging
import os
from typing import Any

import jax
import orbax.checkpoint as ocp


class _DropOrbaxInfo(py_logging.Filter):
  """Orbax reports every save and close at INFO; keep its warnings only."""

  def filter(self, record: py_logging.LogRecord) -> bool:
    return record.levelno > py_logging.INFO or "orbax" not in record.pathname


_FILTER = _DropOrbaxInfo()


def make_manager(directory: str, *, max_to_keep: int = 3) -> ocp.CheckpointManager:
  """A ``CheckpointManager`` over ``directory`` keeping the last ``max_to_keep``."""
  if max_to_keep < 1:
    raise ValueError(f"max_to_keep: expected an integer >= 1, got {max_to_keep}")
  absl_logger = py_logging.getLogger("absl")
  if _FILTER not in absl_logger.filters:
    absl_logger.addFilter(_FILTER)
  options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True)
  return ocp.CheckpointManager(os.path.abspath(directory), options=options)


def restore_latest(manager: ocp.CheckpointManager, template: Any) -> tuple[Any, int | None]:
  """Restores the newest finished checkpoint with ``template``'s structure and
  shardings. Returns ``(template, None)`` when there is none."""
  step = manager.latest_step()
  if step is None:
    return template, None
  abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, template)
  return manager.restore(step, args=ocp.args.StandardRestore(abstract)), step


def save(manager: ocp.CheckpointManager, step: int, state: Any) -> None:
  manager.save(step, args=ocp.args.StandardSave(state))
