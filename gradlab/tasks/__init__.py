"""Task builders: data + model + loss that experiments, notebooks, benchmarks and tests share.

* ``toy``: ``make_task("classifier" | "lm", batch_size)``, the digits MLP and a
  tiny transformer on Fibonacci sequences, as :class:`Task` (``init``,
  ``loss_fn(params, batch, key)``, ``sample_batch``).
* ``synthetic``: generated data (``gaussian_blobs``, ``fibonacci_sequences``).
* ``digit_sum``: the verifiable digit-sum task with exact pass@k.
* ``bandit``: a population of tabular prompts with the exact policy gradient.
* ``inventory``: a base-stock inventory simulator with its closed-form optimum,
  for pathwise (HDPO) against score-function gradients.
* ``mlp_problem``: the MNIST-shaped MLP the benchmarks share.
* ``planted_facts``: a language-modelling corpus with key -> value facts
  planted in known training sequences, for attribution with a known answer.
* ``block_mnist``: BlockMNIST (Shah, Jain & Netrapalli 2021), MNIST digits beside a
  fixed null patch (``null_patch``) in random order, with the signal region
  known (``signal_region``), and ``signal_fraction`` of an attribution's mass
  on it.
"""

from gradlab.tasks import bandit, digit_sum, inventory
from gradlab.tasks.block_mnist import (
  BlockMNIST,
  block_mnist,
  null_patch,
  signal_fraction,
  signal_region,
)
from gradlab.tasks.mlp_problem import MLPProblem, mlp_problem
from gradlab.tasks.planted_facts import PlantedFacts, planted_facts
from gradlab.tasks.synthetic import fibonacci_sequences, gaussian_blobs
from gradlab.tasks.toy import TASKS, Task, make_task

__all__ = [
  "BlockMNIST",
  "MLPProblem",
  "PlantedFacts",
  "TASKS",
  "Task",
  "bandit",
  "block_mnist",
  "digit_sum",
  "fibonacci_sequences",
  "gaussian_blobs",
  "inventory",
  "make_task",
  "mlp_problem",
  "null_patch",
  "planted_facts",
  "signal_fraction",
  "signal_region",
]
