"""Streamed scores: the query side once, the train set chunk by chunk, blocks to disk.

Every attribution in ``gradlab.influence`` that scores a train set against
queries has the same shape of work: something is computed once on the query
side (test gradients, preconditioned by an inverse curvature; projected
features and a kernel inverse), then each train example is turned into a row
of scores against those queries. This module runs the second part **one
chunk of ``chunk_size`` train examples at a time**, so the per-example
gradients of the train set (``[n, d]``: 200 GB at n = 50k, d = 1M) are never
held: the program holds one chunk's ``[chunk_size, d]`` and the scores.

Two ways to hold the scores:

* **In memory** (``path=None``): :func:`map_train` is a ``lax.map`` over the
  chunks, each sliced from the train arrays by ``dynamic_slice`` (no padded
  copy of the train set), the remainder one more call of its own size. It
  traces, so the whole attribution can sit under ``jit``; its temporaries do
  not grow with n at a fixed chunk, only its output (the ``[m, n]`` scores)
  does.
* **On disk** (``path="scores.npy"``): :func:`write_train` runs a jitted
  chunk function in a Python loop and writes each block of rows to a NumPy
  ``.npy`` file as it is finished, so not even the score matrix is in memory.
  The file is **train-major** (``[n, m, ...]``: block b is rows
  ``[b c, (b + 1) c)``, contiguous on disk); the attribution functions return
  it memory-mapped and transposed (``np.load(path, mmap_mode="r")``, then a
  view with the train axis second), which is the ``[m, n, ...]`` array they
  return in memory. Read it later the same way.

**Resuming.** While the run is under way the rows go to ``<path>.partial``
and its state to ``<path>.json`` (replaced atomically after every block is
flushed: the run's fingerprint, the number of finished blocks); the query side
is saved to ``<path>.queries.npz`` the first time it is computed. A run
started again with the same arguments (the same fingerprint: the method and
its options, the parameters, the queries, the train set's shapes and first
chunk, the chunk size) reloads the saved query side and goes on from the
first unfinished block, so a killed run loses at most one block and its
finished file is the uninterrupted run's, bit for bit. Only when every block
is written is ``<path>.partial`` renamed to ``path`` (and the JSON marked
complete): a file at ``path`` is always a finished one, and a partial one is
never taken for it. A different run's partial file, or a finished file from
other arguments, is refused in one line rather than overwritten.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from gradlab import _checks
from gradlab.curvature.dataset import num_examples

BlockFn = Callable[[Any, Any], Any]


def check_chunk(chunk_size: int | None, n: int, name: str = "chunk_size") -> int:
  """``chunk_size`` as an int in ``[1, n]`` (``None``: all ``n`` at once); one larger
  than the set is refused (it would silently mean "all of it")."""
  if chunk_size is None:
    return n
  c = _checks.integer(name, chunk_size, minimum=1)
  if c > n:
    raise ValueError(f"{name}: {c} exceeds the {n} train examples")
  return c


def map_train(block_fn: BlockFn, args: Any, train: Any, chunk_size: int | None) -> Any:
  """``block_fn(args, chunk)`` over ``train`` in chunks, outputs stacked on a leading
  train axis (``block_fn`` returns a pytree of arrays whose first axis is the chunk's)."""
  n = num_examples("train", train)
  c = check_chunk(chunk_size, n)
  full, rest = divmod(n, c)

  def body(i):
    chunk = jax.tree.map(lambda x: jax.lax.dynamic_slice_in_dim(x, i * c, c), train)
    return block_fn(args, chunk)

  if full == 1:
    head = block_fn(args, jax.tree.map(lambda x: x[:c], train))
  else:
    head = jax.tree.map(lambda y: y.reshape(-1, *y.shape[2:]), jax.lax.map(body, jnp.arange(full)))
  if not rest:
    return head
  tail = block_fn(args, jax.tree.map(lambda x: x[full * c :], train))
  return jax.tree.map(lambda a, b: jnp.concatenate([a, b]), head, tail)


def _digest(h, tree: Any) -> None:
  for leaf in jax.tree.leaves(tree):
    a = np.asarray(jax.device_get(leaf))
    h.update(f"{a.shape}{a.dtype}".encode())
    h.update(np.ascontiguousarray(a).tobytes())


def fingerprint(tag: str, *trees: Any, train: Any, chunk_size: int) -> str:
  """A run's identity for resuming: ``tag`` (the method and its static options), the
  arrays of ``trees`` (parameters, queries, hyper-parameter arrays), the train set's
  leaf shapes and dtypes and its first chunk, and the chunk size."""
  h = hashlib.sha256(f"{tag}|chunk={chunk_size}".encode())
  for x in jax.tree.leaves(train):
    h.update(f"{jnp.shape(x)}{jnp.result_type(x)}".encode())
  _digest(h, jax.tree.map(lambda x: x[:chunk_size], train))
  for t in trees:
    _digest(h, t)
  return h.hexdigest()


def check_path(path: Any) -> str:
  """A writable ``.npy`` path (its directory must exist)."""
  if not isinstance(path, (str, os.PathLike)):
    raise ValueError(f"path: expected a file name ending in .npy, got {type(path).__name__}")
  path = os.fspath(path)
  if not path.endswith(".npy"):
    raise ValueError(f"path: expected a file name ending in .npy, got {path!r}")
  folder = os.path.dirname(os.path.abspath(path))
  if not os.path.isdir(folder):
    raise ValueError(f"path: the directory {folder!r} does not exist")
  if not os.access(folder, os.W_OK):
    raise ValueError(f"path: the directory {folder!r} is not writable")
  return path


def _state(path: str) -> dict | None:
  try:
    with open(path + ".json") as f:
      return json.load(f)
  except FileNotFoundError:
    return None
  except (OSError, ValueError) as e:
    raise ValueError(f"path: {path + '.json'!r} is not a readable run state ({e})") from e


def _save_state(path: str, state: dict) -> None:
  tmp = path + ".json.tmp"
  with open(tmp, "w") as f:
    json.dump(state, f)
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, path + ".json")


def _host(tree: Any) -> Any:
  return jax.tree.map(lambda x: np.asarray(jax.device_get(x)), tree)


def _slice(train: Any, start: int, stop: int) -> Any:
  # NumPy (or memory-mapped) leaves are sliced on the host: only the chunk moves
  return jax.tree.map(lambda x: x[start:stop], train)


def write_train(
  block_fn: BlockFn,
  consts: Any,
  queries: Callable[[], Any],
  train: Any,
  chunk_size: int | None,
  path: Any,
  tag: str,
  *,
  identity: tuple = (),
  callback: Callable[[int, int], None] | None = None,
) -> np.ndarray:
  """Rows ``block_fn((consts, queries), chunk)`` of every train chunk, written block by
  block to the ``.npy`` file ``path`` (train-major), resumable; returns the finished
  file memory-mapped read-only.

  Args:
    block_fn: ``((consts, queries), chunk) -> [chunk, ...]``: one array, the
      chunk's rows (jitted here).
    consts: arrays the blocks read (parameters, a fitted curvature); part of
      the fingerprint.
    queries: a zero-argument function computing the query side (called once;
      skipped on a resume, whose saved query side is reloaded).
    tag: the method and its static options, for the fingerprint.
    identity: more arrays that define the run (e.g. the query examples).
    callback: called as ``callback(blocks_done, blocks)`` after each block.
  """
  path = check_path(path)
  if any(isinstance(x, jax.core.Tracer) for x in jax.tree.leaves((consts, identity, train))):
    raise ValueError("path: scores written to disk run from Python and cannot be traced under jit")
  n = num_examples("train", train)
  c = check_chunk(chunk_size, n)
  blocks = -(-n // c)
  fp = fingerprint(tag, consts, identity, train=train, chunk_size=c)
  state = _state(path)
  if state is not None and state.get("fingerprint") != fp:
    raise ValueError(
      f"path: {path!r} belongs to another run (other arguments or data); remove {path!r}, "
      f"{path + '.partial'!r} and {path + '.json'!r} or choose another path"
    )
  if state is None and os.path.exists(path):
    raise ValueError(f"path: {path!r} exists and is not a finished run of these arguments")
  if state is not None and state.get("complete") and os.path.exists(path):
    return np.load(path, mmap_mode="r")
  qfile = path + ".queries.npz"
  shapes = jax.eval_shape(queries)
  treedef = jax.tree.structure(shapes)
  resumed = state is not None and os.path.exists(path + ".partial") and os.path.exists(qfile)
  if resumed:
    with np.load(qfile) as z:
      q = jax.tree.unflatten(treedef, [z[f"q{i}"] for i in range(treedef.num_leaves)])
    done = int(state["blocks_done"])
  else:
    q = _host(queries())
    np.savez(qfile + ".tmp.npz", **{f"q{i}": x for i, x in enumerate(jax.tree.leaves(q))})
    os.replace(qfile + ".tmp.npz", qfile)
    done = 0
  step = jax.jit(block_fn)
  first = jax.eval_shape(step, (consts, q), _slice(train, 0, c))
  if not isinstance(first, jax.ShapeDtypeStruct):
    raise ValueError("path: a file holds one array of scores (per_module scores stay in memory)")
  shape = (n, *first.shape[1:])
  if resumed:
    out = np.lib.format.open_memmap(path + ".partial", mode="r+")
    if out.shape != shape or out.dtype != first.dtype:
      raise ValueError(f"path: {path + '.partial'!r} has shape {out.shape}, expected {shape}")
  else:
    out = np.lib.format.open_memmap(path + ".partial", mode="w+", dtype=first.dtype, shape=shape)
    state = {"fingerprint": fp, "blocks": blocks, "blocks_done": 0, "complete": False,
             "layout": "train-major", "shape": list(shape), "dtype": str(first.dtype)}  # fmt: skip
    _save_state(path, state)
  for b in range(done, blocks):
    start, stop = b * c, min(n, (b + 1) * c)
    out[start:stop] = np.asarray(jax.device_get(step((consts, q), _slice(train, start, stop))))
    out.flush()
    state["blocks_done"] = b + 1
    _save_state(path, state)
    if callback is not None:
      callback(b + 1, blocks)
  del out
  os.replace(path + ".partial", path)
  state["complete"] = True
  _save_state(path, state)
  os.remove(qfile)
  return np.load(path, mmap_mode="r")


def train_second(x: Any) -> Any:
  """Train-major rows ``[n, m, ...]`` as scores ``[m, n, ...]`` (a view for a memmap);
  a vector ``[n]`` is returned as it is."""
  if isinstance(x, dict):
    return {k: train_second(v) for k, v in x.items()}
  if x.ndim < 2:
    return x
  return np.moveaxis(x, 0, 1) if isinstance(x, np.ndarray) else jnp.moveaxis(x, 0, 1)


def run(
  block_fn: BlockFn,
  consts: Any,
  queries: Callable[[], Any],
  train: Any,
  chunk_size: int | None,
  path: Any,
  tag: str,
  **kw: Any,
) -> Any:
  """:func:`map_train` in memory (``path=None``, one jitted program) or :func:`write_train`
  to ``path``; returns the scores with the train axis second."""
  if path is None:
    # one compiled program for the whole train side, the arrays its arguments (eagerly,
    # each chunk's ops, the remainder and the concatenation would compile one by one)
    c = check_chunk(chunk_size, num_examples("train", train))
    every = jax.jit(lambda args, data: map_train(block_fn, args, data, c))
    rows = every((consts, queries()), train)
  else:
    rows = write_train(block_fn, consts, queries, train, chunk_size, path, tag, **kw)
  return train_second(rows)
