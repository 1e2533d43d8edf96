"""A deterministic, resumable batch iterator.

The batch at step ``s`` is a pure function of ``(seed, s)``: epoch
``s // steps_per_epoch`` draws its own permutation, so a run restarted at
step ``s`` sees exactly the batches an uninterrupted run would have seen.
A partial last batch of each epoch is dropped, so every batch has the same
shape (one compilation).
"""

from __future__ import annotations

from typing import Any, Iterator, Mapping

import numpy as np

from gradlab import sharding as sharding_lib


def _check_arrays(arrays: Mapping[str, np.ndarray], batch_size: int) -> int:
  if not arrays:
    raise ValueError("arrays: expected at least one array")
  sizes = {k: len(v) for k, v in arrays.items()}
  if len(set(sizes.values())) != 1:
    raise ValueError(f"arrays: leading axes differ: {sizes}")
  n = next(iter(sizes.values()))
  if batch_size <= 0:
    raise ValueError(f"batch_size: expected a positive integer, got {batch_size}")
  if batch_size > n:
    raise ValueError(f"batch_size: {batch_size} exceeds the {n} examples available")
  return n


def batch_indices(num_examples: int, batch_size: int, seed: int, step: int) -> np.ndarray:
  """The example indices of the batch at ``step``."""
  steps_per_epoch = num_examples // batch_size
  epoch, pos = divmod(step, steps_per_epoch)
  perm = np.random.default_rng([seed, epoch]).permutation(num_examples)
  return perm[pos * batch_size : (pos + 1) * batch_size]


def iterate_batches(
  arrays: Mapping[str, np.ndarray], *, batch_size: int, seed: int, start_step: int = 0, mesh=None
) -> Iterator[dict[str, Any]]:
  """Yields ``{name: array[indices]}`` batches from ``start_step`` on, forever.

  Args:
    arrays: equally long arrays, e.g. ``{"x": images, "y": labels}``.
    batch_size: the global batch size.
    seed: seeds the per-epoch shuffles.
    start_step: the step of the first batch yielded (to resume).
    mesh: if given, each batch is placed on it, split along the data axis.
  """
  n = _check_arrays(arrays, batch_size)
  if mesh is not None:
    sharding_lib.check_shardable(
      {k: np.empty((batch_size,)) for k in arrays},
      mesh.shape[sharding_lib.DATA_AXIS],
      name="batch_size",
    )
  step = start_step
  while True:
    idx = batch_indices(n, batch_size, seed, step)
    batch = {k: v[idx] for k, v in arrays.items()}
    yield batch if mesh is None else sharding_lib.shard_batch(batch, mesh)
    step += 1
