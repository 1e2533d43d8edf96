"""Starts N local JAX processes that form one multi-controller run, as a pod would.

  python -m gradlab.launch --num_processes=2 --devices_per_process=4 -- \\
      experiments.train_classifier --workdir=/tmp/run --num_steps=200

Each process runs ``python -m MODULE ARGS --coordinator_address=127.0.0.1:PORT
--num_processes=N --process_id=i``, so the main calls
``jax.distributed.initialize`` with them (on a CPU with the gloo collectives):
the processes see N x devices_per_process devices and all-reduce across
processes for real, over loopback. This is the pod path of a Cloud TPU slice or
a SLURM job (see BUILD.md), on one machine. Exit code: the first non-zero one
of the processes (a signal as 128 + its number), else 0.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def launch(
  module: str,
  args: list[str],
  *,
  num_processes: int,
  devices_per_process: int = 0,
  port: int = 0,
  env: dict | None = None,
  timeout: float | None = None,
  capture: bool = False,
) -> list[subprocess.CompletedProcess]:
  """Runs ``python -m module args`` as ``num_processes`` cooperating processes."""
  if num_processes < 1:
    raise ValueError(f"num_processes: expected an integer >= 1, got {num_processes}")
  port = port or free_port()
  base = dict(os.environ if env is None else env)
  if devices_per_process:
    flags = [
      f
      for f in base.get("XLA_FLAGS", "").split()
      if not f.startswith("--xla_force_host_platform_device_count")
    ]
    base["XLA_FLAGS"] = " ".join(
      flags + [f"--xla_force_host_platform_device_count={devices_per_process}"]
    )
  procs = []
  for i in range(num_processes):
    cmd = [
      sys.executable,
      "-m",
      module,
      *args,
      f"--coordinator_address=127.0.0.1:{port}",
      f"--num_processes={num_processes}",
      f"--process_id={i}",
    ]
    out = subprocess.PIPE if capture else None
    procs.append((cmd, subprocess.Popen(cmd, env=base, stdout=out, stderr=out, text=True)))
  results = []
  for cmd, p in procs:
    try:
      stdout, stderr = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
      for _, q in procs:
        q.kill()
      raise
    results.append(subprocess.CompletedProcess(cmd, p.returncode, stdout, stderr))
  return results


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--num_processes", type=int, required=True)
  parser.add_argument(
    "--devices_per_process",
    type=int,
    default=0,
    help="simulated CPU devices per process (0: leave XLA_FLAGS alone)",
  )
  parser.add_argument("--port", type=int, default=0, help="coordinator port (0: a free one)")
  parser.add_argument("module", help="the main to run, e.g. experiments.train_classifier")
  parser.add_argument("args", nargs=argparse.REMAINDER, help="its flags")
  ns = parser.parse_args(argv)
  results = launch(
    ns.module,
    ns.args,
    num_processes=ns.num_processes,
    devices_per_process=ns.devices_per_process,
    port=ns.port,
  )
  codes = [r.returncode for r in results]
  bad = [c for c in codes if c != 0]
  return 0 if not bad else (128 - bad[0] if bad[0] < 0 else bad[0])


if __name__ == "__main__":
  sys.exit(main())
