"""Side-by-side timing: interleaved repeats, ratios of medians."""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import json
import random
import shlex
import statistics
import sys
import time
from typing import Callable, Mapping, NamedTuple


def interleaved(
  fns: Mapping[str, Callable[[], object]],
  *,
  repeats: int = 30,
  inner: int = 10,
  warmup: int = 3,
  samples: dict[str, list[float]] | None = None,
) -> dict[str, float]:
  """Median seconds per call of each function, timed in alternation so that a
  machine-wide slowdown hits every contender alike. The order is shuffled
  every repeat (seeded): on a CPU the contender that follows another pays
  for the other's leftovers (a torch OpenMP pool still spinning, caches
  filled with other data; measured up to 15%), and a fixed or merely rotated
  order would charge that to the same contender every time. Each ``fn`` must block until its
  result is ready (e.g. end with ``jax.block_until_ready``). ``samples``, when given, receives
  every repeat's seconds per call (for :func:`ratio`'s spread)."""
  for fn in fns.values():
    for _ in range(warmup):
      fn()
  names = list(fns)
  rng = random.Random(0)
  times: dict[str, list[float]] = {k: [] for k in fns}
  for _ in range(repeats):
    rng.shuffle(names)
    for name in names:
      fn = fns[name]
      t0 = time.perf_counter()
      for _ in range(inner):
        fn()
      times[name].append((time.perf_counter() - t0) / inner)
  if samples is not None:
    samples.update(times)
  return {k: statistics.median(v) for k, v in times.items()}


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


def contenders(
  module: str, names, *, rounds: int, args=(), local: Callable[[str], dict]
) -> dict[str, list[dict]]:
  """:func:`contender_processes`, except that the JAX contender alone (its peer not
  installed: no other framework to keep it apart from) runs once, in this process,
  as ``local("jax")`` (the contender's own function, reading the flags set here)."""
  if list(names) == ["jax"]:
    return {"jax": [json.loads(json.dumps(local("jax")))]}
  return contender_processes(module, names, rounds=rounds, args=args)


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


# --- one table of every benchmark (``python -m benchmarks.all``) ---------------------------


class Row(NamedTuple):
  """One figure of a benchmark for :mod:`benchmarks.all`'s table.

  ``measured`` is the figure the benchmark itself prints (a ratio of medians,
  or the median of per-round ratios for the peers in their own processes);
  ``spread`` its min-max over the repeats or rounds (per-repeat ratios);
  ``goal`` the benchmark's own stated goal ("" where it states none); ``note``
  is empty when measured, else why not ("skipped: torch not installed")."""

  name: str
  measured: float = float("nan")
  spread: str = ""
  goal: str = ""
  device: str = ""
  command: str = ""
  note: str = ""


# The peers of the ``bench`` extra: import name -> the name pip installs it by.
OPTIONAL = {
  "torch": "torch",
  "reinmax": "reinmax",
  "pyhessian": "pyhessian",
  "matfree": "matfree",
  "backpack": "backpack-for-pytorch",
  "bitsandbytes": "bitsandbytes",
  "dattri": "dattri",
  "kronfluence": "kronfluence",
}


def missing(*packages: str) -> str | None:
  """The first of ``packages`` (import names) that is not installed, or None."""
  for p in packages:
    if importlib.util.find_spec(p) is None:
      return p
  return None


def skipped(package: str) -> str:
  return f"skipped: {OPTIONAL.get(package, package)} not installed"


def ratio(
  samples: Mapping[str, list[float]], num: str, den: str, *, scale: float = 1.0
) -> tuple[float, str]:
  """``scale * median(num) / median(den)`` of :func:`interleaved`'s ``samples`` (the
  figure the benchmarks print), and the min-max of the per-repeat ratios (one
  repeat times every contender once, in a shuffled order, so its two times are
  paired)."""
  per = [scale * a / b for a, b in zip(samples[num], samples[den])]
  value = scale * statistics.median(samples[num]) / statistics.median(samples[den])
  return value, f"{min(per):.3g}-{max(per):.3g}"


def jax_device() -> str:
  """``jax cpu`` or ``jax gpu (NVIDIA H100 80GB HBM3)``: platform and device kind."""
  import jax

  d = jax.devices()[0]
  return f"jax {d.platform}" + (f" ({d.device_kind})" if d.device_kind != d.platform else "")


def command(module: str, values: Mapping[str, str]) -> str:
  """The command line that runs ``module`` with these flag values."""
  return " ".join([f"python -m {module}", *(shlex.quote(f"--{k}={v}") for k, v in values.items())])


@contextlib.contextmanager
def flag_values(values: Mapping[str, str]):
  """Parse these flag values (``{"width": "64"}``, as ``--width=64`` on a command line)
  for the block, then restore the old ones: how ``measure`` runs a benchmark's own
  code at its quick or GPU sizes in a process that did not parse a command line."""
  from absl import flags

  fv = flags.FLAGS
  if not fv.is_parsed():
    fv.mark_as_parsed()
  old = {k: (fv[k].value, fv[k].present) for k in values}
  try:
    for k, v in values.items():
      fv[k].parse(v)
    yield
  finally:
    for k, (value, present) in old.items():
      fv[k].value, fv[k].present = value, present


MARK = "@benchmark-rows "


def _one_line(e: BaseException) -> str:
  text = str(e).strip().splitlines()
  return f"{type(e).__name__}: {text[-1] if text else ''}".strip().rstrip(":")[:300]


def measure_child(argv: list[str] | None = None) -> None:
  """``python -c "from benchmarks import timing; timing.measure_child()" quick|full DEVICE NAME...``

  Runs ``benchmarks.NAME.measure(quick=, device=)`` for each NAME in turn in this
  process and prints one line ``MARK + json`` per benchmark: its rows, or one row
  that says why there are none (a missing peer package: ``skipped``; anything
  else: ``error`` with the exception's one line). Each benchmark defines absl
  flags of the same names (``--json``, ``--width``, ...), which absl allows once
  per process, so a benchmark's flags and modules are forgotten after it."""
  from absl import flags

  argv = sys.argv[1:] if argv is None else argv
  quick, device, names = argv[0] == "quick", argv[1], argv[2:]
  fv = flags.FLAGS
  if not fv.is_parsed():
    fv.mark_as_parsed()
  for name in names:
    t0, c0 = time.perf_counter(), time.process_time()
    known_flags, known_modules = set(fv), set(sys.modules)
    try:
      rows = list(importlib.import_module(f"benchmarks.{name}").measure(quick=quick, device=device))
      if not rows:
        raise RuntimeError("measure returned no row")
    except ModuleNotFoundError as e:
      root = (e.name or "").partition(".")[0]
      note = skipped(root) if root in OPTIONAL else f"error: {_one_line(e)}"
      rows = [Row("(all)", note=note)]
    except (Exception, SystemExit) as e:  # noqa: BLE001 - one row, and the next benchmark
      rows = [Row("(all)", note=f"error: {_one_line(e)}")]
    finally:
      new_flags = set(fv) - known_flags
      definers = {
        m for m, fl in fv.flags_by_module_dict().items() if new_flags & {f.name for f in fl}
      }
      for flag in new_flags:
        delattr(fv, flag)
      for module in set(sys.modules) - known_modules:
        if module in definers or module.startswith("benchmarks.") and module != __name__:
          del sys.modules[module]
          parent, _, child = module.rpartition(".")
          if hasattr(sys.modules.get(parent), child):  # or `from parent import child` finds it
            delattr(sys.modules[parent], child)
    payload = {
      "benchmark": name,
      "seconds": time.perf_counter() - t0,
      "cpu_seconds": time.process_time() - c0,
      "rows": [r._asdict() for r in rows],
    }
    print(MARK + json.dumps(payload), flush=True)
