r"""The 8-bit quantizer's nearest-code lookup: its speed, and (``--exhaustive``)
its equality with the binary search on every float32 in range.

  python -m benchmarks.quantizer_speed [--size=10000000] [--exhaustive]

``transforms.nearest_code`` (a bucket table on the float32 bit pattern plus one
comparison with an exact decision threshold) against
``transforms.nearest_by_search`` (a branch-free binary search over the sorted
code, then the nearer of the two bracketing entries, ties to the lower index,
as ``argmin``), both jitted on ``--size`` values, interleaved.

``--exhaustive`` then runs both on every float32 bit pattern with
``|x| <= 1`` (2.13e9 values for the signed code, 1.07e9 for the unsigned one)
in chunks of 2^24 and prints the number of indices on which they differ (0
expected; exit status 1 otherwise). The test suite checks the same on every
class where a rule can go wrong (zeros, subnormals, decade edges, the four
float32 neighbours of every midpoint) and against ``argmin`` itself.
"""

from __future__ import annotations

import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from benchmarks import timing
from gradlab import transforms

_SIZE = flags.DEFINE_integer("size", 10_000_000, "Values per timed call.")
_REPEATS = flags.DEFINE_integer("repeats", 7, "Timed repeats (medians are reported).")
_EXHAUSTIVE = flags.DEFINE_bool("exhaustive", False, "Check every float32 in [-1, 1].")
_JSON = flags.DEFINE_string("json", None, "Write the figures here.")

_CHUNK = 1 << 24


def exhaustive_mismatches(signed: bool) -> int:
  """Indices on which ``nearest_code`` and ``nearest_by_search`` differ, over
  every float32 bit pattern of ``[0, 1]`` (and ``[-1, -0]`` when signed)."""
  code = jnp.asarray(transforms.dynamic_code(signed))

  @jax.jit
  def count(first):
    bits = first + jnp.arange(_CHUNK, dtype=jnp.uint32)
    x = jax.lax.bitcast_convert_type(bits, jnp.float32)
    inside = jnp.abs(x) <= 1.0
    x = jnp.where(inside, x, 0.0)
    fast = transforms.nearest_code(x, signed=signed)
    return jnp.sum((fast != transforms.nearest_by_search(code, x)) & inside)

  one = 0x3F800000
  starts = list(range(0, one + 1, _CHUNK))
  if signed:
    starts += [0x80000000 + s for s in starts]
  total = 0
  for s in starts:
    total += int(count(jnp.uint32(s)))
  return total


def _figures(samples=None):
  """The title and rows of the table, at the flags' sizes (``samples``: each code's
  per-repeat times, by code)."""
  rng = np.random.default_rng(0)
  rows = []
  for signed in (True, False):
    x = (10.0 ** rng.uniform(-8, 0, _SIZE.value)).astype(np.float32)
    if signed:
      x *= rng.choice(np.float32([-1, 1]), _SIZE.value)
    x = jnp.asarray(x)
    code = jnp.asarray(transforms.dynamic_code(signed))
    fast = jax.jit(lambda v, s=signed: transforms.nearest_code(v, signed=s))
    search = jax.jit(lambda v, c=code: transforms.nearest_by_search(c, v))
    fns = {
      "table": lambda f=fast, v=x: jax.block_until_ready(f(v)),
      "search": lambda f=search, v=x: jax.block_until_ready(f(v)),
    }
    per = {} if samples is None else samples.setdefault("signed" if signed else "unsigned", {})
    t = timing.interleaved(fns, repeats=_REPEATS.value, inner=3, warmup=1, samples=per)
    rows.append(
      {
        "code": "signed" if signed else "unsigned",
        "table ms": 1e3 * t["table"],
        "search ms": 1e3 * t["search"],
        "search / table": t["search"] / t["table"],
      }
    )
  if _EXHAUSTIVE.value:
    for row, signed in zip(rows, (True, False)):
      start = time.perf_counter()
      row["exhaustive mismatches"] = exhaustive_mismatches(signed)
      row["exhaustive s"] = time.perf_counter() - start
  title = (
    f"nearest dynamic-code index of {_SIZE.value:,} float32 values, {jax.devices()[0].platform}"
  )
  return title, rows


def main(argv):
  del argv
  title, rows = _figures()
  timing.report(title, rows, _JSON.value)
  if any(r.get("exhaustive mismatches", 0) for r in rows):
    sys.exit(1)


QUICK = {"size": "1000", "repeats": "2"}


def measure(quick: bool, device: str) -> list[timing.Row]:
  """``benchmarks.all``'s rows: the binary search's time over the table's, per code
  (``--exhaustive`` is left to its own command)."""
  del device
  values, samples = QUICK if quick else {}, {}
  with timing.flag_values(values):
    _figures(samples)
  dev, cmd = timing.jax_device(), timing.command(__name__, values)
  return [
    timing.Row(f"search / table, {code} code", *timing.ratio(s, "search", "table"), "", dev, cmd)
    for code, s in samples.items()
  ]


if __name__ == "__main__":
  app.run(main)
