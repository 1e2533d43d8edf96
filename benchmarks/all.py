r"""Every benchmark's ratios in one table: the GPU figures in one command.

  bash benchmarks/gpu.sh                     # the bench extra with CUDA wheels, then:
  python -m benchmarks.all --device=gpu      # -> benchmarks/results/gpu.md (and printed)
  python -m benchmarks.all --quick           # tiny sizes on the CPU: every code path, in seconds

Each module of ``benchmarks/`` has ``measure(quick, device) -> list[timing.Row]``,
which runs the benchmark's own code (at the sizes of its own command, or with
``quick`` at tiny sizes and one or two repeats) and returns its named ratios
with their spread, so nothing here parses a benchmark's printout; each
benchmark's own command line is unchanged. Every benchmark runs in a fresh
process (absl allows each flag name once per process, and one benchmark's
device memory, thread pools, hang or crash must not reach the next; under
``--quick`` they share one process, which keeps the test short), and the
PyTorch peers still run in processes of their own, alternating with gradlab's,
as each benchmark's command runs them (``timing.contender_processes``). A peer
that is not installed gives a row "skipped: <package> not installed"; a
benchmark that raises, dies or outlasts its time gives a row with its one-line
error, and the next one runs. The children's output goes to ``--out`` with
``.log`` appended.

The table (``--out``, also printed) has one row per figure: benchmark, ratio,
measured (the figure the benchmark prints: a ratio of medians of interleaved
repeats, or the median of per-round ratios for contenders in their own
processes), spread (the min-max of the per-repeat or per-round ratios), goal
(the benchmark's own stated goal; empty where it states none), device, and the
command that measures that figure alone. Above it: the device
(``jax.devices()[0].device_kind``), the versions, and each benchmark's seconds.

``--device=gpu`` refuses to start where JAX has no GPU backend. It runs the
PyTorch side on CUDA where the benchmark can place it (PyHessian, the dataset
trace, the official ReinMax, BackPACK; dattri and kronfluence stay on the CPU,
as their benchmarks fix them, and the device column says so), uses fewer
process rounds for the peers (2; 1 for dattri and kronfluence) to keep the
whole run within ``--budget_s`` (450 s: the issue's 8 minutes with room for
the start), runs the benchmarks in the order of the issue's list so a spent
budget drops the least wanted, and sets ``XLA_PYTHON_CLIENT_PREALLOCATE=false``
unless it is set: a benchmark's process and its contenders' share the GPU, and
JAX's default would give the first 75% of its memory.
"""

from __future__ import annotations

import datetime
import importlib.metadata
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time

from absl import app, flags

from benchmarks import timing

# name -> its own time limit on a GPU (seconds). The order is the issue's: the
# transforms and the 8-bit step, the train step, the HVP, the peers, then the rest.
BENCHMARKS = {
  "transform_overhead": 150,
  "train_step_overhead": 60,
  "hvp_cost": 60,
  "trace_peers": 90,
  "reinmax_vae_step": 90,
  "attribution_peers": 150,
  "gradstats_overhead": 90,
  "kfac_peers": 150,
  "kfac_scores_peers": 180,
  "dataset_trace_peers": 90,
  "quantizer_speed": 60,
  "trace_memory": 60,
  "mfac_step": 90,
  "policy_overhead": 90,
  "attribution_scaling": 150,
}

COLUMNS = ("benchmark", "ratio", "measured", "spread", "goal", "device", "command")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_CHILD = "from benchmarks import timing; timing.measure_child()"
# The versions in the table's head: distributions, those not installed said so.
_VERSIONS = (
  "jax",
  "jaxlib",
  "jax-cuda12-plugin",
  "jax-cuda13-plugin",
  "flax",
  "optax",
  "numpy",
  *dict.fromkeys(timing.OPTIONAL.values()),
)

_DEVICE = flags.DEFINE_enum("device", "cpu", ["cpu", "gpu"], "Where JAX (and torch) run.")
_QUICK = flags.DEFINE_bool("quick", False, "Tiny sizes, few repeats: the code paths only.")
_OUT = flags.DEFINE_string(
  "out",
  None,
  "The table (default benchmarks/results/gpu.md, or runs/benchmarks/DEVICE[-quick].md).",
)
_ONLY = flags.DEFINE_list("only", [], "Only these benchmarks (default: all).")
_BUDGET = flags.DEFINE_integer("budget_s", 450, "Seconds for the whole run; later ones are cut.")


def default_out(device: str, quick: bool) -> str:
  if device == "gpu" and not quick:
    return os.path.join(ROOT, "benchmarks", "results", "gpu.md")
  return os.path.join(ROOT, "runs", "benchmarks", f"{device}{'-quick' if quick else ''}.md")


def _environment(device: str) -> tuple[dict, str, list[str]]:
  """The children's environment, this device's name, and the settings it changed.
  Exits with one line where ``device`` is gpu and JAX has none."""
  env, changed = dict(os.environ), []
  if device == "gpu":
    if "XLA_PYTHON_CLIENT_PREALLOCATE" not in env:
      env["XLA_PYTHON_CLIENT_PREALLOCATE"] = "false"
      changed.append("XLA_PYTHON_CLIENT_PREALLOCATE=false")
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", env["XLA_PYTHON_CLIENT_PREALLOCATE"])
  else:
    env["JAX_PLATFORMS"] = "cpu"
    changed.append("JAX_PLATFORMS=cpu")
    os.environ.setdefault("JAX_PLATFORMS", "cpu")  # this process too, if JAX is not started
  import jax

  try:
    devices = jax.devices(device)
  except RuntimeError as e:
    if device != "gpu":
      raise
    sys.exit(
      f"benchmarks.all: --device=gpu, but JAX has no GPU backend here ({str(e).splitlines()[0]}); "
      "install jax[cuda12] (bash benchmarks/gpu.sh) or use --device=cpu"
    )
  env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
  env.setdefault("PYTHONUNBUFFERED", "1")
  return env, f"{devices[0].device_kind} ({len(devices)} x {devices[0].platform})", changed


def _versions() -> str:
  out = [f"python {platform.python_version()}"]
  for dist in _VERSIONS:
    try:
      out.append(f"{dist} {importlib.metadata.version(dist)}")
    except importlib.metadata.PackageNotFoundError:
      if not dist.startswith("jax-cuda"):
        out.append(f"{dist} not installed")
  return ", ".join(out)


def _start(names, *, quick, device, env) -> subprocess.Popen:
  """A child process that measures ``names`` in turn (``timing.measure_child``), its
  output into files (a pipe nobody reads while another child is waited for would
  stall it)."""
  cmd = [sys.executable, "-c", _CHILD, "quick" if quick else "full", device, *names]
  return _popen(cmd, env=env)


def _popen(cmd, *, env=None) -> subprocess.Popen:
  out, err = tempfile.TemporaryFile("w+"), tempfile.TemporaryFile("w+")
  proc = subprocess.Popen(
    cmd,
    cwd=ROOT,
    env=env,
    stdout=out,
    stderr=err,
    text=True,
    start_new_session=True,  # its contenders too are ended on a time-out
  )
  proc.files = (out, err)
  return proc


def _read_and_close(files) -> list[str]:
  texts = []
  for f in files:
    f.seek(0)
    texts.append(f.read())
    f.close()
  return texts


def _finish(proc, names, *, t0, deadline, log) -> dict[str, dict]:
  """``{name: {"rows": [...], "seconds": s}}`` from ``proc`` (started by ``_popen``), with
  an error row for each name it reported nothing for (it died, or was still running
  at ``deadline``)."""
  try:
    proc.wait(timeout=max(0.0, deadline - time.perf_counter()))
    why = None if proc.returncode == 0 else f"the process exited with {proc.returncode}"
  except subprocess.TimeoutExpired:
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    why = f"timed out after {deadline - t0:.0f} s"
  stdout, stderr = _read_and_close(proc.files)
  log.write(f"===== {' '.join(names)}\n{stdout}\n----- stderr\n{stderr}\n")
  log.flush()
  results = {}
  for line in stdout.splitlines():
    if line.startswith(timing.MARK):
      r = json.loads(line[len(timing.MARK) :])
      results[r["benchmark"]] = r
  last = next((ln for ln in reversed(stderr.strip().splitlines()) if ln.strip()), "")
  for name in names:
    if name not in results:
      note = f"error: {why or 'no rows reported'}" + (f": {last[:200]}" if last else "")
      results[name] = {
        "rows": [timing.Row("(all)", note=note)._asdict()],
        "seconds": time.perf_counter() - t0,
      }
  return results


def _cell(value) -> str:
  if isinstance(value, float):
    return f"{value:.4g}"
  return str(value).replace("|", "\\|")


def _table(results: dict, *, names, header: list[str]) -> str:
  lines = [*header, "", "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
  for name in names:
    for r in results[name]["rows"]:
      measured = r["note"] or r["measured"]
      cells = (name, r["name"], measured, r["spread"], r["goal"], r["device"], r["command"])
      lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
  return "\n".join(lines) + "\n"


def run(*, device: str, quick: bool, out: str, names=tuple(BENCHMARKS), budget_s: float = 450):
  """Measure ``names``, write the table to ``out`` (and ``out + ".log"``); returns the
  table and ``{name: {"rows": [Row as dict], "seconds": s}}``. Each benchmark has a
  process of its own, one after the other; under ``quick`` two processes at once
  (the code paths, not timings) share them."""
  env, device_name, changed = _environment(device)
  names = list(names)
  os.makedirs(os.path.dirname(os.path.abspath(out)) or ".", exist_ok=True)
  results, start = {}, time.perf_counter()
  with open(out + ".log", "w") as log:
    if quick:
      groups = [g for g in (names[0::2], names[1::2]) if g]
      procs = [_start(g, quick=True, device=device, env=env) for g in groups]
      for proc, group in zip(procs, groups):
        results.update(_finish(proc, group, t0=start, deadline=start + budget_s, log=log))
    for name in [] if quick else names:
      t0 = time.perf_counter()
      if t0 - start > budget_s - 1:
        note = f"not run: the --budget_s={budget_s:g} s was spent"
        results[name] = {"rows": [timing.Row("(all)", note=note)._asdict()], "seconds": 0.0}
        continue
      proc = _start([name], quick=False, device=device, env=env)
      deadline = min(start + budget_s, t0 + BENCHMARKS[name])
      results.update(_finish(proc, [name], t0=t0, deadline=deadline, log=log))
      print(
        f"benchmarks.all: {name}: {results[name]['seconds']:.1f} s", file=sys.stderr, flush=True
      )
  argv = ["python -m benchmarks.all", f"--device={device}", *(["--quick"] if quick else [])]
  header = [
    f"# gradlab benchmarks, every ratio ({'quick: tiny sizes, ' if quick else ''}{device})",
    "",
    f"- device: {device_name} (`jax.devices()[0].device_kind`)",
    f"- command: `{' '.join(argv)}`"
    + (f"; set for the benchmarks: {', '.join(changed)}" if changed else ""),
    f"- versions: {_versions()}",
    f"- date: {datetime.datetime.now().isoformat(timespec='seconds')}, "
    f"{time.perf_counter() - start:.0f} s in all ("
    + ", ".join(f"{n} {results[n]['seconds']:.0f} s" for n in names)
    + ")",
  ]
  text = _table(results, names=names, header=header)
  with open(out, "w") as f:
    f.write(text)
  return text, results


def main(argv):
  if len(argv) > 1:
    sys.exit(f"benchmarks.all: unexpected arguments {argv[1:]}; flags are --name=value")
  names = _ONLY.value or list(BENCHMARKS)
  for n in names:
    if n not in BENCHMARKS:
      sys.exit(f"benchmarks.all: --only must name benchmarks of {', '.join(BENCHMARKS)}, got {n!r}")
  if _BUDGET.value < 1:
    sys.exit(f"benchmarks.all: --budget_s must be >= 1, got {_BUDGET.value}")
  out = _OUT.value or default_out(_DEVICE.value, _QUICK.value)
  text, _ = run(
    device=_DEVICE.value, quick=_QUICK.value, out=out, names=names, budget_s=_BUDGET.value
  )
  print(text)
  print(f"wrote {out}", file=sys.stderr)


if __name__ == "__main__":
  app.run(main)
