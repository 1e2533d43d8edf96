"""Side-by-side timing: interleaved repeats, ratios of medians."""

from __future__ import annotations

import json
import random
import statistics
import time
from typing import Callable, Mapping


def interleaved(
  fns: Mapping[str, Callable[[], object]], *, repeats: int = 30, inner: int = 10, warmup: int = 3
) -> dict[str, float]:
  """Median seconds per call of each function, timed in alternation so that a
  machine-wide slowdown hits every contender alike. The order is shuffled
  every repeat (seeded): on a CPU the contender that follows another pays
  for the other's leftovers (a torch OpenMP pool still spinning, caches
  filled with other data; measured up to 15%), and a fixed or merely rotated
  order would charge that to the same contender every time. Each ``fn`` must block until its
  result is ready (e.g. end with ``jax.block_until_ready``)."""
  for fn in fns.values():
    for _ in range(warmup):
      fn()
  names = list(fns)
  rng = random.Random(0)
  samples: dict[str, list[float]] = {k: [] for k in fns}
  for _ in range(repeats):
    rng.shuffle(names)
    for name in names:
      fn = fns[name]
      t0 = time.perf_counter()
      for _ in range(inner):
        fn()
      samples[name].append((time.perf_counter() - t0) / inner)
  return {k: statistics.median(v) for k, v in samples.items()}


def report(title: str, rows: list[dict], json_path: str | None = None) -> None:
  cols = list(dict.fromkeys(k for r in rows for k in r))
  print(f"\n{title}\n")
  print("| " + " | ".join(cols) + " |")
  print("|" + "---|" * len(cols))
  for r in rows:
    print(
      "| "
      + " | ".join(
        f"{r[c]:.4g}" if isinstance(r.get(c), float) else str(r.get(c, "")) for c in cols
      )
      + " |"
    )
  if json_path:
    with open(json_path, "w") as f:
      json.dump({"title": title, "rows": rows}, f, indent=2)


def contender_processes(
  module: str, names, *, rounds: int, args=(), timeout: float = 1800
) -> dict[str, list[dict]]:
  """Each contender in its own fresh process, ``rounds`` times, alternating A B, B A, ...

  Runs ``python -m {module} --contender=NAME *args``; the process prints one JSON
  object as its last line of stdout. Returns ``{name: [that object per round]}``.
  Frameworks that share a process disturb each other (thread pools that keep
  spinning, allocator state: a PyHessian/gradlab ratio of 1.4x, 36x and 70x in
  three shared-process runs), so cross-framework contenders never share one.
  """
  import os
  import subprocess
  import sys

  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env = dict(os.environ)
  env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
  out: dict[str, list[dict]] = {n: [] for n in names}
  for r in range(rounds):
    order = list(names) if r % 2 == 0 else list(reversed(names))
    for name in order:
      proc = subprocess.run(
        [sys.executable, "-m", module, f"--contender={name}", *args],
        capture_output=True, text=True, cwd=root, env=env, timeout=timeout, check=False,
      )  # fmt: skip
      if proc.returncode:
        raise RuntimeError(f"{module} --contender={name} failed:\n{proc.stderr[-3000:]}")
      out[name].append(json.loads(proc.stdout.strip().splitlines()[-1]))
  return out


def per_round(runs: dict[str, list[dict]], field: str = "ms") -> dict[str, list[float]]:
  """``{label: [value per round]}`` from :func:`contender_processes`' output, every
  process's ``field`` dict merged (each contender process reports its own labels)."""
  out: dict[str, list[float]] = {}
  for rounds in runs.values():
    for r in rounds:
      for label, value in r.get(field, {}).items():
        out.setdefault(label, []).append(value)
  return out


def paired(numerators, denominators) -> dict[str, float | str]:
  """Per-round ratios ``numerators[i] / denominators[i]``: their median and spread."""
  ratios = [a / b for a, b in zip(numerators, denominators)]
  return {"median": statistics.median(ratios), "spread": f"{min(ratios):.3g}-{max(ratios):.3g}"}
