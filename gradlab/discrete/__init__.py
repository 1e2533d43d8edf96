"""Gradient estimators for discrete samples.

Each estimator draws a discrete sample in the forward pass and carries its
gradient estimate in the backward pass; all take an explicit key and logits
of shape [..., K], and work under ``jit``, ``vmap`` and ``grad``.

Which to use: ``reinmax`` (tau >= 1) when f is smooth in the sample: it is
second-order accurate at the cost of ST. ``straight_through_gumbel`` and
``gumbel_rao`` (lower variance, k times the backward cost) are the classic
relaxation-based choices; ``reinmax_rao`` and ``reinmax_cv`` (Wang & Bui,
2026) swap ReinMax's midpoint Jacobian for a Gumbel-Rao one and are biased
where ReinMax is exact (experiments/results/reinmax_rao.md). ``reinforce`` is
unbiased for any f (even a non-differentiable one) but needs a baseline and
many samples to tame its variance. ``exact_gradient`` is the oracle for small models.

* Forward samples and their pieces: ``sample_one_hot`` draws ``D ~
  Cat(softmax(logits))``; ``straight_through_from_sample``,
  ``reinmax_from_sample``, ``reinmax_rao_from_sample`` and
  ``reinmax_cv_from_sample`` are the estimators at a given sample;
  ``conditional_gumbel_logits`` draws Gumbel-Rao's perturbed logits whose
  argmax is that sample.
* REINFORCE's moving-average baseline is carried by the caller and advanced
  with ``update_moving_average``.
* Binary: ``straight_through_sign``, and ReSTE (``reste_sign`` with the
  official power schedule ``reste_power``).
* The truth on small models: ``exact_expectation`` (``sum_D p(D) f(D)``),
  ``exact_gradient``, ``expected_estimate``.
"""

from gradlab.discrete.binary import reste_power, reste_sign, straight_through_sign
from gradlab.discrete.exact import exact_expectation, exact_gradient, expected_estimate
from gradlab.discrete.gumbel_rao import conditional_gumbel_logits, gumbel_rao
from gradlab.discrete.registry import NAMES, make_estimator
from gradlab.discrete.reinforce import BASELINES, ReinforceOutput, reinforce, update_moving_average
from gradlab.discrete.reinmax import reinmax, reinmax_from_sample
from gradlab.discrete.reinmax_rao import (
  reinmax_cv,
  reinmax_cv_from_sample,
  reinmax_rao,
  reinmax_rao_from_sample,
)
from gradlab.discrete.straight_through import (
  gumbel_softmax,
  sample_one_hot,
  straight_through,
  straight_through_from_sample,
  straight_through_gumbel,
)

__all__ = [
  "BASELINES",
  "NAMES",
  "ReinforceOutput",
  "conditional_gumbel_logits",
  "exact_expectation",
  "exact_gradient",
  "expected_estimate",
  "gumbel_rao",
  "gumbel_softmax",
  "make_estimator",
  "reinforce",
  "reinmax",
  "reinmax_cv",
  "reinmax_cv_from_sample",
  "reinmax_from_sample",
  "reinmax_rao",
  "reinmax_rao_from_sample",
  "reste_power",
  "reste_sign",
  "sample_one_hot",
  "straight_through",
  "straight_through_from_sample",
  "straight_through_gumbel",
  "straight_through_sign",
  "update_moving_average",
]
