"""The small flax models that the experiments use, and layers with their own backward pass.

* ``MLP``, ``TinyTransformer``, ``CategoricalVAE`` (with ``negative_elbo``).
* ``wta_crs_dense``: a Dense layer whose kernel gradient is estimated from a
  sampled subset of the activation rows (WTA-CRS), storing only those rows.
"""

from gradlab.models.categorical_vae import CategoricalVAE, negative_elbo
from gradlab.models.mlp import MLP
from gradlab.models.transformer import TinyTransformer
from gradlab.models.wta_crs import (
  RowPlan,
  plan_rows,
  row_probabilities,
  sampled_dense_layers,
  winners,
  wta_crs_dense,
)

__all__ = [
  "CategoricalVAE",
  "MLP",
  "RowPlan",
  "TinyTransformer",
  "negative_elbo",
  "plan_rows",
  "row_probabilities",
  "sampled_dense_layers",
  "winners",
  "wta_crs_dense",
]
