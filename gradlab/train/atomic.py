"""Files written whole or not at all: a temporary name, then a rename.

A reader, or a run killed mid-write, sees the old file or the new one, never a
torn one (``os.replace`` is atomic on POSIX filesystems).
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from typing import IO, Any


@contextlib.contextmanager
def atomic_open(path: str, mode: str = "w", **kwargs: Any) -> Iterator[IO]:
  """``open(path, mode)`` whose contents replace ``path`` only when the block ends."""
  tmp = f"{path}.tmp-{os.getpid()}"
  with open(tmp, mode, **kwargs) as f:
    yield f
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, path)


def write_json_atomically(path: str, obj: Any, **dump_kwargs: Any) -> None:
  """``obj`` as JSON at ``path``, through :func:`atomic_open`."""
  with atomic_open(path) as f:
    json.dump(obj, f, **dump_kwargs)
