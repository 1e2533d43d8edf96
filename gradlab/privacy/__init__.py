"""Privacy: what shared gradients leak, and the attacks that measure it.

* ``inversion``: gradient inversion. DLG / iDLG reconstruction by gradient
  matching (``gradient_inversion``, ``gradient_matching_loss``), the exact
  input of a Dense layer from its weight and bias gradients
  (``dense_input_from_gradient``), iDLG's label from the last layer
  (``idlg_label``), and ``psnr``.

The defenses are elsewhere: per-example clipping and Gaussian noise are
``gradlab.transforms.dp_per_layer_aggregate`` (and optax's
``contrib.dpsgd``); DIFF2's private gradient-difference estimator is
``gradlab.transforms.diff2``.
"""

from gradlab.privacy.inversion import (
  DENSE_METHODS,
  OPTIMIZERS,
  InversionResult,
  dense_input_from_gradient,
  gradient_inversion,
  gradient_matching_loss,
  idlg_label,
  psnr,
)

__all__ = [
  "DENSE_METHODS",
  "InversionResult",
  "OPTIMIZERS",
  "dense_input_from_gradient",
  "gradient_inversion",
  "gradient_matching_loss",
  "idlg_label",
  "psnr",
]
