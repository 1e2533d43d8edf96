"""Embedded datasets and the resumable batch iterator (no network needed).

Generated data (Gaussian blobs, Fibonacci sequences) lives with the tasks that
use it, in ``gradlab.tasks``.
"""

from gradlab.data.batches import batch_indices, iterate_batches
from gradlab.data.datasets import DATASETS, Dataset, load_dataset

__all__ = ["DATASETS", "Dataset", "batch_indices", "iterate_batches", "load_dataset"]
