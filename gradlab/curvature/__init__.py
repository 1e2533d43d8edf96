"""Curvature probes: Hessian/GGN/Fisher products, trace and diagonal
estimators, Lanczos eigenpairs, spectral density, sharpness.

Everything takes a pure ``loss_fn(params, batch)`` (scalar) or a symmetric
``matvec`` over params-shaped pytrees, and explicit keys; nothing is jitted
inside. Wrap in ``jax.jit`` with the batch sharded as ``gradlab.train`` has
it to reduce across devices.
"""

from gradlab.curvature.density import (SpectralDensity, count_outliers, hessian_spectral_density,
                                       quadrature, spectral_density)
from gradlab.curvature.lanczos import (EigenResult, Tridiagonal, hessian_top_eigenvalues, lanczos,
                                       lanczos_tridiagonal, power_iteration)
from gradlab.curvature.probes import SAMPLERS, sample_probe
from gradlab.curvature.products import (check_scalar_loss, empirical_fisher_vp, ggn_vp, hvp,
                                        make_hvp)
from gradlab.curvature.sharpness import Sharpness, sharpness, sharpness_instrument
from gradlab.curvature.trace import (DiagonalEstimate, TraceEstimate, diagonal_estimate,
                                     hutch_plus_plus, hutchinson_diagonal, hutchinson_trace,
                                     trace_estimate)

__all__ = [
    "DiagonalEstimate", "EigenResult", "SAMPLERS", "Sharpness", "SpectralDensity",
    "TraceEstimate", "Tridiagonal", "check_scalar_loss", "count_outliers", "diagonal_estimate",
    "empirical_fisher_vp", "ggn_vp", "hessian_spectral_density", "hessian_top_eigenvalues",
    "hutch_plus_plus", "hutchinson_diagonal", "hutchinson_trace", "hvp", "lanczos",
    "lanczos_tridiagonal", "make_hvp", "power_iteration", "quadrature", "sample_probe",
    "sharpness", "sharpness_instrument", "spectral_density", "trace_estimate",
]
