"""Results tables (results.md and results.csv) and curves (PNG) for the mains.

Every file is written to a temporary name and renamed into place, so a reader
(or a run killed mid-write) sees the old file or the new one, never a torn
one; on a pod only process 0 writes.
"""

from __future__ import annotations

import csv
import json
import os
from typing import Any, Callable, Mapping, Sequence

import jax
import matplotlib
import numpy as np

from gradlab.train.atomic import atomic_open

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def verdict(z: float) -> str:
  """The verdict on a claimed positive difference, from its z-score: "agrees" at
  z >= 2, "contradicts" at z <= -2, "inconclusive" between and for a z that is
  not finite. (A claim of a negative difference passes ``-z``.)"""
  if not np.isfinite(z) or abs(z) < 2:
    return "inconclusive"
  return "agrees" if z > 0 else "contradicts"


def _fmt(v: Any) -> str:
  if isinstance(v, float):
    return f"{v:.4g}"
  return str(v)


def write_table(
  workdir: str,
  rows: Sequence[Mapping[str, Any]],
  *,
  title: str,
  notes: str = "",
  name: str = "results",
) -> None:
  """Writes ``rows`` as ``{name}.md`` (with a title and notes) and ``{name}.csv``."""
  columns = list(dict.fromkeys(k for row in rows for k in row))
  lines = [f"# {title}", ""]
  if notes:
    lines += [notes.strip(), ""]
  lines.append("| " + " | ".join(columns) + " |")
  lines.append("|" + "---|" * len(columns))
  for row in rows:
    lines.append("| " + " | ".join(_fmt(row.get(c, "")) for c in columns) + " |")
  if jax.process_index() != 0:
    return
  with atomic_open(os.path.join(workdir, f"{name}.md")) as f:
    f.write("\n".join(lines) + "\n")
  with atomic_open(os.path.join(workdir, f"{name}.csv"), newline="") as f:
    writer = csv.DictWriter(f, fieldnames=columns)
    writer.writeheader()
    writer.writerows(rows)


def plot_curves(
  path: str,
  curves: Mapping[str, tuple[Sequence[float], Sequence[float]]],
  *,
  xlabel: str,
  ylabel: str,
  title: str = "",
  logy: bool = False,
) -> None:
  """One line per ``name: (xs, ys)``, saved as a PNG."""
  fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
  for name, (xs, ys) in curves.items():
    ax.plot(xs, ys, label=name)
  ax.set_xlabel(xlabel)
  ax.set_ylabel(ylabel)
  if logy:
    ax.set_yscale("log")
  if title:
    ax.set_title(title)
  ax.grid(alpha=0.3)
  ax.legend()
  fig.tight_layout()
  save_figure(fig, path)


def save_figure(fig, path: str) -> None:
  """``fig`` as a PNG at ``path``, atomically, by process 0 only; closes it."""
  if jax.process_index() == 0:
    with atomic_open(path, "wb") as f:
      fig.savefig(f, format="png")
  plt.close(fig)


def cached_unit(path: str, compute: Callable[[], Any]) -> tuple[Any, bool]:
  """``(result, reused)``: the JSON at ``path`` if a finished unit left it there,
  else ``compute()``, written atomically (a kill mid-write leaves no half file)."""
  if os.path.exists(path):
    with open(path) as f:
      return json.load(f), True
  result = compute()
  if jax.process_index() == 0:
    with atomic_open(path) as f:
      json.dump(result, f)
  return result, False
