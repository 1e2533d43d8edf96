"""Curvature probes: Hessian/GGN/Fisher products, trace and diagonal
estimators, Lanczos eigenpairs, spectral density, sharpness.

Two forms of one family: ``X(matvec, like, key, ...)`` works on any symmetric
linear map over params-shaped pytrees (``trace``, ``diagonal``,
``hutch_plus_plus``, ``top_eigenvalues``, ``spectral_density``), and
``hessian_X(loss_fn, params, batch, key, ...)`` is ``X`` on the Hessian's map
of a pure scalar ``loss_fn(params, batch)`` (``hessian_trace``,
``hessian_diagonal``, ``hessian_top_eigenvalues``,
``hessian_spectral_density``). Probes come from a sampler function
(a ``Sampler``: ``sampler_signs``, ``sampler_normal``, ``sampler_sphere``).
Explicit keys; nothing is jitted inside. Wrap in ``jax.jit`` with the batch
sharded as ``gradlab.train`` has it to reduce across devices.

The pieces underneath: ``lanczos_tridiagonal`` and ``power_iteration``, the
stochastic Lanczos ``quadrature`` nodes and weights of a spectral density, and
``sampled_cross_entropy`` (the sampled-label loss of ``fisher_vp``). The
batch-size study (:mod:`gradlab.curvature.batch_size`) adds GD's
``sgd_stability_limit`` (``2 / lambda``) and ``diverges``, the measured test
behind ``largest_stable_learning_rate``.

K-FAC and EK-FAC (``kfac``, ``ekfac``: :class:`KroneckerFactors` with
``matvec``, ``inverse``, ``eigenvalues``, ``to_dense``) are fitted over a
dataset for the flax Dense, DenseGeneral, Embed and Conv layers a per-example
loss calls (``gradlab.curvature.capture``).
"""

from gradlab.curvature.batch_size import (
  LEARNING_RATE_EXPONENTS,
  InverseBatchFit,
  MinibatchEigenvalues,
  PowerLaw,
  StableRate,
  diverges,
  fit_inverse_batch,
  fit_power_law,
  hessian_noise,
  largest_stable_learning_rate,
  minibatch_top_eigenvalues,
  sgd_stability_limit,
  spiked_top_eigenvalue,
)
from gradlab.curvature.dataset import (
  Batches,
  batches,
  dataset_empirical_fisher_vp,
  dataset_fisher_vp,
  dataset_ggn_vp,
  dataset_hvp,
)
from gradlab.curvature.density import (
  SpectralDensity,
  count_outliers,
  hessian_spectral_density,
  quadrature,
  spectral_density,
)
from gradlab.curvature.exchangeable import (
  hessian_xdiag,
  hessian_xtrace,
  nystrom_pp,
  sampler_sphere,
  xdiag,
  xnystrace,
  xtrace,
)
from gradlab.curvature.kronecker import KroneckerFactors, ekfac, kfac
from gradlab.curvature.lanczos import (
  EigenResult,
  Tridiagonal,
  hessian_top_eigenvalues,
  lanczos_tridiagonal,
  power_iteration,
  top_eigenvalues,
)
from gradlab.curvature.probes import Sampler, sampler_normal, sampler_signs
from gradlab.curvature.products import (
  empirical_fisher_vp,
  fisher_vp,
  ggn_vp,
  hvp,
  make_hvp,
  sampled_cross_entropy,
)
from gradlab.curvature.sharpness import Sharpness, sharpness, sharpness_instrument
from gradlab.curvature.trace import (
  DiagonalEstimate,
  TraceEstimate,
  diagonal,
  hessian_diagonal,
  hessian_trace,
  hutch_plus_plus,
  trace,
)

__all__ = [
  "Batches",
  "DiagonalEstimate",
  "EigenResult",
  "InverseBatchFit",
  "KroneckerFactors",
  "LEARNING_RATE_EXPONENTS",
  "MinibatchEigenvalues",
  "PowerLaw",
  "Sampler",
  "Sharpness",
  "SpectralDensity",
  "StableRate",
  "TraceEstimate",
  "Tridiagonal",
  "batches",
  "count_outliers",
  "dataset_empirical_fisher_vp",
  "dataset_fisher_vp",
  "dataset_ggn_vp",
  "dataset_hvp",
  "diagonal",
  "diverges",
  "ekfac",
  "empirical_fisher_vp",
  "fisher_vp",
  "fit_inverse_batch",
  "fit_power_law",
  "ggn_vp",
  "hessian_diagonal",
  "hessian_noise",
  "hessian_spectral_density",
  "hessian_top_eigenvalues",
  "hessian_trace",
  "hessian_xdiag",
  "hessian_xtrace",
  "hutch_plus_plus",
  "hvp",
  "kfac",
  "lanczos_tridiagonal",
  "largest_stable_learning_rate",
  "make_hvp",
  "minibatch_top_eigenvalues",
  "nystrom_pp",
  "power_iteration",
  "quadrature",
  "sampled_cross_entropy",
  "sampler_normal",
  "sampler_signs",
  "sampler_sphere",
  "sgd_stability_limit",
  "sharpness",
  "sharpness_instrument",
  "spectral_density",
  "spiked_top_eigenvalue",
  "top_eigenvalues",
  "trace",
  "xdiag",
  "xnystrace",
  "xtrace",
]
