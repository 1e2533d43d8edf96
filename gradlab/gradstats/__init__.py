"""Gradient statistics: per-example gradients, variance, GSNR, noise scale,
alignment, coherence, Cockpit-style instruments for the training loop, and
sliced Wasserstein estimators (with control variates) and their gradients,
and minibatch sampling (:mod:`gradlab.gradstats.sampling`): gradient-norm
importance sampling (PA&DA) and upsampling against upweighting of domains,
with their exact means and variances.

* Per example: ``per_example_grads``, ``per_layer_norms``, ``gradient_moments``
  (``variance``, ``gsnr``, ``trace_covariance``, ...), ``dense_gradient_moments``
  (flax Dense layers without per-example gradients), the batch-size tests
  ``norm_test`` and ``inner_product_test``; ``gradient_alignment`` of groups.
* Sampling's exact moments: ``sampling_moments``, ``importance_variance``,
  ``domain_sampling_moments`` and its two cases ``upsampling_moments`` and
  ``upweighting_moments``.
* WTA-CRS (:mod:`gradlab.gradstats.wta_crs`): ``wta_crs_dense``, a Dense layer
  whose kernel gradient is an unbiased estimate from a sampled subset of the
  activation rows, storing only those rows; ``sampled_dense_layers`` routes a
  flax model's Dense layers through it.
"""

from gradlab.gradstats.alignment import Alignment, gradient_alignment
from gradlab.gradstats.coherence import coherence, coherence_instrument, per_layer_coherence
from gradlab.gradstats.dense_moments import dense_gradient_moments
from gradlab.gradstats.hessian_alignment import hgp_penalty, hutchinson_penalty
from gradlab.gradstats.instruments import gradient_statistics_instrument
from gradlab.gradstats.noise_scale import (
  NoiseScaleEstimate,
  noise_scale_value_and_grad,
  ratio_of_means,
  two_batch_estimate,
)
from gradlab.gradstats.per_example import (
  GradientMoments,
  gradient_moments,
  gsnr,
  inner_product_test,
  mean_gsnr,
  mean_sq_norm,
  noise_scale_simple,
  norm_test,
  per_example_grads,
  per_layer_norms,
  trace_covariance,
  variance,
)
from gradlab.gradstats.sampling import (
  ImportanceSample,
  ImportanceState,
  SamplingMoments,
  domain_example_probabilities,
  domain_sample,
  domain_sampling_moments,
  importance_init,
  importance_probabilities,
  importance_sample,
  importance_update,
  importance_variance,
  logit_gradient_norms,
  sampling_moments,
  temperature_probabilities,
  upsampling_moments,
  upweighting_moments,
)
from gradlab.gradstats.sliced_wasserstein import sliced_wasserstein, sliced_wasserstein_power
from gradlab.gradstats.wta_crs import sampled_dense_layers, wta_crs_dense

__all__ = [
  "Alignment",
  "GradientMoments",
  "ImportanceSample",
  "ImportanceState",
  "NoiseScaleEstimate",
  "SamplingMoments",
  "coherence",
  "coherence_instrument",
  "dense_gradient_moments",
  "domain_example_probabilities",
  "domain_sample",
  "domain_sampling_moments",
  "gradient_alignment",
  "gradient_moments",
  "gradient_statistics_instrument",
  "gsnr",
  "hgp_penalty",
  "hutchinson_penalty",
  "importance_init",
  "importance_probabilities",
  "importance_sample",
  "importance_update",
  "importance_variance",
  "inner_product_test",
  "logit_gradient_norms",
  "mean_gsnr",
  "mean_sq_norm",
  "noise_scale_simple",
  "noise_scale_value_and_grad",
  "norm_test",
  "per_example_grads",
  "per_layer_coherence",
  "per_layer_norms",
  "ratio_of_means",
  "sampled_dense_layers",
  "sampling_moments",
  "sliced_wasserstein",
  "sliced_wasserstein_power",
  "temperature_probabilities",
  "trace_covariance",
  "two_batch_estimate",
  "upsampling_moments",
  "upweighting_moments",
  "variance",
  "wta_crs_dense",
]
