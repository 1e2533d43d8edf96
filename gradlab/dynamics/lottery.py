r"""Magnitude pruning and iterative magnitude pruning (IMP) with rewinding, as pure functions.

References:

* Frankle & Carbin, "The lottery ticket hypothesis", ICLR 2019, and Frankle,
  Dziugaite, Roy & Carbin, "Linear mode connectivity and the lottery ticket
  hypothesis", ICML 2020, Algorithm 2 (IMP with rewinding to step ``k``):
  train to the end, prune the fraction ``fraction`` of the remaining weights
  with the smallest magnitudes, rewind the survivors to their values at step
  ``k`` (``k = 0``: the original initialization), and repeat.
* The official code, facebookresearch/open_lth ``pruning/sparse_global.py``
  and ``pruning/sparse_layerwise.py``: the number pruned per round is
  ``ceil(fraction * remaining)``, counted over all prunable tensors (global)
  or per tensor (layerwise); the prunable tensors are the layers' weights
  (here the leaves named ``kernel``), never the biases.

Deviations: exactly ``ceil(fraction * remaining)`` weights are pruned, the
smallest ``|w|`` first with ties broken by position (open_lth's global
strategy keeps ``|w| > threshold`` and so prunes one more, all ties at the
threshold with it); a mask is a pytree of bools shaped like the parameters.
The count is exact when the mask is concrete; under ``jit``/``vmap`` without
x64 it is formed in float32 with a rounding guard (see ``_CEIL_GUARD``) and
can be one lower than ``ceil`` when ``fraction * remaining`` falls within
~2.4e-7 of it above an integer.
Training is the caller's ``train_fn`` (e.g. ``gradlab.train.make_update``
scanned over steps on :func:`masked_loss`), so the rounds stay pure.
"""

from __future__ import annotations

import math
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

from gradlab import _checks

SCOPES = ("global", "layerwise")


class IMPRound(NamedTuple):
  mask: Any  # the mask this round trained with (bool pytree)
  params: Any  # the parameters trained under it, masked
  sparsity: jax.Array  # the share of prunable weights pruned in ``mask``


def _leaf_name(path) -> str:
  k = path[-1] if path else None
  for attr in ("key", "name", "idx"):
    if hasattr(k, attr):
      return str(getattr(k, attr))
  return str(k)


def prunable_kernels(params: Any) -> Any:
  """A bool per leaf: True for the leaves named ``kernel`` (Dense and Conv weights)."""
  return jax.tree_util.tree_map_with_path(lambda p, _: _leaf_name(p) == "kernel", params)


def ones_mask(params: Any) -> Any:
  """The mask that keeps every weight."""
  return jax.tree.map(lambda p: jnp.ones(jnp.shape(p), bool), params)


def apply_mask(params: Any, mask: Any) -> Any:
  """``params`` with the pruned weights (mask False) set to 0."""
  return jax.tree.map(lambda p, m: jnp.where(m, p, jnp.zeros_like(p)), params, mask)


def masked_loss(loss_fn: Callable, mask: Any) -> Callable:
  """``loss_fn`` of the masked parameters: ``(params, *args) -> loss_fn(apply_mask(params, mask), *args)``.

  Its gradient is 0 on every pruned weight, so an optimizer without weight
  decay never moves them; the network the loss sees is always sparse.
  """
  return lambda params, *args, **kwargs: loss_fn(apply_mask(params, mask), *args, **kwargs)


def sparsity(mask: Any, prunable: Any | None = None) -> jax.Array:
  """The share of the prunable weights that ``mask`` prunes."""
  prunable = prunable_kernels(mask) if prunable is None else prunable
  leaves = [m for m, ok in zip(jax.tree.leaves(mask), jax.tree.leaves(prunable)) if ok]
  total = sum(m.size for m in leaves)
  kept = sum(jnp.sum(m) for m in leaves)
  return 1.0 - kept / total


# Under tracing without x64, ceil(fraction * remaining) is formed in float32, whose
# rounding can lift an exact integer product just above it (0.3f * 50 = 15.0000006);
# shrinking the product by this relative guard first keeps such counts exact, at the
# price of rounding down a true product whose fractional part is below ~2.4e-7 of it.
_CEIL_GUARD = 2.0**-22


def _num_pruned(fraction, remaining: jax.Array) -> jax.Array:
  """``ceil(fraction * remaining)``: exact (float64, as open_lth) when both are concrete."""
  f, r = _checks.concrete(fraction), _checks.concrete(remaining)
  if f is not None and r is not None:
    return jnp.asarray(math.ceil(float(f) * int(r)), remaining.dtype)
  x = jnp.asarray(fraction, jnp.result_type(float)) * remaining.astype(jnp.result_type(float))
  if x.dtype == jnp.float32:
    x = x - x * _CEIL_GUARD
  return jnp.ceil(x).astype(remaining.dtype)


def _keep_top(scores: jax.Array, mask: jax.Array, fraction) -> jax.Array:
  """Keeps the ``remaining - ceil(fraction * remaining)`` largest scores among ``mask``."""
  remaining = jnp.sum(mask)
  num_pruned = _num_pruned(fraction, remaining)
  keys = jnp.where(mask, scores, -1.0)  # pruned weights (|w| >= 0) sort last
  order = jnp.argsort(-keys, stable=True)
  rank = jnp.zeros_like(order).at[order].set(jnp.arange(order.size))
  return mask & (rank < remaining - num_pruned)


def magnitude_prune(
  params: Any,
  *,
  fraction: float,
  mask: Any | None = None,
  scope: str = "global",
  prunable: Any | None = None,
) -> Any:
  """One round of magnitude pruning: the new mask.

  Args:
    params: the trained parameters whose magnitudes decide.
    fraction: the share of the *remaining* prunable weights to prune, in
      ``[0, 1]`` (open_lth's ``pruning_fraction``; 0.2 in the papers).
    mask: the current mask (default: nothing pruned yet). Pruned weights
      stay pruned.
    scope: ``"global"`` ranks all prunable weights together (open_lth's
      ``sparse_global``), ``"layerwise"`` each tensor alone
      (``sparse_layerwise``).
    prunable: a bool per leaf (default :func:`prunable_kernels`); the other
      leaves keep their mask.

  Returns:
    A bool pytree shaped like ``params``.
  """
  _checks.unit_interval("fraction", fraction, closed=True)
  _checks.one_of("scope", scope, SCOPES)
  mask = ones_mask(params) if mask is None else mask
  if jax.tree.structure(mask) != jax.tree.structure(params):
    raise ValueError("mask: expected the tree structure of params")
  prunable = prunable_kernels(params) if prunable is None else prunable
  flat_p, treedef = jax.tree.flatten(params)
  flat_m = [jnp.asarray(m, bool) for m in jax.tree.leaves(mask)]
  flat_ok = jax.tree.leaves(prunable)
  idx = [i for i, ok in enumerate(flat_ok) if ok]
  if not idx:
    raise ValueError("prunable: expected at least one prunable leaf, got none")
  for i in idx:
    if jnp.shape(flat_m[i]) != jnp.shape(flat_p[i]):
      raise ValueError(
        f"mask: leaf {i} has shape {jnp.shape(flat_m[i])}, params {jnp.shape(flat_p[i])}"
      )
  out = list(flat_m)
  if scope == "layerwise":
    for i in idx:
      out[i] = _keep_top(jnp.abs(flat_p[i]).ravel(), flat_m[i].ravel(), fraction).reshape(
        jnp.shape(flat_p[i])
      )
  else:
    scores = jnp.concatenate([jnp.abs(flat_p[i]).ravel().astype(jnp.float32) for i in idx])
    keep = _keep_top(scores, jnp.concatenate([flat_m[i].ravel() for i in idx]), fraction)
    start = 0
    for i in idx:
      size = flat_m[i].size
      out[i] = keep[start : start + size].reshape(jnp.shape(flat_p[i]))
      start += size
  return treedef.unflatten(out)


def iterative_magnitude_pruning(
  train_fn: Callable[[Any, Any], Any],
  rewind_params: Any,
  trained_params: Any,
  *,
  rounds: int,
  fraction: float = 0.2,
  scope: str = "global",
  mask: Any | None = None,
  prunable: Any | None = None,
) -> list[IMPRound]:
  """IMP with rewinding (Frankle et al. 2020, Algorithm 2), ``rounds`` rounds.

  Round ``r``: prune ``fraction`` of the remaining weights of the last
  trained parameters (the dense ``trained_params`` first), rewind the
  survivors to ``rewind_params`` (the weights at step ``k`` of the dense
  run), and train them with ``train_fn(apply_mask(rewind_params, mask),
  mask) -> params`` (which must keep the pruned weights at 0, e.g. by
  training :func:`masked_loss`; its result is masked again here). After
  ``r`` rounds ``1 - (1 - fraction)^r`` of the weights are pruned (up to
  the ceiling per round).

  Returns:
    One :class:`IMPRound` per round, the last holding the sparsest network.
  """
  n = _checks.integer("rounds", rounds, minimum=1)
  out = []
  trained = trained_params
  for _ in range(n):
    mask = magnitude_prune(trained, fraction=fraction, mask=mask, scope=scope, prunable=prunable)
    trained = apply_mask(train_fn(apply_mask(rewind_params, mask), mask), mask)
    out.append(IMPRound(mask, trained, sparsity(mask, prunable)))
  return out
