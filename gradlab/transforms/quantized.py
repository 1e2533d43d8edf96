r"""Adam with 8-bit block-wise quantized moments (Dettmers et al., ICLR 2022).

Each moment tensor is flattened, cut into blocks of ``block_size`` values, and
stored as one ``uint8`` code per value plus one ``float32`` absolute maximum
per block. A value ``x`` in a block with maximum ``N = max|x|`` is stored as
the index of the entry of a 256-entry code book ``Q`` nearest to ``x / N``
and read back as ``Q[i] N``. The code book is the *dynamic* data type
(dynamic exponent, linear fraction; Dettmers 2016): signed for the first
moment, unsigned for the second. Each step dequantizes both moments, runs the
Adam update in float32 and quantizes them again, a cache-sized chunk of blocks
at a time; the nearest code comes from a table on the float32 bit pattern and
one comparison with an exact decision threshold (:func:`nearest_code`), not a
search.

Follows ``bitsandbytes`` (0.50.2): ``create_dynamic_map`` (reproduced by
:func:`dynamic_code`), nearest-code rounding, ``absmax = 1`` for an all-zero
block, block size 256 for optimizer states, tensors with fewer than
``min_8bit_size = 4096`` elements kept in float32, and the step
``m / (sqrt(v) / sqrt(1 - b2^t) + eps) / (1 - b1^t)`` (optax's Adam).
The paper's block size for the GPU kernels is 2048; bitsandbytes now uses 256.

Memory: a quantized moment costs ``1 + 4 / block_size`` bytes per value
against 4 for float32, so the two moments of a large model take
``(1 + 4/256) / 4 = 0.254`` of fp32 Adam's state.

Non-finite gradients: skipped (zero update, unchanged state). Note that a
gradient spike makes the block's ``absmax`` large and flushes its small
entries to zero; that is the method's, not this code's, behaviour.

References:
  Dettmers, Lewis, Shleifer, Zettlemoyer. 8-bit Optimizers via Block-wise
  Quantization. ICLR 2022. https://arxiv.org/abs/2110.02861
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.typing import ArrayLike

from gradlab import _checks
from gradlab.transforms import nonfinite, torch_adam


@functools.cache
def dynamic_code(
  signed: bool = True, max_exponent_bits: int = 7, total_bits: int = 8
) -> np.ndarray:
  """The 256-entry dynamic code book, sorted (bitsandbytes' ``create_dynamic_map``).

  Equal to bitsandbytes' map to one float32 ulp (NumPy's and torch's float32
  ``linspace`` round a few entries differently); tested against it when
  bitsandbytes is installed.
  """
  data = []
  non_sign_bits = total_bits - 1
  additional_items = 2 ** (non_sign_bits - max_exponent_bits) - 1
  for i in range(max_exponent_bits):
    fraction_items = int(
      2 ** (i + non_sign_bits - max_exponent_bits) + 1
      if signed
      else 2 ** (i + non_sign_bits - max_exponent_bits + 1) + 1
    )
    boundaries = np.linspace(0.1, 1, fraction_items, dtype=np.float32)
    means = (boundaries[:-1] + boundaries[1:]) / np.float32(2.0)
    data += ((10 ** (-(max_exponent_bits - 1) + i)) * means).tolist()
    if signed:
      data += (-(10 ** (-(max_exponent_bits - 1) + i)) * means).tolist()
  if additional_items > 0:
    boundaries = np.linspace(0.1, 1, additional_items + 1, dtype=np.float32)
    means = (boundaries[:-1] + boundaries[1:]) / np.float32(2.0)
    data += ((10 ** (-(max_exponent_bits - 1) + i)) * means).tolist()
    if signed:
      data += (-(10 ** (-(max_exponent_bits - 1) + i)) * means).tolist()
  data.append(0)
  data.append(1.0)
  data += [0] * (256 - len(data))
  data.sort()
  return np.asarray(data, dtype=np.float32)


class QuantizedArray(NamedTuple):
  """A block-wise quantized tensor: ``codes[b, j]`` indexes the code book."""

  codes: jax.Array  # uint8 [num_blocks, block_size]
  absmax: jax.Array  # float32 [num_blocks]


def nearest_by_search(code: jax.Array, x: jax.Array) -> jax.Array:
  """Index of the code entry nearest to ``x`` (ties to the lower index, as argmin),
  by a branch-free binary search over the sorted table (eight dependent
  lookups). The reference :func:`nearest_code` is checked against."""
  n = code.shape[0]
  lo = jnp.zeros(x.shape, jnp.int32)
  step = 1 << (n - 1).bit_length() - 1
  while step:
    cand = lo + step
    lo = jnp.where((cand < n) & (code[jnp.minimum(cand, n - 1)] <= x), cand, lo)
    step >>= 1
  hi = jnp.minimum(lo + 1, n - 1)
  take_lo = jnp.abs(x - code[lo]) <= jnp.abs(x - code[hi])
  return jnp.where(take_lo, lo, hi).astype(jnp.uint8)


def _order_key(x: np.ndarray) -> np.ndarray:
  """float32 -> int64 preserving order (``-0.0`` and ``0.0`` both map to 0)."""
  b = np.asarray(x, np.float32).view(np.int32).astype(np.int64)
  return np.where(b < 0, -(b & 0x7FFFFFFF), b)


def _from_order_key(k: int) -> np.float32:
  b = k if k >= 0 else (-k) | 0x80000000
  return np.asarray(b, np.int64).astype(np.uint32).view(np.float32)[()]


@functools.cache
def decision_thresholds(signed: bool = True) -> np.ndarray:
  """``T[k]``: the largest float32 ``x`` that ``argmin |code - x|`` (float32
  distances, ties to the lower index) sends to entry ``k`` rather than ``k + 1``
  of :func:`dynamic_code` (255 values; within one ulp of the midpoints).

  Between two adjacent entries the float32 distance to the lower one only grows
  and to the upper one only shrinks as ``x`` grows, so the choice changes once;
  a bisection over the float32 values between them finds where.
  """
  code = dynamic_code(signed)
  out = []
  for lo, hi in zip(code[:-1], code[1:]):
    a, b = int(_order_key(lo)), int(_order_key(hi))  # picks lo at a, hi at b

    def picks_lo(k, lo=lo, hi=hi):
      x = _from_order_key(k)
      return abs(x - lo) <= abs(x - hi)

    while b - a > 1:
      mid = (a + b) // 2
      a, b = (mid, b) if picks_lo(mid) else (a, mid)
    out.append(_from_order_key(a))
  return np.asarray(out, np.float32)


# Buckets of the nearest-code table: float32 values sharing their sign, exponent
# and top 8 mantissa bits (a relative width of 2^-8, finer than the code's
# spacing, so that at most one decision threshold falls inside a bucket).
_BUCKET_SHIFT = 15
_BUCKETS = (0x3F800000 >> _BUCKET_SHIFT) + 1  # the buckets of 0 <= |x| <= 1


@functools.cache
def _bucket_tables(signed: bool) -> tuple[np.ndarray, np.ndarray]:
  """Per bucket of float32 values: the nearest entry at its lowest value, and
  the one threshold inside it past which the next entry is nearest (``inf`` if
  none). Negative buckets (signed code) follow the positive ones."""
  thresholds = decision_thresholds(signed)
  b = np.arange(_BUCKETS, dtype=np.uint32) << np.uint32(_BUCKET_SHIFT)
  ends = (b, b | np.uint32((1 << _BUCKET_SHIFT) - 1))
  base, above = [], []
  for sign in (0, 1) if signed else (0,):
    lo, hi = (np.clip((e | np.uint32(sign << 31)).view(np.float32), -1, 1) for e in ends)
    if sign:  # a negative bucket's first bit pattern is its largest value
      lo, hi = hi, lo
    first, last = np.searchsorted(thresholds, lo), np.searchsorted(thresholds, hi)
    if np.any(last - first > 1):
      raise AssertionError("two decision thresholds in one bucket: narrow the buckets")
    base.append(first.astype(np.uint8))
    above.append(np.where(last > first, thresholds[np.minimum(first, 254)], np.inf))
  return np.concatenate(base), np.concatenate(above).astype(np.float32)


def nearest_code(x: jax.Array, *, signed: bool) -> jax.Array:
  """Index of the entry of the dynamic code (:func:`dynamic_code`) nearest to
  float32 ``x`` in ``[-1, 1]``, ties to the lower index, as ``argmin |code - x|``.

  The index is a step function of ``x`` that steps at the exact decision
  thresholds (:func:`decision_thresholds`). Bucketing ``x`` by its sign,
  exponent and top 8 mantissa bits (one shift of its bit pattern) leaves at
  most one threshold per bucket, so a 65,026-entry table (built once from the
  thresholds) gives the nearest index as the bucket's first index plus one
  comparison with the bucket's threshold: two independent lookups and five
  integer operations, against a binary search's eight dependent lookups
  (:func:`nearest_by_search`). Checked equal to the search on every float32 in
  range (``python -m benchmarks.quantizer_speed --exhaustive``).
  """
  base, above = _bucket_tables(signed)
  bits = jax.lax.bitcast_convert_type(jnp.asarray(x, jnp.float32), jnp.uint32)
  bucket = jnp.minimum((bits & 0x7FFFFFFF) >> _BUCKET_SHIFT, _BUCKETS - 1).astype(jnp.int32)
  if signed:
    bucket = jnp.where((bits >> 31) == 1, bucket + _BUCKETS, bucket)
  step = x > jnp.asarray(above)[bucket]
  return jnp.asarray(base)[bucket] + step.astype(jnp.uint8)


def _scaled_blocks(blocks: jax.Array) -> tuple[jax.Array, jax.Array]:
  """``[num_blocks, block_size]`` values over their block's absolute maximum
  (1 for an all-zero block), and those maxima."""
  absmax = jnp.max(jnp.abs(blocks), axis=1)
  absmax = jnp.where(absmax == 0, 1.0, absmax)
  return blocks / absmax[:, None], absmax


def _dequantized_blocks(codes: jax.Array, absmax: jax.Array, code: jax.Array) -> jax.Array:
  """The ``[num_blocks, block_size]`` float32 values that codes and maxima store."""
  return code[codes.astype(jnp.int32)] * absmax[:, None]


def quantize_blockwise(
  x: jax.Array, code: jax.Array, block_size: int = 256, *, signed: bool | None = None
) -> QuantizedArray:
  """Quantizes ``x`` (any shape) block-wise against the sorted ``code``.

  With ``signed`` given, ``code`` must be ``dynamic_code(signed)`` and the
  bucket table of :func:`nearest_code` finds each index; without, a binary search
  over any sorted code (:func:`nearest_by_search`). Both give argmin's index.
  """
  flat = x.reshape(-1).astype(jnp.float32)
  num_blocks = -(-flat.shape[0] // block_size)
  flat = jnp.pad(flat, (0, num_blocks * block_size - flat.shape[0]))
  blocks = flat.reshape(num_blocks, block_size)
  scaled, absmax = _scaled_blocks(blocks)
  codes = nearest_by_search(code, scaled) if signed is None else nearest_code(scaled, signed=signed)
  return QuantizedArray(codes, absmax)


def dequantize_blockwise(q: QuantizedArray, code: jax.Array, shape) -> jax.Array:
  """The float32 tensor of ``shape`` that ``q`` stores."""
  values = _dequantized_blocks(q.codes, q.absmax, code)
  return values.reshape(-1)[: math.prod(shape)].reshape(shape)


# Values per chunk of the update loop (256 KiB per float32 array), so that a
# chunk's moments, update and codes stay in a core's L2 cache.
_CHUNK_VALUES = 65536


class ScaleByAdam8bitState(NamedTuple):
  count: jax.Array
  mu: optax.Updates  # QuantizedArray per large leaf, float32 array per small one
  nu: optax.Updates


def _adam_8bit_direction(b1, b2, eps, block_size, min_8bit_size):
  signed_code, unsigned_code = jnp.asarray(dynamic_code(True)), jnp.asarray(dynamic_code(False))

  def quantized(leaf) -> bool:
    return math.prod(jnp.shape(leaf)) >= min_8bit_size

  def init_fn(params):
    def zeros(p, signed):
      z = jnp.zeros(jnp.shape(p), jnp.float32)
      code = signed_code if signed else unsigned_code
      return quantize_blockwise(z, code, block_size, signed=signed) if quantized(p) else z

    mu = jax.tree.map(lambda p: zeros(p, True), params)
    nu = jax.tree.map(lambda p: zeros(p, False), params)
    return ScaleByAdam8bitState(jnp.zeros([], jnp.int32), mu, nu)

  is_q = lambda x: isinstance(x, QuantizedArray)  # noqa: E731

  def requantize(blocks, signed):
    scaled, absmax = _scaled_blocks(blocks)
    return nearest_code(scaled, signed=signed), absmax

  def moments(g, m, v):
    return b1 * m + (1.0 - b1) * g, b2 * v + (1.0 - b2) * g * g

  def direction(m, v, bc1, bc2, ok):  # optax's Adam; zero on a skipped step
    return jnp.where(ok, m / (jnp.sqrt(v) / bc2 + eps) / bc1, 0.0)

  def blocks_step(g, m_codes, m_absmax, v_codes, v_absmax, bc1, bc2, ok):
    """Dequantize, Adam, requantize ``g.shape[0]`` blocks at once; on a
    skipped step (``ok`` False) a zero update and the old codes."""
    m = _dequantized_blocks(m_codes, m_absmax, signed_code)
    v = _dequantized_blocks(v_codes, v_absmax, unsigned_code)
    m, v = moments(g, m, v)
    u = direction(m, v, bc1, bc2, ok)
    new = (*requantize(m, True), *requantize(v, False))
    old = (m_codes, m_absmax, v_codes, v_absmax)
    return (u, *(jnp.where(ok, a, b) for a, b in zip(new, old)))

  def quantized_leaf(g, mq, vq, bc1, bc2, ok):
    """One leaf's step, ``_CHUNK_VALUES`` values at a time in a ``fori_loop``:
    each chunk's moments, update and codes stay in cache, so the leaf is read
    and written once (one fused pass over the whole leaf would materialize the
    dequantized moments and read them again for the block maxima, the update
    and the codes: 2x the bytes)."""
    nb, n = mq.codes.shape[0], math.prod(g.shape)
    flat = g.reshape(-1).astype(jnp.float32)
    gb = jnp.pad(flat, (0, nb * block_size - n)).reshape(nb, block_size)
    out = (jnp.zeros_like(gb), mq.codes, mq.absmax, vq.codes, vq.absmax)
    rows = min(nb, max(1, _CHUNK_VALUES // block_size))
    full = nb // rows

    def chunk(start, size, out):
      take = lambda a: jax.lax.dynamic_slice_in_dim(a, start, size)  # noqa: E731
      new = blocks_step(take(gb), *map(take, out[1:]), bc1, bc2, ok)
      return tuple(jax.lax.dynamic_update_slice_in_dim(o, r, start, 0) for o, r in zip(out, new))

    out = jax.lax.fori_loop(0, full, lambda c, out: chunk(c * rows, rows, out), out)
    if nb % rows:  # the last, shorter chunk, outside the loop (chunks never overlap)
      out = chunk(full * rows, nb % rows, out)
    u, m_codes, m_absmax, v_codes, v_absmax = out
    u = u.reshape(-1)[:n].reshape(g.shape).astype(g.dtype)
    return u, QuantizedArray(m_codes, m_absmax), QuantizedArray(v_codes, v_absmax)

  def update_fn(updates, state, params=None, *, ok):
    """The step, applying the non-finite policy itself (``nonfinite.inline_guard``):
    ``ok`` False gives a zero update and the state unchanged."""
    del params
    c = optax.safe_increment(state.count)
    t = c.astype(jnp.float32)
    bc1, bc2 = 1.0 - b1**t, jnp.sqrt(1.0 - b2**t)
    g_leaves, treedef = jax.tree.flatten(updates)
    mu_leaves = jax.tree.leaves(state.mu, is_leaf=is_q)
    nu_leaves = jax.tree.leaves(state.nu, is_leaf=is_q)
    outs, new_mu, new_nu = [], [], []
    for g, m, v in zip(g_leaves, mu_leaves, nu_leaves):
      if is_q(m):
        u, m, v = quantized_leaf(g, m, v, bc1, bc2, ok)
      else:
        m_new, v_new = moments(g.astype(jnp.float32), m, v)
        u = direction(m_new, v_new, bc1, bc2, ok).astype(g.dtype)
        m, v = jnp.where(ok, m_new, m), jnp.where(ok, v_new, v)
      outs.append(u)
      new_mu.append(m)
      new_nu.append(v)
    return jax.tree.unflatten(treedef, outs), ScaleByAdam8bitState(
      jnp.where(ok, c, state.count),
      jax.tree.unflatten(treedef, new_mu),
      jax.tree.unflatten(treedef, new_nu),
    )

  return init_fn, update_fn


def _check_8bit(b1, b2, eps, block_size, min_8bit_size):
  torch_adam.check_adam(b1, b2, eps)
  return (
    _checks.integer("block_size", block_size, minimum=1),
    _checks.integer("min_8bit_size", min_8bit_size),
  )


def scale_by_adam_8bit(
  b1: ArrayLike = 0.9,
  b2: ArrayLike = 0.999,
  eps: ArrayLike = 1e-8,
  *,
  block_size: int = 256,
  min_8bit_size: int = 4096,
) -> optax.GradientTransformation:
  """Adam's direction with both moments stored in 8 bits, block-wise.

  ``block_size`` and ``min_8bit_size`` fix the state's shapes, so they are
  static: under ``optax.inject_hyperparams`` list them in ``static_args`` (as
  optax does for ``adafactor``'s ``min_dim_size_to_factor``).
  """
  block_size, min_8bit_size = _check_8bit(b1, b2, eps, block_size, min_8bit_size)
  init_fn, update_fn = _adam_8bit_direction(b1, b2, eps, block_size, min_8bit_size)
  return optax.GradientTransformation(init_fn, nonfinite.inline_guard(update_fn))


def adam_8bit(
  learning_rate: optax.ScalarOrSchedule,
  b1: ArrayLike = 0.9,
  b2: ArrayLike = 0.999,
  eps: ArrayLike = 1e-8,
  weight_decay: ArrayLike = 0.0,
  *,
  block_size: int = 256,
  min_8bit_size: int = 4096,
) -> optax.GradientTransformationExtraArgs:
  """8-bit AdamW: :func:`scale_by_adam_8bit` + decoupled weight decay + learning rate.

  Under ``optax.inject_hyperparams`` pass
  ``static_args=("block_size", "min_8bit_size")``.
  """
  block_size, min_8bit_size = _check_8bit(b1, b2, eps, block_size, min_8bit_size)
  direction = _adam_8bit_direction(b1, b2, eps, block_size, min_8bit_size)
  return nonfinite.inline_guarded_chain(
    optax.GradientTransformation(*direction),
    optax.add_decayed_weights(weight_decay),
    optax.scale_by_learning_rate(learning_rate),
  )


def state_bytes(tree) -> int:
  """Bytes held by the arrays of an optimizer state (for memory comparisons)."""
  return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(tree) if hasattr(x, "dtype"))
