"""metrics.jsonl: one JSON object per logged step, appended as training goes."""

from __future__ import annotations

import json
import math
import os
from typing import Any, Mapping

import jax
import numpy as np


def to_python(metrics: Mapping[str, Any]) -> dict[str, Any]:
  """Device scalars to plain floats/ints (fetches them from the devices)."""
  out = {}
  for k, v in jax.device_get(dict(metrics)).items():
    v = np.asarray(v)
    out[k] = v.item() if v.ndim == 0 else v.tolist()
  return out


def _nan_to_null(v: Any) -> Any:
  if isinstance(v, float) and not math.isfinite(v):
    return None
  if isinstance(v, list):
    return [_nan_to_null(x) for x in v]
  return v


def _null_to_nan(v: Any) -> Any:
  if v is None:
    return float("nan")
  if isinstance(v, list):
    return [_null_to_nan(x) for x in v]
  return v


def read_metrics(path: str) -> list[dict[str, Any]]:
  """All records of a metrics.jsonl file (an absent file has none).

  The file holds strict JSON: a NaN or Inf metric is written as ``null`` (which
  every JSON reader accepts) and read back here as ``float("nan")``.
  """
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return [{k: _null_to_nan(v) for k, v in json.loads(line).items()} for line in f if line.strip()]


class MetricsWriter:
  """Appends records to ``path``; only process 0 of a pod writes."""

  def __init__(self, path: str):
    self.path = path
    self.enabled = jax.process_index() == 0

  def truncate_after(self, step: int) -> None:
    """Drops records with ``step`` beyond ``step``: a resumed run redoes those
    steps, so it logs them again, and the file reads as one uninterrupted run.
    A torn last line (a kill mid-write) is dropped too."""
    if not self.enabled or not os.path.exists(self.path):
      return
    kept = []
    with open(self.path) as f:
      for line in f:
        try:
          record = json.loads(line)
        except json.JSONDecodeError:
          continue
        if record.get("step", 0) <= step:
          kept.append(line if line.endswith("\n") else line + "\n")
    tmp = self.path + ".tmp"
    with open(tmp, "w") as f:
      f.writelines(kept)
    os.replace(tmp, self.path)

  def write(self, record: Mapping[str, Any]) -> None:
    if not self.enabled:
      return
    with open(self.path, "a") as f:
      line = json.dumps({k: _nan_to_null(v) for k, v in record.items()}, allow_nan=False)
      f.write(line + "\n")
      f.flush()
