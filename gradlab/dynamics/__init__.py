"""Training dynamics and the loss landscape.

* ``linear_networks``: the exact gradient-descent dynamics of a linear
  student learning a linear teacher, and the Marchenko-Pastur theory of its
  test error (Advani, Saxe & Sompolinsky 2020): ``linear_teacher_data``,
  ``linear_gd_trajectory``, ``marchenko_pastur_test_error`` with the law's
  ``marchenko_pastur_density`` and ``marchenko_pastur_quadrature``.
* ``connectivity``: metrics along the linear path between two networks and
  the loss / error barrier (Frankle et al. 2020; Git Re-Basin):
  ``interpolate``, ``linear_path``, ``barrier``, ``linear_path_barrier``.
* ``permutation``: permutation specs of a network, applying a permutation,
  and weight matching (Ainsworth et al., Git Re-Basin, ICLR 2023):
  ``mlp_permutation_spec`` or any network's ``permutation_spec_from_axes_to_perm``,
  ``identity_permutation``, ``apply_permutation``, ``weight_matching``.
* ``lottery``: magnitude-pruning masks and iterative magnitude pruning with
  rewinding (Frankle & Carbin 2019; Frankle et al. 2020): ``ones_mask``,
  ``prunable_kernels`` (which leaves are pruned), ``magnitude_prune``,
  ``apply_mask``, ``masked_loss``, ``sparsity``, ``iterative_magnitude_pruning``.
"""

from gradlab.dynamics.connectivity import (
  PathBarrier,
  barrier,
  interpolate,
  linear_path,
  linear_path_barrier,
)
from gradlab.dynamics.linear_networks import (
  LinearTeacherData,
  LinearTrajectory,
  linear_gd_trajectory,
  linear_teacher_data,
  marchenko_pastur_density,
  marchenko_pastur_quadrature,
  marchenko_pastur_test_error,
)
from gradlab.dynamics.lottery import (
  IMPRound,
  apply_mask,
  iterative_magnitude_pruning,
  magnitude_prune,
  masked_loss,
  ones_mask,
  prunable_kernels,
  sparsity,
)
from gradlab.dynamics.permutation import (
  PermutationSpec,
  apply_permutation,
  identity_permutation,
  mlp_permutation_spec,
  permutation_spec_from_axes_to_perm,
  weight_matching,
)

__all__ = [
  "IMPRound",
  "LinearTeacherData",
  "LinearTrajectory",
  "PathBarrier",
  "PermutationSpec",
  "apply_mask",
  "apply_permutation",
  "barrier",
  "identity_permutation",
  "interpolate",
  "iterative_magnitude_pruning",
  "linear_gd_trajectory",
  "linear_path",
  "linear_path_barrier",
  "linear_teacher_data",
  "magnitude_prune",
  "marchenko_pastur_density",
  "marchenko_pastur_quadrature",
  "marchenko_pastur_test_error",
  "masked_loss",
  "mlp_permutation_spec",
  "ones_mask",
  "permutation_spec_from_axes_to_perm",
  "prunable_kernels",
  "sparsity",
  "weight_matching",
]
