"""The small flax models that the experiments use."""

from gradlab.models.categorical_vae import CategoricalVAE, negative_elbo
from gradlab.models.mlp import MLP

__all__ = ["CategoricalVAE", "MLP", "negative_elbo"]
