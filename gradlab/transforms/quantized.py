r"""Adam with 8-bit block-wise quantized moments (Dettmers et al., ICLR 2022).

Each moment tensor is flattened, cut into blocks of ``block_size`` values, and
stored as one ``uint8`` code per value plus one ``float32`` absolute maximum
per block. A value ``x`` in a block with maximum ``N = max|x|`` is stored as
the index of the entry of a 256-entry code book ``Q`` nearest to ``x / N``
and read back as ``Q[i] N``. The code book is the *dynamic* data type
(dynamic exponent, linear fraction; Dettmers 2016): signed for the first
moment, unsigned for the second. Each step dequantizes both moments, runs the
Adam update in float32 and quantizes them again.

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


def nearest_code(code: jax.Array, x: jax.Array, *, signed: bool) -> jax.Array:
  """Index of the entry of the dynamic code (:func:`dynamic_code`) nearest to
  ``x`` in ``[-1, 1]``, ties to the lower index, as ``argmin |code - x|``.

  The dynamic code has a closed form: a sign, a decade ``i`` (codes
  ``10^{i-6} (0.1 + 0.9 (j + 1/2) / n_i)``, ``n_i = 2^i`` signed or
  ``2^{i+1}`` unsigned, ``j < n_i``), and a linear position ``j`` within it.
  The decade comes from comparing ``|x|`` with the powers of ten and ``j`` from
  rounding, which puts the estimate within one entry of the nearest (float
  rounding at a decade's edge, or of the table's own float32 entries, moves it
  by at most one); one comparison of the estimate with its two neighbours in the table
  then gives exactly the nearest. Three independent lookups instead of a
  binary search's eight dependent ones.
  """
  a = jnp.abs(x).astype(jnp.float32)
  # the decade by six comparisons with the powers of ten (cheaper than log10)
  i = sum((a >= np.float32(10.0**k)).astype(jnp.int32) for k in range(-6, 0))
  inv_scale = jnp.asarray(10.0 ** (6 - np.arange(7)), jnp.float32)[i]  # 1 / 10^{i-6}
  n_i = jnp.left_shift(1, i + (0 if signed else 1))
  t = (a * inv_scale - 0.1) * (n_i.astype(jnp.float32) / 0.9) - 0.5
  j = jnp.clip(jnp.round(t).astype(jnp.int32), 0, n_i - 1)
  if signed:  # 127 negatives, 0 at 127, decade i's positives from 128 + 2^i - 1, 1.0 at 255
    k = 127 + n_i + j
    k = jnp.where(x < 0, 254 - k, k)
  else:  # 0 at 0, decade i from 2^{i+1} - 1, 1.0 at 255
    k = n_i - 1 + j
  lo, hi = jnp.maximum(k - 1, 0), jnp.minimum(k + 1, code.shape[0] - 1)
  d_lo, d_k, d_hi = (jnp.abs(x - code[lo]), jnp.abs(x - code[k]), jnp.abs(x - code[hi]))
  best = jnp.where(d_lo <= jnp.minimum(d_k, d_hi), lo, jnp.where(d_k <= d_hi, k, hi))
  return best.astype(jnp.uint8)


def quantize_blockwise(
  x: jax.Array, code: jax.Array, block_size: int = 256, *, signed: bool | None = None
) -> QuantizedArray:
  """Quantizes ``x`` (any shape) block-wise against the sorted ``code``.

  With ``signed`` given, ``code`` must be ``dynamic_code(signed)`` and the
  closed-form :func:`nearest_code` finds each index; without, a binary search
  over any sorted code (:func:`nearest_by_search`). Both give argmin's index.
  """
  flat = x.reshape(-1).astype(jnp.float32)
  num_blocks = -(-flat.shape[0] // block_size)
  flat = jnp.pad(flat, (0, num_blocks * block_size - flat.shape[0]))
  blocks = flat.reshape(num_blocks, block_size)
  absmax = jnp.max(jnp.abs(blocks), axis=1)
  absmax = jnp.where(absmax == 0, 1.0, absmax)
  scaled = blocks / absmax[:, None]
  codes = (
    nearest_by_search(code, scaled) if signed is None else nearest_code(code, scaled, signed=signed)
  )
  return QuantizedArray(codes, absmax)


def dequantize_blockwise(q: QuantizedArray, code: jax.Array, shape) -> jax.Array:
  """The float32 tensor of ``shape`` that ``q`` stores."""
  values = code[q.codes.astype(jnp.int32)] * q.absmax[:, None]
  return values.reshape(-1)[: math.prod(shape)].reshape(shape)


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

  def update_fn(updates, state, params=None):
    del params
    c = optax.safe_increment(state.count)
    t = c.astype(jnp.float32)
    bc1, bc2 = 1.0 - b1**t, jnp.sqrt(1.0 - b2**t)
    g_leaves, treedef = jax.tree.flatten(updates)
    mu_leaves = jax.tree.leaves(state.mu, is_leaf=is_q)
    nu_leaves = jax.tree.leaves(state.nu, is_leaf=is_q)
    outs, new_mu, new_nu = [], [], []
    for g, mq, vq in zip(g_leaves, mu_leaves, nu_leaves):
      g32 = g.astype(jnp.float32)
      q = is_q(mq)
      m = dequantize_blockwise(mq, signed_code, g.shape) if q else mq
      v = dequantize_blockwise(vq, unsigned_code, g.shape) if q else vq
      m = (b1 * m + (1.0 - b1) * g32).astype(jnp.float32)
      v = (b2 * v + (1.0 - b2) * g32 * g32).astype(jnp.float32)
      outs.append((m / (jnp.sqrt(v) / bc2 + eps) / bc1).astype(g.dtype))
      new_mu.append(quantize_blockwise(m, signed_code, block_size, signed=True) if q else m)
      new_nu.append(quantize_blockwise(v, unsigned_code, block_size, signed=False) if q else v)
    return jax.tree.unflatten(treedef, outs), ScaleByAdam8bitState(
      c, jax.tree.unflatten(treedef, new_mu), jax.tree.unflatten(treedef, new_nu)
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
  return optax.GradientTransformation(init_fn, nonfinite.skip_nonfinite(update_fn))


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
  return nonfinite.guarded_chain(
    optax.GradientTransformation(*direction),
    optax.add_decayed_weights(weight_decay),
    optax.scale_by_learning_rate(learning_rate),
  )


def state_bytes(tree) -> int:
  """Bytes held by the arrays of an optimizer state (for memory comparisons)."""
  return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(tree) if hasattr(x, "dtype"))
