"""Flag validation shared by the experiment mains.

A bad value stops the run before any compute with one line on stderr that
names the flag, e.g. ``train_classifier: --learning_rate must be > 0, got -1.0``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
import tempfile
from typing import Any, Iterable, Mapping

import jax

from gradlab.train import atomic


class FlagError(ValueError):
  """A flag holds a value the experiment cannot run with."""


def require(condition: bool, flag: str, expected: str, value: Any) -> None:
  if not condition:
    raise FlagError(f"--{flag} must be {expected}, got {value!r}")


def check_config(config: Any, *, may_be_empty: Iterable[str] = ()) -> None:
  """What holds for every main's config: list flags are not empty (an empty
  list would run nothing and exit 0 with an empty table), float flags are
  finite, integer flags are Python or NumPy integers."""
  may_be_empty = set(may_be_empty)
  for f in dataclasses.fields(config):
    value = getattr(config, f.name)
    if isinstance(value, (list, tuple)):
      require(len(value) > 0 or f.name in may_be_empty, f.name, "a non-empty list", "")
    elif isinstance(value, float):
      require(math.isfinite(value), f.name, "a finite number", value)
  if hasattr(config, "seed"):
    non_negative("seed", config.seed)


def positive(flag: str, value: float) -> None:
  require(value > 0, flag, "> 0", value)


def non_negative(flag: str, value: float) -> None:
  require(value >= 0, flag, ">= 0", value)


def one_of(flag: str, value: Any, choices: Iterable[Any]) -> None:
  choices = tuple(choices)
  require(value in choices, flag, f"one of {', '.join(map(str, choices))}", value)


def number_list(
  flag: str,
  values: Iterable[str],
  *,
  expected: str,
  kind: type = float,
  valid: Any = None,
  min_count: int = 1,
) -> list:
  """Parses a comma-separated list flag; ``expected`` describes a valid one."""
  values = list(values)
  try:
    out = [kind(v) for v in values]
  except ValueError:
    out = []
  ok = (
    len(out) >= min_count
    and all(math.isfinite(v) for v in out)
    and (valid is None or all(valid(v) for v in out))
  )
  require(ok, flag, expected, ",".join(values))
  return out


def check_same_run(
  workdir: str, config: Mapping[str, Any], *, may_change: Iterable[str] = ()
) -> None:
  """Records ``config`` in ``workdir/config.json``, or, when a run is already
  there, refuses flags that would make resuming it meaningless."""
  path = os.path.join(workdir, "config.json")
  may_change = set(may_change)
  check_writable(workdir)
  if os.path.exists(path):
    with open(path) as f:
      old = json.load(f)
    changed = sorted(
      k for k in set(old) | set(config) if k not in may_change and old.get(k) != config.get(k)
    )
    if changed:
      k = changed[0]
      raise FlagError(
        f"--{k} is {config.get(k)!r} but the run in --workdir={workdir} used "
        f"{old.get(k)!r}; use a new --workdir"
      )
  write_json_atomically(path, dict(config))


def check_writable(workdir: str) -> None:
  """Creates ``workdir`` if needed; a FlagError naming --workdir when it cannot be written."""
  try:
    os.makedirs(workdir, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=workdir, prefix=".writable-"):
      pass
  except OSError as e:
    raise FlagError(
      f"--workdir must be a writable directory, got {workdir!r} ({e.strerror})"
    ) from None


def write_json_atomically(path: str, obj: Any) -> None:
  """Writes ``obj`` to ``path`` through a temporary file and a rename: a reader
  (or a run killed mid-write) sees the old file or the new one, never half.
  On a multi-process run only process 0 writes."""
  if jax.process_index() != 0:
    return
  atomic.write_json_atomically(path, obj, indent=2, sort_keys=True)


def exit_on_flag_error(prog: str, error: Exception) -> None:
  sys.exit(f"{prog}: {error}")
