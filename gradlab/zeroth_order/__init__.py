"""Zeroth-order estimators: SPSA/MeZO, Sparse MeZO, SPSA-GC (BlackVIP), and consensus-based
optimization.

* SPSA / MeZO: ``spsa_gradient`` and ``zo_value_and_grad`` from the Gaussian
  ``perturbation`` z (regenerated from its key, never stored); Sparse MeZO
  perturbs only ``sparse_mask``'s entries.
* SPSA-GC (BlackVIP): Spall's ``spall_gradient`` on ``spall_perturbation``'s
  Delta, ``spsa_gc_init`` / ``spsa_gc_step`` / ``spsa_gc_update``, and its
  update rule (Nesterov momentum, decaying gain) as an optax chain,
  ``spsa_gc_optimizer``.
* CBO: particles from ``cbo_init``, moved by ``cbo_step`` toward the
  ``consensus_point``.
"""

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
