"""Orbax checkpoints of a ``TrainState`` that are verified before they are trusted.

``save`` writes a checkpoint with orbax, waits for it to be finalized, and
then records a SHA-256 of every file in it (names and contents) in
``<checkpoints>/../checkpoint_checksums/<step>.json``, written atomically
(temporary file, then rename). ``restore_latest`` verifies the newest
checkpoint against its checksum before restoring it. A checkpoint whose files
were damaged (bit flips, truncation), lost (``_METADATA``, ``default/``), that
has no checksum (the run was killed between orbax's finalization and the
checksum), or that orbax cannot restore, is reported in one line, moved aside
to ``<checkpoints>/../checkpoints_rejected/`` (never deleted), and the next
older one is tried. A run therefore resumes from the newest checkpoint that
is intact, and, since every step is a pure function of the step index, ends
exactly where an uninterrupted run would. ``save_verified`` is the last save
of a preempted run: it waits for the checkpoint and verifies it before the
run exits.
"""

from __future__ import annotations

import hashlib
import json
import logging as py_logging
import os
import shutil
from typing import Any

import jax
import orbax.checkpoint as ocp
from absl import logging
from jax.experimental import multihost_utils

from gradlab.train.atomic import write_json_atomically


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


def _checksum_dir(manager: ocp.CheckpointManager) -> str:
  return os.path.join(os.path.dirname(str(manager.directory)), "checkpoint_checksums")


def _checksum_path(manager: ocp.CheckpointManager, step: int) -> str:
  return os.path.join(_checksum_dir(manager), f"{step}.json")


def _step_dir(manager: ocp.CheckpointManager, step: int) -> str:
  return os.path.join(str(manager.directory), str(step))


def digest(directory: str) -> dict[str, Any]:
  """SHA-256 over every file under ``directory`` (relative names and contents)."""
  h = hashlib.sha256()
  count = 0
  for root, dirs, files in os.walk(directory):
    dirs.sort()
    for name in sorted(files):
      path = os.path.join(root, name)
      h.update(os.path.relpath(path, directory).encode() + b"\0")
      with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
          h.update(block)
      h.update(b"\0")
      count += 1
  return {"sha256": h.hexdigest(), "files": count}


def save(manager: ocp.CheckpointManager, step: int, state: Any) -> None:
  """Saves ``state`` as checkpoint ``step`` and records its checksum once it is final."""
  manager.save(step, args=ocp.args.StandardSave(state))
  manager.wait_until_finished()
  if jax.process_index() != 0:
    return
  os.makedirs(_checksum_dir(manager), exist_ok=True)
  write_json_atomically(_checksum_path(manager, step), digest(_step_dir(manager, step)))
  kept = {str(s) for s in manager.all_steps()}
  for name in os.listdir(_checksum_dir(manager)):  # checksums of checkpoints orbax removed
    if name.endswith(".json") and name[: -len(".json")] not in kept:
      os.remove(os.path.join(_checksum_dir(manager), name))


def verify(manager: ocp.CheckpointManager, step: int) -> str | None:
  """``None`` if checkpoint ``step`` matches its checksum, else what is wrong."""
  path = _checksum_path(manager, step)
  if not os.path.exists(path):
    return "it has no checksum (the run stopped before recording it)"
  try:
    with open(path) as f:
      expected = json.load(f)
  except (OSError, ValueError):
    return "its checksum file is unreadable"
  found = digest(_step_dir(manager, step))
  if found != expected:
    return (
      f"its files do not match their checksum ({found['files']} files, "
      f"{expected['files']} recorded)"
    )
  return None


def save_verified(manager: ocp.CheckpointManager, step: int, state: Any, *, saved: bool) -> str:
  """Makes ``state`` checkpoint ``step`` (``saved``: it already is), waits for it
  and verifies it against its checksum; returns what was done, in words.

  The checksum is process 0's: it alone verifies, the others report the save.
  """
  if not saved:
    save(manager, step, state)
  manager.wait_until_finished()
  where = f"checkpoint {step} in {manager.directory}"
  if jax.process_index() != 0:
    return f"{where} saved"
  why = verify(manager, step)
  if why is not None:
    return f"{where} saved but it does not verify ({why}); a restart falls back to the one before"
  return f"{where} saved and verified"


def _reject(manager: ocp.CheckpointManager, step: int, why: str) -> None:
  """Moves checkpoint ``step`` aside (process 0; the others wait for it)."""
  if jax.process_index() != 0:
    multihost_utils.sync_global_devices(f"gradlab_reject_{step}")
    manager.reload()
    return
  root = os.path.dirname(str(manager.directory))
  aside = os.path.join(root, "checkpoints_rejected")
  os.makedirs(aside, exist_ok=True)
  target = os.path.join(aside, str(step))
  n = 1
  while os.path.exists(target):
    target = os.path.join(aside, f"{step}.{n}")
    n += 1
  shutil.move(_step_dir(manager, step), target)
  if os.path.exists(_checksum_path(manager, step)):
    shutil.move(_checksum_path(manager, step), target + ".checksum.json")
  message = f"checkpoint {step} in {manager.directory} rejected: {why}; moved to {target}"
  logging.warning(message)
  print(f"gradlab: {message}", flush=True)
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(f"gradlab_reject_{step}")
  manager.reload()


def restore_latest(manager: ocp.CheckpointManager, template: Any) -> tuple[Any, int | None]:
  """Restores the newest intact checkpoint with ``template``'s structure and shardings.

  Returns ``(template, None)`` when there is none. Checkpoints that fail to
  verify or to restore are moved aside (see the module docstring).
  """
  abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, template)
  while (step := manager.latest_step()) is not None:
    why = verify(manager, step)
    if why is None:
      try:
        return manager.restore(step, args=ocp.args.StandardRestore(abstract)), step
      except Exception as e:  # noqa: BLE001 - any failure to read it makes it unusable
        why = f"orbax could not restore it ({type(e).__name__}: {str(e).splitlines()[0][:200]})"
    _reject(manager, step, why)
  return template, None
