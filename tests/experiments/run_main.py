"""Runs an experiment main in a fresh process, as a user would."""

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def run_main(name: str, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
  env = dict(os.environ)
  env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
  return subprocess.run([sys.executable, "-m", f"experiments.{name}", *args], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=timeout)
