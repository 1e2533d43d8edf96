"""How every experiment main is built: a ``Config``, ``run(config, workdir)``, absl flags.

Each main defines a frozen dataclass ``Config`` (one field per flag, with its
default and help text via :func:`option`) and a function
``run(config, workdir)`` that validates the config (a bad value raises
``flag_checks.FlagError`` naming the flag, before any compute and before
anything is written), runs, and writes into ``workdir``. Its absl entry point
is one line::

  if __name__ == "__main__":
    runner.main(run, Config, prog="train_classifier", workdir="runs/train_classifier")

which defines one flag per field (so ``--help`` lists them), builds the
config from the command line, holds the workdir's lock while it runs (a
second run on the same workdir is refused, naming the holder) and turns a
``FlagError``, a divergence (``train.NonFiniteError``), a busy workdir or a
mismatched restart into one line on stderr and exit code 1. A run told to
stop (a scheduler's SIGTERM, a Ctrl-C's SIGINT) while it trains finishes the
step it is in, saves it and verifies the checkpoint (``train.fit``; on several
processes every process saves the same step), prints one line on stderr::

  train_classifier: preempted by SIGTERM at step 2345: checkpoint 2345 in
  /.../checkpoints saved and verified; run again with the same workdir to resume

and exits with ``128 +`` the signal's number (``train.EXIT_CODES``): **143 for
SIGTERM, 130 for SIGINT**, the codes a shell reports for a process that signal
killed; started again with the same ``--workdir`` it resumes there. (Outside
a training loop one process's signals keep their default action; BUILD.md's
"Preemption" says what several processes do.) Tests call ``run`` in process
with a small config.
Flags are defined only when a module runs as a main, so any number of mains
can be imported into one process.
"""

from __future__ import annotations

import dataclasses
import sys
import types
import typing
from collections.abc import Callable
from typing import Any

from absl import app, flags

from experiments import flag_checks
from gradlab import train

# What a main reports in one line (exit code 1) instead of a traceback: a bad
# flag, a run that diverged, a workdir another run holds, a restart whose flags
# would corrupt the run's records.
USER_ERRORS = (
  flag_checks.FlagError,
  train.NonFiniteError,
  train.WorkdirBusy,
  train.RestartMismatch,
)


def option(default: Any, help: str) -> Any:  # noqa: A002 - absl's word
  """A config field with its flag's help text (lists get a fresh copy per config)."""
  if isinstance(default, (list, tuple)):
    return dataclasses.field(default_factory=lambda: list(default), metadata={"help": help})
  return dataclasses.field(default=default, metadata={"help": help})


_DEFINE = {
  int: flags.DEFINE_integer,
  float: flags.DEFINE_float,
  str: flags.DEFINE_string,
  bool: flags.DEFINE_bool,
}


def _base(kind: Any) -> Any:
  """``T`` for ``T | None``."""
  if isinstance(kind, types.UnionType) or typing.get_origin(kind) is typing.Union:
    (kind,) = [k for k in typing.get_args(kind) if k is not type(None)]
  return kind


def define_flags(config_cls: type, *, workdir: str) -> None:
  """One absl flag per field of ``config_cls``, plus ``--workdir``."""
  hints = typing.get_type_hints(config_cls)
  flags.DEFINE_string("workdir", workdir, "Output and checkpoint directory.")
  for f in dataclasses.fields(config_cls):
    kind = _base(hints[f.name])
    default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
    help_text = f.metadata.get("help", f.name)
    if typing.get_origin(kind) is list:
      flags.DEFINE_list(f.name, [str(v) for v in default], help_text)
    else:
      _DEFINE[kind](f.name, default, help_text)


def config_from_flags(config_cls: type) -> Any:
  hints = typing.get_type_hints(config_cls)
  values = {}
  for f in dataclasses.fields(config_cls):
    value = flags.FLAGS[f.name].value
    if typing.get_origin(_base(hints[f.name])) is list:
      value = list(value)
    values[f.name] = value
  return config_cls(**values)


def define_distributed_flags() -> None:
  """The multi-process flags every main takes (see :func:`initialize_distributed`)."""
  flags.DEFINE_bool(
    "distributed",
    False,
    "Call jax.distributed.initialize() first (TPU pods, SLURM: auto-detected).",
  )
  flags.DEFINE_string(
    "coordinator_address", None, "host:port of process 0; with --num_processes and --process_id."
  )
  flags.DEFINE_integer("num_processes", None, "Processes in the run.")
  flags.DEFINE_integer("process_id", None, "This process's index, 0..num_processes-1.")


def initialize_distributed(
  *,
  distributed: bool,
  coordinator_address: str | None,
  num_processes: int | None,
  process_id: int | None,
) -> None:
  """``jax.distributed.initialize`` when asked, before anything touches a device.

  With no address JAX detects the cluster (Cloud TPU, SLURM, ...); with one
  (``python -m gradlab.launch`` passes it) the three flags are passed on. On a
  CPU the processes all-reduce through gloo.
  """
  given = [v is not None for v in (coordinator_address, num_processes, process_id)]
  if any(given) and not all(given):
    raise flag_checks.FlagError(
      "--coordinator_address, --num_processes and --process_id must be given together, got "
      f"{coordinator_address!r}, {num_processes!r}, {process_id!r}"
    )
  if not (distributed or all(given)):
    return
  import jax  # noqa: PLC0415 - the backend must not start before this

  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  if all(given):
    jax.distributed.initialize(coordinator_address, num_processes, process_id)
  else:
    jax.distributed.initialize()


def main(run: Callable[[Any, str], Any], config_cls: type, *, prog: str, workdir: str) -> None:
  """Defines the flags and runs ``run(config, workdir)`` under ``absl.app``."""
  define_flags(config_cls, workdir=workdir)
  define_distributed_flags()

  def absl_main(argv):
    if len(argv) > 1:
      sys.exit(f"{prog}: unexpected arguments {argv[1:]}; flags are --name=value")
    f = flags.FLAGS
    try:
      initialize_distributed(
        distributed=f.distributed,
        coordinator_address=f.coordinator_address,
        num_processes=f.num_processes,
        process_id=f.process_id,
      )
    except flag_checks.FlagError as e:
      flag_checks.exit_on_flag_error(prog, e)
    workdir = flags.FLAGS.workdir
    try:
      flag_checks.check_writable(workdir)
      with train.workdir_lock(workdir):  # one run per workdir, for the whole main
        run(config_from_flags(config_cls), workdir)
    except USER_ERRORS as e:
      flag_checks.exit_on_flag_error(prog, e)
    except train.Preempted as e:  # its step is saved: one line and the signal's code
      print(f"{prog}: {e}", file=sys.stderr, flush=True)
      sys.exit(e.exit_code)

  app.run(absl_main)
