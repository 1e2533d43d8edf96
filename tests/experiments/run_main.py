"""Runs an experiment main in a fresh process, as a user would."""

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def run_main(name: str, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
  env = dict(os.environ)
  env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
  return subprocess.run(
    [sys.executable, "-m", f"experiments.{name}", *args],
    cwd=ROOT,
    env=env,
    capture_output=True,
    text=True,
    timeout=timeout,
  )


def assert_flag_error(name: str, workdir, flag: str, message: str) -> None:
  """The main stops with exit 1 and one last stderr line naming the flag,
  before writing any results or metrics."""
  proc = run_main(name, f"--workdir={workdir}", flag, timeout=120)
  assert proc.returncode == 1, proc.stderr[-2000:]
  last = proc.stderr.strip().splitlines()[-1]
  assert last.startswith(f"{name}: ") and message in last, last
  for artefact in ("results.md", "metrics.jsonl", "checkpoints"):
    assert not (workdir / artefact).exists(), artefact
