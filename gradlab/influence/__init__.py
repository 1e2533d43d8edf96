"""Data attribution and valuation, scored against retraining.

Pure functions over a per-example ``loss_fn(params, example)`` (or a model
output such as TRAK's margin), parameters or checkpoints, and pytrees of
stacked examples. Every attribution is ``[len(test), len(train)]`` and
positive where the train example helps the test example (the sign of the
effect of *removing* it on the test loss).

* ``influence(loss_fn, params, train, test, method=...)``: influence
  functions ``(1/n) g_test^T (H + damping I)^-1 g_train`` by an explicit solve,
  CG, LiSSA, Arnoldi (top-k eigenpairs) or EK-FAC (``curvature.ekfac``); ``self_influence``.
* Gradient features (``per_example_gradients``, ``gradient_features``,
  ``project`` without a ``d x k`` matrix, LESS's ``adam_transform``) and the
  scores built on them: ``grad_dot``, ``grad_cos``, ``tracin_cp``, ``trak``,
  ``less_scores`` / ``less_select``, ``grand``, ``el2n``, ``vog``.
* ``z0_influence`` / ``z0_self_influence``: zeroth-order influence from the
  losses at checkpoints.
* Data Shapley: ``exact_shapley`` (enumeration), ``tmc_shapley``,
  ``knn_shapley``.
* Ground truth: ``train_on_subset``, ``newton_fit``, ``subset_retrain``,
  ``loo_retrain``, ``random_subsets``; metrics ``lds``, ``loo_correlation``,
  ``auroc``.
"""

from gradlab.influence.features import (
  adam_transform,
  gradient_features,
  normalize_rows,
  per_example_gradients,
  project,
)
from gradlab.influence.functions import (
  METHODS,
  dense_hessian,
  influence,
  inverse_hvp,
  self_influence,
)
from gradlab.influence.less import less_features, less_scores, less_select
from gradlab.influence.metrics import auroc, lds, loo_correlation, pearson, rank, spearman
from gradlab.influence.retrain import (
  loo_masks,
  loo_retrain,
  newton_fit,
  random_subsets,
  subset_retrain,
  train_on_subset,
)
from gradlab.influence.scores import (
  el2n,
  grad_cos,
  grad_dot,
  grand,
  input_gradients,
  tracin_cp,
  vog,
)
from gradlab.influence.shapley import (
  ShapleyEstimate,
  exact_shapley,
  knn_shapley,
  knn_utility,
  tmc_shapley,
)
from gradlab.influence.trak import margin, trak
from gradlab.influence.z0inf import z0_influence, z0_self_influence

__all__ = [
  "METHODS",
  "ShapleyEstimate",
  "adam_transform",
  "auroc",
  "dense_hessian",
  "el2n",
  "exact_shapley",
  "grad_cos",
  "grad_dot",
  "gradient_features",
  "grand",
  "influence",
  "input_gradients",
  "inverse_hvp",
  "knn_shapley",
  "knn_utility",
  "lds",
  "less_features",
  "less_scores",
  "less_select",
  "loo_correlation",
  "loo_masks",
  "loo_retrain",
  "margin",
  "newton_fit",
  "normalize_rows",
  "pearson",
  "per_example_gradients",
  "project",
  "random_subsets",
  "rank",
  "self_influence",
  "spearman",
  "subset_retrain",
  "tmc_shapley",
  "tracin_cp",
  "train_on_subset",
  "trak",
  "vog",
  "z0_influence",
  "z0_self_influence",
]
