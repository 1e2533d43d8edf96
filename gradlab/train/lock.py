"""One run per workdir: an advisory lock that names its holder."""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
from collections.abc import Iterator

import jax

# Locks this process holds: path -> (file, depth). Re-entrant within a process
# (a main holds its workdir's lock and the loop inside it takes it again).
_HELD: dict[str, list] = {}


class WorkdirBusy(RuntimeError):
  """Another process is running in this workdir."""


@contextlib.contextmanager
def workdir_lock(workdir: str) -> Iterator[None]:
  """Holds ``workdir/.lock`` for the block; another process is refused at once.

  The lock is ``flock``'s, released by the kernel when the holder exits, so a
  killed run leaves no stale lock behind. The file records the holder
  (``host:pid``) for the message the second run prints.
  """
  os.makedirs(workdir, exist_ok=True)
  # The processes of one multi-process run share the workdir: each holds its
  # own lock file, so a second run's process i collides with the first's.
  pid = jax.process_index()
  path = os.path.realpath(os.path.join(workdir, ".lock" if pid == 0 else f".lock.{pid}"))
  if path in _HELD:
    _HELD[path][1] += 1
    try:
      yield
    finally:
      _HELD[path][1] -= 1
    return
  f = open(path, "a+")  # noqa: SIM115 - held open for the lock's lifetime
  try:
    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
  except BlockingIOError:
    f.seek(0)
    holder = f.read().strip() or "another process"
    f.close()
    raise WorkdirBusy(
      f"workdir: {workdir} is in use by {holder}; wait for it to finish or use another workdir"
    ) from None
  f.seek(0)
  f.truncate()
  f.write(f"{socket.gethostname()}:{os.getpid()}")
  f.flush()
  _HELD[path] = [f, 1]
  try:
    yield
  finally:
    _HELD[path][1] -= 1
    if _HELD[path][1] == 0:
      del _HELD[path]
      fcntl.flock(f, fcntl.LOCK_UN)
      f.close()
