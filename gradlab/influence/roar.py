r"""DiffROAR: do the features an attribution ranks highest predict the label best?

Reference: Shah, Jain & Netrapalli, "Do Input Gradients Highlight
Discriminative Features?", NeurIPS 2021; official code
github.com/harshays/inputgradients (``scripts/saliency_utils.py``
``SaliencyMap.get_attribution_indices``, ``scripts/misc_utils.py``
``get_masked_data``; the first notebook forms the differences).

An attribution scheme ranks each example's d coordinates by ``|a_j|`` (for
input gradients, ``a = d logit_yhat / dx``). The *top-k* unmasking keeps the
``round(k d)`` highest-ranked coordinates of every example and sets the rest
to a fill value (0 in the paper's definition of ``x^S``; the official code
passes a ``mask_val``); the *bottom-k* unmasking keeps the lowest. A model of
the same architecture is retrained on each unmasked training set and tested on
the equally unmasked test set:

    DiffROAR(k) = acc(top-k kept) - acc(bottom-k kept)
                = acc(bottom pixels masked) - acc(top pixels masked).

Positive: the highly attributed coordinates carry more of the label (the
paper's assumption (A)); negative: the attribution ranks the wrong
coordinates first; a random ranking gives 0 in expectation. Retraining (ROAR,
Hooker et al. 2019) keeps the masked inputs in-distribution for the model
that is scored.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

from gradlab import _checks

KEEPS = ("top", "bottom")


def _rows(name: str, x: Any) -> jax.Array:
  x = jnp.asarray(x)
  if x.ndim < 2 or x.shape[0] == 0 or x.size == 0:
    raise ValueError(f"{name}: expected a non-empty [examples, ...] array, got shape {x.shape}")
  return x


def keep_mask(attributions: Any, *, fraction: float, keep: str = "top") -> jax.Array:
  """Boolean ``[n, ...]``: per example, the ``round(fraction * d)`` coordinates of
  largest (``keep="top"``) or smallest (``"bottom"``) ``|attribution|``.

  Ties go to the earlier coordinate (in C order) either way; the official
  ``np.argsort`` (quicksort, then flipped for top-k) leaves their order
  unspecified.
  """
  _checks.one_of("keep", keep, KEEPS)
  a = _rows("attributions", attributions)
  fraction = float(fraction)
  if not 0.0 < fraction <= 1.0:
    raise ValueError(f"fraction: expected a share of coordinates in (0, 1], got {fraction}")
  n, shape = a.shape[0], a.shape[1:]
  flat = jnp.abs(a.reshape(n, -1)).astype(jnp.promote_types(a.dtype, jnp.float32))
  d = flat.shape[1]
  k = int(round(fraction * d))
  order = jnp.argsort(-flat if keep == "top" else flat, axis=1, stable=True)
  ranks = jnp.zeros_like(order).at[jnp.arange(n)[:, None], order].set(jnp.arange(d)[None, :])
  return (ranks < k).reshape((n, *shape))


def unmask(
  inputs: Any, attributions: Any, *, fraction: float, keep: str = "top", fill: float = 0.0
) -> jax.Array:
  """``inputs`` with only the :func:`keep_mask` coordinates kept, the rest set to ``fill``."""
  x = _rows("inputs", inputs)
  a = jnp.asarray(attributions)
  if a.shape != x.shape:
    raise ValueError(f"attributions: expected the inputs' shape {x.shape}, got {a.shape}")
  m = keep_mask(a, fraction=fraction, keep=keep)
  return jnp.where(m, x, jnp.asarray(fill, x.dtype))


class DiffROAR(NamedTuple):
  diff: jax.Array  # top_accuracy - bottom_accuracy
  top_accuracy: jax.Array  # retrained and tested with the top-k coordinates kept
  bottom_accuracy: jax.Array  # ... with the bottom-k coordinates kept


def diff_roar(
  fit_fn: Callable[[jax.Array, jax.Array], Any],
  accuracy_fn: Callable[[Any, jax.Array], jax.Array],
  train_inputs: Any,
  train_attributions: Any,
  test_inputs: Any,
  test_attributions: Any,
  key: jax.Array,
  *,
  fraction: float,
  fill: float = 0.0,
) -> DiffROAR:
  """DiffROAR at level ``fraction`` (the paper's k, the share of coordinates kept).

  Args:
    fit_fn: ``(train_inputs, key) -> params``, training a fresh model on the
      given (unmasked) training inputs and the caller's labels; both
      retrainings get the same ``key`` (paired).
    accuracy_fn: ``(params, test_inputs) -> accuracy`` on the caller's test labels.
    train_attributions, test_attributions: attributions shaped like the inputs
      (those of the model being audited).
    fraction: the share kept, in ``(0, 1]``.
    fill: the value of the removed coordinates.

  Pure: works under ``jit`` and ``vmap`` (e.g. over seeds) when ``fit_fn`` does.
  """
  _checks.is_key("key", key)
  accs = []
  for keep in KEEPS:
    xtr = unmask(train_inputs, train_attributions, fraction=fraction, keep=keep, fill=fill)
    xte = unmask(test_inputs, test_attributions, fraction=fraction, keep=keep, fill=fill)
    accs.append(jnp.asarray(accuracy_fn(fit_fn(xtr, key), xte)))
  return DiffROAR(accs[0] - accs[1], accs[0], accs[1])
