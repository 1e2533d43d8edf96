"""Device meshes and batch sharding for data parallelism.

gradlab's data parallelism is ``jax.jit`` over a ``jax.sharding.Mesh``: the
batch's leading axis is split over the mesh's data axis and the parameters
are replicated. The same code runs on one CPU, a GPU, 8 simulated CPU devices
(``XLA_FLAGS=--xla_force_host_platform_device_count=8``) and a multi-host pod
(after ``jax.distributed.initialize()``, each process feeds its own slice).
"""

from __future__ import annotations

from typing import Any, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

DATA_AXIS = "data"


def make_mesh(devices: Sequence[jax.Device] | None = None, *, data_axis: str = DATA_AXIS) -> Mesh:
  """A one-axis mesh over ``devices`` (all devices of all processes by default)."""
  devices = list(jax.devices() if devices is None else devices)
  if not devices:
    raise ValueError("devices: expected at least one device, got none")
  return Mesh(np.array(devices), (data_axis,))


def data_sharding(mesh: Mesh, data_axis: str = DATA_AXIS) -> NamedSharding:
  """Leading axis split over ``data_axis``, the rest replicated."""
  return NamedSharding(mesh, P(data_axis))


def replicated(mesh: Mesh) -> NamedSharding:
  """Every device holds the whole value."""
  return NamedSharding(mesh, P())


def check_shardable(batch: Any, num_shards: int, *, name: str = "batch") -> int:
  """Checks every leaf's leading axis is the same and divisible by ``num_shards``.

  Returns:
    The leading-axis size (the global batch size).

  Raises:
    ValueError: naming the leaf whose leading axis cannot be split evenly.
  """
  sizes = set()
  for path, leaf in jax.tree_util.tree_leaves_with_path(batch):
    shape = np.shape(leaf)
    where = f"{name}{jax.tree_util.keystr(path)}"
    if not shape:
      raise ValueError(f"{where}: expected a leading batch axis, got a scalar")
    if shape[0] % num_shards:
      raise ValueError(
        f"{where}: leading axis of size {shape[0]} cannot be sharded over "
        f"{num_shards} devices; use a batch size divisible by {num_shards}"
      )
    sizes.add(shape[0])
  if len(sizes) > 1:
    raise ValueError(f"{name}: leaves disagree on the batch size: {sorted(sizes)}")
  if not sizes:
    raise ValueError(f"{name}: expected at least one array, got an empty pytree")
  return sizes.pop()


def shard_batch(batch: Any, mesh: Mesh, *, data_axis: str = DATA_AXIS) -> Any:
  """Places a host batch on the mesh, split along its leading axis.

  On one process ``batch`` is the global batch. On a multi-host pod each
  process passes the global batch too and contributes only its own slice
  (``jax.make_array_from_process_local_data``), so every host can run the
  same deterministic iterator.
  """
  check_shardable(batch, mesh.shape[data_axis])
  sharding = data_sharding(mesh, data_axis)
  nproc, pid = jax.process_count(), jax.process_index()

  def put(x):
    x = np.asarray(x)
    if nproc == 1:
      return jax.device_put(x, sharding)
    per = x.shape[0] // nproc
    local = x[pid * per : (pid + 1) * per]
    return jax.make_array_from_process_local_data(sharding, local, x.shape)

  return jax.tree.map(put, batch)
