"""The small flax models that the experiments use.

* ``MLP``, ``TinyTransformer``, ``CategoricalVAE`` (with ``negative_elbo``).

WTA-CRS's Dense layer with a sampled kernel gradient is an estimator, not a
model: ``gradlab.gradstats.wta_crs_dense`` and ``sampled_dense_layers``.
"""

from gradlab.models.categorical_vae import CategoricalVAE, negative_elbo
from gradlab.models.mlp import MLP
from gradlab.models.transformer import TinyTransformer

__all__ = [
  "CategoricalVAE",
  "MLP",
  "TinyTransformer",
  "negative_elbo",
]
