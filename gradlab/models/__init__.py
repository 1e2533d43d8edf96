"""The small flax models that the experiments use."""

from gradlab.models.mlp import MLP

__all__ = ["MLP"]
