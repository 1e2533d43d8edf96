"""Zeroth-order estimators: SPSA/MeZO, Sparse MeZO, and consensus-based optimization."""

from gradlab.zeroth_order.cbo import CBOState, cbo_init, cbo_step, consensus_point
from gradlab.zeroth_order.spsa import (
  ZOEstimate,
  perturbation,
  sparse_mask,
  spsa_gradient,
  zo_value_and_grad,
)

__all__ = [
  "CBOState",
  "ZOEstimate",
  "cbo_init",
  "cbo_step",
  "consensus_point",
  "perturbation",
  "sparse_mask",
  "spsa_gradient",
  "zo_value_and_grad",
]
