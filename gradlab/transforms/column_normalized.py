r"""SCALE: column-normalized SGD with momentum on the last layer only (Glentis et al. 2025).

Follows the authors' code (class ``SCALE``, "Stochastic Column-normalized
Last-layer Momentum"):

* every matrix ``G`` (2-D or more) is **column-normalized**: each column is
  divided by its root mean square, ``U = G / \max(\sqrt{mean_{col}(G^2)}, 10^{-8})``;
* the **last layer** (the LM head) first gets momentum,
  ``M \leftarrow \beta M + (1-\beta) G`` (torch's ``lerp``, optax's
  ``ema(debias=False)``), and ``M`` is normalized;
* 1-D parameters (norms, biases) use AdamW with PyTorch's epsilon placement;
* decoupled weight decay ``p \leftarrow p (1 - \eta \lambda)`` on everything.

Layout: the official code normalizes torch's ``[out, in]`` weights over
``in`` (one scale per output unit) and the ``[vocab, d]`` embedding over
``vocab``. In flax both are "over axis 0" (a ``Dense`` kernel is
``[in, out]``, an ``Embed`` table ``[vocab, d]``), which is the default
``layout="in_out"`` here (``"out_in"`` is torch's); higher-rank kernels are
viewed as ``[-1, out]``.

Non-finite gradients: skipped (zero update, unchanged state) by every member.

References:
  Glentis, Li, Han, Hong. A Minimalist Optimizer Design for LLM Pretraining.
  2025. https://arxiv.org/abs/2506.16659
"""

from __future__ import annotations

import re
from typing import Any

import jax
import jax.numpy as jnp
import optax
from jax.typing import ArrayLike

from gradlab import _checks
from gradlab.transforms import nonfinite, torch_adam

LAYOUTS = ("in_out", "out_in")


def _column_normalize(layout, eps):
  axis = LAYOUTS.index(layout)

  def normalize(g):
    if g.ndim < 2:
      raise ValueError(
        f"column_normalize: got a leaf of shape {g.shape}; it needs matrices "
        "(rank >= 2), so route 1-D parameters to another transform"
      )
    m = g.reshape(-1, g.shape[-1]) if axis == 0 else g.reshape(g.shape[0], -1)
    s = jnp.maximum(jnp.sqrt(jnp.mean(jnp.square(m), axis=axis, keepdims=True)), eps)
    return (m / s).astype(g.dtype).reshape(g.shape)

  def update_fn(updates, state, params=None):
    del params
    return jax.tree.map(normalize, updates), state

  return optax.init_empty_state, update_fn


def column_normalize(
  *, layout: str = "in_out", eps: ArrayLike = 1e-8
) -> optax.GradientTransformation:
  """Divides each column of every matrix leaf by the column's RMS (floored at ``eps > 0``).

  ``layout`` names the kernel's axes: ``"in_out"`` (flax's ``Dense``; the
  mean runs over axis 0) or ``"out_in"`` (torch's; over axis 1). Leaves of
  rank > 2 are reshaped to ``[-1, last]`` (``"in_out"``) or ``[first, -1]``
  first. 1-D leaves are refused: route them elsewhere (:func:`column_normalized_sgd`
  gives them AdamW).
  """
  _checks.one_of("layout", layout, LAYOUTS)
  _checks.positive("eps", eps)
  init_fn, update_fn = _column_normalize(layout, eps)
  return optax.GradientTransformation(init_fn, nonfinite.skip_nonfinite(update_fn))


def scale_labels(params: Any, last_layer: str) -> Any:
  """SCALE's routing: ``"last"`` for leaves whose path matches the regex
  ``last_layer``, ``"oned"`` for 1-D (and scalar) leaves, ``"matrix"`` otherwise.

  Paths are ``jax.tree_util.keystr(path, simple=True, separator="/")``, e.g.
  ``"params/Dense_2/kernel"``.
  """
  pattern = re.compile(last_layer)
  found = []

  def label(path, leaf):
    name = jax.tree_util.keystr(path, simple=True, separator="/")
    if jnp.ndim(leaf) < 2:
      return "oned"
    if pattern.search(name):
      found.append(name)
      return "last"
    return "matrix"

  labels = jax.tree_util.tree_map_with_path(label, params)
  if not found:
    names = [
      jax.tree_util.keystr(p, simple=True, separator="/")
      for p, x in jax.tree_util.tree_leaves_with_path(params)
      if jnp.ndim(x) >= 2
    ]
    raise ValueError(
      f"last_layer: the pattern {last_layer!r} matches no matrix parameter; "
      f"the matrices are {names}"
    )
  return labels


def column_normalized_sgd(
  learning_rate: optax.ScalarOrSchedule,
  *,
  last_layer: str,
  momentum: ArrayLike = 0.9,
  weight_decay: ArrayLike = 0.0,
  adam_b1: ArrayLike = 0.9,
  adam_b2: ArrayLike = 0.999,
  adam_eps: ArrayLike = 1e-8,
  layout: str = "in_out",
) -> optax.GradientTransformationExtraArgs:
  """The SCALE optimizer. ``last_layer``: a regex for the output layer's path.

  Named for what it computes rather than the paper's acronym, which would read
  as ``optax.scale`` (multiplication by a constant).

  Example: ``column_normalized_sgd(1e-3, last_layer=r"Dense_2/kernel")`` for a
  three-layer MLP.
  """
  _checks.unit_interval("momentum", momentum)
  torch_adam.check_adam(adam_b1, adam_b2, adam_eps)
  _checks.one_of("layout", layout, LAYOUTS)
  normalize = optax.GradientTransformation(*_column_normalize(layout, 1e-8))
  routed = optax.partition(
    {
      "matrix": normalize,
      "last": optax.chain(optax.ema(momentum, debias=False), normalize),
      "oned": optax.GradientTransformation(
        *torch_adam.unguarded_torch_adam(adam_b1, adam_b2, adam_eps)
      ),
    },
    lambda params: scale_labels(params, last_layer),
  )
  return nonfinite.guarded_chain(
    routed, optax.add_decayed_weights(weight_decay), optax.scale_by_learning_rate(learning_rate)
  )
