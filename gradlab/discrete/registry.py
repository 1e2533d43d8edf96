"""Estimators by name, as ``(key, logits) -> one-hot sample`` closures.

Experiments and benchmarks select estimators with a flag; this maps the name
to the function with its hyper-parameters bound.
"""

from __future__ import annotations

from typing import Callable

import jax

from gradlab.discrete.gumbel_rao import gumbel_rao
from gradlab.discrete.reinmax import reinmax
from gradlab.discrete.reinmax_rao import reinmax_cv, reinmax_rao
from gradlab.discrete.straight_through import (
  gumbel_softmax,
  straight_through,
  straight_through_gumbel,
)

SampleFn = Callable[[jax.Array, jax.Array], jax.Array]
NAMES = (
  "straight_through",
  "gumbel_softmax",
  "straight_through_gumbel",
  "gumbel_rao",
  "reinmax",
  "reinmax_rao",
  "reinmax_cv",
)


def make_estimator(
  name: str, *, temperature: float = 1.0, num_samples: int = 10, eta: float = 0.5
) -> SampleFn:
  """``(key, logits) -> sample`` for the estimator ``name``.

  Args:
    name: one of ``NAMES``. ``gumbel_softmax`` returns the relaxed (soft)
      sample; every other one a hard one-hot sample.
    temperature: the estimator's tau.
    num_samples: k of ``gumbel_rao``, ``reinmax_rao`` and ``reinmax_cv``
      (ignored by the others).
    eta: the control variate's weight of ``reinmax_cv`` (ignored by the others).
  """
  if name == "straight_through":
    return lambda key, logits: straight_through(key, logits, temperature=temperature)
  if name == "gumbel_softmax":
    return lambda key, logits: gumbel_softmax(key, logits, temperature=temperature)
  if name == "straight_through_gumbel":
    return lambda key, logits: straight_through_gumbel(key, logits, temperature=temperature)
  if name == "gumbel_rao":
    return lambda key, logits: gumbel_rao(
      key, logits, temperature=temperature, num_samples=num_samples
    )
  if name == "reinmax":
    return lambda key, logits: reinmax(key, logits, temperature=temperature)
  if name == "reinmax_rao":
    return lambda key, logits: reinmax_rao(
      key, logits, temperature=temperature, num_samples=num_samples
    )
  if name == "reinmax_cv":
    return lambda key, logits: reinmax_cv(
      key, logits, temperature=temperature, num_samples=num_samples, eta=eta
    )
  raise ValueError(f"name: expected one of {NAMES}, got {name!r}")
