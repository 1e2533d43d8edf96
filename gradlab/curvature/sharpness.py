"""Sharpness summaries and the stability checks they support.

* GD is linearly stable at a minimum only if lambda_max(H) <= 2 / eta
  (the "edge of stability" of Cohen et al., ICLR 2021: under full-batch GD,
  lambda_max rises to 2/eta and hovers there).
* SGD is linearly stable only if, roughly, tr(H) <= 2 / eta (Wu & Su, "The
  Implicit Regularization of Dynamical Stability in Stochastic Gradient
  Descent", ICML 2023), a stronger constraint on flat minima.

``sharpness`` returns both with the ratios ``lambda_max * eta / 2`` and
``trace * eta / 2`` (stable when <= 1); ``sharpness_instrument`` runs it
every K steps inside ``gradlab.train.fit``.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax

from gradlab.curvature.lanczos import top_eigenvalues
from gradlab.curvature.probes import dimension
from gradlab.curvature.products import make_hvp
from gradlab.curvature.trace import trace


class Sharpness(NamedTuple):
  lambda_max: jax.Array
  trace: jax.Array
  trace_stderr: jax.Array
  gd_ratio: jax.Array  # lambda_max * eta / 2; GD-stable iff <= 1
  sgd_ratio: jax.Array  # trace * eta / 2; SGD-stable (Wu & Su) iff <= 1


def sharpness(
  loss_fn: Callable[[Any, Any], jax.Array],
  params: Any,
  batch: Any,
  key: jax.Array,
  *,
  learning_rate: float,
  num_probes: int = 32,
  num_iterations: int = 20,
  probe_batch: int = 1,
) -> Sharpness:
  """lambda_max (Lanczos) and tr H (Hutchinson) at ``params`` with the stability ratios."""
  if not learning_rate > 0:
    raise ValueError(f"learning_rate: expected a value > 0, got {learning_rate}")
  matvec = make_hvp(loss_fn, params, batch)
  k1, k2 = jax.random.split(key)
  top = top_eigenvalues(
    matvec, params, k1, k=1, num_iterations=min(num_iterations, dimension(params))
  )
  tr = trace(matvec, params, k2, num_probes=num_probes, probe_batch=probe_batch)
  lam = top.eigenvalues[0]
  return Sharpness(
    lam, tr.estimate, tr.stderr, lam * learning_rate / 2, tr.estimate * learning_rate / 2
  )


def sharpness_instrument(
  train_loss_fn: Callable[[Any, Any, jax.Array], tuple[jax.Array, Any]],
  *,
  learning_rate: float,
  num_probes: int = 32,
  num_iterations: int = 20,
  probe_batch: int = 1,
):
  """An instrument ``(params, batch, key) -> {name: scalar}`` for ``gradlab.train.fit``.

  Args:
    train_loss_fn: the train step's ``(params, batch, rng) -> (loss, aux)``;
      the curvature is that of ``loss`` with the instrument's key as ``rng``.
  """
  if not learning_rate > 0:
    raise ValueError(f"learning_rate: expected a value > 0, got {learning_rate}")

  def instrument(params, batch, key):
    k_loss, k_probe = jax.random.split(key)
    s = sharpness(
      lambda p, b: train_loss_fn(p, b, k_loss)[0],
      params,
      batch,
      k_probe,
      learning_rate=learning_rate,
      num_probes=num_probes,
      num_iterations=num_iterations,
      probe_batch=probe_batch,
    )
    return dict(s._asdict())

  return instrument
