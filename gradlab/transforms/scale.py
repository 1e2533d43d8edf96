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
``axis=0`` here; higher-rank kernels are viewed as ``[-1, out]``.

Non-finite gradients: skipped (zero update, unchanged state) by every member.

References:
  Glentis, Li, Han, Hong. A Minimalist Optimizer Design for LLM Pretraining.
  2025. https://arxiv.org/abs/2506.16659
"""

from __future__ import annotations

import re
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from gradlab.transforms import _common


def column_normalize(*, axis: int = 0, eps: float = 1e-8) -> optax.GradientTransformation:
  """Divides each column of every matrix leaf by the column's RMS.

  ``axis`` is the axis the mean runs over (0 for flax's ``[in, out]``
  kernels, 1 for torch's ``[out, in]``); leaves of rank > 2 are reshaped to
  ``[-1, last]`` first (axis 0) or ``[first, -1]`` (axis 1). 1-D leaves are
  refused: route them elsewhere (:func:`scale` gives them AdamW).
  """
  if axis not in (0, 1):
    raise ValueError(f"axis: expected 0 or 1, got {axis!r}")
  _common.check_positive("eps", eps, allow_zero=True)

  def normalize(g):
    if g.ndim < 2:
      raise ValueError(f"column_normalize: got a leaf of shape {g.shape}; it needs matrices "
                       "(rank >= 2), so route 1-D parameters to another transform")
    m = g.reshape(-1, g.shape[-1]) if axis == 0 else g.reshape(g.shape[0], -1)
    s = jnp.maximum(jnp.sqrt(jnp.mean(jnp.square(m), axis=axis, keepdims=True)), eps)
    return (m / s).reshape(g.shape)

  def update_fn(updates, state, params=None):
    del params
    return jax.tree.map(normalize, updates), state

  return optax.GradientTransformation(optax.init_empty_state, _common.skip_nonfinite(update_fn))


class TorchAdamState(NamedTuple):
  count: jax.Array
  mu: optax.Updates
  nu: optax.Updates


def scale_by_torch_adam(b1: float = 0.9, b2: float = 0.999,
                        eps: float = 1e-8) -> optax.GradientTransformation:
  """Adam with PyTorch's epsilon placement (``m / (sqrt(v) + eps)`` uncorrected).

  ``optax.scale_by_adam`` divides by ``sqrt(v_hat) + eps`` instead; this form
  is what SCALE's (and SPAM's, diffGrad's) official code runs.
  """
  _common.check_unit_interval("b1", b1)
  _common.check_unit_interval("b2", b2)

  def init_fn(params):
    z = optax.tree.zeros_like(params)
    return TorchAdamState(jnp.zeros([], jnp.int32), z, z)

  def update_fn(updates, state, params=None):
    del params
    c = state.count + 1
    mu = jax.tree.map(lambda m, g: b1 * m + (1 - b1) * g, state.mu, updates)
    nu = jax.tree.map(lambda v, g: b2 * v + (1 - b2) * g * g, state.nu, updates)
    return (_common.torch_adam_direction(mu, nu, c, b1, b2, eps),
            TorchAdamState(optax.safe_increment(state.count), mu, nu))

  return optax.GradientTransformation(init_fn, _common.skip_nonfinite(update_fn))


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
    names = [jax.tree_util.keystr(p, simple=True, separator="/")
             for p, x in jax.tree_util.tree_leaves_with_path(params) if jnp.ndim(x) >= 2]
    raise ValueError(f"last_layer: the pattern {last_layer!r} matches no matrix parameter; "
                     f"the matrices are {names}")
  return labels


def scale(learning_rate: optax.ScalarOrSchedule, *, last_layer: str, momentum: float = 0.9,
          weight_decay: float = 0.0, adam_b1: float = 0.9, adam_b2: float = 0.999,
          adam_eps: float = 1e-8, axis: int = 0) -> optax.GradientTransformation:
  """The SCALE optimizer. ``last_layer``: a regex for the output layer's path.

  Example: ``scale(1e-3, last_layer=r"Dense_2/kernel")`` for a three-layer MLP.
  """
  _common.check_unit_interval("momentum", momentum)
  normalize = column_normalize(axis=axis)
  routed = optax.partition(
      {"matrix": normalize,
       "last": optax.chain(optax.ema(momentum, debias=False), normalize),
       "oned": scale_by_torch_adam(adam_b1, adam_b2, adam_eps)},
      lambda params: scale_labels(params, last_layer))
  return _common.guarded_chain(routed, optax.add_decayed_weights(weight_decay),
                     optax.scale_by_learning_rate(learning_rate))
