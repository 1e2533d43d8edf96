"""Layer capture: each flax layer's input and output gradient, per example, per token.

K-FAC and EK-FAC need, for every layer ``y = a W (+ b)`` and every example,
the layer's inputs ``a_t`` and the gradients ``g_t = dl / dy_t`` at its
outputs, one row per token ``t`` (a sequence position, a convolution's output
pixel, an embedding lookup): the example's gradient of ``W`` is
``sum_t a_t g_t^T``. They are read by intercepting the layer's call (flax's
``nn.intercept_methods``): the input is recorded and a zero perturbation is
added to the output, whose gradient is ``g``. This generalizes BackPACK's and
``gradstats.dense_gradient_moments``' trick to inputs of any rank.

Covered layers (exactly these flax.linen classes, not subclasses, called
through ``__call__``):

* ``nn.Dense`` on inputs ``[..., d_in]``: every leading position is a token;
  ``a = [x, 1]`` with a bias, ``x`` without one.
* ``nn.DenseGeneral`` with any ``axis`` and ``features`` (the contracted axes
  flatten into ``d_in``, the features into ``d_out``; attention's query, key,
  value and output projections), ``batch_dims=()`` only.
* ``nn.Embed``: the input is the one-hot row of each token id (``d_in`` is
  the vocabulary); its ``attend`` (tied output weights) is refused.
* ``nn.Conv`` (any number of spatial dimensions, strides, dilations, padding
  ``"SAME"``, ``"VALID"`` or explicit): ``a`` is each output position's patch
  (``lax.conv_general_dilated_patches``) in the kernel's ``[*window, c_in]``
  order; ``feature_group_count > 1``, a kernel ``mask`` and ``"CIRCULAR"`` /
  ``"CAUSAL"`` / ``"REFLECT"`` padding are refused.

A layer called more than once (shared weights) contributes the tokens of every
call. Anything else that holds parameters (``LayerNorm``, ``self.param``,
NNX modules, hand-written ``x @ W``) is not captured: the K-FAC family
refuses such parameters in one line unless told to leave them out.

The per-example function is ``loss_fn(params, example) -> scalar`` (one
example, no batch axis; a model that needs a batch axis is called on
``example[None]``). It is vmapped over the examples here, so each layer sees
one example's input, and the output perturbation is per example.
"""

from __future__ import annotations

import math
from typing import Any, Callable, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax.linen import linear as _linear

COVERED = (nn.Dense, nn.DenseGeneral, nn.Embed, nn.Conv)
KINDS = {nn.Dense: "dense", nn.DenseGeneral: "dense_general", nn.Embed: "embed", nn.Conv: "conv"}


class Call(NamedTuple):
  """One call of a covered layer, as seen on one example (static)."""

  name: str  # the module path joined by "/", e.g. "block_0/attn/query"
  kind: str  # "dense" | "dense_general" | "embed" | "conv"
  bias: bool
  d_in: int  # input features (without the homogeneous 1)
  d_out: int
  in_shape: tuple[int, ...]
  out_shape: tuple[int, ...]
  kernel_shape: tuple[int, ...]
  options: tuple  # kind-specific static settings (axis; conv geometry)


def _name(module: nn.Module) -> str:
  return "/".join(module.path)


def _describe(module: nn.Module, x: Any, y: Any) -> Call:
  kind = KINDS[type(module)]
  name = _name(module)
  in_shape, out_shape = tuple(jnp.shape(x)), tuple(jnp.shape(y))
  if kind == "dense":
    d_in, d_out = in_shape[-1], module.features
    return Call(name, kind, module.use_bias, d_in, d_out, in_shape, out_shape, (d_in, d_out), ())
  if kind == "dense_general":
    if module.batch_dims:
      raise ValueError(
        f"loss_fn: DenseGeneral {name!r} has batch_dims={module.batch_dims}; K-FAC covers "
        "DenseGeneral with batch_dims=() only"
      )
    axis = module.axis if isinstance(module.axis, (tuple, list)) else (module.axis,)
    axis = tuple(a % len(in_shape) for a in axis)
    features = module.features if isinstance(module.features, (tuple, list)) else (module.features,)
    in_feats = tuple(in_shape[a] for a in axis)
    return Call(
      name, kind, module.use_bias, math.prod(in_feats), math.prod(features), in_shape, out_shape,
      in_feats + tuple(features), (axis,),
    )  # fmt: skip
  if kind == "embed":
    v, d = module.num_embeddings, module.features
    return Call(name, kind, False, v, d, in_shape, out_shape, (v, d), ())
  # conv
  if module.feature_group_count != 1:
    raise ValueError(
      f"loss_fn: Conv {name!r} has feature_group_count={module.feature_group_count}; "
      "K-FAC covers ungrouped convolutions only"
    )
  if module.mask is not None:
    raise ValueError(
      f"loss_fn: Conv {name!r} has a kernel mask; K-FAC does not cover masked kernels"
    )
  ks = tuple(module.kernel_size)
  rank = len(ks)
  padding = module.padding
  if isinstance(padding, str) and padding not in ("SAME", "VALID"):
    raise ValueError(
      f"loss_fn: Conv {name!r} has padding={padding!r}; K-FAC covers 'SAME', 'VALID' and "
      "explicit padding"
    )
  padding = _linear.canonicalize_padding(padding, rank)
  padding = padding if isinstance(padding, str) else tuple(tuple(p) for p in padding)

  def tup(v):
    if v is None:
      return (1,) * rank
    return tuple(v) if isinstance(v, (tuple, list)) else (v,) * rank

  c_in, c_out = in_shape[-1], module.features
  geometry = (
    ks,
    tup(module.strides),
    padding,
    tup(module.input_dilation),
    tup(module.kernel_dilation),
  )
  return Call(
    name, kind, module.use_bias, c_in * math.prod(ks), c_out, in_shape, out_shape,
    (*ks, c_in, c_out), geometry,
  )  # fmt: skip


def _run(fn: Callable[..., Any], args: tuple, perturbations: list | None):
  """``fn(*args)`` with every covered call's input recorded (and its output perturbed
  by ``perturbations[i]``); returns ``(output, inputs, calls)``."""
  inputs, calls = [], []

  def interceptor(next_fun, fargs, kwargs, context):
    module = context.module
    if type(module) in KINDS:
      if type(module) is nn.Embed and context.method_name == "attend":
        raise ValueError(
          f"loss_fn: Embed {_name(module)!r} is used through attend (tied output weights), "
          "which K-FAC does not cover"
        )
      if context.method_name == "__call__":
        x = fargs[0]
        y = next_fun(*fargs, **kwargs)
        calls.append(_describe(module, x, y))
        inputs.append(x)
        if perturbations is not None:
          y = y + perturbations[len(inputs) - 1].astype(y.dtype)
        return y
    return next_fun(*fargs, **kwargs)

  with nn.intercept_methods(interceptor):
    out = fn(*args)
  return out, inputs, calls


def discover(fn: Callable[..., Any], *args: Any) -> tuple[Call, ...]:
  """The covered calls ``fn(*args)`` makes (static: shapes and settings), in call order."""
  found: list[Call] = []

  def probe(*a):
    out, _, calls = _run(fn, a, None)
    found.extend(calls)
    return out

  jax.eval_shape(probe, *args)
  return tuple(found)


def batched_layer_io(
  fn: Callable[..., jax.Array], calls: tuple[Call, ...], args: tuple, in_axes: tuple
) -> tuple[jax.Array, list[jax.Array], list[jax.Array]]:
  """Every example's covered-call inputs and output gradients ``d fn / d y``: ``fn``
  (one example's real scalar loss, making exactly ``calls``) vmapped over ``args``
  (``in_axes`` as ``jax.vmap``'s), one reverse pass of the summed losses (each example's
  loss depends only on its own perturbations, so their gradients are the per-example
  ones). Returns ``(values [B], inputs [B, ...], output gradients [B, ...])`` per call."""
  sizes = {
    jnp.shape(leaf)[0] for a, ax in zip(args, in_axes) if ax == 0 for leaf in jax.tree.leaves(a)
  }
  (b,) = sizes
  zeros = [jnp.zeros((b, *c.out_shape), jnp.result_type(float)) for c in calls]

  def one(perturbations, *a):
    out, inputs, seen = _run(fn, a, perturbations)
    if tuple(seen) != tuple(calls):
      raise ValueError("loss_fn: the layers it calls changed between two traces")
    return out, inputs

  def total(perturbations):
    values, inputs = jax.vmap(one, in_axes=(0, *in_axes))(perturbations, *args)
    return jnp.sum(values), (values, inputs)

  (_, (values, inputs)), grads = jax.value_and_grad(total, has_aux=True)(zeros)
  return values, inputs, grads


def rows(call: Call, x: jax.Array, g: jax.Array) -> tuple[jax.Array, jax.Array]:
  """One call's per-token rows: ``a [tokens, d_in (+1 with a bias)]`` and ``g [tokens, d_out]``.

  The rows are in the kernel's flattened order (``kernel.reshape(d_in, d_out)``),
  so the call's kernel gradient is ``(a^T g)[:d_in]`` and its bias gradient the
  last row.
  """
  dtype = g.dtype
  if call.kind == "dense":
    a = x.reshape(-1, call.d_in)
  elif call.kind == "dense_general":
    (axis,) = call.options
    a = jnp.moveaxis(x, axis, tuple(range(x.ndim - len(axis), x.ndim))).reshape(-1, call.d_in)
  elif call.kind == "embed":
    a = jax.nn.one_hot(x.reshape(-1), call.d_in, dtype=dtype)
  else:
    ks, strides, padding, lhs_dil, rhs_dil = call.options
    rank = len(ks)
    c_in = call.in_shape[-1]
    xb = x.reshape(-1, *x.shape[-(rank + 1) :])
    spatial = "".join("HWDXYZ"[i] for i in range(rank)) if rank <= 6 else None
    dn = (f"N{spatial}C", f"{spatial}IO", f"N{spatial}C")
    patches = jax.lax.conv_general_dilated_patches(
      xb, ks, strides, padding, lhs_dilation=lhs_dil, rhs_dilation=rhs_dil, dimension_numbers=dn
    )  # [B', *out_spatial, c_in * prod(ks)], features ordered (c_in, *window)
    p = patches.reshape(-1, c_in, math.prod(ks))
    a = jnp.swapaxes(p, 1, 2).reshape(-1, call.d_in)  # (*window, c_in): the kernel's order
  a = a.astype(dtype)
  if call.bias:
    a = jnp.concatenate([a, jnp.ones((a.shape[0], 1), dtype)], axis=1)
  return a, g.reshape(-1, call.d_out)


def check_shapes(calls: tuple[Call, ...]) -> None:
  """Every call of one layer must have the same kernel (shared weights)."""
  by_name: dict[str, Call] = {}
  for c in calls:
    first = by_name.setdefault(c.name, c)
    if (first.kind, first.kernel_shape, first.bias) != (c.kind, c.kernel_shape, c.bias):
      raise ValueError(f"loss_fn: layer {c.name!r} is called with two different kernel shapes")


def token_count(call: Call) -> int:
  """Rows of ``a`` for one call on one example."""
  if call.kind == "dense":
    return math.prod(call.in_shape[:-1])
  if call.kind == "dense_general":
    (axis,) = call.options
    return math.prod(s for i, s in enumerate(call.in_shape) if i not in axis)
  if call.kind == "embed":
    return math.prod(call.in_shape)
  return math.prod(call.out_shape[:-1])
