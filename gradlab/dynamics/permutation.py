r"""Permutation symmetries of a network and weight matching (Git Re-Basin).

Reference: Ainsworth, Hayase & Srinivasa, "Git Re-Basin: merging models
modulo permutation symmetries", ICLR 2023, Algorithm 1 (weight matching),
ported line by line from the official code, samuela/git-re-basin
``src/weight_matching.py`` (``PermutationSpec``,
``permutation_spec_from_axes_to_perm``, ``mlp_permutation_spec``,
``get_permuted_param``, ``apply_permutation``, ``weight_matching``).

A hidden unit's incoming weights (a kernel's column, its bias) and outgoing
weights (the next kernel's row) may be permuted together without changing
the function. A :class:`PermutationSpec` names one permutation per hidden
layer and, for every parameter, which permutation acts on each of its axes
(``None``: none). ``perm[p]`` is an index array and permuting takes
``jnp.take(w, perm[p], axis)`` — the new unit ``i`` is the old unit
``perm[p][i]``, exactly as the official code.

Weight matching maximizes ``sum_l <W_l^a, P_l W_l^b P_{l-1}^T>`` over the
permutations by coordinate descent: for one permutation at a time (in a
random order each sweep) the others are held fixed and the best one is a
linear assignment problem, solved by ``scipy.optimize.linear_sum_assignment``;
sweeps stop when none improves the objective. Deviations from the official
code: parameters are addressed by their pytree path joined with ``/`` (so
gradlab's flax MLP, ``{"params": {"dense_0": {"kernel", "bias"}}}``, is
used as is, without ``flatten_params``), the assignment's cost matrix is
accumulated in float64 NumPy on the host (the official one in float32
``jnp``), the sweep order comes from ``jax.random.permutation(fold_in(key,
iteration))`` (the official ``rngmix`` folds in ``hash(iteration)``, the
same for an integer), and nothing is printed.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from gradlab import _checks


class PermutationSpec(NamedTuple):
  """Which permutation acts on which axis of which parameter.

  Attributes:
    perm_to_axes: ``{perm name: [(parameter path, axis), ...]}``.
    axes_to_perm: ``{parameter path: (perm name or None, one per axis)}``;
      a path is the parameter's pytree keys joined by ``/``.
  """

  perm_to_axes: dict
  axes_to_perm: dict


def permutation_spec_from_axes_to_perm(axes_to_perm: dict) -> PermutationSpec:
  """The spec from ``{path: (perm or None per axis)}`` (the official helper)."""
  perm_to_axes = defaultdict(list)
  for wk, axis_perms in axes_to_perm.items():
    for axis, perm in enumerate(axis_perms):
      if perm is not None:
        perm_to_axes[perm].append((wk, axis))
  return PermutationSpec(perm_to_axes=dict(perm_to_axes), axes_to_perm=dict(axes_to_perm))


def mlp_permutation_spec(
  num_layers: int, *, prefix: str = "params", layer_name: str = "dense_{}"
) -> PermutationSpec:
  """The spec of ``gradlab.models.MLP`` with ``num_layers`` Dense layers (hidden + output).

  Hidden layer ``i`` has permutation ``P_i`` on the outputs of
  ``dense_i/kernel`` and on ``dense_i/bias``, and on the inputs of
  ``dense_{i+1}/kernel``; the network's input and output are not permuted.
  The official ``mlp_permutation_spec(num_hidden_layers)`` with flax's
  ``Dense_{i}`` names is ``mlp_permutation_spec(num_hidden_layers + 1,
  prefix="", layer_name="Dense_{}")``.
  """
  n = _checks.integer("num_layers", num_layers, minimum=2)
  name = lambda i, leaf: "/".join(  # noqa: E731
    part for part in (prefix, layer_name.format(i), leaf) if part
  )
  hidden = n - 1
  return permutation_spec_from_axes_to_perm(
    {
      name(0, "kernel"): (None, "P_0"),
      **{name(i, "kernel"): (f"P_{i - 1}", f"P_{i}") for i in range(1, hidden)},
      **{name(i, "bias"): (f"P_{i}",) for i in range(hidden)},
      name(hidden, "kernel"): (f"P_{hidden - 1}", None),
      name(hidden, "bias"): (None,),
    }
  )


def _key_name(k) -> str:
  for attr in ("key", "name", "idx"):
    if hasattr(k, attr):
      return str(getattr(k, attr))
  return str(k)


def _flatten(params: Any) -> tuple[dict[str, Any], list[str], Any]:
  leaves, treedef = jax.tree_util.tree_flatten_with_path(params)
  names = ["/".join(_key_name(k) for k in path) for path, _ in leaves]
  return dict(zip(names, (leaf for _, leaf in leaves))), names, treedef


def _check_spec(spec: PermutationSpec, flat: dict, name: str) -> None:
  missing = sorted(set(spec.axes_to_perm) - set(flat))
  if missing:
    raise ValueError(f"{name}: expected the parameters the spec names, missing {missing[:3]}")
  extra = sorted(set(flat) - set(spec.axes_to_perm))
  if extra:
    raise ValueError(f"{name}: has parameters the spec does not name: {extra[:3]}")
  for k, axes in spec.axes_to_perm.items():
    if jnp.ndim(flat[k]) != len(axes):
      raise ValueError(
        f"{name}: {k} has shape {jnp.shape(flat[k])}, but the spec gives {len(axes)} axes"
      )


def _perm_sizes(spec: PermutationSpec, flat: dict) -> dict[str, int]:
  sizes = {}
  for p, axes in spec.perm_to_axes.items():
    dims = {jnp.shape(flat[wk])[axis] for wk, axis in axes}
    if len(dims) != 1:
      raise ValueError(f"params: the axes of permutation {p} have different sizes {sorted(dims)}")
    sizes[p] = dims.pop()
  return sizes


def _permuted(spec: PermutationSpec, perm, k: str, flat: dict, except_axis=None):
  """The official ``get_permuted_param``."""
  w = flat[k]
  for axis, p in enumerate(spec.axes_to_perm[k]):
    if axis == except_axis or p is None:
      continue
    w = jnp.take(w, perm[p], axis=axis)
  return w


def apply_permutation(spec: PermutationSpec, perm: dict, params: Any) -> Any:
  """``params`` with every axis the spec names permuted by ``perm`` (jit-compatible).

  The result computes the same function as ``params`` (to float rounding):
  a hidden unit moves together with all its weights.
  """
  flat, names, treedef = _flatten(params)
  _check_spec(spec, flat, "params")
  sizes = _perm_sizes(spec, flat)
  for p, n in sizes.items():
    if p not in perm or jnp.shape(perm[p]) != (n,):
      raise ValueError(
        f"perm: expected an index array of shape ({n},) for {p}, got "
        f"{jnp.shape(perm[p]) if p in perm else 'none'}"
      )
  return treedef.unflatten([_permuted(spec, perm, k, flat) for k in names])


def identity_permutation(spec: PermutationSpec, params: Any) -> dict:
  """``{perm name: arange(size)}``: the permutation that changes nothing."""
  flat, _, _ = _flatten(params)
  _check_spec(spec, flat, "params")
  return {p: jnp.arange(n) for p, n in _perm_sizes(spec, flat).items()}


def weight_matching(
  key: jax.Array,
  spec: PermutationSpec,
  params_a: Any,
  params_b: Any,
  *,
  max_iter: int = 100,
  init_perm: dict | None = None,
) -> dict:
  """A permutation of ``params_b`` that makes its weights match ``params_a`` (Algorithm 1).

  Runs on the host (SciPy's Hungarian solver), not under ``jit``.

  Args:
    key: orders the permutations in each sweep (``jax.random.key``).
    spec: the networks' :class:`PermutationSpec`.
    params_a: the reference network.
    params_b: the network to permute, of ``params_a``'s structure.
    max_iter: at most this many sweeps over all permutations.
    init_perm: the starting permutation (default: the identity).

  Returns:
    ``{perm name: int32 index array}``; apply it to ``params_b`` with
    :func:`apply_permutation` to bring b into a's basin.
  """
  from scipy.optimize import linear_sum_assignment  # noqa: PLC0415 - host-only solver

  _checks.is_key("key", key)
  iters = _checks.integer("max_iter", max_iter, minimum=1)
  flat_a, _, _ = _flatten(params_a)
  flat_b, _, _ = _flatten(params_b)
  _check_spec(spec, flat_a, "params_a")
  _check_spec(spec, flat_b, "params_b")
  for k in spec.axes_to_perm:
    if jnp.shape(flat_a[k]) != jnp.shape(flat_b[k]):
      raise ValueError(
        f"params_b: {k} has shape {jnp.shape(flat_b[k])}, params_a {jnp.shape(flat_a[k])}"
      )
  sizes = _perm_sizes(spec, flat_a)
  flat_a = {k: np.asarray(v, np.float64) for k, v in flat_a.items()}
  flat_b = {k: np.asarray(v, np.float64) for k, v in flat_b.items()}
  if init_perm is None:
    perm = {p: np.arange(n) for p, n in sizes.items()}
  else:
    perm = {p: np.asarray(init_perm[p]) for p in sizes}
  names = list(perm)

  def permuted_b(k, except_axis):
    w = flat_b[k]
    for axis, p in enumerate(spec.axes_to_perm[k]):
      if axis != except_axis and p is not None:
        w = np.take(w, perm[p], axis=axis)
    return w

  for iteration in range(iters):
    progress = False
    order = np.asarray(jax.random.permutation(jax.random.fold_in(key, iteration), len(names)))
    for p_ix in order:
      p = names[p_ix]
      n = sizes[p]
      cost = np.zeros((n, n))
      for wk, axis in spec.perm_to_axes[p]:
        w_a = np.moveaxis(flat_a[wk], axis, 0).reshape((n, -1))
        w_b = np.moveaxis(permuted_b(wk, axis), axis, 0).reshape((n, -1))
        cost += w_a @ w_b.T
      ri, ci = linear_sum_assignment(cost, maximize=True)
      assert (ri == np.arange(n)).all()
      old = cost[np.arange(n), perm[p]].sum()
      new = cost[np.arange(n), ci].sum()
      progress = progress or new > old + 1e-12
      perm[p] = ci
    if not progress:
      break
  return {p: jnp.asarray(v, jnp.int32) for p, v in perm.items()}
