"""The small flax models that the experiments use."""

from gradlab.models.categorical_vae import CategoricalVAE, negative_elbo
from gradlab.models.mlp import MLP
from gradlab.models.transformer import TinyTransformer

__all__ = ["CategoricalVAE", "MLP", "TinyTransformer", "negative_elbo"]
