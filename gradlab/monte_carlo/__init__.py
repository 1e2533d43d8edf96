"""Monte Carlo gradients of Gaussian expectations: optax's removed ``monte_carlo``, kept.

Score-function, pathwise and measure-valued Jacobians of
``E_{N(mean, exp(log_scale)^2)} f(x)`` (``estimators``), the delta-method and
moving-average control variates, their variance-minimizing
``estimate_control_variate_coefficients`` and the controlled Jacobians
(``control_variates``), and the diagonal Gaussian they use (``gaussian``:
``multi_normal``, every estimator's ``dist_builder``).
optax deleted ``optax.monte_carlo`` in November 2025 (commit ca35e20b); the
names here are optax's, so code that used it finds them. Reference: Mohamed,
Rosca, Figurnov & Mnih, "Monte Carlo Gradient Estimation in Machine
Learning", JMLR 2020.

Migrating from optax: ``optax.monte_carlo.score_function_jacobians(f, params,
utils.multi_normal, rng, n)`` is ``score_function_jacobians(f, params, key,
num_samples=n)`` (likewise the other estimators), with a typed key.
"""

from gradlab.monte_carlo.control_variates import (
  ControlVariate,
  MovingAvgBaselineState,
  control_delta_method,
  control_variates_jacobians,
  estimate_control_variate_coefficients,
  moving_avg_baseline,
)
from gradlab.monte_carlo.estimators import (
  measure_valued_jacobians,
  pathwise_jacobians,
  score_function_jacobians,
)
from gradlab.monte_carlo.gaussian import MultiNormalDiagFromLogScale, multi_normal

__all__ = [
  "ControlVariate",
  "MovingAvgBaselineState",
  "MultiNormalDiagFromLogScale",
  "control_delta_method",
  "control_variates_jacobians",
  "estimate_control_variate_coefficients",
  "measure_valued_jacobians",
  "moving_avg_baseline",
  "multi_normal",
  "pathwise_jacobians",
  "score_function_jacobians",
]
