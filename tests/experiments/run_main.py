"""Runs an experiment main as a user would: its flags, its workdir, its one-line errors.

``run_main`` calls the main's ``run(config, workdir)`` in this process (the
flags parsed with the same types ``runner`` gives absl), which saves each test
a Python and JAX start-up and shares compiled code between tests. A
``FlagError`` becomes exit code 1 with the main's one-line message on stderr,
exactly as ``runner.main`` prints it. ``run_process`` starts a real process,
for the tests that need one (SIGKILL, the absl entry point itself).
"""

import contextlib
import dataclasses
import importlib
import io
import os
import subprocess
import sys
import typing

from experiments import runner

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def run_process(name: str, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
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


def parse_flags(config_cls: type, args) -> tuple[dict, str | None]:
  """``--name=value`` strings to config overrides (and the workdir)."""
  hints = typing.get_type_hints(config_cls)
  fields = {f.name for f in dataclasses.fields(config_cls)}
  overrides, workdir = {}, None
  for arg in args:
    name, _, value = arg[2:].partition("=")
    if name == "workdir":
      workdir = value
      continue
    if name not in fields:
      raise ValueError(f"unknown flag --{name} for {config_cls.__module__}")
    kind = runner._base(hints[name])  # noqa: SLF001 - the runner's own type rule
    if typing.get_origin(kind) is list:
      overrides[name] = [v for v in value.split(",") if v] if value else []
    elif kind is bool:
      overrides[name] = value.lower() in ("true", "1", "")
    else:
      overrides[name] = kind(value)
  return overrides, workdir


def run_main(name: str, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
  """The main ``name`` with ``args``, in process; the result as a process would give it."""
  del timeout
  module = importlib.import_module(f"experiments.{name}")
  overrides, workdir = parse_flags(module.Config, args)
  out = io.StringIO()
  try:
    with contextlib.redirect_stdout(out):
      module.run(module.Config(**overrides), workdir)
  except runner.USER_ERRORS as e:
    return subprocess.CompletedProcess(args, 1, out.getvalue(), f"{name}: {e}\n")
  return subprocess.CompletedProcess(args, 0, out.getvalue(), "")


def assert_flag_error(name: str, workdir, flag: str, message: str) -> None:
  """The main stops with exit 1 and one last stderr line naming the flag,
  before writing anything: no results, metrics, checkpoints or config.json."""
  proc = run_main(name, f"--workdir={workdir}", flag)
  assert proc.returncode == 1, proc.stderr[-2000:]
  last = proc.stderr.strip().splitlines()[-1]
  assert last.startswith(f"{name}: ") and message in last, last
  for artefact in ("results.md", "metrics.jsonl", "checkpoints", "config.json"):
    assert not (workdir / artefact).exists(), artefact
