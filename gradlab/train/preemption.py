"""Preemption: a run told to stop (SIGTERM, SIGINT) stops at a step boundary with that step saved.

Schedulers stop a job with SIGTERM and, after a grace period, SIGKILL (Cloud
TPU maintenance, SLURM's time limit and requeue, spot and preemptible VMs,
Kubernetes); a user stops one with Ctrl-C (SIGINT). Inside
:func:`stop_on_signals` neither kills the process: the signal is recorded, the
loop reads that record at its next step boundary (``should_stop()``, one
Python bool read per step), saves a checkpoint of the step it has just
finished, waits for it and verifies it, and raises :class:`Preempted`, which
``experiments.runner.main`` turns into one line on stderr and the exit code
``128 + the signal's number`` (:data:`EXIT_CODES`: 143 for SIGTERM, 130 for
SIGINT), as a shell reports a process killed by that signal.

The handlers only record the first signal (no work in a handler); later
signals are ignored, so a second SIGTERM during the save cannot interrupt it.
SIGKILL, which nothing can catch, stops the save where it is: orbax writes a
checkpoint into a temporary directory and renames it when it is complete, and
``checkpoint.save`` records the checksum only after that, so a save cut short
is either invisible to orbax or rejected by ``checkpoint.restore_latest``, and
the run resumes from the previous checkpoint, intact and verified. The
previous handlers are restored when the block ends.

**Several processes** (``jax.distributed.initialize``) must all save the same
step: orbax writes a checkpoint cooperatively, and a process that stopped alone
would leave the others waiting in a collective. JAX's preemption sync manager
(openxla/xla, ``xla/tsl/distributed_runtime/preemption/preemption_sync_manager.cc``,
behind ``jax.experimental.multihost_utils.reached_preemption_sync_point`` and
orbax's ``CheckpointManager.reached_preemption``) agrees on one: at
``initialize`` it installs its own SIGTERM handler
(``preemption_notifier.cc``, polled once a second); a notice on any process
reaches every process through the coordination service, each reports the last
boundary it passed, and all stop at the boundary after the furthest one. There
``should_stop()`` calls ``reached_preemption_sync_point(n)`` with a count
``n`` of the boundaries this process has passed (every process passes the same
ones); the SIGTERM handler stays JAX's, and SIGINT is recorded and forwarded to
it as a SIGTERM to this process. A notice that comes after the last boundary
of a run is not acted on: the run ends normally.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Callable, Iterator

import jax
from absl import logging
from jax.experimental import multihost_utils

# The exit code of a preempted run: 128 + the signal's number, the code a shell
# gives a process that signal killed (so a scheduler reads it as that signal).
EXIT_CODES = {signal.SIGTERM: 128 + signal.SIGTERM, signal.SIGINT: 128 + signal.SIGINT}

_SIGNALS = (signal.SIGTERM, signal.SIGINT)

# The first signal received and not yet acted on (None: none). A module global:
# one that arrives after a loop's last boundary, while its handlers are still
# installed, stops this process's next loop at its first boundary.
_received: int | None = None
# Nesting depth of stop_on_signals, and the handlers the outermost replaced.
_depth = 0
_previous: dict[int, object] = {}
# Step boundaries this process has passed: the counter of JAX's sync protocol.
_boundaries = 0


class Preempted(RuntimeError):
  """The run was told to stop (SIGTERM, SIGINT) and stopped with its last step saved.

  Attributes:
    step: the step the run stopped after (its checkpoint is the newest).
    signal_name: ``"SIGTERM"`` or ``"SIGINT"``.
    exit_code: the documented exit code for it (:data:`EXIT_CODES`).
  """

  def __init__(self, message: str, *, step: int, signum: int):
    super().__init__(message)
    self.step = step
    self.signal_name = signal.Signals(signum).name
    self.exit_code = EXIT_CODES[signum]


def _record(signum, frame) -> None:
  del frame
  global _received
  if _received is None:
    _received = signum


def _record_and_notify_jax(signum, frame) -> None:
  first = _received is None
  _record(signum, frame)
  if first:  # JAX's preemption notifier listens for SIGTERM only
    os.kill(os.getpid(), signal.SIGTERM)


def _synchronised() -> bool:
  """Whether the stop is agreed through JAX's preemption sync manager."""
  return jax.distributed.is_initialized() and jax.config.jax_enable_preemption_service


def _local_should_stop() -> bool:
  return _received is not None


def _synchronised_should_stop() -> bool:
  global _boundaries
  _boundaries += 1
  return multihost_utils.reached_preemption_sync_point(_boundaries)


def _never() -> bool:
  return False


@contextlib.contextmanager
def stop_on_signals() -> Iterator[Callable[[], bool]]:
  """Handles SIGTERM and SIGINT for the block; yields ``should_stop``.

  A loop calls ``should_stop()`` exactly once at every step boundary (after a
  step; every process of a multi-process run at the same boundaries, each call
  counts one). ``True`` means: save this step (wait for it, verify it), then
  ``raise preempted(step, ...)``. On one process it reads a bool; on several
  it asks JAX's preemption sync manager, and is ``True`` at the same boundary
  on all of them. Nested blocks share the outermost one's handlers; handlers
  are installed only from the main thread (Python's rule), elsewhere the
  signals keep their previous handling.

  Example (a loop of one's own; ``train.fit`` does this)::

    with train.stop_on_signals() as should_stop:
      for s in range(start + 1, num_steps + 1):
        state = update(state, next(batches))
        saved = s % checkpoint_every == 0 or s == num_steps
        if saved:
          save(s, state)
        if should_stop():
          if not saved:
            save(s, state)
          raise train.preempted(s, f"checkpoint {s} saved in {workdir}")
  """
  global _depth
  synchronised = _synchronised()
  if synchronised:
    should_stop = _synchronised_should_stop
  elif jax.process_count() > 1:
    # Without the sync manager the processes cannot agree on a step: leave the
    # signals their default action (the run resumes from its last checkpoint).
    logging.warning(
      "gradlab: JAX's preemption service is off (jax_enable_preemption_service); "
      "SIGTERM and SIGINT stop this %d-process run without a final checkpoint",
      jax.process_count(),
    )
    should_stop = _never
  else:
    should_stop = _local_should_stop
  install = (
    _depth == 0
    and should_stop is not _never
    and threading.current_thread() is threading.main_thread()
  )
  if install:
    _previous.clear()
    if synchronised:  # JAX's own SIGTERM handler stays: it starts the agreement
      _previous[signal.SIGINT] = signal.signal(signal.SIGINT, _record_and_notify_jax)
    else:
      for signum in _SIGNALS:
        _previous[signum] = signal.signal(signum, _record)
  _depth += 1
  try:
    yield should_stop
  finally:
    _depth -= 1
    if install:
      for signum, handler in _previous.items():
        signal.signal(signum, handler)
      _previous.clear()


def preempted(step: int, saved: str) -> Preempted:
  """The :class:`Preempted` a loop raises once ``should_stop()`` was ``True`` and
  step ``step`` is saved; ``saved`` says what was saved where. It consumes the
  recorded signal (a later loop in this process is not stopped by it)."""
  global _received
  signum = signal.SIGTERM if _received is None else _received
  _received = None
  if _synchronised() and jax.process_count() > 1:
    how = f"by {signal.Signals(signum).name} (agreed by all {jax.process_count()} processes)"
  else:
    how = f"by {signal.Signals(signum).name}"
  return Preempted(
    f"preempted {how} at step {step}: {saved}; run again with the same workdir to resume",
    step=step,
    signum=signum,
  )


def _clear() -> None:
  """Forgets a recorded signal (tests)."""
  global _received
  _received = None
