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
