"""Embedded datasets and the resumable batch iterator (no network needed)."""

from gradlab.data.batches import batch_indices, iterate_batches
from gradlab.data.datasets import DATASETS, Dataset, load_dataset
from gradlab.data.sequences import fibonacci_sequences
from gradlab.data.synthetic import gaussian_blobs

__all__ = [
    "DATASETS", "Dataset", "batch_indices", "fibonacci_sequences", "gaussian_blobs", "iterate_batches",
    "load_dataset"]
