"""Zeroth-order estimators: SPSA/MeZO, Sparse MeZO, SPSA-GC (BlackVIP), and consensus-based
optimization."""

from gradlab.zeroth_order.cbo import CBOState, cbo_init, cbo_step, consensus_point
from gradlab.zeroth_order.spsa import (
  ZOEstimate,
  perturbation,
  sparse_mask,
  spsa_gradient,
  zo_value_and_grad,
)
from gradlab.zeroth_order.spsa_gc import (
  SPSAGCState,
  spall_gradient,
  spall_perturbation,
  spsa_gc_init,
  spsa_gc_optimizer,
  spsa_gc_step,
  spsa_gc_update,
)

__all__ = [
  "CBOState",
  "SPSAGCState",
  "ZOEstimate",
  "cbo_init",
  "cbo_step",
  "consensus_point",
  "perturbation",
  "spall_gradient",
  "spall_perturbation",
  "sparse_mask",
  "spsa_gc_init",
  "spsa_gc_optimizer",
  "spsa_gc_step",
  "spsa_gc_update",
  "spsa_gradient",
  "zo_value_and_grad",
]
