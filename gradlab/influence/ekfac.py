"""EK-FAC (George et al. 2018; Grosse et al. 2023, kronfluence's method) for Dense layers.

For a Dense layer ``z = a W + b`` the per-example gradient of ``[W; b]`` is
``a~ s^T`` with ``a~ = [a, 1]`` the layer input (homogeneous) and ``s`` the
gradient at the output. The curvature ``C = (1/n) sum_i g_i g_i^T`` of the
layer is approximated block-diagonally across layers and, inside a layer, in
the eigenbasis of the Kronecker factors ``A = E[a~ a~^T]`` (``Q_A``) and
``S = E[s s^T]`` (``Q_S``), with the eigenvalues *corrected* to the exact
second moments of the gradients in that basis:
``Lambda = E[(Q_A^T G~_i Q_S)^2]``. The inverse product is then
``Q_A ((Q_A^T V Q_S) / (Lambda + damping)) Q_S^T`` per layer.

The curvature is the per-example gradient covariance of ``loss_fn`` (the
empirical Fisher, kronfluence's ``use_empirical_fisher`` mode): it matches the
Hessian where the per-example residuals carry the curvature (e.g. at a
well-specified optimum, in expectation). ``loss_fn`` sees only params and an
example, so the layer's ``s`` is read off the bias gradient and ``a`` off the
kernel gradient as ``a = G_W s / |s|^2`` (exact for a Dense layer; an example
with ``s = 0`` has a zero gradient and contributes only its bias entry to A).
An L2 term inside ``loss_fn`` adds the same ``lambda theta`` to every
gradient and tilts that read-off; for EK-FAC pass the L2 strength as
``damping`` instead, as kronfluence does.

Every parameter must sit in a Dense layer: a dict with ``"kernel"`` of shape
``[in, out]`` and ``"bias"`` of shape ``[out]`` (flax ``nn.Dense``'s names).
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree


class LayerFactors(NamedTuple):
  q_a: jax.Array  # [in + 1, in + 1] eigenvectors of E[a~ a~^T]
  q_s: jax.Array  # [out, out] eigenvectors of E[s s^T]
  eigenvalues: jax.Array  # [in + 1, out] corrected: E[(Q_A^T G~ Q_S)^2]


def dense_layers(params: Any) -> list[tuple[Any, ...]]:
  """Paths (to the dict holding ``kernel`` and ``bias``) of every Dense layer; a
  one-line error naming the first parameter that is not in one."""
  leaves, _ = jax.tree_util.tree_flatten_with_path(params)
  layers: dict[tuple[Any, ...], dict[str, Any]] = {}
  for path, leaf in leaves:
    last = path[-1] if path else None
    name = getattr(last, "key", None)
    if name not in ("kernel", "bias"):
      raise ValueError(
        f"params: method='ekfac' needs every parameter in a Dense layer "
        f"{{'kernel': [in, out], 'bias': [out]}}, got {jax.tree_util.keystr(path) or 'a bare array'}"
      )
    layers.setdefault(tuple(path[:-1]), {})[name] = leaf
  for path, layer in layers.items():
    k, b = layer.get("kernel"), layer.get("bias")
    where = jax.tree_util.keystr(path)
    if k is None or b is None:
      raise ValueError(f"params: the Dense layer at {where} needs both 'kernel' and 'bias'")
    if jnp.ndim(k) != 2 or jnp.shape(b) != (jnp.shape(k)[1],):
      raise ValueError(
        f"params: the Dense layer at {where} needs kernel [in, out] and bias [out], got "
        f"{jnp.shape(k)} and {jnp.shape(b)}"
      )
  return list(layers)


def _get(tree: Any, path: tuple[Any, ...]) -> Any:
  for p in path:
    tree = tree[p.key]
  return tree


def _homogeneous(layer: Any) -> jax.Array:
  """``[..., in + 1, out]``: the kernel with the bias as its last row."""
  return jnp.concatenate([layer["kernel"], layer["bias"][..., None, :]], axis=-2)


def layer_factors(grads: Any, layer: tuple[Any, ...]) -> LayerFactors:
  """The eigenbases and corrected eigenvalues of one layer from per-example gradients
  (a pytree like params with a leading example axis)."""
  g = _homogeneous(_get(grads, layer))  # [n, in + 1, out]
  s = g[:, -1, :]
  s2 = jnp.sum(s * s, axis=-1)
  tiny = jnp.finfo(g.dtype).tiny
  a = jnp.einsum("nio,no->ni", g[:, :-1, :], s) / jnp.where(s2 > tiny, s2, 1.0)[:, None]
  a = jnp.where((s2 > tiny)[:, None], a, 0.0)
  a = jnp.concatenate([a, jnp.ones_like(a[:, :1])], axis=1)
  n = g.shape[0]
  _, q_a = jnp.linalg.eigh(a.T @ a / n)
  _, q_s = jnp.linalg.eigh(s.T @ s / n)
  rotated = jnp.einsum("ia,nio,ob->nab", q_a, g, q_s)
  return LayerFactors(q_a, q_s, jnp.mean(rotated * rotated, axis=0))


def ekfac_factors(loss_fn: Callable[[Any, Any], jax.Array], params: Any, train: Any) -> dict:
  """``{layer path: LayerFactors}`` from the per-example gradients of ``loss_fn`` on ``train``."""
  layers = dense_layers(params)
  grads = jax.vmap(jax.grad(loss_fn), in_axes=(None, 0))(params, train)
  return {path: layer_factors(grads, path) for path in layers}


def apply_inverse(factors: dict, params: Any, vectors: jax.Array, damping: Any) -> jax.Array:
  """Rows ``(C_ekfac + damping I)^-1 v`` of flat ``vectors`` ``[m, d]``."""
  _, unravel = ravel_pytree(params)

  def one(v):
    tree = unravel(v)
    out = tree
    for path, f in factors.items():
      layer = _get(tree, path)
      w = _homogeneous(layer)
      x = f.q_a @ ((f.q_a.T @ w @ f.q_s) / (f.eigenvalues + damping)) @ f.q_s.T
      out = _set(out, path, {"kernel": x[:-1], "bias": x[-1]})
    return ravel_pytree(out)[0]

  return jax.vmap(one)(vectors)


def _set(tree: Any, path: tuple[Any, ...], value: dict) -> Any:
  if not path:
    return {**tree, **value}
  key = path[0].key
  return {**tree, key: _set(tree[key], path[1:], value)}


def inverse_product(
  loss_fn: Callable[[Any, Any], jax.Array],
  params: Any,
  train: Any,
  vectors: jax.Array,
  *,
  damping: Any = 0.0,
) -> jax.Array:
  """EK-FAC's ``(C + damping I)^-1`` applied to the rows of flat ``vectors``."""
  return apply_inverse(ekfac_factors(loss_fn, params, train), params, vectors, damping)
